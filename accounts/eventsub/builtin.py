"""What the site itself does with EventSub messages, after the answer:

- `user.authorization.revoke` for this client id ends every live connection of
  that Twitch account, whatever its role and whoever holds it;
- a `revocation` (Twitch ended a subscription) is recorded and logged as an error.

Each runs in one transaction with the note that it is done (`EventSubMessage.done`),
so a retry never does it twice.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.utils import timezone

from accounts import signals, twitch
from accounts.db import atomic_write
from accounts.eventsub.catalogue import REVOKE
from accounts.eventsub.webhook import MAX_AGE
from accounts.models import EventSubMessage, EventSubRevocation, TokenEvent, TwitchToken

logger = logging.getLogger(__name__)

REVOKE_HANDLER = "accounts.eventsub.revoke"
REVOCATION_HANDLER = "accounts.eventsub.revocation"
# Asking Twitch about connections made around a (late) disconnect: at most this
# long in all. After the answer, so Twitch does not wait for it.
RECONNECT_CHECK_BUDGET = 5.0  # seconds
# Twitch keeps these down: `subscribe` does not create them again.
NOT_RECREATED = ("authorization_revoked", "user_removed")


async def revoke_connections(row: EventSubMessage) -> None:
    keep = await _reconnected_since(row)
    revoked = await sync_to_async(_revoke_once)(row.digest, keep=keep)
    for token in revoked:
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


def record_revocation(row: EventSubMessage) -> None:
    with atomic_write():
        row = EventSubMessage.objects.select_for_update().get(pk=row.pk)
        if REVOCATION_HANDLER in row.done:
            return
        _revocation(row.body)
        row.done = [*row.done, REVOCATION_HANDLER]
        row.save(update_fields=["done"])


def _revoke_once(digest: str, *, keep: set[int]) -> list[TwitchToken]:
    with atomic_write():
        row = EventSubMessage.objects.select_for_update().get(pk=digest)
        if REVOKE_HANDLER in row.done:
            return []
        revoked = _notification(row.body, keep=keep)
        row.done = [*row.done, REVOKE_HANDLER]
        row.save(update_fields=["done"])
    return revoked


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


def _revocation(body: dict[str, Any]) -> None:
    subscription = body.get("subscription") or {}
    if not isinstance(subscription, dict):
        subscription = {}
    reason = str(subscription.get("status") or "unknown")[:100]
    kind = str(subscription.get("type") or "")[:100]
    version = str(subscription.get("version") or "")[:10]
    if reason == "version_removed":
        advice = (
            f"Twitch no longer supports version {version}: remove {kind}:{version} "
            "from TWITCH_EVENTSUB_TYPES (or update the site's catalogue)"
        )
    elif reason in NOT_RECREATED:
        advice = "it is not created again until the account connects again"
    else:
        advice = "`manage.py eventsub subscribe` creates it again"
    logger.error(
        "Twitch revoked the EventSub subscription %s (%s): %s; %s",
        str(subscription.get("id"))[:100],
        kind,
        reason,
        advice,
    )
    condition = subscription.get("condition")
    EventSubRevocation.objects.create(
        subscription_id=str(subscription.get("id") or "")[:100],
        subscription_type=kind,
        subscription_version=version,
        condition=condition if isinstance(condition, dict) else {},
        reason=reason,
        received_at=timezone.now(),
    )
