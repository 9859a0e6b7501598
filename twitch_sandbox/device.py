"""The Device Code Grant as id.twitch.tv speaks it: ``POST /oauth2/device``, the
activation page a person opens, and polling the token endpoint with
``grant_type=urn:ietf:params:oauth:grant-type:device_code``.

From Twitch's "Getting OAuth access tokens: device code grant flow" and what
developers have seen it answer:

- ``/device`` takes ``client_id`` and ``scopes`` (space-delimited) and answers
  ``device_code`` (40 letters and digits), ``expires_in`` (1800), ``interval``
  (5), ``user_code`` (8 capital letters) and ``verification_uri``, which carries
  the code (``https://www.twitch.tv/activate?device-code=JLLKTXWJ``,
  twitchdev/issues#1037); there is no ``verification_uri_complete``.
- The token endpoint takes ``client_id``, ``scopes``, ``device_code`` and the
  grant type. Until someone approves it answers 400
  ``{"status": 400, "message": "authorization_pending"}``; a code it does not
  know is ``invalid device code`` (twitchdev/issues#971), a missing one
  ``missing device_code`` (twitchdev/issues#893). Once approved it answers the
  usual token pair, once.
- No client secret is needed, even for a confidential client; that client's
  refresh tokens then still want its secret (twitchdev/issues#943), while a public
  client refreshes with its client id alone (twitchdev/issues#895): see
  ``Ledger.check_client``. A public client's refresh tokens are "for one time
  use only" (twitchdev/issues#1116); the sandbox rotates every refresh token on
  use anyway, and one presented again ends the authorization (#903).

Readings where Twitch's docs are silent, each the one that trusts a client least:

- ``scopes`` is required at both endpoints because the docs say so, though
  Twitch has been seen to take a request without it: a site that leaves it out
  fails here first. At the token endpoint its presence is checked, not its value:
  the grant carries what the person approved.
- The other refusals take RFC 8628's words in Twitch's body shape, all 400:
  ``slow_down`` for a poll sooner than ``interval`` after the previous one (or
  after the code was issued), which also makes the interval 5 s longer for the
  rest of the code's life (RFC 8628, section 3.5), even for a code already
  approved; ``expired_token`` once ``expires_in`` has passed; ``access_denied``
  once the person declined. A code that handed out its pair is spent: ``invalid
  device code`` from then on.
- Unknown clients and scopes get the token endpoint's and the authorize page's
  words: 400 ``invalid client``, 400 ``invalid scope requested`` (removed scopes
  included).

The activation page stands in for www.twitch.tv/activate: it shows the app, the
scopes and the code, asks who is logging in, and approves or declines; tests can
do the same with ``Sandbox.approve_device`` and ``Sandbox.deny_device``. Times
come from ``time.time()``, as in the ledger, so time-machine moves them.
"""

from __future__ import annotations

import secrets
import string
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from html import escape
from urllib.parse import urlencode

from aiohttp import web

from accounts.twitch.scopes import ACCEPTED

from .keys import LEDGER
from .ledger import (
    DEVICE_CODE_GRANT,
    Ledger,
    Rejected,
    normalize_login,
    normalize_scopes,
)
from .pages import _PAGE, DEFAULT_LOGIN, error_page  # _PAGE: their frame
from .responses import json_response

GRANT_TYPE = DEVICE_CODE_GRANT
DEFAULT_EXPIRES_IN = 1800
DEFAULT_INTERVAL = 5
# RFC 8628, section 3.5: each slow_down adds 5 seconds to the interval.
SLOW_DOWN_STEP = 5
ACTIVATE_PATH = "/activate"
# Twitch's user codes: 8 capital letters. Its device codes: 40 letters and digits.
USER_CODE_LENGTH = 8
DEVICE_CODE_LENGTH = 40
_DEVICE_CODE_ALPHABET = string.ascii_letters + string.digits


@dataclass(slots=True, eq=False)
class _DeviceCode:
    device_code: str
    user_code: str
    client_id: str
    scopes: tuple[str, ...]
    expires_in: int
    expires_at: float
    interval: int
    last_poll: float  # the code's issue counts as a poll: wait before the first
    login: str | None = None  # who approved it
    denied: bool = False
    spent: bool = False  # its token pair was handed out

    def is_pending(self, now: float) -> bool:
        return (
            now < self.expires_at
            and self.login is None
            and not self.denied
            and not self.spent
        )


