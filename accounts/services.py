"""What the site does with Twitch connections: connect, refresh, validate, revoke.

Views, admin actions and commands call these; these call the Twitch seam
(`accounts.twitch`). Business rules live here and nowhere else.
"""

from __future__ import annotations

import asyncio
import enum
import hashlib
import logging
import operator
import secrets
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import reduce
from typing import Any

from asgiref.sync import sync_to_async
from django.contrib.auth.base_user import AbstractBaseUser
from django.contrib.sessions.backends.base import SessionBase
from django.db import DatabaseError, IntegrityError, transaction
from django.db.models import Q, QuerySet
from django.utils import timezone
from django.utils.crypto import constant_time_compare
from django.views.decorators.debug import sensitive_variables

from accounts import signals, twitch
from accounts.models import SpentOAuthState, TokenEvent, TwitchToken

logger = logging.getLogger(__name__)

# --- The OAuth state -------------------------------------------------------------

STATE_SESSION_KEY = "twitch_oauth_states"
STATE_LIFETIME = 600  # seconds
# Several tabs may be mid-flow at once; the oldest pending state is dropped first.
MAX_PENDING_STATES = 5


class InvalidState(Exception):
    """The callback's state is missing, unknown, expired or already used."""


async def begin_connect(
    *, session: SessionBase, next_url: str, force_verify: bool = False
) -> str:
    """Mint a state bound to this browser session and return Twitch's authorize URL."""
    state = secrets.token_urlsafe(32)  # 256 bits
    pending = dict(await session.aget(STATE_SESSION_KEY, {}))
    pending[state] = {"created": time.time(), "next": next_url}
    newest = sorted(pending.items(), key=lambda item: item[1]["created"])
    await session.aset(STATE_SESSION_KEY, dict(newest[-MAX_PENDING_STATES:]))
    return twitch.authorize_url(state=state, force_verify=force_verify)


async def take_state(*, session: SessionBase, state: str) -> str:
    """Consume a pending state and return the `next` URL that was stored with it.

    The state is removed and the session saved *before* anything else happens, and
    its use is recorded in `SpentOAuthState`, so a replayed callback is refused
    even when it read the session at the same moment as the first.
    """
    pending: dict[str, dict[str, Any]] = dict(await session.aget(STATE_SESSION_KEY, {}))
    # Compare against every pending state in constant time, not by dict lookup.
    match = next((s for s in pending if constant_time_compare(s, state)), None)
    now = time.time()
    fresh = {
        s: data for s, data in pending.items() if now - data["created"] < STATE_LIFETIME
    }
    if match is not None:
        fresh.pop(match, None)
    if fresh != pending:
        await session.aset(STATE_SESSION_KEY, fresh)
        await session.asave()
    if match is None or not state:
        raise InvalidState("unknown")
    if now - pending[match]["created"] >= STATE_LIFETIME:
        raise InvalidState("expired")
    if not await sync_to_async(_spend_state)(match):
        raise InvalidState("replayed")
    return str(pending[match]["next"])


def _spend_state(state: str) -> bool:
    """Record the state as used; False if a concurrent request already did."""
    digest = hashlib.sha256(state.encode()).hexdigest()
    try:
        with transaction.atomic():
            SpentOAuthState.objects.filter(
                spent_at__lt=timezone.now() - timedelta(seconds=STATE_LIFETIME)
            ).delete()
            SpentOAuthState.objects.create(digest=digest)
    except IntegrityError:
        return False
    return True


# --- Connecting --------------------------------------------------------------------


class AlreadyLinked(Exception):
    """The Twitch account is already connected to another site user."""

    def __init__(self, login: str) -> None:
        super().__init__(f"Twitch account {login} is connected to another user.")
        self.login = login


