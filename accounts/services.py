"""What the site does with Twitch connections: connect, refresh, validate, revoke.

Views, admin actions and commands call these; these call the Twitch seam
(`accounts.twitch`). Business rules live here and nowhere else.
"""

from __future__ import annotations

import asyncio
import contextlib
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
from datetime import UTC, datetime, timedelta
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

from accounts import signals, spool, twitch
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
    names the Twitch account). Raises `twitch.TwitchError`, `AlreadyLinked` or
    `DatabaseError`; in every case nothing is stored, and a grant Twitch issued is
    revoked rather than left alive with nobody holding it.
    """
    grant = await twitch.exchange_code(code)
    try:
        info = await twitch.validate(grant.access_token)
        token, replaced = await sync_to_async(_store_connection)(
            user=user, grant=grant, info=info
        )
    except BaseException:
        # Whatever went wrong (Twitch, the database, the request cancelled), we
        # will not hold this token, so Twitch need not keep it alive either.
        await _revoke_quietly(grant.access_token)
        raise
    if replaced:
        # The connection this one replaces is over: end it at Twitch too.
        await _revoke_quietly(replaced)
    await signals.token_connected.asend(sender=TwitchToken, token=token)
    return token


def _store_connection(
    *, user: AbstractBaseUser, grant: twitch.TokenGrant, info: twitch.TokenInfo
) -> tuple[TwitchToken, str]:
    """Store the connection; return it and the access token of the one it replaced."""
    now = timezone.now()
    fields = {
        "twitch_user_id": info.user_id,
        "login": info.login,
        "access_token": grant.access_token,
        "refresh_token": grant.refresh_token,
        # Validation describes the token as Twitch holds it now.
        "scopes": info.scopes,
        "expires_at": expiry(now, grant.expires_in, info),
        "status": TwitchToken.Status.ACTIVE,
        "last_validated_at": now,
        "last_error": "",
        "claimed_until": None,
    }
    try:
        with transaction.atomic():
            if _linked_elsewhere(user=user, twitch_user_id=info.user_id).exists():
                raise AlreadyLinked(info.login)
            previous = TwitchToken.objects.select_for_update().filter(user=user).first()
            # Reconnecting updates the user's one row in place.
            token, _ = TwitchToken.objects.update_or_create(user=user, defaults=fields)
            if previous is None or previous.status == TwitchToken.Status.REVOKED:
                detail = f"Connected as {info.login}"
            else:
                detail = f"Reconnected as {info.login} (was {previous.login})"
            TokenEvent.objects.create(
                token=token,
                action=TokenEvent.Action.CONNECT,
                outcome=TokenEvent.Outcome.SUCCEEDED,
                source=TokenEvent.Source.USER,
                actor=user,
                detail=detail[:200],
            )
    except IntegrityError:
        # Another user may have connected the same account at the same moment;
        # any other integrity failure is the database's, not the user's.
        if _linked_elsewhere(user=user, twitch_user_id=info.user_id).exists():
            raise AlreadyLinked(info.login) from None
        raise
    replaced = ""
    if previous is not None and previous.status != TwitchToken.Status.REVOKED:
        replaced = previous.access_token
    return token, replaced


def _linked_elsewhere(
    *, user: AbstractBaseUser, twitch_user_id: str
) -> QuerySet[TwitchToken]:
    return (
        TwitchToken.objects.filter(twitch_user_id=twitch_user_id)
        .exclude(status=TwitchToken.Status.REVOKED)
        .exclude(user=user)
    )


def expiry(
    now: datetime, expires_in: int | None, info: twitch.TokenInfo | None = None
) -> datetime | None:
    """When a token expires: from the token answer, else from validation.

    None means it does not expire (validate answers `expires_in: 0` for such
    tokens), so it is never refreshed on a schedule. Unknown means now: the next
    run validates or refreshes it, once.
    """
    if expires_in is not None:
        return now + timedelta(seconds=expires_in)
    if info is not None:
        return (
            None if info.expires_in == 0 else now + timedelta(seconds=info.expires_in)
        )
    return now


@sensitive_variables()
async def _revoke_quietly(access_token: str) -> twitch.RevokeResult | None:
    """Revoke at Twitch; None when Twitch could not be told."""
    try:
        return await twitch.revoke(access_token)
    except twitch.TwitchError as error:
        logger.warning("could not revoke a token at Twitch: %s", error)
        return None


# --- Revoking ----------------------------------------------------------------------


class RevokeOutcome(enum.Enum):
    # Twitch ended the access token; our copy of the refresh token is wiped (Twitch
    # promises nothing about the refresh token itself).
    REVOKED = "revoked"
    # Twitch said the access token was already invalid (expired or revoked), so it
    # did nothing; our copies are wiped.
    ALREADY_INVALID = "already invalid at Twitch"
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
    if token.access_token:
        result = await _revoke_quietly(token.access_token)
        outcome = {
            twitch.RevokeResult.ENDED: RevokeOutcome.REVOKED,
            twitch.RevokeResult.ALREADY_INVALID: RevokeOutcome.ALREADY_INVALID,
            None: RevokeOutcome.REVOKED_LOCALLY,
        }[result]
    elif token.is_undecryptable:
        outcome = RevokeOutcome.REVOKED_LOCALLY
    else:
        outcome = RevokeOutcome.ALREADY_INVALID
    await sync_to_async(_wipe)(token=token, outcome=outcome, source=source, actor=actor)
    await signals.token_revoked.asend(sender=TwitchToken, token=token)
    return outcome


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


# What the audit trail and Last error say about each way a revoke can go.
_REVOKE_RECORDS = {
    RevokeOutcome.REVOKED: (TokenEvent.Outcome.SUCCEEDED, "", ""),
    RevokeOutcome.ALREADY_INVALID: (
        TokenEvent.Outcome.REJECTED,
        "Twitch said the access token was already invalid, so it did nothing; "
        "secrets wiped here.",
        "",
    ),
    RevokeOutcome.REVOKED_LOCALLY: (
        TokenEvent.Outcome.UNAVAILABLE,
        "Twitch was unreachable; secrets wiped here.",
        "Revoked here; Twitch was unreachable.",
    ),
}


def _wipe(
    *,
    token: TwitchToken,
    outcome: RevokeOutcome,
    source: TokenEvent.Source,
    actor: AbstractBaseUser | None,
) -> None:
    event_outcome, detail, last_error = _REVOKE_RECORDS[outcome]
    token.wipe_secrets()
    token.status = TwitchToken.Status.REVOKED
    token.claimed_until = None
    token.last_error = last_error
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
            outcome=event_outcome,
            source=source,
            actor=actor,
            detail=detail,
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
# Twitch requires every kept token to be validated at least once an hour, and
# audits it. A token is due 40 minutes after its last validation: with cron every
# 15 minutes (or more often), the run that validates it starts at most 55 minutes
# after the last validation, which leaves 5 minutes for slow runs.
VALIDATION_DUE_AFTER = timedelta(minutes=40)
WRITE_BATCH = 100
FLUSH_EVERY = 0.2  # seconds
MAX_WRITE_FAILURES = 25  # about five seconds of a database that refuses writes
# Rotated token pairs a run may hold that the database has not stored yet; past
# this, and while writes fail, it starts no new refresh.
MAX_UNSTORED = 2 * WRITE_BATCH


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
    all. `refresh` / `validate` switch either duty off. A token that does not
    expire (`expires_at` is None) is refreshed only when asked to refresh all.
    """

    refresh: bool = True
    refresh_within: timedelta | None = timedelta(minutes=60)
    validate: bool = True
    validate_after: timedelta | None = VALIDATION_DUE_AFTER

    def due(self, now: datetime) -> Q:
        conditions = []
        if self.refresh:
            if self.refresh_within is None:
                return Q()
            conditions.append(Q(expires_at__lte=now + self.refresh_within))
        if self.validate:
            if self.validate_after is None:
                return Q()
            conditions.append(
                Q(last_validated_at__isnull=True)
                | Q(last_validated_at__lte=now - self.validate_after)
            )
        # Note: an empty Q() means "every row", and Q(a) | Q() is just Q(a).
        return reduce(operator.or_, conditions, Q(pk__in=[]))

    def wants_refresh(self, token: TwitchToken, now: datetime) -> bool:
        if not self.refresh:
            return False
        if self.refresh_within is None:
            return True
        return (
            token.expires_at is not None
            and token.expires_at <= now + self.refresh_within
        )

    def wants_validation(self, token: TwitchToken, now: datetime) -> bool:
        if not self.validate:
            return False
        if self.validate_after is None or token.last_validated_at is None:
            return True
        return token.last_validated_at <= now - self.validate_after


