"""The site as it is really served: uvicorn, two worker processes, SQLite or PostgreSQL.

Browsers (aiohttp clients with their own cookie jars) sign in, connect Twitch on the
sandbox's consent page and land back, twenty at once, so the database settings meet
real concurrent writers from two processes.
"""

from __future__ import annotations

import asyncio
import os
import re
from urllib.parse import urlsplit

import aiohttp
import pytest
from django.db import connection

from accounts.models import TwitchToken
from tests.conftest import approve_on_twitch

pytestmark = pytest.mark.django_db(transaction=True)

CSRF = re.compile(r'name="csrfmiddlewaretoken" value="([^"]+)"')


async def approved_on_twitch(
    browser: aiohttp.ClientSession, base: str, username: str, login: str
) -> str:
    """Sign in, press Connect Twitch, approve on Twitch: the callback URL to visit."""
    async with browser.get(f"{base}/accounts/login/") as page:
        csrf = CSRF.search(await page.text()).group(1)
    async with browser.post(
        f"{base}/accounts/login/",
        data={"csrfmiddlewaretoken": csrf, "username": username, "password": "pw"},
        allow_redirects=False,
    ) as answer:
        assert answer.status == 302, f"login failed for {username}"
    async with browser.get(f"{base}/") as home:
        csrf = CSRF.search(await home.text()).group(1)
    async with browser.post(
        f"{base}/twitch/connect/",
        data={"csrfmiddlewaretoken": csrf},
        allow_redirects=False,
    ) as answer:
        authorize_url = answer.headers["Location"]
    back = await approve_on_twitch(authorize_url, login=login)
    assert urlsplit(back).netloc == urlsplit(base).netloc
    return back


async def sign_in_and_connect(base: str, username: str, login: str) -> str:
    """What a person does in a browser; returns the home page they end on."""
    async with aiohttp.ClientSession() as browser:
        back = await approved_on_twitch(browser, base, username, login)
        async with browser.get(back) as home:
            assert home.status == 200, await home.text()
            return await home.text()


async def test_a_person_connects_twitch_on_the_served_site(site, django_user_model):
    await django_user_model.objects.acreate_user("carol", password="pw")

    home = await sign_in_and_connect(site, "carol", "carolstreams")

    assert "Connected as <strong>carolstreams</strong>" in home
    assert await TwitchToken.objects.filter(login="carolstreams").aexists()


async def test_twenty_people_connect_at_once_on_two_workers(
    site, sandbox, django_user_model
):
    for n in range(20):
        await django_user_model.objects.acreate_user(f"viewer{n}", password="pw")
    sandbox.set_latency(0.02)

    homes = await asyncio.gather(
        *(sign_in_and_connect(site, f"viewer{n}", f"stream{n}") for n in range(20))
    )

    for n, home in enumerate(homes):
        assert f"Connected as <strong>stream{n}</strong>" in home
    pairs = {
        t.user.username: t.login
        async for t in TwitchToken.objects.select_related("user")
    }
    assert pairs == {f"viewer{n}": f"stream{n}" for n in range(20)}


def test_healthz_on_the_served_site(site):
    import urllib.request

    with urllib.request.urlopen(f"{site}/healthz", timeout=5) as response:
        assert response.status == 200


async def test_sign_in_throttling_holds_across_workers(site, django_user_model):
    await django_user_model.objects.acreate_user("dave", password="pw")
    statuses = []
    # Each attempt from a fresh connection, so the two workers share the guessing.
    for password in ["wrong"] * 5 + ["pw"]:
        async with aiohttp.ClientSession() as browser:
            async with browser.get(f"{site}/accounts/login/") as form:
                csrf = CSRF.search(await form.text()).group(1)
            async with browser.post(
                f"{site}/accounts/login/",
                data={
                    "csrfmiddlewaretoken": csrf,
                    "username": "dave",
                    "password": password,
                },
                allow_redirects=False,
            ) as answer:
                statuses.append(answer.status)
                retry_after = answer.headers.get("Retry-After")

    assert statuses == [200, 200, 200, 200, 429, 429]
    assert retry_after is not None and int(retry_after) > 0