@sensitive_variables()
async def connect(*, user: AbstractBaseUser, code: str) -> TwitchToken:
    """Exchange the code, learn whose token it is and store it for `user`.

    Exactly two round trips to Twitch: the code exchange, then validation (which
    names the Twitch account). Raises `twitch.TwitchError` or `AlreadyLinked`;
    either way nothing is stored.
    """
    grant = await twitch.exchange_code(code)
    info = await twitch.validate(grant.access_token)
    try:
        token = await sync_to_async(_store_connection)(
            user=user, grant=grant, info=info
        )
    except AlreadyLinked:
        # We will not hold this token, so Twitch need not keep it alive either.
        await _revoke_quietly(grant.access_token)
        raise
    await signals.token_connected.asend(sender=TwitchToken, token=token)
    return token


def _store_connection(
    *, user: AbstractBaseUser, grant: twitch.TokenGrant, info: twitch.TokenInfo
) -> TwitchToken:
    now = timezone.now()
    fields = {
        "twitch_user_id": info.user_id,
        "login": info.login,
        "access_token": grant.access_token,
        "refresh_token": grant.refresh_token,
        "scopes": grant.scopes,
        "expires_at": now + timedelta(seconds=grant.expires_in),
        "status": TwitchToken.Status.ACTIVE,
        "last_validated_at": now,
        "last_error": "",
        "claimed_until": None,
    }
    try:
        with transaction.atomic():
            linked_elsewhere = (
                TwitchToken.objects.filter(twitch_user_id=info.user_id)
                .exclude(status=TwitchToken.Status.REVOKED)
                .exclude(user=user)
            )
            if linked_elsewhere.exists():
                raise AlreadyLinked(info.login)
            # Reconnecting updates the user's one row in place.
            token, _ = TwitchToken.objects.update_or_create(user=user, defaults=fields)
            TokenEvent.objects.create(
                token=token,
                action=TokenEvent.Action.CONNECT,
                outcome=TokenEvent.Outcome.SUCCEEDED,
                source=TokenEvent.Source.USER,
                actor=user,
                detail=f"Connected as {info.login}",
            )
    except IntegrityError:
        # Another user connected the same account at the same moment.
        raise AlreadyLinked(info.login) from None
    return token


@sensitive_variables()
async def _revoke_quietly(access_token: str) -> bool:
    try:
        await twitch.revoke(access_token)
    except twitch.InvalidCredential:
        return True  # already dead at Twitch
    except twitch.TwitchError as error:
        logger.warning("could not revoke a token at Twitch: %s", error)
        return False
    return True


# --- Revoking ----------------------------------------------------------------------


class RevokeOutcome(enum.Enum):
    REVOKED = "revoked"
    # Forgotten here, but Twitch could not be told: the user should disconnect the
    # app in their Twitch settings too.
    REVOKED_LOCALLY = "revoked locally but Twitch was unreachable"
    ALREADY_REVOKED = "already revoked"


async def revoke_token(
    *,
    token: TwitchToken,
    source: TokenEvent.Source,
    actor: AbstractBaseUser | None = None,
) -> RevokeOutcome:
    """Revoke the token at Twitch, then wipe its secrets here whatever Twitch said.

    The site must stop holding the credential even when Twitch cannot be reached.
    The row stays, marked revoked, for the record.
    """
    # The caller's copy may be older than a refresh that happened since: revoke
    # the access token the row holds now.
    token = await TwitchToken.objects.filter(pk=token.pk).afirst() or token
    if token.status == TwitchToken.Status.REVOKED and not token.refresh_token:
        return RevokeOutcome.ALREADY_REVOKED
    told_twitch = not token.is_undecryptable
    if token.access_token:
        told_twitch = await _revoke_quietly(token.access_token)
    await sync_to_async(_wipe)(
        token=token, told_twitch=told_twitch, source=source, actor=actor
    )
    await signals.token_revoked.asend(sender=TwitchToken, token=token)
    return RevokeOutcome.REVOKED if told_twitch else RevokeOutcome.REVOKED_LOCALLY


async def revoke_tokens(
    *,
    tokens: list[TwitchToken],
    source: TokenEvent.Source,
    actor: AbstractBaseUser | None = None,
    concurrency: int = 20,
) -> Counter[RevokeOutcome]:
    """Revoke many tokens, `concurrency` at a time; count each outcome."""
    limit = asyncio.Semaphore(concurrency)

    async def revoke_one(token: TwitchToken) -> RevokeOutcome:
        async with limit:
            return await revoke_token(token=token, source=source, actor=actor)

    return Counter(await asyncio.gather(*(revoke_one(token) for token in tokens)))


