"""The sandbox's Helix EventSub subscriptions, over real HTTP: creating one
(and the signed challenge that enables or fails it), what it refuses,
listing, deleting, waiting, and twitchAPI as a client."""

from __future__ import annotations

import json
import socket
import threading
import uuid

import pytest
from twitchAPI.twitch import Twitch

from tests.conftest import (
    CLIENT_ID,
    CLIENT_SECRET,
    ENABLED,
    FAILED,
    REVOKE,
    RFC3339,
    SECRET,
    SUBSCRIPTIONS,
    Answer,
    Received,
    Receiver,
    app_token,
    create_subscription,
    echo_challenge,
    helix_headers,
    http,
    list_subscriptions,
    signature,
    subscribe,
    subscription_body,
)
from twitch_sandbox import Sandbox

# Creating and verifying -----------------------------------------------------------


def test_creating_a_subscription_answers_202_pending_without_the_secret(
    sandbox: Sandbox, receiver: Receiver
) -> None:
    reply = create_subscription(sandbox, receiver.url)

    assert reply.status == 202
    assert reply.headers["Content-Type"] == "application/json"
    body = reply.json()
    assert set(body) == {"data", "total", "total_cost", "max_total_cost"}
    assert (body["total"], body["total_cost"], body["max_total_cost"]) == (1, 0, 10000)
    [subscription] = body["data"]
    assert list(subscription) == [
        "id",
        "status",
        "type",
        "version",
        "condition",
        "created_at",
        "transport",
        "cost",
    ]
    assert uuid.UUID(subscription["id"]).version == 4
    assert subscription["status"] == "webhook_callback_verification_pending"
    assert (subscription["type"], subscription["version"]) == (REVOKE, "1")
    assert subscription["condition"] == {"client_id": CLIENT_ID}
    assert RFC3339.fullmatch(subscription["created_at"])
    assert subscription["transport"] == {"method": "webhook", "callback": receiver.url}
    assert subscription["cost"] == 0
    assert SECRET not in reply.text
    sandbox.wait_for_subscription_status(subscription["id"], ENABLED)


def test_echoing_the_signed_challenge_enables_the_subscription(
    sandbox: Sandbox, receiver: Receiver
) -> None:
    pending = create_subscription(sandbox, receiver.url).json()["data"][0]

    enabled = sandbox.wait_for_subscription_status(pending["id"], ENABLED)

    [challenge] = receiver.received
    headers = challenge.headers
    assert headers["Twitch-Eventsub-Message-Type"] == "webhook_callback_verification"
    assert headers["Twitch-Eventsub-Message-Retry"] == "0"
    assert headers["Twitch-Eventsub-Subscription-Type"] == REVOKE
    assert headers["Twitch-Eventsub-Subscription-Version"] == "1"
    assert headers["Content-Type"] == "application/json"
    assert uuid.UUID(headers["Twitch-Eventsub-Message-Id"])
    assert RFC3339.fullmatch(headers["Twitch-Eventsub-Message-Timestamp"])
    assert headers["Twitch-Eventsub-Message-Signature"] == signature(
        SECRET, headers, challenge.body
    )
    assert set(challenge.json()) == {"challenge", "subscription"}
    assert challenge.json()["subscription"] == pending
    assert enabled == {**pending, "status": ENABLED}
    assert sandbox.subscriptions() == [enabled]
    [delivery] = sandbox.deliveries
    assert delivery.message_type == "webhook_callback_verification"
    assert delivery.message_id == headers["Twitch-Eventsub-Message-Id"]
    assert delivery.subscription_id == pending["id"]
    assert delivery.status == 200
    assert delivery.body == challenge.body.decode()


@pytest.mark.parametrize(
    ("content_type", "status"),
    [
        ("application/json", FAILED),
        ("text/html", FAILED),
        ("text/plain; charset=utf-8", ENABLED),
        ("TEXT/PLAIN", ENABLED),
    ],
)
def test_the_echo_must_be_sent_as_plain_text(
    sandbox: Sandbox, receiver: Receiver, content_type: str, status: str
) -> None:
    receiver.content_type = content_type

    assert subscribe(sandbox, receiver.url, status=status)["status"] == status


