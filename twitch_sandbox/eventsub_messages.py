"""The messages Twitch posts to EventSub callbacks: built, signed, re-signed
for a redelivery, and what became of each delivery."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from .ledger import SandboxUser

if TYPE_CHECKING:
    from .webhooks import Subscription

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class Delivery:
    """One message posted to a callback, and how the callback answered."""

    message_id: str
    message_type: str
    subscription_id: str
    status: int  # the callback's HTTP status; 0: no answer (refused, timed out)
    body: str  # the JSON that was posted
    answer: str = ""  # the callback's response body
    retry: int = 0  # its Twitch-Eventsub-Message-Retry
    elapsed: float = 0.0  # seconds until the answer (or giving up)
    content_type: str = ""  # the answer's Content-Type

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


@dataclass(frozen=True)
class WebhookMessage:
    """A signed message exactly as Twitch would post it; ``Sandbox.deliver``
    sends it as is, so a test can alter it first."""

    headers: dict[str, str]
    body: bytes
    # Whose callback it goes to; None: the subscription named in the body.
    subscription_id: str | None = None


def revoke_event(
    user: SandboxUser, *, client_id: str, gone: bool = False
) -> dict[str, object]:
    """``user.authorization.revoke``'s event: null login and name for a user
    who deleted their account."""
    return {
        "client_id": client_id,
        "user_id": user.id,
        "user_login": None if gone else user.login,
        "user_name": None if gone else user.display_name,
    }


def sign(secret: str, message_id: str, timestamp: str, body: bytes) -> str:
    """``Twitch-Eventsub-Message-Signature``: HMAC-SHA256 of id + timestamp + body."""
    signed = message_id.encode() + timestamp.encode() + body
    return "sha256=" + hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()


def rfc3339(nanoseconds: int) -> str:
    """UTC as Twitch writes it (Go's RFC3339Nano): up to nine fractional
    digits, trailing zeros dropped, no dot when there is no fraction."""
    seconds, fraction = divmod(nanoseconds, 1_000_000_000)
    text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
    if fraction:
        text += "." + f"{fraction:09d}".rstrip("0")
    return text + "Z"


def resign(message: WebhookMessage, secret: str, retry: int) -> WebhookMessage:
    """The same message sent again: same id and body, the time of this attempt,
    and ``Twitch-Eventsub-Message-Retry`` saying which retry it is."""
    headers = dict(message.headers)
    timestamp = rfc3339(time.time_ns())
    message_id = headers["Twitch-Eventsub-Message-Id"]
    headers["Twitch-Eventsub-Message-Timestamp"] = timestamp
    headers["Twitch-Eventsub-Message-Retry"] = str(retry)
    headers["Twitch-Eventsub-Message-Signature"] = sign(
        secret, message_id, timestamp, message.body
    )
    return WebhookMessage(headers, message.body, message.subscription_id)


def subscription_id_of(message: WebhookMessage) -> str:
    """The subscription a message is for: its own field, else its body's."""
    if message.subscription_id is not None:
        return message.subscription_id
    try:
        return str(json.loads(message.body)["subscription"]["id"])
    except (ValueError, TypeError, KeyError) as exc:
        raise ValueError(
            "the message names no subscription; set its subscription_id"
        ) from exc


def build_message(
    subscription: Subscription,
    message_type: str,
    payload: dict[str, object],
    *,
    message_id: str | None = None,
    timestamp: str | None = None,
    secret: str | None = None,
) -> WebhookMessage:
    message_id = message_id or str(uuid.uuid4())
    timestamp = timestamp or rfc3339(time.time_ns())
    body = json.dumps(payload).encode()
    key = subscription.secret if secret is None else secret
    headers = {
        "Twitch-Eventsub-Message-Id": message_id,
        "Twitch-Eventsub-Message-Retry": "0",
        "Twitch-Eventsub-Message-Type": message_type,
        "Twitch-Eventsub-Message-Signature": sign(key, message_id, timestamp, body),
        "Twitch-Eventsub-Message-Timestamp": timestamp,
        "Twitch-Eventsub-Subscription-Type": subscription.type,
        "Twitch-Eventsub-Subscription-Version": subscription.version,
        "Content-Type": "application/json",
    }
    return WebhookMessage(headers=headers, body=body, subscription_id=subscription.id)


def nanoseconds(moment: datetime) -> int:
    if moment.tzinfo is None:
        raise ValueError("timestamp must be timezone-aware")
    return (moment - _EPOCH) // timedelta(microseconds=1) * 1000
