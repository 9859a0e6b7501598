"""Work a request starts after its answer: validating a new connection, revoking
the grant it replaced, handling an EventSub message, creating subscriptions. Each
piece is also finished by cron (`refresh_tokens`, `eventsub process`, `eventsub
subscribe`) if this process ends before it does."""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections.abc import Coroutine
from typing import Any

logger = logging.getLogger(__name__)

# Strong references: the event loop keeps only weak ones to its tasks.
_running: set[asyncio.Task[Any]] = set()


def in_background(work: Coroutine[Any, Any, Any]) -> None:
    """Run `work` after the answer. In a context of its own: the request's would
    tie its sync calls to the request's thread (twitchauth_site/asgi.py), which
    asgiref refuses once the request has ended."""
    task = asyncio.get_running_loop().create_task(
        _logged(work), context=contextvars.Context()
    )
    _running.add(task)
    task.add_done_callback(_running.discard)


async def _logged(work: Coroutine[Any, Any, Any]) -> None:
    try:
        await work
    except Exception as error:
        # The class only, never a text that might quote a credential.
        logger.warning(
            "background work %s failed (%s); cron finishes it",
            getattr(work, "__qualname__", "?"),
            type(error).__name__,
        )


async def finish_background_work() -> None:
    """Wait for work started in the background on this event loop (tests; a
    command before its loop ends). Another loop's work is its own: waiting for it
    here could wait for this loop's thread (a command's loop, run from a test's)."""
    loop = asyncio.get_running_loop()
    while ours := [task for task in _running if task.get_loop() is loop]:
        await asyncio.gather(*ours, return_exceptions=True)


def cancel_background_work() -> None:
    """Drop work not done yet, as a process that dies does (tests)."""
    for task in list(_running):
        task.cancel()
