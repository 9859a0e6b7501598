"""The sandbox's EventSub handles for tests: subscriptions, deliveries, messages
to post and how deliveries behave. Mixed into ``Sandbox``, whose ``eventsub``,
``ledger`` and loop they drive."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime

from . import eventsub_delivery, webhooks
from .ledger import Ledger
from .webhooks import Delivery, DeliveryPolicy, Subscriptions, WebhookMessage


class EventSubHandles:
    """EventSub, as tests drive it (``Sandbox`` mixes this in)."""

    # Set by Sandbox.__init__, as are its `_user`, `_on_loop` and `_post_each`.
    eventsub: Subscriptions
    ledger: Ledger

    def subscriptions(self) -> list[dict[str, object]]:
        """Every EventSub subscription, oldest first, as Helix lists them."""
        return self.eventsub.list()

    def wait_for_subscription_status(
        self, id: str, status: str, timeout: float = 10.0
    ) -> dict[str, object]:
        """The subscription once its status is ``status``. Waits while its
        verification is under way; ValueError if it ended in another status,
        TimeoutError after ``timeout`` seconds, KeyError for an unknown id."""
        return self.eventsub.wait_for(id, status, float(timeout))

    @property
    def deliveries(self) -> list[Delivery]:
        """Every message posted to a callback, in the order they were answered."""
        return self.eventsub.deliveries

    def notification_message(
        self,
        login: str,
        *,
        subscription_id: str | None = None,
        timestamp: datetime | None = None,
        message_id: str | None = None,
        secret: str | None = None,
        gone: bool = False,
    ) -> WebhookMessage:
        """A signed ``user.authorization.revoke`` notification about ``login``,
        built but not sent (``deliver`` sends it).

        For the only enabled revoke subscription unless ``subscription_id``
        names one. A wrong ``secret`` makes a bad signature, an old
        ``timestamp`` (timezone-aware) a stale message, an earlier
        ``message_id`` a replay.
        """
        user = self._user(login)
        if subscription_id is not None:
            subscription = self.eventsub.get(subscription_id)
        else:
            targets = self.eventsub.revoke_targets(self.client_id)
            if len(targets) != 1:
                raise ValueError(
                    f"{len(targets)} enabled {webhooks.REVOKE_TYPE} subscriptions;"
                    " name one with subscription_id"
                )
            subscription = targets[0]
        event = webhooks.revoke_event(user, client_id=self.client_id, gone=gone)
        return self.eventsub.notification(
            subscription,
            event,
            message_id=message_id,
            timestamp=timestamp,
            secret=secret,
        )

    def event_message(
        self,
        id: str,
        event: Mapping[str, object] | None = None,
        *,
        message_id: str | None = None,
        timestamp: datetime | None = None,
    ) -> WebhookMessage:
        """A signed notification for subscription ``id``, built but not sent;
        ``event`` defaults to the subscription's condition, with each user's
        login and name beside their id."""
        subscription = self.eventsub.get(id)
        return self.eventsub.notification(
            subscription,
            dict(event) if event is not None else self._event_for(subscription),
            message_id=message_id,
            timestamp=timestamp,
        )

    def notify(
        self,
        type: str,
        condition: Mapping[str, str] | None = None,
        event: Mapping[str, object] | None = None,
    ) -> list[Delivery]:
        """An event happens: each enabled subscription of ``type`` whose
        condition holds every field of ``condition`` gets a signed
        notification, delivered as Twitch does (redelivered while not answered
        2xx in time, failures counted). Returns the last attempt of each, once
        every delivery is over."""
        targets = self.eventsub.enabled(type, dict(condition or {}))
        messages = [(s, self.event_message(s.id, event)) for s in targets]
        return self._on_loop(self._deliver_all(messages)) if messages else []

    def deliver(self, message: WebhookMessage) -> int:
        """POST the message to its subscription's callback as it is, once; the
        HTTP status answered, 0 if none. The attempt counts towards the
        subscription's failures like any."""
        subscription = self.eventsub.get(webhooks.subscription_id_of(message))
        delivery = self._on_loop(
            eventsub_delivery.deliver_once(self.eventsub, subscription, message)
        )
        return delivery.status

    def deliver_all(self, messages: Iterable[WebhookMessage]) -> list[Delivery]:
        """Deliver messages all at once, as Twitch does when many events happen
        together, each with its redeliveries; the last attempt of each, in the
        order given."""
        pairs = [
            (self.eventsub.get(webhooks.subscription_id_of(m)), m) for m in messages
        ]
        return self._on_loop(self._deliver_all(pairs))

    def revoke_subscription(
        self, id: str, reason: str = "authorization_revoked"
    ) -> None:
        """Twitch revokes an enabled subscription: its status becomes
        ``reason`` and its callback gets a signed ``revocation``; returns once
        it answered."""
        if reason not in webhooks.REVOCATION_REASONS:
            raise ValueError(
                f"unknown reason {reason!r}; use one of {webhooks.REVOCATION_REASONS}"
            )
        subscription = self.eventsub.get(id)
        status = self.eventsub.json(subscription)["status"]
        if status != webhooks.ENABLED:
            raise ValueError(f"subscription {id} is {status!r}, not enabled")
        self.eventsub.set_status(subscription, reason)
        message = self.eventsub.revocation(subscription)
        self._on_loop(eventsub_delivery.post(self.eventsub, subscription, message))

    def set_delivery_policy(
        self,
        timeout: float | None = None,
        retries: int | None = None,
        retry_delay: float | None = None,
        failure_limit: int | None = None,
    ) -> None:
        """How deliveries go until ``reset()``: seconds a callback has to answer
        (3), redeliveries of a message not answered 2xx in time (3), the first
        one's delay in seconds, doubling after (0.05), and failed attempts in a
        row that revoke the subscription (8)."""
        current = self.eventsub.policy
        policy = DeliveryPolicy(
            timeout=current.timeout if timeout is None else float(timeout),
            retries=current.retries if retries is None else int(retries),
            retry_delay=(
                current.retry_delay if retry_delay is None else float(retry_delay)
            ),
            failure_limit=(
                current.failure_limit if failure_limit is None else int(failure_limit)
            ),
        )
        if policy.timeout <= 0 or policy.retries < 0 or policy.failure_limit < 1:
            raise ValueError("timeout > 0, retries >= 0 and failure_limit >= 1")
        self.eventsub.policy = policy

    def set_eventsub_limits(
        self, max_total_cost: int | None = None, page_size: int | None = None
    ) -> None:
        """Until ``reset()``: the app's ``max_total_cost`` (10000) and how many
        subscriptions Helix lists per page (100)."""
        if max_total_cost is not None:
            self.eventsub.max_total_cost = int(max_total_cost)
        if page_size is not None:
            if int(page_size) < 1:
                raise ValueError("page_size must be at least 1")
            self.eventsub.page_size = int(page_size)

    def _event_for(self, subscription: webhooks.Subscription) -> dict[str, object]:
        event: dict[str, object] = {}
        for key, value in subscription.condition.items():
            event[key] = value
            if key.endswith("user_id"):
                user = self.ledger.user_by_id(value)
                prefix = key.removesuffix("_id")
                event[f"{prefix}_login"] = user.login if user else None
                event[f"{prefix}_name"] = user.display_name if user else None
        return event