@dataclass
class Report:
    counts: Counter[Outcome] = field(default_factory=Counter)
    seconds: float = 0.0
    # Tokens whose stored secret no configured key decrypts.
    undecryptable: int = 0

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
    # What validation said about the token being stored (None: not validated, or
    # Twitch said it is invalid).
    info: twitch.TokenInfo | None = None
    validated: bool = False
    error: str = ""
    # A grant Twitch issued that could not be stored (the row changed meanwhile).
    orphaned: bool = False
    # A grant that could not be written and stays in the spool for the next run.
    kept_in_spool: bool = False


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
    The new refresh token replaces the old one in the same UPDATE that stores it,
    and is in the spool (accounts/spool.py) from Twitch's answer until then.
    """
    await replay_spool(source=source, actor=actor)
    run = _Run(
        plan=plan, source=source, actor=actor, attempts=attempts, progress=progress
    )
    return await run.handle(pks, concurrency=concurrency)


class _Run:
    """One call of `maintain_tokens`: claim, work, store, with the state they share.

    Claiming runs a little ahead of `concurrency` workers; a writer stores their
    results every FLUSH_EVERY (or at once when WRITE_BATCH are waiting) and once
    more when the workers are done.
    """

    def __init__(
        self,
        *,
        plan: Plan,
        source: TokenEvent.Source,
        actor: AbstractBaseUser | None,
        attempts: int,
        progress: Callable[[int], None] | None,
    ) -> None:
        self.plan, self.source, self.actor = plan, source, actor
        self.attempts, self.progress = attempts, progress
        self.report = Report()
        self.pending: list[_Result] = []
        self.spool = spool.Spool()
        self.unstored = 0  # grants in memory and spool, not yet in the database
        self.write_lock = asyncio.Lock()
        self.write_failures = 0
        self.writes_failing = False
        self.gave_up = False
        self.unstarted: list[TwitchToken] = []  # claimed, then left when we gave up
        self.workers_done = asyncio.Event()

    async def handle(self, pks: list[int], *, concurrency: int) -> Report:
        started = time.monotonic()
        queue: asyncio.Queue[TwitchToken | None] = asyncio.Queue(maxsize=concurrency)
        writer = asyncio.create_task(self.write_regularly())
        try:
            try:
                await asyncio.gather(
                    self.claim_all(pks, queue, workers=concurrency),
                    *(self.work(queue) for _ in range(concurrency)),
                )
            finally:
                self.workers_done.set()
                await writer
        finally:
            if self.unstarted:
                await sync_to_async(_release_quietly)(self.unstarted)
            # Kept while any grant is not in the database: the next run stores it.
            self.spool.close(keep=self.unstored > 0)
        self.report.seconds = time.monotonic() - started
        return self.report

    async def claim_all(
        self, pks: list[int], queue: asyncio.Queue[TwitchToken | None], *, workers: int
    ) -> None:
        # Claim little ahead of the workers, so claimed tokens do not wait long.
        batch = max(2 * workers, 10)
        for start in range(0, len(pks), batch):
            chunk = pks[start : start + batch]
            claimed = (
                []
                if self.gave_up
                else await sync_to_async(_claim)(chunk, plan=self.plan)
            )
            self.count_skipped(len(chunk) - len(claimed))
            for token in claimed:
                await queue.put(token)
        for _ in range(workers):
            await queue.put(None)

    async def work(self, queue: asyncio.Queue[TwitchToken | None]) -> None:
        while (token := await queue.get()) is not None:
            await self.wait_until_results_can_be_stored()
            if self.gave_up:
                self.count_skipped(1)
                self.unstarted.append(token)
                continue
            result = await _maintain_one(token, plan=self.plan, attempts=self.attempts)
            if result.grant is not None:
                self.keep_durably(result)
            self.pending.append(result)
            if len(self.pending) >= WRITE_BATCH and not self.write_lock.locked():
                await self.flush()

    async def wait_until_results_can_be_stored(self) -> None:
        # A new refresh would rotate one more token that the database cannot
        # take: wait until it takes what we hold.
        while not self.gave_up and (
            self.writes_failing or self.unstored >= MAX_UNSTORED
        ):
            await asyncio.sleep(FLUSH_EVERY)

    @sensitive_variables()
    def keep_durably(self, result: _Result) -> None:
        assert result.grant is not None
        self.unstored += 1
        try:
            self.spool.add(
                spool.Entry(
                    token_pk=result.token.pk,
                    replaced=spool.digest(result.token.refresh_token),
                    access_token=result.grant.access_token,
                    refresh_token=result.grant.refresh_token,
                    expires_in=result.grant.expires_in,
                    scopes=result.grant.scopes,
                    obtained_at=time.time(),
                    lease=result.lease.isoformat(),
                )
            )
        except OSError:
            # Still in memory and about to be stored; only a crash now loses it.
            logger.exception("could not write the token spool in %s", spool.directory())

    async def write_regularly(self) -> None:
        while True:
            if not self.workers_done.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.workers_done.wait(), FLUSH_EVERY)
            await self.flush()
            if self.workers_done.is_set() and not self.pending:
                return
            if self.writes_failing:
                await asyncio.sleep(FLUSH_EVERY)

    async def flush(self) -> None:
        async with self.write_lock:
            if not self.pending:
                return
            batch, self.pending = self.pending, []
            try:
                written = await sync_to_async(_store_results)(
                    batch, source=self.source, actor=self.actor
                )
            except DatabaseError:
                # Twitch's answers (rotated refresh tokens among them) must not be
                # dropped: keep them, in memory and in the spool, and retry.
                self.write_failures += 1
                self.writes_failing = True
                logger.exception("could not store %s results; will retry", len(batch))
                self.pending[:0] = batch
                if self.write_failures > MAX_WRITE_FAILURES:
                    self.gave_up = True
                    raise
                return
            self.writes_failing = False
        for result in written:
            if result.grant is not None and not result.kept_in_spool:
                self.unstored -= 1
            if result.token.is_undecryptable:
                self.report.undecryptable += 1
            self.report.counts[result.outcome] += 1
            if result.orphaned and result.grant is not None:
                await _revoke_quietly(result.grant.access_token)
            await _announce(result)
        if self.progress is not None:
            self.progress(len(written))

    def count_skipped(self, count: int) -> None:
        if count:
            self.report.counts[Outcome.SKIPPED] += count
            if self.progress is not None:
                self.progress(count)


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


def _release_quietly(tokens: list[TwitchToken]) -> None:
    """Give back leases of tokens a run claimed but never started on, if the
    database lets us; otherwise they lapse after LEASE."""
    try:
        for token in tokens:
            TwitchToken.objects.filter(
                pk=token.pk, claimed_until=token.claimed_until
            ).update(claimed_until=None)
    except DatabaseError:
        logger.warning(
            "could not release %s leases; they lapse by themselves", len(tokens)
        )


UNDECRYPTABLE = "The stored token cannot be decrypted: check TOKEN_ENCRYPTION_KEYS."


@sensitive_variables()
async def _maintain_one(token: TwitchToken, *, plan: Plan, attempts: int) -> _Result:
    assert token.claimed_until is not None
    result = _Result(token=token, lease=token.claimed_until, outcome=Outcome.SKIPPED)
    now = timezone.now()
    if token.claimed_until - now < LEASE_NEEDED:
        return result  # waited too long in the queue; the next run takes it
    if token.is_undecryptable:
        result.outcome, result.error = Outcome.FAILED, UNDECRYPTABLE
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
    async def validate(access_token: str) -> None:
        result.info = await twitch.with_retries(
            lambda: twitch.validate(access_token), attempts=attempts
        )
        result.validated = True

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
            return
        except twitch.TwitchError as error:
            result.outcome, result.error = Outcome.FAILED, str(error)
            return
        if result.grant.expires_in is None:
            # Twitch left the lifetime out (or sent nonsense): the new access
            # token's validation says how long it lives, and that it is real.
            try:
                await validate(result.grant.access_token)
            except twitch.InvalidCredential:
                result.grant = None
                result.outcome = Outcome.FAILED
                result.error = (
                    "Twitch's refresh answer held no usable token; the stored one "
                    "is kept."
                )
            except twitch.TwitchError:
                pass  # kept, with an unknown expiry: the next run looks again

    if plan.wants_refresh(token, now):
        await refresh()
    if (
        plan.wants_validation(token, now)
        and not result.validated
        and result.outcome in (Outcome.SKIPPED, Outcome.REFRESHED)
    ):
        access = result.grant.access_token if result.grant else token.access_token
        try:
            await validate(access)
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

    Only a `DatabaseError` (the database refusing writes) fails the whole batch,
    which is then retried as it is. Any other failure is one result's problem: the
    batch is written again one result at a time, so the others are kept.
    """
    try:
        return _store_batch(results, source=source, actor=actor)
    except DatabaseError:
        raise
    except Exception:
        logger.exception("storing %s results failed; storing each alone", len(results))
    for result in results:
        try:
            _store_batch([result], source=source, actor=actor)
        except DatabaseError:
            raise
        except Exception:
            logger.exception("could not store the result for token %s", result.token.pk)
            _give_up_storing(result)
    return results


