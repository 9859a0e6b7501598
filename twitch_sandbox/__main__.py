"""Run the sandbox in the foreground: ``python -m twitch_sandbox --help``."""

from __future__ import annotations

import argparse
import signal
import threading
from collections.abc import Sequence

from .limits import (
    DEFAULT_AUTH_BURST,
    DEFAULT_AUTH_PER_SECONDS,
    DEFAULT_HELIX_PER_SECONDS,
    DEFAULT_HELIX_POINTS,
    Limit,
)
from .sandbox import (
    DEFAULT_ACCESS_TOKEN_LIFETIME,
    DEFAULT_CLIENT_ID,
    DEFAULT_CLIENT_SECRET,
    Sandbox,
)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m twitch_sandbox",
        description="A local stand-in for Twitch's OAuth server, Helix /users and "
        "EventSub webhooks for user.authorization.revoke. "
        "Control it over HTTP under /_sandbox/. Ctrl-C stops it.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument(
        "--port", type=int, default=8765, help="port to listen on (0: any free port)"
    )
    parser.add_argument("--client-id", default=DEFAULT_CLIENT_ID, help="the app's id")
    parser.add_argument(
        "--client-secret", default=DEFAULT_CLIENT_SECRET, help="the app's secret"
    )
    parser.add_argument(
        "--redirect-uri",
        action="append",
        default=[],
        metavar="URI",
        help="a registered redirect URI (repeat for more; the first is the one "
        "Twitch falls back to on a mismatch)",
    )
    parser.add_argument(
        "--latency",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="delay added before every answer",
    )
    parser.add_argument(
        "--access-token-lifetime",
        type=int,
        default=DEFAULT_ACCESS_TOKEN_LIFETIME,
        metavar="S",
        help="seconds a new access token lives",
    )
    parser.add_argument(
        "--allow-insecure-callbacks",
        action="store_true",
        help="accept http:// EventSub callbacks on any port (Twitch wants https "
        "on 443), for a site running locally",
    )
    parser.add_argument(
        "--helix-rate-limit",
        type=_limit,
        default=(DEFAULT_HELIX_POINTS, DEFAULT_HELIX_PER_SECONDS),
        metavar="POINTS/SECONDS",
        help="each Helix token bucket's size and the seconds it takes to refill "
        f"(default: Twitch's {DEFAULT_HELIX_POINTS}/{DEFAULT_HELIX_PER_SECONDS:g})",
    )
    parser.add_argument(
        "--auth-rate-limit",
        type=_limit_or_off,
        default=(DEFAULT_AUTH_BURST, DEFAULT_AUTH_PER_SECONDS),
        metavar="BURST/SECONDS",
        help="requests per client to token, validate and revoke before a 429, "
        "and the seconds their bucket takes to refill (default: "
        f"{DEFAULT_AUTH_BURST}/{DEFAULT_AUTH_PER_SECONDS:g}); 'off' for a "
        "benchmark that measures the site rather than Twitch",
    )
    args = parser.parse_args(argv)

    sandbox = Sandbox(
        client_id=args.client_id,
        client_secret=args.client_secret,
        redirect_uris=args.redirect_uri,
        access_token_lifetime=args.access_token_lifetime,
        allow_insecure_callbacks=args.allow_insecure_callbacks,
        helix_rate_limit=args.helix_rate_limit,
        auth_rate_limit=args.auth_rate_limit,
    )
    if args.latency:
        sandbox.set_latency(args.latency)
    try:
        sandbox.start(host=args.host, port=args.port)
    except OSError as exc:
        parser.exit(1, f"cannot listen on {args.host}:{args.port}: {exc}\n")

    # A benchmark stops its subprocess with SIGTERM: stop as cleanly as Ctrl-C.
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda signum, frame: stop.set())
    print(f"Twitch sandbox listening on {sandbox.base_url}", flush=True)
    try:
        stop.wait()
    except KeyboardInterrupt:
        pass
    finally:
        sandbox.stop()


def _limit(text: str) -> tuple[int, float]:
    points, slash, seconds = text.partition("/")
    try:
        limit = Limit.checked(int(points), float(seconds) if slash else 0.0)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not POINTS/SECONDS, e.g. 800/60"
        ) from None
    return limit.points, limit.per_seconds


def _limit_or_off(text: str) -> tuple[int, float] | None:
    return None if text == "off" else _limit(text)


if __name__ == "__main__":
    main()
