"""SQLite: a process's writers take turns rather than racing in SQLite's busy
handler (accounts/db.py), in the site's own write paths."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import Callable

import pytest
from asgiref.sync import sync_to_async
from django.contrib.auth.models import User
from django.db import OperationalError, connection

from accounts.db import atomic_write, writer_turn
from accounts.web.sessions import SessionStore
from tests.conftest import connect_twitch, page

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(connection.vendor != "sqlite", reason="SQLite's busy handler"),
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


def with_timeout(seconds: float) -> Callable[[], None]:
    """This thread's connection only (the settings dict itself is shared); returns
    what puts it back."""
    before = connection.settings_dict
    options = {**before["OPTIONS"], "timeout": seconds}
    connection.settings_dict = {**before, "OPTIONS": options}

    def restore() -> None:
        connection.settings_dict = before

    return restore


def never_waits_inside_sqlite() -> None:
    """Without its turn, this connection's write would fail at once."""
    with connection.cursor() as cursor:
        cursor.execute("PRAGMA busy_timeout = 0")


def long_transaction(
    in_transaction: threading.Event, may_commit: threading.Event
) -> Callable[[], None]:
    """A transaction that writes, says so, and commits when told."""

    def work() -> None:
        with atomic_write():
            User.objects.create(username="first")
            in_transaction.set()
            may_commit.wait(timeout=10)

    return work


def test_a_write_waits_its_turn_while_a_transaction_writes_then_goes_through():
    in_transaction, may_commit = threading.Event(), threading.Event()

    def later_write() -> None:
        never_waits_inside_sqlite()
        in_transaction.wait(timeout=10)
        with writer_turn():
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


def test_a_session_save_waits_its_turn_then_goes_through():
    session = SessionStore()
    session["pending"] = "first"
    session.save()
    in_transaction, may_commit = threading.Event(), threading.Event()

    def save_meanwhile() -> None:
        never_waits_inside_sqlite()
        in_transaction.wait(timeout=10)
        session["pending"] = "second"
        session.save()

    first, first_errors = in_thread(long_transaction(in_transaction, may_commit))
    second, second_errors = in_thread(save_meanwhile)
    second.join(timeout=0.5)
    assert second.is_alive(), "the session save went ahead of its turn"
    may_commit.set()
    first.join(timeout=10)
    second.join(timeout=10)

    assert first_errors == second_errors == []
    assert SessionStore(session.session_key)["pending"] == "second"


def test_a_rolled_back_transaction_gives_up_its_turn():
    with pytest.raises(RuntimeError), atomic_write():
        User.objects.create(username="rolled-back")
        raise RuntimeError

    def write() -> None:
        never_waits_inside_sqlite()
        with writer_turn():
            User.objects.create(username="after")

    thread, errors = in_thread(write)
    thread.join(timeout=10)
    assert errors == []
    assert list(User.objects.values_list("username", flat=True)) == ["after"]


def test_a_turn_inside_a_turn_is_the_same_turn():
    def nested() -> None:
        never_waits_inside_sqlite()
        with writer_turn(), writer_turn(), atomic_write(), atomic_write():
            User.objects.create(username="nested")

    thread, errors = in_thread(nested)
    thread.join(timeout=2)
    assert not thread.is_alive(), "a thread waited for its own turn"
    assert errors == []
    assert User.objects.filter(username="nested").exists()


def test_a_turn_that_never_comes_is_database_is_locked_as_sqlite_says_it():
    in_transaction, may_commit = threading.Event(), threading.Event()

    def impatient_write() -> None:
        with_timeout(0.2)
        in_transaction.wait(timeout=10)
        with writer_turn():
            User.objects.create(username="second")

    first, _ = in_thread(long_transaction(in_transaction, may_commit))
    second, errors = in_thread(impatient_write)
    second.join(timeout=10)
    may_commit.set()
    first.join(timeout=10)

    assert len(errors) == 1
    assert isinstance(errors[0], OperationalError)
    assert str(errors[0]) == "database is locked"


async def test_a_write_whose_turn_never_comes_is_the_503_page(alice_client, sandbox):
    await connect_twitch(alice_client, login="alicestreams")
    in_transaction, may_commit = threading.Event(), threading.Event()
    holder, _ = in_thread(long_transaction(in_transaction, may_commit))
    await asyncio.to_thread(in_transaction.wait, 10)
    # The request's connection is open already, with SQLite's 20-second busy
    # wait: only the turn's wait is this short.
    restore = await sync_to_async(with_timeout)(0.2)
    try:
        response = await alice_client.post("/twitch/disconnect/")
    finally:
        await sync_to_async(restore)()
        may_commit.set()
        await asyncio.to_thread(holder.join, 10)

    assert response.status_code == 503
    assert "database is not answering" in page(response)


def test_a_write_after_sqlite_rolled_back_by_itself_fails_at_once_and_whole():
    # As after a full disk or an I/O error: SQLite ends the transaction, Django's
    # atomic block goes on. Its next write must not commit on its own, half of the
    # block.
    def rolled_back_then_written() -> None:
        with_timeout(5)
        with atomic_write():
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
        with writer_turn():
            took_turn.set()
            User.objects.create(username="first")

    def next_writer() -> None:
        with_timeout(1)
        connection.ensure_connection()
        took_turn.wait(timeout=10)
        started = time.monotonic()
        try:
            with writer_turn():
                User.objects.create(username="next")
        finally:
            waited.append(time.monotonic() - started)
            with connection.cursor() as cursor:
                cursor.execute("PRAGMA busy_timeout")
                busy_wait_after.append(cursor.fetchone()[0])

    try:
        first, first_errors = in_thread(first_writer)
        second, second_errors = in_thread(next_writer)
        first.join(timeout=10)
        second.join(timeout=10)
    finally:
        other_process.execute("ROLLBACK")
        other_process.close()

    assert [str(e) for e in first_errors + second_errors] == ["database is locked"] * 2
    assert 0.9 < waited[0] < 1.3
    assert busy_wait_after == [1000], "the next write would wait less than its timeout"