def _give_up_storing(result: _Result) -> None:
    result.outcome, result.error = Outcome.FAILED, "Could not be stored; see the logs."
    if result.grant is not None:
        # Its lease stays: nobody may refresh with the old token before the next
        # run has stored this grant from the spool.
        result.kept_in_spool = True
        return
    TwitchToken.objects.filter(pk=result.token.pk, claimed_until=result.lease).update(
        claimed_until=None, last_error=result.error
    )


def _store_batch(
    results: list[_Result], *, source: TokenEvent.Source, actor: AbstractBaseUser | None
) -> list[_Result]:
    """Nothing in `results` is changed before the commit, so a failed write can be
    retried with the same results."""
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
            if not stored and _holds_grant_already(result):
                outcome, changes = Outcome.REFRESHED, {}  # an earlier try stored it
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


def _holds_grant_already(result: _Result) -> bool:
    if result.grant is None:
        return False
    current = TwitchToken.objects.filter(pk=result.token.pk).only("refresh_token")
    row = current.first()
    return row is not None and row.refresh_token == result.grant.refresh_token


def _decide(result: _Result, *, now: datetime) -> tuple[Outcome, dict[str, Any]]:
    """The outcome to record and the columns to write for one result."""
    outcome, error = result.outcome, result.error
    changes: dict[str, Any] = {"claimed_until": None, "updated_at": now}
    if result.grant is not None:
        changes.update(
            access_token=result.grant.access_token,
            refresh_token=result.grant.refresh_token,
            scopes=result.grant.scopes,
            expires_at=expiry(now, result.grant.expires_in, result.info),
            last_refreshed_at=now,
            last_error="",
        )
    if result.validated:
        changes["last_validated_at"] = now
    if result.info is not None:
        # Twitch users rename; and validation says which scopes the token has.
        changes.update(login=result.info.login, scopes=result.info.scopes)
        if result.grant is None:
            changes["expires_at"] = expiry(now, None, result.info)
    if outcome is Outcome.NEEDS_RECONNECT:
        if _refresh_token_changed_since(result.token):
            # Someone stored a newer pair while we held the old one: nothing is
            # wrong with the connection.
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


