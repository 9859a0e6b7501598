"""Disconnecting, and reconnecting: Twitch is told to end what the site stops
holding, even a pair refreshed meanwhile, and the page says what happened."""

from __future__ import annotations

import asyncio

import pytest
from asgiref.sync import ThreadSensitiveContext
from django.utils import timezone

from accounts.background import finish_background_work
from accounts.models import TokenEvent, TwitchToken
from tests.conftest import connect_twitch, page

pytestmark = pytest.mark.django_db(transaction=True)


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


# --- Reconnecting ends what it replaces -----------------------------------------------


@pytest.mark.parametrize("second_login", ["alicestreams", "alicealt"])
async def test_reconnecting_revokes_the_replaced_grant_and_says_so(
    alice_client, sandbox, second_login
):
    await connect_twitch(alice_client, login="alicestreams")
    before = await TwitchToken.objects.aget()

    await connect_twitch(alice_client, login=second_login)
    await finish_background_work()  # the revoke runs after the answer

    after = await TwitchToken.objects.aget()
    assert after.login == second_login
    assert not sandbox.is_access_token_valid(before.access_token)
    assert sandbox.is_access_token_valid(after.access_token)
    revoked = [r.form["token"] for r in sandbox.requests if r.endpoint == "revoke"]
    assert revoked == [before.access_token]
    event = await TokenEvent.objects.filter(action="connect").afirst()
    assert event.detail == f"Reconnected as {second_login} (was alicestreams)"


# --- Refreshes and signals meanwhile --------------------------------------------------


async def test_a_refresh_stored_while_disconnecting_is_revoked_too(
    alice_client, sandbox
):
    from accounts.tokens import engine as refreshing

    await connect_twitch(alice_client, login="alicestreams")
    token = await TwitchToken.objects.aget()
    await TwitchToken.objects.filter(pk=token.pk).aupdate(expires_at=timezone.now())
    sandbox.set_latency(0.5, endpoint="revoke")

    async def refresh_meanwhile() -> None:
        # Once the disconnect is waiting on Twitch's answer to its revoke.
        await asyncio.to_thread(sandbox.wait_for_request, "revoke")
        # Elsewhere, as cron or another request would be: on a thread of its own
        # (the test client gives its request the one shared thread, which the
        # disconnect's middleware chain holds until its view answers).
        async with ThreadSensitiveContext():
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
