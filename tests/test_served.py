"""The site as it is really served: uvicorn, two worker processes, SQLite or PostgreSQL.

Browsers (aiohttp clients with their own cookie jars) sign in, connect Twitch on the
sandbox's consent page and land back, twenty at once, so the database settings meet
real concurrent writers from two processes.
"""

from __future__ import annotations

import asyncio
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
import pytest
from django.conf import settings
from django.db import connection

from accounts.models import TwitchToken
from tests.conftest import approve_on_twitch

pytestmark = pytest.mark.django_db(transaction=True)

BASE_DIR = Path(__file__).resolve().parent.parent
CSRF = re.compile(r'name="csrfmiddlewaretoken" value="([^"]+)"')


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _database_url() -> str:
    db = connection.settings_dict
    if connection.vendor == "sqlite":
        return f"sqlite:///{db['NAME']}"
    return f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}"


@pytest.fixture
def site(sandbox) -> Iterator[str]:
    port = _free_port()
    base = f"http://localhost:{port}"
    sandbox.redirect_uris[:] = [f"{base}/twitch/callback/"]
    env = dict(
        os.environ,
        DJANGO_SETTINGS_MODULE="tests.settings",
        DATABASE_URL=_database_url(),
        ALLOWED_HOSTS="localhost",
        TWITCH_REDIRECT_URI=f"{base}/twitch/callback/",
        TWITCH_AUTH_BASE_URL=sandbox.auth_base_url,
        TWITCH_API_BASE_URL=sandbox.api_base_url,
        TOKEN_ENCRYPTION_KEYS=",".join(settings.TOKEN_ENCRYPTION_KEYS),
    )
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "twitchauth_site.asgi:application",
            "--port",
            str(port),
            "--workers",
            "2",
            "--log-level",
            "warning",
        ],
        cwd=BASE_DIR,
        env=env,
    )
    try:
        _wait_until_listening(port, server)
        yield base
    finally:
        server.terminate()
        server.wait(timeout=10)


def _wait_until_listening(port: int, server: subprocess.Popen) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        assert server.poll() is None, "uvicorn exited"
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise AssertionError("uvicorn did not start")


async def sign_in_and_connect(base: str, username: str, login: str) -> str:
    """What a person does in a browser; returns the home page they end on."""
    async with aiohttp.ClientSession() as browser:
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
