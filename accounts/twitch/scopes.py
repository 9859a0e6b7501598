"""Twitch's scopes, as Twitch has them: the one catalogue that `check`, the sandbox
and the admin read.

Source: https://dev.twitch.tv/docs/authentication/scopes/ ("Twitch API and EventSub
scopes" and the chat (IRC) scopes), read on 2026-12-05 (`READ_ON`), plus `openid`
("Getting tokens: OIDC"). Twitch's own one-line descriptions are shortened here to
what a user would say (shown on the site's pages).

Scopes Twitch no longer has are kept, marked, so that `check` can say so:

- `DEPRECATED`: gone from Twitch's documentation, with no report that Twitch
  refuses it yet (`user:edit:follows`: its endpoints were removed in 2021;
  twitchAPI 4.5.0 still lists it). A warning: it may stop working any day.
- `REMOVED`: Twitch refuses it at authorize with a 400 ("Sorry, the scope you are
  requesting is currently unavailable", for `chat_login` since 2019 for new
  client ids; every v5 scope since v5 was shut down on 2022-02-28). An error,
  like a scope Twitch never had.

twitchAPI 4.5.0's `AuthScope` is not the source: it lacks eight scopes Twitch
documents (`channel:manage:clips`, `editor:manage:clips`,
`channel:manage:extensions`, the four guest-star scopes,
`moderator:manage:suspicious_users`) and `openid`, and still lists
`channel_subscriptions` and `user:edit:follows`.

Plain data and no Django: the sandbox imports it too. When Twitch adds a scope,
add it here (and its words), with the date the page was read.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

READ_ON = "2026-12-05"
SOURCE = "https://dev.twitch.tv/docs/authentication/scopes/"


class Status(enum.StrEnum):
    CURRENT = "current"
    DEPRECATED = "deprecated"  # undocumented now; Twitch may still accept it
    REMOVED = "removed"  # Twitch refuses it at authorize


@dataclass(frozen=True)
class Scope:
    name: str
    # What it lets the site do, in the words a user would use.
    words: str
    status: Status = Status.CURRENT
    # When Twitch deprecated or removed it (as precisely as known).
    since: str = ""


def _current(name: str, words: str) -> Scope:
    return Scope(name, words)


def _v5(name: str, words: str) -> Scope:
    return Scope(name, words, Status.REMOVED, since="2022-02-28")


_ALL = (
    # Twitch API and EventSub scopes, in the order of Twitch's table.
    _current("analytics:read:extensions", "see analytics for your extensions"),
    _current("analytics:read:games", "see analytics for your games"),
    _current("bits:read", "see your Bits information"),
    _current("channel:bot", "join your channel's chat as a bot"),
    _current("channel:manage:ads", "manage your channel's ad schedule"),
    _current("channel:read:ads", "see your channel's ad schedule"),
    _current("channel:manage:broadcast", "change your stream's title, game and tags"),
    _current("channel:read:charity", "see your charity campaigns and donations"),
    _current("channel:manage:clips", "manage the clips of your channel"),
    _current("channel:edit:commercial", "run commercials on your channel"),
    _current("channel:read:editors", "see your channel's editors"),
    _current("channel:manage:extensions", "manage your channel's extensions"),
    _current("channel:read:goals", "see your creator goals"),
    _current("channel:read:guest_star", "see your Guest Star sessions"),
    _current("channel:manage:guest_star", "manage your Guest Star sessions"),
    _current("channel:read:hype_train", "see your channel's Hype Trains"),
    _current("channel:manage:moderators", "add and remove your channel's moderators"),
    _current("channel:read:polls", "see your channel's polls"),
    _current("channel:manage:polls", "run polls in your channel"),
    _current("channel:read:predictions", "see your channel's predictions"),
    _current("channel:manage:predictions", "run predictions in your channel"),
    _current("channel:manage:raids", "start and cancel raids from your channel"),
    _current("channel:read:redemptions", "see your channel point redemptions"),
    _current("channel:manage:redemptions", "manage your channel point rewards"),
    _current("channel:manage:schedule", "manage your stream schedule"),
    _current("channel:read:stream_key", "see your stream key"),
    _current("channel:read:subscriptions", "see who subscribes to your channel"),
    _current("channel:manage:videos", "manage and delete your videos"),
    _current("channel:read:vips", "see your channel's VIPs"),
    _current("channel:manage:vips", "add and remove your channel's VIPs"),
    _current("clips:edit", "make clips"),
    _current("editor:manage:clips", "manage clips in channels you edit"),
    _current("moderation:read", "see your channel's moderators and bans"),
    _current("moderator:manage:announcements", "post announcements where you moderate"),
    _current(
        "moderator:manage:automod", "review AutoMod-held messages where you moderate"
    ),
    _current(
        "moderator:read:automod_settings", "see AutoMod settings where you moderate"
    ),
    _current(
        "moderator:manage:automod_settings",
        "change AutoMod settings where you moderate",
    ),
    _current("moderator:read:banned_users", "see bans where you moderate"),
    _current("moderator:manage:banned_users", "ban and unban users where you moderate"),
    _current("moderator:read:blocked_terms", "see blocked terms where you moderate"),
    _current(
        "moderator:read:chat_messages", "see deleted chat messages where you moderate"
    ),
    _current(
        "moderator:manage:blocked_terms", "manage blocked terms where you moderate"
    ),
    _current(
        "moderator:manage:chat_messages", "delete chat messages where you moderate"
    ),
    _current("moderator:read:chat_settings", "see chat settings where you moderate"),
    _current(
        "moderator:manage:chat_settings", "change chat settings where you moderate"
    ),
    _current("moderator:read:chatters", "see who is in chats you moderate"),
    _current("moderator:read:followers", "see the followers of channels you moderate"),
    _current("moderator:read:guest_star", "see Guest Star sessions where you moderate"),
    _current(
        "moderator:manage:guest_star", "manage Guest Star sessions where you moderate"
    ),
    _current("moderator:read:moderators", "see the moderators of chats you moderate"),
    _current("moderator:read:shield_mode", "see Shield Mode where you moderate"),
    _current(
        "moderator:manage:shield_mode", "turn Shield Mode on and off where you moderate"
    ),
    _current("moderator:read:shoutouts", "see shoutouts where you moderate"),
    _current("moderator:manage:shoutouts", "send shoutouts where you moderate"),
    _current(
        "moderator:read:suspicious_users", "see suspicious users where you moderate"
    ),
    _current(
        "moderator:manage:suspicious_users", "mark users suspicious where you moderate"
    ),
    _current("moderator:read:unban_requests", "see unban requests where you moderate"),
    _current(
        "moderator:manage:unban_requests", "answer unban requests where you moderate"
    ),
    _current("moderator:read:vips", "see the VIPs of chats you moderate"),
    _current("moderator:read:warnings", "see warnings where you moderate"),
    _current("moderator:manage:warnings", "warn users where you moderate"),
    _current("user:bot", "appear in chat as a bot using your account"),
    _current("user:edit", "change your Twitch profile"),
    _current("user:edit:broadcast", "change your broadcast and extension settings"),
    _current("user:read:blocked_users", "see who you block"),
    _current("user:manage:blocked_users", "block and unblock users for you"),
    _current("user:read:broadcast", "see your broadcast and extension settings"),
    _current("user:read:chat", "read chat as you"),
    _current("user:manage:chat_color", "change your name's color in chat"),
    _current("user:read:email", "see your e-mail address"),
    _current("user:read:emotes", "see the emotes you can use"),
    _current("user:read:follows", "see who you follow"),
    _current("user:read:moderated_channels", "see the channels you moderate"),
    _current("user:read:subscriptions", "see your subscriptions"),
    _current("user:read:whispers", "read your whispers"),
    _current("user:manage:whispers", "send whispers as you"),
    _current("user:write:chat", "send chat messages as you"),
    # Chat (IRC) scopes.
    _current("channel:moderate", "moderate your channel"),
    _current("chat:edit", "send chat messages as you"),
    _current("chat:read", "read chat as you"),
    _current("whispers:read", "read your whispers"),
    _current("whispers:edit", "send whispers as you"),
    # OpenID Connect.
    _current("openid", "know who you are on Twitch"),
    # No longer documented.
    Scope(
        "user:edit:follows",
        "follow and unfollow channels for you",
        Status.DEPRECATED,
        since="2021",
    ),
    # v5 (Kraken), shut down on 2022-02-28.
    _v5("channel_check_subscription", "check who subscribes to your channel"),
    _v5("channel_commercial", "run commercials on your channel"),
    _v5("channel_editor", "change your channel's settings"),
    _v5("channel_feed_edit", "post to your channel feed"),
    _v5("channel_feed_read", "read your channel feed"),
    _v5("channel_read", "see your channel's settings"),
    _v5("channel_stream", "reset your stream key"),
    _v5("channel_subscriptions", "see who subscribes to your channel"),
    _v5("chat_login", "chat as you"),
    _v5("collections_edit", "manage your collections"),
    _v5("communities_edit", "manage your communities"),
    _v5("communities_moderate", "moderate your communities"),
    _v5("user_blocks_edit", "block and unblock users for you"),
    _v5("user_blocks_read", "see who you block"),
    _v5("user_follows_edit", "follow and unfollow channels for you"),
    _v5("user_read", "see your profile and e-mail address"),
    _v5("user_subscriptions", "see your subscriptions"),
    _v5("viewing_activity_read", "see your viewing activity"),
)

SCOPES: dict[str, Scope] = {scope.name: scope for scope in _ALL}
# What Twitch's authorize endpoint accepts.
ACCEPTED = frozenset(s.name for s in _ALL if s.status is not Status.REMOVED)


def status(name: str) -> Status | None:
    """The scope's status, or None when Twitch has never had it (a typo)."""
    scope = SCOPES.get(name)
    return None if scope is None else scope.status


def in_plain_words(name: str) -> str:
    """What the scope lets the site do; the scope itself if Twitch has none such."""
    scope = SCOPES.get(name)
    return name if scope is None else scope.words