@pytest.mark.parametrize(
    "answer",
    [
        lambda message: (200, "not the challenge"),
        lambda message: (200, message.json()["challenge"] + "\n"),
        lambda message: (500, message.json()["challenge"]),
        lambda message: (302, message.json()["challenge"]),
    ],
    ids=["wrong", "trailing-newline", "error-status", "redirect"],
)
def test_verification_fails_unless_the_challenge_comes_back_exactly(
    sandbox: Sandbox, receiver: Receiver, answer: Answer
) -> None:
    receiver.answer = answer
    reply = create_subscription(sandbox, receiver.url)
    subscription_id = reply.json()["data"][0]["id"]

    failed = sandbox.wait_for_subscription_status(subscription_id, FAILED)

    assert failed["status"] == FAILED
    with pytest.raises(ValueError, match=FAILED):
        sandbox.wait_for_subscription_status(subscription_id, ENABLED)


def test_an_unreachable_callback_fails_verification(
    sandbox: Sandbox, receiver: Receiver
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # nobody listens there once closed

    subscription = subscribe(sandbox, f"http://127.0.0.1:{port}/", status=FAILED)

    [delivery] = sandbox.deliveries
    assert (delivery.subscription_id, delivery.status) == (subscription["id"], 0)


def test_a_callback_too_slow_to_answer_fails_verification(
    sandbox: Sandbox, receiver: Receiver
) -> None:
    sandbox.set_delivery_policy(timeout=0.2)
    sandbox_gave_up = threading.Event()

    def slow(message: Received) -> tuple[int, str]:
        sandbox_gave_up.wait(5)  # the right answer, once it is too late
        return echo_challenge(message)

    receiver.answer = slow
    try:
        subscribe(sandbox, receiver.url, status=FAILED)
    finally:
        sandbox_gave_up.set()

    assert [d.status for d in sandbox.deliveries] == [0]


# What it refuses ------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Client-Id": CLIENT_ID},
        {"Authorization": "Bearer not-a-token", "Client-Id": CLIENT_ID},
        "user token",
        "other client",
        "OAuth scheme",
    ],
)
def test_every_subscription_call_needs_an_app_token_of_this_client(
    sandbox: Sandbox, receiver: Receiver, headers: dict[str, str] | str
) -> None:
    if headers == "user token":
        token = sandbox.issue_tokens(login="alice")["access_token"]
        headers = helix_headers(token)
    elif headers == "other client":
        headers = helix_headers(app_token(sandbox), client_id="someone-else")
    elif headers == "OAuth scheme":
        headers = {"Authorization": f"OAuth {app_token(sandbox)}"}
        headers["Client-Id"] = CLIENT_ID
    body = subscription_body(receiver.url)

    replies = [
        http(sandbox, "POST", SUBSCRIPTIONS, json_body=body, headers=headers),
        http(sandbox, "GET", SUBSCRIPTIONS, headers=headers),
        http(sandbox, "DELETE", SUBSCRIPTIONS, query={"id": "x"}, headers=headers),
    ]

    for reply in replies:
        assert reply.status == 401
        assert reply.json()["error"] == "Unauthorized"
        assert reply.json()["status"] == 401
        assert reply.json()["message"]
    assert sandbox.subscriptions() == []
    assert receiver.received == []


@pytest.mark.parametrize(
    "changes",
    [
        {"type": "channel.follow"},
        {"type": None},
        {"version": "2"},
        {"version": 1},
        {"condition": {"client_id": "someone-else"}},
        {"condition": {"client_id": CLIENT_ID, "user_id": "1"}},
        {"condition": None},
        {"transport": {"method": "websocket", "session_id": "x"}},
        {"transport": {"method": "webhook", "secret": SECRET}},
        {"secret": "123456789"},
        {"secret": "x" * 101},
        {"secret": "é" * 12},
        {"secret": None},
    ],
)
def test_creating_refuses_what_twitch_refuses(
    sandbox: Sandbox, receiver: Receiver, changes: dict[str, object]
) -> None:
    body = subscription_body(receiver.url)
    if "secret" in changes:
        body["transport"] = {**body["transport"], "secret": changes.pop("secret")}
    body.update(changes)
    body = {key: value for key, value in body.items() if value is not None}
    headers = helix_headers(app_token(sandbox))

    reply = http(sandbox, "POST", SUBSCRIPTIONS, json_body=body, headers=headers)

    assert reply.status == 400
    assert reply.json()["error"] == "Bad Request"
    assert sandbox.subscriptions() == []


