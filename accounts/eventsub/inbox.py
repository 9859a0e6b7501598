"""The webhook's inbox: a message is kept first, answered, and handled after.

Keeping it is one INSERT, keyed by the message id's digest: a message id seen
before is not stored again, and so is handled once, by any worker. That insert
is the only write before the answer, and it gets `STORE_BUDGET` at most: when
the database is slower (SQLite's write lock held, a lock on PostgreSQL, the
database down) the message goes to a spool file instead (`TOKEN_SPOOL_DIR/
eventsub/`, one file a message, written and renamed whole), which the same
process and `manage.py eventsub process` move into the table once the database
answers. Either way it survives the process dying after the answer, and a power
cut too: the spool file and its directory are synced to the disk before the
answer, and SQLite commits the insert with `synchronous=FULL` (the site's other
writes keep WAL's NORMAL). PostgreSQL's commits are durable unless its server
runs with `synchronous_commit=off`.

After the answer the message is handled in the background (`handle`); one not
handled then (a handler raised, the process died) is handled by `manage.py
eventsub process` from cron, with backoff, at most MAX_ATTEMPTS times.

A worker claims a message for LEASE with a token of its own, and every write it
makes after that holds only while the token is still the message's claim: a
worker that lost its claim changes nothing. Handling is cut off LEASE_MARGIN
before the claim runs out (a failure, retried later), so no other worker starts a
message while a handler of it still runs.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from inspect import iscoroutinefunction
from pathlib import Path
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import (
    DatabaseError,
    IntegrityError,
    close_old_connections,
    connection,
)
from django.db.models import Q
from django.utils import timezone

from accounts import background
from accounts.db import atomic_write, writer_turn
from accounts.eventsub import builtin, catalogue
from accounts.eventsub.builtin import ClaimLost, held, mark_done
from accounts.eventsub.handlers import Handler, Notification, handlers_for
from accounts.eventsub.webhook import MAX_AGE, Message
from accounts.models import EventSubMessage, TwitchToken

logger = logging.getLogger(__name__)

# How long the webhook waits for the database before it spools the message.
STORE_BUDGET = 0.25  # seconds
# One worker handles a message at a time; longer than any handler should take,
# and how long a message waits when the process handling it dies. Its handlers
# are cut off this long before the claim runs out.
LEASE = timedelta(minutes=2)
LEASE_MARGIN = timedelta(seconds=15)
MAX_ATTEMPTS = 8
FIRST_RETRY = timedelta(seconds=30)  # then doubling, up to MAX_RETRY_DELAY
MAX_RETRY_DELAY = timedelta(hours=1)
SPOOL_SUFFIX = ".json"
# Inserts run here, not on the request's thread: an insert stuck on a lock must
# not hold up the answer, nor the next request that would get that thread.
_inserts = ThreadPoolExecutor(max_workers=4, thread_name_prefix="eventsub-inbox")


@dataclass(frozen=True)
class Stored:
    """How the webhook kept a message."""

    new: bool  # False: a message id seen before
    spooled: bool = False


async def receive(message: Message) -> Stored:
    """Keep the message durably, then start handling it in the background."""
    row = _row(message)
    insert = asyncio.get_running_loop().run_in_executor(_inserts, _insert, row)
    try:
        new = await asyncio.wait_for(asyncio.shield(insert), STORE_BUDGET)
    except (TimeoutError, DatabaseError):
        await asyncio.to_thread(spool, row)
        background.in_background(_after_spooling(insert, row.digest))
        return Stored(new=True, spooled=True)
    if new:
        background.in_background(handle(row.digest))
    return Stored(new=new)


def _row(message: Message) -> EventSubMessage:
    subscription = message.subscription
    return EventSubMessage(
        digest=message.digest,
        received_at=timezone.now(),
        message_id=message.id[:100],
        message_type=message.type[:40],
        subscription_type=str(subscription.get("type") or "")[:100],
        subscription_version=str(subscription.get("version") or "")[:10],
        subscription_id=str(subscription.get("id") or "")[:100],
        body=message.body,
    )


def _insert(row: EventSubMessage, *, from_spool: bool = False) -> bool:
    close_old_connections()
    try:
        with writer_turn(), _synced_commits():
            row.save(force_insert=True)
    except IntegrityError:
        if not from_spool:  # there, the insert that waited out the lock got it
            logger.info("EventSub message %s seen before; not handled", row.message_id)
        return False
    finally:
        if connection.vendor != "sqlite":
            # Back to the pool: this thread may not write again for a long time.
            connection.close()
    return True


@contextmanager
def _synced_commits() -> Iterator[None]:
    """On SQLite, commits in the block reach the disk before they return: in WAL
    mode `synchronous=NORMAL` (the site's setting) may lose the last commits to
    a power cut, and Twitch, answered, would not send the message again."""
    if connection.vendor != "sqlite":
        yield
        return
    with connection.cursor() as cursor:
        cursor.execute("PRAGMA synchronous")
        (mode,) = cursor.fetchone()
        cursor.execute("PRAGMA synchronous=FULL")
    try:
        yield
    finally:
        with connection.cursor() as cursor:
            cursor.execute(f"PRAGMA synchronous={int(mode)}")


async def _after_spooling(insert: asyncio.Future[bool], digest: str) -> None:
    # The insert may still get through; either way the spool is then imported
    # (a duplicate is dropped) and the message handled.
    await asyncio.gather(insert, return_exceptions=True)
    for delay in (0, 1, 2, 4, 8, 16, 30):
        await asyncio.sleep(delay)
        try:
            await sync_to_async(import_spool)()
        except DatabaseError:
            continue
        await handle(digest)
        return


# The spool -------------------------------------------------------------------


def spool_directory() -> Path:
    return Path(settings.TOKEN_SPOOL_DIR) / "eventsub"


def spool(row: EventSubMessage) -> None:
    """Write the message to its own file, whole or not at all (renamed into
    place); the file and the rename reach the disk before the answer is sent,
    so it survives the process being killed and a power cut."""
    directory = spool_directory()
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    record = {
        "digest": row.digest,
        "received_at": row.received_at.isoformat(),
        "message_id": row.message_id,
        "message_type": row.message_type,
        "subscription_type": row.subscription_type,
        "subscription_version": row.subscription_version,
        "subscription_id": row.subscription_id,
        "body": row.body,
    }
    partial = directory / f".{row.digest}.{secrets.token_hex(4)}.partial"
    descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as file:
        json.dump(record, file)
        file.flush()
        os.fsync(file.fileno())
    partial.replace(directory / f"{row.digest}{SPOOL_SUFFIX}")
    _sync_directory(directory)
    logger.warning(
        "The database was slow: EventSub message %s kept in the spool", row.message_id
    )


def _sync_directory(directory: Path) -> None:
    descriptor = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def spooled_count() -> int:
    directory = spool_directory()
    return len(list(directory.glob(f"*{SPOOL_SUFFIX}"))) if directory.is_dir() else 0


def import_spool() -> int:
    """Move spooled messages into the table (one seen before is dropped); how
    many were new. Raises DatabaseError while the database still refuses."""
    directory = spool_directory()
    if not directory.is_dir():
        return 0
    imported = 0
    for path in sorted(directory.glob(f"*{SPOOL_SUFFIX}")):
        try:
            record = json.loads(path.read_text())
            record["received_at"] = datetime.fromisoformat(record["received_at"])
            row = EventSubMessage(**record)
        except (OSError, ValueError, TypeError, KeyError):
            logger.error("Unreadable EventSub spool file %s; left in place", path.name)
            continue
        imported += _insert(row, from_spool=True)
        path.unlink(missing_ok=True)
    return imported


# Handling ----------------------------------------------------------------------


async def handle(digest: str) -> bool:
    """Handle one message unless another worker has it or it is not due;
    whether it is handled now."""
    row = await sync_to_async(_claim)(digest)
    if row is None:
        return False
    return await _run(row)


async def handle_due(*, limit: int | None = None) -> dict[str, int]:
    """Every message due (new, or its retry's time has come), oldest first."""
    counts = {"handled": 0, "retrying": 0, "failed": 0}
    digests = await sync_to_async(_due)(limit)
    for digest in digests:
        row = await sync_to_async(_claim)(digest)
        if row is None:
            continue
        if await _run(row):
            counts["handled"] += 1
            continue
        status = (await EventSubMessage.objects.aget(pk=digest)).status
        if status == EventSubMessage.Status.FAILED:
            counts["failed"] += 1
        elif status == EventSubMessage.Status.PENDING:
            counts["retrying"] += 1
    return counts


def _due(limit: int | None) -> list[str]:
    now = timezone.now()
    due = (
        EventSubMessage.objects.filter(status=EventSubMessage.Status.PENDING)
        .filter(Q(next_attempt_at__isnull=True) | Q(next_attempt_at__lte=now))
        .filter(Q(claimed_until__isnull=True) | Q(claimed_until__lt=now))
        .order_by("received_at")
        .values_list("digest", flat=True)
    )
    return list(due[:limit] if limit else due)


def _claim(digest: str) -> EventSubMessage | None:
    now = timezone.now()
    claim = uuid.uuid4().hex
    with writer_turn():
        claimed = (
            EventSubMessage.objects.filter(
                pk=digest, status=EventSubMessage.Status.PENDING
            )
            .filter(Q(next_attempt_at__isnull=True) | Q(next_attempt_at__lte=now))
            .filter(Q(claimed_until__isnull=True) | Q(claimed_until__lt=now))
            .update(claimed_until=now + LEASE, claim=claim)
        )
    if not claimed:
        return None
    return EventSubMessage.objects.filter(pk=digest, claim=claim).first()


async def _run(row: EventSubMessage) -> bool:
    try:
        # Done before the claim runs out, or cut off: after that another worker
        # may take the message up, and a handler must not run twice at once.
        async with asyncio.timeout((LEASE - LEASE_MARGIN).total_seconds()):
            await _handle(row)
    except ClaimLost:
        logger.warning(
            "EventSub message %s was taken over by another worker; left to it",
            row.message_id,
        )
        return False
    except Exception as error:
        await sync_to_async(_failed)(row.digest, row.claim, error)
        return False
    await sync_to_async(_finished)(row.digest, row.claim)
    return True


async def _handle(row: EventSubMessage) -> None:
    if row.message_type == "revocation":
        await sync_to_async(builtin.record_revocation)(row)
    elif row.message_type == "notification":
        if row.subscription_type == catalogue.REVOKE:
            await builtin.revoke_connections(row)
        notification = await _notification(row)
        for name, handler in handlers_for(row.subscription_type):
            await _run_handler(row, name, handler, notification)


async def _run_handler(
    row: EventSubMessage, name: str, handler: Handler, notification: Notification
) -> None:
    if iscoroutinefunction(handler):
        done = (await EventSubMessage.objects.aget(pk=row.digest)).done
        if name in done:
            return
        await handler(notification)
        await sync_to_async(mark_done)(row.digest, row.claim, name)
    else:
        await sync_to_async(_run_sync_handler)(row, name, handler, notification)


def _run_sync_handler(
    row: EventSubMessage, name: str, handler: Handler, notification: Notification
) -> None:
    # Its writes and the note that it ran commit together: exactly once. The
    # row stays locked while it runs, so a worker that takes the message over
    # waits for it, then finds it done.
    with atomic_write():
        locked = held(row.digest, row.claim)
        if name in locked.done:
            return
        handler(notification)
        locked.done = [*locked.done, name]
        locked.save(update_fields=["done"])


def _finished(digest: str, claim: str) -> None:
    with writer_turn():
        finished = EventSubMessage.objects.filter(pk=digest, claim=claim).update(
            status=EventSubMessage.Status.HANDLED,
            handled_at=timezone.now(),
            claimed_until=None,
            claim="",
            last_error="",
        )
    if not finished:
        logger.warning("EventSub message %s was taken over; its outcome left", digest)


def _failed(digest: str, claim: str, error: Exception) -> None:
    with atomic_write():
        row = (
            EventSubMessage.objects.select_for_update()
            .filter(pk=digest, claim=claim)
            .first()
        )
        if row is None:
            logger.warning(
                "EventSub message %s was taken over; its outcome left", digest
            )
            return
        row.attempts += 1
        row.claimed_until = None
        row.claim = ""
        # The class only: an exception's text may quote anything, a credential too.
        row.last_error = f"{type(error).__name__} (attempt {row.attempts})"[:200]
        if row.attempts >= MAX_ATTEMPTS:
            row.status = EventSubMessage.Status.FAILED
            logger.error(
                "EventSub message %s (%s) failed %s times (%s); given up",
                row.message_id,
                row.subscription_type,
                row.attempts,
                type(error).__name__,
            )
        else:
            delay = min(FIRST_RETRY * 2 ** (row.attempts - 1), MAX_RETRY_DELAY)
            row.next_attempt_at = timezone.now() + delay
            logger.warning(
                "EventSub message %s (%s) failed (%s); retried in %s s",
                row.message_id,
                row.subscription_type,
                type(error).__name__,
                int(delay.total_seconds()),
            )
        row.save()


async def _notification(row: EventSubMessage) -> Notification:
    return Notification(
        type=row.subscription_type,
        version=row.subscription_version,
        event=row.event,
        condition=row.condition,
        subscription_id=row.subscription_id,
        message_id=row.message_id,
        received_at=row.received_at,
        connection=await _connection(row),
    )


async def _connection(row: EventSubMessage) -> TwitchToken | None:
    """The live connection the subscription was made for: the catalogue's first
    party; for a type it does not know, a connection the condition names, a
    person's own account (the default role) before anyone's bot."""
    kind = catalogue.find(row.subscription_type, row.subscription_version)
    condition = row.condition
    live = TwitchToken.objects.exclude(status=TwitchToken.Status.REVOKED)
    if kind is not None and kind.anchor is not None:
        user_id = condition.get(kind.anchor.field)
        return await live.filter(twitch_user_id=user_id, role=kind.anchor.role).afirst()
    user_ids: list[Any] = [v for k, v in condition.items() if k.endswith("user_id")]
    return await live.filter(twitch_user_id__in=user_ids).own_first("pk").afirst()


def prune() -> int:
    """Forget handled and failed messages older than TWITCH_EVENTSUB_KEEP_DAYS
    (never sooner than Twitch's replay window)."""
    keep = max(timedelta(days=settings.TWITCH_EVENTSUB_KEEP_DAYS), 2 * MAX_AGE)
    with writer_turn():
        deleted, _ = (
            EventSubMessage.objects.filter(received_at__lt=timezone.now() - keep)
            .exclude(status=EventSubMessage.Status.PENDING)
            .delete()
        )
    return deleted
