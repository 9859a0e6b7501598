"""The Sandbox: a real HTTP server in a thread, and the one API to drive it.

Its parts are public attributes: ``ledger`` (users, codes and tokens),
``faults`` (queued faults and latency), ``limits`` (Twitch's rate limits),
``log`` (recorded requests) and ``eventsub`` (EventSub subscriptions and
deliveries); the OAuth and Helix handlers use them directly. The methods here
are the documented surface for tests, most of them one line onto those parts;
the fault methods describe each fault once as a ``Fault``. The ``/_sandbox/``
control endpoints (control.py) call these very methods, so Python and HTTP share
one API.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Iterable, Mapping
from types import TracebackType
from typing import TypeVar

from aiohttp import web

from . import device, eventsub_delivery, oidc, webhooks
from .app import build_app
from .device import DeviceCodes
from .eventsub_handles import EventSubHandles
from .faults import Fault, Faults
from .ledger import Grant, Ledger, LiveTokens, SandboxUser
from .limits import (
    DEFAULT_AUTH_BURST,
    DEFAULT_AUTH_PER_SECONDS,
    DEFAULT_HELIX_PER_SECONDS,
    DEFAULT_HELIX_POINTS,
    Limit,
    RateLimits,
)
from .recording import RecordedRequest, RequestLog
from .webhooks import Delivery, Subscriptions, WebhookMessage

DEFAULT_CLIENT_ID = "sandbox-client-id"
DEFAULT_CLIENT_SECRET = "sandbox-client-secret"
DEFAULT_ACCESS_TOKEN_LIFETIME = 14400  # about four hours, like Twitch
# Long enough for a request in flight to finish, short enough not to stall a
# test run; sleeping requests are cancelled before this applies.
SHUTDOWN_TIMEOUT = 2.0
# Seeding more than this in one call is a mistake, not a benchmark.
MAX_SEEDED_TOKENS = 100_000

T = TypeVar("T")


class Sandbox(EventSubHandles):
    """A local stand-in for id.twitch.tv's OAuth endpoints, Helix ``/users``
    and EventSub webhooks for ``user.authorization.revoke``.

    It speaks OpenID Connect as Twitch does (oidc.py): with ``openid`` the code
    grant also answers an RS256 ``id_token`` (``nonce`` echoed, claims such as
    ``preferred_username`` only when the ``claims`` parameter asks), signed by
    keys published at ``/oauth2/keys`` that rotate; discovery at
    ``/oauth2/.well-known/openid-configuration``; ``/oauth2/userinfo``.

    The Device Code Grant too (device.py): ``POST /oauth2/device``, an
    activation page at its ``verification_uri`` (or ``approve_device`` and
    ``deny_device``), and polling ``/oauth2/token`` with ``authorization_pending``,
    ``slow_down``, ``expired_token`` and ``access_denied``; ``public_client``
    makes the app one without a secret, which refreshes with its client id
    alone. A login may hold several grants at once, one per authorization
    (``grants``), each refreshed and revoked on its own.

    ``start()`` serves real HTTP from a daemon thread with its own event loop;
    every other method may be called from any thread while it serves.
    """

    def __init__(
        self,
        *,
        client_id: str = DEFAULT_CLIENT_ID,
        client_secret: str = DEFAULT_CLIENT_SECRET,
        redirect_uris: Iterable[str] = (),
        access_token_lifetime: int = DEFAULT_ACCESS_TOKEN_LIFETIME,
        allow_insecure_callbacks: bool = False,
        helix_rate_limit: tuple[int, float] = (
            DEFAULT_HELIX_POINTS,
            DEFAULT_HELIX_PER_SECONDS,
        ),
        auth_rate_limit: tuple[int, float] | None = (
            DEFAULT_AUTH_BURST,
            DEFAULT_AUTH_PER_SECONDS,
        ),
        public_client: bool = False,
    ) -> None:
        """``helix_rate_limit`` and ``auth_rate_limit`` are ``(points,
        per_seconds)``, what ``reset()`` goes back to; see the setters."""
        self.ledger = Ledger(
            client_id=client_id,
            client_secret=client_secret,
            redirect_uris=list(redirect_uris),
            access_token_lifetime=access_token_lifetime,
            public_client=public_client,
        )
        self.devices = DeviceCodes(self.ledger)
        self.faults = Faults()
        self.limits = RateLimits(
            helix=Limit.checked(*helix_rate_limit),
            auth=None if auth_rate_limit is None else Limit.checked(*auth_rate_limit),
        )
        self.log = RequestLog()
        self.eventsub = Subscriptions(allow_insecure_callbacks=allow_insecure_callbacks)
        self._host = ""
        self._port: int | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._startup_error: BaseException | None = None

    # Configuration -------------------------------------------------------

    @property
    def client_id(self) -> str:
        return self.ledger.client_id

    @property
    def client_secret(self) -> str:
        return self.ledger.client_secret

    @property
    def redirect_uris(self) -> list[str]:
        """The registered redirect URIs; a mutable list tests may append to."""
        return self.ledger.redirect_uris

    @property
    def access_token_lifetime(self) -> int:
        return self.ledger.access_token_lifetime

    @access_token_lifetime.setter
    def access_token_lifetime(self, seconds: int) -> None:
        self.ledger.access_token_lifetime = seconds

    @property
    def public_client(self) -> bool:
        """Whether the app is of Twitch's "Public" client type: it has no secret,
        refreshes without one, and cannot exchange codes or get app tokens.
        Twitch's default, and the sandbox's, is "Confidential"."""
        return self.ledger.public_client

    @public_client.setter
    def public_client(self, public: bool) -> None:
        self.ledger.public_client = public

    @property
    def allow_insecure_callbacks(self) -> bool:
        """Whether EventSub callbacks may be http:// or on any port; Twitch
        takes only https on port 443, and so does the sandbox by default."""
        return self.eventsub.allow_insecure_callbacks

    @allow_insecure_callbacks.setter
    def allow_insecure_callbacks(self, allow: bool) -> None:
        self.eventsub.allow_insecure_callbacks = allow

    # Serving -------------------------------------------------------------

    def start(self, host: str = "127.0.0.1", port: int = 0) -> Sandbox:
        """Serve on ``host:port`` (0: a free port); returns once listening."""
        if self._thread is not None:
            raise RuntimeError("the sandbox is already running")
        ready = threading.Event()
        self._startup_error = None
        self._thread = threading.Thread(
            target=self._run, args=(host, port, ready), name="twitch-sandbox"
        )
        self._thread.daemon = True
        self._thread.start()
        ready.wait()
        if self._startup_error is not None:
            self._thread.join()
            self._thread = None
            raise self._startup_error
        return self

    def stop(self) -> None:
        """Stop serving; hung and delayed requests are cancelled, not awaited."""
        thread, loop, stopping = self._thread, self._loop, self._stopping
        if thread is None or loop is None or stopping is None:
            return
        if thread.is_alive():
            loop.call_soon_threadsafe(stopping.set)
        thread.join()
        self._thread = self._loop = self._stopping = None
        self._port = None

    def __enter__(self) -> Sandbox:
        return self if self._thread is not None else self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("the sandbox is not running; call start() first")
        return self._port

    @property
    def base_url(self) -> str:
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{self.port}/"

    @property
    def auth_base_url(self) -> str:
        """What to give twitchAPI as ``auth_base_url`` (TWITCH_AUTH_BASE_URL)."""
        return self.base_url + "oauth2/"

    @property
    def api_base_url(self) -> str:
        """What to give twitchAPI as ``base_url`` (TWITCH_API_BASE_URL)."""
        return self.base_url + "helix/"

    def _run(self, host: str, port: int, ready: threading.Event) -> None:
        try:
            asyncio.run(self._serve(host, port, ready))
        except BaseException as exc:  # reported to start(), which re-raises
            if ready.is_set():
                raise
            self._startup_error = exc
            ready.set()

    async def _serve(self, host: str, port: int, ready: threading.Event) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        runner = web.AppRunner(
            build_app(self),
            # No access log: the sandbox must keep up with a benchmark, and
            # the recording already says what happened.
            access_log=None,
            # A client that gives up (a timeout test) ends its request here too.
            handler_cancellation=True,
            shutdown_timeout=SHUTDOWN_TIMEOUT,
        )
        await runner.setup()
        try:
            site = web.TCPSite(runner, host, port)
            await site.start()
            self._host = host
            self._port = runner.addresses[0][1]
            ready.set()
            await self._stopping.wait()
        finally:
            await runner.cleanup()

    # Users, codes and tokens (the ledger) --------------------------------

    def reset(self) -> None:
        """Forget users, codes, tokens, faults (ID token forgeries too),
        latency, recorded requests, EventSub subscriptions and deliveries; fill
        every rate-limit bucket and go back to the limits the sandbox was made
        with, and to its first signing key alone. Device codes are forgotten
        too, and new ones get Twitch's timing again.

        The client, its redirect URIs, ``public_client`` and
        ``allow_insecure_callbacks`` stay.
        """
        self.ledger.reset()
        self.devices.reset()
        self.faults.reset()
        self.limits.reset()
        self.log.reset()
        self.eventsub.reset()

    def add_user(self, login: str) -> SandboxUser:
        """The user with this login, created if new."""
        return self.ledger.add_user(login)

    def authorize(
        self,
        *,
        login: str,
        scopes: str | Iterable[str] = (),
        redirect_uri: str | None = None,
        state: str | None = None,
        nonce: str | None = None,
        claims: str | Mapping[str, object] | None = None,
    ) -> str:
        """What approving the consent page does, without the page: a code.

        ``redirect_uri`` defaults to the first registered one. ``state`` is
        accepted for symmetry only: Twitch does not bind the code to it.
        ``nonce`` and ``claims`` (the authorize parameter, as JSON or its
        object: ``{"id_token": {"preferred_username": None}}``) shape the ID
        token a code for ``openid`` brings.
        """
        del state
        return self.ledger.authorize(
            login=login,
            scopes=scopes,
            redirect_uri=redirect_uri,
            nonce=nonce,
            claims=oidc.requested_claims(claims),
        )

    def issue_tokens(
        self, *, login: str, scopes: str | Iterable[str] = ()
    ) -> dict[str, object]:
        """A fresh token pair for the user, as if they had just connected:
        ``{"access_token", "refresh_token", "expires_in", "scope"}``, with
        ``scope`` left out when there are none, as Twitch does."""
        return self.ledger.issue_tokens(login=login, scopes=scopes)

    def expire_access_tokens(self, login: str | None = None) -> None:
        """Expire the user's (or everyone's) access tokens; refresh tokens
        keep working."""
        self.ledger.expire_access_tokens(login)

    def disconnect_user(self, login: str, *, gone: bool = False) -> None:
        """The user disconnected the app on Twitch: all their access and
        refresh tokens die, every enabled ``user.authorization.revoke``
        subscription for this client gets a signed notification, and each
        enabled subscription that needed their authorization is revoked
        (``authorization_revoked``).

        Returns once each callback answered (or timed out), so a test can
        assert at once. ``gone``: the user deleted their account, the event's
        ``user_login`` and ``user_name`` are null, and every enabled
        subscription whose condition names them ends with ``user_removed``.
        """
        self.ledger.disconnect_user(login)
        user = self._user(login)
        event = webhooks.revoke_event(user, client_id=self.client_id, gone=gone)
        messages = [
            (subscription, self.eventsub.notification(subscription, event))
            for subscription in self.eventsub.revoke_targets(self.client_id)
        ]
        if messages:
            self._on_loop(self._post_each(messages))
        # Subscriptions that needed the user's authorization end with it; all
        # that name a user who is gone end.
        reason = "user_removed" if gone else "authorization_revoked"
        ended = (self.eventsub.naming if gone else self.eventsub.authorized_by)(user.id)
        for subscription in ended:
            self.revoke_subscription(subscription.id, reason)

    def tokens_issued(self) -> list[str]:
        """Every access and refresh token ever issued, dead or alive."""
        return self.ledger.tokens_issued()

    def refresh_count(self, refresh_token: str | None = None) -> int:
        """Successful refreshes overall, or along the chain that any refresh
        token (current or rotated away) belongs to."""
        return self.ledger.refresh_count(refresh_token)

    def user_for_access_token(self, token: str) -> SandboxUser | None:
        """Whose access token this is, even if it has expired or died since."""
        return self.ledger.user_for_access_token(token)

    def is_access_token_valid(self, token: str) -> bool:
        return self.ledger.is_access_token_valid(token)

    def is_refresh_token_valid(self, token: str) -> bool:
        return self.ledger.is_refresh_token_valid(token)

    def live_tokens(self, login: str) -> LiveTokens:
        """The user's access tokens still valid and the current refresh token
        of each of their grants still alive, in the order of issue; KeyError
        for an unknown login."""
        return self.ledger.live_tokens(login)

    def grants(self, login: str) -> list[Grant]:
        """The user's live grants to the app, oldest first: the scopes of each,
        its current refresh token and its access tokens still valid; KeyError
        for an unknown login."""
        return self.ledger.grants(login)

    def approve_device(self, user_code: str, *, login: str) -> None:
        """What approving on the activation page does: the device code with
        this user code is approved by ``login`` (created if new), and its next
        poll (at its interval) gets the token pair. KeyError for a code never
        issued, ValueError for one approved, declined, spent or expired."""
        self.devices.approve(user_code, login=login)

    def deny_device(self, user_code: str) -> None:
        """What declining on the activation page does: polls answer
        ``access_denied`` from now on. KeyError and ValueError as for
        ``approve_device``."""
        self.devices.deny(user_code)

    def set_device_timing(
        self,
        interval: int = device.DEFAULT_INTERVAL,
        expires_in: int = device.DEFAULT_EXPIRES_IN,
    ) -> None:
        """The ``interval`` and ``expires_in`` (whole seconds) of device codes
        issued from now on; Twitch's (5 and 1800) are the default and what
        ``reset()`` goes back to."""
        self.devices.configure(interval=interval, expires_in=expires_in)

    def seed_tokens(
        self,
        count: int = 1,
        scopes: str | Iterable[str] = (),
        login_prefix: str = "bench",
    ) -> dict[str, list[dict[str, object]]]:
        """Mint ``count`` users named ``<login_prefix><n>``, each with a token
        pair: ``{"tokens": [{"user_id", "login", "access_token", ...}]}``.

        The same prefix names the same users again, who then get another pair.
        For a benchmark, which seeds thousands over HTTP in one call.
        """
        count = int(count)
        if not 0 <= count <= MAX_SEEDED_TOKENS:
            raise ValueError(f"count must be between 0 and {MAX_SEEDED_TOKENS}")
        minted = []
        for n in range(1, count + 1):
            login = f"{login_prefix}{n}"
            pair = self.ledger.issue_tokens(login=login, scopes=scopes)
            user = self.ledger.add_user(login)
            minted.append({"user_id": user.id, "login": user.login, **pair})
        return {"tokens": minted}

    def _user(self, login: str) -> SandboxUser:
        user = self.ledger.user_by_login(login)
        if user is None:
            raise KeyError(f"no sandbox user with login {login!r}")
        return user

    async def _post_each(
        self, messages: list[tuple[webhooks.Subscription, WebhookMessage]]
    ) -> None:
        # One after the other, so deliveries are recorded in a stable order.
        for subscription, message in messages:
            await eventsub_delivery.deliver(self.eventsub, subscription, message)

    async def _deliver_all(
        self, messages: list[tuple[webhooks.Subscription, WebhookMessage]]
    ) -> list[Delivery]:
        return list(
            await asyncio.gather(
                *(
                    eventsub_delivery.deliver(self.eventsub, subscription, message)
                    for subscription, message in messages
                )
            )
        )

    def _on_loop(self, coroutine: Coroutine[object, object, T]) -> T:
        """Run ``coroutine`` on the sandbox's loop and wait for its result."""
        loop = self._loop
        if loop is None or threading.current_thread() is self._thread:
            coroutine.close()
            if loop is None:
                raise RuntimeError("the sandbox is not running; call start() first")
            raise RuntimeError("called on the sandbox's own thread: it would hang")
        return asyncio.run_coroutine_threadsafe(coroutine, loop).result()

    # Faults and latency --------------------------------------------------

    def set_latency(self, seconds: float, endpoint: str | None = None) -> None:
        """Delay answers to ``endpoint`` (None: all) by ``seconds``; an
        endpoint's own latency wins over the one for all."""
        self.faults.set_latency(seconds, endpoint)

    def fail(
        self,
        endpoint: str,
        status: int = 500,
        body: object = None,
        times: int | None = None,
    ) -> None:
        """Answer ``status`` to the next ``times`` requests (None: until
        cleared). ``body``: None sends ``{"status": status, "message":
        "sandbox fault"}``, a str raw text/html, anything else (dict, list,
        number, bool) JSON."""
        self.faults.add(Fault(endpoint, "fail", times=times, status=status, body=body))

    def hang(self, endpoint: str, times: int | None = None) -> None:
        """Never answer the next ``times`` requests (None: until cleared)."""
        self.faults.add(Fault(endpoint, "hang", times=times))

    def rate_limit(self, endpoint: str, times: int, reset_in: float = 1.0) -> None:
        """Answer the next ``times`` requests with 429 and rate-limit headers."""
        self.faults.add(Fault(endpoint, "rate_limit", times=times, reset_in=reset_in))

    def alter(
        self,
        endpoint: str,
        *,
        set: Mapping[str, object] | None = None,
        remove: Iterable[str] = (),
        times: int | None = None,
    ) -> None:
        """Let the next ``times`` requests (None: until cleared) be answered
        for real, then drop the keys in ``remove`` from the JSON object
        answered and merge ``set`` into it; the status stays. For Twitch's
        optional fields: ``alter("token", remove=["expires_in"])``."""
        self.faults.add(
            Fault(endpoint, "alter", times=times, changes=set, removals=remove)
        )

    # Rate limits ----------------------------------------------------------

    def set_helix_rate_limit(
        self,
        points: int = DEFAULT_HELIX_POINTS,
        per_seconds: float = DEFAULT_HELIX_PER_SECONDS,
    ) -> None:
        """Helix buckets hold ``points`` and refill from empty in ``per_seconds``
        (Twitch: 800 a minute, the default); every bucket starts full again.
        Each request costs a point; ``Ratelimit-Limit`` says ``points``."""
        self.limits.helix.configure(Limit.checked(points, per_seconds))

    def set_auth_rate_limit(
        self,
        burst: int | None = DEFAULT_AUTH_BURST,
        per_seconds: float = DEFAULT_AUTH_PER_SECONDS,
    ) -> None:
        """id.twitch.tv (token, validate, revoke) answers 429 past ``burst``
        requests per client, refilled from empty in ``per_seconds``; every
        bucket starts full again. ``burst=None`` lifts the limit, for a
        benchmark that measures the site rather than Twitch."""
        limit = None if burst is None else Limit.checked(burst, per_seconds)
        self.limits.auth.configure(limit)

    def clear_faults(self) -> None:
        """Drop every pending fault and ID token forgery; latency stays until
        reset or set to 0."""
        self.faults.clear()
        self.ledger.openid.clear_forgeries()

    # OpenID Connect ---------------------------------------------------------

    @property
    def signing_key_id(self) -> str:
        """The ``kid`` of the key that signs ID tokens now."""
        return self.ledger.openid.signing_key_id

    def rotate_signing_key(self, keep_old: bool = True) -> str:
        """A new key signs ID tokens from now on; returns its ``kid``. With
        ``keep_old`` the keys before it stay in ``/oauth2/keys`` (what a
        provider does while tokens it signed are alive), without they are gone
        at once."""
        return self.ledger.openid.rotate(keep_old=bool(keep_old))

    def forge_id_token(self, kind: str, times: int = 1) -> None:
        """Spoil the next ``times`` ID tokens in one way, ``kind`` of
        ``oidc.FORGERIES``: ``"unknown_key"``, ``"bad_signature"``,
        ``"expired"``, ``"wrong_audience"``, ``"wrong_issuer"``,
        ``"wrong_nonce"``, ``"missing_nonce"``, ``"non_digit_subject"``,
        ``"missing"`` (no ``id_token`` at all), ``"alg_none"``, ``"hs256"``,
        ``"missing_iat"``, ``"far_future_exp"``, ``"wrong_azp"``,
        ``"audience_list"``.
        Only code exchanges for ``openid`` mint ID tokens, so nothing else
        uses them up; ``clear_faults`` and ``reset`` drop them."""
        self.ledger.openid.forge(kind, times)

    # Recording -----------------------------------------------------------

    @property
    def requests(self) -> list[RecordedRequest]:
        return self.log.requests

    def count(self, endpoint: str, *, grant_type: str | None = None) -> int:
        """Requests recorded for ``endpoint``, optionally of one grant type."""
        return self.log.count(endpoint, grant_type=grant_type)

    def wait_for_request(
        self, endpoint: str, *, count: int = 1, timeout: float = 10.0
    ) -> None:
        """Return once ``count`` requests for ``endpoint`` have arrived since the
        last reset, answered or not: a request held by latency or a hang counts
        as soon as it comes in, though it is recorded only once it ends. For a
        test that acts while the site waits on Twitch; TimeoutError after
        ``timeout`` seconds. From async code: ``await asyncio.to_thread(...)``."""
        self.log.wait_for_arrival(endpoint, int(count), float(timeout))

    def stats(self) -> dict[str, object]:
        """Requests per endpoint and refreshes overall, for a benchmark."""
        return {"counts": self.log.counts(), "refreshes": self.ledger.refresh_count()}