# --- The spool: pairs a run obtained but could not store ----------------------------


async def replay_spool(
    *, source: TokenEvent.Source, actor: AbstractBaseUser | None = None
) -> int:
    """Store the token pairs that runs which died left in the spool; return how many.

    Runs before any refresh, so nobody presents a refresh token Twitch has already
    replaced. A pair whose connection has moved on (revoked, reconnected) is
    revoked at Twitch instead.
    """
    stored, orphans = await sync_to_async(_replay_abandoned)(source=source, actor=actor)
    for access_token in orphans:
        await _revoke_quietly(access_token)
    return stored


class _Replay(enum.Enum):
    STORED = "stored"
    ALREADY_STORED = "already stored"
    WAITING = "waiting"  # the row holds neither the replaced pair nor this one
    ORPHANED = "orphaned"


def _replay_abandoned(
    *, source: TokenEvent.Source, actor: AbstractBaseUser | None
) -> tuple[int, list[str]]:
    stored, orphans = 0, []
    with spool.abandoned() as entries:
        waiting = list(entries)
        # A chain of refreshes of one token applies in order; loop until none moves.
        progress = True
        while waiting and progress:
            progress = False
            for entry in list(waiting):
                verdict = _replay_one(entry, source=source, actor=actor)
                if verdict is _Replay.WAITING:
                    continue
                waiting.remove(entry)
                progress = True
                stored += verdict is _Replay.STORED
                if verdict is _Replay.ORPHANED:
                    orphans.append(entry.access_token)
        orphans.extend(entry.access_token for entry in waiting)
    if stored or orphans:
        logger.warning(
            "stored %s token pair(s) from the spool of an interrupted run; "
            "%s no longer had a connection to go to",
            stored,
            len(orphans),
        )
    return stored, orphans


