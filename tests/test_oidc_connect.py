"""Connect with OpenID Connect: the callback answers after the code exchange alone,
from the verified ID token, and validates the new token right after the answer.
Against the sandbox over real HTTP; every bad ID token is a page, nothing stored,
the grant ended."""

from __future__ import annotations

import json

import pytest
from django.test import AsyncClient

from accounts import signals
from accounts.background import finish_background_work
from accounts.models import TokenEvent, TwitchToken
from tests.conftest import (
    approve_on_twitch,
    callback,
    connect_twitch,
    listening,
    page,
    start_connect,
)

pytestmark = pytest.mark.django_db(transaction=True)


def upstream(sandbox) -> list[str]:
    return [
        r.endpoint
        for r in sandbox.requests
        if r.endpoint not in ("authorize", "authorize_post")
    ]


async def test_connect_asks_for_openid_a_nonce_and_the_login_claim(alice_client):
    query = await start_connect(alice_client)
    again = await start_connect(alice_client)

    assert query["scope"].split() == ["chat:read", "chat:edit", "openid"]
    assert len(query["nonce"]) >= 43  # 256 bits
    assert query["nonce"] != again["nonce"]
    assert json.loads(query["claims"]) == {"id_token": {"preferred_username": None}}


async def test_the_callback_answers_after_the_code_exchange_alone(
    alice_client, sandbox, short_timeout
):
    # Validation never answers: the page must not wait for it.
    sandbox.hang("validate", times=1)

    response = await connect_twitch(alice_client, login="alicestreams")

    assert response.status_code == 302
    # Twitch's keys were fetched while the person was on Twitch's consent page.
    assert [e for e in upstream(sandbox) if e != "validate"] == ["keys", "token"]
    token = await TwitchToken.objects.aget(login="alicestreams")
    assert token.twitch_user_id == sandbox.add_user("alicestreams").id
    assert token.scopes == ["chat:read", "chat:edit", "openid"]
    assert "Connected as alicestreams on Twitch." in page(await alice_client.get("/"))


async def test_the_new_token_is_validated_right_after_the_answer(alice_client, sandbox):
    await connect_twitch(alice_client, login="alicestreams")
    await finish_background_work()

    assert upstream(sandbox) == ["keys", "token", "validate"]
    token = await TwitchToken.objects.aget()
    assert token.last_validated_at is not None
    assert token.status == TwitchToken.Status.ACTIVE


async def test_twitch_s_keys_are_fetched_once_and_again_when_they_rotate(
    alice_client, bob, sandbox
):
    await connect_twitch(alice_client, login="alicestreams")
    sandbox.rotate_signing_key(keep_old=False)
    bob_client = AsyncClient()
    await bob_client.aforce_login(bob)

    response = await connect_twitch(bob_client, login="bobstreams")

    assert response.status_code == 302
    assert sandbox.count("keys") == 2


@pytest.mark.parametrize(
    "kind, status",
    [
        ("unknown_key", 502),
        ("bad_signature", 502),
        ("expired", 502),
        ("wrong_audience", 502),
        ("wrong_issuer", 502),
        ("wrong_nonce", 400),
        ("missing_nonce", 400),
        ("non_digit_subject", 502),
        ("missing", 502),
        ("alg_none", 502),
        ("hs256", 502),
    ],
)
async def test_a_bad_id_token_is_a_page_nothing_stored_and_the_grant_ended(
    alice_client, sandbox, kind, status
):
    sandbox.forge_id_token(kind)

    response = await connect_twitch(alice_client, login="alicestreams")

    assert response.status_code == status
    assert "nothing was changed" in page(response)
    assert not await TwitchToken.objects.aexists()
    assert sandbox.live_tokens("alicestreams").access == []
    assert "validate" not in upstream(sandbox)


async def test_twitch_s_keys_unreachable_is_a_502_and_nothing_stored(
    alice_client, sandbox
):
    sandbox.fail("keys", 503, times=None)

    response = await connect_twitch(alice_client, login="alicestreams")

    assert response.status_code == 502
    assert not await TwitchToken.objects.aexists()
    assert sandbox.live_tokens("alicestreams").access == []


async def test_a_first_validation_telling_other_scopes_is_stored(alice_client, sandbox):
    sandbox.alter("validate", set={"scopes": ["chat:read", "openid"]}, times=1)

    await connect_twitch(alice_client, login="alicestreams")
    await finish_background_work()

    token = await TwitchToken.objects.aget()
    assert token.scopes == ["chat:read", "openid"]  # as validation says


async def test_a_token_twitch_refuses_at_its_first_validation_ends_the_connection(
    alice_client, sandbox
):
    sandbox.fail("validate", 401, times=1)
    heard = []

    async def receiver(sender, token, role, **kwargs):
        heard.append((token.login, role))

    with listening(signals.token_needs_reconnect, receiver):
        response = await connect_twitch(alice_client, login="alicestreams")
        await finish_background_work()

    assert response.status_code == 302  # answered before the validation
    token = await TwitchToken.objects.aget()
    assert token.status == TwitchToken.Status.NEEDS_RECONNECT
    assert token.access_token == "" and token.refresh_token == ""
    assert heard == [("alicestreams", "main")]
    event = await TokenEvent.objects.filter(action="validate").aget()
    assert event.outcome == TokenEvent.Outcome.REJECTED
    assert "Please reconnect" in page(await alice_client.get("/"))


async def test_a_validation_naming_another_account_ends_the_connection(
    alice_client, sandbox
):
    sandbox.alter("validate", set={"user_id": "999999"}, times=1)

    await connect_twitch(alice_client, login="alicestreams")
    await finish_background_work()

    token = await TwitchToken.objects.aget()
    assert token.status == TwitchToken.Status.NEEDS_RECONNECT
    assert "another Twitch account" in token.last_error
    assert sandbox.live_tokens("alicestreams").access == []


async def test_twitch_unavailable_at_the_first_validation_leaves_it_for_the_next_run(
    alice_client, sandbox
):
    sandbox.fail("validate", 503, times=None)

    await connect_twitch(alice_client, login="alicestreams")
    await finish_background_work()

    token = await TwitchToken.objects.aget()
    assert token.status == TwitchToken.Status.ACTIVE
    assert token.last_validated_at is None  # due at the next refresh_tokens run


async def test_without_openid_connect_the_callback_validates_before_answering(
    alice_client, sandbox, settings
):
    settings.TWITCH_OPENID_CONNECT = False

    query = await start_connect(alice_client)
    await connect_twitch(alice_client, login="alicestreams")

    assert "nonce" not in query and "openid" not in query["scope"]
    assert upstream(sandbox) == ["token", "validate"]
    token = await TwitchToken.objects.aget()
    assert token.last_validated_at is not None


async def test_a_flow_begun_before_openid_connect_still_finishes(
    alice_client, sandbox, settings
):
    settings.TWITCH_OPENID_CONNECT = False
    started = await alice_client.post("/twitch/connect/")
    settings.TWITCH_OPENID_CONNECT = True
    back = await approve_on_twitch(started["Location"], login="alicestreams")

    response = await callback(alice_client, back)

    assert response.status_code == 302
    assert await TwitchToken.objects.filter(login="alicestreams").aexists()
