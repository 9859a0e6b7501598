"""A burst of sign-in attempts cannot outrun the lockout: however many arrive at
once, at most AXES_FAILURE_LIMIT passwords are ever checked for one account."""

from __future__ import annotations

import threading
import time

import pytest
from django.contrib.auth.backends import ModelBackend
from django.db import connections
from django.test import Client

pytestmark = pytest.mark.django_db(transaction=True)

BURST = 40


class CountingBackend(ModelBackend):
    """Django's password check, counted."""

    checked = 0
    lock = threading.Lock()

    def authenticate(self, request, username=None, password=None, **kwargs):
        with CountingBackend.lock:
            CountingBackend.checked += 1
        return super().authenticate(request, username, password, **kwargs)


@pytest.fixture
def counted(settings):
    settings.AUTHENTICATION_BACKENDS = [
        "axes.backends.AxesStandaloneBackend",
        f"{__name__}.CountingBackend",
    ]
    CountingBackend.checked = 0
    return CountingBackend


@pytest.mark.parametrize("url", ["/accounts/login/", "/admin/login/"])
def test_a_burst_of_wrong_passwords_is_checked_at_most_the_limit(
    alice, counted, settings, url
):
    alice.is_staff = True
    alice.save()
    start = threading.Barrier(BURST)
    statuses: list[int] = []

    def guess() -> None:
        try:
            client = Client()
            start.wait(timeout=30)  # all at the same instant
            response = client.post(url, {"username": "alice", "password": "wrong"})
            statuses.append(response.status_code)
        finally:
            connections.close_all()  # this thread's own connection

    threads = [threading.Thread(target=guess) for _ in range(BURST)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    assert len(statuses) == BURST
    assert counted.checked <= settings.AXES_FAILURE_LIMIT
    assert statuses.count(429) >= BURST - settings.AXES_FAILURE_LIMIT
    # And the right password, right after, meets the lock too.
    response = Client().post(url, {"username": "alice", "password": "pw"})
    assert response.status_code == 429
    assert counted.checked <= settings.AXES_FAILURE_LIMIT


class SlowBackend(ModelBackend):
    """Django's password check, as slow as a real hash (PBKDF2, ~0.5 s) for alice."""

    checking = threading.Event()

    def authenticate(self, request, username=None, password=None, **kwargs):
        if username == "alice":
            SlowBackend.checking.set()
            time.sleep(1.0)  # the hash itself
        return super().authenticate(request, username, password, **kwargs)


def test_a_password_being_checked_holds_up_no_other_account(alice, bob, settings):
    settings.AUTHENTICATION_BACKENDS = [
        "axes.backends.AxesStandaloneBackend",
        f"{__name__}.SlowBackend",
    ]
    SlowBackend.checking.clear()

    def alice_signs_in() -> None:
        try:
            Client().post("/accounts/login/", {"username": "alice", "password": "x"})
        finally:
            connections.close_all()

    slow = threading.Thread(target=alice_signs_in)
    slow.start()
    assert SlowBackend.checking.wait(10)  # alice's password is being checked
    began = time.monotonic()
    response = Client().post("/accounts/login/", {"username": "bob", "password": "pw"})
    took = time.monotonic() - began
    slow.join(10)

    assert response.status_code == 302  # bob is in
    # Not behind alice's check (a lock on the whole database would make it wait
    # out her second).
    assert took < 0.8
