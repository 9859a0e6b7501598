"""Connect Twitch, end to end, against the sandbox over real HTTP: the flow,
the OAuth state that ties a callback to its browser, many users and one
account, and Twitch's optional fields."""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta

import pytest
import time_machine
from django.test import AsyncClient
from django.utils import timezone

from accounts.models import TokenEvent, TwitchToken
from tests.conftest import (
    approve_on_twitch,
    callback,
    connect_twitch,
    page,
    start_connect,
)

pytestmark = pytest.mark.django_db(transaction=True)


async def test_the_whole_happy_path_names_the_connected_login(alice_client, sandbox):
    response = await connect_twitch(alice_client, login="alicestreams")

    assert response.status_code == 302
    assert response["Location"] == "/"
    token = await TwitchToken.objects.aget(user__username="alice")
    assert token.login == "alicestreams"
    assert token.status == TwitchToken.Status.ACTIVE
    # What Twitch granted: openid too (OpenID Connect names the account).
    assert token.scopes == ["chat:read", "chat:edit", "openid"]
    assert sandbox.is_refresh_token_valid(token.refresh_token)
    assert sandbox.user_for_access_token(token.access_token).login == "alicestreams"
    home = await alice_client.get("/")
    assert "Connected as <strong>alicestreams</strong>" in page(home)
    assert "Connected as alicestreams on Twitch." in page(home)
    assert "chat:read, chat:edit" in page(home)


async def test_the_callback_makes_exactly_two_round_trips_with_secrets_in_the_body(
    alice_client, sandbox, settings
):
    # Without OpenID Connect (with it: one, tests/test_oidc_connect.py).
    settings.TWITCH_OPENID_CONNECT = False

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
    assert query["scope"] == "chat:read chat:edit openid"
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
    settings.TWITCH_OPENID_CONNECT = False  # else `openid` is granted

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
