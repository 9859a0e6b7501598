"""The Twitch sandbox, over real HTTP, against shared/twitch-oauth.md."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
import types
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from email.message import Message
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
from twitch_sandbox import LiveTokens, Sandbox

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
    headers: Mapping[str, str] | None = None,
    timeout: float = 5.0,
) -> Reply:
    url = sandbox.base_url + path + (f"?{urlencode(query)}" if query else "")
    data = None
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
        "Parameter+redirect_uri+does+not+match+registered+URI&state=the-state"
    )


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
