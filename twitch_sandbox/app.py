"""The aiohttp application: routes, and the middleware that applies latency
and faults and records every request."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from aiohttp import web

from . import control, eventsub, helix, oauth
from .faults import HANG_SECONDS
from .keys import DELIVERING, EVENTSUB, FAULTS, LEDGER, LOG, SLEEPERS
from .recording import RECORDED_ENDPOINTS, RecordedRequest

if TYPE_CHECKING:
    from .sandbox import Sandbox

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def build_app(sandbox: Sandbox) -> web.Application:
    app = web.Application(middlewares=[sandbox_middleware])
    app[LEDGER] = sandbox.ledger
    app[FAULTS] = sandbox.faults
    app[LOG] = sandbox.log
    app[EVENTSUB] = sandbox.eventsub
    app[SLEEPERS] = set()
    app[DELIVERING] = set()
    app.on_shutdown.append(_cancel_waiting)

    # Route names are the recorded endpoint names; HEAD routes would be
    # unnamed, so there are none.
    router = app.router
    router.add_get(
        "/oauth2/authorize", oauth.authorize_page, name="authorize", allow_head=False
    )
    router.add_post("/oauth2/authorize", oauth.authorize_submit, name="authorize_post")
    router.add_post("/oauth2/token", oauth.token, name="token")
    router.add_get(
        "/oauth2/validate", oauth.validate, name="validate", allow_head=False
    )
    router.add_post("/oauth2/revoke", oauth.revoke, name="revoke")
    router.add_get("/helix/users", helix.users, name="users", allow_head=False)
    # One path, three names: aiohttp names resources, so each method gets its
    # own resource, and a request falls through to the one for its method.
    subscriptions = "/helix/eventsub/subscriptions"
    router.add_post(subscriptions, eventsub.create, name="eventsub_create")
    router.add_get(
        subscriptions, eventsub.list_, name="eventsub_list", allow_head=False
    )
    router.add_delete(subscriptions, eventsub.delete, name="eventsub_delete")

    router.add_routes(control.routes(sandbox))
    return app


@web.middleware
async def sandbox_middleware(
    request: web.Request, handler: Handler
) -> web.StreamResponse:
    endpoint = request.match_info.route.name
    if endpoint not in RECORDED_ENDPOINTS:
        return await handler(request)  # control calls, 404s and 405s

    app = request.app
    app[LOG].arrive(endpoint)
    at = time.time()
    form: dict[str, str] = {}
    status = 0
    recorded = False

    def record() -> None:
        app[LOG].record(
            RecordedRequest(
                endpoint=endpoint,
                method=request.method,
                path=request.path,
                query=dict(request.query),
                form=form,
                headers=dict(request.headers),
                status=status,
                at=at,
            )
        )

    try:
        if request.method == "POST":
            post = await request.post()
            form = {name: str(value) for name, value in post.items()}
        fault_name = "authorize" if endpoint == "authorize_post" else endpoint
        delay = app[FAULTS].latency(fault_name)
        if delay:
            await _sleep(app, delay)
        fault = app[FAULTS].take(fault_name)
        if fault is not None and fault.kind == "hang":
            # Recorded now: it will never be answered, and a test looks as
            # soon as its client gives up.
            record()
            recorded = True
            await _sleep(app, HANG_SECONDS)
        if fault is None or fault.kind == "alter":
            # An alteration lets the real handler run first, so a refresh
            # still rotates and a code is still spent.
            response = await handler(request)
            if fault is not None:
                response = fault.alter(response)
        else:
            response = fault.response()
        status = response.status
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    except Exception:
        status = 500  # what aiohttp answers for a bug in a handler
        raise
    finally:
        if not recorded:
            record()


async def _sleep(app: web.Application, seconds: float) -> None:
    # Never time.sleep: one slow answer must not hold up the others.
    task = asyncio.current_task()
    assert task is not None
    app[SLEEPERS].add(task)
    try:
        await asyncio.sleep(seconds)
    finally:
        app[SLEEPERS].discard(task)


async def _cancel_waiting(app: web.Application) -> None:
    # Sleeping requests and challenges on their way: stopping waits for neither.
    for task in [*app[SLEEPERS], *app[DELIVERING]]:
        task.cancel()
