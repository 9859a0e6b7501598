"""The token engine's database side: claiming tokens with a lease, storing what
Twitch said under that lease, and giving leases back.

Sync ORM code in transactions; the engine runs it on Django's sync thread.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from django.contrib.auth.base_user import AbstractBaseUser
from django.db import DatabaseError
from django.utils import timezone

from accounts import twitch
from accounts.db import atomic_write, writer_turn
from accounts.models import TokenEvent, TwitchToken
from accounts.tokens.results import Attempt, Result, Stored, Verdict
from accounts.tokens.schedule import LEASE, LEASE_GRACE, PINNED, Plan

logger = logging.getLogger(__name__)

NO_REFRESH_TOKEN = (
    "Twitch sent no refresh token: the connection works until its access token "
    "expires, then needs a reconnect."
)


def claim(pks: list[int], *, plan: Plan) -> list[TwitchToken]:
    """Lease the tokens among `pks` that are still due and that no run holds."""
    now = timezone.now()
    lease = now + LEASE
    with atomic_write():
        # On PostgreSQL, rows another run has locked are skipped, not waited for;
        # SQLite has no row locks, but its IMMEDIATE transactions serialise claims.
        claimable = list(
            plan.due(TwitchToken.objects.active().filter(pk__in=pks), now=now)
            .claimable(lapsed_before=now - LEASE_GRACE)
            .select_for_update(skip_locked=True)
            .values_list("pk", flat=True)
        )
        TwitchToken.objects.filter(pk__in=claimable).update(claimed_until=lease)
    return list(
        TwitchToken.objects.filter(pk__in=claimable, claimed_until=lease).order_by(
            "expires_at"
        )
    )


def release_quietly(tokens: list[TwitchToken]) -> None:
    """Give back leases of tokens a run claimed but never started on, if the
    database lets us; otherwise they lapse after LEASE."""
    try:
        with writer_turn():
            for token in tokens:
                TwitchToken.objects.filter(
                    pk=token.pk, claimed_until=token.claimed_until
                ).update(claimed_until=None)
    except DatabaseError:
        logger.warning(
            "could not release %s leases; they lapse by themselves", len(tokens)
        )


def store_results(
    results: list[Result], *, source: TokenEvent.Source, actor: AbstractBaseUser | None
) -> list[Stored]:
    """Write the results in one transaction; what became of each, in order.

    Only a `DatabaseError` (the database refusing writes) fails the whole batch,
    which the caller then retries as it is: nothing in `results` changes before the
    commit. Any other failure is one result's problem: the batch is written again
    one result at a time, so the others are kept.
    """
    try:
        return _store_batch(results, source=source, actor=actor)
    except DatabaseError:
        raise
    except Exception:
        logger.exception("storing %s results failed; storing each alone", len(results))
    stored: list[Stored] = []
    for result in results:
        try:
            stored += _store_batch([result], source=source, actor=actor)
        except DatabaseError:
            raise
        except Exception:
            logger.exception("could not store the result for token %s", result.token.pk)
            stored.append(_give_up_storing(result))
    return stored


def _store_batch(
    results: list[Result], *, source: TokenEvent.Source, actor: AbstractBaseUser | None
) -> list[Stored]:
    now = timezone.now()
    stored: list[Stored] = []
    written: list[tuple[Result, dict[str, Any], Stored]] = []
    with atomic_write():
        for result in results:
            superseded = _was_superseded(result)
            changes = changes_for(result, now=now, superseded=superseded)
            if TwitchToken.objects.filter(
                pk=result.token.pk,
                claimed_until=result.lease,
                status=result.token.status,
            ).update(**changes):
                verdict = Stored.SUPERSEDED if superseded else Stored.STORED
                written.append((result, changes, verdict))
            elif _holds_grant_already(result):
                verdict = Stored.STORED  # an earlier try of this batch stored it
            else:
                verdict = Stored.GONE
            stored.append(verdict)
        TokenEvent.objects.bulk_create(
            event
            for result, _, _ in written
            for event in events_for(result, source=source, actor=actor, now=now)
        )
    for result, verdict in zip(results, stored, strict=True):
        if verdict is Stored.GONE:
            # Revoked or re-claimed meanwhile: what we learnt is no longer ours to
            # write (and a grant nobody will hold is revoked at Twitch).
            logger.warning(
                "token %s changed during its refresh; not stored", result.token.pk
            )
    # The caller's copies, as the rows now are (for the signals it sends).
    for result, changes, _ in written:
        for name, value in changes.items():
            setattr(result.token, name, value)
    return stored


def _give_up_storing(result: Result) -> Stored:
    error = "Could not be stored; see the logs."
    # After the batch rolled back: outside any transaction.
    with writer_turn():
        if result.findings.grant is not None:
            # Pinned: nobody may present the old refresh token before a later run
            # has stored this grant from the spool (the replay releases the pin).
            TwitchToken.objects.filter(pk=result.token.pk).update(
                claimed_until=timezone.now() + PINNED, last_error=error
            )
        else:
            TwitchToken.objects.filter(
                pk=result.token.pk, claimed_until=result.lease
            ).update(claimed_until=None, last_error=error)
    return Stored.FAILED


def _holds_grant_already(result: Result) -> bool:
    """An earlier try of this batch stored this grant. Both tokens are compared:
    a grant without a refresh token must not be taken for a row whose secrets a
    disconnect wiped meanwhile."""
    grant = result.findings.grant
    if grant is None:
        return False
    row = (
        TwitchToken.objects.filter(pk=result.token.pk, status=TwitchToken.Status.ACTIVE)
        .only("access_token", "refresh_token")
        .first()
    )
    return (
        row is not None
        and row.access_token == grant.access_token
        and row.refresh_token == grant.refresh_token
    )


def _was_superseded(result: Result) -> bool:
    """Twitch rejected our refresh token, but the row holds a newer one by now (a
    replay or site code stored it): nothing is wrong with the connection."""
    if result.findings.refresh is not Attempt.REJECTED:
        return False
    current = (
        TwitchToken.objects.select_for_update()
        .filter(pk=result.token.pk)
        .only("refresh_token")
        .first()
    )
    return current is not None and current.refresh_token != result.token.refresh_token


def changes_for(result: Result, *, now: datetime, superseded: bool) -> dict[str, Any]:
    """The columns to write for one result."""
    found = result.findings
    changes: dict[str, Any] = {"claimed_until": None, "updated_at": now}
    if found.grant is not None:
        changes.update(
            access_token=found.grant.access_token,
            refresh_token=found.grant.refresh_token,
            # Refreshing keeps a grant's scopes: unreadable ones change nothing.
            scopes=result.token.scopes
            if found.grant.scopes is None
            else found.grant.scopes,
            expires_at=twitch.expires_at(now, found.grant.expires_in, found.info),
            last_refreshed_at=now,
            last_error="",
        )
    if found.validation in (Attempt.SUCCEEDED, Attempt.REJECTED):
        changes["last_validated_at"] = now
    if found.info is not None:
        # Twitch users rename; and validation says which scopes the token has.
        changes.update(login=found.info.login, scopes=found.info.scopes)
        if found.grant is None:
            changes["expires_at"] = twitch.expires_at(now, None, found.info)
    if superseded:
        return changes
    if found.verdict in (Verdict.DEAD_GRANT, Verdict.CANNOT_RENEW):
        changes["status"] = TwitchToken.Status.NEEDS_RECONNECT
    if found.error:
        changes["last_error"] = found.error[:200]
    if found.verdict is Verdict.REFRESHED and not found.grant.refresh_token:
        # The refresh token we presented is spent and Twitch sent no other.
        changes["last_error"] = NO_REFRESH_TOKEN
    return changes


def events_for(
    result: Result,
    *,
    source: TokenEvent.Source,
    actor: AbstractBaseUser | None,
    now: datetime,
) -> list[TokenEvent]:
    """One event per duty attempted, saying how it went."""
    found = result.findings
    return [
        TokenEvent(
            token=result.token,
            action=action,
            outcome=attempt,
            source=source,
            actor=actor,
            detail="" if attempt is Attempt.SUCCEEDED else found.error[:200],
            created_at=now,
        )
        for action, attempt in (
            (TokenEvent.Action.VALIDATE, found.validation),
            (TokenEvent.Action.REFRESH, found.refresh),
        )
        if attempt is not None
    ]