@pytest.mark.parametrize(
    ("data", "content_type"),
    [
        (b"{not json", "application/json"),
        (b'["a list"]', "application/json"),
        (json.dumps(subscription_body("https://127.0.0.1/")).encode(), "text/plain"),
    ],
)
def test_creating_refuses_a_body_that_is_not_a_json_object(
    sandbox: Sandbox, data: bytes, content_type: str
) -> None:
    headers = {**helix_headers(app_token(sandbox)), "Content-Type": content_type}

    reply = http(sandbox, "POST", SUBSCRIPTIONS, data=data, headers=headers)

    assert reply.status == 400
    assert reply.json()["error"] == "Bad Request"


@pytest.mark.parametrize(
    "callback",
    [
        "http://127.0.0.1/twitch/eventsub/",
        "https://127.0.0.1:8443/twitch/eventsub/",
        "https:///no-host",
        "https://127.0.0.1:99999/",
        "ftp://127.0.0.1/",
        "not a url",
    ],
)
def test_callbacks_must_be_https_on_port_443(sandbox: Sandbox, callback: str) -> None:
    assert create_subscription(sandbox, callback).status == 400
    # Port 443 on this machine: accepted, then verification cannot connect.
    subscribe(sandbox, "https://127.0.0.1/twitch/eventsub/", status=FAILED)


def test_insecure_callbacks_can_be_allowed_for_a_local_site(
    sandbox: Sandbox, receiver: Receiver
) -> None:
    assert sandbox.allow_insecure_callbacks
    assert create_subscription(sandbox, "ftp://127.0.0.1/").status == 400

    assert subscribe(sandbox, receiver.url)["status"] == ENABLED


def test_a_duplicate_is_a_conflict_while_the_first_is_pending_or_enabled(
    sandbox: Sandbox, receiver: Receiver
) -> None:
    first = create_subscription(sandbox, receiver.url).json()["data"][0]
    while_pending = create_subscription(sandbox, receiver.url)
    sandbox.wait_for_subscription_status(first["id"], ENABLED)
    while_enabled = create_subscription(sandbox, receiver.url)

    for reply in (while_pending, while_enabled):
        assert reply.status == 409
        assert reply.json() == {
            "error": "Conflict",
            "status": 409,
            "message": "subscription already exists",
        }
    # Twitch: one per type and condition, whatever the callback.
    assert create_subscription(sandbox, receiver.url + "?other").status == 409
    assert len(sandbox.subscriptions()) == 1


def test_a_failed_or_revoked_subscription_does_not_block_a_new_one(
    sandbox: Sandbox, receiver: Receiver
) -> None:
    receiver.answer = lambda message: (200, "no")
    subscribe(sandbox, receiver.url, status=FAILED)
    receiver.answer = echo_challenge
    revoked = subscribe(sandbox, receiver.url)
    sandbox.revoke_subscription(revoked["id"])

    assert subscribe(sandbox, receiver.url)["status"] == ENABLED
    assert [s["status"] for s in sandbox.subscriptions()] == [
        FAILED,
        "authorization_revoked",
        ENABLED,
    ]


# Listing and deleting -------------------------------------------------------------


def test_listing_shows_every_subscription_and_filters_by_one_field(
    sandbox: Sandbox, receiver: Receiver
) -> None:
    receiver.answer = lambda message: (200, "no")
    failed = subscribe(sandbox, receiver.url + "?b", status=FAILED)
    receiver.answer = echo_challenge
    enabled = subscribe(sandbox, receiver.url)

    everything = list_subscriptions(sandbox)
    by_status = list_subscriptions(sandbox, status=FAILED)
    by_type = list_subscriptions(sandbox, type=REVOKE)
    other_type = list_subscriptions(sandbox, type="channel.follow")
    by_id = list_subscriptions(sandbox, subscription_id=enabled["id"])
    by_user = list_subscriptions(sandbox, user_id="100000001")

    assert everything.status == 200
    assert everything.json() == {
        "data": [failed, enabled],
        "total": 2,
        "total_cost": 0,
        "max_total_cost": 10000,
        "pagination": {},
    }
    assert by_status.json()["data"] == [failed]
    assert by_type.json()["data"] == [failed, enabled]
    assert other_type.json()["data"] == []
    assert by_id.json()["data"] == [enabled]
    assert by_user.json()["data"] == []
    assert other_type.json()["total"] == 2  # all the app has, filtered or not
    assert sandbox.subscriptions() == [failed, enabled]


