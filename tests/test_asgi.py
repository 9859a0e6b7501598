"""The ASGI entry point: request threads are reused, never shared."""

from __future__ import annotations

import asyncio
import threading

import pytest
from asgiref.testing import ApplicationCommunicator
from django.core.signals import request_finished, request_started
from django.db import connection
from django.db.backends.signals import connection_created

from tests.conftest import listening
from twitchauth_site.asgi import ReusingRequestThreads

pytestmark = pytest.mark.django_db(transaction=True)


async def get(application: ReusingRequestThreads, path: str) -> int:
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "headers": [(b"host", b"testserver")],
        "client": ("127.0.0.1", 5000),
        "server": ("testserver", 80),
    }
    communicator = ApplicationCommunicator(application, scope)
    await communicator.send_input({"type": "http.request", "body": b""})
    start = await communicator.receive_output(timeout=10)
    while (await communicator.receive_output(timeout=10)).get("more_body"):
        pass
    await communicator.wait()
    return start["status"]


async def test_one_request_after_another_runs_on_the_same_thread():
    application = ReusingRequestThreads()
    threads = []

    def finished(**kwargs):
        threads.append(threading.get_ident())

    with listening(request_finished, finished):
        for _ in range(3):
            assert await get(application, "/healthz") == 200

    assert len(threads) == 3
    assert len(set(threads)) == 1


@pytest.mark.skipif(
    connection.vendor != "sqlite", reason="PostgreSQL's connections come from a pool"
)
async def test_one_request_after_another_uses_the_same_sqlite_connection():
    application = ReusingRequestThreads()
    created = []

    with listening(connection_created, lambda **kwargs: created.append(1)):
        for _ in range(3):
            assert await get(application, "/healthz") == 200

    assert len(created) <= 1


async def test_requests_at_the_same_time_each_have_a_thread_of_their_own():
    application = ReusingRequestThreads()
    # Each request's thread waits here for the other: were they one thread, the
    # second could never arrive and the barrier would break.
    both_started = threading.Barrier(2, timeout=5)
    threads = []

    def started(**kwargs):
        threads.append(threading.get_ident())
        both_started.wait()

    with listening(request_started, started):
        statuses = await asyncio.gather(
            get(application, "/healthz"), get(application, "/healthz")
        )

    assert statuses == [200, 200]
    assert len(set(threads)) == 2


async def test_after_a_crowd_threads_beyond_the_idle_limit_end():
    # Other tests' handlers keep theirs, and some of theirs may still be ending.
    earlier = set(request_threads())
    application = ReusingRequestThreads()
    application.KEEP_IDLE = 1
    all_started = threading.Barrier(3, timeout=5)

    with listening(request_started, lambda **kwargs: all_started.wait()):
        statuses = await asyncio.gather(
            *(get(application, "/healthz") for _ in range(3))
        )

    assert statuses == [200, 200, 200]
    for _ in range(100):
        if len(set(request_threads()) - earlier) == 1:
            break
        await asyncio.sleep(0.02)
    assert len(set(request_threads()) - earlier) == 1


def request_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("django-request")]
