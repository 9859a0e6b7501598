"""Signals other apps can listen to; each is sent with `sender=TwitchToken,
token=..., role=...` (the connection's role, e.g. "main" or "bot": a receiver that
cares about one account filters on it).

Receivers may be sync or async (they are sent with `asend`). A receiver must not
assume the token still holds secrets: after `token_revoked` they are wiped.
"""

from __future__ import annotations

from django.dispatch import Signal

token_connected = Signal()
token_refreshed = Signal()
token_needs_reconnect = Signal()
token_revoked = Signal()
