"""EventSub over webhooks: the app's subscriptions, and the signed messages
Twitch posts to their callbacks.

The types it knows are in eventsub_types.py, each with its condition and the
scopes Twitch wants the users it names to have granted. As on Twitch, a new
subscription stays pending until its callback echoes a challenge as
``text/plain``; an enabled one gets a ``notification`` for each event, and a
``revocation`` when Twitch revokes it. Delivering (timeouts, redelivery,
failures counted until ``notification_failures_exceeded``) is in
eventsub_delivery.py.

``Subscriptions`` keeps the subscriptions and every delivery under one lock,
because tests call in from their own thread; the posting itself runs on the
sandbox's event loop. Message times come from ``time.time_ns()``, so
time-machine moves Twitch's clock here too.
"""

from __future__ import annotations

import secrets
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime

from .eventsub_messages import (
    Delivery,
    WebhookMessage,
    build_message,
    nanoseconds,
    resign,
    revoke_event,
    rfc3339,
    sign,
    subscription_id_of,
)
from .eventsub_types import (
    TYPES,
    Authorizations,
    check_authorized,
    check_create,
    cost_of,
)
from .ledger import Rejected

__all__ = [
    "Delivery",
    "WebhookMessage",
    "resign",
    "revoke_event",
    "rfc3339",
    "sign",
    "subscription_id_of",
]

REVOKE_TYPE = "user.authorization.revoke"
REVOKE_VERSION = "1"

PENDING = "webhook_callback_verification_pending"
ENABLED = "enabled"
FAILED = "webhook_callback_verification_failed"
FAILURES_EXCEEDED = "notification_failures_exceeded"
# Why Twitch may revoke a webhook subscription; its status then names the reason.
REVOCATION_REASONS = (
    "authorization_revoked",
    "user_removed",
    FAILURES_EXCEEDED,
    "version_removed",
    "moderator_removed",
    "guest_star_moderator_removed",
    "chat_user_banned",
    "beta_maintenance",
)
LIVE = (ENABLED, PENDING)
# Every status Helix documents, for its ``status`` filter.
STATUSES = (
    ENABLED,
    PENDING,
    FAILED,
    *REVOCATION_REASONS,
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

MAX_TOTAL_COST = 10_000
PAGE_SIZE = 100  # Helix's pages of subscriptions


@dataclass
class DeliveryPolicy:
    """How Twitch delivers: seconds a callback has to answer, redeliveries of a
    message not answered 2xx in time (each ``retry_delay`` × 2ⁿ later, with a
    growing ``Twitch-Eventsub-Message-Retry``), and failed attempts in a row
    after which the subscription is revoked (``notification_failures_exceeded``).
    The delays are the sandbox's, short for tests; Twitch's are longer."""

    timeout: float = 3.0
    retries: int = 3
    retry_delay: float = 0.05
    failure_limit: int = 8


@dataclass(slots=True, eq=False)
class Subscription:
    id: str
    type: str
    version: str
    condition: dict[str, str]
    callback: str
    secret: str
    created_at: str
    cost: int = 0
    status: str = PENDING
    failures: int = 0  # failed delivery attempts in a row
    extra: dict[str, object] = field(default_factory=dict)

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
            "cost": self.cost,
        }


