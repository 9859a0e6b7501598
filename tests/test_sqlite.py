"""SQLite: a process's writers take turns rather than racing in SQLite's busy
handler (twitchauth_site/sqlite/base.py)."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable

import pytest
from django.contrib.auth.models import User
from django.db import OperationalError, connection, transaction

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(connection.vendor != "sqlite", reason="SQLite's own backend"),
]


def in_thread(work: Callable[[], None]) -> tuple[threading.Thread, list[BaseException]]:
    errors: list[BaseException] = []

    def run() -> None:
        try:
            work()
        except BaseException as error:  # noqa: BLE001 - handed to the test
            errors.append(error)
        finally:
            connection.close()

    thread = threading.Thread(target=run)
    thread.start()
    return thread, errors


def with_timeout(seconds: float) -> None:
    """This thread's connection only: the settings dict itself is shared."""
    options = {**connection.settings_dict["OPTIONS"], "timeout": seconds}
    connection.settings_dict = {**connection.settings_dict, "OPTIONS": options}


def never_waits_inside_sqlite() -> None:
    """Without its turn, this connection's write would fail at once."""
    with connection.cursor() as cursor:
        cursor.execute("PRAGMA busy_timeout = 0")


def long_transaction(
    in_transaction: threading.Event, may_commit: threading.Event
) -> Callable[[], None]:
    """A transaction that writes, says so, and commits when told."""

    def work() -> None:
        with transaction.atomic():
            User.objects.create(username="first")
            in_transaction.set()
            may_commit.wait(timeout=10)

    return work


def test_a_write_waits_its_turn_while_a_transaction_writes_then_goes_through():
    in_transaction, may_commit = threading.Event(), threading.Event()

    def later_write() -> None:
        never_waits_inside_sqlite()
        in_transaction.wait(timeout=10)
        User.objects.create(username="second")

    first, first_errors = in_thread(long_transaction(in_transaction, may_commit))
    second, second_errors = in_thread(later_write)
    second.join(timeout=0.5)
    assert second.is_alive(), "the second write went ahead of its turn"
    may_commit.set()
    first.join(timeout=10)
    second.join(timeout=10)

    assert first_errors == second_errors == []
    assert set(User.objects.values_list("username", flat=True)) == {"first", "second"}


def test_a_rolled_back_transaction_gives_up_its_turn():
    with pytest.raises(RuntimeError), transaction.atomic():
        User.objects.create(username="rolled-back")
        raise RuntimeError

    def write() -> None:
        never_waits_inside_sqlite()
        User.objects.create(username="after")

    thread, errors = in_thread(write)
    thread.join(timeout=10)
    assert errors == []
    assert list(User.objects.values_list("username", flat=True)) == ["after"]


def test_a_turn_that_never_comes_is_database_is_locked_as_sqlite_says_it():
    in_transaction, may_commit = threading.Event(), threading.Event()

    def impatient_write() -> None:
        with_timeout(0.2)
        in_transaction.wait(timeout=10)
        User.objects.create(username="second")

    first, _ = in_thread(long_transaction(in_transaction, may_commit))
    second, errors = in_thread(impatient_write)
    second.join(timeout=10)
    may_commit.set()
    first.join(timeout=10)

    assert len(errors) == 1
    assert isinstance(errors[0], OperationalError)
    assert str(errors[0]) == "database is locked"


def test_a_write_after_sqlite_rolled_back_by_itself_fails_at_once_and_whole():
    # As after a full disk or an I/O error: SQLite ends the transaction, Django's
    # atomic block goes on. Its next write must neither queue behind its own turn
    # nor commit on its own, half of the block.
    def rolled_back_then_written() -> None:
        with_timeout(5)
        with transaction.atomic():
            User.objects.create(username="first")
            connection.connection.execute("ROLLBACK")  # behind Django's back
            started = time.monotonic()
            try:
                User.objects.create(username="second")
            finally:
                assert time.monotonic() - started < 1

    thread, errors = in_thread(rolled_back_then_written)
    thread.join(timeout=10)

    assert len(errors) == 1 and isinstance(errors[0], OperationalError)
    assert not User.objects.exists()


def test_waiting_for_the_turn_and_for_another_process_stays_within_the_timeout():
    # Another process (cron, the other worker) holds SQLite's write lock
    # throughout. A writer of this process holds the turn for 0.6 s, waiting on
    # it; the next writer, with a 1 s timeout, must give up after 1 s in all, not
    # 0.6 s for its turn and then 1 s more inside SQLite.
    other_process = sqlite3.connect(connection.settings_dict["NAME"])
    other_process.isolation_level = None
    other_process.execute("BEGIN IMMEDIATE")
    took_turn = threading.Event()
    waited: list[float] = []
    busy_wait_after: list[int] = []

    def first_writer() -> None:
        with_timeout(0.6)
        connection.ensure_connection()
        took_turn.set()
        User.objects.create(username="first")

    def next_writer() -> None:
        with_timeout(1)
        connection.ensure_connection()
        took_turn.wait(timeout=10)
        started = time.monotonic()
        try:
            User.objects.create(username="next")
        finally:
            waited.append(time.monotonic() - started)
            with connection.cursor() as cursor:
                cursor.execute("PRAGMA busy_timeout")
                busy_wait_after.append(cursor.fetchone()[0])

    try:
        first, first_errors = in_thread(first_writer)
        took_turn.wait(timeout=10)
        time.sleep(0.05)  # the first writer is at its turn, or inside SQLite
        second, second_errors = in_thread(next_writer)
        first.join(timeout=10)
        second.join(timeout=10)
    finally:
        other_process.execute("ROLLBACK")
        other_process.close()

    assert [str(e) for e in first_errors + second_errors] == ["database is locked"] * 2
    assert 0.9 < waited[0] < 1.3
    assert busy_wait_after == [1000], "the next write would wait less than its timeout"
