"""EventSub's webhook: Twitch tells the site at once when a user disconnects the
app (`user.authorization.revoke`), with a signed message.

`verify` checks a message before anything else; `handle` acts on it. The
subscription itself is managed in `accounts.eventsub.subscriptions`.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from accounts import signals, twitch
from accounts.db import atomic_write
from accounts.models import EventSubMessage, EventSubRevocation, TokenEvent, TwitchToken
from accounts.twitch import TwitchError

__all__ = ["TwitchError", "enabled", "handle", "verify"]

logger = logging.getLogger(__name__)

SUBSCRIPTION_TYPE = "user.authorization.revoke"
SUBSCRIPTION_VERSION = "1"
# Twitch's rule: refuse messages older than ten minutes, and remember message ids
# at least that long. A little leeway the other way for clocks that differ.
MAX_AGE = timedelta(minutes=10)
MAX_CLOCK_SKEW = timedelta(minutes=1)
# Twitch wants its webhook answered within a few seconds: asking it about recent
# connections (a late redelivery) may take this long in all.
RECONNECT_CHECK_BUDGET = 2.0  # seconds


def enabled() -> bool:
    return bool(
        settings.TWITCH_EVENTSUB_CALLBACK_URL and settings.TWITCH_EVENTSUB_SECRET
    )


class InvalidMessage(Exception):
    """A message the site will not act on: unsigned, badly signed, stale, or
    unreadable."""


class UnreadableMessage(InvalidMessage):
    """Signed with our secret, but its body is not a JSON object the site can
    take: not JSON, nested past what the parser follows, or with text no database
    stores (a NUL, a lone surrogate)."""


@dataclass(frozen=True)
class Message:
    id: str
    type: str  # notification, webhook_callback_verification, revocation
    body: dict[str, Any]


def verify(headers: Mapping[str, str], raw_body: bytes) -> Message:
    """The message, once its signature and age are right; else `InvalidMessage`.

    The signature is checked first, in constant time, before anything in the message
    is believed.
    """
    message_id = headers.get("Twitch-Eventsub-Message-Id", "")
    timestamp = headers.get("Twitch-Eventsub-Message-Timestamp", "")
    signature = headers.get("Twitch-Eventsub-Message-Signature", "")
    expected = (
        "sha256="
        + hmac.new(
            settings.TWITCH_EVENTSUB_SECRET.encode(),
            message_id.encode() + timestamp.encode() + raw_body,
            hashlib.sha256,
        ).hexdigest()
    )
    if not message_id or not hmac.compare_digest(signature.encode(), expected.encode()):
        raise InvalidMessage("missing or wrong signature")
    sent = _parse_timestamp(timestamp)
    now = timezone.now()
    if sent is None or sent < now - MAX_AGE or sent > now + MAX_CLOCK_SKEW:
        raise InvalidMessage("stale or future timestamp")
    try:
        body = json.loads(raw_body)
    except ValueError:
        raise UnreadableMessage("body is not JSON") from None
    except RecursionError:
        raise UnreadableMessage("body is nested too deep") from None
    if not isinstance(body, dict):
        raise UnreadableMessage("body is not a JSON object")
    if not _storable(body):
        raise UnreadableMessage("body has text with a NUL or a lone surrogate")
    return Message(
        id=message_id,
        type=headers.get("Twitch-Eventsub-Message-Type", ""),
        body=body,
    )


def _storable(value: Any) -> bool:
    """Whether every string in a JSON value is text a database can store: PostgreSQL
    takes no NUL, and UTF-8 has no lone surrogate (JSON's escapes allow both).
    Walked with a list, not recursion: the nesting is the sender's choice."""
    waiting = [value]
    while waiting:
        item = waiting.pop()
        if isinstance(item, dict):
            waiting.extend(item)
            waiting.extend(item.values())
        elif isinstance(item, list):
            waiting.extend(item)
        elif isinstance(item, str):
            if "\x00" in item:
                return False
            try:
                item.encode()
            except UnicodeEncodeError:
                return False
    return True


def _parse_timestamp(text: str) -> datetime | None:
    """Twitch's RFC 3339 time (up to nanoseconds: Python 3.11 reads them, keeping
    microseconds); None unless it names its time zone."""
    try:
        sent = datetime.fromisoformat(text)
    except ValueError:
        return None
    return sent if sent.tzinfo is not None else None


async def handle(message: Message) -> None:
    """Act on a notification or revocation once; a message id seen before is not
    handled again."""
    keep = await _reconnected_since(message)
    # One transaction: the message id and what it changes commit together.
    revoked = await sync_to_async(_handle_once)(message, keep=keep)
    for token in revoked:
        # A failing receiver must not make Twitch redeliver (the redelivery would
        # be "seen before" and the receiver would never hear of it again).
        for receiver, outcome in await signals.token_revoked.asend_robust(
            sender=TwitchToken, token=token, role=token.role
        ):
            if isinstance(outcome, Exception):
                logger.error("token_revoked receiver %r failed: %r", receiver, outcome)


async def _reconnected_since(message: Message) -> set[int]:
    """Connections of the disconnected user made again after the disconnect.

    Twitch redelivers a message it could not hand over for a while; the user may
    have reconnected meanwhile, and that connection must not be wiped. The message
    carries no time of the disconnect, so a connection (re)made within the replay
    window is asked about at Twitch: if Twitch still accepts its token, it is newer
    than the disconnect.
    """
    event = message.body.get("event") or {}
    user_id = event.get("user_id") if isinstance(event, dict) else None
    if message.type != "notification" or not isinstance(user_id, str):
        return set()
    recent = TwitchToken.objects.filter(
        twitch_user_id=user_id,
        status=TwitchToken.Status.ACTIVE,
        events__action=TokenEvent.Action.CONNECT,
        events__created_at__gte=timezone.now() - MAX_AGE,
    ).distinct()
    keep = set()
    deadline = time.monotonic() + RECONNECT_CHECK_BUDGET
    async for token in recent:
        try:
            async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                await twitch.validate(token.access_token)
        except (twitch.TwitchError, TimeoutError):
            continue  # dead, or Twitch cannot say in time: the signed message wins
        keep.add(token.pk)
    return keep


def _message_digest(message_id: str) -> str:
    """What `EventSubMessage` keeps of a message id: its SHA-256, so that ids are
    compared whole, whatever their length."""
    return hashlib.sha256(message_id.encode()).hexdigest()


def _handle_once(message: Message, *, keep: set[int]) -> list[TwitchToken]:
    with atomic_write():
        EventSubMessage.objects.filter(
            received_at__lt=timezone.now() - 2 * MAX_AGE
        ).delete()
        try:
            # Only this insert tells a message seen before; any other failure
            # must reach Twitch as one, so that it delivers the message again.
            with transaction.atomic():
                EventSubMessage.objects.create(digest=_message_digest(message.id))
        except IntegrityError:
            logger.info("EventSub message %s seen before; not handled", message.id)
            return []
        if message.type == "notification":
            return _notification(message.body, keep=keep)
        if message.type == "revocation":
            _revocation(message.body)
    return []


def _notification(body: dict[str, Any], *, keep: set[int]) -> list[TwitchToken]:
    subscription = body.get("subscription") or {}
    event = body.get("event") or {}
    if not isinstance(subscription, dict) or not isinstance(event, dict):
        return []
    if (
        subscription.get("type") != SUBSCRIPTION_TYPE
        or subscription.get("version") != SUBSCRIPTION_VERSION
        or event.get("client_id") != settings.TWITCH_CLIENT_ID
        or not isinstance(event.get("user_id"), str)
    ):
        return []  # not ours to act on; answered all the same
    revoked = []
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
    # Operators must know: disconnects are seen only at the next validation now.
    logger.error(
        "Twitch revoked the EventSub subscription %s (%s): %s; run "
        "`manage.py eventsub subscribe` once the cause is fixed",
        str(subscription.get("id"))[:100],
        str(subscription.get("type"))[:100],
        reason,
    )
    EventSubRevocation.objects.create(
        subscription_id=str(subscription.get("id") or "")[:100],
        subscription_type=str(subscription.get("type") or "")[:100],
        reason=reason,
    )
