"""The aiohttp application: routes, and the middleware that applies latency,
faults and Twitch's rate limits and records every request."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from aiohttp import web

from . import control, device, eventsub, helix, oauth
from .faults import HANG_SECONDS
from .keys import DELIVERING, EVENTSUB, FAULTS, LEDGER, LIMITS, LOG, SLEEPERS
from .ledger import Ledger
from .limits import AUTH_ENDPOINTS, HELIX_ENDPOINTS, Spent, too_many_requests
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
    app[LIMITS] = sandbox.limits
    app[device.DEVICES] = sandbox.devices
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
    # The Device Code Grant: its endpoint, and the page a person opens (on
    # www.twitch.tv at Twitch); the grant itself is polled at /oauth2/token.
    router.add_post("/oauth2/device", device.device, name="device")
    router.add_get(
        device.ACTIVATE_PATH, device.activate_page, name="activate", allow_head=False
    )
    router.add_post(device.ACTIVATE_PATH, device.activate_submit, name="activate_post")
    router.add_get("/oauth2/keys", oauth.keys, name="keys", allow_head=False)
    router.add_get(
        "/oauth2/.well-known/openid-configuration",
        oauth.openid_configuration,
        name="openid_configuration",
        allow_head=False,
    )
    router.add_get(
        "/oauth2/userinfo", oauth.userinfo, name="userinfo", allow_head=False
    )
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
            response = await _limited(endpoint, request, form, handler)
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


async def _limited(
    endpoint: str, request: web.Request, form: dict[str, str], handler: Handler
) -> web.StreamResponse:
    """The handler's answer, unless the request's rate-limit bucket is empty:
    then 429, and the handler never runs (a refresh does not rotate). Faults
    stand in for Twitch's whole answer, so they spend nothing."""
    spent = _charge(endpoint, request, form)
    if spent is None:
        return await handler(request)
    if not spent.allowed:
        return too_many_requests(endpoint, spent)
    response = await handler(request)
    if endpoint in HELIX_ENDPOINTS:
        response.headers.update(spent.headers())
    return response


def _charge(endpoint: str, request: web.Request, form: dict[str, str]) -> Spent | None:
    limits, ledger = request.app[LIMITS], request.app[LEDGER]
    if endpoint in HELIX_ENDPOINTS:
        key = _helix_bucket(request, ledger)
        return None if key is None else limits.helix.spend(key)
    if endpoint in AUTH_ENDPOINTS:
        return limits.auth.spend(_auth_bucket(endpoint, request, form, ledger))
    return None


def _helix_bucket(request: web.Request, ledger: Ledger) -> tuple[str, ...] | None:
    """An application's app access tokens share its bucket (a new app token does
    not bring a full one: the stricter reading of Twitch's guide); a user's tokens
    share the one of their client and user. None for the answers no bucket pays
    for (401s)."""
    token = oauth.bearer_token(request, schemes=("bearer",))
    info = ledger.token_info(token)
    if token is None or info is None:
        return None
    if request.headers.get("Client-Id") != info.client_id:
        return None
    if info.user is None:
        return ("app", info.client_id)
    return ("user", info.client_id, info.user.id)


def _auth_bucket(
    endpoint: str, request: web.Request, form: dict[str, str], ledger: Ledger
) -> str:
    """The client's bucket: the ``client_id`` sent (the form wins, as in the
    endpoints), or for validate the token's client; "" when neither is known."""
    if endpoint == "validate":
        token = oauth.bearer_token(request, schemes=("oauth", "bearer"))
        return ledger.client_of(token) or ""
    return form.get("client_id") or request.query.get("client_id") or ""


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
