"""What the sandbox posts to an enabled subscription's callback: signed
notifications when a user disconnects, revocations, and messages made to
test the site's own checks (replayed, forged, stale)."""

from __future__ import annotations

import hmac
import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from tests.conftest import (
    CLIENT_ID,
    CLIENT_SECRET,
    FAILED,
    REVOKE,
    RFC3339,
    SECRET,
    Received,
    Receiver,
    echo_challenge,
    signature,
    subscribe,
)
from twitch_sandbox import Sandbox, WebhookMessage


class SiteLikeChecks:
    """Answers as the site must: 403 for a bad signature or a timestamp more
    than 10 minutes off, 204 the first time a message id is seen, 200 after."""

    def __init__(self) -> None:
        self.seen: set[str] = set()

    def __call__(self, message: Received) -> tuple[int, str]:
        headers = message.headers
        expected = signature(SECRET, headers, message.body)
        if not hmac.compare_digest(
            headers["Twitch-Eventsub-Message-Signature"], expected
        ):
            return 403, ""
        sent = datetime.fromisoformat(headers["Twitch-Eventsub-Message-Timestamp"])
        if abs(datetime.now(UTC) - sent) > timedelta(minutes=10):
            return 403, ""
        if headers["Twitch-Eventsub-Message-Id"] in self.seen:
            return 200, ""
        self.seen.add(headers["Twitch-Eventsub-Message-Id"])
        return 204, ""


# Notifications and revocations ----------------------------------------------------


def test_disconnecting_a_user_notifies_each_enabled_revoke_subscription(
    sandbox: Sandbox, receiver: Receiver
) -> None:
    pair = sandbox.issue_tokens(login="alice", scopes=["chat:read"])
    receiver.answer = lambda message: (200, "no")
    subscribe(sandbox, receiver.url + "?failed", status=FAILED)
    receiver.answer = echo_challenge
    subscription = subscribe(sandbox, receiver.url)
    receiver.received.clear()

    sandbox.disconnect_user("alice")

    assert not sandbox.is_refresh_token_valid(pair["refresh_token"])
    [notification] = receiver.received  # the failed subscription gets nothing
    headers = notification.headers
    assert notification.type == "notification"
    assert headers["Twitch-Eventsub-Message-Retry"] == "0"
    assert headers["Twitch-Eventsub-Subscription-Type"] == REVOKE
    assert headers["Twitch-Eventsub-Subscription-Version"] == "1"
    assert RFC3339.fullmatch(headers["Twitch-Eventsub-Message-Timestamp"])
    assert headers["Twitch-Eventsub-Message-Signature"] == signature(
        SECRET, headers, notification.body
    )
    assert notification.json() == {
        "subscription": subscription,
        "event": {
            "client_id": CLIENT_ID,
            "user_id": sandbox.add_user("alice").id,
            "user_login": "alice",
            "user_name": "Alice",
        },
    }
    delivery = sandbox.deliveries[-1]
    assert delivery.message_type == "notification"
    assert delivery.message_id == headers["Twitch-Eventsub-Message-Id"]
    assert (delivery.subscription_id, delivery.status) == (subscription["id"], 204)


def test_a_deleted_user_is_announced_with_null_login_and_name(
    sandbox: Sandbox, receiver: Receiver
) -> None:
    user = sandbox.add_user("alice")
    subscribe(sandbox, receiver.url)

    sandbox.disconnect_user("alice", gone=True)

    assert receiver.received[-1].json()["event"] == {
        "client_id": CLIENT_ID,
        "user_id": user.id,
        "user_login": None,
        "user_name": None,
    }


def test_revoking_a_subscription_sends_a_signed_revocation(
    sandbox: Sandbox, receiver: Receiver
) -> None:
    sandbox.add_user("alice")
    subscription = subscribe(sandbox, receiver.url)

    sandbox.revoke_subscription(subscription["id"], reason="user_removed")

    revocation = receiver.received[-1]
    assert revocation.type == "revocation"
    assert revocation.headers["Twitch-Eventsub-Message-Signature"] == signature(
        SECRET, revocation.headers, revocation.body
    )
    revoked = {**subscription, "status": "user_removed"}
    assert revocation.json() == {"subscription": revoked}
    assert sandbox.subscriptions() == [revoked]
    assert sandbox.deliveries[-1].message_type == "revocation"
    sandbox.disconnect_user("alice")
    assert receiver.received[-1] is revocation  # revoked: told nothing more
    with pytest.raises(ValueError, match="not enabled"):
        sandbox.revoke_subscription(subscription["id"])