class DeviceCodes:
    """Device codes issued, approved, declined and spent, and the timing new codes
    get; the ledger mints the grants."""

    def __init__(
        self,
        ledger: Ledger,
        *,
        interval: int = DEFAULT_INTERVAL,
        expires_in: int = DEFAULT_EXPIRES_IN,
    ) -> None:
        self.ledger = ledger
        self._default_timing = _checked_timing(interval, expires_in)
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        """Forget every code; new ones get the timing this was made with."""
        with self._lock:
            self.interval, self.expires_in = self._default_timing
            self._by_device_code: dict[str, _DeviceCode] = {}
            self._by_user_code: dict[str, _DeviceCode] = {}

    def configure(self, *, interval: int, expires_in: int) -> None:
        """The ``interval`` and ``expires_in`` of codes issued from now on."""
        timing = _checked_timing(interval, expires_in)
        with self._lock:
            self.interval, self.expires_in = timing

    def issue(self, *, client_id: str, scopes: tuple[str, ...]) -> _DeviceCode:
        now = time.time()
        with self._lock:
            user_code = _user_code()
            while user_code in self._by_user_code:
                user_code = _user_code()
            code = _DeviceCode(
                device_code=_device_code(),
                user_code=user_code,
                client_id=client_id,
                scopes=scopes,
                expires_in=self.expires_in,
                expires_at=now + self.expires_in,
                interval=self.interval,
                last_poll=now,
            )
            self._by_device_code[code.device_code] = code
            self._by_user_code[user_code] = code
            return code

    def pending(self, user_code: str) -> _DeviceCode | None:
        """The code a person typed, if it still waits for an answer."""
        with self._lock:
            code = self._by_user_code.get(_typed(user_code))
            return code if code is not None and code.is_pending(time.time()) else None

    def approve(self, user_code: str, *, login: str) -> None:
        login = normalize_login(login)
        with self._lock:
            self._pending(user_code).login = login
        self.ledger.add_user(login)  # logging in on Twitch: the user exists now

    def deny(self, user_code: str) -> None:
        with self._lock:
            self._pending(user_code).denied = True

    def _pending(self, user_code: str) -> _DeviceCode:
        code = self._by_user_code.get(_typed(user_code))
        if code is None:
            raise KeyError(f"no device code has the user code {user_code!r}")
        if not code.is_pending(time.time()):
            raise ValueError(
                f"the device code {code.user_code} was approved, declined, spent or"
                " has expired"
            )
        return code

    def redeem(self, *, client_id: str, device_code: str) -> dict[str, object]:
        """A poll of the token endpoint: the token answer once approved, else the
        refusal Twitch answers (raised as ``Rejected``)."""
        now = time.time()
        with self._lock:
            code = self._by_device_code.get(device_code)
            if code is None or code.client_id != client_id or code.spent:
                raise Rejected(400, "invalid device code")
            if now >= code.expires_at:
                raise Rejected(400, "expired_token")
            if code.denied:
                raise Rejected(400, "access_denied")
            too_soon = now - code.last_poll < code.interval
            code.last_poll = now
            if too_soon:
                code.interval += SLOW_DOWN_STEP
                raise Rejected(400, "slow_down")
            if code.login is None:
                raise Rejected(400, "authorization_pending")
            code.spent = True
            login, scopes = code.login, code.scopes
        return self.ledger.new_grant(login=login, scopes=scopes)


