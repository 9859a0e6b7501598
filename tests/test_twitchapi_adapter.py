"""The adapter to twitchAPI (accounts/twitch/twitchapi.py): one test per hook on
twitchAPI's internals. Each checks the hook as the pinned version (4.5.0) declares
it, then what it does for the site against the sandbox, so an upgrade that renames,
reshapes or stops calling a hook fails here first."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Callable

import pytest
from twitchAPI.chat import Chat
from twitchAPI.eventsub.websocket import EventSubWebsocket
from twitchAPI.helper import first
from twitchAPI.twitch import Twitch

from accounts import twitch


def declared(hook: Callable[..., object]) -> list[str]:
    """The hook's parameters, after checking twitchAPI awaits it."""
    assert inspect.iscoroutinefunction(hook), f"{hook.__qualname__} is not async"
    return list(inspect.signature(hook).parameters)


def a_pair(sandbox, login: str = "alice") -> tuple[str, str]:
    issued = sandbox.issue_tokens(login=login, scopes=["chat:read"])
    return issued["access_token"], issued["refresh_token"]


async def a_user_client(
    sandbox, pair: tuple[str, str], renewed: list, handed: list | None = None
) -> twitch.UserClient:
    """A client for `pair` whose renewals hand out fresh pairs; the pairs it held
    when renewing are recorded in `renewed`, those handed to it in `handed`."""

    async def renew(held_access: str, held_refresh: str) -> tuple[str, str]:
        renewed.append((held_access, held_refresh))
        fresh = a_pair(sandbox)
        if handed is not None:
            handed.append(fresh)
        return fresh

    return await twitch.user_client(
        access_token=pair[0], refresh_token=pair[1], scopes=["chat:read"], renew=renew
    )


async def test_api_request_hook_turns_helix_failures_into_twitch_unavailable(
    sandbox, short_timeout
):
    assert declared(Twitch._api_request) == [
        "self",
        "method",
        "session",
        "url",
        "auth_type",
        "required_scope",
        "data",
        "retries",
    ]
    client = await a_user_client(sandbox, a_pair(sandbox), renewed := [])

    sandbox.fail("users", status=500, times=1)  # twitchAPI: TwitchBackendException
    with pytest.raises(twitch.TwitchUnavailable, match="failed"):
        await first(client.get_users())
    sandbox.hang("users", times=1)  # aiohttp: a timeout, within session_timeout
    started = time.monotonic()
    with pytest.raises(twitch.TwitchUnavailable, match="timed out"):
        await asyncio.wait_for(first(client.get_users()), 5)
    assert time.monotonic() - started < 2

    me = await first(client.get_users())
    assert me.login == "alice"
    assert renewed == []


async def test_refresh_used_token_hook_asks_the_site_for_the_pair_on_a_401(sandbox):
    assert declared(Twitch.refresh_used_token) == ["self"]
    given = a_pair(sandbox)
    client = await a_user_client(sandbox, given, renewed := [], handed := [])
    assert client.auto_refresh_auth  # a 401 reaches the hook
    assert sandbox.requests == []  # twitchAPI's own validation is skipped

    sandbox.expire_access_tokens("alice")
    me = await first(client.get_users())

    assert me.login == "alice"
    assert renewed == [given]
    assert client.get_user_auth_token() == handed[0][0]
    # The pair the site handed over is the one the client holds next time.
    sandbox.expire_access_tokens("alice")
    me = await first(client.get_users())
    assert me.login == "alice"
    assert renewed == [given, handed[0]]
    assert client.get_user_auth_token() == handed[1][0]
    # twitchAPI never refreshed on its own.
    assert sandbox.count("token") == 0


async def test_get_refreshed_user_auth_token_hook_validates_through_the_site(
    sandbox, short_timeout
):
    assert declared(Twitch.get_refreshed_user_auth_token) == ["self"]
    # twitchAPI's Chat and EventSub websocket ask the client for a token this way.
    for user in (Chat, EventSubWebsocket):
        assert "get_refreshed_user_auth_token()" in inspect.getsource(user)
    given = a_pair(sandbox)
    client = await a_user_client(sandbox, given, renewed := [])

    assert await client.get_refreshed_user_auth_token() == given[0]
    assert sandbox.count("validate") == 1
    sandbox.expire_access_tokens("alice")
    renewed_token = await client.get_refreshed_user_auth_token()
    assert renewed == [given]
    assert renewed_token == client.get_user_auth_token() != given[0]
    assert sandbox.is_access_token_valid(renewed_token)
    # Within the site's timeout, where twitchAPI's own would wait 300 s.
    sandbox.hang("validate", times=1)
    started = time.monotonic()
    with pytest.raises(twitch.TwitchUnavailable, match="timed out"):
        await asyncio.wait_for(client.get_refreshed_user_auth_token(), 5)
    assert time.monotonic() - started < 2
    assert sandbox.count("token") == 0


async def test_refresh_app_token_hook_asks_the_site_for_a_new_app_token(sandbox):
    assert declared(Twitch._refresh_app_token) == ["self"]
    sandbox.add_user("twitchdev")
    given = (await twitch.fetch_app_token()).access_token
    refused = []

    async def renew(token: str) -> str:
        refused.append(token)
        return (await twitch.fetch_app_token()).access_token

    client = await twitch.app_client(access_token=given, renew=renew)

    sandbox.expire_access_tokens()  # Twitch ended it early: the next call gets 401
    user = await first(client.get_users(logins=["twitchdev"]))
    assert user.login == "twitchdev"
    assert refused == [given]
    renewed = client.get_app_token()
    assert renewed != given and sandbox.is_access_token_valid(renewed)
    # twitchAPI's get_refreshed_app_token (its EventSub webhook's) renews the same way.
    sandbox.expire_access_tokens()
    assert await client.get_refreshed_app_token() == client.get_app_token() != renewed
    assert refused == [given, renewed]
    # Only the site fetched tokens, with the secret in the form body, never the URL.
    tokens = [r for r in sandbox.requests if r.endpoint == "token"]
    assert len(tokens) == 3
    assert all(r.query == {} and r.form["client_secret"] for r in tokens)


async def test_check_request_return_hook_bounds_twitchapis_rate_limit_sleep(sandbox):
    assert declared(Twitch._check_request_return) == [
        "self",
        "session",
        "response",
        "method",
        "url",
        "auth_type",
        "required_scope",
        "data",
        "retries",
    ]
    # What the hook keeps twitchAPI from doing: sleeping until the reset, uncapped,
    # on a 429 or an empty bucket, after the statuses it handles itself.
    source = inspect.getsource(Twitch._check_request_return)
    assert "Ratelimit-Remaining" in source and "asyncio.sleep" in source
    assert source.index("== 404") < source.index("Ratelimit-Remaining")
    client = await a_user_client(sandbox, a_pair(sandbox), renewed := [])

    sandbox.rate_limit("users", times=1, reset_in=3600)
    started = time.monotonic()
    with pytest.raises(twitch.TwitchRateLimited) as limited:
        await asyncio.wait_for(first(client.get_users()), 5)
    assert time.monotonic() - started < 2
    assert limited.value.retry_after > 3500
    sandbox.rate_limit("users", times=1, reset_in=1)  # within the call's budget
    me = await first(client.get_users())
    assert me.login == "alice"
    assert sandbox.count("users") == 3
    assert renewed == []
