"""The one seam between the site and Twitch.

It owns the base URLs, the timeouts, the shared HTTP session and error translation:
every transport or protocol failure leaves this module as a `TwitchError`, whose text
is safe to show and to log because it never carries a credential. Nothing else in the
project imports twitchAPI or aiohttp.

twitchAPI 4.5.0 is used for the `AuthScope` vocabulary and the `Twitch` API client.
The OAuth endpoints are called directly: twitchAPI's helpers put the client secret,
the code or the token in the URL query string (where proxies and access logs keep
them), drop `expires_in` and `scope` from the token response, turn scopes it does not
know into None, and open sessions with aiohttp's 300-second default timeout. Twitch
accepts form bodies (see ../shared/twitch-oauth.md, sections 2 to 4).

Twitch's answers are parsed strictly: a field of the wrong type or shape makes the
answer `TwitchUnavailable` ("Twitch misbehaved; keep what you hold"), never a
half-read value that could be stored.
"""

from __future__ import annotations

import asyncio
import enum
import json
import logging
import re
import time
import weakref
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, TypeVar

import aiohttp
from django.conf import settings
from django.views.decorators.debug import sensitive_variables
from twitchAPI.twitch import Twitch
from twitchAPI.type import AuthScope, TwitchBackendException

logger = logging.getLogger(__name__)

# No request may hang a view for long: Twitch answers in well under a second.
TIMEOUT = aiohttp.ClientTimeout(total=8, sock_connect=3)
# Transient failures are retried after 0.5 s, then 1 s, ...
RETRY_BASE_DELAY = 0.5
# The longest we honour a 429's Ratelimit-Reset before giving up for this run.
MAX_RETRY_WAIT = 30.0
# Token answers to one refresh that may lack a usable access token, each followed
# up with the refresh token it did hold (twitch.refresh).
MAX_PARTIAL_ANSWERS = 3

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
        retryable: bool = True,
    ) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        # A 429 means Twitch did nothing; any other failure leaves it unknown
        # whether Twitch acted on the request before its answer was lost.
        self.rate_limited = rate_limited
        # False when asking again could do harm: Twitch may have rotated the
        # refresh token the request presented (see `refresh`).
        self.retryable = retryable


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

    # "" when a refresh answer held none that is usable (see `refresh`).
    access_token: str = field(repr=False)
    refresh_token: str = field(repr=False)
    # None when Twitch left it out (old client ids) or sent something unusable:
    # the expiry must then come from validating the access token.
    expires_in: int | None
    # None when Twitch sent scopes that cannot be read: validation says which.
    scopes: list[str] | None


@dataclass(frozen=True)
class TokenInfo:
    """What the validate endpoint says about an access token."""

    user_id: str
    login: str
    scopes: list[str]
    # 0: the token does not expire (Twitch's answer for such tokens).
    expires_in: int
    client_id: str


# Twitch logins are 1-25 characters of [a-z0-9_]; user ids are digits. Anything
# else in a validate answer is not Twitch speaking (or not Twitch as documented).
LOGIN_RE = re.compile(r"[a-z0-9_]{1,25}")
USER_ID_RE = re.compile(r"[0-9]{1,20}")
# Tokens are short printable ASCII strings; this refuses null, empty, non-strings,
# whitespace and control characters, and anything absurdly long.
TOKEN_RE = re.compile(r"[\x21-\x7e]{1,512}")
SCOPE_RE = re.compile(r"[\x21-\x7e]{1,100}")
# Longer than any token Twitch issues (user tokens: about 4 h, app tokens: about
# 60 days); a larger expires_in is nonsense and would overflow a datetime.
MAX_EXPIRES_IN = 366 * 24 * 3600


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


