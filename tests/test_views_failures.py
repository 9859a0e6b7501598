"""Connect Twitch when Twitch or the database fails: a page that says what
happened, nothing stored, no grant left alive at Twitch, and operators
alerted when the site itself is misconfigured."""

from __future__ import annotations

import time

import pytest
from asgiref.sync import sync_to_async
from django.test import AsyncClient

from accounts.models import TwitchToken
from tests.conftest import (
    adatabase_refuses_token_writes,
    connect_twitch,
    page,
    start_connect,
)

pytestmark = pytest.mark.django_db(transaction=True)


# --- Twitch says no, or is down -------------------------------------------------------


async def test_access_denied_shows_a_friendly_message_and_stores_nothing(
    alice_client, sandbox
):
    response = await connect_twitch(alice_client, login="x", approve=False)

    assert response.status_code == 400
    assert "You cancelled the connection on Twitch" in page(response)
    assert sandbox.count("token") == 0
    assert await TwitchToken.objects.acount() == 0


async def test_redirect_mismatch_is_explained(alice_client, sandbox):
    sandbox.redirect_uris[:] = ["http://testserver/twitch/callback/?elsewhere"]
    await alice_client.post("/twitch/connect/")
    response = await alice_client.get(
        "/twitch/callback/",
        {"error": "redirect_mismatch", "error_description": "Parameter redirect_uri"},
    )
    assert response.status_code == 400
    assert "does not recognise this site's return address" in page(response)


async def test_free_text_from_the_callback_url_is_never_shown(alice_client):
    query = await start_connect(alice_client)
    response = await alice_client.get(
        "/twitch/callback/",
        {
            "state": query["state"],
            "error": "call_evil_support_now",
            "error_description": "Call +1 555 0100",
        },
    )
    assert response.status_code == 400
    assert "evil" not in page(response) and "555" not in page(response)
    assert "unknown error" in page(response)


@pytest.mark.parametrize(
    ("endpoint", "fault"),
    [
        ("token", {"status": 500}),
        ("token", {"status": 200, "body": "<html>not json</html>"}),
        ("token", {"status": 502, "body": "<html>Bad gateway</html>"}),
        ("validate", {"status": 503}),
    ],
)
async def test_twitch_failures_show_a_clear_page_store_nothing_and_a_retry_works(
    alice_client, sandbox, settings, endpoint, fault
):
    if endpoint == "validate":
        # Only a callback without OpenID Connect waits for validation.
        settings.TWITCH_OPENID_CONNECT = False
    sandbox.fail(endpoint, times=1, **fault)

    response = await connect_twitch(alice_client, login="alicestreams")

    assert response.status_code == 502
    assert "Twitch could not be reached" in page(response)
    assert await TwitchToken.objects.acount() == 0
    retried = await connect_twitch(alice_client, login="alicestreams")
    assert retried.status_code == 302
    assert await TwitchToken.objects.filter(login="alicestreams").aexists()


async def test_a_token_endpoint_that_hangs_times_out_with_a_clear_page(
    alice_client, sandbox, short_timeout
):
    sandbox.hang("token", times=1)
    started = time.monotonic()
    response = await connect_twitch(alice_client, login="alicestreams")
    # Half the 8 s production timeout: the test's short one applied, and nothing
    # waits out the hang.
    assert time.monotonic() - started < 4

    assert response.status_code == 502
    assert "Twitch could not be reached" in page(response)
    assert await TwitchToken.objects.acount() == 0
    retried = await connect_twitch(alice_client, login="alicestreams")
    assert retried.status_code == 302


async def test_an_unreachable_twitch_shows_a_clear_page(alice_client, settings):
    settings.TWITCH_AUTH_BASE_URL = "http://127.0.0.1:9/oauth2/"
    query = await start_connect(alice_client)
    response = await alice_client.get(
        "/twitch/callback/", {"code": "abc", "state": query["state"]}
    )
    assert response.status_code == 502
    assert "Twitch could not be reached" in page(response)