class Subscriptions:
    """The app's EventSub subscriptions and every message delivered to them."""

    def __init__(self, *, allow_insecure_callbacks: bool = False) -> None:
        self.allow_insecure_callbacks = allow_insecure_callbacks
        self.policy = DeliveryPolicy()
        self.max_total_cost = MAX_TOTAL_COST
        self.page_size = PAGE_SIZE
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._subscriptions: dict[str, Subscription] = {}
        self._deliveries: list[Delivery] = []
        self._cursors: dict[str, tuple[int, tuple[object, ...]]] = {}

    def reset(self) -> None:
        with self._lock:
            self._subscriptions.clear()
            self._deliveries.clear()
            self._cursors.clear()
            self.policy = DeliveryPolicy()
            self.max_total_cost = MAX_TOTAL_COST
            self.page_size = PAGE_SIZE
            self._changed.notify_all()

    # Helix -----------------------------------------------------------------

    def create(
        self, body: object, *, client_id: str, authorizations: Authorizations
    ) -> Subscription:
        """A new pending subscription from a Create EventSub Subscription body,
        checked as Twitch checks it; ``Rejected`` if it is not acceptable."""
        spec, condition, callback, secret = check_create(
            body, client_id=client_id, insecure=self.allow_insecure_callbacks
        )
        check_authorized(spec, condition, authorizations)
        cost = cost_of(spec, condition, authorizations)
        with self._lock:
            live = [s for s in self._subscriptions.values() if s.status in LIVE]
            for other in live:
                # Twitch: one per type and condition, whatever the callback.
                if (other.type, other.version, other.condition) == (
                    spec.name,
                    spec.version,
                    condition,
                ):
                    raise Rejected(409, "subscription already exists", error="Conflict")
            if sum(s.cost for s in live) + cost > self.max_total_cost:
                raise Rejected(
                    429, "subscription total cost exceeded", error="Too Many Requests"
                )
            subscription = Subscription(
                id=str(uuid.uuid4()),
                type=spec.name,
                version=spec.version,
                condition=condition,
                callback=callback,
                secret=secret,
                created_at=rfc3339(time.time_ns()),
                cost=cost,
            )
            self._subscriptions[subscription.id] = subscription
            return subscription

    def page(
        self, *, after: str | None = None, **filters: str | None
    ) -> tuple[list[dict[str, object]], str | None]:
        """One page of the listing, oldest first, and the cursor of the next
        (None on the last page); ``KeyError`` for a cursor never given out or
        given for other filters."""
        key = tuple(sorted(filters.items()))
        with self._lock:
            start = 0
            if after:
                start, cursor_key = self._cursors[after]
                if cursor_key != key:
                    raise KeyError(after)
            matching = [
                s.json() for s in self._subscriptions.values() if _matches(s, **filters)
            ]
            end = start + self.page_size
            cursor = None
            if end < len(matching):
                cursor = secrets.token_urlsafe(24)
                self._cursors[cursor] = (end, key)
            return matching[start:end], cursor

    def list(self, **filters: str | None) -> list[dict[str, object]]:
        """Every subscription (filtered), oldest first, on one list."""
        with self._lock:
            return [
                s.json() for s in self._subscriptions.values() if _matches(s, **filters)
            ]

    def totals(self) -> dict[str, int]:
        """``total`` (every subscription) and ``total_cost`` (the enabled and
        pending ones), against ``max_total_cost``."""
        with self._lock:
            subscriptions = list(self._subscriptions.values())
            return {
                "total": len(subscriptions),
                "total_cost": sum(s.cost for s in subscriptions if s.status in LIVE),
                "max_total_cost": self.max_total_cost,
            }

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

    def enabled(
        self, kind: str, condition: dict[str, str] | None = None
    ) -> list[Subscription]:
        """The enabled subscriptions of a type whose condition holds every
        field of ``condition``."""
        wanted = condition or {}
        with self._lock:
            return [
                s
                for s in self._subscriptions.values()
                if s.status == ENABLED
                and s.type == kind
                and all(s.condition.get(k) == v for k, v in wanted.items())
            ]

    def revoke_targets(self, client_id: str) -> list[Subscription]:
        """The enabled subscriptions told when a user disconnects this app."""
        return self.enabled(REVOKE_TYPE, {"client_id": client_id})

    def naming(self, user_id: str) -> list[Subscription]:
        """The enabled subscriptions whose condition names this user."""
        with self._lock:
            return [
                s
                for s in self._subscriptions.values()
                if s.status == ENABLED and _names_user(s.condition, user_id)
            ]

    def authorized_by(self, user_id: str) -> list[Subscription]:
        """The enabled subscriptions that needed this user's authorization."""
        with self._lock:
            return [
                s
                for s in self._subscriptions.values()
                if s.status == ENABLED
                and any(
                    s.condition.get(field_name) == user_id
                    for field_name in TYPES[(s.type, s.version)].scopes
                )
            ]

    def status_of(self, subscription: Subscription) -> str:
        with self._lock:
            return subscription.status

    def set_status(self, subscription: Subscription, status: str) -> None:
        with self._lock:
            subscription.status = status
            self._changed.notify_all()

    def count_attempt(self, subscription: Subscription, *, ok: bool) -> bool:
        """Count a delivery attempt; True when this failure is one too many and
        the subscription is now revoked (``notification_failures_exceeded``)."""
        with self._lock:
            if ok:
                subscription.failures = 0
                return False
            subscription.failures += 1
            if (
                subscription.status == ENABLED
                and subscription.failures >= self.policy.failure_limit
            ):
                subscription.status = FAILURES_EXCEEDED
                self._changed.notify_all()
                return True
            return False

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
        return build_message(subscription, VERIFICATION, payload)

    def notification(
        self,
        subscription: Subscription,
        event: dict[str, object],
        *,
        message_id: str | None = None,
        timestamp: datetime | None = None,
        secret: str | None = None,
    ) -> WebhookMessage:
        payload = {"subscription": self.json(subscription), "event": event}
        return build_message(
            subscription,
            NOTIFICATION,
            payload,
            message_id=message_id,
            timestamp=None if timestamp is None else rfc3339(nanoseconds(timestamp)),
            secret=secret,
        )

    def revocation(self, subscription: Subscription) -> WebhookMessage:
        payload = {"subscription": self.json(subscription)}
        return build_message(subscription, REVOCATION, payload)


# Helpers -----------------------------------------------------------------------


def _matches(
    subscription: Subscription,
    *,
    status: str | None = None,
    type: str | None = None,  # noqa: A002 (Helix's name)
    user_id: str | None = None,
    subscription_id: str | None = None,
) -> bool:
    return (
        (status is None or subscription.status == status)
        and (type is None or subscription.type == type)
        and (subscription_id is None or subscription.id == subscription_id)
        and (user_id is None or _names_user(subscription.condition, user_id))
    )


def _names_user(condition: dict[str, str], user_id: str) -> bool:
    return any(
        key.endswith("user_id") and value == user_id for key, value in condition.items()
    )