def _replay_one(
    entry: spool.Entry, *, source: TokenEvent.Source, actor: AbstractBaseUser | None
) -> _Replay:
    with transaction.atomic():
        row = TwitchToken.objects.select_for_update().filter(pk=entry.token_pk).first()
        if row is None or row.status != TwitchToken.Status.ACTIVE:
            return _Replay.ORPHANED
        if row.refresh_token == entry.refresh_token:
            return _Replay.ALREADY_STORED
        if spool.digest(row.refresh_token) != entry.replaced:
            return _Replay.WAITING
        obtained = datetime.fromtimestamp(entry.obtained_at, tz=UTC)
        changes: dict[str, Any] = {
            "access_token": entry.access_token,
            "refresh_token": entry.refresh_token,
            "scopes": entry.scopes,
            "expires_at": expiry(obtained, entry.expires_in),
            "last_refreshed_at": obtained,
            "last_error": "",
            "updated_at": timezone.now(),
        }
        # The run that died held this lease; nobody else can be using it.
        if row.claimed_until is not None and (
            row.claimed_until.isoformat() == entry.lease
            or row.claimed_until < timezone.now()
        ):
            changes["claimed_until"] = None
        TwitchToken.objects.filter(pk=row.pk).update(**changes)
        TokenEvent.objects.create(
            token=row,
            action=TokenEvent.Action.REFRESH,
            outcome=TokenEvent.Outcome.SUCCEEDED,
            source=source,
            actor=actor,
            detail="Stored from the spool of an interrupted run.",
        )
    return _Replay.STORED


