"""Twitch's Device Code Grant, for connecting an account from a terminal: ask
id.twitch.tv for a device code, show the person where to enter it, and poll the
token endpoint until they approve, decline or the code expires.

Requests follow Twitch's "Device code grant flow" guide: `POST /oauth2/device`
with `client_id` and `scopes`, then `POST /oauth2/token` with `client_id`,
`scopes`, `device_code` and `grant_type=urn:ietf:params:oauth:grant-type:
device_code`, all in form bodies. No client secret goes with either: Twitch needs
none for this grant, even from a confidential client (twitchdev/issues#943), and
a secret is not sent where it is not needed. The grant's refresh token is then
refreshed like any other (`oauth.refresh`, with the secret).

Polling waits `interval` seconds before each request (the code was only just shown;
RFC 8628 asks for the interval between requests), waits 5 seconds longer for the
rest of the code's life after each `slow_down`, and keeps going on
`authorization_pending` and on failures that say nothing about the code (Twitch
unreachable, 5xx, 429), so a passing outage costs a poll, not the connection. It
ends at the code's expiry at the latest. A poll whose answer is lost after Twitch
minted the pair spends the code: the next poll hears that the code is invalid,
and the person has to start again.

The device code is a credential until it expires: it stays out of `repr`, log
lines and exception texts, as tokens do.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal, TypeGuard
from urllib.parse import urlsplit

from django.conf import settings
from django.utils import timezone
from django.views.decorators.debug import sensitive_variables

from accounts.twitch.errors import (
    DeviceAccessDenied,
    DeviceCodeExpired,
    TwitchUnavailable,
)
from accounts.twitch.http import post_form, raise_for_status, send, with_retries

# The same strict reading of a token answer as for a code exchange.
from accounts.twitch.oauth import TOKEN_RE, TokenGrant, _token_grant

logger = logging.getLogger(__name__)

GRANT_TYPE = "urn:ietf:params:oauth:grant-type:device_code"
# RFC 8628, section 3.5: the interval when none is given, and what each
# slow_down adds to it.
DEFAULT_INTERVAL = 5
SLOW_DOWN_STEP = 5
# Beyond anything Twitch sends (5 s, 1800 s): larger is nonsense.
MAX_INTERVAL = 300
MAX_EXPIRES_IN = 24 * 3600
USER_CODE_RE = re.compile(r"[A-Za-z0-9-]{1,32}")

Sleep = Callable[[float], Awaitable[object]]


class DevicePollingStopped(Exception):
    """Polling ended because the caller asked it to stop (`stopping` was set):
    not a failure of Twitch's. The code may still be approved; nothing collects
    the grant then, and it expires unused."""


@dataclass(frozen=True)
class DeviceAuthorization:
    """A device code waiting for a person: show them `verification_uri` (it holds
    the code) or `user_code`, then poll with `poll_device_authorization`."""

    device_code: str = field(repr=False)
    user_code: str
    verification_uri: str
    # When Twitch stops accepting the code (aware), and its lifetime as Twitch
    # gave it, in seconds.
    expires_at: datetime
    expires_in: int
    # Seconds to wait between polls, as Twitch asked.
    interval: int
    # Asked for again when polling, as Twitch's guide says.
    scopes: tuple[str, ...]


@sensitive_variables()
async def start_device_authorization(*, scopes: list[str]) -> DeviceAuthorization:
    """Ask Twitch for a device code for `scopes`. Raises `TwitchUnavailable` when
    Twitch cannot be asked (after retries) or answers nonsense, `TwitchRejected`
    when it refuses (an unknown client or scope)."""
    requested = tuple(dict.fromkeys(scopes))
    form = {"client_id": settings.TWITCH_CLIENT_ID, "scopes": " ".join(requested)}

    async def ask() -> dict[str, Any]:
        return await post_form("device", form, credential_words=())

    # A code nobody has seen is worth nothing, so asking again is harmless.
    body = await with_retries(ask)
    return _device_authorization(body, scopes=requested)


@sensitive_variables()
async def poll_device_authorization(
    device: DeviceAuthorization,
    *,
    sleep: Sleep = asyncio.sleep,
    stopping: asyncio.Event | None = None,
) -> TokenGrant:
    """Wait for the person to approve `device`; the grant Twitch then hands out.

    Raises `DeviceAccessDenied` when they decline, `DeviceCodeExpired` when the
    code expires first (or Twitch no longer accepts it), `TwitchRejected` for any
    other refusal, `TwitchUnavailable` for an approval whose answer cannot be
    read, and `DevicePollingStopped` as soon as `stopping` is set (a poll in
    flight is finished first, and its grant returned if it brought one). `sleep`
    waits between polls; a test passes one that moves a fake clock.
    """
    interval = device.interval
    wait = interval
    failure: TwitchUnavailable | None = None
    while True:
        left = (device.expires_at - timezone.now()).total_seconds()
        # Never waiting past the expiry: the code is over then, polled or not.
        expiring = left <= wait
        if not await _wait(min(wait, max(left, 0)), sleep=sleep, stopping=stopping):
            raise DevicePollingStopped("Stopped waiting for the device code.")
        if expiring or timezone.now() >= device.expires_at:
            message = "The device code expired before anyone approved it."
            if failure is not None:
                message += f" The last poll failed: {failure}"
            raise DeviceCodeExpired(message) from failure
        wait = interval
        try:
            answer = await _poll(device)
        except TwitchUnavailable as error:
            if not error.retryable:
                raise
            failure = error
            # A 429 may ask for longer than the interval; never for less.
            wait = max(interval, error.retry_after or 0)
            logger.warning(
                "polling Twitch for a device code failed; trying again in %.0f s: %s",
                wait,
                error,
            )
            continue
        failure = None
        if answer == "slow_down":
            interval += SLOW_DOWN_STEP
            wait = interval
            logger.info("Twitch asked for fewer polls: one every %s s now", interval)
        elif answer != "authorization_pending":
            return answer


@sensitive_variables()
async def _poll(
    device: DeviceAuthorization,
) -> TokenGrant | Literal["authorization_pending", "slow_down"]:
    """One poll: the grant, or why there is none yet."""
    form = {
        "client_id": settings.TWITCH_CLIENT_ID,
        "scopes": " ".join(device.scopes),
        "device_code": device.device_code,
        "grant_type": GRANT_TYPE,
    }
    url = settings.TWITCH_AUTH_BASE_URL + "token"
    answer = await send("POST", url, endpoint="token", data=form)
    if answer.status == 400:
        message = _message(answer.body)
        if message in ("authorization_pending", "slow_down"):
            return message
        if message == "access_denied":
            raise DeviceAccessDenied("The person at Twitch declined the connection.")
        if message == "expired_token":
            raise DeviceCodeExpired("Twitch says the device code has expired.")
        if message == "invalid device code":
            raise DeviceCodeExpired(
                "Twitch no longer accepts the device code (it expired or was used)."
            )
    raise_for_status("token", answer)
    try:
        if not isinstance(answer.body, dict):
            raise TwitchUnavailable(
                f"Twitch's token endpoint answered {answer.status} with a body that "
                "is not a JSON object."
            )
        return _token_grant(answer.body)
    except TwitchUnavailable as error:
        # The code may be spent by now: asking again cannot bring the pair back.
        raise TwitchUnavailable(str(error), retryable=False) from None


def _message(body: object) -> str:
    """Twitch's word in a 400 answer (RFC 8628 puts it in `error`)."""
    if not isinstance(body, dict):
        return ""
    return str(body.get("message") or body.get("error") or "")


