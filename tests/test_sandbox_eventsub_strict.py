"""The sandbox's EventSub is as strict as Twitch: types with their conditions and
required scopes, costs, pages, redelivery with a growing retry count, a delivery
timeout, failures counted until the subscription is revoked."""

from __future__ import annotations

import threading

import pytest

from tests.conftest import (
    ENABLED,
    SECRET,
    Received,
    Receiver,
    app_token,
    create_subscription,
    helix_headers,
    http,
    list_subscriptions,
    subscribe,
)
from twitch_sandbox import Sandbox

SUBSCRIPTIONS = "helix/eventsub/subscriptions"


def create(sandbox: Sandbox, receiver: Receiver, kind: str, version: str, **condition):
    body = {
        "type": kind,
        "version": version,
        "condition": condition,
        "transport": {"method": "webhook", "callback": receiver.url, "secret": SECRET},
    }
    headers = helix_headers(app_token(sandbox))
    return http(sandbox, "POST", SUBSCRIPTIONS, json_body=body, headers=headers)


def enabled(sandbox: Sandbox, receiver: Receiver, kind: str, version: str, **cond):
    reply = create(sandbox, receiver, kind, version, **cond)
    assert reply.status == 202, reply.text
    return sandbox.wait_for_subscription_status(reply.json()["data"][0]["id"], ENABLED)


# Types, conditions, scopes, costs ---------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "version", "condition"),
    [
        ("stream.online", "1", {}),
        ("stream.online", "1", {"user_id": "1"}),
        ("stream.online", "1", {"broadcaster_user_id": "1", "user_id": "1"}),
        ("channel.update", "1", {"broadcaster_user_id": "1"}),
        ("channel.raid", "1", {}),
        ("no.such.type", "1", {"broadcaster_user_id": "1"}),
    ],
)
def test_a_condition_must_have_exactly_the_fields_of_its_type_and_version(
    sandbox: Sandbox, receiver: Receiver, kind, version, condition
) -> None:
    assert create(sandbox, receiver, kind, version, **condition).status == 400
    assert sandbox.subscriptions() == []


def test_a_type_needing_scopes_is_refused_until_the_user_grants_them(
    sandbox: Sandbox, receiver: Receiver
) -> None:
    sandbox.issue_tokens(login="alice", scopes=["chat:read"])
    alice = sandbox.add_user("alice").id

    refused = create(
        sandbox, receiver, "channel.subscribe", "1", broadcaster_user_id=alice
    )
    sandbox.issue_tokens(login="alice", scopes=["channel:read:subscriptions"])
    accepted = create(
        sandbox, receiver, "channel.subscribe", "1", broadcaster_user_id=alice
    )

    assert refused.status == 403
    assert refused.json()["message"] == "subscription missing proper authorization"
    assert accepted.status == 202
    assert accepted.json()["data"][0]["cost"] == 0


def test_chat_messages_need_the_bots_and_the_broadcasters_consent(
    sandbox: Sandbox, receiver: Receiver
) -> None:
    sandbox.issue_tokens(login="bot", scopes=["user:read:chat", "user:bot"])
    sandbox.issue_tokens(login="streamer", scopes=["chat:read"])
    bot, streamer = sandbox.add_user("bot").id, sandbox.add_user("streamer").id
    condition = {"broadcaster_user_id": streamer, "user_id": bot}

    without = create(sandbox, receiver, "channel.chat.message", "1", **condition)
    sandbox.issue_tokens(login="streamer", scopes=["channel:bot"])
    with_consent = create(sandbox, receiver, "channel.chat.message", "1", **condition)

    assert (without.status, with_consent.status) == (403, 202)


def test_costs_count_against_the_max_total_cost(
    sandbox: Sandbox, receiver: Receiver
) -> None:
    sandbox.set_eventsub_limits(max_total_cost=2)
    sandbox.issue_tokens(login="alice")
    alice = sandbox.add_user("alice").id  # has authorized the app: free
    strangers = [sandbox.add_user(f"stranger{n}").id for n in range(3)]

    free = enabled(sandbox, receiver, "stream.online", "1", broadcaster_user_id=alice)
    costly = [
        create(sandbox, receiver, "stream.online", "1", broadcaster_user_id=user)
        for user in strangers
    ]

    assert free["cost"] == 0
    assert [r.status for r in costly] == [202, 202, 429]
    assert [r.json()["data"][0]["cost"] for r in costly[:2]] == [1, 1]
    listing = list_subscriptions(sandbox).json()
    assert (listing["total"], listing["total_cost"], listing["max_total_cost"]) == (
        3,
        2,
        2,
    )