def test_listing_refuses_two_filters_or_an_unknown_status(sandbox: Sandbox) -> None:
    two = list_subscriptions(sandbox, status=ENABLED, type=REVOKE)
    unknown = list_subscriptions(sandbox, status="asleep")

    assert (two.status, unknown.status) == (400, 400)
    assert two.json()["error"] == unknown.json()["error"] == "Bad Request"


def test_deleting_a_subscription_answers_204_then_404(
    sandbox: Sandbox, receiver: Receiver
) -> None:
    subscription = subscribe(sandbox, receiver.url)
    headers = helix_headers(app_token(sandbox))
    query = {"id": subscription["id"]}

    deleted = http(sandbox, "DELETE", SUBSCRIPTIONS, query=query, headers=headers)
    again = http(sandbox, "DELETE", SUBSCRIPTIONS, query=query, headers=headers)
    no_id = http(sandbox, "DELETE", SUBSCRIPTIONS, headers=headers)

    assert (deleted.status, deleted.body) == (204, b"")
    assert again.status == 404
    assert again.json() == {
        "error": "Not Found",
        "status": 404,
        "message": "subscription not found",
    }
    assert no_id.status == 400
    assert no_id.json()["error"] == "Bad Request"
    assert sandbox.subscriptions() == []
    assert list_subscriptions(sandbox).json()["data"] == []


# Recording, faults, waiting, reset ------------------------------------------------


def test_subscription_endpoints_are_recorded_and_take_faults(
    sandbox: Sandbox, receiver: Receiver
) -> None:
    sandbox.fail("eventsub_create", status=503, times=1)
    sandbox.fail("eventsub_list", status=500, times=1)

    failed = create_subscription(sandbox, receiver.url)
    created = create_subscription(sandbox, receiver.url)
    failed_list = list_subscriptions(sandbox)

    assert failed.status == 503
    assert created.status == 202
    assert failed_list.status == 500
    assert len(sandbox.subscriptions()) == 1  # the fault created nothing
    assert sandbox.count("eventsub_create") == 2
    assert sandbox.count("eventsub_list") == 1
    recorded = [r for r in sandbox.requests if r.endpoint.startswith("eventsub")]
    assert [(r.method, r.status) for r in recorded] == [
        ("POST", 503),
        ("POST", 202),
        ("GET", 500),
    ]
    sandbox.wait_for_subscription_status(created.json()["data"][0]["id"], ENABLED)


def test_waiting_for_a_status_gives_up_after_the_timeout(
    sandbox: Sandbox, receiver: Receiver
) -> None:
    answered = threading.Event()

    def late(message: Received) -> tuple[int, str]:
        answered.wait(5)
        return echo_challenge(message)

    receiver.answer = late
    reply = create_subscription(sandbox, receiver.url)
    subscription_id = reply.json()["data"][0]["id"]

    with pytest.raises(TimeoutError):
        sandbox.wait_for_subscription_status(subscription_id, ENABLED, timeout=0.1)
    answered.set()
    assert sandbox.wait_for_subscription_status(subscription_id, ENABLED)


def test_reset_forgets_subscriptions_and_deliveries(
    sandbox: Sandbox, receiver: Receiver
) -> None:
    subscribe(sandbox, receiver.url)

    sandbox.reset()

    assert sandbox.subscriptions() == []
    assert sandbox.deliveries == []
    assert sandbox.allow_insecure_callbacks  # configuration stays


# Real clients ---------------------------------------------------------------------


async def test_twitchapi_manages_subscriptions_on_the_sandbox(
    sandbox: Sandbox, receiver: Receiver
) -> None:
    twitch = await Twitch(
        CLIENT_ID,
        CLIENT_SECRET,
        base_url=sandbox.api_base_url,
        auth_base_url=sandbox.auth_base_url,
    )
    transport = {"method": "webhook", "callback": receiver.url, "secret": SECRET}
    condition = {"client_id": CLIENT_ID}

    await twitch.create_eventsub_subscription(REVOKE, "1", condition, transport)
    [created] = sandbox.subscriptions()
    sandbox.wait_for_subscription_status(created["id"], ENABLED)
    listed = await twitch.get_eventsub_subscriptions()
    await twitch.delete_eventsub_subscription(created["id"])
    await twitch.close()

    assert [(s.id, s.status, s.type) for s in listed.data] == [
        (created["id"], ENABLED, REVOKE)
    ]
    assert listed.total == 1
    assert sandbox.subscriptions() == []
