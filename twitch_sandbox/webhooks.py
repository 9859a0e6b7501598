"""EventSub over webhooks: the app's subscriptions, and the signed messages
Twitch posts to their callbacks.

Only what the site needs: ``user.authorization.revoke`` version 1 for the app's
own client id. As on Twitch, a new subscription stays pending until its
callback echoes a challenge; an enabled one gets a ``notification`` whenever a
user disconnects the app, and a ``revocation`` when Twitch (a test) revokes it.

``Subscriptions`` keeps the subscriptions and every delivery under one lock,
because tests call in from their own thread; the posting itself runs on the
sandbox's event loop (``verify`` and ``post``). Message times come from
``time.time_ns()``, so time-machine moves Twitch's clock here too.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit

import aiohttp

from .ledger import Rejected, SandboxUser

REVOKE_TYPE = "user.authorization.revoke"
REVOKE_VERSION = "1"

PENDING = "webhook_callback_verification_pending"
ENABLED = "enabled"
FAILED = "webhook_callback_verification_failed"
# Why Twitch may revoke a webhook subscription of this type; the subscription's
# status then names the reason.
REVOCATION_REASONS = (
    "authorization_revoked",
    "user_removed",
    "notification_failures_exceeded",
    "version_removed",
)
# Every status Helix documents, for its ``status`` filter.
STATUSES = (
    ENABLED,
    PENDING,
    FAILED,
    *REVOCATION_REASONS,
    "moderator_removed",
    "guest_star_moderator_removed",
    "chat_user_banned",
    "beta_maintenance",
    "websocket_disconnected",
    "websocket_failed_ping_pong",
    "websocket_received_inbound_traffic",
    "websocket_connection_unused",
    "websocket_internal_error",
    "websocket_network_timeout",
    "websocket_network_error",
    "websocket_failed_to_reconnect",
)

VERIFICATION = "webhook_callback_verification"
NOTIFICATION = "notification"
REVOCATION = "revocation"

# Seconds a callback has to answer any message.
DELIVERY_TIMEOUT = 10.0
SECRET_LENGTHS = range(10, 101)
MAX_TOTAL_COST = 10_000
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


@dataclass(frozen=True)
class WebhookMessage:
    """A signed message exactly as Twitch would post it; ``Sandbox.deliver``
    sends it as is, so a test can alter it first."""

    headers: dict[str, str]
    body: bytes
    # Whose callback it goes to; None: the subscription named in the body.
    subscription_id: str | None = None


@dataclass(slots=True, eq=False)
class Subscription:
    id: str
    type: str
    version: str
    condition: dict[str, str]
    callback: str
    secret: str
    created_at: str
    status: str = PENDING

    def json(self) -> dict[str, object]:
        # As Helix shows it: never with the secret.
        return {
            "id": self.id,
            "status": self.status,
            "type": self.type,
            "version": self.version,
            "condition": dict(self.condition),
            "created_at": self.created_at,
            "transport": {"method": "webhook", "callback": self.callback},
            "cost": 0,
        }


class Subscriptions:
    """The app's EventSub subscriptions and every message delivered to them."""

    def __init__(self, *, allow_insecure_callbacks: bool = False) -> None:
        self.allow_insecure_callbacks = allow_insecure_callbacks
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._subscriptions: dict[str, Subscription] = {}
        self._deliveries: list[Delivery] = []

    def reset(self) -> None:
        with self._lock:
            self._subscriptions.clear()
            self._deliveries.clear()
            self._changed.notify_all()

    # Helix -----------------------------------------------------------------

    def create(self, body: object, *, client_id: str) -> Subscription:
        """A new pending subscription from a Create EventSub Subscription body,
        checked as Twitch checks it; ``Rejected`` if it is not acceptable."""
        kind, version, condition, callback, secret = _check_create(
            body, client_id=client_id, insecure=self.allow_insecure_callbacks
        )
        with self._lock:
            for other in self._subscriptions.values():
                if other.status in (ENABLED, PENDING) and (
                    (other.type, other.version, other.condition, other.callback)
                    == (kind, version, condition, callback)
                ):
                    raise Rejected(409, "subscription already exists", error="Conflict")
            subscription = Subscription(
                id=str(uuid.uuid4()),
                type=kind,
                version=version,
                condition=condition,
                callback=callback,
                secret=secret,
                created_at=rfc3339(time.time_ns()),
            )
            self._subscriptions[subscription.id] = subscription
            return subscription

    def list(
        self,
        *,
        status: str | None = None,
        kind: str | None = None,
        user_id: str | None = None,
        subscription_id: str | None = None,
    ) -> list[dict[str, object]]:
        """Oldest first, as Helix lists them."""
        with self._lock:
            return [
                s.json()
                for s in self._subscriptions.values()
                if (status is None or s.status == status)
                and (kind is None or s.type == kind)
                and (subscription_id is None or s.id == subscription_id)
                and (user_id is None or _names_user(s.condition, user_id))
            ]

    def total(self) -> int:
        with self._lock:
            return len(self._subscriptions)

    def delete(self, subscription_id: str) -> bool:
        with self._lock:
            deleted = self._subscriptions.pop(subscription_id, None) is not None
            self._changed.notify_all()
            return deleted

    # Tests -----------------------------------------------------------------

    def get(self, subscription_id: str) -> Subscription:
        with self._lock:
            subscription = self._subscriptions.get(subscription_id)
        if subscription is None:
            raise KeyError(f"no subscription with id {subscription_id!r}")
        return subscription

    def json(self, subscription: Subscription) -> dict[str, object]:
        with self._lock:
            return subscription.json()

    def revoke_targets(self, client_id: str) -> list[Subscription]:
        """The enabled subscriptions told when a user disconnects this app."""
        with self._lock:
            return [
                s
                for s in self._subscriptions.values()
                if s.status == ENABLED
                and s.type == REVOKE_TYPE
                and s.condition.get("client_id") == client_id
            ]

    def set_status(self, subscription: Subscription, status: str) -> None:
        with self._lock:
            subscription.status = status
            self._changed.notify_all()

    def wait_for(
        self, subscription_id: str, status: str, timeout: float
    ) -> dict[str, object]:
        # Monotonic: a test moving the clock must not end the wait.
        deadline = time.monotonic() + timeout
        with self._lock:
            while True:
                subscription = self._subscriptions.get(subscription_id)
                if subscription is None:
                    raise KeyError(f"no subscription with id {subscription_id!r}")
                if subscription.status == status:
                    return subscription.json()
                if subscription.status != PENDING:
                    # Verification is over; nothing else changes it by itself.
                    raise ValueError(
                        f"subscription {subscription_id} is "
                        f"{subscription.status!r}, not {status!r}"
                    )
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(
                        f"subscription {subscription_id} is still {PENDING!r} "
                        f"after {timeout} s"
                    )
                self._changed.wait(remaining)

    def record(self, subscription: Subscription, delivery: Delivery) -> None:
        with self._lock:
            # A delivery that outlived a reset or a delete is not recorded.
            if self._subscriptions.get(subscription.id) is subscription:
                self._deliveries.append(delivery)

    @property
    def deliveries(self) -> list[Delivery]:
        with self._lock:
            return list(self._deliveries)

    # Messages --------------------------------------------------------------

    def verification(
        self, subscription: Subscription, challenge: str
    ) -> WebhookMessage:
        payload = {"challenge": challenge, "subscription": self.json(subscription)}
        return _message(subscription, VERIFICATION, payload)

    def notification(
        self,
        subscription: Subscription,
        user: SandboxUser,
        *,
        client_id: str,
        gone: bool = False,
        message_id: str | None = None,
        timestamp: datetime | None = None,
        secret: str | None = None,
    ) -> WebhookMessage:
        event = {
            "client_id": client_id,
            "user_id": user.id,
            # Null for a user who deleted their account.
            "user_login": None if gone else user.login,
            "user_name": None if gone else user.display_name,
        }
        payload = {"subscription": self.json(subscription), "event": event}
        return _message(
            subscription,
            NOTIFICATION,
            payload,
            message_id=message_id,
            timestamp=None if timestamp is None else rfc3339(_nanoseconds(timestamp)),
            secret=secret,
        )

    def revocation(self, subscription: Subscription) -> WebhookMessage:
        payload = {"subscription": self.json(subscription)}
        return _message(subscription, REVOCATION, payload)