def test_the_list_comes_in_pages_with_a_cursor(
    sandbox: Sandbox, receiver: Receiver
) -> None:
    sandbox.set_eventsub_limits(page_size=2)
    users = [sandbox.add_user(f"user{n}").id for n in range(5)]
    made = [
        enabled(sandbox, receiver, "stream.online", "1", broadcaster_user_id=u)["id"]
        for u in users
    ]

    pages, after = [], None
    while True:
        reply = list_subscriptions(sandbox, **({"after": after} if after else {}))
        pages.append([s["id"] for s in reply.json()["data"]])
        after = reply.json()["pagination"].get("cursor")
        if not after:
            break

    assert pages == [made[:2], made[2:4], made[4:]]
    assert list_subscriptions(sandbox, after="made-up").status == 400


# Delivery -------------------------------------------------------------------------


def test_a_notification_not_answered_2xx_is_delivered_again_with_a_growing_retry(
    sandbox: Sandbox, receiver: Receiver
) -> None:
    user = sandbox.add_user("alice").id
    subscription = enabled(
        sandbox, receiver, "stream.online", "1", broadcaster_user_id=user
    )
    answers = iter([(500, ""), (503, ""), (204, "")])
    receiver.answer = lambda message: next(answers)
    receiver.received.clear()

    [last] = sandbox.notify("stream.online", {"broadcaster_user_id": user})

    retries = [m.headers["Twitch-Eventsub-Message-Retry"] for m in receiver.received]
    ids = {m.headers["Twitch-Eventsub-Message-Id"] for m in receiver.received}
    assert retries == ["0", "1", "2"]
    assert len(ids) == 1  # the same message, again
    assert (last.status, last.retry) == (204, 2)
    assert receiver.received[0].json()["event"]["broadcaster_user_login"] == "alice"
    assert sandbox.subscriptions()[0]["status"] == ENABLED
    assert subscription["id"] == last.subscription_id


def test_a_callback_that_answers_too_late_has_failed(
    sandbox: Sandbox, receiver: Receiver
) -> None:
    assert 1 <= sandbox.eventsub.policy.timeout <= 10  # "a few seconds"
    user = sandbox.add_user("alice").id
    enabled(sandbox, receiver, "stream.online", "1", broadcaster_user_id=user)
    sandbox.set_delivery_policy(timeout=0.2, retries=1)
    released = threading.Event()

    def late(message: Received) -> tuple[int, str]:
        released.wait(2)
        return 204, ""

    receiver.answer = late
    try:
        [last] = sandbox.notify("stream.online")
    finally:
        released.set()

    assert (last.status, last.retry) == (0, 1)


def test_too_many_failures_revoke_the_subscription_and_say_so(
    sandbox: Sandbox, receiver: Receiver
) -> None:
    sandbox.set_delivery_policy(retries=2, failure_limit=5)
    user = sandbox.add_user("alice").id
    subscription = enabled(
        sandbox, receiver, "stream.online", "1", broadcaster_user_id=user
    )
    receiver.answer = lambda message: (
        (204, "") if message.type == "revocation" else (500, "")
    )
    receiver.received.clear()

    sandbox.notify("stream.online")  # 3 failed attempts
    sandbox.notify("stream.online")  # 2 more: 5 in a row

    [revoked] = sandbox.subscriptions()
    assert revoked["status"] == "notification_failures_exceeded"
    assert [m.type for m in receiver.received] == ["notification"] * 5 + ["revocation"]
    assert receiver.received[-1].json()["subscription"]["status"] == (
        "notification_failures_exceeded"
    )
    assert sandbox.notify("stream.online") == []  # nothing more is sent
    assert subscription["id"] == revoked["id"]


