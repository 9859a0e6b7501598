"""How close `manage.py refresh_tokens` comes to the physical limit.

Refreshing is I/O: N tokens, one round trip each, at most C in flight, each taking
L seconds upstream, cannot take less than N * L / C. This benchmark seeds N tokens
that the sandbox really issued, runs the command as cron would (a fresh process),
and prints the wall time, tokens/s, peak RSS and the ratio to that limit.

    python bench/refresh.py                     # N = 1000, 5000, 10000; L 50 ms; C 50
    python bench/refresh.py -n 10000 --latency 0.05 --concurrency 50
    DATABASE_URL=postgres://postgres@127.0.0.1:5432/bench python bench/refresh.py

The sandbox runs in its own process so that it does not share a CPU with the
command. Uses a throwaway SQLite file unless DATABASE_URL is set (that database is
emptied of tokens and bench users first).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
KEY = "xpJvb1cyhZc6xXcf2XbZDfuBb8d8Fh1mqqxYDXwzDWw="


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, action="append", help="tokens (repeatable)")
    parser.add_argument("--latency", type=float, default=0.05, help="seconds upstream")
    parser.add_argument("--concurrency", type=int, default=50)
    args = parser.parse_args()
    sizes = args.n or [1000, 5000, 10000]

    port = _free_port()
    # Twitch's burst limit on id.twitch.tv would set the pace, not the command.
    sandbox = subprocess.Popen(
        [sys.executable, "-m", "twitch_sandbox", "--port", str(port)]
        + ["--auth-rate-limit", "off"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
    )
    try:
        assert sandbox.stdout is not None
        sandbox.stdout.readline()  # "listening on ..."
        base = f"http://127.0.0.1:{port}/"
        with tempfile.TemporaryDirectory() as scratch:
            env = _environment(base, Path(scratch))
            os.environ.update(env)
            _django_setup()
            print(
                f"{'N':>6} {'wall s':>7} {'refresh s':>9} {'tokens/s':>8} "
                f"{'limit s':>7} {'ratio':>6} {'peak RSS MB':>11} {'CPU s':>6}"
            )
            for n in sizes:
                _control(base, "reset", {})
                _seed(base, n)
                _control(base, "latency", {"seconds": args.latency})
                wall, rss_mb, cpu, summary = _run_command(env, args.concurrency)
                refreshed = summary["refreshed"]
                assert refreshed == n, f"only {refreshed} of {n} refreshed: {summary}"
                limit = n * args.latency / args.concurrency
                print(
                    f"{n:>6} {wall:>7.2f} {summary['seconds']:>9.2f} "
                    f"{n / wall:>8.0f} {limit:>7.2f} {wall / limit:>6.2f} "
                    f"{rss_mb:>11.0f} {cpu:>6.1f}",
                    flush=True,
                )
                _control(base, "latency", {"seconds": 0})
    finally:
        sandbox.terminate()
        sandbox.wait()


def _environment(base: str, scratch: Path) -> dict[str, str]:
    return {
        "DJANGO_SETTINGS_MODULE": "twitchauth_site.settings",
        "SECRET_KEY": "bench",
        "TOKEN_ENCRYPTION_KEYS": KEY,
        "DATABASE_URL": os.environ.get(
            "DATABASE_URL", f"sqlite:///{scratch / 'bench.sqlite3'}"
        ),
        "TWITCH_CLIENT_ID": "sandbox-client-id",
        "TWITCH_CLIENT_SECRET": "sandbox-client-secret",
        "TWITCH_REDIRECT_URI": "http://localhost:8000/twitch/callback/",
        "TWITCH_AUTH_BASE_URL": base + "oauth2/",
        "TWITCH_API_BASE_URL": base + "helix/",
        "LOG_LEVEL": "WARNING",
    }


def _django_setup() -> None:
    import django
    from django.core.management import call_command

    django.setup()
    call_command("migrate", verbosity=0)


def _seed(base: str, n: int) -> None:
    """N users, each with a token pair the sandbox issued, all expiring soon."""
    from django.contrib.auth.models import User
    from django.utils import timezone

    from accounts.models import TokenEvent, TwitchToken

    TokenEvent.objects.all().delete()
    TwitchToken.objects.all().delete()
    User.objects.filter(username__startswith="bench").delete()
    minted = _control(base, "tokens", {"count": n, "login_prefix": "bench"})["tokens"]
    users = User.objects.bulk_create(
        [User(username=t["login"], password="!") for t in minted], batch_size=1000
    )
    now = timezone.now()
    TwitchToken.objects.bulk_create(
        [
            TwitchToken(
                user=user,
                twitch_user_id=t["user_id"],
                login=t["login"],
                access_token=t["access_token"],
                refresh_token=t["refresh_token"],
                scopes=t.get("scope", []),
                expires_at=now + timedelta(minutes=10),
                last_validated_at=now,
            )
            for user, t in zip(users, minted, strict=True)
        ],
        batch_size=1000,
    )


def _run_command(
    env: dict[str, str], concurrency: int
) -> tuple[float, float, float, dict]:
    started = time.perf_counter()
    command = subprocess.Popen(
        [
            sys.executable,
            "manage.py",
            "refresh_tokens",
            "--json",
            "--concurrency",
            str(concurrency),
        ],
        cwd=ROOT,
        env=dict(os.environ, **env),
        stdout=subprocess.PIPE,
    )
    assert command.stdout is not None
    output = command.stdout.read()
    _, status, usage = os.wait4(command.pid, 0)
    wall = time.perf_counter() - started
    assert status == 0, output
    cpu = usage.ru_utime + usage.ru_stime
    return wall, usage.ru_maxrss / 1024, cpu, json.loads(output)


def _control(base: str, path: str, body: dict) -> dict:
    request = urllib.request.Request(
        f"{base}_sandbox/{path}",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=120) as response:
        return json.loads(response.read() or b"{}")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


if __name__ == "__main__":
    main()
