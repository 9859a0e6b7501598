"""EventSub's webhook: Twitch posts signed messages (`notification`,
`webhook_callback_verification`, `revocation`).

`verify` checks a message before anything else is believed; the inbox
(`accounts.eventsub.inbox`) keeps it and handles it after the answer.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.utils import timezone

__all__ = ["enabled", "verify"]

# Twitch's rule: refuse messages older than ten minutes, and remember message ids
# at least that long. A little leeway the other way for clocks that differ.
MAX_AGE = timedelta(minutes=10)
MAX_CLOCK_SKEW = timedelta(minutes=1)


def enabled() -> bool:
    return bool(
        settings.TWITCH_EVENTSUB_CALLBACK_URL and settings.TWITCH_EVENTSUB_SECRET
    )


class InvalidMessage(Exception):
    """A message the site will not act on: unsigned, badly signed, stale, or
    unreadable."""


class UnreadableMessage(InvalidMessage):
    """Signed with our secret, but not a message the site can take: its body is
    not JSON, nested past what the parser follows, or has text no database
    stores (a NUL, a lone surrogate), or its message type is missing or
    unknown."""


MESSAGE_TYPES = ("notification", "webhook_callback_verification", "revocation")


@dataclass(frozen=True)
class Message:
    id: str
    type: str  # one of MESSAGE_TYPES
    body: dict[str, Any]

    @property
    def digest(self) -> str:
        """What the inbox keys a message by: the SHA-256 of its id, so that ids
        are compared whole, whatever their length."""
        return hashlib.sha256(self.id.encode()).hexdigest()

    @property
    def subscription(self) -> dict[str, Any]:
        subscription = self.body.get("subscription")
        return subscription if isinstance(subscription, dict) else {}


def verify(headers: Mapping[str, str], raw_body: bytes) -> Message:
    """The message, once its signature and age are right; else `InvalidMessage`.

    The signature is checked first, in constant time, before anything in the message
    is believed.
    """
    message_id = headers.get("Twitch-Eventsub-Message-Id", "")
    timestamp = headers.get("Twitch-Eventsub-Message-Timestamp", "")
    signature = headers.get("Twitch-Eventsub-Message-Signature", "").encode()
    signed = message_id.encode() + timestamp.encode() + raw_body
    # While the secret is being rotated, subscriptions made with the previous one
    # still deliver: both are accepted (each compared, in constant time).
    matches = [
        hmac.compare_digest(
            signature,
            b"sha256="
            + hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest().encode(),
        )
        for secret in (
            settings.TWITCH_EVENTSUB_SECRET,
            settings.TWITCH_EVENTSUB_PREVIOUS_SECRET,
        )
        if secret
    ]
    if not message_id or not any(matches):
        raise InvalidMessage("missing or wrong signature")
    sent = _parse_timestamp(timestamp)
    now = timezone.now()
    if sent is None or sent < now - MAX_AGE or sent > now + MAX_CLOCK_SKEW:
        raise InvalidMessage("stale or future timestamp")
    try:
        body = json.loads(raw_body)
    except ValueError:
        raise UnreadableMessage("body is not JSON") from None
    except RecursionError:
        raise UnreadableMessage("body is nested too deep") from None
    if not isinstance(body, dict):
        raise UnreadableMessage("body is not a JSON object")
    if not _storable(body):
        raise UnreadableMessage("body has text with a NUL or a lone surrogate")
    message_type = headers.get("Twitch-Eventsub-Message-Type", "")
    if message_type not in MESSAGE_TYPES:
        # Signed, so Twitch's; but nothing the site knows how to handle.
        raise UnreadableMessage(
            f"missing or unknown message type {message_type[:40]!r}"
        )
    return Message(id=message_id, type=message_type, body=body)


def _storable(value: Any) -> bool:
    """Whether every string in a JSON value is text a database can store: PostgreSQL
    takes no NUL, and UTF-8 has no lone surrogate (JSON's escapes allow both).
    Walked with a list, not recursion: the nesting is the sender's choice."""
    waiting = [value]
    while waiting:
        item = waiting.pop()
        if isinstance(item, dict):
            waiting.extend(item)
            waiting.extend(item.values())
        elif isinstance(item, list):
            waiting.extend(item)
        elif isinstance(item, str):
            if "\x00" in item:
                return False
            try:
                item.encode()
            except UnicodeEncodeError:
                return False
    return True


def _parse_timestamp(text: str) -> datetime | None:
    """Twitch's RFC 3339 time (up to nanoseconds: Python 3.11 reads them, keeping
    microseconds); None unless it names its time zone."""
    try:
        sent = datetime.fromisoformat(text)
    except ValueError:
        return None
    return sent if sent.tzinfo is not None else None