async def test_a_used_code_is_refused_with_a_clear_page(alice_client, sandbox):
    query = await start_connect(alice_client)
    code = sandbox.authorize(
        login="x",
        scopes=["chat:read"],
        redirect_uri="http://testserver/twitch/callback/",
    )
    sandbox.fail(
        "token",
        status=400,
        body={"status": 400, "message": "Invalid authorization code"},
        times=1,
    )
    response = await alice_client.get(
        "/twitch/callback/", {"code": code, "state": query["state"]}
    )
    assert response.status_code == 400
    assert "Twitch did not accept this sign-in" in page(response)


async def test_a_wrong_client_secret_is_a_502_for_the_user(alice_client, settings):
    settings.TWITCH_CLIENT_SECRET = "wrong"
    response = await connect_twitch(alice_client, login="x")
    assert response.status_code == 502
    assert "tell the site's staff" in page(response)
    assert await TwitchToken.objects.acount() == 0


# --- Misconfiguration alerts operators ------------------------------------------------


async def test_a_redirect_mismatch_alerts_operators_only_from_our_own_flow(
    alice_client, caplog
):
    # Anyone can send a browser to this link: it is not Twitch talking.
    await alice_client.get("/twitch/callback/", {"error": "redirect_mismatch"})
    assert not [r for r in caplog.records if r.levelname == "ERROR"]

    state = (await start_connect(alice_client))["state"]
    await alice_client.get(
        "/twitch/callback/", {"error": "redirect_mismatch", "state": state}
    )
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "TWITCH_REDIRECT_URI" in errors[0].getMessage()


async def test_a_redirect_mismatch_without_state_alerts_once_per_pending_flow(
    alice_client, caplog
):
    def errors() -> int:
        return len([r for r in caplog.records if r.levelname == "ERROR"])

    await start_connect(alice_client)
    for _ in range(50):  # the browser reloads the page Twitch sent it to
        response = await alice_client.get(
            "/twitch/callback/", {"error": "redirect_mismatch"}
        )
        assert response.status_code == 400
    assert errors() == 1

    await start_connect(alice_client)  # a new flow, the same answer: news again
    for _ in range(3):
        await alice_client.get("/twitch/callback/", {"error": "redirect_mismatch"})
    assert errors() == 2


async def test_a_return_address_twitch_does_not_know_alerts_operators(
    alice_client, sandbox, settings, caplog
):
    # Twitch sends the browser to the app's first registered address, maybe
    # without the state; this browser did start a flow, so it is Twitch talking.
    settings.TWITCH_REDIRECT_URI = "http://testserver/twitch/calback/"

    response = await connect_twitch(alice_client, login="alicestreams")

    assert response.status_code == 400
    assert "does not recognise this site's return address" in page(response)
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "TWITCH_REDIRECT_URI" in errors[0].getMessage()


# --- A fresh grant is never orphaned --------------------------------------------------


def assert_grant_revoked(sandbox, login: str) -> None:
    """Twitch issued a pair that the site does not keep: its access token is ended.

    (Twitch's revoke ends access tokens only; the refresh token, which the site
    never stored, may survive.)
    """
    assert sandbox.count("revoke") == 1
    assert sandbox.live_tokens(login).access == []


@pytest.mark.parametrize(
    "fault",
    [
        lambda sandbox: sandbox.fail("validate", status=503, times=1),
        lambda sandbox: sandbox.fail("validate", status=200, body="<html>", times=1),
        lambda sandbox: sandbox.alter("validate", set={"login": "x" * 300}, times=1),
        lambda sandbox: sandbox.alter("validate", set={"login": "a\u0000b"}, times=1),
        lambda sandbox: sandbox.alter("validate", set={"user_id": "12ab"}, times=1),
        lambda sandbox: sandbox.alter("validate", set={"scopes": "chat:read"}, times=1),
        lambda sandbox: sandbox.alter("validate", remove=["user_id"], times=1),
    ],
    ids=[
        "validate-down",
        "not-json",
        "login-300-characters",
        "login-with-nul",
        "user-id-not-digits",
        "scopes-not-a-list",
        "user-id-missing",
    ],
)
async def test_a_failed_validation_after_the_exchange_revokes_the_new_grant(
    alice_client, sandbox, settings, fault
):
    # Without OpenID Connect the callback validates before it answers (with it,
    # after: tests/test_oidc_connect.py).
    settings.TWITCH_OPENID_CONNECT = False
    fault(sandbox)

    response = await connect_twitch(alice_client, login="alicestreams")

    assert response.status_code == 502
    assert "Nothing was changed" in page(response)
    assert await TwitchToken.objects.acount() == 0
    assert_grant_revoked(sandbox, "alicestreams")