def authorize_url(*, state: str, scopes: list[str], force_verify: bool = False) -> str:
    from urllib.parse import urlencode

    query = {
        "client_id": settings.TWITCH_CLIENT_ID,
        "redirect_uri": settings.TWITCH_REDIRECT_URI,
        "response_type": "code",
        "scope": " ".join(scopes),
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
    """A new pair for `refresh_token`.

    An answer with a usable refresh token but no usable access token may mean
    Twitch has rotated ours already: presenting the old one again could end the
    grant. So the new one is presented instead, which both tests it (Twitch
    rejects a refresh token it never issued, and then ours still stands) and
    yields a whole pair. When that cannot be done, the grant comes back with an
    empty access token: its refresh token is the newest Twitch handed out, to be
    kept and refreshed again.
    """
    grant = _token_grant(await _refresh_answer(refresh_token), partial=True)
    for follow_up in range(1, MAX_PARTIAL_ANSWERS):
        if grant.access_token:
            return grant
        try:
            answer = await _refresh_answer(grant.refresh_token)
            grant = _token_grant(answer, partial=True)
        except InvalidCredential:
            if follow_up == 1:
                # Twitch never issued the refresh token it sent: nothing was
                # rotated, and the one we hold may be presented again.
                raise TwitchUnavailable(
                    "Twitch's token endpoint answered without a usable token pair."
                ) from None
            # Twitch took the one before, so ours is spent, and refused this one.
            raise TwitchUnavailable(
                "Twitch's token endpoint answered refresh tokens it then refused.",
                retryable=False,
            ) from None
        except TwitchError:
            return grant  # unconfirmed, but the best refresh token there is
    return grant


async def _refresh_answer(refresh_token: str) -> dict[str, Any]:
    return await _post_form(
        "token",
        {
            "client_id": settings.TWITCH_CLIENT_ID,
            "client_secret": settings.TWITCH_CLIENT_SECRET,
            "grant_type": "refresh_token",
            "refresh_token": refresh_token,
        },
        credential_words=("refresh token",),
    )


@sensitive_variables()
async def validate(access_token: str) -> TokenInfo:
    """Ask Twitch whose token this is, with what scopes, for how long.

    The token travels in a header. Raises `InvalidCredential` when Twitch says the
    token is dead, `TwitchUnavailable` when Twitch cannot be reached or answers
    something that is not a valid description of a user token.
    """
    url = settings.TWITCH_AUTH_BASE_URL + "validate"
    try:
        async with http_session().get(
            url, headers={"Authorization": f"OAuth {access_token}"}, timeout=TIMEOUT
        ) as response:
            status, headers, raw = (
                response.status,
                response.headers,
                await response.read(),
            )
    except (TimeoutError, aiohttp.ClientError) as error:
        raise _unavailable("validate", error) from None
    body = _json_or_none(raw)
    _raise_for_status("validate", status, headers, body, credential_words=())
    if status == 401:
        raise InvalidCredential("Twitch says the access token is invalid.", status=401)
    return _token_info(body)


class RevokeResult(enum.Enum):
    ENDED = "ended"  # Twitch ended the access token
    ALREADY_INVALID = "already invalid"  # Twitch did nothing: it was dead already


@sensitive_variables()
async def revoke(access_token: str) -> RevokeResult:
    """Ask Twitch to end an access token. Its refresh token may survive: Twitch's
    documentation promises nothing about it (twitch-oauth.md, section 8)."""
    try:
        await _post_form(
            "revoke",
            {"client_id": settings.TWITCH_CLIENT_ID, "token": access_token},
            credential_words=("token",),
            expect_json=False,
        )
    except InvalidCredential:
        return RevokeResult.ALREADY_INVALID
    return RevokeResult.ENDED


@sensitive_variables()
async def revoke_quietly(access_token: str) -> RevokeResult | None:
    """Revoke at Twitch; None when Twitch could not be told."""
    try:
        return await revoke(access_token)
    except TwitchError as error:
        logger.warning("could not revoke a token at Twitch: %s", error)
        return None


def expires_at(
    now: datetime, expires_in: int | None, info: TokenInfo | None = None
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
            if attempt == attempts or not error.retryable:
                raise
            delay = RETRY_BASE_DELAY * 2 ** (attempt - 1)
            if error.retry_after is not None:
                if error.retry_after > MAX_RETRY_WAIT:
                    raise
                delay = max(delay, error.retry_after)
            await asyncio.sleep(delay)
    raise AssertionError("unreachable")


# Given the access and refresh token a client holds, return the pair it should use
# now. The site's implementation refreshes through its leased path, so there is
# one refresher per grant (services.twitch_for).
Renew = Callable[[str, str], Awaitable[tuple[str, str]]]


class _SiteClient(Twitch):
    """twitchAPI's `Twitch`, speaking the site's language: transport failures and
    Twitch's 5xx answers leave as `TwitchUnavailable`. Overrides twitchAPI 4.5.0's
    `_api_request`; the version is pinned in requirements.txt."""

    async def _api_request(self, *args: Any, **kwargs: Any) -> aiohttp.ClientResponse:
        try:
            return await super()._api_request(*args, **kwargs)
        except (TimeoutError, aiohttp.ClientError) as error:
            raise _unavailable("Helix", error) from None
        except TwitchBackendException:
            raise TwitchUnavailable("Twitch's Helix API failed (5xx).") from None


class UserClient(_SiteClient):
    """A client acting as one user, whose refreshing is the site's job.

    twitchAPI would refresh on any 401 by itself, with the refresh token it was
    given, on a session without our timeout, and leave its refresh lock held when
    that fails (so the next call waits forever). Here a 401 asks `renew` instead,
    under an asyncio lock that is always released. Overrides twitchAPI 4.5.0's
    `refresh_used_token` and `get_refreshed_user_auth_token`.
    """

    renew: Renew

    async def refresh_used_token(self) -> None:
        if not self._has_user_auth:
            await super().refresh_used_token()
            return
        if not hasattr(self, "_renewing"):
            self._renewing = asyncio.Lock()
        async with self._renewing:
            self._user_auth_token, self._user_auth_refresh_token = await self.renew(
                self._user_auth_token, self._user_auth_refresh_token
            )

    async def get_refreshed_user_auth_token(self) -> str | None:
        # twitchAPI's Chat and EventSub websocket call this; its own version
        # validates on a session with a 300-second timeout and refreshes by itself.
        if self._user_auth_token is None:
            return None
        try:
            await validate(self._user_auth_token)
        except InvalidCredential:
            await self.refresh_used_token()
        return self._user_auth_token


# Given the app access token Twitch just refused, return the one to use now.
RenewApp = Callable[[str], Awaitable[str]]


class AppClient(_SiteClient):
    """A client with the app access token, whose renewal is the site's job (one
    process fetches, all share). Overrides twitchAPI 4.5.0's `_refresh_app_token`,
    which would put the client secret in a URL."""

    renew_app: RenewApp

    async def _refresh_app_token(self) -> None:
        if not hasattr(self, "_renewing"):
            self._renewing = asyncio.Lock()
        async with self._renewing:
            self._app_auth_token = await self.renew_app(self._app_auth_token)


@sensitive_variables()
async def user_client(
    *, access_token: str, refresh_token: str, scopes: list[str], renew: Renew
) -> UserClient:
    """A twitchAPI client acting as one user, with our URLs, timeout and scopes.

    The caller has validated the token; twitchAPI's own validation is skipped (it
    would use a session without our timeout, and refresh behind the site's back).
    """
    client = await _site_client(UserClient)
    client.renew = renew
    # Scopes twitchAPI does not know (openid, newer ones) cannot be named to it.
    known = [AuthScope(scope) for scope in scopes if scope in KNOWN_SCOPES]
    await client.set_user_authentication(
        access_token, known, refresh_token, validate=False
    )
    return client


ClientT = TypeVar("ClientT", bound=_SiteClient)


async def _site_client(cls: type[ClientT]) -> ClientT:
    """A twitchAPI client with our URLs and timeout, and no token yet."""
    return await cls(
        settings.TWITCH_CLIENT_ID,
        settings.TWITCH_CLIENT_SECRET,
        authenticate_app=False,
        base_url=settings.TWITCH_API_BASE_URL,
        auth_base_url=settings.TWITCH_AUTH_BASE_URL,
        session_timeout=TIMEOUT,
    )


@sensitive_variables()
async def app_client(*, access_token: str, renew: RenewApp) -> AppClient:
    """A twitchAPI client authenticated with the app access token."""
    client = await _site_client(AppClient)
    client.renew_app = renew
    await client.set_app_authentication(access_token, [])
    return client


@dataclass(frozen=True)
class AppGrant:
    """An app access token (client-credentials grant): no user, no refresh token."""

    access_token: str = field(repr=False)
    expires_in: int


@sensitive_variables()
async def fetch_app_token() -> AppGrant:
    body = await _post_form(
        "token",
        {
            "client_id": settings.TWITCH_CLIENT_ID,
            "client_secret": settings.TWITCH_CLIENT_SECRET,
            "grant_type": "client_credentials",
        },
        credential_words=(),
    )
    access_token = body.get("access_token")
    expires_in = _expires_in(body.get("expires_in"), allow_zero=False)
    if not _is_token(access_token) or expires_in is None:
        raise TwitchUnavailable(
            "Twitch's token endpoint answered without an app token."
        )
    return AppGrant(access_token=access_token, expires_in=expires_in)


# --- Helix EventSub subscriptions (app access token) -------------------------------


@sensitive_variables()
async def list_eventsub_subscriptions(*, app_token: str) -> list[dict[str, Any]]:
    subscriptions: list[dict[str, Any]] = []
    cursor = ""
    for _ in range(100):  # Twitch pages by 100; far more than this site needs
        body = await _helix(
            "GET",
            "eventsub/subscriptions",
            app_token=app_token,
            params={"after": cursor} if cursor else None,
        )
        subscriptions.extend(_subscriptions(body))
        cursor = str((body.get("pagination") or {}).get("cursor") or "")
        if not cursor:
            break
    return subscriptions


@sensitive_variables()
async def create_eventsub_subscription(
    *,
    app_token: str,
    subscription_type: str,
    version: str,
    condition: dict[str, str],
    callback: str,
    secret: str,
) -> dict[str, Any]:
    """Ask Twitch for a webhook subscription; it then verifies the callback."""
    body = await _helix(
        "POST",
        "eventsub/subscriptions",
        app_token=app_token,
        json_body={
            "type": subscription_type,
            "version": version,
            "condition": condition,
            "transport": {"method": "webhook", "callback": callback, "secret": secret},
        },
    )
    created = _subscriptions(body)
    if not created:
        raise TwitchUnavailable("Twitch's EventSub endpoint answered no subscription.")
    return created[0]


@sensitive_variables()
async def delete_eventsub_subscription(*, app_token: str, subscription_id: str) -> None:
    await _helix(
        "DELETE",
        "eventsub/subscriptions",
        app_token=app_token,
        params={"id": subscription_id},
    )


@sensitive_variables()
async def _helix(
    method: str,
    path: str,
    *,
    app_token: str,
    params: dict[str, str] | None = None,
    json_body: dict[str, Any] | None = None,
) -> dict[str, Any]:
    url = settings.TWITCH_API_BASE_URL + path
    headers = {
        "Authorization": f"Bearer {app_token}",
        "Client-Id": settings.TWITCH_CLIENT_ID,
    }
    try:
        async with http_session().request(
            method, url, headers=headers, params=params, json=json_body, timeout=TIMEOUT
        ) as response:
            status, answer_headers, raw = (
                response.status,
                response.headers,
                await response.read(),
            )
    except (TimeoutError, aiohttp.ClientError) as error:
        raise _unavailable("EventSub", error) from None
    body = _json_or_none(raw)
    if status == 401:
        raise InvalidCredential("Twitch refused the app access token.", status=401)
    _raise_for_status("EventSub", status, answer_headers, body, credential_words=())
    if not isinstance(body, dict):
        raise TwitchUnavailable("Twitch's EventSub endpoint answered nonsense.")
    return body


def _subscriptions(body: dict[str, Any]) -> list[dict[str, Any]]:
    data = body.get("data") or []
    if not isinstance(data, list) or not all(isinstance(d, dict) for d in data):
        raise TwitchUnavailable("Twitch's EventSub endpoint answered nonsense.")
    return data


@sensitive_variables()
async def _post_form(
    endpoint: str,
    form: dict[str, str],
    *,
    credential_words: tuple[str, ...],
    expect_json: bool = True,
) -> dict[str, Any]:
    """POST a form to an id.twitch.tv endpoint and return its JSON body (or {})."""
    url = settings.TWITCH_AUTH_BASE_URL + endpoint
    started = time.monotonic()
    try:
        async with http_session().post(url, data=form, timeout=TIMEOUT) as response:
            status, headers, raw = (
                response.status,
                response.headers,
                await response.read(),
            )
    except (TimeoutError, aiohttp.ClientError) as error:
        raise _unavailable(endpoint, error) from None
    logger.debug(
        "twitch %s answered %s in %.0f ms",
        endpoint,
        status,
        (time.monotonic() - started) * 1000,
    )
    body = _json_or_none(raw)
    if not expect_json and 200 <= status < 300:
        return {}  # success says it all; the body does not matter
    _raise_for_status(endpoint, status, headers, body, credential_words)
    if not isinstance(body, dict):
        raise TwitchUnavailable(
            f"Twitch's {endpoint} endpoint answered {status} with a body that is "
            "not a JSON object."
        )
    return body


def _json_or_none(raw: bytes) -> Any:
    """The JSON value of a body: {} for an empty one, None for one that is not JSON."""
    if not raw.strip():
        return {}
    try:
        return json.loads(raw)
    except ValueError:
        return None


def _raise_for_status(
    endpoint: str,
    status: int,
    headers: Any,
    body: Any,
    credential_words: tuple[str, ...],
) -> None:
    """Turn Twitch's failures into our exceptions; the HTTP status decides, never
    a "status" field in the body (which may say anything)."""
    if status == 429:
        raise TwitchUnavailable(
            f"Twitch's {endpoint} endpoint is rate limiting us.",
            retry_after=_retry_after(headers),
            rate_limited=True,
        )
    if status >= 500 or status < 200 or 300 <= status < 400:
        raise TwitchUnavailable(f"Twitch's {endpoint} endpoint answered {status}.")
    if status >= 400:
        message = _message(body)
        text = f"Twitch's {endpoint} endpoint answered {status}: {message}"
        if status == 401 and endpoint == "validate":
            return  # the caller's to say
        if status in (400, 401) and any(w in message.lower() for w in credential_words):
            raise InvalidCredential(text, status=status)
        raise TwitchRejected(text, status=status)


def _token_grant(body: dict[str, Any], *, partial: bool = False) -> TokenGrant:
    """The grant in a token answer. With `partial`, an answer with a usable refresh
    token but none for access is a grant with an empty access token."""
    access_token = body.get("access_token")
    refresh_token = body.get("refresh_token")
    if not _is_token(refresh_token) or not (partial or _is_token(access_token)):
        raise TwitchUnavailable(
            "Twitch's token endpoint answered without a usable token pair."
        )
    # Twitch leaves `scope` out when there are none; it sends an array in
    # practice, and its docs also show a space-separated string.
    try:
        scopes = _scopes(body.get("scope"), endpoint="token")
    except TwitchUnavailable:
        scopes = None  # the pair is still Twitch's answer: validation says
    if not _is_token(access_token):
        # Its lifetime, if any, is the missing token's: this grant is due now.
        return TokenGrant(
            access_token="", refresh_token=refresh_token, expires_in=None, scopes=scopes
        )
    return TokenGrant(
        access_token=access_token,
        refresh_token=refresh_token,
        expires_in=_expires_in(body.get("expires_in"), allow_zero=False),
        scopes=scopes,
    )


def _token_info(body: Any) -> TokenInfo:
    nonsense = TwitchUnavailable("Twitch's validate endpoint answered nonsense.")
    if not isinstance(body, dict):
        raise nonsense
    login, user_id, client_id = (
        body.get("login"),
        body.get("user_id"),
        body.get("client_id"),
    )
    expires_in = _expires_in(body.get("expires_in"), allow_zero=True)
    if (
        not isinstance(login, str)
        or not LOGIN_RE.fullmatch(login)
        or not isinstance(user_id, str)
        or not USER_ID_RE.fullmatch(user_id)
        or not isinstance(client_id, str)
        or expires_in is None
    ):
        raise nonsense
    if client_id != settings.TWITCH_CLIENT_ID:
        raise TwitchUnavailable("Twitch validated a token of another application.")
    return TokenInfo(
        user_id=user_id,
        login=login,
        # `null` when the token has no scopes.
        scopes=_scopes(body.get("scopes"), endpoint="validate"),
        expires_in=expires_in,
        client_id=client_id,
    )


def _is_token(value: object) -> bool:
    return isinstance(value, str) and TOKEN_RE.fullmatch(value) is not None


def _expires_in(value: object, *, allow_zero: bool) -> int | None:
    """A lifetime in whole seconds, or None when absent or unusable."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if value != value or not (0 if allow_zero else 1) <= value <= MAX_EXPIRES_IN:
        return None  # NaN, negative, or beyond any real token's life
    return int(value)


def _scopes(value: object, *, endpoint: str) -> list[str]:
    if value is None:
        return []
    # Only the token endpoint's docs show a space-separated string.
    items = value.split() if isinstance(value, str) and endpoint == "token" else value
    if not isinstance(items, list) or not all(
        isinstance(scope, str) and SCOPE_RE.fullmatch(scope) for scope in items
    ):
        raise TwitchUnavailable(f"Twitch's {endpoint} endpoint sent unreadable scopes.")
    return list(dict.fromkeys(items))


def _message(body: Any) -> str:
    if not isinstance(body, dict):
        return "no message"
    text = str(body.get("message") or body.get("error") or "no message")
    # Only printable text, briefly: it ends up in logs, admin pages and messages.
    return "".join(c for c in text if c.isprintable())[:120]


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
