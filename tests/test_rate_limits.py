"""Twitch's rate limits (429, `Ratelimit-*`) are site errors in bounded time: site
code gets `TwitchRateLimited` within the seam's timeout, or its call waited out a
reset that came within it; refresh runs slow down, say so, and lose nothing."""

from __future__ import annotations

import io
import json
import time
from collections.abc import AsyncIterator

import pytest
from aiohttp import ClientSession, web
from asgiref.sync import sync_to_async
from django.core.management import call_command
from django.core.management.base import CommandError
from twitchAPI.helper import first

from accounts import twitch
from accounts.models import TwitchToken
from accounts.services import TwitchRateLimited, twitch_app, twitch_for
from tests.conftest import make_token
from tests.refresh_helpers import expiring

pytestmark = pytest.mark.django_db(transaction=True)

amake_token = sync_to_async(make_token)
AN_HOUR = 3600
# The seam's timeout is 8 s; a rate limit must be said well within it.
PROMPTLY = 2.0


async def test_twitch_for_raises_rate_limited_at_once_when_the_reset_is_an_hour_away(
    alice, sandbox
):
    await amake_token(alice, sandbox)
    sandbox.rate_limit("users", times=1, reset_in=AN_HOUR)

    started = time.monotonic()
    with pytest.raises(TwitchRateLimited) as limited:
        async with twitch_for(alice) as client:
            await first(client.get_users())

    assert time.monotonic() - started < PROMPTLY
    assert AN_HOUR - 5 < limited.value.retry_after <= AN_HOUR
    assert isinstance(limited.value, twitch.TwitchUnavailable)
    assert sandbox.count("users") == 1  # not asked again


async def test_twitch_for_waits_out_a_reset_within_its_budget(alice, sandbox):
    await amake_token(alice, sandbox)
    sandbox.rate_limit("users", times=1, reset_in=1)

    async with twitch_for(alice) as client:
        me = await first(client.get_users())

    assert me.login == "alice"
    assert sandbox.count("users") == 2


async def test_a_second_429_after_waiting_is_raised_not_returned_as_data(
    alice, sandbox
):
    await amake_token(alice, sandbox)
    sandbox.rate_limit("users", times=2, reset_in=1)

    started = time.monotonic()
    with pytest.raises(TwitchRateLimited):
        async with twitch_for(alice) as client:
            await first(client.get_users())

    assert time.monotonic() - started < 8
    assert sandbox.count("users") == 2


@pytest.fixture
async def empty_bucket(sandbox, settings) -> AsyncIterator[None]:
    """Helix answers as the sandbox does, each answer saying the bucket is empty
    until an hour from now (`Ratelimit-Remaining: 0`): what Twitch sends on the
    last call a bucket allows. The sandbox sets no such header on a success."""

    async def forward(request: web.Request) -> web.Response:
        async with (
            ClientSession() as session,
            session.request(
                request.method,
                sandbox.api_base_url + request.match_info["path"],
                params=request.query,
                headers={
                    k: v for k, v in request.headers.items() if k.lower() != "host"
                },
                data=await request.read(),
            ) as answer,
        ):
            body = await answer.read()
            return web.Response(
                status=answer.status,
                body=body,
                content_type=answer.content_type,
                headers={
                    "Ratelimit-Limit": "800",
                    "Ratelimit-Remaining": "0",
                    "Ratelimit-Reset": str(int(time.time()) + AN_HOUR),
                },
            )

    app = web.Application()
    app.router.add_route("*", "/{path:.*}", forward)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    settings.TWITCH_API_BASE_URL = f"http://127.0.0.1:{port}/"
    yield
    await runner.cleanup()


async def test_an_empty_bucket_never_makes_a_call_sleep(alice, sandbox, empty_bucket):
    await amake_token(alice, sandbox)

    started = time.monotonic()
    async with twitch_for(alice) as client:
        me = await first(client.get_users())
        again = await first(client.get_users())

    assert me.login == again.login == "alice"
    assert time.monotonic() - started < PROMPTLY
    assert sandbox.count("users") == 2


async def test_twitch_app_raises_rate_limited_at_once(sandbox):
    sandbox.add_user("twitchdev")
    sandbox.rate_limit("users", times=1, reset_in=AN_HOUR)

    started = time.monotonic()
    with pytest.raises(TwitchRateLimited) as limited:
        async with twitch_app() as client:
            await first(client.get_users(logins=["twitchdev"]))

    assert time.monotonic() - started < PROMPTLY
    assert AN_HOUR - 5 < limited.value.retry_after <= AN_HOUR


async def test_twitch_app_waits_out_a_reset_within_its_budget(sandbox):
    sandbox.add_user("twitchdev")
    sandbox.rate_limit("users", times=1, reset_in=1)

    async with twitch_app() as client:
        user = await first(client.get_users(logins=["twitchdev"]))

    assert user.login == "twitchdev"


async def test_a_paged_result_never_holds_a_429_as_data(sandbox):
    # twitchAPI's iterable results (first page and the pages after) ask through
    # the same request hook as everything else.
    sandbox.rate_limit("eventsub_list", times=1, reset_in=AN_HOUR)

    started = time.monotonic()
    with pytest.raises(TwitchRateLimited):
        async with twitch_app() as client:
            await client.get_eventsub_subscriptions()

    assert time.monotonic() - started < PROMPTLY