def _wipe(
    *,
    token: TwitchToken,
    told_twitch: bool,
    source: TokenEvent.Source,
    actor: AbstractBaseUser | None,
) -> None:
    token.wipe_secrets()
    token.status = TwitchToken.Status.REVOKED
    token.claimed_until = None
    token.last_error = "" if told_twitch else "Revoked here; Twitch was unreachable."
    with transaction.atomic():
        token.save(
            update_fields=[
                "access_token",
                "refresh_token",
                "status",
                "claimed_until",
                "last_error",
                "updated_at",
            ]
        )
        TokenEvent.objects.create(
            token=token,
            action=TokenEvent.Action.REVOKE,
            outcome=(
                TokenEvent.Outcome.SUCCEEDED
                if told_twitch
                else TokenEvent.Outcome.UNAVAILABLE
            ),
            source=source,
            actor=actor,
            detail="" if told_twitch else "Twitch was unreachable; secrets wiped here.",
        )


async def connection_for(user: AbstractBaseUser) -> TwitchToken | None:
    return await TwitchToken.objects.filter(user=user).afirst()


# --- Keeping tokens alive: refresh and validate ---------------------------------------

# While a run holds a token's lease nobody else refreshes it. A token's work is
# started only while at least LEASE_NEEDED remains, which is more than its worst
# case (three calls, three attempts each at 8 s, waits for rate limits), and its
# result is written within FLUSH_EVERY of Twitch's answer: a lease never lapses
# with a rotated refresh token still in memory.
LEASE = timedelta(minutes=10)
LEASE_NEEDED = timedelta(minutes=5)
# Twitch requires apps to validate the tokens they keep at least hourly.
VALIDATE_EVERY = timedelta(hours=1)
WRITE_BATCH = 100
FLUSH_EVERY = 0.2  # seconds
MAX_WRITE_FAILURES = 25  # about five seconds of a database that refuses writes


class Outcome(enum.Enum):
    REFRESHED = "refreshed"
    VALIDATED = "validated"
    NEEDS_RECONNECT = "needs reconnect"
    FAILED = "failed"
    SKIPPED = "skipped"


@dataclass(frozen=True)
class Plan:
    """What to do to each selected token.

    `refresh_within`: refresh tokens expiring within it; `None` refreshes all.
    `validate_after`: validate tokens not validated for this long; `None` validates
    all. `refresh` / `validate` switch either duty off.
    """

    refresh: bool = True
    refresh_within: timedelta | None = timedelta(minutes=60)
    validate: bool = True
    validate_after: timedelta | None = VALIDATE_EVERY

    def due(self, now: datetime) -> Q:
        conditions = []
        if self.refresh:
            if self.refresh_within is None:
                return Q()
            conditions.append(
                Q(expires_at__isnull=True)
                | Q(expires_at__lte=now + self.refresh_within)
            )
        if self.validate:
            if self.validate_after is None:
                return Q()
            conditions.append(
                Q(last_validated_at__isnull=True)
                | Q(last_validated_at__lt=now - self.validate_after)
            )
        # Note: an empty Q() means "every row", and Q(a) | Q() is just Q(a).
        return reduce(operator.or_, conditions, Q(pk__in=[]))

    def wants_refresh(self, token: TwitchToken, now: datetime) -> bool:
        if not self.refresh:
            return False
        if self.refresh_within is None:
            return True
        return token.expires_at is None or token.expires_at <= now + self.refresh_within

    def wants_validation(self, token: TwitchToken, now: datetime) -> bool:
        if not self.validate:
            return False
        if self.validate_after is None or token.last_validated_at is None:
            return True
        return token.last_validated_at < now - self.validate_after


