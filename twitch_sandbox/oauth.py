"""The id.twitch.tv endpoints: authorize, token, validate, revoke, and OpenID
Connect's keys, discovery document and UserInfo (tokens and keys: oidc.py)."""

from __future__ import annotations

import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from accounts.twitch.scopes import ACCEPTED, SCOPES, Status

from . import device, oidc
from .keys import LEDGER
from .ledger import (
    Ledger,
    Rejected,
    SandboxUser,
    TokenInfo,
    normalize_login,
    normalize_scopes,
)
from .pages import DEFAULT_LOGIN, consent_page, error_page
from .responses import json_response, redirect

# Carried from the authorize URL through the consent form.
AUTHORIZE_PARAMS = (
    "client_id",
    "redirect_uri",
    "response_type",
    "scope",
    "state",
    "force_verify",
    "nonce",
    "claims",
)

# Twitch knows who is at the browser by its login cookie; the sandbox sets this one
# when someone approves on its consent page.
LOGIN_COOKIE = "twitch_sandbox_login"


@dataclass
class _Approval:
    user: SandboxUser  # the ledger's user then: a reset ledger has new ones
    scopes: set[str]


# What each user approved for the app, per ledger, as Twitch remembers it.
_approvals: weakref.WeakKeyDictionary[Ledger, dict[str, _Approval]] = (
    weakref.WeakKeyDictionary()
)


async def authorize_page(request: web.Request) -> web.Response:
    ledger = request.app[LEDGER]
    params = request.query
    problem = _check_authorize(ledger, params)
    if problem is not None:
        return problem
    scopes = normalize_scopes(params.get("scope", ""))
    login = _approved_login(ledger, request, scopes)
    if login is not None and params.get("force_verify") != "true":
        # Already approved: Twitch sends the user straight back, without asking.
        code = ledger.authorize(
            login=login,
            scopes=scopes,
            redirect_uri=params["redirect_uri"],
            **_openid_params(params),
        )
        approved = {"code": code, "scope": " ".join(scopes)}
        return redirect(params["redirect_uri"], _with_state(approved, params))
    page = consent_page(
        client_id=params["client_id"],
        scopes=scopes,
        hidden={name: params[name] for name in AUTHORIZE_PARAMS if name in params},
        # Twitch shows who is logged in; the sandbox lets them log in as another.
        login=request.cookies.get(LOGIN_COOKIE) or DEFAULT_LOGIN,
    )
    return _html(page)


async def authorize_submit(request: web.Request) -> web.Response:
    ledger = request.app[LEDGER]
    params = {name: str(value) for name, value in (await request.post()).items()}
    # The form could have been edited or replayed: check it as Twitch would.
    problem = _check_authorize(ledger, params)
    if problem is not None:
        return problem
    redirect_uri = params["redirect_uri"]
    action = params.get("action")
    if action == "cancel":
        denied = {
            "error": "access_denied",
            "error_description": "The user denied you access",
        }
        return redirect(redirect_uri, _with_state(denied, params))
    if action != "authorize":
        return _html(error_page("Choose Authorize or Cancel."), status=400)
    scopes = normalize_scopes(params.get("scope", ""))
    login = params.get("login", "")
    try:
        code = ledger.authorize(
            login=login,
            scopes=scopes,
            redirect_uri=redirect_uri,
            **_openid_params(params),
        )
    except ValueError:
        page = consent_page(
            client_id=params["client_id"],
            scopes=scopes,
            hidden={name: params[name] for name in AUTHORIZE_PARAMS if name in params},
            login=login,
            error="A Twitch login is 1 to 25 letters, digits or underscores.",
        )
        return _html(page, status=400)
    login = normalize_login(login)
    _remember_approval(ledger, login, scopes)
    approved = {"code": code, "scope": " ".join(scopes)}
    response = redirect(redirect_uri, _with_state(approved, params))
    # Logged in on "Twitch" from now on, in this browser.
    response.set_cookie(
        LOGIN_COOKIE, login, path="/oauth2/", httponly=True, samesite="Lax"
    )
    return response


def _remember_approval(ledger: Ledger, login: str, scopes: tuple[str, ...]) -> None:
    user = ledger.user_by_login(login)
    assert user is not None  # `authorize` has just added it
    approvals = _approvals.setdefault(ledger, {})
    earlier = approvals.get(login)
    if earlier is None or earlier.user is not user:
        earlier = approvals[login] = _Approval(user=user, scopes=set())
    earlier.scopes.update(scopes)


def _approved_login(
    ledger: Ledger, request: web.Request, scopes: tuple[str, ...]
) -> str | None:
    """The browser's logged-in user, if they approved all of `scopes` for the app
    and have not disconnected it since (Twitch then forgets the approval)."""
    login = request.cookies.get(LOGIN_COOKIE, "")
    approval = _approvals.get(ledger, {}).get(login)
    if approval is None or approval.user is not ledger.user_by_login(login):
        return None  # never approved, or the sandbox was reset since
    if not set(scopes) <= approval.scopes:
        return None
    try:
        connected = bool(ledger.live_tokens(login).refresh)
    except KeyError:
        return None
    return login if connected else None