def test_healthz_answers_503_soon_when_postgresql_accepts_but_never_answers(sandbox):
    import socket
    import subprocess
    import sys
    import threading
    import time
    import urllib.error
    import urllib.request

    from tests.conftest import BASE_DIR, free_port, process_env, wait_until_listening

    # A "database" that accepts connections and then says nothing, ever.
    black_hole = socket.socket()
    black_hole.bind(("127.0.0.1", 0))
    black_hole.listen(16)
    held: list[socket.socket] = []
    threading.Thread(
        target=lambda: [held.append(black_hole.accept()[0]) for _ in range(16)],
        daemon=True,
    ).start()
    port = free_port()
    env = process_env(sandbox, ALLOWED_HOSTS="localhost")
    env["DATABASE_URL"] = (
        f"postgres://nobody@127.0.0.1:{black_hole.getsockname()[1]}/hung"
    )
    server = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "twitchauth_site.asgi:application"]
        + ["--port", str(port), "--log-level", "warning"],
        cwd=BASE_DIR,
        env=env,
    )
    try:
        wait_until_listening(port, server)
        started = time.monotonic()
        with pytest.raises(urllib.error.HTTPError) as answer:
            urllib.request.urlopen(f"http://localhost:{port}/healthz", timeout=15)
        elapsed = time.monotonic() - started
    finally:
        server.terminate()
        server.wait(timeout=10)
        black_hole.close()
        for connection in held:
            connection.close()

    assert answer.value.code == 503
    # The 4 s connect timeout (DATABASE_CONNECT_TIMEOUT's default), with room for a
    # busy machine; without one the page would never answer (the client waits 15 s).
    assert elapsed < 10, f"{elapsed:.1f} s"


@pytest.mark.parametrize("keys", ["", "not-a-fernet-key"])
def test_the_site_refuses_to_start_without_usable_encryption_keys(sandbox, keys):
    import subprocess
    import sys

    from tests.conftest import BASE_DIR, free_port, process_env

    env = process_env(sandbox, ALLOWED_HOSTS="localhost")
    env["TOKEN_ENCRYPTION_KEYS"] = keys
    server = subprocess.run(
        [sys.executable, "-m", "uvicorn", "twitchauth_site.asgi:application"]
        + ["--port", str(free_port()), "--log-level", "warning"],
        cwd=BASE_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )

    assert server.returncode != 0
    assert "TOKEN_ENCRYPTION_KEYS" in server.stderr
    assert ("accounts.E006" if not keys else "accounts.E005") in server.stderr


async def test_a_graceful_shutdown_finishes_a_callback_in_flight(
    site, sandbox, django_user_model
):
    import signal

    await django_user_model.objects.acreate_user("hana", password="pw")
    async with aiohttp.ClientSession() as browser:
        back = await approved_on_twitch(browser, site, "hana", "hanastreams")
        sandbox.set_latency(1.0, endpoint="token")  # the callback waits on Twitch

        landing = asyncio.create_task(browser.get(back, allow_redirects=False))
        # The callback is now waiting on Twitch.
        await asyncio.to_thread(sandbox.wait_for_request, "token")
        os.kill(site.pid, signal.SIGTERM)  # a deploy stops the server
        response = await landing

    assert response.status == 302
    assert await TwitchToken.objects.filter(login="hanastreams").aexists()
    # And the server did stop: the request was finished, not abandoned to a
    # process that lived on.
    for _ in range(100):
        if _has_exited(site.pid):
            break
        await asyncio.sleep(0.1)
    assert _has_exited(site.pid)


@pytest.mark.skipif(
    connection.vendor != "postgresql", reason="PostgreSQL's connection pool"
)
@pytest.mark.parametrize(
    "site",
    # One worker with one pooled connection, which gives up waiting after 1 s.
    [
        {
            "workers": 1,
            "DATABASE_POOL_MIN": "1",
            "DATABASE_POOL_MAX": "1",
            "DATABASE_CONNECT_TIMEOUT": "1",
        }
    ],
    indirect=True,
)
async def test_a_callback_waiting_on_twitch_leaves_the_database_to_other_requests(
    site, sandbox, django_user_model
):
    await django_user_model.objects.acreate_user("ivan", password="pw")
    async with aiohttp.ClientSession() as browser:
        back = await approved_on_twitch(browser, site, "ivan", "ivanstreams")
        sandbox.set_latency(2.0, endpoint="token")  # the callback waits on Twitch

        landing = asyncio.create_task(browser.get(back, allow_redirects=False))
        # The callback is now waiting on Twitch.
        await asyncio.to_thread(sandbox.wait_for_request, "token")
        async with (
            aiohttp.ClientSession() as someone_else,
            someone_else.get(f"{site}/healthz") as health,
        ):
            health_status = health.status
        response = await landing

    assert health_status == 200  # not 503: the one connection was free
    assert response.status == 302
    assert await TwitchToken.objects.filter(login="ivanstreams").aexists()


def _has_exited(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/status") as status:
            return any(line.startswith("State:\tZ") for line in status)
    except FileNotFoundError:
        return True
