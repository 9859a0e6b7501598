"""``/_sandbox/``: the Sandbox's own Python API over HTTP, for a sandbox in
another process (a benchmark runs it as a subprocess).

There is one API with two transports: each control URL calls the ``Sandbox``
method named for it in ``COMMANDS``, with the JSON body (and any ``{login}`` in
the path) as keyword arguments, and answers what it returns. Nothing outside
that list can be called. Arguments are checked by the methods themselves, the
same way for Python and HTTP; a bad one answers 400 with the reason. These
calls are never recorded and never delayed or failed by the faults they set.
"""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import Awaitable, Callable
from dataclasses import asdict, is_dataclass
from typing import TYPE_CHECKING, Any

from aiohttp import web

from .responses import json_response

if TYPE_CHECKING:
    from .sandbox import Sandbox

# (HTTP method, path under /_sandbox/, the Sandbox method it calls)
COMMANDS = (
    ("POST", "reset", "reset"),
    ("POST", "tokens", "seed_tokens"),
    ("POST", "expire", "expire_access_tokens"),
    ("POST", "users/{login}/disconnect", "disconnect_user"),
    ("GET", "users/{login}/tokens", "live_tokens"),
    ("GET", "users/{login}/grants", "grants"),
    ("POST", "devices/{user_code}/approve", "approve_device"),
    ("POST", "devices/{user_code}/deny", "deny_device"),
    ("POST", "device-timing", "set_device_timing"),
    ("POST", "latency", "set_latency"),
    ("POST", "fail", "fail"),
    ("POST", "hang", "hang"),
    ("POST", "rate-limit", "rate_limit"),
    ("POST", "helix-rate-limit", "set_helix_rate_limit"),
    ("POST", "auth-rate-limit", "set_auth_rate_limit"),
    ("POST", "alter", "alter"),
    ("POST", "clear-faults", "clear_faults"),
    ("POST", "rotate-signing-key", "rotate_signing_key"),
    ("POST", "forge-id-token", "forge_id_token"),
    ("GET", "stats", "stats"),
    ("GET", "eventsub/subscriptions", "subscriptions"),
    ("POST", "eventsub/subscriptions/{id}/wait", "wait_for_subscription_status"),
    ("POST", "eventsub/subscriptions/{id}/revoke", "revoke_subscription"),
    ("GET", "eventsub/deliveries", "deliveries"),
    ("POST", "eventsub/notify", "notify"),
    ("POST", "eventsub/delivery-policy", "set_delivery_policy"),
    ("POST", "eventsub/limits", "set_eventsub_limits"),
)

OK = {"ok": True}

Handler = Callable[[web.Request], Awaitable[web.Response]]


def routes(sandbox: Sandbox) -> list[web.RouteDef]:
    return [
        web.route(method, f"/_sandbox/{path}", _calling(_target(sandbox, name)))
        for method, path, name in COMMANDS
    ]


def _target(sandbox: Sandbox, name: str) -> Callable[..., object]:
    if isinstance(getattr(type(sandbox), name), property):
        # Read at each call, not once now; arguments are a TypeError.
        return functools.partial(getattr, sandbox, name)
    return getattr(sandbox, name)


def _calling(method: Callable[..., object]) -> Handler:
    async def handler(request: web.Request) -> web.Response:
        try:
            arguments = {**await _arguments(request), **request.match_info}
            result = await asyncio.to_thread(method, **arguments)
        except (KeyError, TypeError, ValueError, TimeoutError) as exc:
            message = exc.args[0] if exc.args else repr(exc)
            return json_response({"status": 400, "message": message}, status=400)
        return json_response(_jsonable(result))

    return handler


async def _arguments(request: web.Request) -> dict[str, Any]:
    raw = await request.read()
    if not raw.strip():
        return {}
    arguments = json.loads(raw)
    if not isinstance(arguments, dict):
        raise ValueError("the body must be a JSON object")
    return arguments


def _jsonable(result: object) -> object:
    return OK if result is None else _plain(result)


def _plain(value: object) -> object:
    if isinstance(value, list):
        return [_plain(item) for item in value]
    if is_dataclass(value) and not isinstance(value, type):
        return asdict(value)
    return value
