"""A run's pace under Twitch's rate limits: after a 429 (Twitch did nothing), no
token is started before the reset Twitch names, and none at all once it names one
further away than a run waits; the run's report counts both."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from accounts import twitch
from accounts.tokens.results import Report

# How long a run pauses after a 429 that names no reset.
RATE_LIMIT_PAUSE = 1.0  # seconds


class Pace:
    def __init__(self, report: Report) -> None:
        self.report = report
        # No token is started before this (time.monotonic).
        self.not_before = 0.0
        # Twitch named a reset further than MAX_RETRY_WAIT: the next run goes on.
        self.limited_for_long = False

    def slow_down(self, error: twitch.TwitchRateLimited) -> None:
        """Twitch answered 429 (it did nothing): start no token before its reset."""
        self.report.rate_limited += 1
        self.report.retry_after = error.retry_after
        wait = RATE_LIMIT_PAUSE if error.retry_after is None else error.retry_after
        if wait > twitch.http.MAX_RETRY_WAIT:
            # Every call would meet the same 429 meanwhile.
            self.limited_for_long = True
            return
        now = time.monotonic()
        until = now + wait
        if until > self.not_before:
            # Only the part of the pause not already counted.
            self.report.rate_limit_wait += until - max(now, self.not_before)
            self.not_before = until

    async def wait(self, *, while_: Callable[[], bool], step: float) -> None:
        """Until the reset, or until `while_()` says the run no longer starts."""
        while while_() and (left := self.not_before - time.monotonic()) > 0:
            await asyncio.sleep(min(left, step))
