"""`twitch_for(user)`: a ready twitchAPI client for the rest of the site."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from datetime import timedelta

import pytest
from asgiref.sync import sync_to_async
from django.utils import timezone
from twitchAPI.helper import first
from twitchAPI.type import UnauthorizedException

from accounts import signals, twitch
from accounts.models import TokenEvent, TwitchToken
from accounts.services import NoUsableToken, twitch_for
from tests.conftest import (
    BASE_DIR,
    connect_twitch,
    listening,
    make_token,
    process_env,
)

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

    with listening(signals.token_refreshed, on_refresh):
        async with twitch_for(alice) as client:
            sandbox.expire_access_tokens("alice")
            me = await first(client.get_users())

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


async def test_a_dead_grant_is_refused_and_marked_needs_reconnect_at_once(
    alice, sandbox
):
    token = await amake_token(alice, sandbox)
    sandbox.disconnect_user("alice")  # the user removed the app on Twitch
    heard = []

    async def on_needs_reconnect(sender, token, **kwargs):
        heard.append(token.pk)

    with (
        listening(signals.token_needs_reconnect, on_needs_reconnect),
        pytest.raises(NoUsableToken),
    ):
        async with twitch_for(alice):
            pass

    stored = await TwitchToken.objects.aget(pk=token.pk)
    assert stored.status == TwitchToken.Status.NEEDS_RECONNECT
    assert stored.claimed_until is None
    assert heard == [token.pk]
    assert await TokenEvent.objects.filter(
        action="refresh", outcome="rejected", source="site"
    ).aexists()


async def test_a_grant_that_dies_mid_use_raises_no_usable_token_from_the_call(
    alice, sandbox
):
    token = await amake_token(alice, sandbox)
    async with twitch_for(alice) as client:
        sandbox.disconnect_user("alice")
        with pytest.raises(NoUsableToken):
            await first(client.get_users())

    stored = await TwitchToken.objects.aget(pk=token.pk)
    assert stored.status == TwitchToken.Status.NEEDS_RECONNECT


async def test_a_hung_helix_raises_twitch_unavailable_within_the_timeout(
    alice, sandbox, short_timeout
):
    await amake_token(alice, sandbox)
    async with twitch_for(alice) as client:
        sandbox.hang("users")
        started = time.monotonic()
        with pytest.raises(twitch.TwitchUnavailable):
            await first(client.get_users())
    # Half the 8 s production timeout: the test's short one applied, and nothing
    # waits out the hang.
    assert time.monotonic() - started < 4


async def test_a_hung_twitch_at_the_start_raises_twitch_unavailable(
    alice, sandbox, short_timeout
):
    await amake_token(alice, sandbox)
    sandbox.hang("validate")
    started = time.monotonic()
    with pytest.raises(twitch.TwitchUnavailable):
        async with twitch_for(alice):
            pass
    # Half the 8 s production timeout: the test's short one applied, and nothing
    # waits out the hang.
    assert time.monotonic() - started < 4


async def test_a_call_after_a_failed_refresh_does_not_hang(
    alice, sandbox, short_timeout
):
    # twitchAPI 4.5.0 leaves its refresh lock held when a refresh fails, and the
    # next call then waits forever.
    token = await amake_token(alice, sandbox)
    async with twitch_for(alice) as client:
        sandbox.expire_access_tokens("alice")
        sandbox.fail("token", status=503, times=3)
        with pytest.raises(twitch.TwitchUnavailable):
            await asyncio.wait_for(first(client.get_users()), 5)

        me = await asyncio.wait_for(first(client.get_users()), 5)

    assert me.login == "alice"
    stored = await TwitchToken.objects.aget(pk=token.pk)
    assert stored.status == TwitchToken.Status.ACTIVE
    assert sandbox.is_refresh_token_valid(stored.refresh_token)


async def test_a_401_for_a_valid_token_does_not_refresh_it(alice, sandbox):
    # Helix answers 401 for a missing scope too; refreshing would not help.
    token = await amake_token(alice, sandbox)
    unauthorized = {"error": "Unauthorized", "status": 401, "message": "Missing scope"}
    async with twitch_for(alice) as client:
        sandbox.fail("users", status=401, body=unauthorized, times=2)
        with pytest.raises(UnauthorizedException):
            await first(client.get_users())

    assert sandbox.count("token", grant_type="refresh_token") == 0
    stored = await TwitchToken.objects.aget(pk=token.pk)
    assert stored.refresh_token == token.refresh_token


async def test_a_refresh_mid_use_does_not_overwrite_a_reconnected_account(
    alice, alice_client, sandbox
):
    await connect_twitch(alice_client, login="alice")
    async with twitch_for(alice) as client:
        # The user reconnects as another Twitch account while a bot holds a client.
        await connect_twitch(alice_client, login="otheraccount")
        sandbox.expire_access_tokens("alice")
        with pytest.raises(NoUsableToken):
            await first(client.get_users())

    stored = await TwitchToken.objects.aget(user=alice)
    assert stored.login == "otheraccount"
    assert sandbox.user_for_access_token(stored.access_token).login == "otheraccount"
    assert sandbox.is_refresh_token_valid(stored.refresh_token)
    assert sandbox.count("token", grant_type="refresh_token") == 0


async def test_site_code_and_a_cron_run_never_present_one_refresh_token_twice(
    alice, sandbox
):
    # Under Twitch's rules, presenting a rotated refresh token again ends the whole
    # grant: the cron run (another process) and site code must take turns.
    token = await amake_token(alice, sandbox, expires_in=120)
    sandbox.set_latency(1.0, endpoint="token")
    cron = subprocess.Popen(
        [sys.executable, "manage.py", "refresh_tokens", "--no-validate"],
        cwd=BASE_DIR,
        env=process_env(sandbox),
        stdout=subprocess.PIPE,
    )
    try:
        await _until(lambda: _claimed(token.pk), timeout=20)
        async with twitch_for(alice) as client:
            me = await first(client.get_users())
    finally:
        output = cron.communicate(timeout=60)[0].decode()

    assert cron.returncode == 0, output
    assert me.login == "alice"
    presented = [
        r.form["refresh_token"]
        for r in sandbox.requests
        if r.endpoint == "token" and r.grant_type == "refresh_token"
    ]
    assert len(presented) == len(set(presented)) == 1
    stored = await TwitchToken.objects.aget(pk=token.pk)
    assert stored.status == TwitchToken.Status.ACTIVE
    assert sandbox.is_refresh_token_valid(stored.refresh_token)
    assert client.get_user_auth_token() == stored.access_token


async def _claimed(pk: int) -> bool:
    token = await TwitchToken.objects.aget(pk=pk)
    return token.claimed_until is not None


async def _until(condition, *, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not await condition():
        assert time.monotonic() < deadline, "timed out waiting"
        await asyncio.sleep(0.05)


async def test_a_database_that_refuses_the_refresh_is_a_clear_error_and_loses_nothing(
    alice, sandbox
):
    from accounts.services import TokenStoreUnavailable
    from tests.conftest import adatabase_refuses_token_writes

    token = await amake_token(alice, sandbox, expires_in=60)
    started = time.monotonic()
    async with adatabase_refuses_token_writes(only_column="refresh_token"):
        with pytest.raises(TokenStoreUnavailable):
            async with twitch_for(alice):
                pass
    # The site's 5 s of patience with a refusing database, with room for a busy
    # machine; not the 60 s a cron run has.
    assert time.monotonic() - started < 15

    async with twitch_for(alice) as client:  # the pair comes back from the spool
        me = await first(client.get_users())

    assert me.login == "alice"
    stored = await TwitchToken.objects.aget(pk=token.pk)
    assert stored.refresh_token != token.refresh_token
    assert sandbox.is_refresh_token_valid(stored.refresh_token)
    assert sandbox.count("token", grant_type="refresh_token") == 1
