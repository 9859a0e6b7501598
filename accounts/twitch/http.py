"""HTTP to Twitch: one shared session per event loop, the timeout, retries, and the
translation of every transport failure or HTTP status into a `TwitchError`."""

from __future__ import annotations

import asyncio
import json
import logging
import time
import weakref
from collections.abc import Awaitable, Callable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, TypeVar

import aiohttp
from django.conf import settings
from django.views.decorators.debug import sensitive_variables

from accounts.twitch.errors import (
    InvalidCredential,
    TwitchRateLimited,
    TwitchRejected,
    TwitchUnavailable,
)

logger = logging.getLogger(__name__)

# No request may hang a view for long: Twitch answers in well under a second.
# Read at each request (tests shorten it).
TIMEOUT = aiohttp.ClientTimeout(total=8, sock_connect=3)
# Transient failures are retried after 0.5 s, then 1 s, ...
RETRY_BASE_DELAY = 0.5
# The longest we honour a 429's Ratelimit-Reset before giving up for this run.
MAX_RETRY_WAIT = 30.0

T = TypeVar("T")


# One HTTP session (and so one keep-alive connection pool) per event loop: aiohttp
# sessions are bound to the loop that created them.
_sessions: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, aiohttp.ClientSession]
_sessions = weakref.WeakKeyDictionary()


# run_sync's own session for the work it runs; it wins over the loop's.
_run_sync_session: ContextVar[aiohttp.ClientSession | None] = ContextVar(
    "run_sync_session", default=None
)


def http_session() -> aiohttp.ClientSession:
    if (session := _run_sync_session.get()) is not None:
        return session
    loop = asyncio.get_running_loop()
    session = _sessions.get(loop)
    if session is None or session.closed:
        session = _new_session()
        _sessions[loop] = session
    return session


def _new_session() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        timeout=TIMEOUT,
        connector=aiohttp.TCPConnector(limit=100),
        raise_for_status=False,
    )


async def close_http_session() -> None:
    """Close this event loop's session; for loops that end (tests, shutdown)."""
    session = _sessions.pop(asyncio.get_running_loop(), None)
    if session is not None:
        await session.close()


