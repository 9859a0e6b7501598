"""`twitch_for(user)`: a ready twitchAPI client for the rest of the site."""

from __future__ import annotations

from datetime import timedelta

import pytest
from asgiref.sync import sync_to_async
from django.utils import timezone
from twitchAPI.helper import first

from accounts import signals
from accounts.models import TokenEvent, TwitchToken
from accounts.services import NoUsableToken, twitch_for
from tests.conftest import make_token

pytestmark = pytest.mark.django_db(transaction=True)

amake_token = sync_to_async(make_token)


async def test_twitch_for_yields_a_client_acting_as_the_user(alice, sandbox):
    await amake_token(alice, sandbox)

    async with twitch_for(alice) as client:
        me = await first(client.get_users())

    assert me.login == "alice"
    helix = next(r for r in sandbox.requests if r.endpoint == "users")
    headers = {name.lower(): value for name, value in helix.headers.items()}
    assert headers["client-id"] == "sandbox-client-id"


async def test_twitch_for_persists_a_refresh_that_happens_mid_use(alice, sandbox):
    token = await amake_token(alice, sandbox)
    heard = []

    async def on_refresh(sender, token, **kwargs):
        heard.append(token.pk)

    signals.token_refreshed.connect(on_refresh)
    try:
        async with twitch_for(alice) as client:
            sandbox.expire_access_tokens("alice")
            me = await first(client.get_users())
    finally:
        signals.token_refreshed.disconnect(on_refresh)

    assert me.login == "alice"
    stored = await TwitchToken.objects.aget(pk=token.pk)
    assert stored.refresh_token != token.refresh_token
    assert sandbox.is_refresh_token_valid(stored.refresh_token)
    assert sandbox.is_access_token_valid(stored.access_token)
    assert stored.expires_at > timezone.now() + timedelta(hours=3)
    assert heard == [token.pk]
    assert await TokenEvent.objects.filter(
        action="refresh", source="site", outcome="succeeded"
    ).aexists()


async def test_twitch_for_refreshes_a_token_about_to_expire_before_use(alice, sandbox):
    token = await amake_token(alice, sandbox, expires_in=60)

    async with twitch_for(alice) as client:
        assert client.get_user_auth_token() != token.access_token

    stored = await TwitchToken.objects.aget(pk=token.pk)
    assert stored.access_token == client.get_user_auth_token()
    assert sandbox.count("token", grant_type="refresh_token") == 1


async def test_twitch_for_refuses_a_user_without_a_connection(alice):
    with pytest.raises(NoUsableToken):
        async with twitch_for(alice):
            pass


@pytest.mark.parametrize("status", ["needs_reconnect", "revoked"])
async def test_twitch_for_refuses_a_connection_that_is_not_active(
    alice, sandbox, status
):
    await amake_token(alice, sandbox, status=status)
    with pytest.raises(NoUsableToken):
        async with twitch_for(alice):
            pass


async def test_twitch_for_refuses_a_token_twitch_no_longer_accepts(alice, sandbox):
    await amake_token(alice, sandbox)
    sandbox.disconnect_user("alice")
    with pytest.raises(NoUsableToken):
        async with twitch_for(alice):
            pass


async def test_a_refresh_mid_use_does_not_overwrite_a_reconnected_account(
    alice, alice_client, sandbox
):
    from tests.conftest import connect_twitch

    await connect_twitch(alice_client, login="alice")
    async with twitch_for(alice) as client:
        # The user reconnects as another Twitch account while a bot holds a client.
        await connect_twitch(alice_client, login="otheraccount")
        sandbox.expire_access_tokens("alice")
        await first(client.get_users())  # twitchAPI refreshes alice's token

    stored = await TwitchToken.objects.aget(user=alice)
    assert stored.login == "otheraccount"
    assert sandbox.user_for_access_token(stored.access_token).login == "otheraccount"
    assert sandbox.is_refresh_token_valid(stored.refresh_token)