async def test_validation_rate_limited_in_twitch_for_is_a_site_error(alice, sandbox):
    await amake_token(alice, sandbox, last_validated_at=None)
    sandbox.rate_limit("validate", times=1, reset_in=AN_HOUR)

    with pytest.raises(TwitchRateLimited):
        async with twitch_for(alice):
            pass


# --- refresh runs ------------------------------------------------------------------


def run_refresh_tokens(*args: str) -> tuple[str, int]:
    """`manage.py refresh_tokens`: what it printed, and its exit code."""
    out = io.StringIO()
    try:
        call_command("refresh_tokens", *args, stdout=out)
    except CommandError as error:
        return out.getvalue(), error.returncode
    return out.getvalue(), 0


@pytest.fixture
def quick_retries(monkeypatch):
    monkeypatch.setattr(twitch.http, "RETRY_BASE_DELAY", 0.01)


def test_a_refresh_run_slows_down_for_429s_and_says_so(
    alice, bob, sandbox, quick_retries
):
    tokens = [expiring(make_token(user, sandbox)) for user in (alice, bob)]
    sandbox.rate_limit("token", times=2, reset_in=2)

    started = time.monotonic()
    output, code = run_refresh_tokens("--no-validate", "--concurrency", "1")

    assert code == 0
    assert output.startswith("refreshed 2,")
    assert "rate limited by Twitch 2 times, waited" in output
    # The resets were honoured: no call came before its bucket refilled.
    assert time.monotonic() - started >= 1
    for token in tokens:
        token.refresh_from_db()
        assert sandbox.is_refresh_token_valid(token.refresh_token)
        assert token.status == TwitchToken.Status.ACTIVE

    expiring(tokens[0])
    sandbox.rate_limit("token", times=1, reset_in=1)
    output, code = run_refresh_tokens("--no-validate", "--json")
    report = json.loads(output)
    assert report["refreshed"] == 1
    assert report["rate_limited"] == 1
    assert 0 < report["rate_limit_wait"] <= 1


def test_a_long_rate_limit_fails_the_run_but_marks_nothing_dead(
    alice, bob, sandbox, quick_retries
):
    tokens = [expiring(make_token(user, sandbox)) for user in (alice, bob)]
    sandbox.rate_limit("token", times=10, reset_in=AN_HOUR)

    started = time.monotonic()
    output, code = run_refresh_tokens("--no-validate", "--concurrency", "1")

    assert time.monotonic() - started < 5
    assert code == 1
    assert "needs reconnect 0, failed 1" in output
    assert "left 1" in output
    assert "rate limited by Twitch once" in output
    assert sandbox.count("token") == 1  # no point asking again for an hour
    for token in tokens:
        stored = TwitchToken.objects.get(pk=token.pk)
        assert stored.refresh_token == token.refresh_token
        assert stored.status == TwitchToken.Status.ACTIVE
        assert stored.claimed_until is None
        assert sandbox.is_refresh_token_valid(stored.refresh_token)


def test_validation_runs_slow_down_for_429s_too(alice, sandbox, quick_retries):
    make_token(alice, sandbox, last_validated_at=None)
    sandbox.rate_limit("validate", times=1, reset_in=1)

    output, code = run_refresh_tokens("--validate-only")

    assert code == 0
    assert "validated 1" in output
    assert "rate limited by Twitch once" in output


async def test_twitch_app_does_not_wait_past_its_budget_for_an_app_token(sandbox):
    sandbox.add_user("twitchdev")
    sandbox.rate_limit("token", times=1, reset_in=20)  # beyond the 8 s a call takes

    started = time.monotonic()
    with pytest.raises(TwitchRateLimited):
        async with twitch_app():
            pass

    assert time.monotonic() - started < PROMPTLY


async def test_site_code_refreshing_under_a_rate_limit_is_told_within_its_budget(
    alice, sandbox
):
    await sync_to_async(lambda: expiring(make_token(alice, sandbox), minutes=1))()
    sandbox.rate_limit("token", times=1, reset_in=12)  # past the 8 s a call takes

    started = time.monotonic()
    with pytest.raises(TwitchRateLimited) as limited:
        async with twitch_for(alice):
            pass

    assert time.monotonic() - started < PROMPTLY
    assert limited.value.retry_after is not None and limited.value.retry_after > 8


async def test_twitch_app_waits_in_all_no_longer_than_a_call_takes(sandbox):
    sandbox.add_user("twitchdev")
    sandbox.rate_limit("token", times=2, reset_in=5)  # 5 s waited, then 5 s more

    started = time.monotonic()
    with pytest.raises(TwitchRateLimited):
        async with twitch_app():
            pass

    # The first reset fits in the 8 s, the second would not: told after ~5 s.
    assert time.monotonic() - started < 8


def test_after_a_429_no_worker_starts_a_token_before_the_reset(
    django_user_model, sandbox, quick_retries
):
    for n in range(6):
        expiring(make_token(django_user_model.objects.create_user(f"u{n}"), sandbox))
    sandbox.set_latency(0.2, endpoint="token")
    sandbox.rate_limit("token", times=1, reset_in=2)  # the first refresh meets it

    output, code = run_refresh_tokens("--no-validate", "--concurrency", "2")

    assert code == 0 and output.startswith("refreshed 6,")
    times = sorted(r.at for r in sandbox.requests if r.endpoint == "token")
    # Two went out together; after the 429 every later token waited for the
    # reset (1-2 s: Ratelimit-Reset is whole seconds), whichever worker took it.
    # Without the pause the next would follow the first within ~0.4 s.
    assert len(times) == 7
    assert times[2] - times[0] > 0.9
