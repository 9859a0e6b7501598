"""What the site itself does with EventSub messages, after the answer:

- `user.authorization.revoke` for this client id ends every live connection of
  that Twitch account, whatever its role and whoever holds it, then tells the
  `token_revoked` receivers;
- a `revocation` (Twitch ended a subscription) is recorded and logged as an error.

Each step runs in one transaction with the note that it is done
(`EventSubMessage.done`), so a retry never does it twice. The receivers are a
step of their own, noted after they ran: they hear of a revoke at least once
(again if the process dies before the note). Every write is made under the
claim of the worker handling the message (`held`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import datetime
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings

from accounts import signals, twitch
from accounts.db import atomic_write
from accounts.eventsub.catalogue import REVOKE
from accounts.eventsub.webhook import MAX_AGE
from accounts.models import EventSubMessage, EventSubRevocation, TokenEvent, TwitchToken

logger = logging.getLogger(__name__)

REVOKE_HANDLER = "accounts.eventsub.revoke"
RECEIVERS_HANDLER = "accounts.eventsub.token_revoked"
REVOCATION_HANDLER = "accounts.eventsub.revocation"
# Asking Twitch about connections made around a (late) disconnect: at most this
# long in all. After the answer, so Twitch does not wait for it.
RECONNECT_CHECK_BUDGET = 5.0  # seconds
# Ended for a user's sake (their authorization, their account, their place as
# a moderator or in the chat, a beta type's maintenance): `subscribe` does not
# create them again until the account connects again. Twitch's documentation
# names no way back for any of these but the user's.
NOT_RECREATED = (
    "authorization_revoked",
    "user_removed",
    "moderator_removed",
    "chat_user_banned",
    "beta_maintenance",
)


class ClaimLost(Exception):
    """The worker's claim on a message ran out and another worker took it over:
    this one must not write anything more of it."""


def held(digest: str, claim: str) -> EventSubMessage:
    """The message's row, locked for the transaction, while `claim` is still
    the claim on it; `ClaimLost` otherwise."""
    row = EventSubMessage.objects.select_for_update().filter(pk=digest, claim=claim)
    found = row.first()
    if found is None:
        raise ClaimLost(digest)
    return found


def mark_done(digest: str, claim: str, name: str) -> None:
    with atomic_write():
        row = held(digest, claim)
        if name not in row.done:
            row.done = [*row.done, name]
            row.save(update_fields=["done"])


async def revoke_connections(row: EventSubMessage) -> None:
    if REVOKE_HANDLER not in row.done:
        keep = await _reconnected_since(row)
        await sync_to_async(_revoke_once)(row.digest, row.claim, keep=keep)
    await _tell_receivers(row.digest, row.claim)


async def _tell_receivers(digest: str, claim: str) -> None:
    """`token_revoked` for each connection the message revoked, then the note
    that they were told: at least once."""
    row = await EventSubMessage.objects.aget(pk=digest)
    if RECEIVERS_HANDLER in row.done or not row.revoked_tokens:
        return
    revoked = TwitchToken.objects.filter(pk__in=row.revoked_tokens).order_by("pk")
    async for token in revoked:
        # A failing receiver must not undo or repeat the revoke: logged only.
        for receiver, outcome in await signals.token_revoked.asend_robust(
            sender=TwitchToken, token=token, role=token.role
        ):
            if isinstance(outcome, Exception):
                logger.error(
                    "token_revoked receiver %r failed: %s",
                    receiver,
                    type(outcome).__name__,
                )
    await sync_to_async(mark_done)(digest, claim, RECEIVERS_HANDLER)


def record_revocation(row: EventSubMessage) -> None:
    with atomic_write():
        locked = held(row.digest, row.claim)
        if REVOCATION_HANDLER in locked.done:
            return
        _revocation(locked.body, received_at=locked.received_at)
        locked.done = [*locked.done, REVOCATION_HANDLER]
        locked.save(update_fields=["done"])


def _revoke_once(digest: str, claim: str, *, keep: set[int]) -> None:
    with atomic_write():
        row = held(digest, claim)
        if REVOKE_HANDLER in row.done:
            return
        revoked = _notification(row.body, keep=keep)
        row.revoked_tokens = [token.pk for token in revoked]
        row.done = [*row.done, REVOKE_HANDLER]
        row.save(update_fields=["done", "revoked_tokens"])


async def _reconnected_since(row: EventSubMessage) -> set[int]:
    """Connections of the disconnected user made again after the disconnect.

    Twitch redelivers a message it could not hand over for a while, and the
    site may handle it later still (a retry, cron); the user may have
    reconnected meanwhile, and that connection must not be wiped. A connection
    made after the message arrived is newer for sure; one made within the
    replay window before is asked about at Twitch: if Twitch still accepts its
    token, it is newer than the disconnect.
    """
    user_id = row.event.get("user_id")
    if row.message_type != "notification" or not isinstance(user_id, str):
        return set()
    recent = TwitchToken.objects.filter(
        twitch_user_id=user_id,
        status=TwitchToken.Status.ACTIVE,
        events__action=TokenEvent.Action.CONNECT,
        events__created_at__gte=row.received_at - MAX_AGE,
    ).distinct()
    later = {
        pk
        async for pk in recent.filter(
            events__action=TokenEvent.Action.CONNECT,
            events__created_at__gt=row.received_at,
        ).values_list("pk", flat=True)
    }
    keep = set(later)
    deadline = time.monotonic() + RECONNECT_CHECK_BUDGET
    async for token in recent.exclude(pk__in=later):
        try:
            async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                await twitch.validate(token.access_token)
        except (twitch.TwitchError, TimeoutError):
            continue  # dead, or Twitch cannot say in time: the signed message wins
        keep.add(token.pk)
    return keep


def _notification(body: dict[str, Any], *, keep: set[int]) -> list[TwitchToken]:
    subscription = body.get("subscription") or {}
    event = body.get("event") or {}
    if not isinstance(subscription, dict) or not isinstance(event, dict):
        return []
    if (
        subscription.get("type") != REVOKE
        or subscription.get("version") != "1"
        or event.get("client_id") != settings.TWITCH_CLIENT_ID
        or not isinstance(event.get("user_id"), str)
    ):
        return []  # not ours to act on
    revoked = []
    # Every role, whoever holds it: the Twitch account disconnected the app.
    tokens = (
        TwitchToken.objects.select_for_update()
        .filter(twitch_user_id=event["user_id"])
        .exclude(pk__in=keep)
    )
    for token in tokens.exclude(status=TwitchToken.Status.REVOKED):
        token.mark_revoked(last_error="The user disconnected this site on Twitch.")
        TokenEvent.objects.create(
            token=token,
            action=TokenEvent.Action.REVOKE,
            outcome=TokenEvent.Outcome.SUCCEEDED,
            source=TokenEvent.Source.TWITCH,
            detail="The user disconnected this site on Twitch (EventSub).",
        )
        revoked.append(token)
    if revoked:
        logger.info("Twitch user %s disconnected the app", event["user_id"])
    return revoked


def _revocation(body: dict[str, Any], *, received_at: datetime) -> None:
    subscription = body.get("subscription") or {}
    if not isinstance(subscription, dict):
        subscription = {}
    reason = str(subscription.get("status") or "unknown")[:100]
    kind = str(subscription.get("type") or "")[:100]
    version = str(subscription.get("version") or "")[:10]
    logger.error(
        "Twitch revoked the EventSub subscription %s (%s): %s; %s",
        str(subscription.get("id"))[:100],
        kind,
        reason,
        what_follows(reason, kind=kind, version=version),
    )
    remember_revocation(subscription, received_at=received_at)


def what_follows(reason: str, *, kind: str = "", version: str = "") -> str:
    """What becomes of a subscription Twitch ended for `reason`."""
    if reason == "version_removed":
        return (
            f"Twitch no longer supports version {version}: remove {kind}:{version} "
            "from TWITCH_EVENTSUB_TYPES (or update the site's catalogue)"
        )
    if reason in NOT_RECREATED:
        return "it is not created again until the account connects again"
    return "`manage.py eventsub subscribe` creates it again"


def remember_revocation(
    subscription: dict[str, Any], *, received_at: datetime, overwrite: bool = True
) -> EventSubRevocation:
    """Record that Twitch ended `subscription` (its status says why), once per
    subscription id. `overwrite=False` keeps the time of a record already there
    (the revocation message's is the better one)."""
    condition = subscription.get("condition")
    fields = {
        "subscription_type": str(subscription.get("type") or "")[:100],
        "subscription_version": str(subscription.get("version") or "")[:10],
        "condition": condition if isinstance(condition, dict) else {},
        "reason": str(subscription.get("status") or "unknown")[:100],
        "received_at": received_at,
    }
    subscription_id = str(subscription.get("id") or "")[:100]
    with atomic_write():
        existing = (
            EventSubRevocation.objects.select_for_update()
            .filter(subscription_id=subscription_id)
            .first()
        )
        if existing is None:
            return EventSubRevocation.objects.create(
                subscription_id=subscription_id, **fields
            )
        if overwrite:
            for name, value in fields.items():
                setattr(existing, name, value)
            existing.save()
        return existing
