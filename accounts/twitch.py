"""The one seam between the site and Twitch.

It owns the base URLs, the timeouts, the shared HTTP session and error translation:
every transport or protocol failure leaves this module as a `TwitchError`, whose text
is safe to show and to log because it never carries a credential. Nothing else in the
project imports twitchAPI or aiohttp.

twitchAPI 4.5.0 is used where it is safe and complete: `validate_token` (the token
travels in a header), the `AuthScope` vocabulary and the `Twitch` API client. The
token and revoke endpoints are called directly, because twitchAPI's helpers put the
client secret, the code or the token in the URL query string (where proxies and
access logs keep them) and drop `expires_in` and `scope` from the token response.
Twitch accepts form bodies (see ../shared/twitch-oauth.md, sections 2 and 4).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import weakref
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, TypeVar

import aiohttp
from django.conf import settings
from django.views.decorators.debug import sensitive_variables
from twitchAPI.oauth import validate_token as twitchapi_validate_token
from twitchAPI.twitch import Twitch
from twitchAPI.type import AuthScope

logger = logging.getLogger(__name__)

# No request may hang a view for long: Twitch answers in well under a second.
TIMEOUT = aiohttp.ClientTimeout(total=8, sock_connect=3)
# Transient failures are retried after 0.5 s, then 1 s, ...
RETRY_BASE_DELAY = 0.5
# The longest we honour a 429's Ratelimit-Reset before giving up for this run.
MAX_RETRY_WAIT = 30.0

KNOWN_SCOPES = frozenset(scope.value for scope in AuthScope)

T = TypeVar("T")


class TwitchError(Exception):
    """Twitch did not do what was asked. The text never contains a credential."""


class TwitchUnavailable(TwitchError):
    """Twitch could not be reached, timed out, failed (5xx) or rate limited us.

    Nothing is known about the credential: keep it and try again later.
    """

    def __init__(
        self,
        message: str,
        *,
        retry_after: float | None = None,
        rate_limited: bool = False,
    ) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        # A 429 means Twitch did nothing; any other failure leaves it unknown
        # whether Twitch acted on the request before its answer was lost.
        self.rate_limited = rate_limited


class TwitchRejected(TwitchError):
    """Twitch answered the request with a refusal (4xx)."""

    def __init__(self, message: str, *, status: int) -> None:
        super().__init__(message)
        self.status = status


class InvalidCredential(TwitchRejected):
    """Twitch says the code or token itself is no good (used, expired, revoked)."""

    # Set by with_retries: an earlier attempt of the same call may have been acted
    # on (a refresh token rotated) without its answer reaching us.
    after_unanswered_attempt = False


@dataclass(frozen=True)
class TokenGrant:
    """What the token endpoint hands out for a code or a refresh token."""

    access_token: str = field(repr=False)
    refresh_token: str = field(repr=False)
    expires_in: int
    scopes: list[str]


@dataclass(frozen=True)
class TokenInfo:
    """What the validate endpoint says about an access token."""

    user_id: str
    login: str
    scopes: list[str]
    expires_in: int
    client_id: str


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


def authorize_url(*, state: str, force_verify: bool = False) -> str:
    from urllib.parse import urlencode

    query = {
        "client_id": settings.TWITCH_CLIENT_ID,
        "redirect_uri": settings.TWITCH_REDIRECT_URI,
        "response_type": "code",
        "scope": " ".join(settings.TWITCH_SCOPES),
        "state": state,
    }
    if force_verify:
        query["force_verify"] = "true"
    return f"{settings.TWITCH_AUTH_BASE_URL}authorize?{urlencode(query)}"


@sensitive_variables()
async def exchange_code(code: str) -> TokenGrant:
    body = await _post_form(
        "token",
        {
            "client_id": settings.TWITCH_CLIENT_ID,
            "client_secret": settings.TWITCH_CLIENT_SECRET,
            "code": code,
            "grant_type": "authorization_code",
            "redirect_uri": settings.TWITCH_REDIRECT_URI,
        },
        credential_words=("authorization code", "code"),
    )
    return _token_grant(body)


@sensitive_variables()
async def refresh(refresh_token: str) -> TokenGrant:
    body = await _post_form(
        "token",
        {
            "client_id": settings.TWITCH_CLIENT_ID,
            "client_secret": settings.TWITCH_CLIENT_SECRET,
            "grant_type": "refresh_token",
            "refresh_token": refresh_token,
        },
        credential_words=("refresh token",),
    )
    return _token_grant(body)


@sensitive_variables()
async def validate(access_token: str) -> TokenInfo:
    try:
        body = await twitchapi_validate_token(
            access_token,
            session=http_session(),
            auth_base_url=settings.TWITCH_AUTH_BASE_URL,
        )
    except (TimeoutError, aiohttp.ClientError, ValueError) as error:
        raise _unavailable("validate", error) from None
    except (AttributeError, TypeError):
        # twitchAPI assumes a JSON object; anything else trips it up inside.
        raise TwitchUnavailable(
            "Twitch's validate endpoint answered nonsense."
        ) from None
    if not isinstance(body, dict):
        raise TwitchUnavailable("Twitch's validate endpoint answered nonsense.")
    status = body.get("status", 200)
    if status == 401:
        raise InvalidCredential("Twitch says the access token is invalid.", status=401)
    if status == 429 or status >= 500:
        raise TwitchUnavailable(f"Twitch's validate endpoint answered {status}.")
    if 400 <= status < 500:
        raise TwitchRejected(
            f"Twitch's validate endpoint answered {status}: {_message(body)}",
            status=status,
        )
    if "user_id" not in body:
        raise TwitchUnavailable("Twitch's validate endpoint gave an unexpected answer.")
    try:
        return TokenInfo(
            user_id=str(body["user_id"]),
            login=str(body.get("login") or ""),
            # twitchAPI maps scopes to AuthScope and unknown ones to None.
            scopes=[scope.value for scope in body.get("scopes") or [] if scope],
            expires_in=int(body.get("expires_in") or 0),
            client_id=str(body.get("client_id") or ""),
        )
    except (TypeError, ValueError, AttributeError):
        raise TwitchUnavailable(
            "Twitch's validate endpoint answered nonsense."
        ) from None


@sensitive_variables()
async def revoke(access_token: str) -> None:
    await _post_form(
        "revoke",
        {"client_id": settings.TWITCH_CLIENT_ID, "token": access_token},
        credential_words=("token",),
    )


async def with_retries(call: Callable[[], Awaitable[T]], *, attempts: int = 3) -> T:
    """Retry transient failures with backoff, honouring Twitch's rate-limit reset."""
    unanswered = False
    for attempt in range(1, attempts + 1):
        try:
            return await call()
        except InvalidCredential as error:
            error.after_unanswered_attempt = unanswered
            raise
        except TwitchUnavailable as error:
            unanswered = unanswered or not error.rate_limited
            if attempt == attempts:
                raise
            delay = RETRY_BASE_DELAY * 2 ** (attempt - 1)
            if error.retry_after is not None:
                if error.retry_after > MAX_RETRY_WAIT:
                    raise
                delay = max(delay, error.retry_after)
            await asyncio.sleep(delay)
    raise AssertionError("unreachable")


