"""The ledger: what the sandbox remembers (the app, its users, codes and tokens,
and the keys that sign ID tokens).

Not called "state", which in OAuth is the parameter a client round-trips. The
OAuth and Helix handlers read and write the ledger; tests reach it through
``Sandbox``, whose methods document what it offers them.

Everything here runs under one lock because tests call in from their own thread
while the server thread answers requests. Every lookup is a dict access so a
benchmark can seed tens of thousands of tokens without slowing anything down.

Times come from ``time.time()`` on purpose: when the sandbox runs in the same
process as the site's tests, moving the clock with time-machine moves Twitch's
clock too, so tokens expire when the test says they do.
"""

from __future__ import annotations

import hmac
import re
import secrets
import threading
import time
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

from .oidc import OpenID

FIRST_USER_ID = 100_000_001
CODE_LIFETIME = 600
# Twitch's app access tokens live for about 60 days.
APP_TOKEN_LIFETIME = 60 * 24 * 60 * 60
# "A refresh token can have at most 50 valid access tokens at once."
MAX_ACCESS_TOKENS_PER_LINEAGE = 50
# Twitch logins: 4 to 25 characters; the sandbox also allows shorter ones so
# tests can use short names.
LOGIN_RE = re.compile(r"[a-z0-9_]{1,25}")
# The token endpoint's grant type for a device code (device.py).
DEVICE_CODE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"


@dataclass(frozen=True)
class SandboxUser:
    id: str
    login: str
    display_name: str
    created_at: str = ""


@dataclass(frozen=True)
class TokenInfo:
    """A live access token as /validate and Helix see it."""

    client_id: str
    user: SandboxUser | None  # None for an app access token
    scopes: tuple[str, ...]
    expires_in: int
    # The claims its grant's authorize request asked UserInfo for (OIDC).
    userinfo_claims: tuple[str, ...] = ()


@dataclass(frozen=True)
class LiveTokens:
    """A user's tokens that still work, each list in the order of issue."""

    access: list[str]  # alive and not expired
    refresh: list[str]  # the current refresh token of every live grant


@dataclass(frozen=True)
class Grant:
    """One live grant of a user to the app: what they approved once, kept up by
    its chain of refresh tokens."""

    client_id: str
    scopes: list[str]
    refresh_token: str  # the current one
    access_tokens: list[str]  # those minted along the chain still valid