@dataclass
class Report:
    counts: Counter[Outcome] = field(default_factory=Counter)
    seconds: float = 0.0

    @property
    def handled_all(self) -> bool:
        return not self.counts[Outcome.FAILED]

    def summary(self) -> str:
        return (
            f"refreshed {self.counts[Outcome.REFRESHED]}, "
            f"validated {self.counts[Outcome.VALIDATED]}, "
            f"needs reconnect {self.counts[Outcome.NEEDS_RECONNECT]}, "
            f"failed {self.counts[Outcome.FAILED]}, "
            f"skipped {self.counts[Outcome.SKIPPED]} in {self.seconds:.1f} s"
        )

    def as_dict(self) -> dict[str, float | int]:
        data: dict[str, float | int] = {
            outcome.name.lower(): self.counts[outcome] for outcome in Outcome
        }
        data["seconds"] = round(self.seconds, 3)
        return data


@dataclass
class _Result:
    """One token's work, waiting to be written."""

    token: TwitchToken
    lease: datetime
    outcome: Outcome
    grant: twitch.TokenGrant | None = None
    validated: bool = False
    error: str = ""
    # A grant Twitch issued that could not be stored (the row changed meanwhile).
    orphaned: bool = False


def select_due(plan: Plan, queryset: QuerySet[TwitchToken] | None = None) -> list[int]:
    """Primary keys of the active tokens `plan` has work for, soonest expiry first."""
    queryset = TwitchToken.objects.all() if queryset is None else queryset
    return list(
        queryset.active()
        .filter(plan.due(timezone.now()))
        .order_by("expires_at", "pk")
        .values_list("pk", flat=True)
    )


async def maintain_tokens(
    *,
    pks: list[int],
    plan: Plan,
    source: TokenEvent.Source,
    actor: AbstractBaseUser | None = None,
    concurrency: int = 20,
    attempts: int = 3,
    progress: Callable[[int], None] | None = None,
) -> Report:
    """Refresh and/or validate these tokens, `concurrency` at a time, at most once each.

    Safe beside other runs on other machines: each token is claimed with a lease
    before Twitch is asked, and the answer is stored only while the lease holds.
    The new refresh token replaces the old one in the same UPDATE that stores it.
    """
    started = time.monotonic()
    report = Report()
    # Claim little ahead of the workers, so claimed tokens do not wait long.
    claim_batch = max(2 * concurrency, 10)
    queue: asyncio.Queue[TwitchToken | None] = asyncio.Queue(maxsize=concurrency)
    pending: list[_Result] = []
    write_lock = asyncio.Lock()
    working = True
    write_failures = 0

    async def flush() -> None:
        nonlocal write_failures
        async with write_lock:
            if not pending:
                return
            batch = pending[:]
            pending.clear()
            try:
                written = await sync_to_async(_store_results)(
                    batch, source=source, actor=actor
                )
            except DatabaseError:
                # Twitch's answers (rotated refresh tokens among them) must not be
                # dropped: keep them and write them on the next round.
                write_failures += 1
                logger.exception("could not store %s results; will retry", len(batch))
                pending[:0] = batch
                if write_failures > MAX_WRITE_FAILURES:
                    raise
                return
        for result in written:
            report.counts[result.outcome] += 1
            if result.orphaned and result.grant is not None:
                await _revoke_quietly(result.grant.access_token)
            await _announce(result)
        if progress is not None:
            progress(len(written))

    async def write_regularly() -> None:
        # Results reach the database within FLUSH_EVERY, or at once in batches of
        # WRITE_BATCH (workers trigger those), whatever the slowest token does.
        while working or pending:
            await asyncio.sleep(FLUSH_EVERY)
            await flush()

    async def claim_all() -> None:
        for start in range(0, len(pks), claim_batch):
            chunk = pks[start : start + claim_batch]
            claimed = await sync_to_async(_claim)(chunk, plan=plan)
            skipped = len(chunk) - len(claimed)
            report.counts[Outcome.SKIPPED] += skipped
            if progress is not None and skipped:
                progress(skipped)
            for token in claimed:
                await queue.put(token)
        for _ in range(concurrency):
            await queue.put(None)

    async def work() -> None:
        while (token := await queue.get()) is not None:
            pending.append(await _maintain_one(token, plan=plan, attempts=attempts))
            if len(pending) >= WRITE_BATCH and not write_lock.locked():
                await flush()

    writer = asyncio.create_task(write_regularly())
    try:
        await asyncio.gather(claim_all(), *(work() for _ in range(concurrency)))
    finally:
        working = False
        await writer
    report.seconds = time.monotonic() - started
    return report