# --- A Twitch client for the rest of the site -----------------------------------------


# Site code catches this beside NoUsableToken; it is the seam's, re-exported here so
# that only the services import the seam.
TwitchUnavailable = twitch.TwitchUnavailable


class NoUsableToken(Exception):
    """The user has no Twitch connection the site can act with (none, revoked, or
    waiting for the user to reconnect)."""


# How long site code waits for another process (cron, another request) that holds a
# token's lease to store the pair it is fetching, before giving up.
LEASE_WAIT = 15.0  # seconds


@asynccontextmanager
async def twitch_for(
    user: AbstractBaseUser, *, min_lifetime: timedelta = timedelta(minutes=5)
) -> AsyncIterator[twitch.UserClient]:
    """A twitchAPI `Twitch` client acting as `user`, for chat bots and stream tools.

        async with twitch_for(user) as client:
            me = await first(client.get_users())

    The token is validated first (and refreshed if it is close to expiry or Twitch
    rejects it). Every refresh, here or when a call meets a 401 later, goes
    through the same leased path as `refresh_tokens`, so one grant never has two
    refreshers. Raises `NoUsableToken` when the user has no working connection
    (a dead grant is marked `needs_reconnect` at once), and
    `twitch.TwitchUnavailable` when Twitch cannot be reached; a call never waits
    longer than the seam's timeout.
    """
    await replay_spool(source=TokenEvent.Source.SITE)
    token = await _usable_token(user)
    if (
        token.expires_at is not None
        and token.expires_at <= timezone.now() + min_lifetime
    ):
        token = await _refresh_through_lease(token)
    try:
        info = await twitch.validate(token.access_token)
    except twitch.InvalidCredential:
        token = await _refresh_through_lease(token)
    else:
        await _record_validation(token, info)

    async def renew(held_access: str, held_refresh: str) -> tuple[str, str]:
        fresh = await _renew(token)
        return fresh.access_token, fresh.refresh_token

    yield await twitch.user_client(
        access_token=token.access_token,
        refresh_token=token.refresh_token,
        scopes=token.scopes,
        renew=renew,
    )