def _checked_timing(interval: object, expires_in: object) -> tuple[int, int]:
    # From Python or a JSON body: whole seconds, as Twitch sends them.
    for name, value in (("interval", interval), ("expires_in", expires_in)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a whole number of seconds, at least 1")
    assert isinstance(interval, int) and isinstance(expires_in, int)
    return interval, expires_in


def _user_code() -> str:
    return "".join(
        secrets.choice(string.ascii_uppercase) for _ in range(USER_CODE_LENGTH)
    )


def _device_code() -> str:
    return "".join(
        secrets.choice(_DEVICE_CODE_ALPHABET) for _ in range(DEVICE_CODE_LENGTH)
    )


def _typed(user_code: str) -> str:
    """A user code as a person may type it: any case, spaces or a dash inside."""
    return "".join(c for c in str(user_code) if c.isalnum()).upper()


# The id.twitch.tv endpoints --------------------------------------------------------

DEVICES = web.AppKey("twitch_sandbox.devices", DeviceCodes)


async def device(request: web.Request) -> web.Response:
    """``POST /oauth2/device``: a new device code for the client and scopes."""
    ledger, devices = request.app[LEDGER], request.app[DEVICES]
    params = await _params(request)
    client_id = params.get("client_id")
    try:
        if not client_id:
            raise Rejected(400, "missing client id")
        if not ledger.is_known_client(client_id):
            raise Rejected(400, "invalid client")
        if "scopes" not in params:
            raise Rejected(400, "missing scopes")
        scopes = normalize_scopes(params["scopes"])
        if any(scope not in ACCEPTED for scope in scopes):
            raise Rejected(400, "invalid scope requested")
    except Rejected as rejected:
        return json_response(rejected.body, status=rejected.status)
    code = devices.issue(client_id=client_id, scopes=scopes)
    # Where a person enters the code, on the sandbox's own host (Twitch's is
    # www.twitch.tv), with the code in it as Twitch sends it.
    where = f"{request.url.origin()}{ACTIVATE_PATH}"
    body = {
        "device_code": code.device_code,
        "expires_in": code.expires_in,
        "interval": code.interval,
        "user_code": code.user_code,
        "verification_uri": f"{where}?{urlencode({'device-code': code.user_code})}",
    }
    return json_response(body)


def poll(request: web.Request, params: Mapping[str, str]) -> web.Response:
    """The token endpoint's answer to a device code grant (oauth.token sends it
    here, before any client secret is asked for)."""
    ledger, devices = request.app[LEDGER], request.app[DEVICES]
    client_id = params.get("client_id", "")
    try:
        ledger.check_client(
            client_id, params.get("client_secret"), grant_type=GRANT_TYPE
        )
        device_code = params.get("device_code")
        if not device_code:
            raise Rejected(400, "missing device_code")
        if "scopes" not in params:
            raise Rejected(400, "missing scopes")
        body = devices.redeem(client_id=client_id, device_code=device_code)
    except Rejected as rejected:
        return json_response(rejected.body, status=rejected.status)
    return json_response(body)


async def _params(request: web.Request) -> dict[str, str]:
    """Form body (urlencoded or multipart, which twitch-cli sends) over query."""
    form = await request.post()
    return {**request.query, **{name: str(value) for name, value in form.items()}}


# The activation page (www.twitch.tv/activate) ---------------------------------------


async def activate_page(request: web.Request) -> web.Response:
    devices = request.app[DEVICES]
    typed = request.query.get("device-code", "")
    if not typed:
        return _html(_entry_page())
    code = devices.pending(typed)
    if code is None:
        return _html(_entry_page(typed, error=_UNKNOWN_CODE), status=400)
    return _html(_consent_page(code.client_id, code.scopes, code.user_code))


async def activate_submit(request: web.Request) -> web.Response:
    devices = request.app[DEVICES]
    form = {name: str(value) for name, value in (await request.post()).items()}
    typed = form.get("user_code", "")
    code = devices.pending(typed)
    if code is None:
        return _html(_entry_page(typed, error=_UNKNOWN_CODE), status=400)
    action = form.get("action")
    if action == "cancel":
        devices.deny(code.user_code)
        return _html(_done_page("Access denied", "You declined. Nothing was shared."))
    if action != "authorize":
        return _html(error_page("Choose Authorize or Cancel."), status=400)
    login = form.get("login", "")
    try:
        devices.approve(code.user_code, login=login)
    except ValueError:
        page = _consent_page(
            code.client_id,
            code.scopes,
            code.user_code,
            login=login,
            error="A Twitch login is 1 to 25 letters, digits or underscores.",
        )
        return _html(page, status=400)
    done = "Your device is connected. You can go back to it and close this window."
    return _html(_done_page("Device connected", done))


_UNKNOWN_CODE = "That code did not work: it may have expired or been used already."


def _entry_page(typed: str = "", *, error: str | None = None) -> str:
    problem = f'<p class="error" role="alert">{escape(error)}</p>\n' if error else ""
    content = f"""<h1>Activate your device</h1>
<p>Enter the code your device shows.</p>
{problem}<form method="get" action="{ACTIVATE_PATH}">
<p><label for="device-code">Code</label>
<input type="text" id="device-code" name="device-code" value="{escape(typed)}"
 required></p>
<p><button type="submit">Activate</button></p>
</form>"""
    return _PAGE.format(title="Activate", content=content)


def _consent_page(
    client_id: str,
    scopes: Iterable[str],
    user_code: str,
    *,
    login: str = DEFAULT_LOGIN,
    error: str | None = None,
) -> str:
    items = "\n".join(f"<li><code>{escape(s)}</code></li>" for s in scopes)
    if items:
        asks = f"<p>It asks for these permissions:</p>\n<ul>\n{items}\n</ul>"
    else:
        asks = "<p>It asks for no permissions beyond your public profile.</p>"
    problem = f'<p class="error" role="alert">{escape(error)}</p>\n' if error else ""
    content = f"""<h1>Authorize {escape(client_id)}</h1>
<p>A device showing the code <strong class="user-code">{escape(user_code)}</strong>
wants to use <strong>{escape(client_id)}</strong> with your Twitch account.</p>
{asks}
{problem}<form method="post" action="{ACTIVATE_PATH}">
<input type="hidden" name="user_code" value="{escape(user_code)}">
<p><label for="login">Log in as (Twitch login)</label>
<input type="text" id="login" name="login" value="{escape(login)}" required></p>
<p><button type="submit" name="action" value="authorize">Authorize</button>
<button type="submit" name="action" value="cancel">Cancel</button></p>
</form>"""
    return _PAGE.format(title="Authorize", content=content)


def _done_page(title: str, message: str) -> str:
    content = f"<h1>{escape(title)}</h1>\n<p>{escape(message)}</p>"
    return _PAGE.format(title=escape(title), content=content)


def _html(page: str, *, status: int = 200) -> web.Response:
    return web.Response(status=status, text=page, content_type="text/html")
