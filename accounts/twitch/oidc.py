"""Twitch's ID tokens (OpenID Connect), verified before anything in them is believed.

With the `openid` scope, Twitch's code grant also answers `id_token`: an RS256 JWT
signed by one of the keys it publishes at `<TWITCH_AUTH_BASE_URL>keys`
("Getting tokens: OIDC", dev.twitch.tv). PyJWT checks the signature and the
registered claims; this module adds what is Twitch's: the issuer, digits for the
user id, the nonce we sent, and the display name in `preferred_username`.

Twitch's keys are fetched once per process over the seam's HTTP session (not
PyJWKClient's blocking urllib) and kept. They rotate: a token naming a key id
not yet seen has the keys fetched again, at most once per
`KEYS_REFETCH_INTERVAL`, so a flood of tokens naming unknown keys cannot turn
into a flood of fetches.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import jwt
from django.conf import settings
from django.utils.crypto import constant_time_compare
from django.views.decorators.debug import sensitive_variables

from accounts.twitch.errors import (
    IdTokenProblem,
    InvalidIdToken,
    TwitchError,
    TwitchUnavailable,
)
from accounts.twitch.http import raise_for_status, send
from accounts.twitch.oauth import LOGIN_RE, USER_ID_RE

# Exactly this string: Twitch's discovery document and its tokens say so.
ISSUER = "https://id.twitch.tv/oauth2"
ALGORITHM = "RS256"
# Clock difference tolerated between Twitch and us, on exp and iat.
LEEWAY = 60
# The least time between two fetches of the keys for an unknown key id. Read at
# each call (tests shorten it).
KEYS_REFETCH_INTERVAL = 60.0
# Keys are fetched again after this long even when every kid is known, so a key
# Twitch withdrew stops verifying.
KEYS_MAX_AGE = 24 * 3600.0
# How long a caller waits for another's fetch of the keys (the seam's timeout).
KEYS_WAIT = 10.0
# Twitch's ID tokens live 15 minutes; one meant to live longer than this is not one.
MAX_LIFETIME = 24 * 3600
# Far longer than any JWT Twitch issues; a longer string is not worth parsing.
MAX_TOKEN_LENGTH = 16 * 1024
# Display names are login-length in practice; this bounds what we keep.
MAX_DISPLAY_NAME = 64


@dataclass(frozen=True)
class IdToken:
    """What a verified ID token says."""

    user_id: str  # `sub`: digits
    # The login when `preferred_username` is one in other letter case; "" when
    # absent, or a localized display name that is no login: ask validate then.
    login: str
    # `preferred_username` as sent: Twitch's display name there, or "".
    display_name: str
    issued_at: datetime
    expires_at: datetime


@dataclass
class _Keys:
    """Twitch's published keys as last fetched from one URL, and the fetch under
    way, if any."""

    by_kid: dict[str, Any] = field(default_factory=dict)
    # time.monotonic() of the last successful fetch; None: none yet.
    fetched_at: float | None = None
    # time.monotonic() of the last fetch begun for an unknown key id.
    refetched_at: float | None = None
    # Set when the fetch under way ends; None when none is.
    in_flight: threading.Event | None = None


# Per keys URL, shared by every event loop and thread of the process; the lock is
# never held across an await.
_known: dict[str, _Keys] = {}
_lock = threading.Lock()


def forget_keys() -> None:
    """Forget every fetched key: the next token has them fetched again."""
    with _lock:
        _known.clear()


@sensitive_variables("id_token")
async def verify_id_token(
    id_token: str | None, *, client_id: str, nonce: str | None
) -> IdToken:
    """The claims of Twitch's ID token, once it is proven Twitch's and ours.

    `nonce`: the one our authorize request sent; the token must carry it. Raises
    `InvalidIdToken` (its `reason` says which check failed) for a token that must
    not be believed, `TwitchUnavailable` when Twitch's keys cannot be fetched.
    """
    if not id_token:
        raise _invalid("missing", "Twitch's token answer held no ID token.")
    if not isinstance(id_token, str) or len(id_token) > MAX_TOKEN_LENGTH:
        raise _invalid("malformed", "The ID token is not a JWT.")
    try:
        header = jwt.get_unverified_header(id_token)
    except jwt.PyJWTError:
        raise _invalid("malformed", "The ID token is not a JWT.") from None
    if header.get("alg") != ALGORITHM:
        # Before any key is looked at: "none" and HMAC are never Twitch's.
        raise _invalid("signature", "The ID token is not signed with RS256.")
    kid = header.get("kid")
    if not isinstance(kid, str) or not kid:
        raise _invalid("malformed", "The ID token names no signing key.")
    key = await _public_key(kid)
    if key is None:
        raise _invalid("unknown_key", "The ID token is signed by a key Twitch lacks.")
    claims = _decoded(id_token, key, client_id=client_id)
    return _id_token(claims, client_id=client_id, nonce=nonce)


@sensitive_variables("id_token")
def _decoded(id_token: str, key: Any, *, client_id: str) -> dict[str, Any]:
    """The claims, once PyJWT has checked signature, issuer, audience and times."""
    try:
        return jwt.decode(
            id_token,
            key,
            algorithms=[ALGORITHM],
            audience=client_id,
            issuer=ISSUER,
            leeway=LEEWAY,
            options={
                "require": ["iss", "sub", "aud", "exp", "iat"],
                # One audience, as a string: ours.
                "strict_aud": True,
            },
        )
    # Subclasses before their bases: InvalidSignatureError is a DecodeError.
    except jwt.InvalidSignatureError:
        raise _invalid("signature", "The ID token's signature is wrong.") from None
    except jwt.ExpiredSignatureError:
        raise _invalid("expired", "The ID token has expired.") from None
    except jwt.ImmatureSignatureError:
        raise _invalid("expired", "The ID token is issued in the future.") from None
    except jwt.InvalidIssuerError:
        raise _invalid("issuer", "The ID token is not issued by Twitch.") from None
    except jwt.InvalidAudienceError:
        raise _invalid("audience", "The ID token is for another application.") from None
    except jwt.exceptions.InvalidSubjectError:
        raise _invalid("subject", "The ID token's subject is not a user id.") from None
    except (jwt.PyJWTError, ValueError, OverflowError, TypeError):
        # Any other claim PyJWT refuses (a missing or malformed iat or exp, ...),
        # or cannot even read: a malformed token, never a failure of ours.
        raise _invalid("malformed", "The ID token's claims are malformed.") from None


def _id_token(claims: dict[str, Any], *, client_id: str, nonce: str | None) -> IdToken:
    """Twitch's own rules on claims PyJWT has checked already."""
    azp = claims.get("azp", client_id)
    if not isinstance(azp, str) or azp != client_id:
        raise _invalid("audience", "The ID token was asked for by another application.")
    if nonce is not None:
        sent = claims.get("nonce")
        if not isinstance(sent, str) or not constant_time_compare(sent, nonce):
            raise _invalid("nonce", "The ID token does not carry our nonce.")
    user_id = claims["sub"]
    if not USER_ID_RE.fullmatch(user_id):
        raise _invalid("subject", "The ID token's subject is not a user id.")
    issued_at, expires_at = claims["iat"], claims["exp"]
    if not all(_is_time(value) for value in (issued_at, expires_at)):
        raise _invalid("malformed", "The ID token's times are not whole seconds.")
    if not 0 < expires_at - issued_at <= MAX_LIFETIME:
        # Twitch's live 15 minutes; a token valid for longer is not Twitch's.
        raise _invalid("malformed", "The ID token's lifetime is implausible.")
    display_name = claims.get("preferred_username", "")
    if not isinstance(display_name, str) or not _is_display_name(display_name):
        raise _invalid("malformed", "The ID token's preferred_username is malformed.")
    return IdToken(
        user_id=user_id,
        login=_login(display_name),
        display_name=display_name,
        issued_at=datetime.fromtimestamp(issued_at, UTC),
        expires_at=datetime.fromtimestamp(expires_at, UTC),
    )


