"""The Sandbox: a real HTTP server in a thread, and the handles tests pull."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterable, Mapping
from types import TracebackType

from aiohttp import web

from .app import build_app
from .faults import Fault, Faults, alteration
from .recording import RecordedRequest, RequestLog
from .state import LiveTokens, OAuthState, SandboxUser

DEFAULT_CLIENT_ID = "sandbox-client-id"
DEFAULT_CLIENT_SECRET = "sandbox-client-secret"
DEFAULT_ACCESS_TOKEN_LIFETIME = 14400  # about four hours, like Twitch
# Long enough for a request in flight to finish, short enough not to stall a
# test run; sleeping requests are cancelled before this applies.
SHUTDOWN_TIMEOUT = 2.0


class Sandbox:
    """A local stand-in for id.twitch.tv's OAuth endpoints and Helix ``/users``.

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
    ) -> None:
        self._state = OAuthState(
            client_id=client_id,
            client_secret=client_secret,
            redirect_uris=list(redirect_uris),
            access_token_lifetime=access_token_lifetime,
        )
        self._faults = Faults()
        self._log = RequestLog()
        self._host = ""
        self._port: int | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._startup_error: BaseException | None = None

    # Configuration -------------------------------------------------------

    @property
    def client_id(self) -> str:
        return self._state.client_id

    @property
    def client_secret(self) -> str:
        return self._state.client_secret

    @property
    def redirect_uris(self) -> list[str]:
        """The registered redirect URIs; a mutable list tests may append to."""
        return self._state.redirect_uris

    @property
    def access_token_lifetime(self) -> int:
        return self._state.access_token_lifetime

    @access_token_lifetime.setter
    def access_token_lifetime(self, seconds: int) -> None:
        self._state.access_token_lifetime = seconds

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
            build_app(self._state, self._faults, self._log),
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

    # State ---------------------------------------------------------------

    def reset(self) -> None:
        """Forget users, codes, tokens, faults, latency and recorded requests.

        The client and its redirect URIs stay.
        """
        self._state.reset()
        self._faults.reset()
        self._log.reset()

    def add_user(self, login: str) -> SandboxUser:
        """The user with this login, created if new."""
        return self._state.add_user(login)

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
        if redirect_uri is None:
            if not self.redirect_uris:
                raise ValueError("no redirect URI is registered")
            redirect_uri = self.redirect_uris[0]
        if redirect_uri not in self.redirect_uris:
            raise ValueError(f"redirect URI {redirect_uri!r} is not registered")
        return self._state.authorize(
            login=login, scopes=scopes, redirect_uri=redirect_uri
        )

    def issue_tokens(
        self, *, login: str, scopes: str | Iterable[str] = ()
    ) -> dict[str, object]:
        """A fresh token pair for the user, as if they had just connected:
        ``{"access_token", "refresh_token", "expires_in", "scope"}``, with
        ``scope`` left out when there are none, as Twitch does."""
        return self._state.issue_tokens(login=login, scopes=scopes)

    def expire_access_tokens(self, login: str | None = None) -> None:
        """Expire the user's (or everyone's) access tokens; refresh tokens
        keep working."""
        self._state.expire_access_tokens(login)

    def disconnect_user(self, login: str) -> None:
        """The user disconnected the app on Twitch: all their access and
        refresh tokens die."""
        self._state.disconnect_user(login)

    def tokens_issued(self) -> list[str]:
        """Every access and refresh token ever issued, dead or alive."""
        return self._state.tokens_issued()

    def refresh_count(self, refresh_token: str | None = None) -> int:
        """Successful refreshes overall, or along the chain that any refresh
        token (current or rotated away) belongs to."""
        return self._state.refresh_count(refresh_token)

    def user_for_access_token(self, token: str) -> SandboxUser | None:
        """Whose access token this is, even if it has expired or died since."""
        return self._state.user_for_access_token(token)

    def is_access_token_valid(self, token: str) -> bool:
        return self._state.is_access_token_valid(token)

    def is_refresh_token_valid(self, token: str) -> bool:
        return self._state.is_refresh_token_valid(token)

    def live_tokens(self, login: str) -> LiveTokens:
        """The user's access tokens still valid and the current refresh token
        of each of their grants still alive, in the order of issue; KeyError
        for an unknown login."""
        return self._state.live_tokens(login)

    # Faults and latency --------------------------------------------------

    def set_latency(self, seconds: float, endpoint: str | None = None) -> None:
        """Delay answers to ``endpoint`` (None: all) by ``seconds``; an
        endpoint's own latency wins over the one for all."""
        self._faults.set_latency(seconds, endpoint)

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
        self._faults.add(
            endpoint, Fault("fail", status=status, body=body, remaining=times)
        )

    def hang(self, endpoint: str, times: int | None = None) -> None:
        """Never answer the next ``times`` requests (None: until cleared)."""
        self._faults.add(endpoint, Fault("hang", remaining=times))

    def rate_limit(self, endpoint: str, times: int, reset_in: float = 1.0) -> None:
        """Answer the next ``times`` requests with 429 and rate-limit headers."""
        self._faults.add(
            endpoint,
            Fault("rate_limit", status=429, remaining=times, reset_in=reset_in),
        )

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
        self._faults.add(endpoint, alteration(set, remove, times))

    def clear_faults(self) -> None:
        """Drop every pending fault; latency stays until reset or set to 0."""
        self._faults.clear()

    # Recording -----------------------------------------------------------

    @property
    def requests(self) -> list[RecordedRequest]:
        return self._log.requests

    def count(self, endpoint: str, *, grant_type: str | None = None) -> int:
        """Requests recorded for ``endpoint``, optionally of one grant type."""
        return self._log.count(endpoint, grant_type=grant_type)