def _claim(pks: list[int], *, plan: Plan) -> list[TwitchToken]:
    now = timezone.now()
    lease = now + LEASE
    with transaction.atomic():
        # On PostgreSQL, rows another run has locked are skipped, not waited for;
        # SQLite has no row locks, but its IMMEDIATE transactions serialise claims.
        claimable = list(
            TwitchToken.objects.active()
            .filter(pk__in=pks)
            .filter(plan.due(now))
            .filter(Q(claimed_until__isnull=True) | Q(claimed_until__lt=now))
            .select_for_update(skip_locked=True)
            .values_list("pk", flat=True)
        )
        TwitchToken.objects.filter(pk__in=claimable).update(claimed_until=lease)
    return list(TwitchToken.objects.filter(pk__in=claimable).order_by("expires_at"))


@sensitive_variables()
async def _maintain_one(token: TwitchToken, *, plan: Plan, attempts: int) -> _Result:
    assert token.claimed_until is not None
    result = _Result(token=token, lease=token.claimed_until, outcome=Outcome.SKIPPED)
    now = timezone.now()
    if token.claimed_until - now < LEASE_NEEDED:
        return result  # waited too long in the queue; the next run takes it
    if token.is_undecryptable:
        result.outcome = Outcome.FAILED
        result.error = (
            "The stored token cannot be decrypted: check TOKEN_ENCRYPTION_KEYS."
        )
        return result
    try:
        await _refresh_and_validate(
            token, result, plan=plan, now=now, attempts=attempts
        )
    except Exception:
        # One token's surprise must not cost the others their stored results.
        logger.exception("unexpected failure while maintaining token %s", token.pk)
        result.outcome, result.error = Outcome.FAILED, "Unexpected error; see the logs."
    return result


@sensitive_variables()
async def _refresh_and_validate(
    token: TwitchToken, result: _Result, *, plan: Plan, now: datetime, attempts: int
) -> None:
    async def refresh() -> None:
        try:
            result.grant = await twitch.with_retries(
                lambda: twitch.refresh(token.refresh_token), attempts=attempts
            )
            result.outcome = Outcome.REFRESHED
        except twitch.InvalidCredential as error:
            if error.after_unanswered_attempt:
                # An earlier attempt may have rotated the token at Twitch before
                # its answer was lost: not proof that the user must reconnect.
                result.outcome, result.error = Outcome.FAILED, str(error)
            else:
                result.outcome, result.error = Outcome.NEEDS_RECONNECT, str(error)
        except twitch.TwitchError as error:
            result.outcome, result.error = Outcome.FAILED, str(error)

    if plan.wants_refresh(token, now):
        await refresh()
    if plan.wants_validation(token, now) and result.outcome in (
        Outcome.SKIPPED,
        Outcome.REFRESHED,
    ):
        access = result.grant.access_token if result.grant else token.access_token
        try:
            await twitch.with_retries(
                lambda: twitch.validate(access), attempts=attempts
            )
            result.validated = True
            if result.outcome is Outcome.SKIPPED:
                result.outcome = Outcome.VALIDATED
        except twitch.InvalidCredential:
            # Twitch answered, so this counts as the hourly validation; an invalid
            # access token is what refreshing is for.
            result.validated = True
            if result.grant is None:
                await refresh()
            else:
                result.outcome = Outcome.FAILED
                result.error = "Twitch rejected the access token it just issued."
        except twitch.TwitchError as error:
            if result.outcome is Outcome.SKIPPED:
                result.outcome, result.error = Outcome.FAILED, str(error)