@sensitive_variables()
async def user_client(
    *,
    access_token: str,
    refresh_token: str,
    scopes: list[str],
    on_refresh: Callable[[str, str], Awaitable[None]],
) -> Twitch:
    """A twitchAPI `Twitch` acting as one user, with our URLs, timeout and scopes."""
    twitch = await Twitch(
        settings.TWITCH_CLIENT_ID,
        settings.TWITCH_CLIENT_SECRET,
        authenticate_app=False,
        base_url=settings.TWITCH_API_BASE_URL,
        auth_base_url=settings.TWITCH_AUTH_BASE_URL,
        session_timeout=TIMEOUT,
    )
    twitch.user_auth_refresh_callback = on_refresh
    known = [AuthScope(scope) for scope in scopes if scope in KNOWN_SCOPES]
    try:
        await twitch.set_user_authentication(access_token, known, refresh_token)
    except Exception as error:
        raise _translate_twitchapi(error) from None
    return twitch


def _translate_twitchapi(error: Exception) -> TwitchError:
    from twitchAPI.type import (
        InvalidRefreshTokenException,
        InvalidTokenException,
        MissingScopeException,
        UnauthorizedException,
    )

    if isinstance(error, InvalidRefreshTokenException | InvalidTokenException):
        return InvalidCredential("Twitch says the token is invalid.", status=401)
    if isinstance(error, UnauthorizedException):
        return InvalidCredential("Twitch says the token is unauthorized.", status=401)
    if isinstance(error, MissingScopeException):
        return TwitchRejected("The token lacks a required scope.", status=403)
    return _unavailable("api", error)


