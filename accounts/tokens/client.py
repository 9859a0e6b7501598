"""`twitch_for(user)`: a twitchAPI client acting as a user, for site code, whose
every refresh goes through the leased engine (one refresher per grant)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from datetime import timedelta

from asgiref.sync import sync_to_async
from django.contrib.auth.base_user import AbstractBaseUser
from django.db import DatabaseError
from django.utils import timezone
from django.views.decorators.debug import sensitive_variables

from accounts import twitch
from accounts.db import writer_turn
from accounts.models import TokenEvent, TwitchToken
from accounts.roles import DEFAULT_ROLE, role_named
from accounts.tokens.engine import FLUSH_EVERY, Outcome, Plan, amaintain_tokens
from accounts.tokens.replay import areplay_spool
from accounts.tokens.schedule import LEASE_GRACE


class NoUsableToken(Exception):
    """The user has no Twitch connection the site can act with (none, revoked, or
    waiting for the user to reconnect)."""


class MissingScopes(NoUsableToken):
    """The connection was not granted scopes the caller needs."""

    def __init__(
        self, user: AbstractBaseUser, missing: list[str], role: str = DEFAULT_ROLE
    ) -> None:
        super().__init__(
            f"{user}'s Twitch connection ({role}) lacks the scope(s) "
            f"{' '.join(missing)}; they must reconnect it and approve them."
        )
        self.missing = missing
        self.role = role


class TokenStoreUnavailable(NoUsableToken):
    """The database refused to store a refreshed token just now. Nothing is lost
    (the pair waits in the spool for the next run); try again later."""


# How long site code waits for another process (cron, another request) that holds a
# token's lease to store the pair it is fetching, before giving up.
LEASE_WAIT = 15.0  # seconds
# Site code waits this long for a database that refuses writes (a cron run waits
# longer: nobody is waiting for it).
SITE_STORE_PATIENCE = 5.0  # seconds


@asynccontextmanager
async def twitch_for(
    user: AbstractBaseUser,
    *,
    role: str = DEFAULT_ROLE,
    scopes: Iterable[str] = (),
    min_lifetime: timedelta = timedelta(minutes=5),
) -> AsyncIterator[twitch.UserClient]:
    """A twitchAPI `Twitch` client acting as `user`'s Twitch account in `role` (the
    default: their own; "bot": the account their bot speaks as), for chat bots and
    stream tools.

        async with twitch_for(user) as client:
            me = await first(client.get_users())

    The token is validated first (and refreshed if it is close to expiry or Twitch
    rejects it). Every refresh, here or when a call meets a 401 later, goes
    through the same leased path as `refresh_tokens`, so one grant never has two
    refreshers. Raises `NoUsableToken` when the user has no working connection
    (a dead grant is marked `needs_reconnect` at once), `MissingScopes` (a
    `NoUsableToken`) before any call to Twitch when it lacks one of `scopes`, and
    `twitch.TwitchUnavailable` when Twitch cannot be reached; a call never waits
    longer than the seam's timeout.
    """
    if role_named(role) is None:
        # A typo must not read as "not connected".
        raise ValueError(f"This site has no Twitch connection role {role!r}.")
    await areplay_spool(source=TokenEvent.Source.SITE)
    token = await _usable_token(user, role)
    # Before any call to Twitch: a missing scope is not Twitch's to tell us.
    if missing := [s for s in scopes if s not in (token.scopes or [])]:
        raise MissingScopes(user, missing, role)
    if (
        token.refresh_token  # else used while it lasts: validation says when not
        and token.expires_at is not None
        and token.expires_at <= timezone.now() + min_lifetime
    ):
        token = await _refresh_through_lease(token)
    try:
        info = await twitch.validate(token.access_token)
    except twitch.InvalidCredential:
        token = await _refresh_through_lease(token)
    else:
        await _record_validation(token, info)

    async def renew(held_access: str, held_refresh: str) -> tuple[str, str]:
        fresh = await _renew(token)
        return fresh.access_token, fresh.refresh_token

    yield await twitch.user_client(
        access_token=token.access_token,
        refresh_token=token.refresh_token,
        scopes=token.scopes,
        renew=renew,
    )


async def _usable_token(user: AbstractBaseUser, role: str) -> TwitchToken:
    token = await TwitchToken.objects.filter(user=user, role=role).afirst()
    if token is None or not token.is_usable:
        raise NoUsableToken(f"{user} has no usable Twitch connection ({role}).")
    return token


@sensitive_variables()
async def _renew(token: TwitchToken) -> TwitchToken:
    """Twitch answered a client's call with 401: the pair the client should use now.

    Helix also answers 401 for a missing scope, so the stored token is refreshed
    only when validation says it is dead; a pair someone else stored meanwhile is
    used as it is.
    """
    current = await TwitchToken.objects.filter(pk=token.pk).afirst()
    if (
        current is None
        or not current.is_usable
        or current.twitch_user_id != token.twitch_user_id
    ):
        raise NoUsableToken("The Twitch connection is no longer usable.")
    try:
        info = await twitch.validate(current.access_token)
    except twitch.InvalidCredential:
        return await _refresh_through_lease(current)
    await _record_validation(current, info)
    return current


async def _refresh_through_lease(token: TwitchToken) -> TwitchToken:
    """Refresh `token` as `refresh_tokens` does, or wait for whoever holds its lease
    (a cron run, another request) and use the pair it stores."""
    deadline = time.monotonic() + LEASE_WAIT
    while True:
        try:
            report = await amaintain_tokens(
                pks=[token.pk],
                plan=Plan(refresh_within=None, validate=False),
                source=TokenEvent.Source.SITE,
                store_patience=SITE_STORE_PATIENCE,
                # A rate limit is waited out only within a call's time.
                deadline=time.monotonic() + twitch.http.TIMEOUT.total,
            )
        except DatabaseError:
            raise TokenStoreUnavailable(
                "The database cannot store the refreshed Twitch token just now."
            ) from None
        while True:
            current = await TwitchToken.objects.filter(pk=token.pk).afirst()
            if current is None or not current.is_usable:
                raise NoUsableToken("The Twitch connection needs a reconnect.")
            if current.access_token and (
                report.counts[Outcome.REFRESHED]
                or current.refresh_token != token.refresh_token
            ):
                return current
            if report.counts[Outcome.FAILED]:
                if report.rate_limited:
                    raise twitch.TwitchRateLimited(
                        "Twitch is rate limiting this site's token refreshes.",
                        retry_after=report.retry_after,
                    )
                raise twitch.TwitchUnavailable(
                    current.last_error or "Twitch could not refresh the token."
                )
            if not token.refresh_token and report.counts[Outcome.VALIDATED]:
                # Nothing to refresh with, and Twitch says the access token works.
                return current
            lapsed_before = timezone.now() - LEASE_GRACE
            if current.claimed_until is None or current.claimed_until < lapsed_before:
                break  # the lease is free and nothing changed: refresh it ourselves
            if time.monotonic() > deadline:
                raise twitch.TwitchUnavailable(
                    "The token is being refreshed elsewhere and it is taking too long."
                )
            await asyncio.sleep(FLUSH_EVERY)


async def _record_validation(token: TwitchToken, info: twitch.TokenInfo) -> None:
    """What a validation teaches us (login, scopes, expiry) and that it happened."""
    now = timezone.now()
    token.login, token.scopes = info.login, info.scopes
    token.expires_at, token.last_validated_at = twitch.expires_at(now, None, info), now
    # One UPDATE in this process's writer turn (accounts/db.py): on Django's thread.
    await sync_to_async(_store_validation)(token, user_id=info.user_id)


def _store_validation(token: TwitchToken, *, user_id: str) -> None:
    with writer_turn():
        TwitchToken.objects.filter(
            pk=token.pk, twitch_user_id=user_id, status=TwitchToken.Status.ACTIVE
        ).update(
            login=token.login,
            scopes=token.scopes,
            expires_at=token.expires_at,
            last_validated_at=token.last_validated_at,
        )