def _store_results(
    results: list[_Result], *, source: TokenEvent.Source, actor: AbstractBaseUser | None
) -> list[_Result]:
    """Write the results in one transaction; only after it commits are they final.

    Nothing in `results` is changed before the commit, so a failed write can be
    retried with the same results.
    """
    now = timezone.now()
    decided: list[tuple[_Result, Outcome, dict[str, Any] | None]] = []
    with transaction.atomic():
        for result in results:
            outcome, changes = _decide(result, now=now)
            stored = (
                TwitchToken.objects.filter(
                    pk=result.token.pk,
                    claimed_until=result.lease,
                    status=result.token.status,
                ).update(**changes)
                == 1
            )
            decided.append((result, outcome, changes if stored else None))
        TokenEvent.objects.bulk_create(
            event
            for result, outcome, changes in decided
            if changes is not None
            for event in _events_for(
                result, outcome, source=source, actor=actor, now=now
            )
        )
    for result, outcome, changes in decided:
        if changes is None:
            # Revoked or re-claimed meanwhile: what we learnt is no longer ours to
            # write, and a grant nobody will hold is revoked at Twitch.
            logger.warning(
                "token %s changed during its refresh; not stored", result.token.pk
            )
            result.outcome = Outcome.SKIPPED
            result.orphaned = result.grant is not None
            continue
        result.outcome = outcome
        for name, value in changes.items():
            setattr(result.token, name, value)
    return results


def _decide(result: _Result, *, now: datetime) -> tuple[Outcome, dict[str, Any]]:
    """The outcome to record and the columns to write for one result."""
    outcome, error = result.outcome, result.error
    changes: dict[str, Any] = {"claimed_until": None, "updated_at": now}
    if result.grant is not None:
        changes.update(
            access_token=result.grant.access_token,
            refresh_token=result.grant.refresh_token,
            scopes=result.grant.scopes,
            expires_at=now + timedelta(seconds=result.grant.expires_in),
            last_refreshed_at=now,
            last_error="",
        )
    if result.validated:
        changes["last_validated_at"] = now
    if outcome is Outcome.NEEDS_RECONNECT:
        if _refresh_token_changed_since(result.token):
            # Site code (twitch_for) refreshed it while we held the old one:
            # nothing is wrong with the connection.
            outcome, error = Outcome.SKIPPED, ""
        else:
            changes["status"] = TwitchToken.Status.NEEDS_RECONNECT
    if error:
        changes["last_error"] = error[:200]
    return outcome, changes


def _refresh_token_changed_since(token: TwitchToken) -> bool:
    current = (
        TwitchToken.objects.select_for_update()
        .filter(pk=token.pk)
        .only("refresh_token")
        .first()
    )
    return current is not None and current.refresh_token != token.refresh_token


def _events_for(
    result: _Result,
    outcome: Outcome,
    *,
    source: TokenEvent.Source,
    actor: AbstractBaseUser | None,
    now: datetime,
) -> list[TokenEvent]:
    def event(action: TokenEvent.Action, outcome: TokenEvent.Outcome) -> TokenEvent:
        return TokenEvent(
            token=result.token,
            action=action,
            outcome=outcome,
            source=source,
            actor=actor,
            detail=result.error[:200],
            created_at=now,
        )

    events = []
    if result.validated:
        events.append(event(TokenEvent.Action.VALIDATE, TokenEvent.Outcome.SUCCEEDED))
    if outcome is Outcome.REFRESHED:
        events.append(event(TokenEvent.Action.REFRESH, TokenEvent.Outcome.SUCCEEDED))
    elif outcome is Outcome.NEEDS_RECONNECT:
        events.append(event(TokenEvent.Action.REFRESH, TokenEvent.Outcome.REJECTED))
    elif outcome is Outcome.FAILED:
        action = (
            TokenEvent.Action.REFRESH
            if result.grant is None and "validate" not in result.error
            else TokenEvent.Action.VALIDATE
        )
        events.append(event(action, TokenEvent.Outcome.UNAVAILABLE))
    return events


async def _announce(result: _Result) -> None:
    if result.outcome is Outcome.REFRESHED:
        await signals.token_refreshed.asend(sender=TwitchToken, token=result.token)
    elif result.outcome is Outcome.NEEDS_RECONNECT:
        logger.info("token %s needs a reconnect: %s", result.token.pk, result.error)
        await signals.token_needs_reconnect.asend(
            sender=TwitchToken, token=result.token
        )


