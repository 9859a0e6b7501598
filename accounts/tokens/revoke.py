"""Revoking connections: at Twitch first, then wiping the secrets here whatever
Twitch said (the user's disconnect, the admin's action)."""

from __future__ import annotations

import asyncio
import enum
import time
from collections import Counter
from typing import Any

from asgiref.sync import sync_to_async
from django.contrib.auth.base_user import AbstractBaseUser

from accounts import signals, twitch
from accounts.db import atomic_write
from accounts.models import TokenEvent, TwitchToken


class RevokeOutcome(enum.Enum):
    # Twitch ended the access token; our copy of the refresh token is wiped (Twitch
    # promises nothing about the refresh token itself).
    REVOKED = "revoked"
    # Twitch said the access token was already invalid (expired or revoked), so it
    # did nothing; our copies are wiped.
    ALREADY_INVALID = "already invalid at Twitch"
    # Forgotten here, but Twitch could not be told: the user should disconnect the
    # app in their Twitch settings too.
    REVOKED_LOCALLY = "revoked locally but Twitch was unreachable"
    ALREADY_REVOKED = "already revoked"
    # Only from `arevoke_tokens` given a budget: not started in time, so neither
    # Twitch nor the row was touched.
    NOT_STARTED = "not revoked yet"


async def revoke_token(
    *,
    token: TwitchToken,
    source: TokenEvent.Source,
    actor: AbstractBaseUser | None = None,
) -> RevokeOutcome:
    """Revoke the token at Twitch, then wipe its secrets here whatever Twitch said.

    The site must stop holding the credential even when Twitch cannot be reached.
    The row stays, marked revoked, for the record.
    """
    # The caller's copy may be older than a refresh that happened since: revoke
    # the access token the row holds now.
    token = await TwitchToken.objects.filter(pk=token.pk).afirst() or token
    if token.status == TwitchToken.Status.REVOKED and not token.refresh_token:
        return RevokeOutcome.ALREADY_REVOKED
    if token.access_token:
        result = await twitch.revoke_quietly(token.access_token)
        outcome = {
            twitch.RevokeResult.ENDED: RevokeOutcome.REVOKED,
            twitch.RevokeResult.ALREADY_INVALID: RevokeOutcome.ALREADY_INVALID,
            None: RevokeOutcome.REVOKED_LOCALLY,
        }[result]
    elif token.is_undecryptable:
        outcome = RevokeOutcome.REVOKED_LOCALLY
    else:
        outcome = RevokeOutcome.ALREADY_INVALID
    # The row and its audit event in one transaction: on Django's sync thread.
    stored_meanwhile = await sync_to_async(_wipe)(
        token=token, outcome=outcome, source=source, actor=actor
    )
    if stored_meanwhile:
        # A refresh stored a new pair while we talked to Twitch: end it too.
        await twitch.revoke_quietly(stored_meanwhile)
    await signals.token_revoked.asend(sender=TwitchToken, token=token, role=token.role)
    return outcome


async def arevoke_tokens(
    *,
    tokens: list[TwitchToken],
    source: TokenEvent.Source,
    actor: AbstractBaseUser | None = None,
    concurrency: int = 20,
    budget: float | None = None,
) -> Counter[RevokeOutcome]:
    """Revoke many tokens, `concurrency` at a time; count each outcome.

    `budget`: seconds after which no token is started; those left are counted as
    `NOT_STARTED`, untouched. Each one started asks Twitch once (8 s at most).
    """
    limit = asyncio.Semaphore(concurrency)
    start_before = None if budget is None else time.monotonic() + budget

    async def revoke_one(token: TwitchToken) -> RevokeOutcome:
        async with limit:
            if start_before is not None and time.monotonic() > start_before:
                return RevokeOutcome.NOT_STARTED
            return await revoke_token(token=token, source=source, actor=actor)

    return Counter(await asyncio.gather(*(revoke_one(token) for token in tokens)))


def revoke_tokens(**options: Any) -> Counter[RevokeOutcome]:
    """`arevoke_tokens` for sync callers (admin actions)."""
    return twitch.run_sync(arevoke_tokens, **options)


# What the audit trail and Last error say about each way a revoke can go.
_REVOKE_RECORDS = {
    RevokeOutcome.REVOKED: (TokenEvent.Outcome.SUCCEEDED, "", ""),
    RevokeOutcome.ALREADY_INVALID: (
        TokenEvent.Outcome.REJECTED,
        "Twitch said the access token was already invalid, so it did nothing; "
        "secrets wiped here.",
        "",
    ),
    RevokeOutcome.REVOKED_LOCALLY: (
        TokenEvent.Outcome.UNAVAILABLE,
        "Twitch was unreachable; secrets wiped here.",
        "Revoked here; Twitch was unreachable.",
    ),
}


def _wipe(
    *,
    token: TwitchToken,
    outcome: RevokeOutcome,
    source: TokenEvent.Source,
    actor: AbstractBaseUser | None,
) -> str:
    """Wipe the row; return an access token it gained since `token` was read."""
    event_outcome, detail, last_error = _REVOKE_RECORDS[outcome]
    with atomic_write():
        current = TwitchToken.objects.select_for_update().filter(pk=token.pk).first()
        stored_meanwhile = ""
        if current is not None and current.access_token != token.access_token:
            stored_meanwhile = current.access_token
        token.mark_revoked(last_error=last_error)
        TokenEvent.objects.create(
            token=token,
            action=TokenEvent.Action.REVOKE,
            outcome=event_outcome,
            source=source,
            actor=actor,
            detail=detail,
        )
    return stored_meanwhile
