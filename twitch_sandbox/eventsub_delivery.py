"""Posting EventSub messages to callbacks, as strictly as Twitch does (on the
sandbox's event loop).

- A callback has ``policy.timeout`` seconds to answer; no answer, a refused
  connection or a status other than 2xx is a failed attempt.
- A challenge enables the subscription only if it comes back exactly, with
  status 2xx and ``Content-Type: text/plain``; it is not retried.
- A notification not answered 2xx in time is delivered again, ``retries``
  times at most, each later than the one before, with the same message id and
  ``Twitch-Eventsub-Message-Retry`` counting up.
- Failed attempts in a row are counted per subscription; at
  ``failure_limit`` Twitch revokes it (``notification_failures_exceeded``),
  posts the revocation, and delivers nothing more to it.
"""

from __future__ import annotations

import asyncio
import secrets
import time

import aiohttp

from .webhooks import (
    ENABLED,
    FAILED,
    Delivery,
    Subscription,
    Subscriptions,
    WebhookMessage,
    resign,
)


async def verify(subscriptions: Subscriptions, subscription: Subscription) -> None:
    """Send the challenge; enabled only if the callback echoes it exactly, as
    plain text."""
    challenge = secrets.token_urlsafe(24)
    message = subscriptions.verification(subscription, challenge)
    delivery = await post(subscriptions, subscription, message)
    media_type = delivery.content_type.split(";")[0].strip().lower()
    echoed = delivery.ok and delivery.answer == challenge and media_type == "text/plain"
    subscriptions.set_status(subscription, ENABLED if echoed else FAILED)


async def deliver(
    subscriptions: Subscriptions, subscription: Subscription, message: WebhookMessage
) -> Delivery:
    """Deliver a notification until the callback takes it, the retries run
    out or Twitch gives up on the subscription; the last attempt."""
    policy = subscriptions.policy
    attempt = 0
    while True:
        if attempt:
            message = resign(message, subscription.secret, attempt)
        delivery = await post(subscriptions, subscription, message)
        if await _count(subscriptions, subscription, delivery):
            return delivery  # revoked: nothing more is sent
        if delivery.ok or attempt >= policy.retries:
            return delivery
        if subscriptions.status_of(subscription) != ENABLED:
            return delivery  # deleted or revoked meanwhile
        await asyncio.sleep(policy.retry_delay * 2**attempt)
        attempt += 1


async def deliver_once(
    subscriptions: Subscriptions, subscription: Subscription, message: WebhookMessage
) -> Delivery:
    """One attempt (a test's own message, sent as it is), counted like any."""
    delivery = await post(subscriptions, subscription, message)
    await _count(subscriptions, subscription, delivery)
    return delivery


async def _count(
    subscriptions: Subscriptions, subscription: Subscription, delivery: Delivery
) -> bool:
    if not subscriptions.count_attempt(subscription, ok=delivery.ok):
        return False
    # Twitch tells the callback why, once; whether it answers changes nothing.
    await post(subscriptions, subscription, subscriptions.revocation(subscription))
    return True


async def post(
    subscriptions: Subscriptions,
    subscription: Subscription,
    message: WebhookMessage,
) -> Delivery:
    """POST the message to the subscription's callback and record the answer."""
    status, answer, content_type = 0, "", ""
    timeout = aiohttp.ClientTimeout(total=subscriptions.policy.timeout)
    started = time.monotonic()
    try:
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.post(
                subscription.callback,
                data=message.body,
                headers=message.headers,
                allow_redirects=False,
            ) as response,
        ):
            answer = (await response.read()).decode("utf-8", "replace")
            status = response.status
            content_type = response.headers.get("Content-Type", "")
    except (aiohttp.ClientError, TimeoutError):
        status, answer = 0, ""  # refused, reset or too slow: no answer
    headers = message.headers
    delivery = Delivery(
        message_id=headers.get("Twitch-Eventsub-Message-Id", ""),
        message_type=headers.get("Twitch-Eventsub-Message-Type", ""),
        subscription_id=subscription.id,
        status=status,
        body=message.body.decode("utf-8", "replace"),
        answer=answer,
        retry=int(headers.get("Twitch-Eventsub-Message-Retry", "0") or 0),
        elapsed=time.monotonic() - started,
        content_type=content_type,
    )
    subscriptions.record(subscription, delivery)
    return delivery
