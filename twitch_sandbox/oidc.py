"""OpenID Connect as id.twitch.tv speaks it: ID tokens, their signing keys, the
discovery document and UserInfo.

From Twitch's "Getting tokens: OIDC" guide: with the ``openid`` scope the code
grant also answers ``id_token``, an RS256 JWT with ``iss``
``https://id.twitch.tv/oauth2``, ``sub`` (the user id), ``aud`` and ``azp`` (the
client id), ``exp``, ``iat``, and ``nonce`` when the authorize request had one.
Other claims (``preferred_username``, ``picture``, ``email``, ...) come only when
the authorize request's ``claims`` parameter asks for them, per target
(``{"id_token": {...}, "userinfo": {...}}``). ID tokens "cannot be refreshed":
a refresh answers none. The issuer stays Twitch's even though the sandbox
serves elsewhere, so a site checks the very value it will meet in production.

Readings where the guide is silent, each the one that trusts a client least:

- ``preferred_username`` is the user's display name (Twitch's users report
  names there that are not their login, e.g. dotabod/backend#53), so it may
  differ from the login; here it is ``SandboxUser.display_name``.
- ``email`` and ``email_verified`` need the ``user:read:email`` scope, as the
  email does in Helix; without it they are left out.
- UserInfo takes only ``Authorization: Bearer``, answers 401 without a live
  token and 403 for a token without ``openid``.

Keys are RSA 2048, made once per sandbox (about 50 ms each). Rotating adds a key
with a new ``kid`` that signs from then on; the old one stays published or goes
at once. Kids are random so that a verifier's cache from an earlier sandbox (or
before a reset) can never hold different key material under the same kid.

Forgeries stand in for an ID token Twitch would never send (or a stranger's):
queued like faults, each spoils the next ID token minted, nothing else.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import threading
import time
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.utils import base64url_encode, to_base64url_uint

if TYPE_CHECKING:
    from .ledger import SandboxUser

ISSUER = "https://id.twitch.tv/oauth2"
ALGORITHM = "RS256"
KEY_SIZE = 2048
# Twitch's examples show exp - iat = 900: ID tokens live 15 minutes.
ID_TOKEN_LIFETIME = 900
# The two places the claims parameter can ask claims for.
TARGETS = ("id_token", "userinfo")
# What Twitch's discovery document lists.
CLAIMS_SUPPORTED = (
    "email",
    "email_verified",
    "picture",
    "preferred_username",
    "exp",
    "iss",
    "sub",
    "azp",
    "aud",
    "iat",
    "updated_at",
)
EMAIL_SCOPE = "user:read:email"
# How the next ID tokens can be spoiled (``Sandbox.forge_id_token``).
FORGERIES = (
    "unknown_key",  # signed by a key the JWKS never lists, under a kid it lacks
    "bad_signature",  # the current key's kid, another key's signature
    "expired",  # exp ten minutes ago
    "wrong_audience",  # aud another client
    "wrong_issuer",  # iss Twitch's with a trailing slash: not the same string
    "wrong_nonce",  # another nonce than the authorize request's
    "missing_nonce",  # no nonce although the authorize request had one
    "non_digit_subject",  # sub not a Twitch user id
    "missing",  # no id_token in the token answer at all
    "alg_none",  # unsigned ("alg": "none")
    "hs256",  # HMAC-signed with the public key as the secret (alg confusion)
    "missing_iat",  # no iat (OIDC requires it)
    "far_future_exp",  # exp past any date a datetime holds
    "wrong_azp",  # azp another client, aud ours
    "audience_list",  # aud a list holding ours and another
)
WRONG_AUDIENCE = "another-client-id"
WRONG_ISSUER = ISSUER + "/"
# Past any clock leeway a verifier could allow.
EXPIRED_FOR = 600


def requested_claims(
    claims: str | Mapping[str, Any] | None,
) -> dict[str, tuple[str, ...]]:
    """The claim names asked for per target, from the ``claims`` parameter (JSON,
    or its already-parsed object); ValueError for anything but a JSON object
    whose ``id_token`` and ``userinfo``, when there, are objects."""
    if claims is None:
        return {}
    if isinstance(claims, str):
        try:
            claims = json.loads(claims)
        except ValueError:
            raise ValueError("claims is not JSON") from None
    if not isinstance(claims, Mapping):
        raise ValueError("claims is not a JSON object")
    asked = {}
    for target in TARGETS:
        members = claims.get(target)
        if members is None:
            continue
        if not isinstance(members, Mapping):
            raise ValueError(f"claims.{target} is not a JSON object")
        asked[target] = tuple(str(name) for name in members)
    return asked


@dataclass(frozen=True)
class _SigningKey:
    kid: str
    private: rsa.RSAPrivateKey

    @classmethod
    def generate(cls) -> _SigningKey:
        private = rsa.generate_private_key(public_exponent=65537, key_size=KEY_SIZE)
        return cls(kid=secrets.token_hex(8), private=private)

    def jwk(self) -> dict[str, str]:
        """The public key as Twitch lists its keys: alg, e, kid, kty, n, use."""
        numbers = self.private.public_key().public_numbers()
        return {
            "alg": ALGORITHM,
            "e": to_base64url_uint(numbers.e).decode(),
            "kid": self.kid,
            "kty": "RSA",
            "n": to_base64url_uint(numbers.n).decode(),
            "use": "sig",
        }

    def public_pem(self) -> bytes:
        return self.private.public_key().public_bytes(
            serialization.Encoding.PEM,
            serialization.PublicFormat.SubjectPublicKeyInfo,
        )


class OpenID:
    """The keys that sign ID tokens, and the forgeries queued for the next ones.

    Safe to call from any thread: tests rotate keys while the server mints.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # Kept through resets: a sandbox goes back to it instead of making one.
        self._first = _SigningKey.generate()
        self._published = [self._first]  # the last one signs
        # Signs forgeries; never published. Made when first needed.
        self._stranger: _SigningKey | None = None
        self._forgeries: deque[str] = deque()

    def reset(self) -> None:
        with self._lock:
            self._published = [self._first]
            self._forgeries.clear()

    # Keys ----------------------------------------------------------------

    def jwks(self) -> dict[str, list[dict[str, str]]]:
        with self._lock:
            return {"keys": [key.jwk() for key in self._published]}

    @property
    def signing_key_id(self) -> str:
        with self._lock:
            return self._published[-1].kid

    def rotate(self, *, keep_old: bool = True) -> str:
        new = _SigningKey.generate()  # outside the lock: it takes a while
        with self._lock:
            self._published = [*self._published, new] if keep_old else [new]
        return new.kid

    # Forgeries -----------------------------------------------------------

    def forge(self, kind: str, times: int = 1) -> None:
        if kind not in FORGERIES:
            raise ValueError(f"unknown forgery {kind!r}; use one of {FORGERIES}")
        times = int(times)  # from JSON, any number
        if times < 1:
            raise ValueError("times must be at least 1")
        if kind in ("unknown_key", "bad_signature"):
            self._stranger_key()
        with self._lock:
            self._forgeries.extend([kind] * times)

    def clear_forgeries(self) -> None:
        with self._lock:
            self._forgeries.clear()

    def _stranger_key(self) -> _SigningKey:
        if self._stranger is None:
            self._stranger = _SigningKey.generate()
        return self._stranger

    # Minting -------------------------------------------------------------

    def id_token(
        self,
        *,
        user: SandboxUser,
        client_id: str,
        scopes: Iterable[str],
        nonce: str | None,
        claims: Iterable[str],
    ) -> str | None:
        """The ID token for a code exchange; None when a forgery says there is
        none."""
        now = int(time.time())
        payload: dict[str, object] = {
            "aud": client_id,
            "exp": now + ID_TOKEN_LIFETIME,
            "iat": now,
            "iss": ISSUER,
            "sub": user.id,
            "azp": client_id,
        }
        if nonce is not None:
            payload["nonce"] = nonce
        payload.update(profile_claims(user, scopes=scopes, asked=claims))
        with self._lock:
            key = self._published[-1]
            forgery = self._forgeries.popleft() if self._forgeries else None
        if forgery is None:
            return _signed(payload, key.private, kid=key.kid)
        return self._forged(forgery, payload, key)

    def _forged(
        self, kind: str, payload: dict[str, object], key: _SigningKey
    ) -> str | None:
        if kind == "missing":
            return None
        if kind == "unknown_key":
            # A new kid each time: a flood of them is a flood of unknown kids.
            stranger = self._stranger_key().private
            return _signed(payload, stranger, kid="unknown-" + secrets.token_hex(4))
        if kind == "bad_signature":
            return _signed(payload, self._stranger_key().private, kid=key.kid)
        if kind == "alg_none":
            return jwt.encode(payload, None, algorithm="none", headers={"kid": key.kid})
        if kind == "hs256":
            return _hs256(payload, secret=key.public_pem(), kid=key.kid)
        now = int(time.time())
        if kind == "expired":
            payload["iat"] = now - EXPIRED_FOR - ID_TOKEN_LIFETIME
            payload["exp"] = now - EXPIRED_FOR
        elif kind == "wrong_audience":
            payload["aud"] = WRONG_AUDIENCE
        elif kind == "wrong_issuer":
            payload["iss"] = WRONG_ISSUER
        elif kind == "wrong_nonce":
            payload["nonce"] = secrets.token_urlsafe(16)
        elif kind == "missing_nonce":
            payload.pop("nonce", None)
        elif kind == "non_digit_subject":
            payload["sub"] = f"user-{payload['sub']}"
        elif kind == "missing_iat":
            payload.pop("iat", None)
        elif kind == "far_future_exp":
            payload["exp"] = 10**12
        elif kind == "wrong_azp":
            payload["azp"] = WRONG_AUDIENCE
        elif kind == "audience_list":
            payload["aud"] = [payload["aud"], WRONG_AUDIENCE]
        return _signed(payload, key.private, kid=key.kid)


