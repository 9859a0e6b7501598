"""Replaying the spool: token pairs that a run which died obtained from Twitch but
never stored. Done before any refresh, so nobody presents a refresh token Twitch
has already replaced."""

from __future__ import annotations

import enum
import logging
from datetime import UTC, datetime
from typing import Any

from asgiref.sync import sync_to_async
from django.contrib.auth.base_user import AbstractBaseUser
from django.utils import timezone

from accounts import twitch
from accounts.db import atomic_write
from accounts.models import TokenEvent, TwitchToken
from accounts.tokens import spool
from accounts.tokens.store import NO_REFRESH_TOKEN

logger = logging.getLogger(__name__)


async def areplay_spool(
    *, source: TokenEvent.Source, actor: AbstractBaseUser | None = None
) -> int:
    """Store the token pairs that runs which died left in the spool; return how many.

    Runs before any refresh, so nobody presents a refresh token Twitch has already
    replaced. A pair whose connection has moved on (revoked, reconnected) is
    revoked at Twitch instead.
    """
    if not spool.has_files():
        return 0  # the usual case: no trip to the sync thread on every call
    # File locks and one transaction per pair: sync code, on Django's sync thread.
    stored, orphans = await sync_to_async(_replay_abandoned)(source=source, actor=actor)
    for access_token in orphans:
        await twitch.revoke_quietly(access_token)
    return stored


class _Replay(enum.Enum):
    STORED = "stored"
    ALREADY_STORED = "already stored"
    WAITING = "waiting"  # the row holds neither the replaced pair nor this one
    ORPHANED = "orphaned"


def _replay_abandoned(
    *, source: TokenEvent.Source, actor: AbstractBaseUser | None
) -> tuple[int, list[str]]:
    stored, orphans = 0, []
    with spool.abandoned() as entries:
        waiting = list(entries)
        # A chain of refreshes of one token applies in order; loop until none moves.
        progress = True
        while waiting and progress:
            progress = False
            for entry in list(waiting):
                verdict = _replay_one(entry, source=source, actor=actor)
                if verdict is _Replay.WAITING:
                    continue
                waiting.remove(entry)
                progress = True
                stored += verdict is _Replay.STORED
                if verdict is _Replay.ORPHANED:
                    orphans.append(entry.access_token)
        orphans.extend(entry.access_token for entry in waiting)
    if stored or orphans:
        logger.warning(
            "stored %s token pair(s) from the spool of an interrupted run; "
            "%s no longer had a connection to go to",
            stored,
            len(orphans),
        )
    return stored, orphans


def _replay_one(
    entry: spool.Entry, *, source: TokenEvent.Source, actor: AbstractBaseUser | None
) -> _Replay:
    with atomic_write():
        row = TwitchToken.objects.select_for_update().filter(pk=entry.token_pk).first()
        if row is None or row.status != TwitchToken.Status.ACTIVE:
            return _Replay.ORPHANED
        if row.refresh_token == entry.refresh_token:
            return _Replay.ALREADY_STORED
        if spool.digest(row.refresh_token) != entry.replaced:
            return _Replay.WAITING
        obtained = datetime.fromtimestamp(entry.obtained_at, tz=UTC)
        changes: dict[str, Any] = {
            "access_token": entry.access_token,
            "refresh_token": entry.refresh_token,
            "scopes": row.scopes if entry.scopes is None else entry.scopes,
            "expires_at": twitch.expires_at(obtained, entry.expires_in),
            "last_refreshed_at": obtained,
            # A pair without a refresh token works until its access token ends.
            "last_error": "" if entry.refresh_token else NO_REFRESH_TOKEN,
            "updated_at": timezone.now(),
        }
        # Whoever holds the lease now (the run that died, a pin) could only present
        # the refresh token this pair replaced: the lease ends here.
        changes["claimed_until"] = None
        TwitchToken.objects.filter(pk=row.pk).update(**changes)
        TokenEvent.objects.create(
            token=row,
            action=TokenEvent.Action.REFRESH,
            outcome=TokenEvent.Outcome.SUCCEEDED,
            source=source,
            actor=actor,
            detail="Stored from the spool of an interrupted run.",
        )
    return _Replay.STORED