async def test_a_status_field_in_a_validate_answer_is_not_taken_for_its_status(
    alice_client, sandbox
):
    # Twitch's status is the HTTP one; a body may say anything, even "oops".
    sandbox.alter("validate", set={"status": "oops"}, times=1)

    response = await connect_twitch(alice_client, login="alicestreams")

    assert response.status_code == 302
    assert await TwitchToken.objects.filter(login="alicestreams").aexists()


async def test_a_code_answer_with_unreadable_scopes_connects_with_validated_ones(
    alice_client, sandbox
):
    # The code is spent and the grant issued: validation says which scopes it has.
    sandbox.alter("token", set={"scope": [None]}, times=1)

    response = await connect_twitch(alice_client, login="alicestreams")

    assert response.status_code == 302
    token = await TwitchToken.objects.aget(login="alicestreams")
    assert token.scopes == ["chat:read", "chat:edit", "openid"]  # as validated


async def test_a_validation_that_hangs_revokes_the_new_grant(
    alice_client, sandbox, settings, short_timeout
):
    settings.TWITCH_OPENID_CONNECT = False  # else validated after the answer
    sandbox.hang("validate", times=1)

    response = await connect_twitch(alice_client, login="alicestreams")

    assert response.status_code == 502
    assert await TwitchToken.objects.acount() == 0
    assert_grant_revoked(sandbox, "alicestreams")


async def test_a_database_error_while_storing_revokes_the_new_grant(
    alice_client, sandbox
):
    async with adatabase_refuses_token_writes():
        response = await connect_twitch(alice_client, login="alicestreams")

    assert response.status_code == 502
    assert "could not save your Twitch connection" in page(response)
    assert await TwitchToken.objects.acount() == 0
    assert_grant_revoked(sandbox, "alicestreams")
    assert (await connect_twitch(alice_client, login="alicestreams")).status_code == 302


async def test_linking_an_account_taken_by_another_user_revokes_the_new_grant(
    alice_client, bob, sandbox
):
    bob_client = AsyncClient()
    await bob_client.aforce_login(bob)
    await connect_twitch(bob_client, login="shared")
    bobs = await TwitchToken.objects.aget()

    response = await connect_twitch(alice_client, login="shared")

    assert response.status_code == 409
    assert sandbox.count("revoke") == 1
    # Only the grant alice's attempt made is ended; bob's stays whole.
    assert sandbox.live_tokens("shared").access == [bobs.access_token]


# --- The database does not answer -----------------------------------------------------


async def test_a_database_error_on_a_page_is_a_503_with_a_sentence(
    alice_client, sandbox
):
    from tests.conftest import database_write_lock, impatient_database

    await connect_twitch(alice_client, login="alicestreams")
    await sync_to_async(impatient_database)()
    with database_write_lock():  # a long transaction elsewhere holds the table
        response = await alice_client.post("/twitch/disconnect/")

    assert response.status_code == 503
    assert "database is not answering" in page(response)
    assert response["Retry-After"] == "60"


async def test_a_session_the_database_cannot_save_is_a_503_with_a_sentence(
    alice_client, sandbox
):
    from tests.conftest import database_write_lock, impatient_database

    await sync_to_async(impatient_database)()
    # Connect only changes the session, which is saved after the view.
    with database_write_lock("django_session"):
        response = await alice_client.post("/twitch/connect/")

    assert response.status_code == 503
    assert "database is not answering" in page(response)
    assert "Location" not in response  # no trip to Twitch with an unsaved state
    assert "no-store" in response["Cache-Control"]