def run_sync(function: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
    """Run a coroutine function from sync code, in an HTTP session of its own.

    Under ASGI, async_to_sync runs the coroutine on the server's event loop, whose
    shared session other requests are using: closing that one would cut them off.
    """
    from asgiref.sync import async_to_sync

    async def run_in_own_session() -> T:
        session = _new_session()
        token = _run_sync_session.set(session)
        try:
            return await function(*args, **kwargs)
        finally:
            _run_sync_session.reset(token)
            await session.close()

    return async_to_sync(run_in_own_session)()


@dataclass(frozen=True)
class Answer:
    """Twitch's answer, read whole."""

    status: int
    headers: Mapping[str, str]
    # The JSON value of the body: {} for an empty body, None for one that is not JSON.
    body: Any


@sensitive_variables()
async def send(
    method: str,
    url: str,
    *,
    endpoint: str,
    headers: dict[str, str] | None = None,
    params: dict[str, str] | None = None,
    data: dict[str, str] | None = None,
    json_body: dict[str, Any] | None = None,
) -> Answer:
    """One request on the shared session within `TIMEOUT`; `endpoint` names it in
    messages. Raises `TwitchUnavailable` when no answer arrives; any status is an
    answer (see `raise_for_status`)."""
    started = time.monotonic()
    try:
        async with http_session().request(
            method,
            url,
            headers=headers,
            params=params,
            data=data,
            json=json_body,
            timeout=TIMEOUT,
        ) as response:
            status, answer_headers, raw = (
                response.status,
                response.headers,
                await response.read(),
            )
    except (TimeoutError, aiohttp.ClientError) as error:
        raise unavailable(endpoint, error) from None
    logger.debug(
        "twitch %s answered %s in %.0f ms",
        endpoint,
        status,
        (time.monotonic() - started) * 1000,
    )
    return Answer(status=status, headers=answer_headers, body=_json_or_none(raw))


@sensitive_variables()
async def post_form(
    endpoint: str,
    form: dict[str, str],
    *,
    credential_words: tuple[str, ...],
    expect_json: bool = True,
) -> dict[str, Any]:
    """POST a form to an id.twitch.tv endpoint and return its JSON body (or {})."""
    url = settings.TWITCH_AUTH_BASE_URL + endpoint
    answer = await send("POST", url, endpoint=endpoint, data=form)
    if not expect_json and 200 <= answer.status < 300:
        return {}  # success says it all; the body does not matter
    raise_for_status(endpoint, answer, credential_words=credential_words)
    if not isinstance(answer.body, dict):
        raise TwitchUnavailable(
            f"Twitch's {endpoint} endpoint answered {answer.status} with a body that "
            "is not a JSON object."
        )
    return answer.body


def _json_or_none(raw: bytes) -> Any:
    """The JSON value of a body: {} for an empty one, None for one that is not JSON."""
    if not raw.strip():
        return {}
    try:
        return json.loads(raw)
    except ValueError:
        return None


def raise_for_status(
    endpoint: str, answer: Answer, *, credential_words: tuple[str, ...] = ()
) -> None:
    """Turn Twitch's failures into our exceptions; the HTTP status decides, never
    a "status" field in the body (which may say anything). A refusal that names one
    of `credential_words` is `InvalidCredential`."""
    status = answer.status
    if status == 429:
        raise TwitchRateLimited(
            f"Twitch's {endpoint} endpoint is rate limiting us.",
            retry_after=seconds_to_reset(answer.headers),
        )
    if status >= 500 or status < 200 or 300 <= status < 400:
        raise TwitchUnavailable(f"Twitch's {endpoint} endpoint answered {status}.")
    if status >= 400:
        message = _message(answer.body)
        text = f"Twitch's {endpoint} endpoint answered {status}: {message}"
        if status == 401 and endpoint == "validate":
            return  # the caller's to say
        if status in (400, 401) and any(w in message.lower() for w in credential_words):
            raise InvalidCredential(text, status=status)
        raise TwitchRejected(text, status=status)


def _message(body: Any) -> str:
    if not isinstance(body, dict):
        return "no message"
    text = str(body.get("message") or body.get("error") or "no message")
    # Only printable text, briefly: it ends up in logs, admin pages and messages.
    return "".join(c for c in text if c.isprintable())[:120]


def seconds_to_reset(headers: Mapping[str, str]) -> float | None:
    """How long a 429 asks us to wait: until `Ratelimit-Reset` (an epoch time, as
    Helix and id.twitch.tv send it), else `Retry-After`; None when neither says."""
    try:
        if reset := headers.get("Ratelimit-Reset"):
            return max(0.0, float(reset) - time.time())
        if retry_after := headers.get("Retry-After"):
            return max(0.0, float(retry_after))
    except ValueError:
        pass
    return None


def unavailable(endpoint: str, error: BaseException) -> TwitchUnavailable:
    """The `TwitchUnavailable` for a request that got no answer."""
    # Only the exception's type: aiohttp's texts can quote the full request URL.
    if isinstance(error, asyncio.TimeoutError):
        return TwitchUnavailable(f"Twitch's {endpoint} endpoint timed out.")
    return TwitchUnavailable(
        f"Twitch's {endpoint} endpoint could not be reached ({type(error).__name__})."
    )


async def with_retries(
    call: Callable[[], Awaitable[T]],
    *,
    attempts: int = 3,
    stopping: Callable[[], bool] | None = None,
    rate_limited: Callable[[TwitchRateLimited], None] | None = None,
    deadline: float | None = None,
) -> T:
    """Retry transient failures with backoff, honouring Twitch's rate-limit reset.
    Once `stopping()` says so (the process is asked to stop), no attempt follows:
    the call in flight is the last, bounded by the timeout. Each 429 met is told to
    `rate_limited` (a run slows down for it); a reset further than MAX_RETRY_WAIT
    away (a cron run's patience), or one that would pass `deadline` (time.monotonic:
    site code's budget for the whole call), raises the `TwitchRateLimited` at once.
    A wait is cut short, and nothing more attempted, once `stopping()` says so."""
    unanswered = False
    for attempt in range(1, attempts + 1):
        try:
            return await call()
        except InvalidCredential as error:
            error.after_unanswered_attempt = unanswered
            raise
        except TwitchUnavailable as error:
            if isinstance(error, TwitchRateLimited) and rate_limited is not None:
                rate_limited(error)
            unanswered = unanswered or not error.rate_limited
            if attempt == attempts or not error.retryable:
                raise
            if stopping is not None and stopping():
                raise
            delay = RETRY_BASE_DELAY * 2 ** (attempt - 1)
            if error.retry_after is not None:
                if error.retry_after > MAX_RETRY_WAIT:
                    raise
                delay = max(delay, error.retry_after)
            if deadline is not None and time.monotonic() + delay > deadline:
                raise
            if not await _nap(delay, stopping):
                raise
    raise AssertionError("unreachable")


async def _nap(seconds: float, stopping: Callable[[], bool] | None) -> bool:
    """Sleep `seconds`; False as soon as `stopping()` says so."""
    end = time.monotonic() + seconds
    while (left := end - time.monotonic()) > 0:
        if stopping is not None and stopping():
            return False
        await asyncio.sleep(left if stopping is None else min(left, 0.2))
    return stopping is None or not stopping()
