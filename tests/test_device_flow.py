"""The site's Device Code Grant client (accounts/twitch/device.py) against the
sandbox: a code to show, then polling until the person approves, declines, the
code expires or Twitch cannot be reached.

Waits between polls take no real time: the `sleep` given to the poller moves a
frozen clock, Twitch's (the sandbox's) included, by the seconds asked for."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable, Iterator
from datetime import timedelta

import pytest
import time_machine
from django.utils import timezone

from accounts import twitch
from accounts.twitch import (
    DeviceAccessDenied,
    DeviceAuthorization,
    DeviceCodeExpired,
    DevicePollingStopped,
    TwitchRejected,
    TwitchUnavailable,
    poll_device_authorization,
    start_device_authorization,
)
from tests.conftest import CLIENT_ID, free_port
from twitch_sandbox import Sandbox

DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
SCOPES = ["chat:read", "user:write:chat"]


class FakeSleep:
    """Waits no real time: moves the clock by the seconds asked for (or by what
    `short_by` takes off), remembers each wait, and runs what `after` holds for
    the wait of that number."""

    def __init__(self, clock: time_machine.Traveller) -> None:
        self.clock = clock
        self.waits: list[float] = []
        self.after: dict[int, Callable[[], object]] = {}
        self.short_by: dict[int, float] = {}

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)
        n = len(self.waits)
        self.clock.shift(seconds - self.short_by.get(n, 0))
        if n in self.after:
            self.after[n]()


@pytest.fixture
def clock() -> Iterator[time_machine.Traveller]:
    with time_machine.travel(time.time(), tick=False) as traveller:
        yield traveller


@pytest.fixture
def sleep(clock: time_machine.Traveller) -> FakeSleep:
    return FakeSleep(clock)


def polls(sandbox: Sandbox) -> list:
    return [r for r in sandbox.requests if r.grant_type == DEVICE_GRANT]


async def test_a_device_code_comes_with_where_to_enter_it_and_stays_out_of_repr(
    sandbox: Sandbox, clock: time_machine.Traveller
) -> None:
    device = await start_device_authorization(scopes=SCOPES)

    assert re.fullmatch(r"[A-Z]{8}", device.user_code)
    assert device.verification_uri.endswith(f"/activate?device-code={device.user_code}")
    assert device.interval == 5
    assert device.expires_in == 1800
    assert device.expires_at == timezone.now() + timedelta(seconds=1800)
    assert device.scopes == ("chat:read", "user:write:chat")
    assert device.device_code not in repr(device)
    assert device.user_code in repr(device)


async def test_an_approval_after_a_few_polls_gives_the_grant(
    sandbox: Sandbox, sleep: FakeSleep
) -> None:
    device = await start_device_authorization(scopes=SCOPES)
    sleep.after[3] = lambda: sandbox.approve_device(device.user_code, login="thebot")

    grant = await poll_device_authorization(device, sleep=sleep)

    assert sleep.waits == [5, 5, 5]
    assert grant.scopes == SCOPES
    assert grant.expires_in == sandbox.access_token_lifetime
    assert sandbox.user_for_access_token(grant.access_token).login == "thebot"
    assert sandbox.is_refresh_token_valid(grant.refresh_token)
    sent = polls(sandbox)
    assert [request.status for request in sent] == [400, 400, 200]
    for request in sent:
        # Form fields only, as Twitch's guide lists them: no secret, no query.
        assert request.query == {}
        assert request.form == {
            "client_id": CLIENT_ID,
            "scopes": "chat:read user:write:chat",
            "device_code": device.device_code,
            "grant_type": DEVICE_GRANT,
        }


async def test_a_device_code_without_scopes_still_says_so_when_polling(
    sandbox: Sandbox, sleep: FakeSleep
) -> None:
    device = await start_device_authorization(scopes=[])
    sandbox.approve_device(device.user_code, login="thebot")

    grant = await poll_device_authorization(device, sleep=sleep)

    assert grant.scopes == []
    assert polls(sandbox)[0].form["scopes"] == ""


async def test_slow_down_makes_every_later_wait_five_seconds_longer(
    sandbox: Sandbox, sleep: FakeSleep
) -> None:
    device = await start_device_authorization(scopes=SCOPES)
    sleep.short_by[2] = 4  # a poll 1 s after the last: Twitch says slow down
    sleep.after[4] = lambda: sandbox.approve_device(device.user_code, login="thebot")

    grant = await poll_device_authorization(device, sleep=sleep)

    assert sleep.waits == [5, 5, 10, 10]
    assert [r.status for r in polls(sandbox)] == [400, 400, 400, 200]
    assert grant.access_token


async def test_a_declined_code_is_device_access_denied(
    sandbox: Sandbox, sleep: FakeSleep
) -> None:
    device = await start_device_authorization(scopes=SCOPES)
    sleep.after[2] = lambda: sandbox.deny_device(device.user_code)

    with pytest.raises(DeviceAccessDenied) as denied:
        await poll_device_authorization(device, sleep=sleep)

    assert isinstance(denied.value, TwitchRejected)
    assert "declined" in str(denied.value)
    assert device.device_code not in str(denied.value)
    assert len(polls(sandbox)) == 2


async def test_a_code_nobody_approves_expires_without_another_poll(
    sandbox: Sandbox, sleep: FakeSleep
) -> None:
    sandbox.set_device_timing(expires_in=12)
    device = await start_device_authorization(scopes=SCOPES)

    with pytest.raises(DeviceCodeExpired) as expired:
        await poll_device_authorization(device, sleep=sleep)

    assert sleep.waits == [5, 5, 2]  # no longer than the code lives
    assert len(polls(sandbox)) == 2  # at 5 s and 10 s; at 12 s it was over
    assert "expired" in str(expired.value)


@pytest.mark.parametrize("message", ["expired_token", "invalid device code"])
async def test_twitch_no_longer_taking_the_code_is_device_code_expired(
    sandbox: Sandbox, sleep: FakeSleep, message: str
) -> None:
    device = await start_device_authorization(scopes=SCOPES)
    sandbox.fail("token", 400, body={"status": 400, "message": message}, times=1)

    with pytest.raises(DeviceCodeExpired):
        await poll_device_authorization(device, sleep=sleep)

    assert sleep.waits == [5]


async def test_another_refusal_is_twitch_rejected_with_twitchs_words(
    sandbox: Sandbox, sleep: FakeSleep
) -> None:
    device = await start_device_authorization(scopes=SCOPES)
    body = {"status": 400, "message": "missing scopes"}
    sandbox.fail("token", 400, body=body, times=1)

    with pytest.raises(TwitchRejected) as rejected:
        await poll_device_authorization(device, sleep=sleep)

    assert not isinstance(rejected.value, DeviceCodeExpired | DeviceAccessDenied)
    assert rejected.value.status == 400
    assert "missing scopes" in str(rejected.value)


async def test_a_failed_poll_is_tried_again_at_the_next_interval(
    sandbox: Sandbox, sleep: FakeSleep, caplog: pytest.LogCaptureFixture
) -> None:
    device = await start_device_authorization(scopes=SCOPES)
    sandbox.fail("token", 503, times=1)
    sleep.after[2] = lambda: sandbox.approve_device(device.user_code, login="thebot")

    with caplog.at_level(logging.INFO, logger="accounts.twitch.device"):
        grant = await poll_device_authorization(device, sleep=sleep)

    assert sleep.waits == [5, 5]
    assert grant.access_token
    assert "trying again in 5 s" in caplog.text
    assert device.device_code not in caplog.text
    assert grant.access_token not in caplog.text


async def test_a_rate_limited_poll_waits_as_long_as_twitch_asks(
    sandbox: Sandbox, sleep: FakeSleep
) -> None:
    device = await start_device_authorization(scopes=SCOPES)
    sandbox.rate_limit("token", times=1, reset_in=30)
    sleep.after[2] = lambda: sandbox.approve_device(device.user_code, login="thebot")

    grant = await poll_device_authorization(device, sleep=sleep)

    assert sleep.waits[0] == 5
    assert 29 <= sleep.waits[1] <= 30
    assert grant.access_token


async def test_an_approval_whose_answer_cannot_be_read_is_not_asked_again(
    sandbox: Sandbox, sleep: FakeSleep
) -> None:
    device = await start_device_authorization(scopes=SCOPES)
    sandbox.approve_device(device.user_code, login="thebot")
    sandbox.alter("token", remove=["access_token", "refresh_token"], times=1)

    with pytest.raises(TwitchUnavailable) as unreadable:
        await poll_device_authorization(device, sleep=sleep)

    assert not unreadable.value.retryable
    assert len(polls(sandbox)) == 1  # the code is spent: asking again is useless


async def test_twitch_out_of_reach_when_starting_is_twitch_unavailable(
    sandbox: Sandbox, settings, short_timeout: None
) -> None:
    settings.TWITCH_AUTH_BASE_URL = f"http://127.0.0.1:{free_port()}/oauth2/"

    with pytest.raises(TwitchUnavailable) as unavailable:
        await start_device_authorization(scopes=SCOPES)

    assert str(unavailable.value) == (
        "Twitch's device endpoint could not be reached (ClientConnectorError)."
    )


async def test_twitch_out_of_reach_while_polling_ends_at_expiry_saying_why(
    sandbox: Sandbox, settings, sleep: FakeSleep
) -> None:
    sandbox.set_device_timing(expires_in=12)
    device = await start_device_authorization(scopes=SCOPES)
    settings.TWITCH_AUTH_BASE_URL = f"http://127.0.0.1:{free_port()}/oauth2/"

    with pytest.raises(DeviceCodeExpired) as expired:
        await poll_device_authorization(device, sleep=sleep)

    assert sleep.waits == [5, 5, 2]
    assert isinstance(expired.value.__cause__, TwitchUnavailable)
    assert "token endpoint could not be reached" in str(expired.value)
    assert device.device_code not in str(expired.value)


async def test_stopping_ends_the_wait_at_once(sandbox: Sandbox) -> None:
    device = await start_device_authorization(scopes=SCOPES)
    stopping = asyncio.Event()
    asyncio.get_running_loop().call_later(0.05, stopping.set)
    started = time.monotonic()

    with pytest.raises(DevicePollingStopped):
        await poll_device_authorization(device, stopping=stopping)

    assert time.monotonic() - started < 2  # not the 5 s interval
    assert polls(sandbox) == []


async def test_a_stop_asked_for_before_polling_polls_nothing(
    sandbox: Sandbox, sleep: FakeSleep
) -> None:
    device = await start_device_authorization(scopes=SCOPES)
    stopping = asyncio.Event()
    stopping.set()

    with pytest.raises(DevicePollingStopped):
        await poll_device_authorization(device, sleep=sleep, stopping=stopping)

    assert sleep.waits == []
    assert polls(sandbox) == []


async def test_a_grant_that_arrives_as_the_stop_is_asked_for_is_kept(
    sandbox: Sandbox, sleep: FakeSleep
) -> None:
    device = await start_device_authorization(scopes=SCOPES)
    sandbox.approve_device(device.user_code, login="thebot")
    stopping = asyncio.Event()
    # The stop comes while the poll that brings the grant is under way.
    sandbox.set_latency(0.3, "token")
    sleep.after[1] = lambda: asyncio.get_running_loop().call_later(0.05, stopping.set)

    grant = await poll_device_authorization(device, sleep=sleep, stopping=stopping)

    assert grant.access_token
    assert stopping.is_set()


def test_the_device_flow_is_part_of_the_seam() -> None:
    assert twitch.DeviceAuthorization is DeviceAuthorization
    assert twitch.start_device_authorization is start_device_authorization
    assert twitch.poll_device_authorization is poll_device_authorization
