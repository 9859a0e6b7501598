"""Connect Twitch, end to end, against the sandbox over real HTTP."""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta
from urllib.parse import parse_qs, urlsplit

import pytest
import time_machine
from asgiref.sync import sync_to_async
from django.contrib.auth.models import User
from django.test import AsyncClient
from django.utils import timezone

from accounts.models import TokenEvent, TwitchToken
from accounts.oauth import connect as connecting
from tests.conftest import (
    adatabase_refuses_token_writes,
    approve_on_twitch,
    callback,
    connect_twitch,
    make_token,
    page,
)

pytestmark = pytest.mark.django_db(transaction=True)


async def start_connect(client: AsyncClient) -> dict[str, str]:
    response = await client.post("/twitch/connect/")
    assert response.status_code == 302
    return {k: v[0] for k, v in parse_qs(urlsplit(response["Location"]).query).items()}


async def test_the_whole_happy_path_names_the_connected_login(alice_client, sandbox):
    response = await connect_twitch(alice_client, login="alicestreams")

    assert response.status_code == 302
    assert response["Location"] == "/"
    token = await TwitchToken.objects.aget(user__username="alice")
    assert token.login == "alicestreams"
    assert token.status == TwitchToken.Status.ACTIVE
    assert token.scopes == ["chat:read", "chat:edit"]
    assert sandbox.is_refresh_token_valid(token.refresh_token)
    assert sandbox.user_for_access_token(token.access_token).login == "alicestreams"
    home = await alice_client.get("/")
    assert "Connected as <strong>alicestreams</strong>" in page(home)
    assert "Connected as alicestreams on Twitch." in page(home)
    assert "chat:read, chat:edit" in page(home)


async def test_the_callback_makes_exactly_two_round_trips_with_secrets_in_the_body(
    alice_client, sandbox
):
    await connect_twitch(alice_client, login="alicestreams")

    upstream = [
        r for r in sandbox.requests if r.endpoint not in ("authorize", "authorize_post")
    ]
    assert [r.endpoint for r in upstream] == ["token", "validate"]
    exchange = upstream[0]
    assert exchange.form["client_secret"] == "sandbox-client-secret"
    assert exchange.form["grant_type"] == "authorization_code"
    assert exchange.query == {}


async def test_connect_sends_the_configured_client_scopes_and_a_long_random_state(
    alice_client,
):
    query = await start_connect(alice_client)

    assert query["client_id"] == "sandbox-client-id"
    assert query["redirect_uri"] == "http://testserver/twitch/callback/"
    assert query["response_type"] == "code"
    assert query["scope"] == "chat:read chat:edit"
    assert len(query["state"]) >= 43  # 256 bits in url-safe base64
    assert query["state"] != (await start_connect(alice_client))["state"]


async def test_connect_requires_post_and_a_signed_in_user():
    client = AsyncClient()
    assert (await client.get("/twitch/connect/")).status_code == 405
    response = await client.post("/twitch/connect/")
    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/")


async def test_connect_is_csrf_protected(alice):
    client = AsyncClient(enforce_csrf_checks=True)
    await client.aforce_login(alice)
    assert (await client.post("/twitch/connect/")).status_code == 403


async def test_a_safe_next_is_carried_through_and_an_unsafe_one_is_not(
    alice_client, sandbox
):
    response = await connect_twitch(alice_client, login="a1", next_url="/admin/")
    assert response["Location"] == "/admin/"

    response = await connect_twitch(
        alice_client, login="a1", next_url="https://evil.example/"
    )
    assert response["Location"] == "/"


async def test_anonymous_home_goes_to_the_login_page():
    response = await AsyncClient().get("/")
    assert response.status_code == 302
    assert response["Location"] == "/accounts/login/?next=/"


# --- The OAuth state ------------------------------------------------------------------


async def assert_refused_without_reaching_twitch(response, sandbox) -> None:
    assert response.status_code == 400
    assert "Please press Connect Twitch again" in page(response)
    assert sandbox.count("token") == 0
    assert await TwitchToken.objects.acount() == 0


async def test_callback_rejects_a_missing_state(alice_client, sandbox):
    query = await start_connect(alice_client)
    code = sandbox.authorize(login="x", scopes=["chat:read"])
    response = await alice_client.get("/twitch/callback/", {"code": code})
    assert "state" in query
    await assert_refused_without_reaching_twitch(response, sandbox)


