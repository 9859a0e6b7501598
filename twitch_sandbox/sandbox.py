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
from datetime import datetime
from types import TracebackType
from typing import TypeVar

from aiohttp import web

from . import webhooks
from .app import build_app
from .faults import Fault, Faults
from .ledger import Ledger, LiveTokens, SandboxUser
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


class Sandbox:
    """A local stand-in for id.twitch.tv's OAuth endpoints, Helix ``/users``
    and EventSub webhooks for ``user.authorization.revoke``.

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
    ) -> None:
        """``helix_rate_limit`` and ``auth_rate_limit`` are ``(points,
        per_seconds)``, what ``reset()`` goes back to; see the setters."""
        self.ledger = Ledger(
            client_id=client_id,
            client_secret=client_secret,
            redirect_uris=list(redirect_uris),
            access_token_lifetime=access_token_lifetime,
        )
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
        """Forget users, codes, tokens, faults, latency, recorded requests,
        EventSub subscriptions and deliveries; fill every rate-limit bucket and
        go back to the limits the sandbox was made with.

        The client, its redirect URIs and ``allow_insecure_callbacks`` stay.
        """
        self.ledger.reset()
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
    ) -> str:
        """What approving the consent page does, without the page: a code.

        ``redirect_uri`` defaults to the first registered one. ``state`` is
        accepted for symmetry only: Twitch does not bind the code to it.
        """
        del state
        return self.ledger.authorize(
            login=login, scopes=scopes, redirect_uri=redirect_uri
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
        refresh tokens die, and every enabled ``user.authorization.revoke``
        subscription for this client gets a signed notification.

        Returns once each callback answered (or timed out), so a test can
        assert at once. ``gone``: the user deleted their account, and the
        event's ``user_login`` and ``user_name`` are null.
        """
        self.ledger.disconnect_user(login)
        user = self._user(login)
        messages = []
        for subscription in self.eventsub.revoke_targets(self.client_id):
            message = self.eventsub.notification(
                subscription, user, client_id=self.client_id, gone=gone
            )
            messages.append((subscription, message))
        if messages:
            self._on_loop(self._post_each(messages))

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

    # EventSub --------------------------------------------------------------

    def subscriptions(self) -> list[dict[str, object]]:
        """Every EventSub subscription, oldest first, as Helix lists them."""
        return self.eventsub.list()

    def wait_for_subscription_status(
        self, id: str, status: str, timeout: float = 10.0
    ) -> dict[str, object]:
        """The subscription once its status is ``status``. Waits while its
        verification is under way; ValueError if it ended in another status,
        TimeoutError after ``timeout`` seconds, KeyError for an unknown id."""
        return self.eventsub.wait_for(id, status, float(timeout))

    @property
    def deliveries(self) -> list[Delivery]:
        """Every message posted to a callback, in the order they were answered."""
        return self.eventsub.deliveries

    def notification_message(
        self,
        login: str,
        *,
        subscription_id: str | None = None,
        timestamp: datetime | None = None,
        message_id: str | None = None,
        secret: str | None = None,
        gone: bool = False,
    ) -> WebhookMessage:
        """A signed ``user.authorization.revoke`` notification about ``login``,
        built but not sent (``deliver`` sends it).

        For the only enabled revoke subscription unless ``subscription_id``
        names one. A wrong ``secret`` makes a bad signature, an old
        ``timestamp`` (timezone-aware) a stale message, an earlier
        ``message_id`` a replay.
        """
        user = self._user(login)
        if subscription_id is not None:
            subscription = self.eventsub.get(subscription_id)
        else:
            targets = self.eventsub.revoke_targets(self.client_id)
            if len(targets) != 1:
                raise ValueError(
                    f"{len(targets)} enabled {webhooks.REVOKE_TYPE} subscriptions;"
                    " name one with subscription_id"
                )
            subscription = targets[0]
        return self.eventsub.notification(
            subscription,
            user,
            client_id=self.client_id,
            gone=gone,
            message_id=message_id,
            timestamp=timestamp,
            secret=secret,
        )

    def deliver(self, message: WebhookMessage) -> int:
        """POST the message to its subscription's callback as it is; the HTTP
        status answered, 0 if none."""
        subscription = self.eventsub.get(webhooks.subscription_id_of(message))
        return self._on_loop(webhooks.post(self.eventsub, subscription, message)).status

    def revoke_subscription(
        self, id: str, reason: str = "authorization_revoked"
    ) -> None:
        """Twitch revokes an enabled subscription: its status becomes
        ``reason`` and its callback gets a signed ``revocation``; returns once
        it answered."""
        if reason not in webhooks.REVOCATION_REASONS:
            raise ValueError(
                f"unknown reason {reason!r}; use one of {webhooks.REVOCATION_REASONS}"
            )
        subscription = self.eventsub.get(id)
        status = self.eventsub.json(subscription)["status"]
        if status != webhooks.ENABLED:
            raise ValueError(f"subscription {id} is {status!r}, not enabled")
        self.eventsub.set_status(subscription, reason)
        message = self.eventsub.revocation(subscription)
        self._on_loop(webhooks.post(self.eventsub, subscription, message))

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
            await webhooks.post(self.eventsub, subscription, message)

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
        """Drop every pending fault; latency stays until reset or set to 0."""
        self.faults.clear()

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