# --- A Twitch client for the rest of the site -----------------------------------------


class NoUsableToken(Exception):
    """The user has no Twitch connection the site can act with (none, revoked, or
    waiting for the user to reconnect)."""


@asynccontextmanager
async def twitch_for(
    user: AbstractBaseUser, *, min_lifetime: timedelta = timedelta(minutes=5)
) -> AsyncIterator[twitch.Twitch]:
    """A twitchAPI `Twitch` client acting as `user`, for chat bots and stream tools.

        async with twitch_for(user) as client:
            me = await first(client.get_users())

    A token close to expiry is refreshed first (through the same leased machinery as
    `refresh_tokens`); if twitchAPI refreshes during use, the new tokens are stored
    at once, so the refresh token is never lost.
    """
    token = await TwitchToken.objects.filter(user=user).afirst()
    if token is None or not token.is_usable:
        raise NoUsableToken(f"{user} has no usable Twitch connection.")
    if token.expires_at is None or token.expires_at <= timezone.now() + min_lifetime:
        await maintain_tokens(
            pks=[token.pk],
            plan=Plan(refresh_within=min_lifetime, validate=False),
            source=TokenEvent.Source.SITE,
        )
        token = await TwitchToken.objects.aget(pk=token.pk)
        if not token.is_usable:
            raise NoUsableToken(f"{user}'s Twitch connection needs a reconnect.")

    async def persist(access_token: str, refresh_token: str) -> None:
        await _store_site_refresh(token, access_token, refresh_token)

    try:
        client = await twitch.user_client(
            access_token=token.access_token,
            refresh_token=token.refresh_token,
            scopes=token.scopes,
            on_refresh=persist,
        )
    except twitch.InvalidCredential:
        raise NoUsableToken(f"Twitch no longer accepts {user}'s token.") from None
    yield client


async def _store_site_refresh(
    token: TwitchToken, access_token: str, refresh_token: str
) -> None:
    """Store tokens that twitchAPI refreshed by itself, before anything else happens."""
    now = timezone.now()
    if not await sync_to_async(_store_site_refresh_in_transaction)(
        token, access_token, refresh_token, now=now
    ):
        # The row moved on while the client was in use (a reconnect, perhaps to
        # another Twitch account, a disconnect, or a refresh elsewhere): what it
        # holds now wins. The client keeps its tokens until the block ends.
        logger.warning("token %s changed while in use; refresh not stored", token.pk)
        return
    token.access_token, token.refresh_token = access_token, refresh_token
    try:
        info = await twitch.validate(access_token)
    except twitch.TwitchError as error:
        logger.warning("could not validate token %s after refresh: %s", token.pk, error)
    else:
        token.expires_at = now + timedelta(seconds=info.expires_in)
        await TwitchToken.objects.filter(pk=token.pk).aupdate(
            expires_at=token.expires_at, last_validated_at=now
        )
    await signals.token_refreshed.asend(sender=TwitchToken, token=token)


def _store_site_refresh_in_transaction(
    token: TwitchToken, access_token: str, refresh_token: str, *, now: datetime
) -> bool:
    with transaction.atomic():
        current = TwitchToken.objects.select_for_update().filter(pk=token.pk).first()
        if (
            current is None
            or current.status != TwitchToken.Status.ACTIVE
            or current.twitch_user_id != token.twitch_user_id
            or current.refresh_token != token.refresh_token
        ):
            return False
        # twitchAPI does not pass on expires_in: assume the worst until
        # validation tells us, so a failed validation only means an early refresh.
        TwitchToken.objects.filter(pk=token.pk).update(
            access_token=access_token,
            refresh_token=refresh_token,
            expires_at=now,
            last_refreshed_at=now,
            last_error="",
            updated_at=now,
        )
        TokenEvent.objects.create(
            token=token,
            action=TokenEvent.Action.REFRESH,
            outcome=TokenEvent.Outcome.SUCCEEDED,
            source=TokenEvent.Source.SITE,
        )
    return True