async def test_callback_rejects_a_tampered_state(alice_client, sandbox):
    query = await start_connect(alice_client)
    code = sandbox.authorize(login="x", scopes=["chat:read"])
    tampered = query["state"][:-1] + ("A" if query["state"][-1] != "A" else "B")
    response = await alice_client.get(
        "/twitch/callback/", {"code": code, "state": tampered}
    )
    await assert_refused_without_reaching_twitch(response, sandbox)


async def test_callback_rejects_reused_state(alice_client, sandbox):
    started = await alice_client.post("/twitch/connect/")
    back = await approve_on_twitch(started["Location"], login="alicestreams")
    assert (await callback(alice_client, back)).status_code == 302
    before = sandbox.count("token")

    replay = await callback(alice_client, back)

    assert replay.status_code == 400
    assert sandbox.count("token") == before


async def test_callback_rejects_an_expired_state(alice_client, sandbox):
    query = await start_connect(alice_client)
    code = sandbox.authorize(login="x", scopes=["chat:read"])
    with time_machine.travel(time.time() + 601, tick=False):
        response = await alice_client.get(
            "/twitch/callback/", {"code": code, "state": query["state"]}
        )
    await assert_refused_without_reaching_twitch(response, sandbox)


async def test_callback_rejects_a_state_from_another_session(
    alice_client, bob, sandbox
):
    query = await start_connect(alice_client)
    code = sandbox.authorize(login="x", scopes=["chat:read"])
    bob_client = AsyncClient()
    await bob_client.aforce_login(bob)
    response = await bob_client.get(
        "/twitch/callback/", {"code": code, "state": query["state"]}
    )
    await assert_refused_without_reaching_twitch(response, sandbox)


async def test_callback_rejects_an_anonymous_client(alice_client, sandbox):
    query = await start_connect(alice_client)
    code = sandbox.authorize(login="x", scopes=["chat:read"])
    response = await AsyncClient().get(
        "/twitch/callback/", {"code": code, "state": query["state"]}
    )
    assert response.status_code == 400
    assert "sign in" in page(response)
    assert sandbox.count("token") == 0


async def test_several_tabs_may_be_mid_flow_at_once(alice_client, sandbox):
    first = await alice_client.post("/twitch/connect/")
    second = await alice_client.post("/twitch/connect/")

    back = await approve_on_twitch(first["Location"], login="tab1")
    assert (await callback(alice_client, back)).status_code == 302
    back = await approve_on_twitch(second["Location"], login="tab1")
    assert (await callback(alice_client, back)).status_code == 302


async def test_pending_states_per_session_are_bounded(alice_client, sandbox):
    oldest = await alice_client.post("/twitch/connect/")
    for _ in range(5):
        await alice_client.post("/twitch/connect/")
    back = await approve_on_twitch(oldest["Location"], login="x")
    response = await callback(alice_client, back)
    assert response.status_code == 400
    session = await alice_client.asession()
    assert len(await session.aget("twitch_oauth_states")) == 5


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
    alice_client, sandbox, endpoint, fault
):
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
    assert time.monotonic() - started < 5

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


# --- Many users, one account, reconnecting --------------------------------------------


async def test_twenty_users_connecting_at_once_each_get_their_own_account(
    django_user_model, sandbox
):
    sandbox.set_latency(0.05)
    clients = []
    for n in range(20):
        user = await django_user_model.objects.acreate_user(f"user{n}", password="pw")
        client = AsyncClient()
        await client.aforce_login(user)
        clients.append(client)

    responses = await asyncio.gather(
        *(connect_twitch(c, login=f"streamer{n}") for n, c in enumerate(clients))
    )

    assert [r.status_code for r in responses] == [302] * 20
    pairs = {
        t.user.username: t.login
        async for t in TwitchToken.objects.select_related("user")
    }
    assert pairs == {f"user{n}": f"streamer{n}" for n in range(20)}


