"""The Connect flow under a crowd: how close the OAuth callback comes to its floor.

Each flow is what a person does: POST /twitch/connect/, approve on Twitch's consent
page, GET /twitch/callback/ (timed). With OpenID Connect (the default, "trips 1")
the callback makes one round trip to Twitch before it answers (the code exchange,
whose ID token names the user; validation follows the answer); without it
("trips 2", TWITCH_OPENID_CONNECT=False, the floor of every site that asks Twitch
who the user is) two: the code exchange, then validation. With L seconds of latency
upstream it cannot answer faster than trips x L: the floor. With the consent page, a
person waits for 1 + trips answers from Twitch a flow, so K people make at most
K / ((1 + trips) L) flows a second ("of max"). The
site runs as deployed (uvicorn, W workers, DEBUG off) on SQLite or PostgreSQL; K
signed-in users go through the flow again and again for a while, and the site's CPU
per flow is read from /proc of its worker processes.

    python bench/callback.py                          # K 1, 16, 64; L 0, 100 ms; W 2;
                                                      # one and two round trips
    python bench/callback.py --round-trips 1 -k 16 --latency 0.1 --repeat 3
    python bench/callback.py -k 16 --latency 0.1 --seconds 20
    DATABASE_URL=postgres://postgres@127.0.0.1:5432/bench python bench/callback.py
    python bench/callback.py --repeat 3 --seconds 10  # each setting 3 times, medians
    python bench/callback.py --smoke                  # CI: K 4, a few flows, no errors
    python bench/callback.py --reference              # the practical ceiling: a
                                                      # site that only does the two
                                                      # round trips (reference_site.py)

Everything (sandbox, site, load driver) shares one machine; the sandbox and the
driver are asyncio processes that cost little, but they are not free.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import aiohttp
from refresh import _free_port  # bench/ is on sys.path when run as a script

ROOT = Path(__file__).resolve().parent.parent
KEY = "xpJvb1cyhZc6xXcf2XbZDfuBb8d8Fh1mqqxYDXwzDWw="
PASSWORD = "bench-password"
CSRF = re.compile(r'name="csrfmiddlewaretoken" value="([^"]+)"')
TICKS = os.sysconf("SC_CLK_TCK")


@dataclass
class Result:
    callback_seconds: list[float] = field(default_factory=list)
    errors: int = 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-k", type=int, action="append", help="users (repeatable)")
    parser.add_argument(
        "--latency", type=float, action="append", help="seconds upstream (repeatable)"
    )
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=15.0, help="per setting")
    parser.add_argument(
        "--repeat", type=int, default=1, help="runs per setting, then their median"
    )
    parser.add_argument(
        "--smoke", action="store_true", help="K 4, three flows each; fail on errors"
    )
    parser.add_argument(
        "--round-trips",
        choices=["1", "2", "both"],
        default="both",
        help="the callback with OpenID Connect (1), without (2), or both (default)",
    )
    parser.add_argument(
        "--reference",
        action="store_true",
        help="serve bench/reference_site.py instead: the practical ceiling",
    )
    args = parser.parse_args()
    users = args.k or ([4] if args.smoke else [1, 16, 64])
    latencies = args.latency or ([0.01] if args.smoke else [0.0, 0.1])

    with tempfile.TemporaryDirectory() as scratch:
        sandbox_port, site_port = _free_port(), _free_port()
        site = f"http://localhost:{site_port}"
        sandbox_base = f"http://127.0.0.1:{sandbox_port}/"
        env = _environment(sandbox_base, site, Path(scratch))
        if args.reference:
            app, database = "reference_site:application", "reference"
            app_dir = ["--app-dir", str(ROOT / "bench")]
        else:
            _prepare_database(env, max(users))
            app, app_dir = "twitchauth_site.asgi:application", []
            database = "PostgreSQL" if "postgres" in env["DATABASE_URL"] else "SQLite"
        # Twitch's burst limit on id.twitch.tv would set the pace, not the site.
        sandbox = _start(
            [sys.executable, "-m", "twitch_sandbox", "--port", str(sandbox_port)]
            + ["--redirect-uri", f"{site}/twitch/callback/"]
            + ["--auth-rate-limit", "off"],
            env,
        )
        # The reference site makes the two round trips.
        trips_each = (
            [2]
            if args.reference
            else {"1": [1], "2": [2], "both": [1, 2]}[args.round_trips]
        )
        print(
            f"{'K':>3} {'L ms':>5} {'W':>2} {'database':>10} {'trips':>5} "
            f"{'flows':>6} {'flows/s':>7} {'of max':>6} {'p50 ms':>7} {'p95 ms':>7} "
            f"{'p99 ms':>7} "
            f"{'p99/floor':>9} {'errors':>6} {'CPU ms/flow':>11} "
            f"{'sandbox ms':>10} {'driver ms':>9}"
        )
        failed = False
        try:
            _wait_until_listening(sandbox_port)
            for trips in trips_each:
                served = dict(env, TWITCH_OPENID_CONNECT=str(trips == 1))
                server = _start(
                    [sys.executable, "-m", "uvicorn", app, *app_dir]
                    + ["--port", str(site_port), "--workers", str(args.workers)]
                    + ["--log-level", "warning", "--no-access-log"],
                    served,
                )
                try:
                    _wait_until_listening(site_port)
                    setting = Setting(args.workers, database, trips)
                    failed = (
                        _grid(
                            args,
                            users,
                            latencies,
                            setting,
                            site,
                            sandbox_base,
                            server,
                            sandbox,
                        )
                        or failed
                    )
                finally:
                    server.terminate()
                    server.wait(timeout=30)
        finally:
            sandbox.terminate()
            sandbox.wait(timeout=30)
    if args.smoke and failed:
        sys.exit("the smoke run had errors")


@dataclass(frozen=True)
class Setting:
    workers: int
    database: str
    trips: int  # round trips to Twitch before the callback answers


def _grid(
    args: argparse.Namespace,
    users: list[int],
    latencies: list[float],
    setting: Setting,
    site: str,
    sandbox_base: str,
    server: subprocess.Popen,
    sandbox: subprocess.Popen,
) -> bool:
    """Every K and L against one served site; whether any run failed."""
    failed = False
    for k in users:
        for latency in latencies:
            rows = []
            for _ in range(args.repeat):
                flows, wall, result, cpu, others = asyncio.run(
                    _measure(
                        site=site,
                        sandbox=sandbox_base,
                        server=server,
                        sandbox_process=sandbox,
                        users=k,
                        latency=latency,
                        seconds=args.seconds,
                        flows_each=3 if args.smoke else None,
                    )
                )
                failed = failed or bool(result.errors) or not flows
                rows.append(_row(flows, wall, result, cpu, others))
                _print_row(k, latency, setting, rows[-1])
            if len(rows) > 1:
                _print_row(k, latency, setting, _median(rows), "  median")
    return failed


async def _measure(
    *,
    site: str,
    sandbox: str,
    server: subprocess.Popen,
    sandbox_process: subprocess.Popen,
    users: int,
    latency: float,
    seconds: float,
    flows_each: int | None,
) -> tuple[int, float, Result, float, tuple[float, float]]:
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as sandbox_session:
        browsers = [await _signed_in(site, f"bench{n}") for n in range(users)]
        try:
            await _control(sandbox, "latency", {"seconds": latency})
            # One flow each first: connections open, first-use costs paid.
            warmup = Result()
            await asyncio.gather(
                *(_flow(b, sandbox_session, n, warmup) for n, b in enumerate(browsers))
            )
            result = Result()
            cpu_before = _cpu_seconds(server.pid)
            # The sandbox's and this driver's CPU: what the site's neighbours on
            # the same cores take (at L = 0 they bound the flows a second).
            others_before = _cpu_seconds(sandbox_process.pid), time.process_time()
            started = time.perf_counter()
            deadline = started + seconds

            async def person(n: int, browser: Browser) -> None:
                done = 0
                while (
                    done < flows_each if flows_each else time.perf_counter() < deadline
                ):
                    await _flow(browser, sandbox_session, n, result)
                    done += 1

            await asyncio.gather(*(person(n, b) for n, b in enumerate(browsers)))
            wall = time.perf_counter() - started
            cpu = _cpu_seconds(server.pid) - cpu_before
            others = (
                _cpu_seconds(sandbox_process.pid) - others_before[0],
                time.process_time() - others_before[1],
            )
        finally:
            for browser in browsers:
                await browser.session.close()
            await _control(sandbox, "latency", {"seconds": 0})
    flows = len(result.callback_seconds) + result.errors
    return flows, wall, result, cpu, others


@dataclass
class Browser:
    session: aiohttp.ClientSession
    site: str
    login: str
    csrf: str


async def _signed_in(site: str, username: str) -> Browser:
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=4))
    async with session.get(f"{site}/accounts/login/") as page:
        csrf = CSRF.search(await page.text()).group(1)
    async with session.post(
        f"{site}/accounts/login/",
        data={"csrfmiddlewaretoken": csrf, "username": username, "password": PASSWORD},
        allow_redirects=False,
    ) as answer:
        assert answer.status == 302, f"{username} could not sign in"
    async with session.get(f"{site}/") as home:
        csrf = CSRF.search(await home.text()).group(1)
    return Browser(session=session, site=site, login=username, csrf=csrf)


async def _flow(
    browser: Browser, sandbox: aiohttp.ClientSession, n: int, result: Result
) -> None:
    try:
        async with browser.session.post(
            f"{browser.site}/twitch/connect/",
            data={"csrfmiddlewaretoken": browser.csrf},
            allow_redirects=False,
        ) as answer:
            authorize = answer.headers["Location"]
        # Approving on the consent page: its form posts these fields back.
        params = dict(parse_qsl(urlsplit(authorize).query))
        async with sandbox.post(
            authorize.split("?")[0],
            data={**params, "login": f"streamer{n}", "action": "authorize"},
            allow_redirects=False,
        ) as approved:
            back = approved.headers["Location"]
        started = time.perf_counter()
        async with browser.session.get(back, allow_redirects=False) as landed:
            await landed.read()
            elapsed = time.perf_counter() - started
            if landed.status != 302:
                result.errors += 1
                return
        result.callback_seconds.append(elapsed)
        # A browser would now show "Connected as ..." on the landing page, which
        # uses the message up; that page is not part of the flow, so its cookie is
        # dropped here instead of piling up one message per flow.
        browser.session.cookie_jar.clear(lambda cookie: cookie.key == "messages")
    except (TimeoutError, aiohttp.ClientError, KeyError):
        result.errors += 1


@dataclass
class Row:
    flows: int
    flows_per_second: float
    p50: float
    p95: float
    p99: float
    errors: int
    cpu_per_flow: float
    sandbox_cpu_per_flow: float
    driver_cpu_per_flow: float


def _row(
    flows: int, wall: float, result: Result, cpu: float, others: tuple[float, float]
) -> Row:
    times = sorted(result.callback_seconds) or [0.0]
    quantiles = statistics.quantiles(times, n=100) if len(times) > 1 else times * 99
    return Row(
        flows=flows,
        flows_per_second=flows / wall,
        p50=quantiles[49],
        p95=quantiles[94],
        p99=quantiles[98],
        errors=result.errors,
        cpu_per_flow=cpu / max(flows, 1),
        sandbox_cpu_per_flow=others[0] / max(flows, 1),
        driver_cpu_per_flow=others[1] / max(flows, 1),
    )


def _median(rows: list[Row]) -> Row:
    """Each column's median over the runs (a noisy machine's fairest summary)."""
    return Row(
        **{
            name: statistics.median(getattr(row, name) for row in rows)
            for name in Row.__dataclass_fields__
        }
    )


def _print_row(
    k: int, latency: float, setting: Setting, row: Row, label: str = ""
) -> None:
    floor = setting.trips * latency
    ratio = f"{row.p99 / floor:>9.2f}" if floor else f"{'-':>9}"
    # A person waits for 1 + trips answers from Twitch a flow (the consent page,
    # then the callback's round trips), so K people make at most K / ((1 + trips) L)
    # flows a second.
    waits = 1 + setting.trips
    share = (
        f"{row.flows_per_second * waits * latency / k:>6.0%}"
        if latency
        else f"{'-':>6}"
    )
    print(
        f"{k:>3} {latency * 1000:>5.0f} {setting.workers:>2} {setting.database:>10} "
        f"{setting.trips:>5} {row.flows:>6.0f} "
        f"{row.flows_per_second:>7.1f} {share} {row.p50 * 1000:>7.0f} "
        f"{row.p95 * 1000:>7.0f} "
        f"{row.p99 * 1000:>7.0f} {ratio} {row.errors:>6.0f} "
        f"{row.cpu_per_flow * 1000:>11.1f} {row.sandbox_cpu_per_flow * 1000:>10.1f} "
        f"{row.driver_cpu_per_flow * 1000:>9.1f}{label}",
        flush=True,
    )


def _cpu_seconds(master: int) -> float:
    """User and system CPU of uvicorn's master and its worker processes."""
    total = 0.0
    for pid in [master, *_children(master)]:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue
        total += (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime
    return total


def _children(pid: int) -> list[int]:
    children = []
    for path in Path(f"/proc/{pid}/task").glob("*/children"):
        children += [int(c) for c in path.read_text().split()]
    return children


def _environment(sandbox: str, site: str, scratch: Path) -> dict[str, str]:
    return dict(
        os.environ,
        DJANGO_SETTINGS_MODULE="twitchauth_site.settings",
        SECRET_KEY="bench",
        DEBUG="False",
        SECURE_SSL_REDIRECT="False",
        SESSION_COOKIE_SECURE="False",
        CSRF_COOKIE_SECURE="False",
        ALLOWED_HOSTS="localhost",
        TOKEN_ENCRYPTION_KEYS=KEY,
        TOKEN_SPOOL_DIR=str(scratch / "spool"),
        STATIC_ROOT=str(scratch / "static"),
        DATABASE_URL=os.environ.get(
            "DATABASE_URL", f"sqlite:///{scratch / 'bench.sqlite3'}"
        ),
        TWITCH_CLIENT_ID="sandbox-client-id",
        TWITCH_CLIENT_SECRET="sandbox-client-secret",
        TWITCH_REDIRECT_URI=f"{site}/twitch/callback/",
        TWITCH_AUTH_BASE_URL=sandbox + "oauth2/",
        TWITCH_API_BASE_URL=sandbox + "helix/",
        LOG_LEVEL="WARNING",
    )


def _prepare_database(env: dict[str, str], users: int) -> None:
    """Migrate, collect static files, and K users with a known password (their
    connections start empty)."""
    script = f"""
from django.contrib.auth.hashers import make_password
from django.contrib.auth.models import User
from accounts.models import TwitchToken
from axes.models import AccessAttempt
TwitchToken.objects.all().delete()
AccessAttempt.objects.all().delete()
User.objects.filter(username__startswith="bench").delete()
password = make_password({PASSWORD!r})
User.objects.bulk_create(
    [User(username=f"bench{{n}}", password=password) for n in range({users})]
)
"""
    for command in (
        ["migrate", "--verbosity", "0"],
        ["collectstatic", "--noinput", "--verbosity", "0"],  # as a deploy does
        ["shell", "-c", script],
    ):
        subprocess.run(
            [sys.executable, "manage.py", *command], cwd=ROOT, env=env, check=True
        )


def _start(command: list[str], env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL)


async def _control(base: str, path: str, body: dict) -> dict:
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{base}_sandbox/{path}", json=body) as answer,
    ):
        return await answer.json()


def _wait_until_listening(port: int) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise SystemExit(f"nothing listens on port {port}")


if __name__ == "__main__":
    main()
