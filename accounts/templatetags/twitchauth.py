from __future__ import annotations

from datetime import datetime

from django import template
from django.utils import timezone

register = template.Library()

# What a scope lets the site do, in the words a user would use; Twitch's own
# descriptions (dev.twitch.tv/docs/authentication/scopes), shortened.
SCOPE_WORDS = {
    "analytics:read:extensions": "see analytics for your extensions",
    "analytics:read:games": "see analytics for your games",
    "bits:read": "see your Bits information",
    "channel:bot": "join your channel's chat as a bot",
    "channel:manage:broadcast": "change your stream's title, game and tags",
    "channel:manage:polls": "run polls in your channel",
    "channel:manage:predictions": "run predictions in your channel",
    "channel:manage:redemptions": "manage your channel point rewards",
    "channel:moderate": "moderate your channel",
    "channel:read:redemptions": "see your channel point redemptions",
    "channel:read:subscriptions": "see who subscribes to your channel",
    "chat:edit": "send chat messages as you",
    "chat:read": "read chat as you",
    "clips:edit": "make clips",
    "moderation:read": "see your channel's moderators and bans",
    "moderator:manage:banned_users": "ban and unban users where you moderate",
    "moderator:read:chatters": "see who is in chats you moderate",
    "moderator:read:followers": "see the followers of channels you moderate",
    "openid": "know who you are on Twitch",
    "user:bot": "appear in chat as a bot using your account",
    "user:edit": "change your Twitch profile",
    "user:read:chat": "read chat as you",
    "user:read:email": "see your e-mail address",
    "user:read:follows": "see who you follow",
    "user:read:subscriptions": "see your subscriptions",
    "user:write:chat": "send chat messages as you",
    "whispers:edit": "send whispers as you",
    "whispers:read": "read your whispers",
}


@register.filter
def in_plain_words(scope: str) -> str:
    """'send chat messages as you' for chat:edit; the scope itself if unknown."""
    return SCOPE_WORDS.get(scope, scope)


@register.filter
def expires_in(moment: datetime | None) -> str:
    """'in 3 h 12 min', 'in 40 s' or 'expired 5 min ago' (compact, for tables)."""
    if moment is None:
        return "never"  # Twitch said the token does not expire
    seconds = int((moment - timezone.now()).total_seconds())
    text = _duration(abs(seconds))
    return f"in {text}" if seconds > 0 else f"expired {text} ago"


def _duration(seconds: int) -> str:
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, seconds = divmod(rest, 60)
    if days:
        return f"{days} d {hours} h"
    if hours:
        return f"{hours} h {minutes} min"
    if minutes:
        return f"{minutes} min"
    return f"{seconds} s"