async def _usable_token(user: AbstractBaseUser) -> TwitchToken:
    token = await TwitchToken.objects.filter(user=user).afirst()
    if token is None or not token.is_usable:
        raise NoUsableToken(f"{user} has no usable Twitch connection.")
    return token


@sensitive_variables()
async def _renew(token: TwitchToken) -> TwitchToken:
    """Twitch answered a client's call with 401: the pair the client should use now.

    Helix also answers 401 for a missing scope, so the stored token is refreshed
    only when validation says it is dead; a pair someone else stored meanwhile is
    used as it is.
    """
    current = await TwitchToken.objects.filter(pk=token.pk).afirst()
    if (
        current is None
        or not current.is_usable
        or current.twitch_user_id != token.twitch_user_id
    ):
        raise NoUsableToken("The Twitch connection is no longer usable.")
    try:
        info = await twitch.validate(current.access_token)
    except twitch.InvalidCredential:
        return await _refresh_through_lease(current)
    await _record_validation(current, info)
    return current


async def _refresh_through_lease(token: TwitchToken) -> TwitchToken:
    """Refresh `token` as `refresh_tokens` does, or wait for whoever holds its lease
    (a cron run, another request) and use the pair it stores."""
    deadline = time.monotonic() + LEASE_WAIT
    while True:
        report = await maintain_tokens(
            pks=[token.pk],
            plan=Plan(refresh_within=None, validate=False),
            source=TokenEvent.Source.SITE,
            concurrency=1,
        )
        while True:
            current = await TwitchToken.objects.filter(pk=token.pk).afirst()
            if current is None or not current.is_usable:
                raise NoUsableToken("The Twitch connection needs a reconnect.")
            if report.counts[Outcome.REFRESHED] or (
                current.refresh_token != token.refresh_token
            ):
                return current
            if report.counts[Outcome.FAILED]:
                raise twitch.TwitchUnavailable(
                    current.last_error or "Twitch could not refresh the token."
                )
            if current.claimed_until is None or current.claimed_until < timezone.now():
                break  # the lease is free and nothing changed: refresh it ourselves
            if time.monotonic() > deadline:
                raise twitch.TwitchUnavailable(
                    "The token is being refreshed elsewhere and it is taking too long."
                )
            await asyncio.sleep(FLUSH_EVERY)


async def _record_validation(token: TwitchToken, info: twitch.TokenInfo) -> None:
    """What a validation teaches us (login, scopes, expiry) and that it happened."""
    now = timezone.now()
    token.login, token.scopes = info.login, info.scopes
    token.expires_at, token.last_validated_at = expiry(now, None, info), now
    await TwitchToken.objects.filter(
        pk=token.pk, twitch_user_id=info.user_id, status=TwitchToken.Status.ACTIVE
    ).aupdate(
        login=token.login,
        scopes=token.scopes,
        expires_at=token.expires_at,
        last_validated_at=now,
    )
