"""``/_sandbox/``: the Python API over HTTP, for a sandbox in another process
(a benchmark runs it as a subprocess). These calls are never recorded and never
delayed or failed by the faults they set."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from typing import Any

from aiohttp import web

from .faults import Fault, alteration
from .keys import FAULTS, LOG, STATE
from .responses import json_response

# Seeding more than this in one call is a mistake, not a benchmark.
MAX_SEEDED_TOKENS = 100_000

Handler = Callable[[web.Request], Awaitable[web.Response]]

OK = {"ok": True}


async def reset(request: web.Request) -> web.Response:
    request.app[STATE].reset()
    request.app[FAULTS].reset()
    request.app[LOG].reset()
    return json_response(OK)


async def disconnect(request: web.Request) -> web.Response:
    request.app[STATE].disconnect_user(request.match_info["login"])
    return json_response(OK)


async def live_tokens(request: web.Request) -> web.Response:
    tokens = request.app[STATE].live_tokens(request.match_info["login"])
    return json_response(asdict(tokens))


async def expire(request: web.Request) -> web.Response:
    options = await _options(request)
    request.app[STATE].expire_access_tokens(options.get("login"))
    return json_response(OK)


async def latency(request: web.Request) -> web.Response:
    options = await _options(request)
    request.app[FAULTS].set_latency(float(options["seconds"]), options.get("endpoint"))
    return json_response(OK)


async def fail(request: web.Request) -> web.Response:
    options = await _options(request)
    fault = Fault(
        "fail",
        status=int(options.get("status", 500)),
        body=options.get("body"),
        remaining=_times(options),
    )
    request.app[FAULTS].add(options["endpoint"], fault)
    return json_response(OK)


async def hang(request: web.Request) -> web.Response:
    options = await _options(request)
    fault = Fault("hang", remaining=_times(options))
    request.app[FAULTS].add(options["endpoint"], fault)
    return json_response(OK)


async def rate_limit(request: web.Request) -> web.Response:
    options = await _options(request)
    fault = Fault(
        "rate_limit",
        status=429,
        remaining=int(options["times"]),
        reset_in=float(options.get("reset_in", 1.0)),
    )
    request.app[FAULTS].add(options["endpoint"], fault)
    return json_response(OK)


async def alter(request: web.Request) -> web.Response:
    options = await _options(request)
    fault = alteration(options.get("set"), options.get("remove") or (), _times(options))
    request.app[FAULTS].add(options["endpoint"], fault)
    return json_response(OK)


async def clear_faults(request: web.Request) -> web.Response:
    request.app[FAULTS].clear()
    return json_response(OK)


async def tokens(request: web.Request) -> web.Response:
    """Mint ``count`` users named ``<login_prefix><n>``, each with a token pair.

    The same prefix names the same users again, who then get another pair.
    """
    options = await _options(request)
    count = int(options.get("count", 1))
    if not 0 <= count <= MAX_SEEDED_TOKENS:
        raise ValueError(f"count must be between 0 and {MAX_SEEDED_TOKENS}")
    scopes = options.get("scopes", [])
    prefix = str(options.get("login_prefix", "bench"))
    state = request.app[STATE]
    minted = []
    for n in range(1, count + 1):
        login = f"{prefix}{n}"
        pair = state.issue_tokens(login=login, scopes=scopes)
        user = state.add_user(login)
        minted.append({"user_id": user.id, "login": user.login, **pair})
    return json_response({"tokens": minted})


async def stats(request: web.Request) -> web.Response:
    body = {
        "counts": request.app[LOG].counts(),
        "refreshes": request.app[STATE].refresh_count(),
    }
    return json_response(body)


def answer_bad_requests(handler: Handler) -> Handler:
    """A control call with bad arguments answers 400 with the reason."""

    async def wrapped(request: web.Request) -> web.Response:
        try:
            return await handler(request)
        except (KeyError, TypeError, ValueError) as exc:
            message = exc.args[0] if exc.args else repr(exc)
            if isinstance(exc, KeyError):
                message = f"missing or unknown: {message}"
            return json_response({"status": 400, "message": message}, status=400)

    return wrapped


async def _options(request: web.Request) -> dict[str, Any]:
    raw = await request.read()
    if not raw.strip():
        return {}
    options = json.loads(raw)
    if not isinstance(options, dict):
        raise ValueError("the body must be a JSON object")
    return options


def _times(options: dict[str, Any]) -> int | None:
    times = options.get("times")
    return None if times is None else int(times)