# Posting (on the sandbox's event loop) ---------------------------------------


async def verify(subscriptions: Subscriptions, subscription: Subscription) -> None:
    """Send the challenge; enabled only if the callback echoes it exactly."""
    challenge = secrets.token_urlsafe(24)
    delivery = await post(
        subscriptions, subscription, subscriptions.verification(subscription, challenge)
    )
    # Twitch also wants Content-Type text/plain; the sandbox does not insist.
    echoed = 200 <= delivery.status < 300 and delivery.answer == challenge
    subscriptions.set_status(subscription, ENABLED if echoed else FAILED)


async def post(
    subscriptions: Subscriptions,
    subscription: Subscription,
    message: WebhookMessage,
) -> Delivery:
    """POST the message to the subscription's callback and record the answer."""
    status, answer = 0, ""
    timeout = aiohttp.ClientTimeout(total=DELIVERY_TIMEOUT)
    try:
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.post(
                subscription.callback,
                data=message.body,
                headers=message.headers,
                allow_redirects=False,
            ) as response,
        ):
            status = response.status
            answer = (await response.read()).decode("utf-8", "replace")
    except (aiohttp.ClientError, TimeoutError):
        status, answer = 0, ""  # refused, reset or too slow: no answer
    delivery = Delivery(
        message_id=message.headers.get("Twitch-Eventsub-Message-Id", ""),
        message_type=message.headers.get("Twitch-Eventsub-Message-Type", ""),
        subscription_id=subscription.id,
        status=status,
        body=message.body.decode("utf-8", "replace"),
        answer=answer,
    )
    subscriptions.record(subscription, delivery)
    return delivery


