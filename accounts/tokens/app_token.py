"""The app access token: for app-only Helix endpoints (EventSub subscriptions, public
lookups). Fetched by one process at a time, stored encrypted, shared by all."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import IntegrityError
from django.utils import timezone
from django.views.decorators.debug import sensitive_variables

from accounts import twitch
from accounts.db import atomic_write, writer_turn
from accounts.models import AppToken

# App tokens live about 60 days; a new one is fetched this long before expiry.
RENEW_BEFORE = timedelta(hours=1)
# One process fetches; longer than its worst case (three attempts of 8 s, backoff,
# a rate limit's wait of up to 30 s), so no second process starts meanwhile.
FETCH_LEASE = timedelta(minutes=2)
WAIT = 15.0  # seconds
POLL = 0.2  # seconds
# The longest site code waits out Twitch's rate limit: the seam's timeout.
SITE_MAX_WAIT = 8.0  # seconds


@asynccontextmanager
async def twitch_app() -> AsyncIterator[twitch.AppClient]:
    """A twitchAPI `Twitch` authenticated with the app access token.

        async with twitch_app() as client:
            streams = await first(client.get_users(logins=["twitchdev"]))

    A token Twitch refuses (401) is replaced at once, through the same shared path.
    Raises `twitch.TwitchUnavailable` when no token can be had.
    """

    async def renew(refused: str) -> str:
        return await app_access_token(refused=refused)

    yield await twitch.app_client(access_token=await app_access_token(), renew=renew)


@sensitive_variables()
async def app_access_token(*, refused: str | None = None) -> str:
    """The shared app access token; a new one when none is stored, it is about to
    expire, or it is the one Twitch just `refused`."""
    deadline = time.monotonic() + WAIT
    while True:
        row = await AppToken.objects.filter(
            client_id=settings.TWITCH_CLIENT_ID
        ).afirst()
        if row is not None and _usable(row, refused=refused):
            return row.access_token
        # A transaction with a row lock: sync ORM, on Django's sync thread.
        if await sync_to_async(_claim_fetch)(refused=refused):
            return await _fetch_and_store()
        if time.monotonic() > deadline:
            raise twitch.TwitchUnavailable(
                "Another process is fetching the app access token and it is taking "
                "too long."
            )
        await asyncio.sleep(POLL)


def _usable(row: AppToken, *, refused: str | None) -> bool:
    return (
        bool(row.access_token)
        and row.access_token != refused
        and row.expires_at is not None
        and row.expires_at > timezone.now() + RENEW_BEFORE
    )


def _claim_fetch(*, refused: str | None) -> bool:
    """Take the right to fetch a new token; False while another process has it, or
    once a usable token has appeared meanwhile."""
    now = timezone.now()
    try:
        with atomic_write():
            row, _ = AppToken.objects.select_for_update().get_or_create(
                client_id=settings.TWITCH_CLIENT_ID
            )
            if _usable(row, refused=refused):
                return False
            if row.claimed_until is not None and row.claimed_until > now:
                return False
            row.claimed_until = now + FETCH_LEASE
            row.save(update_fields=["claimed_until", "updated_at"])
    except IntegrityError:
        return False  # another process created the row at the same moment
    return True


@sensitive_variables()
async def _fetch_and_store() -> str:
    try:
        # Site code is waiting: a rate limit is waited out only within a call's time.
        grant = await twitch.with_retries(
            twitch.fetch_app_token, deadline=time.monotonic() + SITE_MAX_WAIT
        )
    except BaseException:
        await sync_to_async(_release_fetch)()
        raise
    row = await AppToken.objects.aget(client_id=settings.TWITCH_CLIENT_ID)
    row.access_token = grant.access_token
    row.expires_at = timezone.now() + timedelta(seconds=grant.expires_in)
    row.claimed_until = None
    # Written whatever happened meanwhile: a token Twitch just issued is good, and
    # the newest one is the one to share.
    await sync_to_async(_store_fetched)(row)
    return grant.access_token


# Writes in this process's writer turn (accounts/db.py), so on Django's sync
# thread: one trip each, as the async ORM's own would be.


def _release_fetch() -> None:
    with writer_turn():
        AppToken.objects.filter(client_id=settings.TWITCH_CLIENT_ID).update(
            claimed_until=None
        )


def _store_fetched(row: AppToken) -> None:
    with writer_turn():
        row.save(update_fields=["access_token", "expires_at", "claimed_until"])
