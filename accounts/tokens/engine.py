"""Keeping tokens alive: the leased refresh engine behind `refresh_tokens`, the admin's
refresh and validate actions and `twitch_for`, and the spool replay.

Every refresh, wherever it starts, goes through `amaintain_tokens`: a token is claimed
with a lease before Twitch is asked, so a grant never has two refreshers (Twitch
ends the whole authorization when a replaced refresh token is presented again).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from asgiref.sync import sync_to_async
from django.contrib.auth.base_user import AbstractBaseUser
from django.db import DatabaseError, transaction
from django.utils import timezone
from django.views.decorators.debug import sensitive_variables

from accounts import signals, twitch
from accounts.models import TokenEvent, TwitchToken, TwitchTokenQuerySet
from accounts.tokens import spool
from accounts.tokens.replay import areplay_spool

logger = logging.getLogger(__name__)

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
# How long a run retries a database that refuses writes before it gives up and
# leaves its pairs in the spool for the next run.
STORE_PATIENCE = 60.0  # seconds
# A lease that lapsed (its run died or hung) may hide a pair in that machine's
# spool; another machine waits this much longer before claiming the token, time
# for that machine's next cron run to store the pair.
LEASE_GRACE = timedelta(minutes=20)
# The lease of a token whose new pair could not be stored except in the spool.
PINNED = timedelta(days=1)
# Rotated token pairs a run may hold that the database has not stored yet; past
# this, and while writes fail, it starts no new refresh.
MAX_UNSTORED = 2 * WRITE_BATCH


class Outcome(enum.Enum):
    """What became of one token in a run, as the summary counts it."""

    REFRESHED = "refreshed"
    VALIDATED = "validated"
    NEEDS_RECONNECT = "needs reconnect"
    FAILED = "failed"
    SKIPPED = "skipped"


@dataclass(frozen=True)
class Plan:
    """What to do to each selected token.

    `refresh_within`: refresh tokens expiring within it; `None` refreshes all.
    `validate_after`: validate tokens last validated this long ago; `None`
    validates all. `refresh` / `validate` switch either duty off. Which tokens are
    due is the model's to say (`TwitchTokenQuerySet.due_for_refresh` and friends).
    """

    refresh: bool = True
    refresh_within: timedelta | None = timedelta(minutes=60)
    validate: bool = True
    validate_after: timedelta | None = VALIDATION_DUE_AFTER

    def due(self, tokens: TwitchTokenQuerySet, *, now: datetime) -> TwitchTokenQuerySet:
        selected = tokens.none()
        if self.refresh:
            selected |= tokens.due_for_refresh(within=self.refresh_within, now=now)
        if self.validate:
            selected |= tokens.due_for_validation(after=self.validate_after, now=now)
        return selected

    def wants_refresh(self, token: TwitchToken, *, now: datetime) -> bool:
        return self.refresh and token.is_due_for_refresh(
            within=self.refresh_within, now=now
        )

    def wants_validation(self, token: TwitchToken, *, now: datetime) -> bool:
        return self.validate and token.is_due_for_validation(
            after=self.validate_after, now=now
        )


@dataclass
class Report:
    counts: Counter[Outcome] = field(default_factory=Counter)
    seconds: float = 0.0
    # Tokens whose stored secret no configured key decrypts.
    undecryptable: int = 0
    # Tokens not started within the run's budget: the next run takes them.
    left: int = 0

    @property
    def handled_all(self) -> bool:
        return not self.counts[Outcome.FAILED]

    def summary(self) -> str:
        left = f", left {self.left}" if self.left else ""
        return (
            f"refreshed {self.counts[Outcome.REFRESHED]}, "
            f"validated {self.counts[Outcome.VALIDATED]}, "
            f"needs reconnect {self.counts[Outcome.NEEDS_RECONNECT]}, "
            f"failed {self.counts[Outcome.FAILED]}, "
            f"skipped {self.counts[Outcome.SKIPPED]}{left} in {self.seconds:.1f} s"
        )

    def as_dict(self) -> dict[str, float | int]:
        data: dict[str, float | int] = {
            outcome.name.lower(): self.counts[outcome] for outcome in Outcome
        }
        data["left"] = self.left
        data["seconds"] = round(self.seconds, 3)
        return data


# How a duty went, in the audit trail's own words.
Attempt = TokenEvent.Outcome
# Attempts that leave the token as it was, for a later run to try again.
TRANSIENT = frozenset({Attempt.UNAVAILABLE, Attempt.UNDECRYPTABLE, Attempt.ERROR})


@dataclass
class _Result:
    """One token's work, waiting to be written: how each duty went, and what
    Twitch handed out or said."""

    token: TwitchToken
    lease: datetime
    refresh: Attempt | None = None  # None: not attempted
    validation: Attempt | None = None
    grant: twitch.TokenGrant | None = None
    # What validation said about the token being stored.
    info: twitch.TokenInfo | None = None
    # Twitch rejected the refresh token after an attempt whose answer was lost,
    # which may have rotated it: not proof that the user must reconnect.
    rejection_uncertain: bool = False
    # The access token Twitch just issued is missing, or validation says it is
    # dead already.
    new_access_token_unusable: bool = False
    error: str = ""
    # Decided while storing:
    superseded: bool = False  # someone stored a newer pair while we held the old
    not_stored: bool = False  # revoked or re-claimed meanwhile
    store_failed: bool = False
    kept_in_spool: bool = False  # a grant that stays in the spool for the next run
    spooled: bool = False  # the grant went into the spool when Twitch answered

    @property
    def outcome(self) -> Outcome:
        if self.not_stored:
            return Outcome.SKIPPED
        if self.store_failed:
            return Outcome.FAILED
        if self.refresh is Attempt.SUCCEEDED:
            if self.new_access_token_unusable:
                return Outcome.FAILED
            return Outcome.REFRESHED
        if self.refresh is Attempt.REJECTED:
            if self.superseded:
                return Outcome.SKIPPED
            if self.rejection_uncertain:
                return Outcome.FAILED
            return Outcome.NEEDS_RECONNECT
        if self.refresh in TRANSIENT or self.validation in TRANSIENT:
            return Outcome.FAILED
        if self.validation is Attempt.SUCCEEDED:
            return Outcome.VALIDATED
        if self.validation is Attempt.REJECTED:
            return Outcome.FAILED  # and not refreshed: nothing else to do
        return Outcome.SKIPPED

    @property
    def orphaned(self) -> bool:
        """A grant Twitch issued that nobody will hold."""
        return self.not_stored and self.grant is not None


def select_due(*, plan: Plan, tokens: TwitchTokenQuerySet | None = None) -> list[int]:
    """Primary keys of the active tokens `plan` has work for, soonest expiry first."""
    tokens = TwitchToken.objects.all() if tokens is None else tokens
    return list(
        plan.due(tokens.active(), now=timezone.now())
        .order_by("expires_at", "pk")
        .values_list("pk", flat=True)
    )


async def amaintain_tokens(
    *,
    pks: list[int],
    plan: Plan,
    source: TokenEvent.Source,
    actor: AbstractBaseUser | None = None,
    concurrency: int = 20,
    attempts: int = 3,
    budget: float | None = None,
    store_patience: float | None = None,
    progress: Callable[[int], None] | None = None,
) -> Report:
    """Refresh and/or validate these tokens, `concurrency` at a time, at most once each.

    Safe beside other runs on other machines: each token is claimed with a lease
    before Twitch is asked, and the answer is stored only while the lease holds.
    The new refresh token replaces the old one in the same UPDATE that stores it,
    and is in the spool (accounts/spool.py) from Twitch's answer until then.

    `budget`: seconds after which no new token is started (the rest are counted as
    left, for the next run). `store_patience`: how long a database that refuses
    writes is retried (STORE_PATIENCE seconds by default) before the run gives up
    (its pairs stay in the spool) and raises `DatabaseError`.
    """
    run = _Run(
        plan=plan,
        source=source,
        actor=actor,
        attempts=attempts,
        budget=budget,
        store_patience=STORE_PATIENCE if store_patience is None else store_patience,
        progress=progress,
    )
    return await run.handle(pks, concurrency=min(concurrency, max(len(pks), 1)))


def maintain_tokens(**options: Any) -> Report:
    """`amaintain_tokens` for sync callers (the command, admin actions)."""
    return twitch.run_sync(amaintain_tokens, **options)


class _Run:
    """One call of `amaintain_tokens`: claim, work, store, and the state they share.

    Claiming runs a little ahead of `concurrency` workers; a writer stores their
    results every FLUSH_EVERY, at once when WRITE_BATCH are waiting, and when the
    workers are done (so one token goes straight through). Workers never raise and
    always drain the queue, so the run ends only when every started token's result
    is stored or kept in the spool.
    """

    def __init__(
        self,
        *,
        plan: Plan,
        source: TokenEvent.Source,
        actor: AbstractBaseUser | None,
        attempts: int,
        budget: float | None,
        store_patience: float,
        progress: Callable[[int], None] | None,
    ) -> None:
        self.plan, self.source, self.actor = plan, source, actor
        self.attempts, self.progress = attempts, progress
        self.started = time.monotonic()
        self.start_before = None if budget is None else self.started + budget
        self.store_patience = store_patience
        self.report = Report()
        self.pending: list[_Result] = []
        self.spool = spool.Spool()
        self.unstored = 0  # grants in memory and spool, not yet in the database
        self.kept_in_spool = 0  # grants given up on, left for the next run
        self.write_lock = asyncio.Lock()
        self.failing_since: float | None = None  # the database refusing writes
        self.gave_up = False
        self.claim_failed = False
        self.unstarted: list[TwitchToken] = []  # claimed, then not started
        self.wake_writer = asyncio.Event()
        self.workers_done = False

    async def handle(self, pks: list[int], *, concurrency: int) -> Report:
        queue: asyncio.Queue[TwitchToken | None] = asyncio.Queue(maxsize=concurrency)
        writer = asyncio.create_task(self.write_regularly())
        try:
            failures = [
                outcome
                for outcome in await asyncio.gather(
                    self.claim_all(pks, queue, workers=concurrency),
                    *(self.work(queue) for _ in range(concurrency)),
                    return_exceptions=True,
                )
                if isinstance(outcome, BaseException)
            ]
            self.workers_done = True
            self.wake_writer.set()
            await writer  # stores every result, or raises having kept them
            if failures:
                raise failures[0]
        finally:
            if not writer.done():
                self.workers_done = True
                self.wake_writer.set()
                await asyncio.wait([writer])
            await self.finish()
        self.report.seconds = time.monotonic() - self.started
        return self.report

    async def claim_all(
        self, pks: list[int], queue: asyncio.Queue[TwitchToken | None], *, workers: int
    ) -> None:
        # Claim little ahead of the workers, so claimed tokens do not wait long.
        batch = max(2 * workers, 10)
        try:
            for start in range(0, len(pks), batch):
                chunk = pks[start : start + batch]
                if self.gave_up or self.out_of_budget():
                    self.leave(len(chunk))
                    continue
                for token in await self.claim(chunk):
                    await queue.put(token)
        except BaseException:
            self.claim_failed = True
            raise
        finally:
            # Always, so that every worker ends.
            for _ in range(workers):
                await queue.put(None)

    async def claim(self, pks: list[int]) -> list[TwitchToken]:
        # Pairs a dead run left must be stored before we may present any token.
        await areplay_spool(source=self.source, actor=self.actor)
        # A transaction with SELECT ... FOR UPDATE: sync ORM, on Django's sync thread.
        claimed = await sync_to_async(_claim)(pks, plan=self.plan)
        self.count_skipped(len(pks) - len(claimed))
        return claimed

    async def work(self, queue: asyncio.Queue[TwitchToken | None]) -> None:
        while (token := await queue.get()) is not None:
            await self.wait_until_results_can_be_stored()
            if self.gave_up or self.claim_failed or self.out_of_budget():
                self.unstarted.append(token)
                self.leave(1)
                continue
            result = await _maintain_one(
                token,
                plan=self.plan,
                attempts=self.attempts,
                keep=self.keep_durably,
                refresh_before=self.start_before,
            )
            if result.grant is None and result.spooled:
                self.unstored -= 1  # Twitch's answer turned out unusable
            self.pending.append(result)
            if len(self.pending) >= WRITE_BATCH:
                self.wake_writer.set()

    def out_of_budget(self) -> bool:
        return self.start_before is not None and time.monotonic() > self.start_before

    def leave(self, count: int) -> None:
        """Tokens not started: left for the next run (or skipped when giving up)."""
        if count:
            self.report.left += count
            if self.progress is not None:
                self.progress(count)

    async def wait_until_results_can_be_stored(self) -> None:
        # A new refresh would rotate one more token that the database cannot
        # take: wait until it takes what we hold, or we give up.
        while not self.gave_up and (
            self.failing_since is not None or self.unstored >= MAX_UNSTORED
        ):
            await asyncio.sleep(FLUSH_EVERY)

    @sensitive_variables()
    def keep_durably(self, result: _Result) -> None:
        """Called when Twitch hands out a pair, before anything else is awaited."""
        assert result.grant is not None
        self.unstored += 1
        result.spooled = True
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
            if not self.workers_done:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.wake_writer.wait(), FLUSH_EVERY)
                self.wake_writer.clear()
            await self.flush()
            if self.workers_done and not self.pending:
                return
            if self.failing_since is not None:
                await asyncio.sleep(FLUSH_EVERY)

    async def flush(self) -> None:
        async with self.write_lock:
            if not self.pending:
                return
            batch, self.pending = self.pending, []
            try:
                # The ORM is synchronous; Django runs it on its one sync thread.
                await sync_to_async(_store_results)(
                    batch, source=self.source, actor=self.actor
                )
            except DatabaseError:
                # Twitch's answers (rotated refresh tokens among them) must not be
                # dropped: they stay in memory and in the spool, and are retried.
                self.pending[:0] = batch
                now = time.monotonic()
                self.failing_since = self.failing_since or now
                logger.exception("could not store %s results; will retry", len(batch))
                if now - self.failing_since > self.store_patience:
                    self.gave_up = True
                    raise
                return
            self.failing_since = None
        for result in batch:
            await self.count(result)
        if self.progress is not None:
            self.progress(len(batch))

    async def count(self, result: _Result) -> None:
        if result.grant is not None:
            self.unstored -= 1
            self.kept_in_spool += result.kept_in_spool
        if Attempt.UNDECRYPTABLE in (result.refresh, result.validation):
            self.report.undecryptable += 1
        self.report.counts[result.outcome] += 1
        if result.orphaned:
            assert result.grant is not None
            await twitch.revoke_quietly(result.grant.access_token)
        await _announce(result)

    def count_skipped(self, count: int) -> None:
        if count:
            self.report.counts[Outcome.SKIPPED] += count
            if self.progress is not None:
                self.progress(count)

    async def finish(self) -> None:
        if self.unstarted:
            # Sync ORM (it catches DatabaseError itself): on Django's sync thread.
            await sync_to_async(_release_quietly)(self.unstarted)
        # Kept while any grant is not in the database: the next run stores it.
        self.spool.close(keep=self.unstored > 0 or self.kept_in_spool > 0)


def _claim(pks: list[int], *, plan: Plan) -> list[TwitchToken]:
    now = timezone.now()
    lease = now + LEASE
    with transaction.atomic():
        # On PostgreSQL, rows another run has locked are skipped, not waited for;
        # SQLite has no row locks, but its IMMEDIATE transactions serialise claims.
        claimable = list(
            plan.due(TwitchToken.objects.active().filter(pk__in=pks), now=now)
            .claimable(lapsed_before=now - LEASE_GRACE)
            .select_for_update(skip_locked=True)
            .values_list("pk", flat=True)
        )
        TwitchToken.objects.filter(pk__in=claimable).update(claimed_until=lease)
    return list(
        TwitchToken.objects.filter(pk__in=claimable, claimed_until=lease).order_by(
            "expires_at"
        )
    )


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
async def _maintain_one(
    token: TwitchToken,
    *,
    plan: Plan,
    attempts: int,
    keep: Callable[[_Result], None],
    refresh_before: float | None = None,
) -> _Result:
    """Do what `plan` wants of one claimed token; `keep` gets a pair Twitch handed
    out the moment it arrives. A refresh that validation calls for is left to the
    next run once `refresh_before` (time.monotonic) has passed."""
    assert token.claimed_until is not None
    result = _Result(token=token, lease=token.claimed_until)
    now = timezone.now()
    if token.claimed_until - now < LEASE_NEEDED:
        return result  # waited too long in the queue; the next run takes it
    wants_refresh = plan.wants_refresh(token, now=now)
    if token.is_undecryptable:
        # We cannot even ask Twitch: say so on the duty that was due.
        if wants_refresh:
            result.refresh = Attempt.UNDECRYPTABLE
        else:
            result.validation = Attempt.UNDECRYPTABLE
        result.error = UNDECRYPTABLE
        return result
    try:
        if wants_refresh:
            await _refresh(token, result, attempts=attempts, keep=keep)
        if plan.wants_validation(token, now=now) and result.refresh in (
            None,
            Attempt.SUCCEEDED,
        ):
            await _validate(
                token,
                result,
                attempts=attempts,
                keep=keep,
                refresh_before=refresh_before,
            )
    except Exception:
        # One token's surprise must not cost the others their stored results.
        logger.exception("unexpected failure while maintaining token %s", token.pk)
        if wants_refresh and result.refresh is None:
            result.refresh = Attempt.ERROR
        else:
            result.validation = Attempt.ERROR
        result.error = "Unexpected error; see the logs."
    return result


@sensitive_variables()
async def _refresh(
    token: TwitchToken,
    result: _Result,
    *,
    attempts: int,
    keep: Callable[[_Result], None],
) -> None:
    try:
        grant = await twitch.with_retries(
            lambda: twitch.refresh(token.refresh_token), attempts=attempts
        )
    except twitch.InvalidCredential as error:
        result.refresh, result.error = Attempt.REJECTED, str(error)
        result.rejection_uncertain = error.after_unanswered_attempt
        return
    except twitch.TwitchError as error:
        result.refresh, result.error = Attempt.UNAVAILABLE, str(error)
        return
    # Twitch has most likely retired the old refresh token now: into the spool
    # before anything else is awaited.
    result.refresh, result.grant = Attempt.SUCCEEDED, grant
    keep(result)
    if not grant.access_token:
        # Only a refresh token to show for it (twitch.refresh): the newest Twitch
        # handed out, kept, due at once, and refreshed again by the next run.
        result.new_access_token_unusable = True
        result.error = (
            "Twitch's refresh answer held no usable access token; the next run "
            "refreshes again."
        )
        return
    if grant.expires_in is None or grant.scopes is None:
        # Twitch left the lifetime out or sent nonsense there or in the scopes:
        # validating the new access token tells them, and that Twitch really
        # issued the token. A pair Twitch itself calls invalid is not stored:
        # storing it would replace a refresh token that may well still work.
        try:
            result.info = await twitch.with_retries(
                lambda: twitch.validate(grant.access_token), attempts=attempts
            )
            result.validation = Attempt.SUCCEEDED
        except twitch.InvalidCredential:
            result.refresh, result.grant = Attempt.UNAVAILABLE, None
            result.error = (
                "Twitch's refresh answer held no usable token; the stored one is kept."
            )
        except twitch.TwitchError:
            pass  # kept, with an unknown expiry: the next run looks again


@sensitive_variables()
async def _validate(
    token: TwitchToken,
    result: _Result,
    *,
    attempts: int,
    keep: Callable[[_Result], None],
    refresh_before: float | None = None,
) -> None:
    if result.validation is not None:
        return  # the refresh validated its new token already
    if result.grant is not None and not result.grant.access_token:
        return  # no access token to validate: the next run refreshes
    access = result.grant.access_token if result.grant else token.access_token
    try:
        result.info = await twitch.with_retries(
            lambda: twitch.validate(access), attempts=attempts
        )
        result.validation = Attempt.SUCCEEDED
    except twitch.InvalidCredential as error:
        # Twitch answered, so this counts as the hourly validation.
        result.validation = Attempt.REJECTED
        if result.grant is not None:
            result.new_access_token_unusable = True
            result.error = "Twitch rejected the access token it just issued."
        elif refresh_before is not None and time.monotonic() > refresh_before:
            result.error = "Twitch says the access token is invalid; the next run "
            result.error += "refreshes it."
        else:
            result.error = str(error)
            # An invalid access token is what refreshing is for.
            await _refresh(token, result, attempts=attempts, keep=keep)
    except twitch.TwitchError as error:
        result.validation = Attempt.UNAVAILABLE
        if result.grant is None:
            result.error = str(error)


def _store_results(
    results: list[_Result], *, source: TokenEvent.Source, actor: AbstractBaseUser | None
) -> None:
    """Write the results in one transaction; only after it commits are they final.

    Only a `DatabaseError` (the database refusing writes) fails the whole batch,
    which is then retried as it is. Any other failure is one result's problem: the
    batch is written again one result at a time, so the others are kept.
    """
    try:
        _store_batch(results, source=source, actor=actor)
        return
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


def _give_up_storing(result: _Result) -> None:
    result.store_failed, result.error = True, "Could not be stored; see the logs."
    if result.grant is not None:
        # Pinned: nobody may present the old refresh token before a later run has
        # stored this grant from the spool (the replay releases the pin).
        result.kept_in_spool = True
        TwitchToken.objects.filter(pk=result.token.pk).update(
            claimed_until=timezone.now() + PINNED, last_error=result.error
        )
        return
    TwitchToken.objects.filter(pk=result.token.pk, claimed_until=result.lease).update(
        claimed_until=None, last_error=result.error
    )


def _store_batch(
    results: list[_Result], *, source: TokenEvent.Source, actor: AbstractBaseUser | None
) -> None:
    """Nothing in `results` changes before the commit, so a failed write can be
    retried with the same results."""
    now = timezone.now()
    written: list[tuple[_Result, dict[str, Any]]] = []
    not_stored: list[_Result] = []
    superseded: list[_Result] = []
    with transaction.atomic():
        for result in results:
            if _was_superseded(result):
                superseded.append(result)
            changes = _changes(result, now=now, superseded=result in superseded)
            stored = TwitchToken.objects.filter(
                pk=result.token.pk,
                claimed_until=result.lease,
                status=result.token.status,
            ).update(**changes)
            if stored:
                written.append((result, changes))
            elif not _holds_grant_already(result):  # else an earlier try stored it
                not_stored.append(result)
        TokenEvent.objects.bulk_create(
            event
            for result, _ in written
            for event in _events_for(result, source=source, actor=actor, now=now)
        )
    for result in superseded:
        result.superseded = True
    for result in not_stored:
        # Revoked or re-claimed meanwhile: what we learnt is no longer ours to
        # write, and a grant nobody will hold is revoked at Twitch.
        logger.warning(
            "token %s changed during its refresh; not stored", result.token.pk
        )
        result.not_stored = True
    for result, changes in written:
        for name, value in changes.items():
            setattr(result.token, name, value)


def _holds_grant_already(result: _Result) -> bool:
    if result.grant is None:
        return False
    current = TwitchToken.objects.filter(pk=result.token.pk).only("refresh_token")
    row = current.first()
    return row is not None and row.refresh_token == result.grant.refresh_token


def _was_superseded(result: _Result) -> bool:
    """Twitch rejected our refresh token, but the row holds a newer one by now (a
    replay stored it): nothing is wrong with the connection."""
    if result.refresh is not Attempt.REJECTED:
        return False
    current = (
        TwitchToken.objects.select_for_update()
        .filter(pk=result.token.pk)
        .only("refresh_token")
        .first()
    )
    return current is not None and current.refresh_token != result.token.refresh_token


def _changes(result: _Result, *, now: datetime, superseded: bool) -> dict[str, Any]:
    """The columns to write for one result."""
    changes: dict[str, Any] = {"claimed_until": None, "updated_at": now}
    if result.grant is not None:
        changes.update(
            access_token=result.grant.access_token,
            refresh_token=result.grant.refresh_token,
            # Refreshing keeps a grant's scopes: unreadable ones change nothing.
            scopes=result.token.scopes
            if result.grant.scopes is None
            else result.grant.scopes,
            expires_at=twitch.expires_at(now, result.grant.expires_in, result.info),
            last_refreshed_at=now,
            last_error="",
        )
    if result.validation in (Attempt.SUCCEEDED, Attempt.REJECTED):
        changes["last_validated_at"] = now
    if result.info is not None:
        # Twitch users rename; and validation says which scopes the token has.
        changes.update(login=result.info.login, scopes=result.info.scopes)
        if result.grant is None:
            changes["expires_at"] = twitch.expires_at(now, None, result.info)
    if superseded:
        return changes
    if (
        result.refresh is Attempt.REJECTED
        and not result.rejection_uncertain
        and result.grant is None
    ):
        changes["status"] = TwitchToken.Status.NEEDS_RECONNECT
    if result.error:
        changes["last_error"] = result.error[:200]
    return changes


def _events_for(
    result: _Result,
    *,
    source: TokenEvent.Source,
    actor: AbstractBaseUser | None,
    now: datetime,
) -> list[TokenEvent]:
    """One event per duty attempted, saying how it went."""
    return [
        TokenEvent(
            token=result.token,
            action=action,
            outcome=attempt,
            source=source,
            actor=actor,
            detail="" if attempt is Attempt.SUCCEEDED else result.error[:200],
            created_at=now,
        )
        for action, attempt in (
            (TokenEvent.Action.VALIDATE, result.validation),
            (TokenEvent.Action.REFRESH, result.refresh),
        )
        if attempt is not None
    ]


async def _announce(result: _Result) -> None:
    if result.outcome is Outcome.REFRESHED:
        await signals.token_refreshed.asend(sender=TwitchToken, token=result.token)
    elif result.outcome is Outcome.NEEDS_RECONNECT:
        logger.info("token %s needs a reconnect: %s", result.token.pk, result.error)
        await signals.token_needs_reconnect.asend(
            sender=TwitchToken, token=result.token
        )