def _is_time(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _is_display_name(name: str) -> bool:
    # "" is absent; otherwise visible characters only, no control or line breaks.
    return len(name) <= MAX_DISPLAY_NAME and (not name or name.isprintable())


def _login(display_name: str) -> str:
    """The login a display name spells, if it spells one. Twitch sends the display
    name as `preferred_username`: an ASCII one is the login with capitals; a
    localized one (e.g. Korean) says nothing about the login."""
    # isascii first: str.lower() maps some non-ASCII letters onto ASCII ones.
    lowered = display_name.lower()
    if display_name.isascii() and LOGIN_RE.fullmatch(lowered):
        return lowered
    return ""


def _invalid(reason: IdTokenProblem, message: str) -> InvalidIdToken:
    return InvalidIdToken(message, reason=reason)


# Twitch's keys ----------------------------------------------------------------------


def keys_known() -> bool:
    """Whether Twitch's keys have been fetched in this process."""
    with _lock:
        keys = _known.get(_keys_url())
        return keys is not None and keys.fetched_at is not None


async def warm_keys() -> None:
    """Fetch Twitch's keys if none are known yet, quietly: Connect calls it while
    the person is on Twitch's consent page, so even a new process's first callback
    verifies its ID token without a round trip. A failure is left for the callback
    to meet (and report)."""
    with contextlib.suppress(TwitchError):
        await _public_key(None)


async def _public_key(kid: str | None) -> Any | None:
    """The public key Twitch signs with under `kid` (None: just have the keys),
    None when Twitch does not publish it.

    The keys are fetched when none are known, when they are older than
    KEYS_MAX_AGE, and again for a kid not seen before, at most once per
    KEYS_REFETCH_INTERVAL: a flood of unknown kids is one fetch. Callers who
    arrive while a fetch is under way wait for it rather than fetch too (or fail:
    a callback with Twitch's brand-new key must not lose the race to another).
    """
    url = _keys_url()
    while True:
        with _lock:
            keys = _known.setdefault(url, _Keys())
            now = time.monotonic()
            fresh = keys.fetched_at is not None and (
                now - keys.fetched_at < KEYS_MAX_AGE
            )
            if fresh and (kid is None or kid in keys.by_kid):
                return keys.by_kid.get(kid) if kid else None
            wait_for = keys.in_flight
            if wait_for is None:
                if (
                    fresh
                    and keys.refetched_at is not None
                    and (now - keys.refetched_at < KEYS_REFETCH_INTERVAL)
                ):
                    return None  # an unknown kid, and the keys were just fetched
                if fresh:
                    keys.refetched_at = now  # a refetch for an unknown kid
                keys.in_flight = ours = threading.Event()
        if wait_for is None:
            break
        # Another caller is fetching: wait for it, then look again (without
        # holding a thread of the loop: the event is a thread's).
        await asyncio.to_thread(wait_for.wait, KEYS_WAIT)
        if not wait_for.is_set():
            raise TwitchUnavailable("Twitch's keys are being fetched too slowly.")
        with _lock:
            keys = _known[url]
            if keys.fetched_at is not None and (kid is None or kid in keys.by_kid):
                return keys.by_kid.get(kid) if kid else None
            if keys.fetched_at is not None and kid is not None:
                return None  # fetched just now, and still unknown
        # That fetch failed: try ourselves (each caller at most once more).
    try:
        by_kid = await _fetch_keys(url)
    except BaseException:
        with _lock:
            keys.in_flight = None
        ours.set()
        raise
    with _lock:
        keys.by_kid, keys.fetched_at, keys.in_flight = by_kid, time.monotonic(), None
    ours.set()
    return by_kid.get(kid) if kid else None


def _keys_url() -> str:
    return settings.TWITCH_AUTH_BASE_URL + "keys"


async def _fetch_keys(url: str) -> dict[str, Any]:
    """Twitch's RS256 signing keys by key id; `TwitchUnavailable` when they cannot
    be had (an error answer is Twitch failing, never a refusal of ours)."""
    answer = await send("GET", url, endpoint="keys")
    if answer.status == 429:
        raise_for_status("keys", answer)  # TwitchRateLimited, with Twitch's wait
    if answer.status != 200:
        raise TwitchUnavailable(f"Twitch's keys endpoint answered {answer.status}.")
    body = answer.body
    if not isinstance(body, dict) or not isinstance(body.get("keys"), list):
        raise TwitchUnavailable("Twitch's keys endpoint answered nonsense.")
    by_kid = {}
    for entry in body["keys"]:
        if not _is_signing_key(entry):
            continue
        try:
            by_kid[entry["kid"]] = jwt.PyJWK(entry, algorithm=ALGORITHM).key
        except (jwt.PyJWTError, ValueError):
            continue  # a key we cannot read signs nothing we accept
    if not by_kid:
        raise TwitchUnavailable("Twitch's keys endpoint answered no usable key.")
    return by_kid


def _is_signing_key(entry: object) -> bool:
    """An RSA key for RS256 signatures, with a key id (`use` and `alg` may be
    left out of a JWK; when there, they must say so)."""
    return (
        isinstance(entry, dict)
        and entry.get("kty") == "RSA"
        and entry.get("use", "sig") == "sig"
        and entry.get("alg", ALGORITHM) == ALGORITHM
        and isinstance(entry.get("kid"), str)
        and bool(entry["kid"])
    )
