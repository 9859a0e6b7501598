from __future__ import annotations

from datetime import datetime

from django import template
from django.utils import timezone

from accounts.twitch import scopes

register = template.Library()


@register.filter
def in_plain_words(scope: str) -> str:
    """'send chat messages as you' for chat:edit; the scope itself if unknown."""
    return scopes.in_plain_words(scope)


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
