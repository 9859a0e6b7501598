"""`twitch_app()`: an app access token for app-only endpoints, shared by everyone."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone
from twitchAPI.helper import first

from accounts.models import AppToken
from accounts.services import twitch_app

pytestmark = pytest.mark.django_db(transaction=True)


def fetched(sandbox) -> int:
    return sandbox.count("token", grant_type="client_credentials")


async def test_twitch_app_yields_a_client_with_an_app_token(sandbox):
    sandbox.add_user("twitchdev")

    async with twitch_app() as client:
        user = await first(client.get_users(logins=["twitchdev"]))

    assert user.login == "twitchdev"
    request = next(r for r in sandbox.requests if r.endpoint == "token")
    assert request.query == {} and request.form["client_secret"]


async def test_the_token_is_stored_encrypted_and_shared(sandbox):
    async with twitch_app() as first_client:
        token = first_client.get_app_token()
    async with twitch_app() as second_client:
        assert second_client.get_app_token() == token

    assert fetched(sandbox) == 1
    stored = await AppToken.objects.aget()
    assert stored.access_token == token
    from asgiref.sync import sync_to_async

    def raw() -> str:
        with connection.cursor() as cursor:
            cursor.execute("SELECT access_token FROM accounts_apptoken")
            return cursor.fetchone()[0]

    assert token not in await sync_to_async(raw)()


async def test_many_at_once_fetch_one_token(sandbox):
    sandbox.set_latency(0.2, endpoint="token")

    async def token_of_one() -> str:
        async with twitch_app() as client:
            return client.get_app_token()

    tokens = await asyncio.gather(*(token_of_one() for _ in range(8)))

    assert len(set(tokens)) == 1
    assert fetched(sandbox) == 1


async def test_a_token_close_to_expiry_is_replaced(sandbox):
    async with twitch_app():
        pass
    await AppToken.objects.aupdate(expires_at=timezone.now() + timedelta(minutes=30))

    async with twitch_app():
        pass

    assert fetched(sandbox) == 2


async def test_a_401_fetches_a_new_token_and_the_call_succeeds(sandbox):
    sandbox.add_user("twitchdev")
    async with twitch_app() as client:
        old = client.get_app_token()
        sandbox.expire_access_tokens()  # Twitch ended it early
        user = await first(client.get_users(logins=["twitchdev"]))

    assert user.login == "twitchdev"
    assert fetched(sandbox) == 2
    assert (await AppToken.objects.aget()).access_token != old
