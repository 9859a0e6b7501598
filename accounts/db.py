"""Writes on SQLite, with the writers of a process taking turns instead of racing.

SQLite has one writer at a time. A connection that finds the write lock taken
retries in SQLite's busy handler, whose naps grow to 100 ms; under a crowd the
writers that have waited longest nap while newcomers take the lock, and a few
requests wait seconds. The site's own writes (the session store, spending a
state, storing a connection, revoking, ...) go through `writer_turn` or
`atomic_write`, so a process's writers queue on one lock, each woken the moment
the one before it is done, and at most one of them waits inside SQLite, for
writers in other processes (cron, the other workers). The two waits together stay
within the database's timeout. On PostgreSQL, which has row locks and no busy
handler, a turn is nothing and `atomic_write` is `transaction.atomic`.

Only public APIs: the lock is ours, the busy timeout is SQLite's `PRAGMA
busy_timeout`, and the guard is Django's documented `connection.execute_wrapper`.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from typing import Any

from django.db import (
    DEFAULT_DB_ALIAS,
    DatabaseError,
    InterfaceError,
    InternalError,
    OperationalError,
    connections,
    transaction,
)
from django.db.backends.base.base import BaseDatabaseWrapper

# Locked, timed out, unreachable, read-only: the database's state, not a bug; the
# site answers them with a 503 page. (IntegrityError and DataError are bugs or bad
# input: left alone.)
DATABASE_UNAVAILABLE = (OperationalError, InterfaceError, InternalError)

# Every connection of this process, on every thread, shares it (the site has one
# database).
_turn = threading.Lock()
# Whether this thread holds the turn: a turn inside it is the same turn.
_this_thread = threading.local()
# SQLite's own default, for a database configured without a timeout.
_SQLITE_DEFAULT_TIMEOUT = 5.0
# A wait for the turn shorter than this leaves SQLite's busy wait as it is: not
# worth two PRAGMAs.
_NOTICEABLE_WAIT = 0.05
_WRITE = re.compile(r"\s*(INSERT|UPDATE|DELETE|REPLACE)\b", re.IGNORECASE)


@contextmanager
def writer_turn(using: str = DEFAULT_DB_ALIAS) -> Iterator[None]:
    """This thread's turn to write to SQLite, for the block: one write in
    autocommit, or several. Raises `OperationalError("database is locked")`, as
    SQLite would, when the turn does not come within the database's timeout.

    Re-entrant within a thread. Nothing on other databases, nor inside a
    transaction: an IMMEDIATE transaction holds SQLite's write lock already, and
    waiting for the turn there could wait for a writer that waits for us.
    """
    connection = connections[using]
    if (
        getattr(_this_thread, "has_turn", False)
        or connection.vendor != "sqlite"
        or not transaction.get_autocommit(using)
    ):
        yield
        return
    timeout = _timeout(connection)
    started = time.monotonic()
    if not _turn.acquire(timeout=timeout):
        # What SQLite itself says when its own busy timeout runs out.
        raise OperationalError("database is locked")
    _this_thread.has_turn = True
    shortened = False
    try:
        waited = time.monotonic() - started
        if waited > _NOTICEABLE_WAIT:
            # Then SQLite waits for other processes' writers: only for what is
            # left of the timeout, or the two waits add up to twice the timeout.
            shortened = True
            _set_busy_wait(connection, max(timeout - waited, 0.0))
        yield
    finally:
        _this_thread.has_turn = False
        try:
            if shortened:
                # After a commit: a failure here must not make it look failed.
                with suppress(DatabaseError):
                    _set_busy_wait(connection, timeout)
        finally:
            _turn.release()


@contextmanager
def atomic_write(using: str = DEFAULT_DB_ALIAS) -> Iterator[None]:
    """`transaction.atomic()` for a block that writes, in this thread's writer
    turn. On SQLite, a write after SQLite rolled the transaction back by itself
    (a full disk, an I/O error) raises instead of committing on its own, half of
    the block."""
    with writer_turn(using), transaction.atomic(using=using):
        connection = connections[using]
        if connection.vendor != "sqlite":
            yield
            return
        with connection.execute_wrapper(_refuse_writes_outside_the_transaction):
            yield


def _refuse_writes_outside_the_transaction(
    execute: Callable[..., Any],
    sql: str,
    params: Any,
    many: bool,
    context: dict[str, Any],
) -> Any:
    # The DB-API cursor's connection says whether SQLite still has the
    # transaction Django believes open.
    if _WRITE.match(sql) and not context["cursor"].connection.in_transaction:
        raise OperationalError("the transaction was rolled back by SQLite")
    return execute(sql, params, many, context)


def _timeout(connection: BaseDatabaseWrapper) -> float:
    options = connection.settings_dict.get("OPTIONS") or {}
    return float(options.get("timeout", _SQLITE_DEFAULT_TIMEOUT))


def _set_busy_wait(connection: BaseDatabaseWrapper, seconds: float) -> None:
    with connection.cursor() as cursor:
        cursor.execute(f"PRAGMA busy_timeout = {int(seconds * 1000)}")
