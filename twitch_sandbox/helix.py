"""Helix ``GET /users``: the one API call the site needs to learn who it met."""

from __future__ import annotations

from aiohttp import web

from .keys import LEDGER
from .ledger import SandboxUser
from .oauth import bearer_token
from .responses import helix_error, json_response

MAX_LOOKUPS = 100


async def users(request: web.Request) -> web.Response:
    ledger = request.app[LEDGER]
    if not request.headers.get("Authorization"):
        return _unauthorized("OAuth token is missing")
    # Helix takes only "Bearer"; "OAuth" is for id.twitch.tv.
    info = ledger.token_info(bearer_token(request, schemes=("bearer",)))
    if info is None:
        return _unauthorized("Invalid OAuth token")
    # A missing Client-Id cannot match either.
    if request.headers.get("Client-Id") != info.client_id:
        return _unauthorized("Client ID and OAuth token do not match")

    ids = request.query.getall("id", [])
    logins = request.query.getall("login", [])
    if len(ids) + len(logins) > MAX_LOOKUPS:
        return _bad_request(
            f"The sum of id and login parameters must not exceed {MAX_LOOKUPS}"
        )
    if ids or logins:
        # Unknown ids and logins are left out, not errors, as on Twitch.
        found = [ledger.user_by_id(i) for i in ids]
        found += [ledger.user_by_login(login) for login in logins]
        matched = list(dict.fromkeys(user for user in found if user is not None))
    elif info.user is not None:
        matched = [info.user]
    else:
        return _bad_request("Must provide an ID, Login or OAuth Token.")

    # The email only comes with user:read:email, and only for the token's user.
    with_email = "user:read:email" in info.scopes
    data = [_user_json(u, email=with_email and u == info.user) for u in matched]
    return json_response({"data": data})


def _user_json(user: SandboxUser, *, email: bool) -> dict[str, object]:
    body: dict[str, object] = {
        "id": user.id,
        "login": user.login,
        "display_name": user.display_name,
        "type": "",
        "broadcaster_type": "",
        "description": "",
        "profile_image_url": "",
        "offline_image_url": "",
        "view_count": 0,
        "created_at": user.created_at,
    }
    if email:
        body["email"] = f"{user.login}@users.sandbox.invalid"
    return body


def _unauthorized(message: str) -> web.Response:
    return helix_error(401, message)


def _bad_request(message: str) -> web.Response:
    return helix_error(400, message)
