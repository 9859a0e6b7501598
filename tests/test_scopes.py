"""Scopes the site requires, scopes a connection has, and asking for more later."""

from __future__ import annotations

import io
from urllib.parse import parse_qs, urlsplit

import pytest
from asgiref.sync import sync_to_async
from django.core.management import call_command

from accounts.background import finish_background_work
from accounts.models import TwitchToken
from accounts.services import MissingScopes, NoUsableToken, twitch_for
from tests.conftest import (
    approve_on_twitch,
    callback,
    connect_twitch,
    make_token,
    page,
)

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def optional_scopes(settings):
    settings.TWITCH_OPTIONAL_SCOPES = ["user:bot", "channel:bot"]
    return settings.TWITCH_OPTIONAL_SCOPES


async def asked_scopes(client, **form: str) -> list[str]:
    response = await client.post("/twitch/connect/", form)
    assert response.status_code == 302, response.content
    return parse_qs(urlsplit(response["Location"]).query)["scope"][0].split()


async def test_a_connection_made_before_a_scope_was_required_needs_more_permissions(
    alice_client, sandbox, settings
):
    await connect_twitch(alice_client, login="alicestreams")
    settings.TWITCH_SCOPES = ["chat:read", "chat:edit", "moderator:read:chatters"]

    home = page(await alice_client.get("/"))

    token = await TwitchToken.objects.aget()
    assert token.status == TwitchToken.Status.ACTIVE  # healthy all the same
    assert token.missing_scopes == ["moderator:read:chatters"]
    assert "This site needs more permissions" in home
    assert "see who is in chats you moderate" in home
    assert "Reconnect" in home


async def test_reconnecting_grants_the_new_scope_and_the_notice_goes(
    alice_client, sandbox, settings
):
    await connect_twitch(alice_client, login="alicestreams")
    settings.TWITCH_SCOPES = ["chat:read", "chat:edit", "moderator:read:chatters"]

    started = await alice_client.post("/twitch/connect/", {"reconnect": "1"})
    assert "force_verify=true" in started["Location"]
    back = await approve_on_twitch(started["Location"], login="alicestreams")
    await callback(alice_client, back)

    token = await TwitchToken.objects.aget()
    assert token.missing_scopes == []
    assert "needs more permissions" not in page(await alice_client.get("/"))


async def test_a_page_may_ask_for_optional_scopes_on_top(
    alice_client, sandbox, optional_scopes
):
    assert await asked_scopes(alice_client, scopes="user:bot") == [
        "chat:read",
        "chat:edit",
        "user:bot",
        "openid",
    ]


@pytest.mark.parametrize("asked", ["channel:manage:broadcast", "user:bot evil"])
async def test_asking_for_a_scope_that_is_not_offered_is_a_400(
    alice_client, sandbox, optional_scopes, asked
):
    response = await alice_client.post("/twitch/connect/", {"scopes": asked})

    assert response.status_code == 400
    assert "does not offer" in page(response)
    assert "evil" not in page(response)
    assert sandbox.requests == []


async def test_the_stored_scopes_are_what_twitch_granted(
    alice_client, sandbox, optional_scopes
):
    # The user approved, but Twitch granted less than asked (validation says so).
    sandbox.alter("validate", set={"scopes": ["chat:read"]}, times=1)
    await connect_twitch(alice_client, login="alicestreams", scopes="user:bot")
    await finish_background_work()  # the validation follows the answer

    token = await TwitchToken.objects.aget()
    assert token.scopes == ["chat:read"]


async def test_a_reconnect_keeps_the_optional_scopes_already_granted(
    alice_client, sandbox, optional_scopes
):
    await connect_twitch(alice_client, login="alicestreams", scopes="user:bot")
    assert "user:bot" in (await TwitchToken.objects.aget()).scopes

    assert "user:bot" in await asked_scopes(alice_client, reconnect="1")


async def test_twitch_for_refuses_missing_scopes_before_calling_twitch(alice, sandbox):
    await sync_to_async(make_token)(alice, sandbox)  # chat:read only

    with pytest.raises(MissingScopes) as refused:
        async with twitch_for(alice, scopes=["chat:read", "user:bot"]):
            pass

    assert isinstance(refused.value, NoUsableToken)
    assert refused.value.missing == ["user:bot"]
    assert "user:bot" in str(refused.value)
    assert sandbox.requests == []


async def test_twitch_for_with_scopes_the_connection_has(alice, sandbox):
    await sync_to_async(make_token)(alice, sandbox)
    async with twitch_for(alice, scopes=["chat:read"]) as client:
        assert client.get_user_auth_token()


def test_the_admin_shows_and_filters_connections_missing_required_scopes(
    admin_client, alice, bob, sandbox, settings
):
    lacking = make_token(alice, sandbox, scopes=["chat:read"])
    complete = make_token(bob, sandbox, scopes=["chat:read", "chat:edit"])

    listing = admin_client.get("/admin/accounts/twitchtoken/")
    filtered = admin_client.get("/admin/accounts/twitchtoken/?required_scopes=missing")

    assert page(listing).count("Missing required scopes") >= 2  # badge and filter
    pks = [t.pk for t in filtered.context["cl"].result_list]
    assert pks == [lacking.pk]
    assert complete.pk not in pks


def test_refresh_tokens_keeps_connections_missing_scopes_alive(
    alice, sandbox, settings
):
    from datetime import timedelta

    from django.utils import timezone

    token = make_token(alice, sandbox, scopes=["chat:read"])
    TwitchToken.objects.filter(pk=token.pk).update(
        expires_at=timezone.now() + timedelta(minutes=5)
    )
    call_command("refresh_tokens", "--no-validate", stdout=io.StringIO())

    token.refresh_from_db()
    assert sandbox.is_refresh_token_valid(token.refresh_token)
    assert token.last_refreshed_at is not None


def test_the_admin_scope_filter_marks_scopes_twitch_no_longer_has(
    admin_client, alice, bob, sandbox
):
    make_token(alice, sandbox, scopes=["chat:read", "user:edit:follows"])
    make_token(bob, sandbox, scopes=["chat:read", "channel_subscriptions"])

    listing = page(admin_client.get("/admin/accounts/twitchtoken/"))

    assert "user:edit:follows (deprecated since 2021)" in listing
    assert "channel_subscriptions (removed since 2022-02-28)" in listing
    assert "chat:read (" not in listing


def test_scope_words_come_from_the_catalogue_of_twitchs_scopes():
    from accounts.templatetags.twitchauth import in_plain_words

    assert (
        in_plain_words("moderator:read:chatters") == "see who is in chats you moderate"
    )
    assert in_plain_words("channel:manage:clips") == "manage the clips of your channel"
    assert in_plain_words("not:a:scope") == "not:a:scope"
