"""The ASGI entry point: request threads are reused, never shared. Only public
APIs: Django's ASGI application, wrapped in asgiref's `ThreadSensitiveContext`
with an executor; the first test fails if an upgrade of either stops Django's
handler from running the request on the thread it is handed."""

from __future__ import annotations

import asyncio
import threading

import pytest
from asgiref.testing import ApplicationCommunicator
from django.core.asgi import get_asgi_application
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


def reusing() -> ReusingRequestThreads:
    return ReusingRequestThreads(get_asgi_application())


async def test_django_runs_the_request_on_the_thread_it_is_handed():
    # Django's handler enters a ThreadSensitiveContext of its own, without an
    # executor: inside ours, asgiref makes it use ours. Were that to change, each
    # request would start a thread again.
    threads = []

    def started(**kwargs):
        threads.append(threading.current_thread().name)

    with listening(request_started, started), listening(request_finished, started):
        assert await get(reusing(), "/healthz") == 200

    assert len(threads) == 2
    assert all(name.startswith("django-request") for name in threads), threads


async def test_one_request_after_another_runs_on_the_same_thread():
    application = reusing()
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
    application = reusing()
    created = []

    with listening(connection_created, lambda **kwargs: created.append(1)):
        for _ in range(3):
            assert await get(application, "/healthz") == 200

    assert len(created) <= 1


async def test_requests_at_the_same_time_each_have_a_thread_of_their_own():
    application = reusing()
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
    application = reusing()
    application.KEEP_IDLE = 1
    all_started = threading.Barrier(3, timeout=5)
    crowd = []

    def started(**kwargs):
        crowd.append(threading.current_thread())
        all_started.wait()

    with listening(request_started, started):
        statuses = await asyncio.gather(
            *(get(application, "/healthz") for _ in range(3))
        )
    assert statuses == [200, 200, 200]
    # The next request runs on the one thread kept.
    kept = []
    with listening(
        request_started, lambda **kwargs: kept.append(threading.current_thread())
    ):
        assert await get(application, "/healthz") == 200

    assert len(set(crowd)) == 3 and kept[0] in crowd
    for thread in set(crowd) - {kept[0]}:
        await asyncio.to_thread(thread.join, 10)
        assert not thread.is_alive()
    assert kept[0].is_alive()
