"""Nothing lost when a run is stopped: SIGTERM and SIGINT let the calls at Twitch
finish and store what they bring, and a cancelled caller (a dropped request, a
worker shutting down) never abandons a refresh Twitch is answering."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import sys
import time

import pytest
from asgiref.sync import sync_to_async

from accounts.models import TokenEvent, TwitchToken
from accounts.services import twitch_for
from accounts.tokens import engine
from tests.conftest import BASE_DIR, make_token, process_env
from tests.refresh_helpers import expiring

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_stops_claiming_and_stores_what_twitch_answered(
    django_user_model, sandbox, signum
):
    tokens = [
        expiring(make_token(django_user_model.objects.create_user(f"u{n}"), sandbox))
        for n in range(10)
    ]
    sandbox.set_latency(1.0, endpoint="token")

    run, out, err = signalled_run(
        sandbox, signum, in_flight=4, args=("--concurrency", "4")
    )

    assert run.returncode == 128 + signum
    assert f"Stopped by {signal.Signals(signum).name}: 6 token(s) left" in err
    assert "; stopped before the end" in out
    # The four answers Twitch gave are stored; nothing else was started.
    assert sandbox.count("token") == 4
    refreshed = [t for t in tokens if _stored(t).refresh_token != t.refresh_token]
    assert len(refreshed) == 4
    for token in tokens:
        stored = _stored(token)
        assert sandbox.is_refresh_token_valid(stored.refresh_token)
        assert stored.claimed_until is None  # the six left are free for the next run


@pytest.mark.usefixtures("short_timeout")
async def test_a_cancelled_run_sees_a_refresh_at_twitch_through_and_stores_it(
    alice, sandbox
):
    token = await sync_to_async(lambda: expiring(make_token(alice, sandbox)))()
    sandbox.set_latency(0.3, endpoint="token")
    run = asyncio.create_task(
        engine.amaintain_tokens(
            pks=[token.pk],
            plan=engine.Plan(validate=False),
            source=TokenEvent.Source.COMMAND,
        )
    )
    await asyncio.to_thread(sandbox.wait_for_request, "token")

    run.cancel()  # a deploy, a dropped request: Twitch is rotating the token
    with pytest.raises(asyncio.CancelledError):
        await run

    await assert_the_new_pair_is_stored(token, sandbox)


@pytest.mark.usefixtures("short_timeout")
async def test_a_run_cancelled_while_validating_a_new_pair_stores_it_before_it_ends(
    alice, sandbox
):
    token = await sync_to_async(
        lambda: expiring(make_token(alice, sandbox, last_validated_at=None))
    )()
    sandbox.hang("validate")  # the follow-up validation never answers
    run = asyncio.create_task(
        engine.amaintain_tokens(
            pks=[token.pk], plan=engine.Plan(), source=TokenEvent.Source.COMMAND
        )
    )
    # The new pair is in: the follow-up validation of its access token has begun.
    await asyncio.to_thread(sandbox.wait_for_request, "validate")
    run.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await run

    await assert_the_new_pair_is_stored(token, sandbox)


@pytest.mark.usefixtures("short_timeout")
async def test_site_code_cancelled_during_a_refresh_keeps_the_new_pair(alice, sandbox):
    token = await sync_to_async(
        lambda: expiring(make_token(alice, sandbox), minutes=1)
    )()
    sandbox.set_latency(0.3, endpoint="token")

    async def bot() -> None:
        async with twitch_for(alice):
            pass

    task = asyncio.create_task(bot())
    await asyncio.to_thread(sandbox.wait_for_request, "token")
    task.cancel()  # the worker is shutting down, or the request was dropped
    with pytest.raises(asyncio.CancelledError):
        await task

    stored = await TwitchToken.objects.aget(pk=token.pk)
    assert stored.refresh_token != token.refresh_token
    assert sandbox.is_refresh_token_valid(stored.refresh_token)


async def assert_the_new_pair_is_stored(token: TwitchToken, sandbox) -> None:
    """The row holds the pair Twitch rotated to, live, and its lease is over."""
    stored = await TwitchToken.objects.aget(pk=token.pk)
    assert stored.refresh_token != token.refresh_token
    assert sandbox.is_refresh_token_valid(stored.refresh_token)
    assert stored.claimed_until is None


def _stored(token: TwitchToken) -> TwitchToken:
    return TwitchToken.objects.get(pk=token.pk)


def signalled_run(
    sandbox, signum: int, *, in_flight: int, args: tuple[str, ...] = ()
) -> tuple[subprocess.Popen[str], str, str]:
    """`refresh_tokens --no-validate` as cron starts it, sent `signum` once
    `in_flight` refreshes are at Twitch; the process and what it printed."""
    command = [sys.executable, "manage.py", "refresh_tokens", "--no-validate", *args]
    run = subprocess.Popen(
        command,
        cwd=BASE_DIR,
        env=process_env(sandbox),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        sandbox.wait_for_request("token", count=in_flight, timeout=30)
        run.send_signal(signum)
        out, err = run.communicate(timeout=60)
    finally:
        if run.poll() is None:
            run.kill()
    return run, out, err


def test_a_signal_leaves_a_hung_call_one_timeout_not_three_attempts(alice, sandbox):
    token = expiring(make_token(alice, sandbox))
    sandbox.hang("token")  # every attempt would wait out the 8 s timeout
    started = time.monotonic()

    run, _, _ = signalled_run(sandbox, signal.SIGTERM, in_flight=1)

    took = time.monotonic() - started  # start-up, the call's wait, and the stop
    assert run.returncode == 128 + signal.SIGTERM
    # The call in flight runs to its 8 s timeout and is not tried again: without
    # the stop, two more attempts would hold the run some 25 s.
    assert took < 16
    assert sandbox.count("token") == 1
    assert _stored(token).refresh_token == token.refresh_token  # nothing happened


@pytest.mark.usefixtures("short_timeout")
async def test_cancelling_a_run_with_more_tokens_than_workers_ends_it_and_frees_them(
    django_user_model, sandbox
):
    tokens = await sync_to_async(
        lambda: [
            expiring(
                make_token(django_user_model.objects.create_user(f"u{n}"), sandbox)
            )
            for n in range(30)
        ]
    )()
    sandbox.set_latency(0.3, endpoint="token")
    run = asyncio.create_task(
        engine.amaintain_tokens(
            pks=[t.pk for t in tokens],
            plan=engine.Plan(validate=False),
            source=TokenEvent.Source.COMMAND,
            concurrency=4,
        )
    )
    await asyncio.to_thread(sandbox.wait_for_request, "token", count=4)

    run.cancel()  # four at Twitch, the claim queue full behind them
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(run, timeout=10)  # ends; before, it hung for good

    # What Twitch answered is stored; every other token is free for the next run.
    assert not await TwitchToken.objects.filter(claimed_until__isnull=False).aexists()
    for token in tokens:
        stored = await TwitchToken.objects.aget(pk=token.pk)
        assert sandbox.is_refresh_token_valid(stored.refresh_token)
