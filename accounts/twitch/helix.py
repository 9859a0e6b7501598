"""Helix EventSub subscriptions, with the app access token, on the shared session."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.views.decorators.debug import sensitive_variables

from accounts.twitch.errors import InvalidCredential, TwitchUnavailable
from accounts.twitch.http import raise_for_status, send


@dataclass(frozen=True)
class SubscriptionListing:
    """Every page of Get EventSub Subscriptions, and the app's totals."""

    data: list[dict[str, Any]]
    total: int
    total_cost: int
    max_total_cost: int


@sensitive_variables()
async def eventsub_listing(
    *, app_token: str, user_id: str | None = None
) -> SubscriptionListing:
    """Every page (Twitch pages by 100, cursor in `pagination.cursor`); only the
    subscriptions whose condition names `user_id` when given."""
    data: list[dict[str, Any]] = []
    body: dict[str, Any] = {}
    cursor = ""
    for _ in range(1000):
        params = {"user_id": user_id} if user_id else {}
        if cursor:
            params["after"] = cursor
        body = await _helix(
            "GET", "eventsub/subscriptions", app_token=app_token, params=params or None
        )
        data.extend(_subscriptions(body))
        cursor = str((body.get("pagination") or {}).get("cursor") or "")
        if not cursor:
            break

    def number(name: str) -> int:
        value = body.get(name)
        return value if isinstance(value, int) else 0

    return SubscriptionListing(
        data, number("total"), number("total_cost"), number("max_total_cost")
    )


@sensitive_variables()
async def create_eventsub_subscription(
    *,
    app_token: str,
    subscription_type: str,
    version: str,
    condition: dict[str, str],
    callback: str,
    secret: str,
) -> dict[str, Any]:
    """Ask Twitch for a webhook subscription; it then verifies the callback."""
    body = await _helix(
        "POST",
        "eventsub/subscriptions",
        app_token=app_token,
        json_body={
            "type": subscription_type,
            "version": version,
            "condition": condition,
            "transport": {"method": "webhook", "callback": callback, "secret": secret},
        },
    )
    created = _subscriptions(body)
    if not created:
        raise TwitchUnavailable("Twitch's EventSub endpoint answered no subscription.")
    return created[0]


@sensitive_variables()
async def delete_eventsub_subscription(*, app_token: str, subscription_id: str) -> None:
    await _helix(
        "DELETE",
        "eventsub/subscriptions",
        app_token=app_token,
        params={"id": subscription_id},
    )


@sensitive_variables()
async def _helix(
    method: str,
    path: str,
    *,
    app_token: str,
    params: dict[str, str] | None = None,
    json_body: dict[str, Any] | None = None,
) -> dict[str, Any]:
    answer = await send(
        method,
        settings.TWITCH_API_BASE_URL + path,
        endpoint="EventSub",
        headers={
            "Authorization": f"Bearer {app_token}",
            "Client-Id": settings.TWITCH_CLIENT_ID,
        },
        params=params,
        json_body=json_body,
    )
    if answer.status == 401:
        raise InvalidCredential("Twitch refused the app access token.", status=401)
    raise_for_status("EventSub", answer)
    if not isinstance(answer.body, dict):
        raise TwitchUnavailable("Twitch's EventSub endpoint answered nonsense.")
    return answer.body


def _subscriptions(body: dict[str, Any]) -> list[dict[str, Any]]:
    data = body.get("data") or []
    if not isinstance(data, list) or not all(isinstance(d, dict) for d in data):
        raise TwitchUnavailable("Twitch's EventSub endpoint answered nonsense.")
    return data
