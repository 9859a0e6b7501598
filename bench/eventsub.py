"""How fast the EventSub webhook answers Twitch: signed notifications posted to the
site served as deployed (uvicorn, 2 workers, DEBUG off), timed until the answer.

    python bench/eventsub.py                  # SQLite in a scratch directory
    DATABASE_URL=postgres://postgres@127.0.0.1:5432/bench python bench/eventsub.py
    python bench/eventsub.py -n 500 --burst 20

Three settings: one message at a time (-n of them); bursts of --burst at once (as
Twitch sends when many events happen together); and one at a time while another
connection holds the database's write lock (SQLite: BEGIN IMMEDIATE; PostgreSQL:
an ACCESS EXCLUSIVE lock on the inbox table), when the webhook keeps messages in
its spool. Prints p50, p99 and the maximum in milliseconds, and the errors (any
answer but 2xx).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import hmac
import json
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
from refresh import _free_port  # bench/ is on sys.path when run as a script

ROOT = Path(__file__).resolve().parent.parent
KEY = "xpJvb1cyhZc6xXcf2XbZDfuBb8d8Fh1mqqxYDXwzDWw="
SECRET = "bench-eventsub-secret"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=300, help="messages one at a time")
    parser.add_argument("--burst", type=int, default=20, help="messages at once")
    parser.add_argument("--bursts", type=int, default=10)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        port = _free_port()
        env = _environment(port, Path(scratch))
        database = "PostgreSQL" if "postgres" in env["DATABASE_URL"] else "SQLite"
        subprocess.run(
            [sys.executable, "manage.py", "migrate", "--verbosity", "0"],
            cwd=ROOT,
            env=env,
            check=True,
        )
        server = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "twitchauth_site.asgi:application"]
            + ["--port", str(port), "--workers", "2", "--log-level", "error"],
            cwd=ROOT,
            env=env,
        )
        try:
            _wait_until_listening(port)
            url = f"http://localhost:{port}/twitch/eventsub/"
            asyncio.run(_post_all(url, 20))  # warm both workers
            print(
                f"{'database':>10} {'setting':>18} {'n':>5} {'p50 ms':>7} "
                f"{'p99 ms':>7} {'max ms':>7} {'errors':>6}"
            )
            one = asyncio.run(_post_all(url, args.n, at_once=1))
            _print(database, "one at a time", one)
            burst = asyncio.run(
                _post_all(url, args.burst * args.bursts, at_once=args.burst)
            )
            _print(database, f"bursts of {args.burst}", burst)
            with _write_lock(env["DATABASE_URL"]):
                locked = asyncio.run(_post_all(url, min(args.n, 100), at_once=1))
            _print(database, "database locked", locked)
        finally:
            server.terminate()
            server.wait(timeout=10)


def _print(database: str, setting: str, result: tuple[list[float], int]) -> None:
    seconds, errors = result
    ms = sorted(s * 1000 for s in seconds)
    p99 = ms[min(len(ms) - 1, int(len(ms) * 0.99))]
    print(
        f"{database:>10} {setting:>18} {len(ms):>5} {statistics.median(ms):>7.1f} "
        f"{p99:>7.1f} {ms[-1]:>7.1f} {errors:>6}"
    )


async def _post_all(url: str, count: int, at_once: int = 10) -> tuple[list[float], int]:
    times: list[float] = []
    errors = 0
    async with aiohttp.ClientSession() as session:

        async def one() -> None:
            nonlocal errors
            body, headers = _signed()
            started = time.perf_counter()
            async with session.post(url, data=body, headers=headers) as answer:
                await answer.read()
                times.append(time.perf_counter() - started)
                errors += not 200 <= answer.status < 300

        for start in range(0, count, at_once):
            await asyncio.gather(*(one() for _ in range(min(at_once, count - start))))
    return times, errors


def _signed() -> tuple[bytes, dict[str, str]]:
    message_id = str(uuid.uuid4())
    timestamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    body = json.dumps(
        {
            "subscription": {
                "id": "bench",
                "status": "enabled",
                "type": "stream.online",
                "version": "1",
                "condition": {"broadcaster_user_id": "1"},
            },
            "event": {"broadcaster_user_id": "1", "type": "live"},
        }
    ).encode()
    signature = hmac.new(
        SECRET.encode(), message_id.encode() + timestamp.encode() + body, hashlib.sha256
    ).hexdigest()
    return body, {
        "Content-Type": "application/json",
        "Twitch-Eventsub-Message-Id": message_id,
        "Twitch-Eventsub-Message-Timestamp": timestamp,
        "Twitch-Eventsub-Message-Signature": f"sha256={signature}",
        "Twitch-Eventsub-Message-Type": "notification",
        "Twitch-Eventsub-Message-Retry": "0",
    }


@contextlib.contextmanager
def _write_lock(database_url: str) -> Iterator[None]:
    if database_url.startswith("sqlite:///"):
        holder = sqlite3.connect(database_url.removeprefix("sqlite:///"))
        holder.isolation_level = None
        holder.execute("BEGIN IMMEDIATE")
        try:
            yield
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        return
    import psycopg

    with psycopg.connect(database_url) as holder:
        holder.execute("LOCK TABLE accounts_eventsubmessage IN ACCESS EXCLUSIVE MODE")
        yield
        holder.rollback()


def _environment(port: int, scratch: Path) -> dict[str, str]:
    return dict(
        os.environ,
        DJANGO_SETTINGS_MODULE="twitchauth_site.settings",
        DEBUG="False",
        SECRET_KEY="bench-only",
        ALLOWED_HOSTS="localhost",
        DATABASE_URL=os.environ.get(
            "DATABASE_URL", f"sqlite:///{scratch / 'bench.sqlite3'}"
        ),
        TOKEN_ENCRYPTION_KEYS=KEY,
        TOKEN_SPOOL_DIR=str(scratch / "spool"),
        TWITCH_CLIENT_ID="bench-client",
        TWITCH_CLIENT_SECRET="bench-secret",
        TWITCH_REDIRECT_URI=f"http://localhost:{port}/twitch/callback/",
        # Only subscriptions use it; the bench posts to the served port itself.
        TWITCH_EVENTSUB_CALLBACK_URL="https://localhost/twitch/eventsub/",
        TWITCH_EVENTSUB_SECRET=SECRET,
        SECURE_SSL_REDIRECT="False",
        # The bench's own stand-ins for Twitch are never called: stream.online
        # needs nobody.
        TWITCH_AUTH_BASE_URL="http://127.0.0.1:9/oauth2/",
        TWITCH_API_BASE_URL="http://127.0.0.1:9/helix/",
    )


def _wait_until_listening(port: int) -> None:
    import socket

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise SystemExit("the site did not start")


if __name__ == "__main__":
    main()