def test_revoking_needs_a_known_subscription_and_reason(
    sandbox: Sandbox, receiver: Receiver
) -> None:
    subscription = subscribe(sandbox, receiver.url)

    with pytest.raises(KeyError):
        sandbox.revoke_subscription("no-such-id")
    with pytest.raises(ValueError, match="reason"):
        sandbox.revoke_subscription(subscription["id"], reason="bored")
    assert sandbox.subscriptions() == [subscription]


# Messages made for the site's checks ----------------------------------------------


def test_notification_messages_can_be_replayed_forged_or_stale(
    sandbox: Sandbox, receiver: Receiver
) -> None:
    sandbox.add_user("alice")
    subscription = subscribe(sandbox, receiver.url)
    receiver.answer = SiteLikeChecks()
    message = sandbox.notification_message("alice")
    received_before = len(receiver.received)

    fresh = sandbox.deliver(message)
    replayed = sandbox.deliver(message)
    forged = sandbox.deliver(
        sandbox.notification_message("alice", secret="not-the-secret")
    )
    stale = sandbox.deliver(
        sandbox.notification_message(
            "alice", timestamp=datetime.now(UTC) - timedelta(minutes=11)
        )
    )
    same_id = sandbox.deliver(
        sandbox.notification_message(
            "alice", message_id=message.headers["Twitch-Eventsub-Message-Id"]
        )
    )
    tampered = sandbox.deliver(
        replace(message, body=message.body.replace(b"alice", b"mallory"))
    )

    assert (fresh, replayed, forged, stale, same_id, tampered) == (
        204,
        200,
        403,
        403,
        200,
        403,
    )
    assert json.loads(message.body)["subscription"] == subscription
    assert message.subscription_id == subscription["id"]
    assert receiver.received[received_before].body == message.body
    assert len(receiver.received) == received_before + 6
    assert [d.status for d in sandbox.deliveries[-6:]] == [204, 200, 403, 403, 200, 403]


def test_a_notification_message_carries_the_timestamp_and_id_it_was_given(
    sandbox: Sandbox, receiver: Receiver
) -> None:
    sandbox.add_user("alice")
    subscribe(sandbox, receiver.url)
    when = datetime(2026, 11, 29, 15, 0, 0, 123456, tzinfo=UTC)

    message = sandbox.notification_message(
        "alice", timestamp=when, message_id="the-id", gone=True
    )

    assert isinstance(message, WebhookMessage)
    assert message.headers["Twitch-Eventsub-Message-Timestamp"] == (
        "2026-11-29T15:00:00.123456Z"
    )
    assert message.headers["Twitch-Eventsub-Message-Id"] == "the-id"
    assert message.headers["Twitch-Eventsub-Message-Signature"] == signature(
        SECRET, message.headers, message.body
    )
    assert json.loads(message.body)["event"]["user_login"] is None
    assert receiver.received[-1].type == "webhook_callback_verification"  # unsent


def test_a_notification_message_needs_one_enabled_subscription_or_its_id(
    sandbox: Sandbox, receiver: Receiver
) -> None:
    sandbox.add_user("alice")
    with pytest.raises(ValueError, match="0 enabled"):
        sandbox.notification_message("alice")
    first = subscribe(sandbox, receiver.url)
    sandbox.revoke_subscription(first["id"])

    with pytest.raises(ValueError, match="0 enabled"):
        sandbox.notification_message("alice")
    with pytest.raises(KeyError):
        sandbox.notification_message("nobody", subscription_id=first["id"])
    with pytest.raises(ValueError, match="timezone"):
        sandbox.notification_message(
            "alice", subscription_id=first["id"], timestamp=datetime(2026, 1, 1)
        )
    named = sandbox.notification_message("alice", subscription_id=first["id"])
    assert named.subscription_id == first["id"]


# Serving --------------------------------------------------------------------------


def test_notifying_needs_the_sandbox_running(receiver: Receiver) -> None:
    other = Sandbox(
        client_id=CLIENT_ID, client_secret=CLIENT_SECRET, allow_insecure_callbacks=True
    ).start()
    try:
        other.add_user("alice")
        subscribe(other, receiver.url)
    finally:
        other.stop()

    with pytest.raises(RuntimeError, match="not running"):
        other.disconnect_user("alice")
