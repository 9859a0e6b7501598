"""The site's EventSub subscriptions, kept in step with what it wants.

What is wanted (`plan`): `user.authorization.revoke` for the application, and
each type of TWITCH_EVENTSUB_TYPES for every person whose connections can
provide its condition with the scopes it needs; what cannot be had is `Missing`,
with the reason. `reconcile` (`manage.py eventsub subscribe`) makes Twitch's
list (every page of it) match: it creates what is missing and deletes this
callback's subscriptions nothing wants, or that Twitch has ended. When an
account connects, its subscriptions are created after the answer; when one is
revoked or disconnected, those nothing else wants are deleted (`connected`,
`revoked`). Either is done again by the next `subscribe` if the process ends
first.

Revocations: a subscription Twitch ended for a user's sake (NOT_RECREATED:
`authorization_revoked`, `user_removed`, `moderator_removed`, `chat_user_banned`,
`beta_maintenance`) is not created again until the account connects again, whether
the site heard the revocation message or only finds the subscription ended in
Twitch's list; `notification_failures_exceeded` is, by the next `subscribe`;
`version_removed` is logged as an error and warned of (`manage.py eventsub
status`, `manage.py check --database default`) while the version is still wanted.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db.models import Max
from django.utils import timezone

from accounts import background, twitch
from accounts.eventsub import catalogue
from accounts.eventsub.builtin import NOT_RECREATED, remember_revocation
from accounts.eventsub.catalogue import EventType
from accounts.eventsub.webhook import enabled
from accounts.models import EventSubRevocation, TokenEvent, TwitchToken
from accounts.tokens.app_token import app_access_token
from accounts.twitch import TwitchError
from accounts.twitch.helix import SubscriptionListing, eventsub_listing

logger = logging.getLogger(__name__)

# A subscription in these states exists (or is about to): creating it again would
# be a duplicate (Twitch: 409).
LIVE_STATUSES = frozenset({"enabled", "webhook_callback_verification_pending"})
# Ended by Twitch, and recorded as a revocation when found in its list (the
# revocation message may never have come).
ENDED_STATUSES = frozenset({*NOT_RECREATED, "version_removed"})
# Creating many at once: a few in flight, not hundreds.
CONCURRENCY = 4

T = TypeVar("T")
Key = tuple[str, str, tuple[tuple[str, str], ...]]

__all__ = ["TwitchError", "enabled", "plan", "reconcile", "run", "status"]


@dataclass(frozen=True)
class Wanted:
    type: EventType
    condition: dict[str, str]
    who: str = ""  # whose connections, for the operator

    @property
    def key(self) -> Key:
        return key_of(self.type.name, self.type.version, self.condition)


@dataclass(frozen=True)
class Missing:
    type: EventType
    who: str
    reason: str


@dataclass
class Outcome:
    """What `reconcile` did."""

    created: list[dict[str, Any]] = field(default_factory=list)
    kept: list[dict[str, Any]] = field(default_factory=list)
    deleted: list[dict[str, Any]] = field(default_factory=list)
    refused: list[tuple[Wanted, str]] = field(default_factory=list)
    missing: list[Missing] = field(default_factory=list)


def key_of(name: str, version: str, condition: dict[str, Any]) -> Key:
    return (name, version, tuple(sorted((k, str(v)) for k, v in condition.items())))


def subscription_key(subscription: dict[str, Any]) -> Key:
    condition = subscription.get("condition")
    return key_of(
        str(subscription.get("type")),
        str(subscription.get("version")),
        condition if isinstance(condition, dict) else {},
    )


def is_ours(subscription: dict[str, Any]) -> bool:
    transport = subscription.get("transport") or {}
    callback = transport.get("callback") if isinstance(transport, dict) else None
    return callback == settings.TWITCH_EVENTSUB_CALLBACK_URL


# What is wanted ------------------------------------------------------------------


def plan(
    *, user_ids: Iterable[int] | None = None
) -> tuple[list[Wanted], list[Missing]]:
    """The subscriptions wanted (all, or those of these site users' connections),
    and the ones that cannot be had, with why."""
    wanted: dict[Key, Wanted] = {}
    missing: list[Missing] = []
    if user_ids is None:
        revoke = catalogue.find(catalogue.REVOKE, "1")
        assert revoke is not None
        app = Wanted(revoke, revoke.condition({}), "the application")
        wanted[app.key] = app
    types = catalogue.wanted_types()
    if not types:
        return list(wanted.values()), missing
    live = TwitchToken.objects.filter(status=TwitchToken.Status.ACTIVE)
    if user_ids is not None:
        live = live.filter(user_id__in=list(user_ids))
    people: dict[int, dict[str, TwitchToken]] = {}
    for token in live.order_by("pk"):
        people.setdefault(token.user_id, {})[token.role] = token
    blocked = _blocked(people)
    for connections in people.values():
        for kind in types:
            anchor = kind.anchor
            if anchor is None or anchor.role not in connections:
                continue
            who = connections[anchor.role].login
            reason = _why_not(kind, connections)
            if reason is None:
                candidate = Wanted(kind, kind.condition(connections), who)
                reason = blocked.get(candidate.key)
                if reason is None:
                    wanted.setdefault(candidate.key, candidate)
                    continue
            missing.append(Missing(kind, who, reason))
    return list(wanted.values()), missing


def _why_not(kind: EventType, connections: dict[str, TwitchToken]) -> str | None:
    for party in kind.parties:
        token = connections.get(party.role)
        if token is None:
            return f"no {party.role} connection"
        lacking = [s for s in party.scopes if s not in (token.scopes or [])]
        if lacking:
            return (
                f"the {party.role} connection ({token.login}) has not granted "
                + ", ".join(lacking)
            )
    return None


def _blocked(people: dict[int, dict[str, TwitchToken]]) -> dict[Key, str]:
    """Subscriptions Twitch revoked for a user's sake (NOT_RECREATED) since the
    connections they name last connected: not created again."""
    revocations = EventSubRevocation.objects.filter(reason__in=NOT_RECREATED)
    if not revocations.exists():
        return {}
    tokens = [t for connections in people.values() for t in connections.values()]
    connected = {
        row["pk"]: row["last"]
        for row in TwitchToken.objects.filter(pk__in=[t.pk for t in tokens])
        .filter(events__action=TokenEvent.Action.CONNECT)
        .values("pk")
        .annotate(last=Max("events__created_at"))
    }
    since = {
        t.twitch_user_id: max(connected.get(t.pk) or t.created_at, t.created_at)
        for t in tokens
    }
    blocked: dict[Key, str] = {}
    for revocation in revocations:
        users = [
            v for k, v in revocation.condition.items() if str(k).endswith("user_id")
        ]
        if any(u in since and since[u] < revocation.received_at for u in users):
            key = key_of(
                revocation.subscription_type,
                revocation.subscription_version,
                revocation.condition,
            )
            blocked[key] = (
                f"Twitch revoked it ({revocation.reason}) "
                f"{revocation.received_at:%Y-%m-%d %H:%M}; it comes back when the "
                "account connects again"
            )
    return blocked


# Making Twitch's list match --------------------------------------------------------


async def listing(*, user_id: str | None = None) -> SubscriptionListing:
    return await _with_app_token(
        lambda token: eventsub_listing(app_token=token, user_id=user_id)
    )


async def reconcile(*, replace: bool = False) -> Outcome:
    """Create what is wanted and missing, delete this callback's subscriptions
    nothing wants (and any at another callback that is wanted here: the site
    moved). With `replace`, every subscription wanted or ours is made again
    (after a new TWITCH_EVENTSUB_SECRET: Twitch never says which secret a
    subscription signs with). Idempotent.

    Ours that Twitch ended for a user's sake are recorded as revocations first,
    so that what is wanted (`plan`, with `_blocked`) is decided the same way
    whether or not the revocation message came."""
    listed = (await listing()).data
    await sync_to_async(_remember_ended)(listed)
    wanted, missing = await sync_to_async(plan)()
    outcome = Outcome(missing=missing)
    by_key = {w.key: w for w in wanted}
    present: set[Key] = set()
    for subscription in listed:
        key = subscription_key(subscription)
        live = subscription.get("status") in LIVE_STATUSES
        keep = (not replace and is_ours(subscription) and live and key in by_key) or (
            not is_ours(subscription) and key not in by_key
        )
        if keep:
            if key in by_key:
                present.add(key)
                outcome.kept.append(subscription)
            continue
        await _delete(subscription)
        outcome.deleted.append(subscription)
    await _create_all([w for key, w in by_key.items() if key not in present], outcome)
    return outcome


def _remember_ended(listed: list[dict[str, Any]]) -> None:
    for subscription in listed:
        if is_ours(subscription) and subscription.get("status") in ENDED_STATUSES:
            # When it ended, Twitch's list does not say; after it was made, for
            # sure: a connection made since then may be the reconnect that
            # brings it back.
            remember_revocation(
                subscription,
                received_at=_created_at(subscription) or timezone.now(),
                overwrite=False,
            )


def _created_at(subscription: dict[str, Any]) -> datetime | None:
    try:
        created = datetime.fromisoformat(str(subscription.get("created_at")))
    except ValueError:
        return None
    return created if created.tzinfo is not None else None


async def _create_all(wanted: list[Wanted], outcome: Outcome) -> None:
    gate = asyncio.Semaphore(CONCURRENCY)

    async def create(one: Wanted) -> None:
        async with gate:
            try:
                outcome.created.append(await _create(one))
            except twitch.TwitchRejected as rejected:
                if rejected.status == 409:  # made meanwhile (a connect's task)
                    return
                outcome.refused.append((one, str(rejected)))

    await asyncio.gather(*(create(one) for one in wanted))


async def _create(one: Wanted) -> dict[str, Any]:
    return await _with_app_token(
        lambda token: twitch.create_eventsub_subscription(
            app_token=token,
            subscription_type=one.type.name,
            version=one.type.version,
            condition=one.condition,
            callback=settings.TWITCH_EVENTSUB_CALLBACK_URL,
            secret=settings.TWITCH_EVENTSUB_SECRET,
        )
    )


async def unsubscribe() -> int:
    """Delete this callback's subscriptions (and the application's revoke one,
    wherever it calls); how many."""
    doomed = [
        s
        for s in (await listing()).data
        if is_ours(s) or subscription_key(s) == _app_key()
    ]
    for subscription in doomed:
        await _delete(subscription)
    return len(doomed)


def _app_key() -> Key:
    return key_of(catalogue.REVOKE, "1", {"client_id": settings.TWITCH_CLIENT_ID})


async def _delete(subscription: dict[str, Any]) -> None:
    try:
        await _with_app_token(
            lambda token: twitch.delete_eventsub_subscription(
                app_token=token, subscription_id=str(subscription["id"])
            )
        )
    except twitch.TwitchRejected as rejected:
        if rejected.status != 404:  # gone already
            raise


async def _with_app_token(call: Callable[[str], Awaitable[T]]) -> T:
    """Call with the shared app token; once more with a new one if Twitch refuses."""
    token = await app_access_token()
    try:
        return await twitch.with_retries(lambda: call(token))
    except twitch.InvalidCredential:
        token = await app_access_token(refused=token)
        return await twitch.with_retries(lambda: call(token))


# When connections come and go ------------------------------------------------------


async def connected(sender: object, *, token: TwitchToken, **kwargs: Any) -> None:
    """`token_connected`: create this person's subscriptions after the answer."""
    if enabled() and catalogue.wanted_types():
        background.in_background(_subscribe_person(token.user_id))


