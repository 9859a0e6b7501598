"""The sandbox's OAuth endpoints and Helix `GET /users`, over real HTTP,
against shared/twitch-oauth.md: authorize, token, validate, revoke, what
expiry and disconnects leave alive, and twitchAPI as a client."""

from __future__ import annotations

import time
import types

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
from tests.conftest import (
    CLIENT_ID,
    CLIENT_SECRET,
    REDIRECT_URI,
    Reply,
    helix_users,
    http,
    refresh,
    validate,
)
from twitch_sandbox import LiveTokens, Sandbox

OTHER_REDIRECT_URI = "http://testserver/other/callback/"


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


# Authorize ------------------------------------------------------------------------


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
    query = authorize_query(state='"><script>alert(1)</script>')

    page = http(sandbox, "GET", "oauth2/authorize", query=query).text

    assert "<script>" not in page
    assert "&lt;script&gt;" in page


@pytest.mark.parametrize("scope", ["chat:raed", "<b>x</b>", "Chat:Read"])
def test_a_scope_twitch_does_not_have_gets_an_error_page_and_nobody_is_sent_back(
    sandbox: Sandbox, scope: str
) -> None:
    # Twitch refuses the whole request (twitch-cli's mock: 400 "Invalid scopes
    # requested"); a typo in TWITCH_SCOPES fails here as it would in production.
    query = authorize_query(scope=f"chat:read {scope}")

    reply = http(sandbox, "GET", "oauth2/authorize", query=query)

    assert reply.status == 400
    assert reply.headers.get_content_type() == "text/html"
    assert "invalid scope requested" in reply.text
    assert "Location" not in reply.headers
    assert "<b>x</b>" not in reply.text


def test_a_scope_twitch_has_removed_gets_twitchs_unavailable_page(
    sandbox: Sandbox,
) -> None:
    query = authorize_query(scope="chat:read channel_subscriptions")

    reply = http(sandbox, "GET", "oauth2/authorize", query=query)

    assert reply.status == 400
    assert "scope you are requesting is currently unavailable" in reply.text


@pytest.mark.parametrize(
    "scope", ["openid", "channel:manage:clips", "moderator:read:guest_star"]
)
def test_scopes_twitch_has_and_twitchapi_lacks_are_asked_for(
    sandbox: Sandbox, scope: str
) -> None:
    reply = http(sandbox, "GET", "oauth2/authorize", query=authorize_query(scope=scope))

    assert reply.status == 200
    assert scope in reply.text


def test_a_consent_form_edited_to_an_unknown_scope_is_refused(
    sandbox: Sandbox,
) -> None:
    form = {**authorize_query(scope="chat:read chat:evil"), "login": "alice"}

    reply = http(
        sandbox, "POST", "oauth2/authorize", form={**form, "action": "authorize"}
    )

    assert reply.status == 400
    assert "invalid scope requested" in reply.text
    assert "Location" not in reply.headers


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


# Token ----------------------------------------------------------------------------


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


# Validate and revoke --------------------------------------------------------------


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


# Helix ----------------------------------------------------------------------------


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


# Expiry, disconnects, live tokens -------------------------------------------------


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


# Real clients ---------------------------------------------------------------------


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
