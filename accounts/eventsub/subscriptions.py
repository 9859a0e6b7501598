"""The site's EventSub subscription, managed with the app access token: `subscribe`,
`unsubscribe` and `subscriptions` (the `eventsub` command)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from django.conf import settings

from accounts import twitch
from accounts.eventsub.webhook import SUBSCRIPTION_TYPE, SUBSCRIPTION_VERSION, enabled
from accounts.tokens.app_token import app_access_token
from accounts.twitch import TwitchError

# A subscription in these states exists (or is about to): subscribing again would
# be a duplicate.
LIVE_STATUSES = frozenset({"enabled", "webhook_callback_verification_pending"})

T = TypeVar("T")

__all__ = [
    "TwitchError",
    "enabled",
    "run",
    "subscribe",
    "subscriptions",
    "unsubscribe",
]


async def subscriptions() -> list[dict[str, Any]]:
    """Every EventSub subscription of this application, as Twitch lists them."""
    return await _with_app_token(
        lambda token: twitch.list_eventsub_subscriptions(app_token=token)
    )


async def subscribe(*, replace: bool = False) -> tuple[dict[str, Any], bool]:
    """The site's `user.authorization.revoke` subscription, created unless a live
    one already calls TWITCH_EVENTSUB_CALLBACK_URL; returns it and whether it was
    created. Ours with another callback (the site moved) are deleted first, and so
    is every one of ours with `replace` (a new secret: Twitch never says which
    secret a subscription signs with)."""
    for subscription in await subscriptions():
        if not _is_ours(subscription):
            continue
        if (
            not replace
            and _callback(subscription) == settings.TWITCH_EVENTSUB_CALLBACK_URL
            and subscription.get("status") in LIVE_STATUSES
        ):
            return subscription, False
        await _delete(subscription)
    created = await _with_app_token(
        lambda token: twitch.create_eventsub_subscription(
            app_token=token,
            subscription_type=SUBSCRIPTION_TYPE,
            version=SUBSCRIPTION_VERSION,
            condition={"client_id": settings.TWITCH_CLIENT_ID},
            callback=settings.TWITCH_EVENTSUB_CALLBACK_URL,
            secret=settings.TWITCH_EVENTSUB_SECRET,
        )
    )
    return created, True


async def unsubscribe() -> int:
    """Delete the site's `user.authorization.revoke` subscriptions, whatever their
    callback; how many."""
    ours = [s for s in await subscriptions() if _is_ours(s)]
    for subscription in ours:
        await _delete(subscription)
    return len(ours)


async def _delete(subscription: dict[str, Any]) -> None:
    await _with_app_token(
        lambda token: twitch.delete_eventsub_subscription(
            app_token=token, subscription_id=str(subscription["id"])
        )
    )


def _is_ours(subscription: dict[str, Any]) -> bool:
    condition = subscription.get("condition") or {}
    return (
        subscription.get("type") == SUBSCRIPTION_TYPE
        and isinstance(condition, dict)
        and condition.get("client_id") == settings.TWITCH_CLIENT_ID
    )


def _callback(subscription: dict[str, Any]) -> str:
    transport = subscription.get("transport") or {}
    return str(transport.get("callback") or "") if isinstance(transport, dict) else ""


async def _with_app_token(call: Callable[[str], Awaitable[T]]) -> T:
    """Call with the shared app token; once more with a new one if Twitch refuses."""
    token = await app_access_token()
    try:
        return await twitch.with_retries(lambda: call(token))
    except twitch.InvalidCredential:
        token = await app_access_token(refused=token)
        return await twitch.with_retries(lambda: call(token))


def run(function: Callable[[], Awaitable[T]]) -> T:
    """Any of the above from sync code (the `eventsub` command)."""
    return twitch.run_sync(function)