async def revoked(sender: object, *, token: TwitchToken, **kwargs: Any) -> None:
    """`token_revoked`: delete what nothing wants any more, after the answer."""
    if enabled() and catalogue.wanted_types():
        background.in_background(_unsubscribe_account(token.twitch_user_id))


async def _subscribe_person(user_id: int) -> None:
    wanted, _ = await sync_to_async(plan)(user_ids=[user_id])
    accounts = {v for w in wanted for k, v in w.condition.items() if "user_id" in k}
    present: set[Key] = set()
    for account in accounts:
        present |= {
            subscription_key(s)
            for s in (await listing(user_id=account)).data
            if s.get("status") in LIVE_STATUSES
        }
    outcome = Outcome()
    await _create_all([w for w in wanted if w.key not in present], outcome)
    for one, reason in outcome.refused:
        logger.warning("Could not subscribe to %s: %s", one.type.key, reason)


async def _unsubscribe_account(twitch_user_id: str) -> None:
    wanted, _ = await sync_to_async(plan)()
    keys = {w.key for w in wanted}
    for subscription in (await listing(user_id=twitch_user_id)).data:
        if is_ours(subscription) and subscription_key(subscription) not in keys:
            await _delete(subscription)


def run(function: Callable[[], Awaitable[T]]) -> T:
    """Any of the above from sync code (the `eventsub` command)."""
    return twitch.run_sync(function)