async def test_one_twitch_account_cannot_be_linked_to_two_users(
    alice_client, bob, sandbox
):
    await connect_twitch(alice_client, login="shared")
    bob_client = AsyncClient()
    await bob_client.aforce_login(bob)

    response = await connect_twitch(bob_client, login="shared")

    assert response.status_code == 409
    assert "already connected to another user" in page(response)
    assert await TwitchToken.objects.acount() == 1
    assert not await TwitchToken.objects.filter(user=bob).aexists()
    # The token Twitch issued for bob's attempt is not left alive at Twitch.
    assert sandbox.count("revoke") == 1


async def test_reconnecting_updates_the_same_row(alice_client, sandbox):
    await connect_twitch(alice_client, login="alicestreams")
    first = await TwitchToken.objects.aget()

    response = await connect_twitch(alice_client, login="alicestreams")

    assert response.status_code == 302
    second = await TwitchToken.objects.aget()
    assert second.pk == first.pk
    assert second.refresh_token != first.refresh_token
    assert await TokenEvent.objects.filter(action="connect").acount() == 2


async def test_reconnect_asks_twitch_to_show_the_consent_page_again(alice_client):
    response = await alice_client.post("/twitch/connect/", {"reconnect": "1"})
    assert "force_verify=true" in response["Location"]


async def test_a_revoked_account_can_be_connected_by_another_user(
    alice_client, bob, sandbox
):
    await connect_twitch(alice_client, login="shared")
    await alice_client.post("/twitch/disconnect/")
    bob_client = AsyncClient()
    await bob_client.aforce_login(bob)

    response = await connect_twitch(bob_client, login="shared")

    assert response.status_code == 302
    assert await TwitchToken.objects.filter(user=bob, status="active").aexists()


# --- Disconnecting --------------------------------------------------------------------


async def test_disconnect_revokes_at_twitch_and_forgets_the_secrets(
    alice_client, sandbox
):
    await connect_twitch(alice_client, login="alicestreams")
    access = (await TwitchToken.objects.aget()).access_token

    response = await alice_client.post("/twitch/disconnect/")

    assert response.status_code == 302
    revoke = next(r for r in sandbox.requests if r.endpoint == "revoke")
    assert revoke.query == {} and revoke.form["token"] == access
    assert not sandbox.is_access_token_valid(access)
    token = await TwitchToken.objects.aget()
    assert token.status == TwitchToken.Status.REVOKED
    assert token.access_token == "" and token.refresh_token == ""
    home = page(await alice_client.get("/"))
    assert (
        "Disconnected alicestreams: Twitch ended this site's access token and this "
        "site deleted its tokens." in home
    )
    assert "disconnect it under Connections in your Twitch settings" in home
    assert "Connect Twitch" in home
    # Twitch's revoke ends the access token only; the site no longer holds the
    # refresh token that survives it, which is what the message says.
    assert sandbox.live_tokens("alicestreams").access == []


async def test_disconnect_says_when_twitch_had_nothing_left_to_revoke(
    alice_client, sandbox
):
    await connect_twitch(alice_client, login="alicestreams")
    sandbox.expire_access_tokens("alicestreams")

    await alice_client.post("/twitch/disconnect/")

    token = await TwitchToken.objects.aget()
    assert token.status == TwitchToken.Status.REVOKED
    assert token.access_token == "" and token.refresh_token == ""
    event = await TokenEvent.objects.filter(action="revoke").aget()
    assert event.outcome == TokenEvent.Outcome.REJECTED
    assert "already invalid" in event.detail
    home = page(await alice_client.get("/"))
    assert "Twitch had already ended the access token" in home
    assert "Twitch ended this site's access token" not in home


async def test_a_revoke_answered_200_without_json_counts_as_revoked(
    alice_client, sandbox
):
    await connect_twitch(alice_client, login="alicestreams")
    sandbox.fail("revoke", status=200, body="OK", times=1)

    await alice_client.post("/twitch/disconnect/")

    event = await TokenEvent.objects.filter(action="revoke").aget()
    assert event.outcome == TokenEvent.Outcome.SUCCEEDED


async def test_disconnect_with_twitch_down_still_forgets_the_token(
    alice_client, sandbox
):
    await connect_twitch(alice_client, login="alicestreams")
    sandbox.fail("revoke", status=503)

    await alice_client.post("/twitch/disconnect/")

    token = await TwitchToken.objects.aget()
    assert token.status == TwitchToken.Status.REVOKED
    assert token.refresh_token == ""
    event = await TokenEvent.objects.filter(action="revoke").aget()
    assert event.outcome == TokenEvent.Outcome.UNAVAILABLE
    home = page(await alice_client.get("/"))
    assert "Twitch could not be reached to end them" in home


