"""What the refresh_tokens tests share: running the command as cron does, and
making a token due."""

from __future__ import annotations

import io
import time
from collections.abc import Callable
from datetime import timedelta

from django.core.management import call_command
from django.utils import timezone

from accounts.models import TwitchToken


def refresh_tokens(*args: str) -> str:
    """`manage.py refresh_tokens` with these arguments; what it printed."""
    out = io.StringIO()
    call_command("refresh_tokens", *args, stdout=out)
    return out.getvalue()


def expiring(token: TwitchToken, minutes: int = 10) -> TwitchToken:
    """The token, made to expire within `minutes` (so due for a refresh)."""
    token.expires_at = timezone.now() + timedelta(minutes=minutes)
    token.save(update_fields=["expires_at"])
    return token


def wait_for(condition: Callable[[], bool], timeout: float = 20) -> None:
    """Wait until `condition()` holds, failing the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.05)