async def status() -> tuple[SubscriptionListing, list[Wanted], list[Missing]]:
    """Twitch's list with its totals, what is wanted and what cannot be had."""
    wanted, missing = await sync_to_async(plan)()
    return await listing(), wanted, missing


def absent(listed: list[dict[str, Any]], wanted: list[Wanted]) -> list[Wanted]:
    """What is wanted and not on Twitch (none of ours live): the next
    `subscribe` creates it."""
    live = {
        subscription_key(s)
        for s in listed
        if is_ours(s) and s.get("status") in LIVE_STATUSES
    }
    return [one for one in wanted if one.key not in live]


def astray(
    listed: list[dict[str, Any]], wanted: list[Wanted]
) -> list[tuple[dict[str, Any], str]]:
    """Ours that are not enabled, or that nothing wants, each with what becomes
    of it."""
    keys = {one.key for one in wanted}
    found = []
    for subscription in listed:
        if not is_ours(subscription):
            continue
        state = str(subscription.get("status"))
        if state == "enabled":
            if subscription_key(subscription) not in keys:
                found.append((subscription, f"not wanted: {_DELETED}"))
            continue
        found.append((subscription, f"{state}: {what_becomes_of(state)}"))
    return found


def what_becomes_of(state: str) -> str:
    if state == "webhook_callback_verification_pending":
        return "Twitch is verifying the callback"
    if state == "webhook_callback_verification_failed":
        return (
            "Twitch could not verify the callback; deleted and tried again by "
            "the next subscribe"
        )
    if state == "notification_failures_exceeded":
        return "recreated by the next subscribe"
    if state in NOT_RECREATED:
        return (
            "deleted by the next subscribe; created again once the account "
            "connects again"
        )
    if state == "version_removed":
        return (
            "deleted by the next subscribe; TWITCH_EVENTSUB_TYPES must name a "
            "version Twitch supports"
        )
    return _DELETED


_DELETED = "deleted by the next subscribe"
