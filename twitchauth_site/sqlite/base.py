"""SQLite, with the writers of a process taking turns instead of racing.

SQLite has one writer at a time. A connection that finds the write lock taken
retries in SQLite's busy handler, whose naps grow to 100 ms; under a crowd the
writers that have waited longest nap while newcomers take the lock, and a few
requests wait seconds. Here a process's writers queue on one lock, each woken the
moment the one before it is done, so at most one per process waits inside SQLite,
for writers in other processes (cron, the other workers). The two waits together
stay within the database's timeout.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext, suppress
from typing import Any

from django.db import DatabaseError, OperationalError
from django.db.backends.sqlite3 import base

# Every connection of this process, on every thread, shares it.
_writer = threading.Lock()
_WRITE = re.compile(r"\s*(INSERT|UPDATE|DELETE|REPLACE)\b", re.IGNORECASE)
# A wait for the turn shorter than this leaves SQLite's busy wait as it is: not
# worth two PRAGMAs.
_NOTICEABLE_WAIT = 0.05


class SQLiteCursorWrapper(base.SQLiteCursorWrapper):
    owner: DatabaseWrapper

    def execute(self, query: str, params: Any = None) -> Any:
        with self._turn_for(query):
            return super().execute(query, params)

    def executemany(self, query: str, param_list: Any) -> Any:
        with self._turn_for(query):
            return super().executemany(query, param_list)

    def _turn_for(self, query: str) -> AbstractContextManager[None]:
        return self.owner._turn() if self._queues(query) else nullcontext()

    def _queues(self, query: str) -> bool:
        # A write outside a transaction is a transaction of its own: it queues
        # too. Inside one, the transaction holds the turn already.
        if self.connection.in_transaction or not _WRITE.match(query):
            return False
        if self.owner._holds_turn:
            # Django's transaction is open but SQLite rolled it back by itself (a
            # full disk, an I/O error): writing now would commit half of it.
            raise OperationalError("the transaction was rolled back by SQLite")
        return True


class DatabaseWrapper(base.DatabaseWrapper):
    _holds_turn = False
    _busy_wait_shortened = False

    @property
    def _timeout(self) -> float:
        return float(self.settings_dict["OPTIONS"].get("timeout", 5))

    def create_cursor(self, name: str | None = None) -> Any:
        cursor = self.connection.cursor(factory=SQLiteCursorWrapper)
        cursor.owner = self
        return cursor

    @contextmanager
    def _turn(self) -> Iterator[None]:
        """A write outside a transaction: its turn lasts as long as it does."""
        self._take_turn()
        try:
            yield
        finally:
            self._end_turn()

    def _take_turn(self) -> None:
        timeout = self._timeout
        started = time.monotonic()
        if not _writer.acquire(timeout=timeout):
            # What SQLite itself says when its own busy timeout runs out.
            raise OperationalError("database is locked")
        self._holds_turn = True
        waited = time.monotonic() - started
        if waited > _NOTICEABLE_WAIT:
            # Then SQLite waits for other processes' writers: only for what is
            # left of the timeout, or the two waits add up to twice the timeout.
            self._busy_wait_shortened = True
            try:
                self._set_busy_wait(max(timeout - waited, 0.0))
            except BaseException:
                self._end_turn()
                raise

    def _end_turn(self) -> None:
        if not self._holds_turn:
            return
        self._holds_turn = False
        try:
            if self._busy_wait_shortened:
                self._busy_wait_shortened = False
                # After a commit: a failure here must not make it look failed. Only
                # a closed connection refuses, and its successor starts afresh.
                with suppress(DatabaseError):
                    self._set_busy_wait(self._timeout)
        finally:
            _writer.release()

    def _set_busy_wait(self, seconds: float) -> None:
        with self.wrap_database_errors:
            self.connection.execute(f"PRAGMA busy_timeout = {int(seconds * 1000)}")

    def _start_transaction_under_autocommit(self) -> None:
        # Transactions begin IMMEDIATE (they take the write lock): queue first.
        self._take_turn()
        try:
            super()._start_transaction_under_autocommit()
        except BaseException:
            self._end_turn()
            raise

    def _commit(self) -> None:
        try:
            super()._commit()
        finally:
            self._end_turn()

    def _rollback(self) -> None:
        try:
            super()._rollback()
        finally:
            self._end_turn()

    def _close(self) -> None:
        try:
            super()._close()
        finally:
            self._end_turn()