# Helpers -----------------------------------------------------------------------


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


def _message(
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


def _nanoseconds(moment: datetime) -> int:
    if moment.tzinfo is None:
        raise ValueError("timestamp must be timezone-aware")
    return (moment - _EPOCH) // timedelta(microseconds=1) * 1000


def _names_user(condition: dict[str, str], user_id: str) -> bool:
    return any(
        key.endswith("user_id") and value == user_id for key, value in condition.items()
    )


def _check_create(
    body: object, *, client_id: str, insecure: bool
) -> tuple[str, str, dict[str, str], str, str]:
    if not isinstance(body, dict):
        raise _bad_request("The request body must be a JSON object")
    kind, version = body.get("type"), body.get("version")
    if not isinstance(kind, str) or not kind:
        raise _bad_request('Missing required parameter "type"')
    if not isinstance(version, str) or not version:
        raise _bad_request('Missing required parameter "version"')
    if (kind, version) != (REVOKE_TYPE, REVOKE_VERSION):
        raise _bad_request(
            f"type {kind!r} version {version!r} is not supported "
            f'(the sandbox knows only {REVOKE_TYPE} version "{REVOKE_VERSION}")'
        )
    condition = body.get("condition")
    if not isinstance(condition, dict) or condition != {"client_id": client_id}:
        raise _bad_request(
            'condition must be {"client_id": <the client id of the token>}'
        )
    transport = body.get("transport")
    if not isinstance(transport, dict) or transport.get("method") != "webhook":
        raise _bad_request('transport method must be "webhook"')
    secret = transport.get("secret")
    if (
        not isinstance(secret, str)
        or len(secret) not in SECRET_LENGTHS
        or not secret.isascii()
    ):
        raise _bad_request("transport secret must be 10 to 100 ASCII characters")
    callback = transport.get("callback")
    if not isinstance(callback, str) or not _acceptable_callback(
        callback, insecure=insecure
    ):
        raise _bad_request("transport callback must be an https URL on port 443")
    return kind, version, dict(condition), callback, secret


def _acceptable_callback(callback: str, *, insecure: bool) -> bool:
    parts = urlsplit(callback)
    try:
        port = parts.port
    except ValueError:
        return False
    if not parts.hostname:
        return False
    if parts.scheme == "https" and port in (None, 443):
        return True
    # For a test's or a developer's local http site.
    return insecure and parts.scheme in ("http", "https")


def _bad_request(message: str) -> Rejected:
    return Rejected(400, message, error="Bad Request")