async def test_disconnect_with_nothing_connected_says_so(alice_client, sandbox):
    response = await alice_client.post("/twitch/disconnect/", follow=True)
    assert "No Twitch account is connected." in page(response)
    assert sandbox.count("revoke") == 0


def test_healthz_answers_when_the_database_does(client):
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {
        "status": "ok",
        "database": "ok",
        "keys": "ok",
        "tokens": "ok",
    }


def test_healthz_reports_tokens_no_key_can_decrypt(client, alice, sandbox, settings):
    from cryptography.fernet import Fernet

    make_token(alice, sandbox)
    settings.TOKEN_ENCRYPTION_KEYS = [Fernet.generate_key().decode()]

    response = client.get("/healthz")

    assert response.status_code == 503
    assert response.json()["tokens"] == "undecryptable"


@pytest.mark.parametrize("keys", [[], ["not-a-key"]])
def test_healthz_names_missing_or_malformed_keys(client, settings, keys):
    settings.TOKEN_ENCRYPTION_KEYS = keys
    response = client.get("/healthz")
    assert response.status_code == 503
    assert response.json()["keys"] == "misconfigured"


def test_home_says_an_undecryptable_connection_cannot_be_used_now(
    client, alice, sandbox, settings
):
    from cryptography.fernet import Fernet

    make_token(alice, sandbox)
    settings.TOKEN_ENCRYPTION_KEYS = [Fernet.generate_key().decode()]
    client.force_login(alice)

    home = page(client.get("/"))

    assert "cannot be used right now" in home
    assert ">Active<" not in home


def test_pages_about_the_connection_are_never_cached(client, alice, sandbox):
    make_token(alice, sandbox)
    client.force_login(alice)
    for response in (client.get("/"), client.get("/twitch/callback/")):
        assert "no-store" in response["Cache-Control"]


def test_every_page_sends_a_content_security_policy(client, alice):
    client.force_login(alice)
    response = client.get("/")
    policy = response["Content-Security-Policy"]
    assert "script-src 'self'" in policy and "frame-ancestors 'none'" in policy
    assert "'unsafe-inline'" not in policy.split("style-src-attr")[0]
    nonce = policy.split("'nonce-")[1].split("'")[0]
    assert f'<style nonce="{nonce}">' in page(response)


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


def test_home_shows_expiry_in_hours_and_minutes(client, alice: User, sandbox):
    make_token(alice, sandbox, expires_in=3 * 3600 + 12 * 60 + 30)
    client.force_login(alice)
    assert "in 3 h 12 min" in page(client.get("/"))


async def test_connecting_and_disconnecting_send_signals(alice_client, sandbox):
    from accounts import signals

    heard = []

    async def listen(sender, token, signal, **kwargs):
        heard.append((signal, token.login))

    signals.token_connected.connect(listen)
    signals.token_revoked.connect(listen)
    try:
        await connect_twitch(alice_client, login="alicestreams")
        await alice_client.post("/twitch/disconnect/")
    finally:
        signals.token_connected.disconnect(listen)
        signals.token_revoked.disconnect(listen)

    assert heard == [
        (signals.token_connected, "alicestreams"),
        (signals.token_revoked, "alicestreams"),
    ]


def test_healthz_is_reachable_over_plain_http_when_https_is_enforced(client, settings):
    settings.SECURE_SSL_REDIRECT = True
    assert client.get("/healthz").status_code == 200
    assert client.get("/").status_code == 301


async def test_two_identical_callbacks_at_once_reach_twitch_once(alice_client, sandbox):
    started = await alice_client.post("/twitch/connect/")
    back = await approve_on_twitch(started["Location"], login="alicestreams")
    sandbox.set_latency(0.1, endpoint="token")

    first, second = await asyncio.gather(
        callback(alice_client, back), callback(alice_client, back)
    )

    assert sorted([first.status_code, second.status_code]) == [302, 400]
    assert sandbox.count("token") == 1


