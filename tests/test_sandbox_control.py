"""The sandbox's `/_sandbox/` control endpoints, which are its Python API over
HTTP (for a sandbox in another process), and `python -m twitch_sandbox`."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from tests.conftest import (
    BASE_DIR,
    ENABLED,
    REDIRECT_URI,
    Receiver,
    create_subscription,
    helix_users,
    http,
    refresh,
    validate,
)
from twitch_sandbox import Sandbox

# OAuth, tokens and faults ---------------------------------------------------------


def test_control_tokens_mints_users_with_token_pairs(sandbox: Sandbox) -> None:
    body = {"count": 3, "scopes": ["chat:read"], "login_prefix": "bench"}

    reply = http(sandbox, "POST", "_sandbox/tokens", json_body=body)

    assert reply.status == 200
    tokens = reply.json()["tokens"]
    assert [t["login"] for t in tokens] == ["bench1", "bench2", "bench3"]
    for minted in tokens:
        assert set(minted) == {
            "user_id",
            "login",
            "access_token",
            "refresh_token",
            "expires_in",
            "scope",
        }
        assert minted["scope"] == ["chat:read"]
        user = sandbox.user_for_access_token(minted["access_token"])
        assert user is not None and user.id == minted["user_id"]


def test_control_endpoints_drive_expiry_disconnects_and_faults(
    sandbox: Sandbox,
) -> None:
    alice = sandbox.issue_tokens(login="alice", scopes=[])
    bob = sandbox.issue_tokens(login="bob", scopes=[])

    http(sandbox, "POST", "_sandbox/expire", json_body={"login": "alice"})
    http(sandbox, "POST", "_sandbox/users/bob/disconnect")
    assert not sandbox.is_access_token_valid(alice["access_token"])
    assert sandbox.is_refresh_token_valid(alice["refresh_token"])
    assert not sandbox.is_refresh_token_valid(bob["refresh_token"])

    fault = {"endpoint": "validate", "status": 500, "body": "oops", "times": 1}
    http(sandbox, "POST", "_sandbox/fail", json_body=fault)
    assert validate(sandbox, "x").text == "oops"

    http(sandbox, "POST", "_sandbox/fail", json_body={"endpoint": "validate"})
    http(sandbox, "POST", "_sandbox/clear-faults")
    assert validate(sandbox, "x").status == 401

    latency = {"seconds": 0.1, "endpoint": "validate"}
    http(sandbox, "POST", "_sandbox/latency", json_body=latency)
    started = time.monotonic()
    validate(sandbox, "x")
    assert time.monotonic() - started >= 0.1

    http(sandbox, "POST", "_sandbox/reset")
    assert sandbox.tokens_issued() == []
    assert sandbox.requests == []


def test_control_fail_sends_any_json_body(sandbox: Sandbox) -> None:
    bodies = [[1, 2], {"expires_in": 1e15, "nul": "\u0000", "long": "x" * 300}, 7]
    for body in bodies:
        fault = {"endpoint": "token", "status": 200, "body": body, "times": 1}
        http(sandbox, "POST", "_sandbox/fail", json_body=fault)

    replies = [refresh(sandbox, "x") for _ in bodies]

    assert [r.json() for r in replies] == bodies


def test_control_alter_changes_real_answers(sandbox: Sandbox) -> None:
    pair = sandbox.issue_tokens(login="alice", scopes=[])
    fault = {"endpoint": "token", "remove": ["expires_in"], "times": 1}
    http(sandbox, "POST", "_sandbox/alter", json_body=fault)
    http(
        sandbox,
        "POST",
        "_sandbox/alter",
        json_body={"endpoint": "validate", "set": {"expires_in": 0}},
    )

    refreshed = refresh(sandbox, pair["refresh_token"]).json()
    validation = validate(sandbox, refreshed["access_token"]).json()

    assert "expires_in" not in refreshed
    assert sandbox.is_refresh_token_valid(refreshed["refresh_token"])
    assert validation["expires_in"] == 0


def test_control_live_tokens_lists_a_users_live_tokens(sandbox: Sandbox) -> None:
    pair = sandbox.issue_tokens(login="alice", scopes=[])

    reply = http(sandbox, "GET", "_sandbox/users/alice/tokens")
    unknown = http(sandbox, "GET", "_sandbox/users/nobody/tokens")

    assert reply.json() == {
        "access": [pair["access_token"]],
        "refresh": [pair["refresh_token"]],
    }
    assert unknown.status == 400


def test_control_stats_counts_requests_and_refreshes(sandbox: Sandbox) -> None:
    pair = sandbox.issue_tokens(login="alice", scopes=[])
    refresh(sandbox, pair["refresh_token"])
    validate(sandbox, "x")
    validate(sandbox, "y")

    stats = http(sandbox, "GET", "_sandbox/stats").json()

    assert stats == {
        "counts": {
            "authorize": 0,
            "authorize_post": 0,
            "token": 1,
            "validate": 2,
            "revoke": 0,
            "users": 0,
            "eventsub_create": 0,
            "eventsub_list": 0,
            "eventsub_delete": 0,
            "keys": 0,
            "openid_configuration": 0,
            "userinfo": 0,
            "device": 0,
        },
        "refreshes": 1,
    }
    assert len(sandbox.requests) == 3  # control calls are not recorded


def test_control_calls_with_bad_arguments_answer_400(sandbox: Sandbox) -> None:
    bad_endpoint = http(sandbox, "POST", "_sandbox/fail", json_body={"endpoint": "x"})
    unknown_user = http(sandbox, "POST", "_sandbox/users/nobody/disconnect")
    bad_alter = http(
        sandbox,
        "POST",
        "_sandbox/alter",
        json_body={"endpoint": "token", "remove": "expires_in"},
    )

    assert bad_endpoint.status == 400
    assert "unknown endpoint" in bad_endpoint.json()["message"]
    assert unknown_user.status == 400
    assert bad_alter.status == 400
    assert "remove" in bad_alter.json()["message"]


def test_control_rate_limit_and_hang_take_the_python_options(
    sandbox: Sandbox,
) -> None:
    limit = {"endpoint": "validate", "times": 1, "reset_in": 5}
    http(sandbox, "POST", "_sandbox/rate-limit", json_body=limit)
    http(sandbox, "POST", "_sandbox/hang", json_body={"endpoint": "users", "times": 1})

    limited = validate(sandbox, "x")
    with pytest.raises(TimeoutError):
        http(sandbox, "GET", "helix/users", timeout=0.5)

    assert limited.status == 429
    assert limited.headers["Retry-After"] == "5"
    assert validate(sandbox, "x").status == 401
    assert helix_users(sandbox, "x").status == 401


def test_control_calls_refuse_what_the_python_api_refuses(sandbox: Sandbox) -> None:
    misspelt = http(
        sandbox, "POST", "_sandbox/fail", json_body={"endpoint": "token", "tims": 1}
    )
    missing = http(sandbox, "POST", "_sandbox/rate-limit", json_body={"times": 1})
    no_times = http(
        sandbox, "POST", "_sandbox/hang", json_body={"endpoint": "token", "times": 0}
    )
    too_many = http(sandbox, "POST", "_sandbox/tokens", json_body={"count": 10**6})
    not_an_object = http(sandbox, "POST", "_sandbox/fail", json_body=["token"])

    assert misspelt.status == 400
    assert "tims" in misspelt.json()["message"]
    assert missing.status == 400
    assert "endpoint" in missing.json()["message"]
    assert no_times.status == 400
    assert "times" in no_times.json()["message"]
    assert too_many.status == 400
    assert not_an_object.status == 400
    assert sandbox.tokens_issued() == []
    assert refresh(sandbox, "x").status == 400  # no fault was queued


def test_only_the_listed_sandbox_methods_are_reachable_over_http(
    sandbox: Sandbox,
) -> None:
    for name in ("start", "stop", "issue_tokens", "authorize", "ledger"):
        assert http(sandbox, "POST", f"_sandbox/{name}").status == 404


# EventSub -------------------------------------------------------------------------


def test_control_endpoints_list_wait_disconnect_revoke_and_show_deliveries(
    sandbox: Sandbox, receiver: Receiver
) -> None:
    sandbox.add_user("alice")
    reply = create_subscription(sandbox, receiver.url)
    subscription_id = reply.json()["data"][0]["id"]
    base = f"_sandbox/eventsub/subscriptions/{subscription_id}"

    waited = http(sandbox, "POST", f"{base}/wait", json_body={"status": ENABLED})
    disconnected = http(
        sandbox, "POST", "_sandbox/users/alice/disconnect", json_body={"gone": True}
    )
    revoked = http(
        sandbox, "POST", f"{base}/revoke", json_body={"reason": "user_removed"}
    )
    listed = http(sandbox, "GET", "_sandbox/eventsub/subscriptions")
    deliveries = http(sandbox, "GET", "_sandbox/eventsub/deliveries")
    unknown = http(
        sandbox,
        "POST",
        "_sandbox/eventsub/subscriptions/nope/wait",
        json_body={"status": ENABLED},
    )

    assert waited.json()["status"] == ENABLED
    assert listed.json() == [{**waited.json(), "status": "user_removed"}]
    assert disconnected.json() == revoked.json() == {"ok": True}
    assert [d["message_type"] for d in deliveries.json()] == [
        "webhook_callback_verification",
        "notification",
        "revocation",
    ]
    assert deliveries.json()[1]["status"] == 204
    assert receiver.received[1].json()["event"]["user_login"] is None
    assert unknown.status == 400


# Command line ---------------------------------------------------------------------


def test_command_line_serves_until_interrupted() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [
        sys.executable,
        "-m",
        "twitch_sandbox",
        "--port",
        str(port),
        "--redirect-uri",
        REDIRECT_URI,
    ]
    with subprocess.Popen(
        command, cwd=BASE_DIR, stdout=subprocess.PIPE, text=True
    ) as process:
        try:
            banner = process.stdout.readline() if process.stdout else ""
            url = f"http://127.0.0.1:{port}/_sandbox/stats"
            with urllib.request.urlopen(url, timeout=5) as response:
                stats = json.load(response)
            process.send_signal(signal.SIGINT)
            returncode = process.wait(timeout=5)
        finally:
            process.kill()

    assert f"127.0.0.1:{port}" in banner
    assert stats["refreshes"] == 0
    assert returncode == 0
