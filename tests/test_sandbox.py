"""The Twitch sandbox, over real HTTP, against shared/twitch-oauth.md."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import types
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
from twitchAPI.oauth import (
    UserAuthenticator,
    refresh_access_token,
    revoke_token,
    validate_token,
)
from twitchAPI.twitch import Twitch
from twitchAPI.type import AuthScope

import twitch_sandbox.ledger
import twitch_sandbox.webhooks
from twitch_sandbox import LiveTokens, Sandbox, WebhookMessage

CLIENT_ID = "sandbox-client-id"
CLIENT_SECRET = "sandbox-client-secret"
REDIRECT_URI = "http://testserver/twitch/callback/"
OTHER_REDIRECT_URI = "http://testserver/other/callback/"
REPO = Path(__file__).resolve().parent.parent


@dataclass
class Reply:
    status: int
    headers: Message
    body: bytes

    def json(self) -> object:
        return json.loads(self.body)

    @property
    def text(self) -> str:
        return self.body.decode()

    @property
    def location(self) -> tuple[str, dict[str, str]]:
        """Where a redirect goes: the URI without its query, and the query."""
        parts = urlsplit(self.headers["Location"])
        query = {k: v[0] for k, v in parse_qs(parts.query, True).items()}
        return parts._replace(query="").geturl(), query


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None  # a redirect is the answer under test, not a place to go


_opener = urllib.request.build_opener(_NoRedirects)


def http(
    sandbox: Sandbox,
    method: str,
    path: str,
    *,
    query: Mapping[str, str] | None = None,
    form: Mapping[str, str] | None = None,
    json_body: object = None,
    data: bytes | None = None,
    headers: Mapping[str, str] | None = None,
    timeout: float = 5.0,
) -> Reply:
    url = sandbox.base_url + path + (f"?{urlencode(query)}" if query else "")
    all_headers = dict(headers or {})
    if form is not None:
        data = urlencode(form).encode()
        all_headers["Content-Type"] = "application/x-www-form-urlencoded"
    elif json_body is not None:
        data = json.dumps(json_body).encode()
        all_headers["Content-Type"] = "application/json"
    request = urllib.request.Request(url, data=data, method=method, headers=all_headers)
    try:
        with _opener.open(request, timeout=timeout) as response:
            return Reply(response.status, response.headers, response.read())
    except urllib.error.HTTPError as error:
        with error:
            return Reply(error.code, error.headers, error.read())


def authorize_query(**overrides: str) -> dict[str, str]:
    query = {
        "client_id": CLIENT_ID,
        "redirect_uri": REDIRECT_URI,
        "response_type": "code",
        "scope": "chat:read user:read:email",
        "state": "the-state",
    }
    query.update(overrides)
    return {k: v for k, v in query.items() if v is not None}


def exchange(sandbox: Sandbox, code: str, **overrides: str) -> Reply:
    form = {
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
        "code": code,
        "grant_type": "authorization_code",
        "redirect_uri": REDIRECT_URI,
    }
    form.update(overrides)
    return http(sandbox, "POST", "oauth2/token", form=form)


def refresh(sandbox: Sandbox, refresh_token: str) -> Reply:
    form = {
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
        "grant_type": "refresh_token",
        "refresh_token": refresh_token,
    }
    return http(sandbox, "POST", "oauth2/token", form=form)


def validate(sandbox: Sandbox, token: str, scheme: str = "OAuth") -> Reply:
    headers = {"Authorization": f"{scheme} {token}"}
    return http(sandbox, "GET", "oauth2/validate", headers=headers)


def helix_users(
    sandbox: Sandbox,
    token: str,
    *,
    client_id: str = CLIENT_ID,
    query: Mapping[str, str] | None = None,
) -> Reply:
    headers = {"Authorization": f"Bearer {token}", "Client-Id": client_id}
    return http(sandbox, "GET", "helix/users", query=query, headers=headers)


@pytest.fixture(scope="module")
def sandbox() -> Iterator[Sandbox]:
    sandbox = Sandbox(
        client_id=CLIENT_ID,
        client_secret=CLIENT_SECRET,
        redirect_uris=[REDIRECT_URI],
    ).start()
    yield sandbox
    sandbox.stop()


@pytest.fixture(autouse=True)
def fresh_sandbox(sandbox: Sandbox) -> Iterator[None]:
    sandbox.reset()
    sandbox.redirect_uris[:] = [REDIRECT_URI]
    yield
    sandbox.reset()


# Authorize ----------------------------------------------------------------


def test_consent_page_shows_the_scopes_a_login_field_and_both_buttons(
    sandbox: Sandbox,
) -> None:
    reply = http(sandbox, "GET", "oauth2/authorize", query=authorize_query())

    assert reply.status == 200
    assert reply.headers.get_content_type() == "text/html"
    page = reply.text
    assert '<form method="post" action="/oauth2/authorize">' in page
    assert "chat:read" in page and "user:read:email" in page
    assert 'name="login" value="sandboxuser"' in page
    assert '<button type="submit" name="action" value="authorize">Authorize' in page
    assert '<button type="submit" name="action" value="cancel">Cancel' in page
    assert '<input type="hidden" name="state" value="the-state">' in page
    assert f'<input type="hidden" name="redirect_uri" value="{REDIRECT_URI}">' in page


def test_consent_page_escapes_what_it_echoes(sandbox: Sandbox) -> None:
    query = authorize_query(state='"><script>alert(1)</script>', scope="<b>x</b>")

    page = http(sandbox, "GET", "oauth2/authorize", query=query).text

    assert "<script>" not in page
    assert "<b>x</b>" not in page
    assert "&lt;script&gt;" in page


@pytest.mark.parametrize(
    "overrides",
    [{"client_id": "someone-else"}, {"client_id": None}, {"response_type": "token"}],
)
def test_unknown_client_or_response_type_gets_an_error_page(
    sandbox: Sandbox, overrides: dict[str, str | None]
) -> None:
    reply = http(sandbox, "GET", "oauth2/authorize", query=authorize_query(**overrides))

    assert reply.status == 400
    assert reply.headers.get_content_type() == "text/html"


def test_unregistered_redirect_uri_is_sent_to_the_first_registered_one(
    sandbox: Sandbox,
) -> None:
    sandbox.redirect_uris.append(OTHER_REDIRECT_URI)
    query = authorize_query(redirect_uri="http://evil.example/steal")

    reply = http(sandbox, "GET", "oauth2/authorize", query=query)

    assert reply.status == 302
    assert reply.headers["Location"] == (
        f"{REDIRECT_URI}?error=redirect_mismatch&error_description="
        "Parameter+redirect_uri+does+not+match+registered+URI"
    )  # without the state, as Twitch may send it


def test_approving_redirects_with_code_scope_and_state(sandbox: Sandbox) -> None:
    form = {**authorize_query(), "login": "alice", "action": "authorize"}

    reply = http(sandbox, "POST", "oauth2/authorize", form=form)

    assert reply.status == 302
    uri, query = reply.location
    assert uri == REDIRECT_URI
    assert list(query) == ["code", "scope", "state"]
    assert query["scope"] == "chat:read user:read:email"
    assert query["state"] == "the-state"
    assert "scope=chat%3Aread+user%3Aread%3Aemail" in reply.headers["Location"]
    assert exchange(sandbox, query["code"]).status == 200


def test_approving_without_state_leaves_state_out(sandbox: Sandbox) -> None:
    form = {**authorize_query(state=None), "login": "alice", "action": "authorize"}

    _, query = http(sandbox, "POST", "oauth2/authorize", form=form).location

    assert "state" not in query


def test_approving_creates_the_user_once_with_a_numeric_id(sandbox: Sandbox) -> None:
    form = {**authorize_query(), "login": "NewStreamer", "action": "authorize"}

    http(sandbox, "POST", "oauth2/authorize", form=form)
    http(sandbox, "POST", "oauth2/authorize", form=form)

    user = sandbox.add_user("newstreamer")
    assert user.login == "newstreamer"
    assert user.display_name == "Newstreamer"
    assert user.id == "100000001"
    assert sandbox.add_user("second").id == "100000002"


def test_approving_with_an_invalid_login_shows_the_page_again(
    sandbox: Sandbox,
) -> None:
    form = {**authorize_query(), "login": "not a login!", "action": "authorize"}

    reply = http(sandbox, "POST", "oauth2/authorize", form=form)

    assert reply.status == 400
    assert 'name="login"' in reply.text


def test_cancelling_redirects_with_access_denied(sandbox: Sandbox) -> None:
    form = {**authorize_query(), "login": "alice", "action": "cancel"}

    reply = http(sandbox, "POST", "oauth2/authorize", form=form)

    assert reply.status == 302
    assert reply.headers["Location"] == (
        f"{REDIRECT_URI}?error=access_denied"
        "&error_description=The+user+denied+you+access&state=the-state"
    )


def test_the_consent_form_is_checked_again_on_submit(sandbox: Sandbox) -> None:
    form = {
        **authorize_query(redirect_uri="http://evil.example/steal"),
        "login": "alice",
        "action": "authorize",
    }

    reply = http(sandbox, "POST", "oauth2/authorize", form=form)

    uri, query = reply.location
    assert uri == REDIRECT_URI
    assert query["error"] == "redirect_mismatch"
    assert "code" not in query


# Token ----------------------------------------------------------------------


def test_code_exchange_returns_a_token_pair(sandbox: Sandbox) -> None:
    code = sandbox.authorize(login="alice", scopes=["chat:read"], state="s")

    reply = exchange(sandbox, code)

    assert reply.status == 200
    assert reply.headers["Content-Type"] == "application/json"
    body = reply.json()
    assert set(body) == {
        "access_token",
        "expires_in",
        "refresh_token",
        "scope",
        "token_type",
    }
    assert body["expires_in"] == 14400
    assert body["scope"] == ["chat:read"]
    assert body["token_type"] == "bearer"
    assert sandbox.user_for_access_token(body["access_token"]).login == "alice"
    assert sandbox.is_refresh_token_valid(body["refresh_token"])


def test_a_code_works_only_once(sandbox: Sandbox) -> None:
    code = sandbox.authorize(login="alice", scopes=["chat:read"])
    assert exchange(sandbox, code).status == 200

    reply = exchange(sandbox, code)

    assert reply.status == 400
    assert reply.json() == {"status": 400, "message": "Invalid authorization code"}


def test_a_code_exchanged_with_another_redirect_uri_is_invalid(
    sandbox: Sandbox,
) -> None:
    sandbox.redirect_uris.append(OTHER_REDIRECT_URI)
    code = sandbox.authorize(login="alice", scopes=[])

    reply = exchange(sandbox, code, redirect_uri=OTHER_REDIRECT_URI)

    assert reply.json() == {"status": 400, "message": "Invalid authorization code"}


def test_a_code_expires_after_ten_minutes(
    sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    code = sandbox.authorize(login="alice", scopes=[])
    later = types.SimpleNamespace(time=lambda: time.time() + 601)
    monkeypatch.setattr(twitch_sandbox.ledger, "time", later)

    reply = exchange(sandbox, code)

    assert reply.json() == {"status": 400, "message": "Invalid authorization code"}


def test_wrong_client_secret_is_forbidden(sandbox: Sandbox) -> None:
    code = sandbox.authorize(login="alice", scopes=[])

    reply = exchange(sandbox, code, client_secret="wrong")

    assert reply.status == 403
    assert reply.json() == {"status": 403, "message": "invalid client secret"}
    # The code was not spent by a request that never got that far.
    assert exchange(sandbox, code).status == 200


def test_unknown_client_id_is_an_invalid_client(sandbox: Sandbox) -> None:
    reply = exchange(sandbox, "whatever", client_id="someone-else")

    assert reply.status == 400
    assert reply.json() == {"status": 400, "message": "invalid client"}


@pytest.mark.parametrize(
    ("grant_type", "message"),
    [("", "missing grant_type"), ("password", "unsupported grant_type")],
)
def test_missing_or_unknown_grant_type_is_a_bad_request(
    sandbox: Sandbox, grant_type: str, message: str
) -> None:
    reply = exchange(sandbox, "whatever", grant_type=grant_type)

    assert reply.status == 400
    assert reply.json() == {"status": 400, "message": message}


def test_refresh_rotates_the_refresh_token(sandbox: Sandbox) -> None:
    first = sandbox.issue_tokens(login="alice", scopes=["chat:read"])

    reply = refresh(sandbox, first["refresh_token"])

    assert reply.status == 200
    second = reply.json()
    assert second["refresh_token"] != first["refresh_token"]
    assert second["access_token"] != first["access_token"]
    assert second["scope"] == ["chat:read"]
    assert not sandbox.is_refresh_token_valid(first["refresh_token"])
    assert refresh(sandbox, second["refresh_token"]).status == 200
    # Refreshing does not kill the access token it replaces.
    assert sandbox.is_access_token_valid(first["access_token"])
    assert sandbox.refresh_count(first["refresh_token"]) == 2
    assert sandbox.count("token", grant_type="refresh_token") == 2


def test_reusing_a_rotated_refresh_token_ends_the_whole_authorization(
    sandbox: Sandbox,
) -> None:
    first = sandbox.issue_tokens(login="alice", scopes=["chat:read"])
    other_grant = sandbox.issue_tokens(login="alice", scopes=["chat:read"])
    bob = sandbox.issue_tokens(login="bob", scopes=["chat:read"])
    second = refresh(sandbox, first["refresh_token"]).json()

    reply = refresh(sandbox, first["refresh_token"])

    assert reply.status == 400
    assert reply.json() == {
        "error": "Bad Request",
        "status": 400,
        "message": "Invalid refresh token",
    }
    assert refresh(sandbox, second["refresh_token"]).status == 400
    assert not sandbox.is_refresh_token_valid(other_grant["refresh_token"])
    for pair in (first, second, other_grant):
        assert validate(sandbox, pair["access_token"]).status == 401
    assert sandbox.live_tokens("alice") == LiveTokens(access=[], refresh=[])
    assert validate(sandbox, bob["access_token"]).status == 200
    assert sandbox.is_refresh_token_valid(bob["refresh_token"])


def test_an_unknown_refresh_token_gets_twitchs_exact_body_and_changes_nothing(
    sandbox: Sandbox,
) -> None:
    pair = sandbox.issue_tokens(login="alice", scopes=[])

    reply = refresh(sandbox, "not-a-refresh-token")

    assert reply.status == 400
    assert reply.json() == {
        "error": "Bad Request",
        "status": 400,
        "message": "Invalid refresh token",
    }
    assert sandbox.live_tokens("alice") == LiveTokens(
        access=[pair["access_token"]], refresh=[pair["refresh_token"]]
    )


def test_token_answers_leave_scope_out_when_there_are_none(
    sandbox: Sandbox,
) -> None:
    issued = sandbox.issue_tokens(login="alice", scopes=[])
    exchanged = exchange(sandbox, sandbox.authorize(login="bob")).json()
    refreshed = refresh(sandbox, exchanged["refresh_token"]).json()

    assert set(issued) == {"access_token", "expires_in", "refresh_token"}
    for body in (exchanged, refreshed):
        assert set(body) == {
            "access_token",
            "expires_in",
            "refresh_token",
            "token_type",
        }


def test_a_refresh_token_has_at_most_50_valid_access_tokens(
    sandbox: Sandbox,
) -> None:
    pair = sandbox.issue_tokens(login="alice", scopes=[])
    access_tokens = [pair["access_token"]]
    refresh_token = pair["refresh_token"]
    for _ in range(50):
        body = refresh(sandbox, refresh_token).json()
        access_tokens.append(body["access_token"])
        refresh_token = body["refresh_token"]

    assert not sandbox.is_access_token_valid(access_tokens[0])
    assert all(sandbox.is_access_token_valid(t) for t in access_tokens[1:])


def test_client_credentials_grant_gives_an_app_token(sandbox: Sandbox) -> None:
    form = {
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
        "grant_type": "client_credentials",
    }
    body = http(sandbox, "POST", "oauth2/token", query=form).json()

    validation = validate(sandbox, body["access_token"]).json()
    assert "login" not in validation and "user_id" not in validation
    assert validation["client_id"] == CLIENT_ID


# Validate and revoke --------------------------------------------------------


@pytest.mark.parametrize("scheme", ["OAuth", "Bearer"])
def test_validate_returns_the_tokens_owner_and_scopes(
    sandbox: Sandbox, scheme: str
) -> None:
    pair = sandbox.issue_tokens(login="alice", scopes="chat:read user:read:email")

    reply = validate(sandbox, pair["access_token"], scheme)

    assert reply.status == 200
    assert reply.headers["Content-Type"] == "application/json"
    assert reply.json() == {
        "client_id": CLIENT_ID,
        "login": "alice",
        "scopes": ["chat:read", "user:read:email"],
        "user_id": sandbox.add_user("alice").id,
        "expires_in": pytest.approx(14400, abs=2),
    }


def test_validate_answers_null_scopes_for_a_token_without_scopes(
    sandbox: Sandbox,
) -> None:
    pair = sandbox.issue_tokens(login="alice", scopes=[])

    reply = validate(sandbox, pair["access_token"])

    assert reply.status == 200
    assert reply.json()["scopes"] is None
    assert '"scopes": null' in reply.text


def test_validate_rejects_missing_unknown_and_expired_tokens(
    sandbox: Sandbox,
) -> None:
    pair = sandbox.issue_tokens(login="alice", scopes=[])
    sandbox.expire_access_tokens("alice")
    invalid = {"status": 401, "message": "invalid access token"}

    for reply in (
        http(sandbox, "GET", "oauth2/validate"),
        validate(sandbox, "unknown"),
        validate(sandbox, pair["access_token"]),
    ):
        assert reply.status == 401
        assert reply.json() == invalid


def test_revoke_succeeds_once_then_answers_invalid_token(sandbox: Sandbox) -> None:
    pair = sandbox.issue_tokens(login="alice", scopes=[])
    form = {"client_id": CLIENT_ID, "token": pair["access_token"]}

    first = http(sandbox, "POST", "oauth2/revoke", form=form)
    second = http(sandbox, "POST", "oauth2/revoke", form=form)

    assert (first.status, first.body) == (200, b"")
    assert second.status == 400
    assert second.json() == {"status": 400, "message": "Invalid token"}
    assert validate(sandbox, pair["access_token"]).status == 401


def test_revoking_an_access_token_leaves_its_refresh_token_alone(
    sandbox: Sandbox,
) -> None:
    pair = sandbox.issue_tokens(login="alice", scopes=[])

    form = {"client_id": CLIENT_ID, "token": pair["access_token"]}
    http(sandbox, "POST", "oauth2/revoke", form=form)

    assert sandbox.is_refresh_token_valid(pair["refresh_token"])
    assert sandbox.live_tokens("alice") == LiveTokens(
        access=[], refresh=[pair["refresh_token"]]
    )


def test_revoke_with_an_unknown_client_is_not_found(sandbox: Sandbox) -> None:
    pair = sandbox.issue_tokens(login="alice", scopes=[])
    form = {"client_id": "someone-else", "token": pair["access_token"]}

    reply = http(sandbox, "POST", "oauth2/revoke", form=form)

    assert reply.status == 404
    assert reply.json() == {"status": 404, "message": "client does not exist"}
    assert sandbox.is_access_token_valid(pair["access_token"])


# Helix ----------------------------------------------------------------------


def test_helix_users_returns_the_tokens_user(sandbox: Sandbox) -> None:
    pair = sandbox.issue_tokens(login="alice", scopes=[])

    reply = helix_users(sandbox, pair["access_token"])

    assert reply.status == 200
    [user] = reply.json()["data"]
    alice = sandbox.add_user("alice")
    assert user == {
        "id": alice.id,
        "login": "alice",
        "display_name": "Alice",
        "type": "",
        "broadcaster_type": "",
        "description": "",
        "profile_image_url": "",
        "offline_image_url": "",
        "view_count": 0,
        "created_at": alice.created_at,
    }
    assert time.strptime(user["created_at"], "%Y-%m-%dT%H:%M:%SZ")


def test_helix_users_looks_up_by_login_and_id(sandbox: Sandbox) -> None:
    pair = sandbox.issue_tokens(login="alice", scopes=[])
    bob = sandbox.add_user("bob")

    by_login = helix_users(sandbox, pair["access_token"], query={"login": "bob"})
    by_id = helix_users(sandbox, pair["access_token"], query={"id": bob.id})
    unknown = helix_users(sandbox, pair["access_token"], query={"login": "nobody"})

    assert [u["login"] for u in by_login.json()["data"]] == ["bob"]
    assert [u["login"] for u in by_id.json()["data"]] == ["bob"]
    assert unknown.json() == {"data": []}


def test_helix_users_rejects_invalid_tokens_and_other_client_ids(
    sandbox: Sandbox,
) -> None:
    pair = sandbox.issue_tokens(login="alice", scopes=[])

    invalid = helix_users(sandbox, "unknown")
    mismatch = helix_users(sandbox, pair["access_token"], client_id="other")

    assert invalid.status == 401
    assert invalid.json() == {
        "error": "Unauthorized",
        "status": 401,
        "message": "Invalid OAuth token",
    }
    assert mismatch.status == 401
    assert mismatch.json()["message"] == "Client ID and OAuth token do not match"


# Faults, latency, expiry ----------------------------------------------------


def test_fail_with_a_string_answers_a_non_json_body(sandbox: Sandbox) -> None:
    sandbox.fail("token", status=502, body="<html>Bad Gateway</html>", times=1)
    pair = sandbox.issue_tokens(login="alice", scopes=[])

    failed = refresh(sandbox, pair["refresh_token"])
    recovered = refresh(sandbox, pair["refresh_token"])

    assert failed.status == 502
    assert failed.headers.get_content_type() == "text/html"
    assert failed.text == "<html>Bad Gateway</html>"
    assert recovered.status == 200  # the failed request changed nothing
    assert [r.status for r in sandbox.requests] == [502, 200]


def test_fail_answers_json_until_cleared(sandbox: Sandbox) -> None:
    sandbox.fail("validate", status=503)

    replies = [validate(sandbox, "x") for _ in range(3)]
    sandbox.clear_faults()

    assert {r.status for r in replies} == {503}
    assert replies[0].json() == {"status": 503, "message": "sandbox fault"}
    assert validate(sandbox, "x").status == 401


def test_fail_sends_any_other_body_as_json(sandbox: Sandbox) -> None:
    odd = {
        "status": "oops",
        "access_token": "a" * 300,
        "refresh_token": "nul\u0000inside",
        "expires_in": 1e15,
        "scope": None,
    }
    sandbox.fail("token", status=200, body=[1, 2], times=1)
    sandbox.fail("validate", status=200, body=odd, times=1)
    sandbox.fail("validate", status=200, body=False, times=1)

    listed = refresh(sandbox, "x")
    replies = [validate(sandbox, "x") for _ in range(2)]

    assert (listed.status, listed.json()) == (200, [1, 2])
    assert listed.headers["Content-Type"] == "application/json"
    assert [r.json() for r in replies] == [odd, False]


def test_alter_changes_the_real_answer_after_it_happened(sandbox: Sandbox) -> None:
    pair = sandbox.issue_tokens(login="alice", scopes=["chat:read"])
    sandbox.alter("token", remove=["expires_in"], set={"extra": 1}, times=1)

    reply = refresh(sandbox, pair["refresh_token"])

    assert reply.status == 200
    body = reply.json()
    assert "expires_in" not in body
    assert body["extra"] == 1
    assert body["scope"] == ["chat:read"]
    # The refresh really happened: the old token is spent, the new one works.
    assert not sandbox.is_refresh_token_valid(pair["refresh_token"])
    assert sandbox.is_refresh_token_valid(body["refresh_token"])
    assert sandbox.live_tokens("alice").refresh == [body["refresh_token"]]
    assert "expires_in" in refresh(sandbox, body["refresh_token"]).json()


def test_alter_can_make_validate_say_a_token_never_expires(
    sandbox: Sandbox,
) -> None:
    pair = sandbox.issue_tokens(login="alice", scopes=[])
    sandbox.alter("validate", set={"expires_in": 0})

    replies = [validate(sandbox, t) for t in (pair["access_token"], "unknown")]

    assert replies[0].status == 200
    assert replies[0].json()["expires_in"] == 0
    assert replies[0].json()["login"] == "alice"
    # The status stays: a rejected token is still rejected, with the change.
    assert replies[1].status == 401
    assert replies[1].json()["expires_in"] == 0
    sandbox.clear_faults()
    assert validate(sandbox, pair["access_token"]).json()["expires_in"] > 0


def test_alter_leaves_answers_that_are_not_json_objects_alone(
    sandbox: Sandbox,
) -> None:
    pair = sandbox.issue_tokens(login="alice", scopes=[])
    sandbox.alter("revoke", set={"extra": 1}, times=1)

    form = {"client_id": CLIENT_ID, "token": pair["access_token"]}
    reply = http(sandbox, "POST", "oauth2/revoke", form=form)

    assert (reply.status, reply.body) == (200, b"")


def test_alter_takes_its_turn_in_the_queue_of_faults(sandbox: Sandbox) -> None:
    pair = sandbox.issue_tokens(login="alice", scopes=[])
    sandbox.fail("token", status=500, times=1)
    sandbox.alter("token", set={"expires_in": 1e15}, times=1)

    failed = refresh(sandbox, pair["refresh_token"])
    altered = refresh(sandbox, pair["refresh_token"]).json()
    plain = refresh(sandbox, altered["refresh_token"]).json()

    assert failed.status == 500
    assert altered["expires_in"] == 1e15
    assert plain["expires_in"] == 14400


def test_alter_refuses_a_single_string_as_the_keys_to_remove(
    sandbox: Sandbox,
) -> None:
    with pytest.raises(TypeError):
        sandbox.alter("token", remove="expires_in")


def test_hang_makes_a_client_time_out(sandbox: Sandbox) -> None:
    sandbox.hang("validate", times=1)

    with pytest.raises(TimeoutError):
        http(sandbox, "GET", "oauth2/validate", timeout=0.5)

    assert validate(sandbox, "x").status == 401
    assert [r.status for r in sandbox.requests] == [0, 401]


def test_rate_limit_sends_headers_and_then_recovers(sandbox: Sandbox) -> None:
    sandbox.rate_limit("users", times=1, reset_in=5)
    pair = sandbox.issue_tokens(login="alice", scopes=[])

    limited = helix_users(sandbox, pair["access_token"])

    assert limited.status == 429
    assert limited.json() == {"status": 429, "message": "Too Many Requests"}
    assert limited.headers["Ratelimit-Remaining"] == "0"
    assert int(limited.headers["Ratelimit-Limit"]) > 0
    assert int(limited.headers["Ratelimit-Reset"]) == pytest.approx(
        time.time() + 5, abs=2
    )
    assert limited.headers["Retry-After"] == "5"
    assert helix_users(sandbox, pair["access_token"]).status == 200


def test_faults_for_one_endpoint_are_used_in_order(sandbox: Sandbox) -> None:
    sandbox.rate_limit("validate", times=1)
    sandbox.fail("validate", status=500, times=1)

    statuses = [validate(sandbox, "x").status for _ in range(3)]

    assert statuses == [429, 500, 401]


def test_expired_access_tokens_can_still_be_refreshed(sandbox: Sandbox) -> None:
    pair = sandbox.issue_tokens(login="alice", scopes=[])
    other = sandbox.issue_tokens(login="bob", scopes=[])

    sandbox.expire_access_tokens("alice")

    assert helix_users(sandbox, pair["access_token"]).status == 401
    assert validate(sandbox, other["access_token"]).status == 200
    assert refresh(sandbox, pair["refresh_token"]).status == 200


def test_a_disconnected_user_loses_every_token(sandbox: Sandbox) -> None:
    first = sandbox.issue_tokens(login="alice", scopes=[])
    second = sandbox.issue_tokens(login="alice", scopes=[])
    other = sandbox.issue_tokens(login="bob", scopes=[])

    sandbox.disconnect_user("alice")

    for pair in (first, second):
        assert validate(sandbox, pair["access_token"]).status == 401
        assert refresh(sandbox, pair["refresh_token"]).status == 400
    assert validate(sandbox, other["access_token"]).status == 200


def test_live_tokens_follow_exchange_revoke_and_disconnect(
    sandbox: Sandbox,
) -> None:
    pair = exchange(sandbox, sandbox.authorize(login="alice")).json()
    after_exchange = sandbox.live_tokens("alice")
    form = {"client_id": CLIENT_ID, "token": pair["access_token"]}
    http(sandbox, "POST", "oauth2/revoke", form=form)
    after_revoke = sandbox.live_tokens("alice")
    sandbox.disconnect_user("alice")

    assert after_exchange == LiveTokens(
        access=[pair["access_token"]], refresh=[pair["refresh_token"]]
    )
    assert after_revoke == LiveTokens(access=[], refresh=[pair["refresh_token"]])
    assert sandbox.live_tokens("alice") == LiveTokens(access=[], refresh=[])
    with pytest.raises(KeyError):
        sandbox.live_tokens("nobody")


def test_live_tokens_are_in_the_order_of_issue(sandbox: Sandbox) -> None:
    first = sandbox.issue_tokens(login="alice", scopes=[])
    second = sandbox.issue_tokens(login="alice", scopes=[])
    sandbox.expire_access_tokens("alice")
    # The first grant's refresh token is now newer than the second's.
    refreshed = refresh(sandbox, first["refresh_token"]).json()

    assert sandbox.live_tokens("alice") == LiveTokens(
        access=[refreshed["access_token"]],
        refresh=[second["refresh_token"], refreshed["refresh_token"]],
    )


def test_latency_delays_the_answer(sandbox: Sandbox) -> None:
    sandbox.set_latency(0.2, endpoint="validate")

    started = time.monotonic()
    validate(sandbox, "x")
    slow = time.monotonic() - started
    started = time.monotonic()
    http(sandbox, "GET", "helix/users")
    fast = time.monotonic() - started

    assert slow >= 0.2
    assert fast < 0.2


# Recording ------------------------------------------------------------------


def test_requests_are_recorded_with_query_and_form_apart(sandbox: Sandbox) -> None:
    code = sandbox.authorize(login="alice", scopes=[])
    # twitchAPI's authenticate() puts the secret in the URL; the recording
    # must let a test see that.
    params = {
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
        "code": code,
        "grant_type": "authorization_code",
        "redirect_uri": REDIRECT_URI,
    }
    in_query = http(sandbox, "POST", "oauth2/token", query=params)
    pair = in_query.json()
    refresh(sandbox, pair["refresh_token"])

    in_url, in_body = sandbox.requests
    assert in_query.status == 200
    assert in_url.endpoint == "token"
    assert in_url.method == "POST"
    assert in_url.path == "/oauth2/token"
    assert in_url.query["client_secret"] == CLIENT_SECRET
    assert in_url.form == {}
    assert in_url.status == 200
    assert in_body.query == {}
    assert in_body.form["client_secret"] == CLIENT_SECRET
    assert in_body.form["refresh_token"] == pair["refresh_token"]
    assert in_body.headers["Content-Type"] == "application/x-www-form-urlencoded"
    assert in_url.at <= in_body.at <= time.time()
    assert sandbox.count("token") == 2
    assert sandbox.count("token", grant_type="authorization_code") == 1
    assert sandbox.count("token", grant_type="refresh_token") == 1


def test_python_api_calls_are_not_recorded(sandbox: Sandbox) -> None:
    sandbox.authorize(login="alice", scopes=[])
    sandbox.issue_tokens(login="alice", scopes=[])

    assert sandbox.requests == []


def test_tokens_issued_lists_every_token(sandbox: Sandbox) -> None:
    pair = sandbox.issue_tokens(login="alice", scopes=[])
    refreshed = refresh(sandbox, pair["refresh_token"]).json()

    issued = set(sandbox.tokens_issued())

    assert issued == {
        pair["access_token"],
        pair["refresh_token"],
        refreshed["access_token"],
        refreshed["refresh_token"],
    }


# Control endpoints ----------------------------------------------------------


def test_control_tokens_mints_users_with_token_pairs(sandbox: Sandbox) -> None:
    body = {"count": 3, "scopes": ["chat:read"], "login_prefix": "bench"}

    reply = http(sandbox, "POST", "_sandbox/tokens", json_body=body)

    assert reply.status == 200
    tokens = reply.json()["tokens"]
    assert [t["login"] for t in tokens] == ["bench1", "bench2", "bench3"]
    for minted in tokens:
        assert set(minted) == {
            "user_id",
            "login",
            "access_token",
            "refresh_token",
            "expires_in",
            "scope",
        }
        assert minted["scope"] == ["chat:read"]
        user = sandbox.user_for_access_token(minted["access_token"])
        assert user is not None and user.id == minted["user_id"]


def test_control_endpoints_drive_expiry_disconnects_and_faults(
    sandbox: Sandbox,
) -> None:
    alice = sandbox.issue_tokens(login="alice", scopes=[])
    bob = sandbox.issue_tokens(login="bob", scopes=[])

    http(sandbox, "POST", "_sandbox/expire", json_body={"login": "alice"})
    http(sandbox, "POST", "_sandbox/users/bob/disconnect")
    assert not sandbox.is_access_token_valid(alice["access_token"])
    assert sandbox.is_refresh_token_valid(alice["refresh_token"])
    assert not sandbox.is_refresh_token_valid(bob["refresh_token"])

    fault = {"endpoint": "validate", "status": 500, "body": "oops", "times": 1}
    http(sandbox, "POST", "_sandbox/fail", json_body=fault)
    assert validate(sandbox, "x").text == "oops"

    http(sandbox, "POST", "_sandbox/fail", json_body={"endpoint": "validate"})
    http(sandbox, "POST", "_sandbox/clear-faults")
    assert validate(sandbox, "x").status == 401

    latency = {"seconds": 0.1, "endpoint": "validate"}
    http(sandbox, "POST", "_sandbox/latency", json_body=latency)
    started = time.monotonic()
    validate(sandbox, "x")
    assert time.monotonic() - started >= 0.1

    http(sandbox, "POST", "_sandbox/reset")
    assert sandbox.tokens_issued() == []
    assert sandbox.requests == []


def test_control_fail_sends_any_json_body(sandbox: Sandbox) -> None:
    bodies = [[1, 2], {"expires_in": 1e15, "nul": "\u0000", "long": "x" * 300}, 7]
    for body in bodies:
        fault = {"endpoint": "token", "status": 200, "body": body, "times": 1}
        http(sandbox, "POST", "_sandbox/fail", json_body=fault)

    replies = [refresh(sandbox, "x") for _ in bodies]

    assert [r.json() for r in replies] == bodies


def test_control_alter_changes_real_answers(sandbox: Sandbox) -> None:
    pair = sandbox.issue_tokens(login="alice", scopes=[])
    fault = {"endpoint": "token", "remove": ["expires_in"], "times": 1}
    http(sandbox, "POST", "_sandbox/alter", json_body=fault)
    http(
        sandbox,
        "POST",
        "_sandbox/alter",
        json_body={"endpoint": "validate", "set": {"expires_in": 0}},
    )

    refreshed = refresh(sandbox, pair["refresh_token"]).json()
    validation = validate(sandbox, refreshed["access_token"]).json()

    assert "expires_in" not in refreshed
    assert sandbox.is_refresh_token_valid(refreshed["refresh_token"])
    assert validation["expires_in"] == 0


def test_control_live_tokens_lists_a_users_live_tokens(sandbox: Sandbox) -> None:
    pair = sandbox.issue_tokens(login="alice", scopes=[])

    reply = http(sandbox, "GET", "_sandbox/users/alice/tokens")
    unknown = http(sandbox, "GET", "_sandbox/users/nobody/tokens")

    assert reply.json() == {
        "access": [pair["access_token"]],
        "refresh": [pair["refresh_token"]],
    }
    assert unknown.status == 400


def test_control_stats_counts_requests_and_refreshes(sandbox: Sandbox) -> None:
    pair = sandbox.issue_tokens(login="alice", scopes=[])
    refresh(sandbox, pair["refresh_token"])
    validate(sandbox, "x")
    validate(sandbox, "y")

    stats = http(sandbox, "GET", "_sandbox/stats").json()

    assert stats == {
        "counts": {
            "authorize": 0,
            "authorize_post": 0,
            "token": 1,
            "validate": 2,
            "revoke": 0,
            "users": 0,
            "eventsub_create": 0,
            "eventsub_list": 0,
            "eventsub_delete": 0,
        },
        "refreshes": 1,
    }
    assert len(sandbox.requests) == 3  # control calls are not recorded


def test_control_calls_with_bad_arguments_answer_400(sandbox: Sandbox) -> None:
    bad_endpoint = http(sandbox, "POST", "_sandbox/fail", json_body={"endpoint": "x"})
    unknown_user = http(sandbox, "POST", "_sandbox/users/nobody/disconnect")
    bad_alter = http(
        sandbox,
        "POST",
        "_sandbox/alter",
        json_body={"endpoint": "token", "remove": "expires_in"},
    )

    assert bad_endpoint.status == 400
    assert "unknown endpoint" in bad_endpoint.json()["message"]
    assert unknown_user.status == 400
    assert bad_alter.status == 400
    assert "remove" in bad_alter.json()["message"]


def test_control_rate_limit_and_hang_take_the_python_options(
    sandbox: Sandbox,
) -> None:
    limit = {"endpoint": "validate", "times": 1, "reset_in": 5}
    http(sandbox, "POST", "_sandbox/rate-limit", json_body=limit)
    http(sandbox, "POST", "_sandbox/hang", json_body={"endpoint": "users", "times": 1})

    limited = validate(sandbox, "x")
    with pytest.raises(TimeoutError):
        http(sandbox, "GET", "helix/users", timeout=0.5)

    assert limited.status == 429
    assert limited.headers["Retry-After"] == "5"
    assert validate(sandbox, "x").status == 401
    assert helix_users(sandbox, "x").status == 401


def test_control_calls_refuse_what_the_python_api_refuses(sandbox: Sandbox) -> None:
    misspelt = http(
        sandbox, "POST", "_sandbox/fail", json_body={"endpoint": "token", "tims": 1}
    )
    missing = http(sandbox, "POST", "_sandbox/rate-limit", json_body={"times": 1})
    no_times = http(
        sandbox, "POST", "_sandbox/hang", json_body={"endpoint": "token", "times": 0}
    )
    too_many = http(sandbox, "POST", "_sandbox/tokens", json_body={"count": 10**6})
    not_an_object = http(sandbox, "POST", "_sandbox/fail", json_body=["token"])

    assert misspelt.status == 400
    assert "tims" in misspelt.json()["message"]
    assert missing.status == 400
    assert "endpoint" in missing.json()["message"]
    assert no_times.status == 400
    assert "times" in no_times.json()["message"]
    assert too_many.status == 400
    assert not_an_object.status == 400
    assert sandbox.tokens_issued() == []
    assert refresh(sandbox, "x").status == 400  # no fault was queued


def test_only_the_listed_sandbox_methods_are_reachable_over_http(
    sandbox: Sandbox,
) -> None:
    for name in ("start", "stop", "issue_tokens", "authorize", "ledger"):
        assert http(sandbox, "POST", f"_sandbox/{name}").status == 404


# Real clients ---------------------------------------------------------------


async def test_twitchapi_works_against_the_sandbox(sandbox: Sandbox) -> None:
    auth_url = sandbox.auth_base_url
    twitch = await Twitch(
        CLIENT_ID,
        CLIENT_SECRET,
        base_url=sandbox.api_base_url,
        auth_base_url=auth_url,
    )
    code = sandbox.authorize(login="alice", scopes=["chat:read"])
    authenticator = UserAuthenticator(
        twitch, [AuthScope.CHAT_READ], url=REDIRECT_URI, auth_base_url=auth_url
    )

    access, refresh_token = await authenticator.authenticate(user_token=code)
    validation = await validate_token(access, auth_base_url=auth_url)
    await twitch.set_user_authentication(access, [AuthScope.CHAT_READ], refresh_token)
    users = [user async for user in twitch.get_users()]
    new_access, _ = await refresh_access_token(
        refresh_token, CLIENT_ID, CLIENT_SECRET, auth_base_url=auth_url
    )
    revoked = await revoke_token(CLIENT_ID, new_access, auth_base_url=auth_url)
    await twitch.close()

    assert validation["login"] == "alice"
    assert [user.login for user in users] == ["alice"]
    assert revoked
    assert sandbox.count("token", grant_type="client_credentials") == 1
    code_exchange = sandbox.requests[1]
    assert code_exchange.query["grant_type"] == "authorization_code"


def test_command_line_serves_until_interrupted() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [
        sys.executable,
        "-m",
        "twitch_sandbox",
        "--port",
        str(port),
        "--redirect-uri",
        REDIRECT_URI,
    ]
    with subprocess.Popen(
        command, cwd=REPO, stdout=subprocess.PIPE, text=True
    ) as process:
        try:
            banner = process.stdout.readline() if process.stdout else ""
            url = f"http://127.0.0.1:{port}/_sandbox/stats"
            with urllib.request.urlopen(url, timeout=5) as response:
                stats = json.load(response)
            process.send_signal(signal.SIGINT)
            returncode = process.wait(timeout=5)
        finally:
            process.kill()

    assert f"127.0.0.1:{port}" in banner
    assert stats["refreshes"] == 0
    assert returncode == 0


# EventSub -------------------------------------------------------------------

REVOKE = "user.authorization.revoke"
SECRET = "the-eventsub-secret"
ENABLED = "enabled"
FAILED = "webhook_callback_verification_failed"
SUBSCRIPTIONS = "helix/eventsub/subscriptions"
RFC3339 = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?Z")


@dataclass
class Received:
    headers: Message
    body: bytes

    def json(self) -> dict[str, object]:
        return json.loads(self.body)

    @property
    def type(self) -> str:
        return self.headers["Twitch-Eventsub-Message-Type"]


Answer = Callable[[Received], tuple[int, str]]


def echo_challenge(message: Received) -> tuple[int, str]:
    if message.type == "webhook_callback_verification":
        return 200, message.json()["challenge"]
    return 204, ""


def signature(secret: str, headers: Mapping[str, str], body: bytes) -> str:
    signed = (
        headers["Twitch-Eventsub-Message-Id"]
        + headers["Twitch-Eventsub-Message-Timestamp"]
    ).encode() + body
    return "sha256=" + hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()


class Receiver:
    """A webhook callback served from a thread: it records every message and
    answers what ``answer`` says, as ``content_type``."""

    def __init__(self) -> None:
        self.received: list[Received] = []
        self.answer: Answer = echo_challenge
        self.content_type = "text/plain"
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                message = Received(self.headers, self.rfile.read(length))
                receiver.received.append(message)
                status, text = receiver.answer(message)
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", receiver.content_type)
                    self.send_header("Content-Length", str(len(text.encode())))
                    self.end_headers()
                    self.wfile.write(text.encode())
                except ConnectionError:
                    pass  # the sandbox gave up waiting: a timeout test

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/twitch/eventsub/"


class SiteLikeChecks:
    """Answers as the site must: 403 for a bad signature or a timestamp more
    than 10 minutes off, 204 the first time a message id is seen, 200 after."""

    def __init__(self) -> None:
        self.seen: set[str] = set()

    def __call__(self, message: Received) -> tuple[int, str]:
        headers = message.headers
        expected = signature(SECRET, headers, message.body)
        if not hmac.compare_digest(
            headers["Twitch-Eventsub-Message-Signature"], expected
        ):
            return 403, ""
        sent = datetime.fromisoformat(headers["Twitch-Eventsub-Message-Timestamp"])
        if abs(datetime.now(UTC) - sent) > timedelta(minutes=10):
            return 403, ""
        if headers["Twitch-Eventsub-Message-Id"] in self.seen:
            return 200, ""
        self.seen.add(headers["Twitch-Eventsub-Message-Id"])
        return 204, ""


@pytest.fixture(scope="module")
def callback_server() -> Iterator[Receiver]:
    receiver = Receiver()
    thread = threading.Thread(target=receiver.server.serve_forever, daemon=True)
    thread.start()
    yield receiver
    receiver.server.shutdown()
    receiver.server.server_close()


@pytest.fixture
def receiver(callback_server: Receiver, sandbox: Sandbox) -> Iterator[Receiver]:
    callback_server.received.clear()
    callback_server.answer = echo_challenge
    callback_server.content_type = "text/plain"
    sandbox.allow_insecure_callbacks = True  # the receiver is plain http
    yield callback_server
    sandbox.allow_insecure_callbacks = False


def app_token(sandbox: Sandbox) -> str:
    form = {
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
        "grant_type": "client_credentials",
    }
    return http(sandbox, "POST", "oauth2/token", form=form).json()["access_token"]


def helix_headers(token: str, client_id: str = CLIENT_ID) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", "Client-Id": client_id}


def subscription_body(callback: str, secret: str = SECRET) -> dict[str, object]:
    return {
        "type": REVOKE,
        "version": "1",
        "condition": {"client_id": CLIENT_ID},
        "transport": {"method": "webhook", "callback": callback, "secret": secret},
    }


def create_subscription(
    sandbox: Sandbox, callback: str, *, token: str | None = None, **changes: object
) -> Reply:
    body = {**subscription_body(callback), **changes}
    headers = helix_headers(token or app_token(sandbox))
    return http(sandbox, "POST", SUBSCRIPTIONS, json_body=body, headers=headers)


def subscribe(sandbox: Sandbox, callback: str, status: str = ENABLED) -> dict:
    """A subscription whose verification is over and ended in ``status``."""
    reply = create_subscription(sandbox, callback)
    assert reply.status == 202, reply.text
    subscription_id = reply.json()["data"][0]["id"]
    return sandbox.wait_for_subscription_status(subscription_id, status)


def list_subscriptions(sandbox: Sandbox, **query: str) -> Reply:
    headers = helix_headers(app_token(sandbox))
    return http(sandbox, "GET", SUBSCRIPTIONS, query=query, headers=headers)


def test_creating_a_subscription_answers_202_pending_without_the_secret(
    sandbox: Sandbox, receiver: Receiver
) -> None:
    reply = create_subscription(sandbox, receiver.url)

    assert reply.status == 202
    assert reply.headers["Content-Type"] == "application/json"
    body = reply.json()
    assert set(body) == {"data", "total", "total_cost", "max_total_cost"}
    assert (body["total"], body["total_cost"], body["max_total_cost"]) == (1, 0, 10000)
    [subscription] = body["data"]
    assert list(subscription) == [
        "id",
        "status",
        "type",
        "version",
        "condition",
        "created_at",
        "transport",
        "cost",
    ]
    assert uuid.UUID(subscription["id"]).version == 4
    assert subscription["status"] == "webhook_callback_verification_pending"
    assert (subscription["type"], subscription["version"]) == (REVOKE, "1")
    assert subscription["condition"] == {"client_id": CLIENT_ID}
    assert RFC3339.fullmatch(subscription["created_at"])
    assert subscription["transport"] == {"method": "webhook", "callback": receiver.url}
    assert subscription["cost"] == 0
    assert SECRET not in reply.text
    sandbox.wait_for_subscription_status(subscription["id"], ENABLED)


def test_echoing_the_signed_challenge_enables_the_subscription(
    sandbox: Sandbox, receiver: Receiver
) -> None:
    pending = create_subscription(sandbox, receiver.url).json()["data"][0]

    enabled = sandbox.wait_for_subscription_status(pending["id"], ENABLED)

    [challenge] = receiver.received
    headers = challenge.headers
    assert headers["Twitch-Eventsub-Message-Type"] == "webhook_callback_verification"
    assert headers["Twitch-Eventsub-Message-Retry"] == "0"
    assert headers["Twitch-Eventsub-Subscription-Type"] == REVOKE
    assert headers["Twitch-Eventsub-Subscription-Version"] == "1"
    assert headers["Content-Type"] == "application/json"
    assert uuid.UUID(headers["Twitch-Eventsub-Message-Id"])
    assert RFC3339.fullmatch(headers["Twitch-Eventsub-Message-Timestamp"])
    assert headers["Twitch-Eventsub-Message-Signature"] == signature(
        SECRET, headers, challenge.body
    )
    assert set(challenge.json()) == {"challenge", "subscription"}
    assert challenge.json()["subscription"] == pending
    assert enabled == {**pending, "status": ENABLED}
    assert sandbox.subscriptions() == [enabled]
    [delivery] = sandbox.deliveries
    assert delivery.message_type == "webhook_callback_verification"
    assert delivery.message_id == headers["Twitch-Eventsub-Message-Id"]
    assert delivery.subscription_id == pending["id"]
    assert delivery.status == 200
    assert delivery.body == challenge.body.decode()


def test_an_echo_sent_as_another_content_type_is_still_accepted(
    sandbox: Sandbox, receiver: Receiver
) -> None:
    receiver.content_type = "application/json"

    assert subscribe(sandbox, receiver.url)["status"] == ENABLED


@pytest.mark.parametrize(
    "answer",
    [
        lambda message: (200, "not the challenge"),
        lambda message: (200, message.json()["challenge"] + "\n"),
        lambda message: (500, message.json()["challenge"]),
        lambda message: (302, message.json()["challenge"]),
    ],
    ids=["wrong", "trailing-newline", "error-status", "redirect"],
)
def test_verification_fails_unless_the_challenge_comes_back_exactly(
    sandbox: Sandbox, receiver: Receiver, answer: Answer
) -> None:
    receiver.answer = answer
    reply = create_subscription(sandbox, receiver.url)
    subscription_id = reply.json()["data"][0]["id"]

    failed = sandbox.wait_for_subscription_status(subscription_id, FAILED)

    assert failed["status"] == FAILED
    with pytest.raises(ValueError, match=FAILED):
        sandbox.wait_for_subscription_status(subscription_id, ENABLED)


def test_an_unreachable_callback_fails_verification(
    sandbox: Sandbox, receiver: Receiver
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # nobody listens there once closed

    subscription = subscribe(sandbox, f"http://127.0.0.1:{port}/", status=FAILED)

    [delivery] = sandbox.deliveries
    assert (delivery.subscription_id, delivery.status) == (subscription["id"], 0)


def test_a_callback_too_slow_to_answer_fails_verification(
    sandbox: Sandbox, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(twitch_sandbox.webhooks, "DELIVERY_TIMEOUT", 0.2)

    def slow(message: Received) -> tuple[int, str]:
        time.sleep(0.5)
        return echo_challenge(message)

    receiver.answer = slow

    subscribe(sandbox, receiver.url, status=FAILED)

    assert [d.status for d in sandbox.deliveries] == [0]


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Client-Id": CLIENT_ID},
        {"Authorization": "Bearer not-a-token", "Client-Id": CLIENT_ID},
        "user token",
        "other client",
        "OAuth scheme",
    ],
)
def test_every_subscription_call_needs_an_app_token_of_this_client(
    sandbox: Sandbox, receiver: Receiver, headers: dict[str, str] | str
) -> None:
    if headers == "user token":
        token = sandbox.issue_tokens(login="alice")["access_token"]
        headers = helix_headers(token)
    elif headers == "other client":
        headers = helix_headers(app_token(sandbox), client_id="someone-else")
    elif headers == "OAuth scheme":
        headers = {"Authorization": f"OAuth {app_token(sandbox)}"}
        headers["Client-Id"] = CLIENT_ID
    body = subscription_body(receiver.url)

    replies = [
        http(sandbox, "POST", SUBSCRIPTIONS, json_body=body, headers=headers),
        http(sandbox, "GET", SUBSCRIPTIONS, headers=headers),
        http(sandbox, "DELETE", SUBSCRIPTIONS, query={"id": "x"}, headers=headers),
    ]

    for reply in replies:
        assert reply.status == 401
        assert reply.json()["error"] == "Unauthorized"
        assert reply.json()["status"] == 401
        assert reply.json()["message"]
    assert sandbox.subscriptions() == []
    assert receiver.received == []


@pytest.mark.parametrize(
    "changes",
    [
        {"type": "channel.follow"},
        {"type": None},
        {"version": "2"},
        {"version": 1},
        {"condition": {"client_id": "someone-else"}},
        {"condition": {"client_id": CLIENT_ID, "user_id": "1"}},
        {"condition": None},
        {"transport": {"method": "websocket", "session_id": "x"}},
        {"transport": {"method": "webhook", "secret": SECRET}},
        {"secret": "123456789"},
        {"secret": "x" * 101},
        {"secret": "é" * 12},
        {"secret": None},
    ],
)
def test_creating_refuses_what_twitch_refuses(
    sandbox: Sandbox, receiver: Receiver, changes: dict[str, object]
) -> None:
    body = subscription_body(receiver.url)
    if "secret" in changes:
        body["transport"] = {**body["transport"], "secret": changes.pop("secret")}
    body.update(changes)
    body = {key: value for key, value in body.items() if value is not None}
    headers = helix_headers(app_token(sandbox))

    reply = http(sandbox, "POST", SUBSCRIPTIONS, json_body=body, headers=headers)

    assert reply.status == 400
    assert reply.json()["error"] == "Bad Request"
    assert sandbox.subscriptions() == []


@pytest.mark.parametrize(
    ("data", "content_type"),
    [
        (b"{not json", "application/json"),
        (b'["a list"]', "application/json"),
        (json.dumps(subscription_body("https://127.0.0.1/")).encode(), "text/plain"),
    ],
)
def test_creating_refuses_a_body_that_is_not_a_json_object(
    sandbox: Sandbox, data: bytes, content_type: str
) -> None:
    headers = {**helix_headers(app_token(sandbox)), "Content-Type": content_type}

    reply = http(sandbox, "POST", SUBSCRIPTIONS, data=data, headers=headers)

    assert reply.status == 400
    assert reply.json()["error"] == "Bad Request"


@pytest.mark.parametrize(
    "callback",
    [
        "http://127.0.0.1/twitch/eventsub/",
        "https://127.0.0.1:8443/twitch/eventsub/",
        "https:///no-host",
        "https://127.0.0.1:99999/",
        "ftp://127.0.0.1/",
        "not a url",
    ],
)
def test_callbacks_must_be_https_on_port_443(sandbox: Sandbox, callback: str) -> None:
    assert create_subscription(sandbox, callback).status == 400
    # Port 443 on this machine: accepted, then verification cannot connect.
    subscribe(sandbox, "https://127.0.0.1/twitch/eventsub/", status=FAILED)


def test_insecure_callbacks_can_be_allowed_for_a_local_site(
    sandbox: Sandbox, receiver: Receiver
) -> None:
    assert sandbox.allow_insecure_callbacks
    assert create_subscription(sandbox, "ftp://127.0.0.1/").status == 400

    assert subscribe(sandbox, receiver.url)["status"] == ENABLED


def test_a_duplicate_is_a_conflict_while_the_first_is_pending_or_enabled(
    sandbox: Sandbox, receiver: Receiver
) -> None:
    first = create_subscription(sandbox, receiver.url).json()["data"][0]
    while_pending = create_subscription(sandbox, receiver.url)
    sandbox.wait_for_subscription_status(first["id"], ENABLED)
    while_enabled = create_subscription(sandbox, receiver.url)

    for reply in (while_pending, while_enabled):
        assert reply.status == 409
        assert reply.json() == {
            "error": "Conflict",
            "status": 409,
            "message": "subscription already exists",
        }
    assert len(sandbox.subscriptions()) == 1
    assert subscribe(sandbox, receiver.url + "?other")["status"] == ENABLED


def test_a_failed_or_revoked_subscription_does_not_block_a_new_one(
    sandbox: Sandbox, receiver: Receiver
) -> None:
    receiver.answer = lambda message: (200, "no")
    subscribe(sandbox, receiver.url, status=FAILED)
    receiver.answer = echo_challenge
    revoked = subscribe(sandbox, receiver.url)
    sandbox.revoke_subscription(revoked["id"])

    assert subscribe(sandbox, receiver.url)["status"] == ENABLED
    assert [s["status"] for s in sandbox.subscriptions()] == [
        FAILED,
        "authorization_revoked",
        ENABLED,
    ]


def test_listing_shows_every_subscription_and_filters_by_one_field(
    sandbox: Sandbox, receiver: Receiver
) -> None:
    enabled = subscribe(sandbox, receiver.url)
    receiver.answer = lambda message: (200, "no")
    failed = subscribe(sandbox, receiver.url + "?b", status=FAILED)

    everything = list_subscriptions(sandbox)
    by_status = list_subscriptions(sandbox, status=FAILED)
    by_type = list_subscriptions(sandbox, type=REVOKE)
    other_type = list_subscriptions(sandbox, type="channel.follow")
    by_id = list_subscriptions(sandbox, subscription_id=enabled["id"])
    by_user = list_subscriptions(sandbox, user_id="100000001")

    assert everything.status == 200
    assert everything.json() == {
        "data": [enabled, failed],
        "total": 2,
        "total_cost": 0,
        "max_total_cost": 10000,
        "pagination": {},
    }
    assert by_status.json()["data"] == [failed]
    assert by_type.json()["data"] == [enabled, failed]
    assert other_type.json()["data"] == []
    assert by_id.json()["data"] == [enabled]
    assert by_user.json()["data"] == []
    assert other_type.json()["total"] == 2  # all the app has, filtered or not
    assert sandbox.subscriptions() == [enabled, failed]


def test_listing_refuses_two_filters_or_an_unknown_status(sandbox: Sandbox) -> None:
    two = list_subscriptions(sandbox, status=ENABLED, type=REVOKE)
    unknown = list_subscriptions(sandbox, status="asleep")

    assert (two.status, unknown.status) == (400, 400)
    assert two.json()["error"] == unknown.json()["error"] == "Bad Request"


def test_deleting_a_subscription_answers_204_then_404(
    sandbox: Sandbox, receiver: Receiver
) -> None:
    subscription = subscribe(sandbox, receiver.url)
    headers = helix_headers(app_token(sandbox))
    query = {"id": subscription["id"]}

    deleted = http(sandbox, "DELETE", SUBSCRIPTIONS, query=query, headers=headers)
    again = http(sandbox, "DELETE", SUBSCRIPTIONS, query=query, headers=headers)
    no_id = http(sandbox, "DELETE", SUBSCRIPTIONS, headers=headers)

    assert (deleted.status, deleted.body) == (204, b"")
    assert again.status == 404
    assert again.json() == {
        "error": "Not Found",
        "status": 404,
        "message": "subscription not found",
    }
    assert no_id.status == 400
    assert no_id.json()["error"] == "Bad Request"
    assert sandbox.subscriptions() == []
    assert list_subscriptions(sandbox).json()["data"] == []


def test_disconnecting_a_user_notifies_each_enabled_revoke_subscription(
    sandbox: Sandbox, receiver: Receiver
) -> None:
    pair = sandbox.issue_tokens(login="alice", scopes=["chat:read"])
    subscription = subscribe(sandbox, receiver.url)
    receiver.answer = lambda message: (200, "no")
    subscribe(sandbox, receiver.url + "?failed", status=FAILED)
    receiver.answer = echo_challenge
    receiver.received.clear()

    sandbox.disconnect_user("alice")

    assert not sandbox.is_refresh_token_valid(pair["refresh_token"])
    [notification] = receiver.received  # the failed subscription gets nothing
    headers = notification.headers
    assert notification.type == "notification"
    assert headers["Twitch-Eventsub-Message-Retry"] == "0"
    assert headers["Twitch-Eventsub-Subscription-Type"] == REVOKE
    assert headers["Twitch-Eventsub-Subscription-Version"] == "1"
    assert RFC3339.fullmatch(headers["Twitch-Eventsub-Message-Timestamp"])
    assert headers["Twitch-Eventsub-Message-Signature"] == signature(
        SECRET, headers, notification.body
    )
    assert notification.json() == {
        "subscription": subscription,
        "event": {
            "client_id": CLIENT_ID,
            "user_id": sandbox.add_user("alice").id,
            "user_login": "alice",
            "user_name": "Alice",
        },
    }
    delivery = sandbox.deliveries[-1]
    assert delivery.message_type == "notification"
    assert delivery.message_id == headers["Twitch-Eventsub-Message-Id"]
    assert (delivery.subscription_id, delivery.status) == (subscription["id"], 204)


def test_a_deleted_user_is_announced_with_null_login_and_name(
    sandbox: Sandbox, receiver: Receiver
) -> None:
    user = sandbox.add_user("alice")
    subscribe(sandbox, receiver.url)

    sandbox.disconnect_user("alice", gone=True)

    assert receiver.received[-1].json()["event"] == {
        "client_id": CLIENT_ID,
        "user_id": user.id,
        "user_login": None,
        "user_name": None,
    }


def test_revoking_a_subscription_sends_a_signed_revocation(
    sandbox: Sandbox, receiver: Receiver
) -> None:
    sandbox.add_user("alice")
    subscription = subscribe(sandbox, receiver.url)

    sandbox.revoke_subscription(subscription["id"], reason="user_removed")

    revocation = receiver.received[-1]
    assert revocation.type == "revocation"
    assert revocation.headers["Twitch-Eventsub-Message-Signature"] == signature(
        SECRET, revocation.headers, revocation.body
    )
    revoked = {**subscription, "status": "user_removed"}
    assert revocation.json() == {"subscription": revoked}
    assert sandbox.subscriptions() == [revoked]
    assert sandbox.deliveries[-1].message_type == "revocation"
    sandbox.disconnect_user("alice")
    assert receiver.received[-1] is revocation  # revoked: told nothing more
    with pytest.raises(ValueError, match="not enabled"):
        sandbox.revoke_subscription(subscription["id"])


def test_revoking_needs_a_known_subscription_and_reason(
    sandbox: Sandbox, receiver: Receiver
) -> None:
    subscription = subscribe(sandbox, receiver.url)

    with pytest.raises(KeyError):
        sandbox.revoke_subscription("no-such-id")
    with pytest.raises(ValueError, match="reason"):
        sandbox.revoke_subscription(subscription["id"], reason="bored")
    assert sandbox.subscriptions() == [subscription]


def test_notification_messages_can_be_replayed_forged_or_stale(
    sandbox: Sandbox, receiver: Receiver
) -> None:
    sandbox.add_user("alice")
    subscription = subscribe(sandbox, receiver.url)
    receiver.answer = SiteLikeChecks()
    message = sandbox.notification_message("alice")
    received_before = len(receiver.received)

    fresh = sandbox.deliver(message)
    replayed = sandbox.deliver(message)
    forged = sandbox.deliver(
        sandbox.notification_message("alice", secret="not-the-secret")
    )
    stale = sandbox.deliver(
        sandbox.notification_message(
            "alice", timestamp=datetime.now(UTC) - timedelta(minutes=11)
        )
    )
    same_id = sandbox.deliver(
        sandbox.notification_message(
            "alice", message_id=message.headers["Twitch-Eventsub-Message-Id"]
        )
    )
    tampered = sandbox.deliver(
        replace(message, body=message.body.replace(b"alice", b"mallory"))
    )

    assert (fresh, replayed, forged, stale, same_id, tampered) == (
        204,
        200,
        403,
        403,
        200,
        403,
    )
    assert json.loads(message.body)["subscription"] == subscription
    assert message.subscription_id == subscription["id"]
    assert receiver.received[received_before].body == message.body
    assert len(receiver.received) == received_before + 6
    assert [d.status for d in sandbox.deliveries[-6:]] == [204, 200, 403, 403, 200, 403]


def test_a_notification_message_carries_the_timestamp_and_id_it_was_given(
    sandbox: Sandbox, receiver: Receiver
) -> None:
    sandbox.add_user("alice")
    subscribe(sandbox, receiver.url)
    when = datetime(2026, 11, 29, 15, 0, 0, 123456, tzinfo=UTC)

    message = sandbox.notification_message(
        "alice", timestamp=when, message_id="the-id", gone=True
    )

    assert isinstance(message, WebhookMessage)
    assert message.headers["Twitch-Eventsub-Message-Timestamp"] == (
        "2026-11-29T15:00:00.123456Z"
    )
    assert message.headers["Twitch-Eventsub-Message-Id"] == "the-id"
    assert message.headers["Twitch-Eventsub-Message-Signature"] == signature(
        SECRET, message.headers, message.body
    )
    assert json.loads(message.body)["event"]["user_login"] is None
    assert receiver.received[-1].type == "webhook_callback_verification"  # unsent


def test_a_notification_message_needs_one_enabled_subscription_or_its_id(
    sandbox: Sandbox, receiver: Receiver
) -> None:
    sandbox.add_user("alice")
    with pytest.raises(ValueError, match="0 enabled"):
        sandbox.notification_message("alice")
    first = subscribe(sandbox, receiver.url)
    subscribe(sandbox, receiver.url + "?second")

    with pytest.raises(ValueError, match="2 enabled"):
        sandbox.notification_message("alice")
    with pytest.raises(KeyError):
        sandbox.notification_message("nobody", subscription_id=first["id"])
    with pytest.raises(ValueError, match="timezone"):
        sandbox.notification_message(
            "alice", subscription_id=first["id"], timestamp=datetime(2026, 1, 1)
        )
    named = sandbox.notification_message("alice", subscription_id=first["id"])
    assert named.subscription_id == first["id"]


def test_subscription_endpoints_are_recorded_and_take_faults(
    sandbox: Sandbox, receiver: Receiver
) -> None:
    sandbox.fail("eventsub_create", status=503, times=1)
    sandbox.fail("eventsub_list", status=500, times=1)

    failed = create_subscription(sandbox, receiver.url)
    created = create_subscription(sandbox, receiver.url)
    failed_list = list_subscriptions(sandbox)

    assert failed.status == 503
    assert created.status == 202
    assert failed_list.status == 500
    assert len(sandbox.subscriptions()) == 1  # the fault created nothing
    assert sandbox.count("eventsub_create") == 2
    assert sandbox.count("eventsub_list") == 1
    recorded = [r for r in sandbox.requests if r.endpoint.startswith("eventsub")]
    assert [(r.method, r.status) for r in recorded] == [
        ("POST", 503),
        ("POST", 202),
        ("GET", 500),
    ]
    sandbox.wait_for_subscription_status(created.json()["data"][0]["id"], ENABLED)


def test_control_endpoints_list_wait_disconnect_revoke_and_show_deliveries(
    sandbox: Sandbox, receiver: Receiver
) -> None:
    sandbox.add_user("alice")
    reply = create_subscription(sandbox, receiver.url)
    subscription_id = reply.json()["data"][0]["id"]
    base = f"_sandbox/eventsub/subscriptions/{subscription_id}"

    waited = http(sandbox, "POST", f"{base}/wait", json_body={"status": ENABLED})
    disconnected = http(
        sandbox, "POST", "_sandbox/users/alice/disconnect", json_body={"gone": True}
    )
    revoked = http(
        sandbox, "POST", f"{base}/revoke", json_body={"reason": "user_removed"}
    )
    listed = http(sandbox, "GET", "_sandbox/eventsub/subscriptions")
    deliveries = http(sandbox, "GET", "_sandbox/eventsub/deliveries")
    unknown = http(
        sandbox,
        "POST",
        "_sandbox/eventsub/subscriptions/nope/wait",
        json_body={"status": ENABLED},
    )

    assert waited.json()["status"] == ENABLED
    assert listed.json() == [{**waited.json(), "status": "user_removed"}]
    assert disconnected.json() == revoked.json() == {"ok": True}
    assert [d["message_type"] for d in deliveries.json()] == [
        "webhook_callback_verification",
        "notification",
        "revocation",
    ]
    assert deliveries.json()[1]["status"] == 204
    assert receiver.received[1].json()["event"]["user_login"] is None
    assert unknown.status == 400


def test_waiting_for_a_status_gives_up_after_the_timeout(
    sandbox: Sandbox, receiver: Receiver
) -> None:
    answered = threading.Event()

    def late(message: Received) -> tuple[int, str]:
        answered.wait(5)
        return echo_challenge(message)

    receiver.answer = late
    reply = create_subscription(sandbox, receiver.url)
    subscription_id = reply.json()["data"][0]["id"]

    with pytest.raises(TimeoutError):
        sandbox.wait_for_subscription_status(subscription_id, ENABLED, timeout=0.1)
    answered.set()
    assert sandbox.wait_for_subscription_status(subscription_id, ENABLED)


def test_reset_forgets_subscriptions_and_deliveries(
    sandbox: Sandbox, receiver: Receiver
) -> None:
    subscribe(sandbox, receiver.url)

    sandbox.reset()

    assert sandbox.subscriptions() == []
    assert sandbox.deliveries == []
    assert sandbox.allow_insecure_callbacks  # configuration stays


def test_notifying_needs_the_sandbox_running(receiver: Receiver) -> None:
    other = Sandbox(
        client_id=CLIENT_ID, client_secret=CLIENT_SECRET, allow_insecure_callbacks=True
    ).start()
    try:
        other.add_user("alice")
        subscribe(other, receiver.url)
    finally:
        other.stop()

    with pytest.raises(RuntimeError, match="not running"):
        other.disconnect_user("alice")


async def test_twitchapi_manages_subscriptions_on_the_sandbox(
    sandbox: Sandbox, receiver: Receiver
) -> None:
    twitch = await Twitch(
        CLIENT_ID,
        CLIENT_SECRET,
        base_url=sandbox.api_base_url,
        auth_base_url=sandbox.auth_base_url,
    )
    transport = {"method": "webhook", "callback": receiver.url, "secret": SECRET}
    condition = {"client_id": CLIENT_ID}

    await twitch.create_eventsub_subscription(REVOKE, "1", condition, transport)
    [created] = sandbox.subscriptions()
    sandbox.wait_for_subscription_status(created["id"], ENABLED)
    listed = await twitch.get_eventsub_subscriptions()
    await twitch.delete_eventsub_subscription(created["id"])
    await twitch.close()

    assert [(s.id, s.status, s.type) for s in listed.data] == [
        (created["id"], ENABLED, REVOKE)
    ]
    assert listed.total == 1
    assert sandbox.subscriptions() == []