async def _wait(
    seconds: float, *, sleep: Sleep, stopping: asyncio.Event | None
) -> bool:
    """Sleep `seconds`; False as soon as `stopping` is set."""
    if stopping is None:
        await sleep(seconds)
        return True
    if stopping.is_set():
        return False
    napping = asyncio.ensure_future(sleep(seconds))
    stopped = asyncio.ensure_future(stopping.wait())
    try:
        await asyncio.wait({napping, stopped}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        napping.cancel()
        stopped.cancel()
    if stopping.is_set():
        return False
    napping.result()  # a sleep that failed fails the wait
    return True


@sensitive_variables()
def _device_authorization(
    body: dict[str, Any], *, scopes: tuple[str, ...]
) -> DeviceAuthorization:
    nonsense = TwitchUnavailable("Twitch's device endpoint answered nonsense.")
    device_code = body.get("device_code")
    user_code = body.get("user_code")
    verification_uri = body.get("verification_uri")
    expires_in = _seconds(body.get("expires_in"), maximum=MAX_EXPIRES_IN)
    # RFC 8628: clients use 5 when the interval is left out.
    interval = _seconds(body.get("interval", DEFAULT_INTERVAL), maximum=MAX_INTERVAL)
    if (
        not isinstance(device_code, str)
        or not TOKEN_RE.fullmatch(device_code)
        or not isinstance(user_code, str)
        or not USER_CODE_RE.fullmatch(user_code)
        or not _is_web_address(verification_uri)
        or expires_in is None
        or interval is None
    ):
        raise nonsense
    return DeviceAuthorization(
        device_code=device_code,
        user_code=user_code,
        verification_uri=verification_uri,
        expires_at=timezone.now() + timedelta(seconds=expires_in),
        expires_in=expires_in,
        interval=interval,
        scopes=scopes,
    )


def _seconds(value: object, *, maximum: int) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return value if 1 <= value <= maximum else None


def _is_web_address(value: object) -> TypeGuard[str]:
    """An http(s) URL a person can be shown: printable, no spaces, with a host."""
    if not isinstance(value, str) or not 0 < len(value) <= 2048:
        return False
    if not all(c.isprintable() and not c.isspace() for c in value):
        return False
    parts = urlsplit(value)
    return parts.scheme in ("http", "https") and bool(parts.netloc)