async def test_a_state_used_by_one_tab_cannot_come_back_through_another(
    alice_client, sandbox
):
    first = await alice_client.post("/twitch/connect/")
    second = await alice_client.post("/twitch/connect/")
    back_first = await approve_on_twitch(first["Location"], login="tab")
    back_second = await approve_on_twitch(second["Location"], login="tab")
    await asyncio.gather(
        callback(alice_client, back_first), callback(alice_client, back_second)
    )
    before = sandbox.count("token")

    replays = await asyncio.gather(
        callback(alice_client, back_first), callback(alice_client, back_second)
    )

    assert [r.status_code for r in replays] == [400, 400]
    assert sandbox.count("token") == before


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
    alice_client, sandbox, fault
):
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
    assert token.scopes == ["chat:read", "chat:edit"]  # as validation says


async def test_a_validation_that_hangs_revokes_the_new_grant(
    alice_client, sandbox, short_timeout
):
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


# --- Reconnecting ends what it replaces ---------------------------------------------


@pytest.mark.parametrize("second_login", ["alicestreams", "alicealt"])
async def test_reconnecting_revokes_the_replaced_grant_and_says_so(
    alice_client, sandbox, second_login
):
    await connect_twitch(alice_client, login="alicestreams")
    before = await TwitchToken.objects.aget()

    await connect_twitch(alice_client, login=second_login)
    await connecting.finish_background_work()  # the revoke runs after the answer

    after = await TwitchToken.objects.aget()
    assert after.login == second_login
    assert not sandbox.is_access_token_valid(before.access_token)
    assert sandbox.is_access_token_valid(after.access_token)
    revoked = [r.form["token"] for r in sandbox.requests if r.endpoint == "revoke"]
    assert revoked == [before.access_token]
    event = await TokenEvent.objects.filter(action="connect").afirst()
    assert event.detail == f"Reconnected as {second_login} (was alicestreams)"


# --- Twitch's optional fields ---------------------------------------------------------


async def test_a_token_answer_without_expires_in_takes_the_expiry_from_validation(
    alice_client, sandbox
):
    sandbox.alter("token", remove=["expires_in"], times=1)

    response = await connect_twitch(alice_client, login="alicestreams")

    assert response.status_code == 302
    token = await TwitchToken.objects.aget()
    assert token.expires_at > timezone.now() + timedelta(hours=3)


async def test_no_scopes_means_a_token_answer_without_scope_and_null_scopes(
    alice_client, sandbox, settings
):
    settings.TWITCH_SCOPES = []

    response = await connect_twitch(alice_client, login="alicestreams")

    assert response.status_code == 302
    token = await TwitchToken.objects.aget()
    assert token.scopes == []
    assert "none" in page(await alice_client.get("/"))


async def test_a_token_that_does_not_expire_says_so_on_the_home_page(
    alice_client, sandbox
):
    sandbox.alter("token", remove=["expires_in"], times=1)
    sandbox.alter("validate", set={"expires_in": 0}, times=1)

    await connect_twitch(alice_client, login="alicestreams")

    token = await TwitchToken.objects.aget()
    assert token.expires_at is None
    assert "never" in page(await alice_client.get("/"))


async def test_a_refresh_stored_while_disconnecting_is_revoked_too(
    alice_client, sandbox
):
    from accounts.tokens import engine as refreshing

    await connect_twitch(alice_client, login="alicestreams")
    token = await TwitchToken.objects.aget()
    await TwitchToken.objects.filter(pk=token.pk).aupdate(expires_at=timezone.now())
    sandbox.set_latency(0.5, endpoint="revoke")

    async def refresh_meanwhile() -> None:
        await asyncio.sleep(0.1)
        await refreshing.amaintain_tokens(
            pks=[token.pk],
            plan=refreshing.Plan(validate=False),
            source=TokenEvent.Source.COMMAND,
        )

    await asyncio.gather(alice_client.post("/twitch/disconnect/"), refresh_meanwhile())

    assert sandbox.count("token", grant_type="refresh_token") == 1
    assert sandbox.live_tokens("alicestreams").access == []
    stored = await TwitchToken.objects.aget()
    assert stored.status == TwitchToken.Status.REVOKED and stored.refresh_token == ""


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
