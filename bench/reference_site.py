"""The least a Python site can do for the Connect flow: the benchmark's practical
ceiling on this machine.

`python bench/callback.py --reference` serves this ASGI app instead of the site,
the same way (uvicorn, W workers, uvloop and httptools) and against the same
sandbox and load driver. It answers the driver's sign-in pages with a fixed form,
redirects POST /twitch/connect/ to the consent page with a random state, and on
GET /twitch/callback/ makes the callback's two round trips to Twitch (code
exchange, validation) and redirects home: no database, no session, no checks.
Whatever flows a second it falls short of K / 3L is the sandbox's, the driver's
and uvicorn's own time on these two cores, which no site can win back.

Not a site: it trusts any state and keeps nothing. Configured by the same
environment as the site (TWITCH_*).
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qsl, urlencode

import aiohttp

Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

AUTH_BASE = os.environ.get("TWITCH_AUTH_BASE_URL", "")
CLIENT_ID = os.environ.get("TWITCH_CLIENT_ID", "")
CLIENT_SECRET = os.environ.get("TWITCH_CLIENT_SECRET", "")
REDIRECT_URI = os.environ.get("TWITCH_REDIRECT_URI", "")
FORM = b'<form><input name="csrfmiddlewaretoken" value="reference"></form>'

_twitch: aiohttp.ClientSession | None = None  # one per worker, opened on first use


async def application(scope: dict[str, Any], receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        await _lifespan(receive, send)
        return
    await _drain(receive)
    path, method = scope["path"], scope["method"]
    if path == "/twitch/connect/" and method == "POST":
        query = {
            "client_id": CLIENT_ID,
            "redirect_uri": REDIRECT_URI,
            "response_type": "code",
            "scope": "chat:read chat:edit",
            "state": secrets.token_urlsafe(32),
        }
        await _answer(send, 302, location=f"{AUTH_BASE}authorize?{urlencode(query)}")
    elif path == "/twitch/callback/":
        params = dict(parse_qsl(scope["query_string"].decode()))
        twitch = await _session()
        exchange = {
            "client_id": CLIENT_ID,
            "client_secret": CLIENT_SECRET,
            "code": params.get("code", ""),
            "grant_type": "authorization_code",
            "redirect_uri": REDIRECT_URI,
        }
        async with twitch.post(f"{AUTH_BASE}token", data=exchange) as answer:
            tokens = await answer.json()
        headers = {"Authorization": f"OAuth {tokens['access_token']}"}
        async with twitch.get(f"{AUTH_BASE}validate", headers=headers) as answer:
            await answer.json()
        await _answer(send, 302, location="/")
    elif path == "/accounts/login/" and method == "POST":
        await _answer(send, 302, location="/")
    else:
        await _answer(send, 200, body=FORM)


async def _session() -> aiohttp.ClientSession:
    global _twitch
    if _twitch is None:
        _twitch = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
    return _twitch


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            if _twitch is not None:
                await _twitch.close()
            await send({"type": "lifespan.shutdown.complete"})
            return


async def _drain(receive: Receive) -> None:
    while (await receive()).get("more_body"):
        pass


async def _answer(
    send: Send, status: int, *, location: str = "", body: bytes = b""
) -> None:
    headers = [
        (b"content-type", b"text/html"),
        (b"content-length", str(len(body)).encode()),
    ]
    if location:
        headers.append((b"location", location.encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
