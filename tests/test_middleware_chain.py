"""The middleware chain runs on the request's own thread in one trip, and the async
views below it find the signed-in user loaded there."""

from __future__ import annotations

import pytest
from asgiref.sync import SyncToAsync
from django.conf import settings
from django.test import AsyncClient, Client
from django.utils.module_loading import import_string

pytestmark = pytest.mark.django_db(transaction=True)

ON_THE_THREAD = "accounts.web.middleware.OnTheRequestThread"


def test_every_middleware_above_the_sync_one_can_run_sync():
    # One async-only middleware above it would split the chain into trips again.
    listed = list(settings.MIDDLEWARE)
    below = listed.index(ON_THE_THREAD)
    assert not getattr(import_string(ON_THE_THREAD), "async_capable", False)
    for path in listed[:below]:
        assert getattr(import_string(path), "sync_capable", True), path
    for path in listed[below + 1 :]:
        assert getattr(import_string(path), "async_capable", False), path


@pytest.fixture
def trips(monkeypatch) -> list[str]:
    """Every trip from the event loop to a thread (asgiref's sync_to_async)."""
    made: list[str] = []
    call = SyncToAsync.__call__

    async def counted(self, *args, **kwargs):
        made.append(getattr(self.func, "__qualname__", type(self.func).__name__))
        return await call(self, *args, **kwargs)

    monkeypatch.setattr(SyncToAsync, "__call__", counted)
    return made


async def test_a_signed_in_page_takes_a_handful_of_trips_not_one_per_hook(alice, trips):
    client = AsyncClient()
    await client.aforce_login(alice)
    trips.clear()

    response = await client.get("/")

    assert response.status_code == 200
    # Django's request_started receivers, the chain (one trip), CSRF's
    # process_view, the connection query, the page's rendering and closing the
    # response; Django's middleware hooks, a trip each, would be some fifteen more.
    assert len(trips) <= 6, trips


async def test_async_views_read_the_user_the_chain_loaded(alice, trips):
    client = AsyncClient()
    await client.aforce_login(alice)
    trips.clear()

    response = await client.post("/twitch/connect/")

    assert response.status_code == 302
    # The chain (which loads the session and the user, and saves the session with
    # its new state), CSRF's process_view and closing the response: no trip of the
    # view's own to load the user again (request.auser() would add one).
    assert len(trips) <= 4, trips


def test_a_database_that_fails_while_loading_the_user_is_the_503_page(
    alice, monkeypatch
):
    from django.contrib import auth
    from django.db import OperationalError

    client = Client()
    client.force_login(alice)

    def unreachable(request):
        raise OperationalError("the database went away")

    monkeypatch.setattr(auth, "get_user", unreachable)  # a database outage
    response = client.get("/")

    assert response.status_code == 503
    assert "database is not answering" in response.content.decode()