def profile_claims(
    user: SandboxUser, *, scopes: Iterable[str], asked: Iterable[str]
) -> dict[str, object]:
    """The claims asked for that the user has and the scopes allow."""
    available: dict[str, object] = {
        "preferred_username": user.display_name,
        "picture": f"https://users.sandbox.invalid/{user.id}/profile_image.png",
        "updated_at": user.created_at,
    }
    if EMAIL_SCOPE in scopes:
        # The address Helix answers for the user.
        available["email"] = f"{user.login}@users.sandbox.invalid"
        available["email_verified"] = True
    return {name: available[name] for name in asked if name in available}


def _signed(payload: dict[str, object], key: rsa.RSAPrivateKey, *, kid: str) -> str:
    return jwt.encode(payload, key, algorithm=ALGORITHM, headers={"kid": kid})


def _hs256(payload: dict[str, object], *, secret: bytes, kid: str) -> str:
    # By hand: PyJWT rightly refuses a PEM key as an HMAC secret.
    header = {"alg": "HS256", "kid": kid, "typ": "JWT"}
    signing_input = b".".join(
        base64url_encode(json.dumps(part, separators=(",", ":")).encode())
        for part in (header, payload)
    )
    signature = hmac.new(secret, signing_input, hashlib.sha256).digest()
    return (signing_input + b"." + base64url_encode(signature)).decode()