class Rejected(Exception):
    """Twitch refuses the request: the status code and its exact JSON body."""

    def __init__(self, status: int, message: str, *, error: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.body: dict[str, object] = {"status": status, "message": message}
        if error is not None:
            self.body = {"error": error, **self.body}


@dataclass(slots=True)
class _Code:
    client_id: str
    redirect_uri: str
    user_id: str
    scopes: tuple[str, ...]
    expires_at: float
    # OpenID Connect: echoed in the ID token; the claims asked for per target.
    nonce: str | None = None
    claims: Mapping[str, tuple[str, ...]] = field(default_factory=dict)


@dataclass(slots=True, eq=False)
class _Lineage:
    """One grant: the refresh token of the day and the access tokens minted
    along the chain of refresh tokens that replaced each other."""

    client_id: str
    user_id: str
    scopes: tuple[str, ...]
    refresh_token: str = ""
    # Where the current refresh token stands in the order of issue.
    issued: int = 0
    access_tokens: deque[_Access] = field(default_factory=deque)
    refreshes: int = 0
    alive: bool = True
    userinfo_claims: tuple[str, ...] = ()


@dataclass(slots=True, eq=False)
class _Access:
    token: str
    client_id: str
    user_id: str | None
    scopes: tuple[str, ...]
    expires_at: float
    lineage: _Lineage | None
    alive: bool = True

    def is_valid(self, now: float) -> bool:
        return self.alive and now < self.expires_at


def normalize_scopes(scopes: str | Iterable[str]) -> tuple[str, ...]:
    """Space-delimited string or iterable to a tuple, order kept, no repeats."""
    if isinstance(scopes, str):
        scopes = scopes.split()
    return tuple(dict.fromkeys(s for s in scopes if s))


def normalize_login(login: str) -> str:
    normalized = login.strip().lower()
    if not LOGIN_RE.fullmatch(normalized):
        raise ValueError(f"not a valid Twitch login: {login!r}")
    return normalized


class Ledger:
    """What the sandbox remembers: the app, its users, codes and tokens."""

    def __init__(
        self,
        *,
        client_id: str,
        client_secret: str,
        redirect_uris: list[str],
        access_token_lifetime: int,
        public_client: bool = False,
    ) -> None:
        self.client_id = client_id
        self.client_secret = client_secret
        # Twitch's "Public" client type: an app without a secret (see
        # check_client). Kept through resets, like the rest of the app.
        self.public_client = public_client
        # Kept as the caller's list object: tests may append to it at any time.
        self.redirect_uris = redirect_uris
        self.access_token_lifetime = access_token_lifetime
        # Made once, kept through resets (generating keys takes a while).
        self.openid = OpenID()
        self._lock = threading.Lock()
        self._clear()

    def _clear(self) -> None:
        self._next_user_id = FIRST_USER_ID
        self._users_by_login: dict[str, SandboxUser] = {}
        self._users_by_id: dict[str, SandboxUser] = {}
        self._codes: dict[str, _Code] = {}
        # Every token ever issued stays here (marked dead when it dies) so the
        # sandbox can still say whose it was.
        self._access: dict[str, _Access] = {}
        self._refresh: dict[str, _Lineage] = {}
        self._access_by_user: dict[str | None, list[_Access]] = {}
        self._lineages_by_user: dict[str, list[_Lineage]] = {}
        self._issued: list[str] = []
        self._refreshes = 0

    def reset(self) -> None:
        with self._lock:
            self._clear()
        self.openid.reset()

    # The app -------------------------------------------------------------

    def is_known_client(self, client_id: str | None) -> bool:
        return bool(client_id) and client_id == self.client_id

    def is_registered_redirect(self, redirect_uri: str | None) -> bool:
        return redirect_uri is not None and redirect_uri in self.redirect_uris

    def check_client(
        self,
        client_id: str | None,
        client_secret: str | None,
        *,
        grant_type: str | None = None,
    ) -> None:
        """The token endpoint's client check for ``grant_type``.

        A device code needs no secret, even from a confidential client, whose
        refresh tokens still want one (twitchdev/issues#943). A public client has
        no secret: it refreshes with its client id alone (twitchdev/issues#895),
        cannot use the grants that need one, and any secret it sends is wrong.
        """
        if not client_id:
            raise Rejected(400, "missing client id")
        if not self.is_known_client(client_id):
            raise Rejected(400, "invalid client")
        if not client_secret:
            if grant_type == DEVICE_CODE_GRANT or (
                self.public_client and grant_type == "refresh_token"
            ):
                return
            raise Rejected(400, "missing client secret")
        if self.public_client or not hmac.compare_digest(
            client_secret.encode(), self.client_secret.encode()
        ):
            raise Rejected(403, "invalid client secret")

    # Users ---------------------------------------------------------------

    def add_user(self, login: str) -> SandboxUser:
        login = normalize_login(login)
        with self._lock:
            return self._add_user(login)

    def _add_user(self, login: str) -> SandboxUser:
        user = self._users_by_login.get(login)
        if user is None:
            user = SandboxUser(
                id=str(self._next_user_id),
                login=login,
                display_name=login.title(),
                created_at=_iso(time.time()),
            )
            self._next_user_id += 1
            self._users_by_login[login] = user
            self._users_by_id[user.id] = user
        return user

    def user_by_login(self, login: str) -> SandboxUser | None:
        with self._lock:
            return self._users_by_login.get(login.lower())

    def user_by_id(self, user_id: str) -> SandboxUser | None:
        with self._lock:
            return self._users_by_id.get(user_id)

    # Codes and tokens ----------------------------------------------------

    def authorize(
        self,
        *,
        login: str,
        scopes: str | Iterable[str],
        redirect_uri: str | None = None,
        nonce: str | None = None,
        claims: Mapping[str, tuple[str, ...]] | None = None,
    ) -> str:
        """What approving the consent page does: a code for the user.

        ``redirect_uri`` defaults to the first registered one. ``nonce`` and
        ``claims`` (see ``oidc.requested_claims``) are kept for the ID token.
        """
        if redirect_uri is None:
            if not self.redirect_uris:
                raise ValueError("no redirect URI is registered")
            redirect_uri = self.redirect_uris[0]
        if not self.is_registered_redirect(redirect_uri):
            raise ValueError(f"redirect URI {redirect_uri!r} is not registered")
        login = normalize_login(login)
        scopes = normalize_scopes(scopes)
        code = secrets.token_urlsafe(24)
        with self._lock:
            user = self._add_user(login)
            self._codes[code] = _Code(
                client_id=self.client_id,
                redirect_uri=redirect_uri,
                user_id=user.id,
                scopes=scopes,
                expires_at=time.time() + CODE_LIFETIME,
                nonce=nonce or None,
                claims=dict(claims or {}),
            )
        return code

    def exchange_code(
        self, *, client_id: str, code: str | None, redirect_uri: str | None
    ) -> dict[str, object]:
        invalid = Rejected(400, "Invalid authorization code")
        with self._lock:
            # Popped before any check: a code is spent by the first attempt,
            # even a failed one, so a stolen code cannot be retried.
            grant = self._codes.pop(code, None) if code else None
            if (
                grant is None
                or grant.expires_at <= time.time()
                or grant.client_id != client_id
                or grant.redirect_uri != redirect_uri
            ):
                raise invalid
            lineage = self._new_lineage(grant.user_id, grant.scopes)
            lineage.userinfo_claims = grant.claims.get("userinfo", ())
            body = self._token_response(self._mint_access(lineage))
            user = self._users_by_id[grant.user_id]
        if "openid" in grant.scopes:
            # Signed outside the lock; a refresh answers none ("ID tokens
            # cannot be refreshed").
            id_token = self.openid.id_token(
                user=user,
                client_id=client_id,
                scopes=grant.scopes,
                nonce=grant.nonce,
                claims=grant.claims.get("id_token", ()),
            )
            if id_token is not None:
                body["id_token"] = id_token
        return body

    def refresh(
        self, *, client_id: str, refresh_token: str | None
    ) -> dict[str, object]:
        invalid = Rejected(400, "Invalid refresh token", error="Bad Request")
        with self._lock:
            lineage = self._refresh.get(refresh_token) if refresh_token else None
            if lineage is None or lineage.client_id != client_id:
                raise invalid
            if lineage.refresh_token != refresh_token:
                # A token already rotated away came back: Twitch then ends the
                # user's whole connection to the app (twitchdev/issues#903),
                # so two refreshers racing with one token log the user out. Every
                # grant of theirs ends, whatever its scopes: a user sees one
                # connection per app on Twitch (the stricter reading).
                # Checked before "alive": a stale token of a grant that died
                # since still ends the grants the user has now.
                self._end_authorization(lineage.user_id, lineage.client_id)
                raise invalid
            if not lineage.alive:
                raise invalid
            # Strictest reading of "refresh tokens may change": they always
            # do, and the old one stops working at once.
            self._rotate(lineage)
            lineage.refreshes += 1
            self._refreshes += 1
            return self._token_response(self._mint_access(lineage))

    def issue_app_token(self, *, client_id: str) -> dict[str, object]:
        with self._lock:
            access = _Access(
                token=_access_token(),
                client_id=client_id,
                user_id=None,
                scopes=(),
                expires_at=time.time() + APP_TOKEN_LIFETIME,
                lineage=None,
            )
            self._store_access(access)
            return {
                "access_token": access.token,
                "expires_in": APP_TOKEN_LIFETIME,
                "token_type": "bearer",
            }

    def issue_tokens(
        self, *, login: str, scopes: str | Iterable[str]
    ) -> dict[str, object]:
        login = normalize_login(login)
        scopes = normalize_scopes(scopes)
        with self._lock:
            user = self._add_user(login)
            lineage = self._new_lineage(user.id, scopes)
            body = self._token_response(self._mint_access(lineage))
        del body["token_type"]
        return body

    def new_grant(self, *, login: str, scopes: Iterable[str]) -> dict[str, object]:
        """A new grant to the user for the app, and the token endpoint's answer
        for it: what redeeming an approved device code hands out."""
        login = normalize_login(login)
        scopes = normalize_scopes(scopes)
        with self._lock:
            user = self._add_user(login)
            lineage = self._new_lineage(user.id, scopes)
            return self._token_response(self._mint_access(lineage))

    def _new_lineage(self, user_id: str, scopes: tuple[str, ...]) -> _Lineage:
        # A new lineage for every authorization, even one with the same scopes as
        # a grant the user has already: Twitch's docs list how tokens become
        # invalid (they expire, are revoked or refreshed away, the user
        # disconnects the app or changes their password) and a later
        # authorization is not among them. Also the stricter reading for a site:
        # grants it replaces stay alive until it revokes them, and
        # live_tokens/grants show any it leaves behind. So one login can hold
        # grants with different scopes (a main account and a bot) at once, each
        # refreshed and revoked on its own; what ends them together is the user
        # disconnecting the app, or one of their stale refresh tokens (refresh).
        lineage = _Lineage(client_id=self.client_id, user_id=user_id, scopes=scopes)
        self._rotate(lineage)
        self._lineages_by_user.setdefault(user_id, []).append(lineage)
        return lineage

    def _rotate(self, lineage: _Lineage) -> None:
        """Give the lineage a new current refresh token."""
        lineage.refresh_token = _refresh_token()
        lineage.issued = len(self._issued)
        self._refresh[lineage.refresh_token] = lineage
        self._issued.append(lineage.refresh_token)

    def _mint_access(self, lineage: _Lineage) -> _Access:
        now = time.time()
        access = _Access(
            token=_access_token(),
            client_id=lineage.client_id,
            user_id=lineage.user_id,
            scopes=lineage.scopes,
            expires_at=now + self.access_token_lifetime,
            lineage=lineage,
        )
        self._store_access(access)
        minted = lineage.access_tokens
        minted.append(access)
        if len(minted) > MAX_ACCESS_TOKENS_PER_LINEAGE:
            # Only valid tokens count towards the 50; the oldest goes first.
            valid = deque(a for a in minted if a.is_valid(now))
            while len(valid) > MAX_ACCESS_TOKENS_PER_LINEAGE:
                valid.popleft().alive = False
            lineage.access_tokens = valid
        return access

    def _store_access(self, access: _Access) -> None:
        self._access[access.token] = access
        self._access_by_user.setdefault(access.user_id, []).append(access)
        self._issued.append(access.token)

    def _token_response(self, access: _Access) -> dict[str, object]:
        assert access.lineage is not None
        body: dict[str, object] = {
            "access_token": access.token,
            "expires_in": self.access_token_lifetime,
            "refresh_token": access.lineage.refresh_token,
        }
        # Twitch leaves "scope" out, rather than sending [], for no scopes.
        if access.scopes:
            body["scope"] = list(access.scopes)
        body["token_type"] = "bearer"
        return body

    def _live_lineage(self, refresh_token: str | None) -> _Lineage | None:
        lineage = self._refresh.get(refresh_token) if refresh_token else None
        if lineage is None or not lineage.alive:
            return None
        if lineage.refresh_token != refresh_token:
            return None  # an older token of the chain: already rotated away
        return lineage

    # Using tokens --------------------------------------------------------

    def token_info(self, token: str | None) -> TokenInfo | None:
        """The live access token, or None if unknown, expired or revoked."""
        with self._lock:
            access = self._access.get(token) if token else None
            now = time.time()
            if access is None or not access.is_valid(now):
                return None
            user = self._users_by_id.get(access.user_id) if access.user_id else None
            return TokenInfo(
                client_id=access.client_id,
                user=user,
                scopes=access.scopes,
                expires_in=max(0, int(access.expires_at - now)),
                userinfo_claims=access.lineage.userinfo_claims
                if access.lineage
                else (),
            )

    def revoke(self, *, client_id: str | None, token: str | None) -> None:
        if not client_id:
            raise Rejected(400, "missing client id")
        if not self.is_known_client(client_id):
            raise Rejected(404, "client does not exist")
        with self._lock:
            # Only access tokens can be revoked here; a refresh token is as
            # unknown to this endpoint as garbage.
            access = self._access.get(token) if token else None
            # An expired token is as invalid here as a revoked one: Twitch's 400
            # "Invalid token" means it did nothing.
            if (
                access is None
                or not access.is_valid(time.time())
                or access.client_id != client_id
            ):
                raise Rejected(400, "Invalid token")
            # The docs are silent about the refresh token; it stays valid so
            # that the site wiping its own copy is what protects the user.
            access.alive = False

    def expire_access_tokens(self, login: str | None = None) -> None:
        with self._lock:
            if login is None:
                tokens: Iterable[_Access] = self._access.values()
            else:
                tokens = self._access_by_user.get(self._user_id(login), [])
            past = time.time() - 1
            for access in tokens:
                access.expires_at = min(access.expires_at, past)

    def disconnect_user(self, login: str) -> None:
        with self._lock:
            self._end_authorization(self._user_id(login), self.client_id)

    def _end_authorization(self, user_id: str, client_id: str) -> None:
        for access in self._access_by_user.get(user_id, []):
            if access.client_id == client_id:
                access.alive = False
        for lineage in self._lineages_by_user.get(user_id, []):
            if lineage.client_id == client_id:
                lineage.alive = False

    def _user_id(self, login: str) -> str:
        user = self._users_by_login.get(login.lower())
        if user is None:
            raise KeyError(f"no sandbox user with login {login!r}")
        return user.id

    # Questions tests ask (documented on Sandbox) -------------------------

    def tokens_issued(self) -> list[str]:
        with self._lock:
            return list(self._issued)

    def refresh_count(self, refresh_token: str | None = None) -> int:
        with self._lock:
            if refresh_token is None:
                return self._refreshes
            lineage = self._refresh.get(refresh_token)
            return 0 if lineage is None else lineage.refreshes

    def user_for_access_token(self, token: str) -> SandboxUser | None:
        with self._lock:
            access = self._access.get(token)
            if access is None or access.user_id is None:
                return None
            return self._users_by_id.get(access.user_id)

    def client_of(self, token: str | None) -> str | None:
        """Which client an access token was issued to, even if it has died since."""
        with self._lock:
            access = self._access.get(token) if token else None
            return None if access is None else access.client_id

    def is_access_token_valid(self, token: str) -> bool:
        with self._lock:
            access = self._access.get(token)
            return access is not None and access.is_valid(time.time())

    def is_refresh_token_valid(self, token: str) -> bool:
        with self._lock:
            return self._live_lineage(token) is not None

    def live_tokens(self, login: str) -> LiveTokens:
        with self._lock:
            user_id = self._user_id(login)
            now = time.time()
            access = self._access_by_user.get(user_id, [])
            lineages = self._lineages_by_user.get(user_id, [])
            # A grant's current refresh token may be newer than a later grant's.
            alive = sorted((g for g in lineages if g.alive), key=lambda g: g.issued)
            return LiveTokens(
                access=[a.token for a in access if a.is_valid(now)],
                refresh=[g.refresh_token for g in alive],
            )

    def grants(self, login: str) -> list[Grant]:
        with self._lock:
            user_id = self._user_id(login)
            now = time.time()
            return [
                Grant(
                    client_id=g.client_id,
                    scopes=list(g.scopes),
                    refresh_token=g.refresh_token,
                    access_tokens=[a.token for a in g.access_tokens if a.is_valid(now)],
                )
                for g in self._lineages_by_user.get(user_id, [])
                if g.alive
            ]


def _access_token() -> str:
    # Twitch's access tokens are 30 lowercase alphanumerics.
    return secrets.token_hex(15)


def _refresh_token() -> str:
    # ...and its refresh tokens 50.
    return secrets.token_hex(25)


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