def test_a_success_resets_the_count_of_failures(
    sandbox: Sandbox, receiver: Receiver
) -> None:
    sandbox.set_delivery_policy(retries=0, failure_limit=2)
    user = sandbox.add_user("alice").id
    enabled(sandbox, receiver, "stream.online", "1", broadcaster_user_id=user)
    answers = iter([(500, ""), (204, ""), (500, ""), (204, "")])
    receiver.answer = lambda message: next(answers)

    for _ in range(4):
        sandbox.notify("stream.online")

    assert sandbox.subscriptions()[0]["status"] == ENABLED


def test_a_user_who_disconnects_ends_the_subscriptions_they_authorized(
    sandbox: Sandbox, receiver: Receiver
) -> None:
    sandbox.issue_tokens(login="alice", scopes=["channel:read:subscriptions"])
    user = sandbox.add_user("alice").id
    paid = enabled(
        sandbox, receiver, "channel.subscribe", "1", broadcaster_user_id=user
    )
    public = enabled(sandbox, receiver, "stream.online", "1", broadcaster_user_id=user)

    sandbox.disconnect_user("alice")

    statuses = {s["id"]: s["status"] for s in sandbox.subscriptions()}
    assert statuses == {paid["id"]: "authorization_revoked", public["id"]: ENABLED}
    assert receiver.received[-1].type == "revocation"


def test_notify_and_the_delivery_policy_over_http(
    sandbox: Sandbox, receiver: Receiver
) -> None:
    user = sandbox.add_user("alice").id
    enabled(sandbox, receiver, "stream.online", "1", broadcaster_user_id=user)

    policy = http(
        sandbox, "POST", "_sandbox/eventsub/delivery-policy", json_body={"retries": 0}
    )
    notified = http(
        sandbox,
        "POST",
        "_sandbox/eventsub/notify",
        json_body={"type": "stream.online", "event": {"type": "live"}},
    )

    assert policy.status == 200
    [delivery] = notified.json()
    assert (delivery["status"], delivery["message_type"]) == (204, "notification")
    assert receiver.received[-1].json()["event"] == {"type": "live"}


def test_reset_forgets_the_policy_and_limits(
    sandbox: Sandbox, receiver: Receiver
) -> None:
    sandbox.set_delivery_policy(timeout=1, retries=0)
    sandbox.set_eventsub_limits(max_total_cost=1, page_size=1)

    sandbox.reset()

    assert sandbox.eventsub.policy.retries == 3
    assert (sandbox.eventsub.max_total_cost, sandbox.eventsub.page_size) == (10000, 100)
    assert subscribe(sandbox, receiver.url)["status"] == ENABLED
    assert create_subscription(sandbox, receiver.url).status == 409


def test_a_deleted_user_ends_every_subscription_naming_them(
    sandbox: Sandbox, receiver: Receiver
) -> None:
    sandbox.issue_tokens(login="alice", scopes=["channel:read:subscriptions"])
    alice = sandbox.add_user("alice").id
    bob = sandbox.add_user("bob").id
    paid = enabled(
        sandbox, receiver, "channel.subscribe", "1", broadcaster_user_id=alice
    )
    public = enabled(sandbox, receiver, "stream.online", "1", broadcaster_user_id=alice)
    raid = enabled(sandbox, receiver, "channel.raid", "1", to_broadcaster_user_id=bob)

    sandbox.disconnect_user("alice", gone=True)

    statuses = {s["id"]: s["status"] for s in sandbox.subscriptions()}
    assert statuses == {
        paid["id"]: "user_removed",
        public["id"]: "user_removed",
        raid["id"]: ENABLED,
    }
    revocations = [m.json() for m in receiver.received if m.type == "revocation"]
    assert sorted(r["subscription"]["id"] for r in revocations) == sorted(
        [paid["id"], public["id"]]
    )


@pytest.mark.parametrize(
    "reason", ["moderator_removed", "chat_user_banned", "beta_maintenance"]
)
def test_twitch_s_other_revocation_reasons_can_be_sent(
    sandbox: Sandbox, receiver: Receiver, reason: str
) -> None:
    user = sandbox.add_user("alice").id
    public = enabled(sandbox, receiver, "stream.online", "1", broadcaster_user_id=user)

    sandbox.revoke_subscription(public["id"], reason)

    assert sandbox.subscriptions()[0]["status"] == reason
    assert receiver.received[-1].json()["subscription"]["status"] == reason