async def token(request: web.Request) -> web.Response:
    ledger = request.app[LEDGER]
    params = await _params(request)
    client_id = params.get("client_id", "")
    grant_type = params.get("grant_type")
    if grant_type == device.GRANT_TYPE:
        return device.poll(request, params)
    try:
        ledger.check_client(
            client_id, params.get("client_secret"), grant_type=grant_type
        )
        if grant_type == "authorization_code":
            body = ledger.exchange_code(
                client_id=client_id,
                code=params.get("code"),
                redirect_uri=params.get("redirect_uri"),
            )
        elif grant_type == "refresh_token":
            body = ledger.refresh(
                client_id=client_id, refresh_token=params.get("refresh_token")
            )
        elif grant_type == "client_credentials":
            # Not part of the user flow, but twitchAPI's Twitch() asks for an
            # app token on startup.
            body = ledger.issue_app_token(client_id=client_id)
        elif not grant_type:
            raise Rejected(400, "missing grant_type")
        else:
            raise Rejected(400, "unsupported grant_type")
    except Rejected as rejected:
        return json_response(rejected.body, status=rejected.status)
    return json_response(body)


async def validate(request: web.Request) -> web.Response:
    token = bearer_token(request, schemes=("oauth", "bearer"))
    info = request.app[LEDGER].token_info(token)
    if info is None:
        body = {"status": 401, "message": "invalid access token"}
        return json_response(body, status=401)
    return json_response(_validation(info))


async def revoke(request: web.Request) -> web.Response:
    params = await _params(request)
    try:
        request.app[LEDGER].revoke(
            client_id=params.get("client_id"), token=params.get("token")
        )
    except Rejected as rejected:
        return json_response(rejected.body, status=rejected.status)
    return web.Response(status=200)


def bearer_token(request: web.Request, *, schemes: tuple[str, ...]) -> str | None:
    """The token from ``Authorization: <scheme> <token>``, or None."""
    scheme, _, token = request.headers.get("Authorization", "").strip().partition(" ")
    if scheme.lower() not in schemes:
        return None
    return token.strip() or None


def _check_authorize(ledger: Ledger, params: Mapping[str, str]) -> web.Response | None:
    if not ledger.is_known_client(params.get("client_id")):
        return _html(error_page("invalid client"), status=400)
    if params.get("response_type") != "code":
        return _html(error_page("unsupported response_type"), status=400)
    if not ledger.is_registered_redirect(params.get("redirect_uri")):
        if not ledger.redirect_uris:
            return _html(error_page("no redirect URI is registered"), status=400)
        # Twitch may leave the state out here (twitch-oauth.md, section 1): the
        # stricter reading, so a site must cope without it.
        mismatch = {
            "error": "redirect_mismatch",
            "error_description": "Parameter redirect_uri does not match registered URI",
        }
        return redirect(ledger.redirect_uris[0], mismatch)
    # One scope Twitch does not have and Twitch refuses the whole request with an
    # error page of its own, sending nobody back (twitchdev/twitch-cli's mock
    # answers 400 "Invalid scopes requested" likewise).
    requested = normalize_scopes(params.get("scope", ""))
    if any(SCOPES[s].status is Status.REMOVED for s in requested if s in SCOPES):
        message = (
            "Sorry, the scope you are requesting is currently unavailable. Please "
            "request new scopes documented at "
            "https://dev.twitch.tv/docs/authentication/scopes/"
        )
        return _html(error_page(message), status=400)
    if any(s not in ACCEPTED for s in requested):
        return _html(error_page("invalid scope requested"), status=400)
    try:
        oidc.requested_claims(params.get("claims"))
    except ValueError as problem:
        return _html(error_page(f"invalid claims: {problem}"), status=400)
    return None


def _openid_params(params: Mapping[str, str]) -> dict[str, Any]:
    """The authorize request's nonce and claims (checked already), for the code."""
    return {
        "nonce": params.get("nonce"),
        "claims": oidc.requested_claims(params.get("claims")),
    }


def _with_state(query: dict[str, str], params: Mapping[str, str]) -> dict[str, str]:
    if "state" in params:
        query["state"] = params["state"]
    return query


def _validation(info: TokenInfo) -> dict[str, object]:
    body: dict[str, object] = {"client_id": info.client_id}
    # App access tokens have no user: Twitch leaves login and user_id out.
    if info.user is not None:
        body["login"] = info.user.login
    # null, not [], for a token without scopes, as on Twitch.
    body["scopes"] = list(info.scopes) or None
    if info.user is not None:
        body["user_id"] = info.user.id
    body["expires_in"] = info.expires_in
    return body


async def _params(request: web.Request) -> dict[str, str]:
    """Form body over query string: Twitch reads both (and twitchAPI uses the
    query string), so the sandbox does too; the recording shows which."""
    form = await request.post()
    return {**request.query, **{name: str(value) for name, value in form.items()}}


def _html(page: str, *, status: int = 200) -> web.Response:
    return web.Response(status=status, text=page, content_type="text/html")


# OpenID Connect --------------------------------------------------------------------


async def keys(request: web.Request) -> web.Response:
    """The JWKS: the public keys that sign ID tokens, the current and any kept."""
    return json_response(request.app[LEDGER].openid.jwks())


async def openid_configuration(request: web.Request) -> web.Response:
    return json_response(oidc.discovery(f"{request.url.origin()}/oauth2/"))


async def userinfo(request: web.Request) -> web.Response:
    # Twitch's guide shows Bearer only; the 401 and 403 bodies are guesses in
    # the shape of id.twitch.tv's other refusals.
    token = bearer_token(request, schemes=("bearer",))
    info = request.app[LEDGER].token_info(token)
    if info is None or info.user is None:
        body = {"error": "Unauthorized", "status": 401, "message": "invalid token"}
        return json_response(body, status=401)
    if "openid" not in info.scopes:
        body = {"error": "Forbidden", "status": 403, "message": "missing scope openid"}
        return json_response(body, status=403)
    return json_response(
        oidc.userinfo(
            info.user,
            client_id=info.client_id,
            scopes=info.scopes,
            asked=info.userinfo_claims,
        )
    )
