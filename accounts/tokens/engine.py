"""Keeping tokens alive: the leased refresh engine behind `refresh_tokens`, the
admin's refresh and validate actions and `twitch_for`.

Every refresh, wherever it starts, goes through `amaintain_tokens`, and each token
lives through a run in the same five steps, which `Run` takes in this order:

1. **claim** it with a lease (`store.claim`), after storing what dead runs left
   in the spool (`replay`), so a grant never has two refreshers (Twitch ends the
   whole authorization when a replaced refresh token is presented again);
2. **ask Twitch** to refresh or validate it (`asking.ask_twitch`);
3. **keep** a pair Twitch hands out durably, in the spool, the moment it arrives;
4. **store** the findings under the lease, in batches (`store.store_results`);
5. **announce** how it went: the report's counts and the signals.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any

from asgiref.sync import sync_to_async
from django.contrib.auth.base_user import AbstractBaseUser
from django.db import DatabaseError
from django.views.decorators.debug import sensitive_variables

from accounts import signals, twitch
from accounts.models import TokenEvent, TwitchToken
from accounts.tokens import spool, store
from accounts.tokens.asking import ask_twitch
from accounts.tokens.pacing import Pace
from accounts.tokens.replay import areplay_spool
from accounts.tokens.results import (
    Attempt,
    Outcome,
    Report,
    Result,
    Stored,
    outcome,
)
from accounts.tokens.schedule import Plan, select_due

__all__ = [
    "Outcome",
    "Plan",
    "Report",
    "amaintain_tokens",
    "maintain_tokens",
    "select_due",
]

logger = logging.getLogger(__name__)

WRITE_BATCH = 100
FLUSH_EVERY = 0.2  # seconds
# How long a run retries a database that refuses writes before it gives up and
# leaves its pairs in the spool for the next run.
STORE_PATIENCE = 60.0  # seconds
# Rotated token pairs a run may hold that the database has not stored yet; past
# this, and while writes fail, it starts no new refresh.
MAX_UNSTORED = 2 * WRITE_BATCH


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
    stop: threading.Event | None = None,
    deadline: float | None = None,
) -> Report:
    """Refresh and/or validate these tokens, `concurrency` at a time, at most once each.

    Safe beside other runs on other machines: each token is claimed with a lease
    before Twitch is asked, and the answer is stored only while the lease holds.
    The new refresh token replaces the old one in the same UPDATE that stores it,
    and is in the spool (accounts/tokens/spool.py) from Twitch's answer until then.

    `budget`: seconds after which no new token is started (the rest are counted as
    left, for the next run). `store_patience`: how long a database that refuses
    writes is retried (STORE_PATIENCE seconds by default) before the run gives up
    (its pairs stay in the spool) and raises `DatabaseError`. `stop`: once set (a
    signal handler may set it), no new token is started; the report says so.
    `deadline` (time.monotonic): site code is waiting, so a rate limit is waited
    out only when its reset comes before it.

    When Twitch answers 429, the run slows down: no new token is started before
    the reset Twitch names (at most `twitch.http.MAX_RETRY_WAIT` away; a later
    reset leaves the rest for the next run), and the report counts the 429s and
    the pause.

    A call to Twitch in flight is never abandoned, even when the caller is
    cancelled (a dropped request, a worker shutting down): Twitch may rotate the
    refresh token it carries, so the call is seen through and its answer stored
    before the cancellation goes on.
    """
    run = Run(
        plan=plan,
        source=source,
        actor=actor,
        attempts=attempts,
        budget=budget,
        store_patience=STORE_PATIENCE if store_patience is None else store_patience,
        progress=progress,
        stop=stop,
        deadline=deadline,
    )
    return await run.handle(pks, concurrency=min(concurrency, max(len(pks), 1)))


def maintain_tokens(**options: Any) -> Report:
    """`amaintain_tokens` for sync callers (the command, admin actions)."""
    return twitch.run_sync(amaintain_tokens, **options)


class Run:
    """One call of `amaintain_tokens`.

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
        stop: threading.Event | None = None,
        deadline: float | None = None,
    ) -> None:
        self.plan, self.source, self.actor = plan, source, actor
        self.stop, self.deadline = stop, deadline
        self.attempts, self.progress = attempts, progress
        self.started = time.monotonic()
        self.start_before = None if budget is None else self.started + budget
        self.store_patience = store_patience
        self.report = Report()
        self.spool = spool.Spool()
        # Set when no token may be started any more: claiming failed, or the
        # database refused writes for longer than `store_patience`.
        self.stopped = False
        self.unstarted: list[TwitchToken] = []  # claimed, then not started
        # Each token's calls to Twitch, shielded from cancellation.
        self.in_flight: set[asyncio.Task[None]] = set()
        # Grants Twitch handed out that the database has not stored yet (they are
        # in memory and in the spool), and whether any stays in the spool for good.
        self.unstored = 0
        self.spool_kept = False
        # The writer's side: results waiting, and since when writes fail.
        self.pending: list[Result] = []
        self.failing_since: float | None = None
        self.wake_writer = asyncio.Event()
        self.workers_done = False
        # Rate limited by Twitch: when tokens may be started again.
        self.pace = Pace(self.report)

    async def handle(self, pks: list[int], *, concurrency: int) -> Report:
        queue: asyncio.Queue[TwitchToken | None] = asyncio.Queue(maxsize=concurrency)
        writer = asyncio.create_task(self.store_regularly())
        try:
            failures = [
                ended
                for ended in await asyncio.gather(
                    self.claim_all(pks, queue, workers=concurrency),
                    *(self.work(queue) for _ in range(concurrency)),
                    return_exceptions=True,
                )
                if isinstance(ended, BaseException)
            ]
            self.workers_done = True
            self.wake_writer.set()
            await writer  # stores every result, or raises having kept them
            if failures:
                raise failures[0]
        finally:
            # Also when cancelled (more than once): what Twitch is answering still
            # reaches the database, and leases not used are given back.
            await _despite_cancellation(self.wind_down(writer))
        self.report.seconds = time.monotonic() - self.started
        self.report.stopped = self.stop_requested()
        return self.report

    async def wind_down(self, writer: asyncio.Task[None]) -> None:
        if self.in_flight:
            await asyncio.wait(self.in_flight)
        if not writer.done():
            self.workers_done = True
            self.wake_writer.set()
            await asyncio.wait([writer])
        await self.finish()

    # --- 1. Claim ---------------------------------------------------------------------

    async def claim_all(
        self, pks: list[int], queue: asyncio.Queue[TwitchToken | None], *, workers: int
    ) -> None:
        # Claim little ahead of the workers, so claimed tokens do not wait long.
        batch = max(2 * workers, 10)
        claimed: list[TwitchToken] = []  # claimed, not yet queued
        try:
            for start in range(0, len(pks), batch):
                chunk = pks[start : start + batch]
                if not self.may_start():
                    self.leave(len(chunk))
                    continue
                claimed = await self.claim(chunk)
                while claimed:
                    await queue.put(claimed[0])
                    claimed.pop(0)
        except BaseException:
            self.stopped = True
            self.unstarted.extend(claimed)
            self.leave(len(claimed))
            raise
        finally:
            if self.stopped:
                # The workers may be gone (cancelled): what is still queued is
                # given back, which leaves room for the ends.
                while not queue.empty():
                    if (queued := queue.get_nowait()) is not None:
                        self.unstarted.append(queued)
                        self.leave(1)
                for _ in range(workers):
                    queue.put_nowait(None)
            else:
                # Always, so that every worker ends.
                for _ in range(workers):
                    await queue.put(None)

    async def claim(self, pks: list[int]) -> list[TwitchToken]:
        # Pairs a dead run left must be stored before we may present any token.
        await areplay_spool(source=self.source, actor=self.actor)
        # A transaction with SELECT ... FOR UPDATE: sync ORM, on Django's sync thread.
        claiming = asyncio.ensure_future(
            sync_to_async(store.claim)(pks, plan=self.plan)
        )
        try:
            claimed = await asyncio.shield(claiming)
        except asyncio.CancelledError:
            # The claim goes on in its thread: its leases are given back.
            given_back = await claiming
            self.unstarted.extend(given_back)
            self.leave(len(given_back))
            raise
        self.count_skipped(len(pks) - len(claimed))
        return claimed

    # --- 2. Ask Twitch, 3. keep what it hands out -------------------------------------

    async def work(self, queue: asyncio.Queue[TwitchToken | None]) -> None:
        while (token := await queue.get()) is not None:
            try:
                await self.wait_until_results_can_be_stored()
                await self.pace.wait(while_=self.may_start, step=FLUSH_EVERY)
            except asyncio.CancelledError:
                self.unstarted.append(token)  # its lease is given back
                self.leave(1)
                raise
            if not self.may_start():
                self.unstarted.append(token)
                self.leave(1)
                continue
            asking = asyncio.create_task(self.ask_and_queue(token))
            self.in_flight.add(asking)
            asking.add_done_callback(self.in_flight.discard)
            await asyncio.shield(asking)

    async def ask_and_queue(self, token: TwitchToken) -> None:
        """Ask Twitch about one token and queue its result for the writer."""
        assert token.claimed_until is not None
        kept = False

        def keep(grant: twitch.TokenGrant) -> None:
            nonlocal kept
            kept = True
            self.keep_durably(token, grant)

        findings = await ask_twitch(
            token,
            plan=self.plan,
            attempts=self.attempts,
            keep=keep,
            refresh_before=self.start_before,
            stopping=self.stop_requested,
            rate_limited=self.pace.slow_down,
            deadline=self.deadline,
        )
        if kept and findings.grant is None:
            self.unstored -= 1  # Twitch's answer turned out unusable
        self.pending.append(Result(token, token.claimed_until, findings))
        if len(self.pending) >= WRITE_BATCH:
            self.wake_writer.set()

    @sensitive_variables()
    def keep_durably(self, token: TwitchToken, grant: twitch.TokenGrant) -> None:
        """Called when Twitch hands out a pair, before anything else is awaited."""
        assert token.claimed_until is not None
        self.unstored += 1
        try:
            self.spool.add(
                spool.Entry(
                    token_pk=token.pk,
                    replaced=spool.digest(token.refresh_token),
                    access_token=grant.access_token,
                    refresh_token=grant.refresh_token,
                    expires_in=grant.expires_in,
                    scopes=grant.scopes,
                    obtained_at=time.time(),
                    lease=token.claimed_until.isoformat(),
                )
            )
        except OSError:
            # Still in memory and about to be stored; only a crash now loses it.
            logger.exception("could not write the token spool in %s", spool.directory())

    def sync_spool(self) -> None:
        try:
            self.spool.sync()
        except OSError:
            logger.exception("could not sync the token spool in %s", spool.directory())

    async def wait_until_results_can_be_stored(self) -> None:
        # A new refresh would rotate one more token that the database cannot
        # take: wait until it takes what we hold, or we give up.
        while self.may_start() and (
            self.failing_since is not None or self.unstored >= MAX_UNSTORED
        ):
            await asyncio.sleep(FLUSH_EVERY)

    def may_start(self) -> bool:
        """Whether a new token may be started: not once the run has stopped (its
        claim or its database failed), been asked to stop, run out of budget, or
        been rate limited for longer than MAX_RETRY_WAIT."""
        out_of_budget = (
            self.start_before is not None and time.monotonic() > self.start_before
        )
        return not (
            self.stopped
            or self.stop_requested()
            or out_of_budget
            or self.pace.limited_for_long
        )

    def stop_requested(self) -> bool:
        return self.stop is not None and self.stop.is_set()

    def leave(self, count: int) -> None:
        """Tokens not started: left for the next run (or skipped when giving up)."""
        if count:
            self.report.left += count
            if self.progress is not None:
                self.progress(count)

    # --- 4. Store ---------------------------------------------------------------------

    async def store_regularly(self) -> None:
        while True:
            if not self.workers_done:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.wake_writer.wait(), FLUSH_EVERY)
                self.wake_writer.clear()
            await self.store_pending()
            if self.workers_done and not self.pending:
                return
            if self.failing_since is not None:
                await asyncio.sleep(FLUSH_EVERY)

    async def store_pending(self) -> None:
        if not self.pending:
            return
        batch, self.pending = self.pending, []
        try:
            # The ORM is synchronous; Django runs it on its one sync thread.
            stored = await sync_to_async(store.store_results)(
                batch, source=self.source, actor=self.actor
            )
        except DatabaseError:
            # Twitch's answers (rotated refresh tokens among them) must not be
            # dropped: they stay in memory and in the spool, and are retried.
            self.pending[:0] = batch
            now = time.monotonic()
            if self.failing_since is None:
                # From now on the spool is what the run relies on: past a power
                # cut too.
                self.failing_since = now
                self.sync_spool()
            logger.exception("could not store %s results; will retry", len(batch))
            # Asked to stop: the spool (synced) keeps the pairs for the next run.
            if now - self.failing_since > self.store_patience or self.stop_requested():
                self.stopped = True
                raise
            return
        self.failing_since = None
        for result, verdict in zip(batch, stored, strict=True):
            await self.announce(result, verdict)
        if self.progress is not None:
            self.progress(len(batch))

    # --- 5. Announce ------------------------------------------------------------------

    async def announce(self, result: Result, stored: Stored) -> None:
        found = result.findings
        if found.grant is not None:
            self.unstored -= 1
            # A grant that could not be written stays in the spool for the next run.
            self.spool_kept = self.spool_kept or stored is Stored.FAILED
        if Attempt.UNDECRYPTABLE in (found.refresh, found.validation):
            self.report.undecryptable += 1
        counted = outcome(found, stored)
        self.report.counts[counted] += 1
        if stored is Stored.GONE and found.grant is not None:
            # A grant Twitch issued that nobody will hold.
            await twitch.revoke_quietly(found.grant.access_token)
        if counted is Outcome.REFRESHED:
            await signals.token_refreshed.asend(
                sender=TwitchToken, token=result.token, role=result.token.role
            )
        elif counted is Outcome.NEEDS_RECONNECT:
            logger.info("token %s needs a reconnect: %s", result.token.pk, found.error)
            await signals.token_needs_reconnect.asend(
                sender=TwitchToken, token=result.token, role=result.token.role
            )

    def count_skipped(self, count: int) -> None:
        if count:
            self.report.counts[Outcome.SKIPPED] += count
            if self.progress is not None:
                self.progress(count)

    async def finish(self) -> None:
        if self.unstarted:
            # Sync ORM (it catches DatabaseError itself): on Django's sync thread.
            await sync_to_async(store.release_quietly)(self.unstarted)
        # Kept while any grant is not in the database: the next run stores it.
        self.spool.close(keep=self.unstored > 0 or self.spool_kept)


async def _despite_cancellation(work: Coroutine[Any, Any, None]) -> None:
    """Run `work` to its end even when the caller is cancelled meanwhile, once or
    more; then let the cancellation go on. (Not when the task itself is cancelled,
    as a closing event loop does to every task.)"""
    task = asyncio.ensure_future(work)
    cancelled = False
    while True:
        try:
            await asyncio.shield(task)
            break
        except asyncio.CancelledError:
            if task.done():
                raise
            cancelled = True
    if cancelled:
        raise asyncio.CancelledError