@sensitive_variables()
async def _post_form(
    endpoint: str, form: dict[str, str], *, credential_words: tuple[str, ...]
) -> dict[str, Any]:
    """POST a form to an id.twitch.tv endpoint and return its JSON body (or {})."""
    url = settings.TWITCH_AUTH_BASE_URL + endpoint
    started = time.monotonic()
    try:
        async with http_session().post(url, data=form) as response:
            status = response.status
            headers = response.headers
            raw = await response.read()
    except (TimeoutError, aiohttp.ClientError) as error:
        raise _unavailable(endpoint, error) from None
    logger.debug(
        "twitch %s answered %s in %.0f ms",
        endpoint,
        status,
        (time.monotonic() - started) * 1000,
    )
    try:
        body = json.loads(raw) if raw.strip() else {}
    except ValueError:
        body = None
    if status == 429:
        raise TwitchUnavailable(
            f"Twitch's {endpoint} endpoint is rate limiting us.",
            retry_after=_retry_after(headers),
            rate_limited=True,
        )
    if status >= 500:
        raise TwitchUnavailable(f"Twitch's {endpoint} endpoint answered {status}.")
    if not isinstance(body, dict):
        raise TwitchUnavailable(
            f"Twitch's {endpoint} endpoint answered {status} with a body that is "
            "not JSON."
        )
    if status >= 400:
        message = _message(body)
        text = f"Twitch's {endpoint} endpoint answered {status}: {message}"
        if status in (400, 401) and any(w in message.lower() for w in credential_words):
            raise InvalidCredential(text, status=status)
        raise TwitchRejected(text, status=status)
    return body


def _token_grant(body: dict[str, Any]) -> TokenGrant:
    try:
        scope = body.get("scope") or []
        # Twitch sends an array in practice; its docs also show a string.
        scopes = scope.split() if isinstance(scope, str) else [str(s) for s in scope]
        return TokenGrant(
            access_token=str(body["access_token"]),
            refresh_token=str(body["refresh_token"]),
            expires_in=int(body["expires_in"]),
            scopes=scopes,
        )
    except (KeyError, TypeError, ValueError):
        raise TwitchUnavailable(
            "Twitch's token endpoint answered without a complete token."
        ) from None


def _message(body: dict[str, Any]) -> str:
    return str(body.get("message") or body.get("error") or "no message")[:120]


def _retry_after(headers: Any) -> float | None:
    try:
        if reset := headers.get("Ratelimit-Reset"):
            return max(0.0, float(reset) - time.time())
        if retry_after := headers.get("Retry-After"):
            return max(0.0, float(retry_after))
    except ValueError:
        pass
    return None


def _unavailable(endpoint: str, error: BaseException) -> TwitchUnavailable:
    # Only the exception's type: aiohttp's texts can quote the full request URL.
    if isinstance(error, asyncio.TimeoutError):
        return TwitchUnavailable(f"Twitch's {endpoint} endpoint timed out.")
    return TwitchUnavailable(
        f"Twitch's {endpoint} endpoint could not be reached ({type(error).__name__})."
    )