def discovery(auth_base_url: str) -> dict[str, object]:
    """Twitch's discovery document, its endpoints at ``auth_base_url``."""
    return {
        "authorization_endpoint": auth_base_url + "authorize",
        "claims_parameter_supported": True,
        "claims_supported": list(CLAIMS_SUPPORTED),
        "id_token_signing_alg_values_supported": [ALGORITHM],
        "issuer": ISSUER,
        "jwks_uri": auth_base_url + "keys",
        # Twitch also lists the implicit flow's types; the sandbox serves only
        # the code flow, and says so.
        "response_types_supported": ["code"],
        "scopes_supported": ["openid"],
        "subject_types_supported": ["public"],
        "token_endpoint": auth_base_url + "token",
        "token_endpoint_auth_methods_supported": ["client_secret_post"],
        "userinfo_endpoint": auth_base_url + "userinfo",
    }


def userinfo(
    user: SandboxUser, *, client_id: str, scopes: Iterable[str], asked: Iterable[str]
) -> dict[str, object]:
    """What UserInfo answers for a live token with ``openid``."""
    now = int(time.time())
    answer: dict[str, object] = {
        "aud": client_id,
        "exp": now + ID_TOKEN_LIFETIME,
        "iat": now,
        "iss": ISSUER,
        "sub": user.id,
    }
    answer.update(profile_claims(user, scopes=scopes, asked=asked))
    return answer
