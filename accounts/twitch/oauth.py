"""Twitch's OAuth endpoints (id.twitch.tv), called with form bodies and the token in
a header, and their answers parsed strictly.

twitchAPI's helpers for these put the client secret, the code or the token in the
URL query string (where proxies and access logs keep them), drop `expires_in` and
`scope` from the token response, turn scopes they do not know into None, and open
sessions with aiohttp's 300-second default timeout; Twitch accepts form bodies
(https://dev.twitch.tv/docs/authentication/).

A field of the wrong type or shape makes the answer `TwitchUnavailable` ("Twitch
misbehaved; keep what you hold"), never a half-read value that could be stored.
"""

from __future__ import annotations

import enum
import json
import logging
import re
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlencode

from django.conf import settings
from django.views.decorators.debug import sensitive_variables
from twitchAPI.type import AuthScope

from accounts.twitch.errors import (
    InvalidCredential,
    TwitchError,
    TwitchUnavailable,
)
from accounts.twitch.http import post_form, raise_for_status, send

logger = logging.getLogger(__name__)

# Token answers to one refresh that may lack a usable access token, each followed
# up with the refresh token it did hold (see `refresh`).
MAX_PARTIAL_ANSWERS = 3

# The scopes twitchAPI can name (its `AuthScope`), which are the ones handed to it;
# what Twitch has is `scopes.SCOPES` (twitchAPI lacks some and has removed ones).
KNOWN_SCOPES = frozenset(scope.value for scope in AuthScope)

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


@dataclass(frozen=True)
class TokenGrant:
    """What the token endpoint hands out for a code or a refresh token."""

    # "" when a refresh answer held none that is usable (see `refresh`): the
    # other token is then kept, and that one's absence dealt with.
    access_token: str = field(repr=False)
    refresh_token: str = field(repr=False)
    # None when Twitch left it out (old client ids) or sent something unusable:
    # the expiry must then come from validating the access token.
    expires_in: int | None
    # None when Twitch sent scopes that cannot be read: validation says which.
    scopes: list[str] | None
    # OpenID Connect: the code grant's ID token when `openid` was granted (a JWT,
    # believed only once `oidc.verify_id_token` says so); None otherwise.
    id_token: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class TokenInfo:
    """What the validate endpoint says about an access token."""

    user_id: str
    login: str
    scopes: list[str]
    # 0: the token does not expire (Twitch's answer for such tokens).
    expires_in: int
    client_id: str


@dataclass(frozen=True)
class AppGrant:
    """An app access token (client-credentials grant): no user, no refresh token."""

    access_token: str = field(repr=False)
    expires_in: int


class RevokeResult(enum.Enum):
    ENDED = "ended"  # Twitch ended the access token
    ALREADY_INVALID = "already invalid"  # Twitch did nothing: it was dead already


# What the Connect flow asks the ID token to carry besides the user id: the name,
# so the callback need not ask Twitch who the user is.
ID_TOKEN_CLAIMS = json.dumps(
    {"id_token": {"preferred_username": None}}, separators=(",", ":")
)


def authorize_url(
    *,
    state: str,
    scopes: list[str],
    force_verify: bool = False,
    nonce: str | None = None,
    claims: str | None = None,
) -> str:
    """Twitch's authorize URL. With OpenID Connect (`openid` in `scopes`), `nonce`
    is echoed in the ID token and `claims` (JSON) names what it should carry."""
    query = {
        "client_id": settings.TWITCH_CLIENT_ID,
        "redirect_uri": settings.TWITCH_REDIRECT_URI,
        "response_type": "code",
        "scope": " ".join(scopes),
        "state": state,
    }
    if force_verify:
        query["force_verify"] = "true"
    if nonce is not None:
        query["nonce"] = nonce
    if claims is not None:
        query["claims"] = claims
    return f"{settings.TWITCH_AUTH_BASE_URL}authorize?{urlencode(query)}"


@sensitive_variables()
async def exchange_code(code: str) -> TokenGrant:
    body = await post_form(
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

    An answer with a usable access token but no usable refresh token (null, empty,
    missing) is tested by validating the access token: one Twitch issued means it
    acted on the request, so ours is spent, and the grant comes back with an empty
    refresh token (the access token is used while it lasts; then the user must
    reconnect). One Twitch never issued means nothing was rotated.
    """
    grant = _token_grant(await _refresh_answer(refresh_token), partial=True)
    if grant.access_token and not grant.refresh_token:
        if (confirmed := await _access_only_confirmed(grant)) is None:
            raise TwitchUnavailable(
                "Twitch's token endpoint answered without a usable token pair."
            )
        return confirmed
    for follow_up in range(1, MAX_PARTIAL_ANSWERS):
        if grant.access_token:
            return grant
        # `grant` holds only the newest refresh token Twitch sent: present it.
        try:
            answer = _token_grant(
                await _refresh_answer(grant.refresh_token), partial=True
            )
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
        if answer.access_token and not answer.refresh_token:
            # An access token Twitch never issued rotated nothing: the refresh
            # token we just presented still stands, and is kept.
            return await _access_only_confirmed(answer) or grant
        grant = answer
    return grant


@sensitive_variables()
async def _access_only_confirmed(grant: TokenGrant) -> TokenGrant | None:
    """An answer with an access token and no refresh token, checked: the grant if
    Twitch issued that access token (or cannot say), None if it never did."""
    try:
        info = await validate(grant.access_token)
    except InvalidCredential:
        return None
    except TwitchError:
        # Unknown whether Twitch acted: the refresh token we presented may be
        # spent, so it is not presented again; the access token is kept,
        # unconfirmed.
        return grant
    if grant.expires_in is None and info.expires_in:
        return replace(grant, expires_in=info.expires_in)
    return grant


@sensitive_variables()
async def _refresh_answer(refresh_token: str) -> dict[str, Any]:
    return await post_form(
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
    answer = await send(
        "GET",
        settings.TWITCH_AUTH_BASE_URL + "validate",
        endpoint="validate",
        headers={"Authorization": f"OAuth {access_token}"},
    )
    raise_for_status("validate", answer)
    if answer.status == 401:
        raise InvalidCredential("Twitch says the access token is invalid.", status=401)
    return _token_info(answer.body)


@sensitive_variables()
async def revoke(access_token: str) -> RevokeResult:
    """Ask Twitch to end an access token. Its refresh token may survive: Twitch's
    documentation promises nothing about it
    (https://dev.twitch.tv/docs/authentication/revoke-tokens/)."""
    try:
        await post_form(
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


@sensitive_variables()
async def fetch_app_token() -> AppGrant:
    body = await post_form(
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


def _token_grant(body: dict[str, Any], *, partial: bool = False) -> TokenGrant:
    """The grant in a token answer. With `partial`, an answer with one usable token
    of the two is a grant with the other empty."""
    access_token = body.get("access_token")
    refresh_token = body.get("refresh_token")
    usable = (_is_token(access_token), _is_token(refresh_token))
    if not (all(usable) or (partial and any(usable))):
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
    id_token = body.get("id_token")
    return TokenGrant(
        access_token=access_token,
        # "" when Twitch sent none that is usable (see `refresh`).
        refresh_token=refresh_token if _is_token(refresh_token) else "",
        expires_in=_expires_in(body.get("expires_in"), allow_zero=False),
        scopes=scopes,
        # Its form is the verifier's to judge; only a string is passed on.
        id_token=id_token if isinstance(id_token, str) else None,
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
