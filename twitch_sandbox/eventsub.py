"""Helix ``/eventsub/subscriptions``: create, list and delete the app's
webhook subscriptions (the subscriptions themselves live in webhooks.py, their
delivery in eventsub_delivery.py).

All three want an app access token, as Twitch does for webhooks; the sandbox
answers a user token with 401 too, so a site that sends the wrong one finds out.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Coroutine

from aiohttp import web

from .eventsub_delivery import verify
from .keys import DELIVERING, EVENTSUB, LEDGER
from .ledger import Ledger, Rejected
from .oauth import bearer_token
from .responses import helix_error, json_response
from .webhooks import STATUSES, Subscriptions

# Helix lets a listing use one of these at most.
FILTERS = ("status", "type", "user_id", "subscription_id")


async def create(request: web.Request) -> web.Response:
    ledger, subscriptions = request.app[LEDGER], request.app[EVENTSUB]
    problem = _app_token_problem(request, ledger)
    if problem is not None:
        return problem
    if request.content_type != "application/json":
        return helix_error(400, "Content-Type must be application/json")
    try:
        body = json.loads(await request.read())
    except ValueError:
        return helix_error(400, "The request body is not valid JSON")
    try:
        subscription = subscriptions.create(
            body,
            client_id=ledger.client_id,
            authorizations=lambda user_id: authorized_scopes(ledger, user_id),
        )
    except Rejected as rejected:
        return json_response(rejected.body, status=rejected.status)
    # The challenge goes out while this answer does, as on Twitch.
    _in_background(request.app, verify(subscriptions, subscription))
    return json_response(
        _listing(subscriptions, [subscriptions.json(subscription)]), status=202
    )


async def list_(request: web.Request) -> web.Response:
    ledger, subscriptions = request.app[LEDGER], request.app[EVENTSUB]
    problem = _app_token_problem(request, ledger)
    if problem is not None:
        return problem
    filters = {name: request.query[name] for name in FILTERS if name in request.query}
    if len(filters) > 1:
        return helix_error(
            400, "status, type, user_id and subscription_id are mutually exclusive"
        )
    if "status" in filters and filters["status"] not in STATUSES:
        return helix_error(400, "invalid status")
    try:
        data, cursor = subscriptions.page(after=request.query.get("after"), **filters)
    except KeyError:
        return helix_error(400, "invalid cursor")
    pagination = {"cursor": cursor} if cursor else {}
    return json_response({**_listing(subscriptions, data), "pagination": pagination})


async def delete(request: web.Request) -> web.Response:
    ledger, subscriptions = request.app[LEDGER], request.app[EVENTSUB]
    problem = _app_token_problem(request, ledger)
    if problem is not None:
        return problem
    subscription_id = request.query.get("id")
    if not subscription_id:
        return helix_error(400, 'Missing required parameter "id"')
    if not subscriptions.delete(subscription_id):
        return helix_error(404, "subscription not found")
    return web.Response(status=204)


def _app_token_problem(request: web.Request, ledger: Ledger) -> web.Response | None:
    if not request.headers.get("Authorization"):
        return helix_error(401, "OAuth token is missing")
    info = ledger.token_info(bearer_token(request, schemes=("bearer",)))
    if info is None:
        return helix_error(401, "Invalid OAuth token")
    if request.headers.get("Client-Id") != info.client_id:
        return helix_error(401, "Client ID and OAuth token do not match")
    if info.user is not None:
        return helix_error(401, "An app access token is required")
    return None


def authorized_scopes(ledger: Ledger, user_id: str) -> frozenset[str] | None:
    """The scopes a user has granted this app over their live grants; None when
    they have not authorized it at all."""
    user = ledger.user_by_id(user_id)
    if user is None:
        return None
    grants = [g for g in ledger.grants(user.login) if g.client_id == ledger.client_id]
    if not grants:
        return None
    return frozenset(scope for grant in grants for scope in grant.scopes)


def _listing(
    subscriptions: Subscriptions, data: list[dict[str, object]]
) -> dict[str, object]:
    return {"data": data, **subscriptions.totals()}


def _in_background(
    app: web.Application, coroutine: Coroutine[object, object, None]
) -> None:
    task = asyncio.create_task(coroutine)
    # Kept so it is not collected mid-flight, and cancelled on shutdown.
    app[DELIVERING].add(task)
    task.add_done_callback(app[DELIVERING].discard)
