"""Making the sandbox misbehave (failures, altered answers, hangs, rate
limits, latency), and its record of every request."""

from __future__ import annotations

import time
from http.client import HTTPConnection

import pytest

from tests.conftest import (
    CLIENT_ID,
    CLIENT_SECRET,
    REDIRECT_URI,
    helix_users,
    http,
    refresh,
    validate,
)
from twitch_sandbox import Sandbox

# Faults ---------------------------------------------------------------------------


def test_fail_with_a_string_answers_a_non_json_body(sandbox: Sandbox) -> None:
    sandbox.fail("token", status=502, body="<html>Bad Gateway</html>", times=1)
    pair = sandbox.issue_tokens(login="alice", scopes=[])

    failed = refresh(sandbox, pair["refresh_token"])
    recovered = refresh(sandbox, pair["refresh_token"])

    assert failed.status == 502
    assert failed.headers.get_content_type() == "text/html"
    assert failed.text == "<html>Bad Gateway</html>"
    assert recovered.status == 200  # the failed request changed nothing
    assert [r.status for r in sandbox.requests] == [502, 200]


def test_fail_answers_json_until_cleared(sandbox: Sandbox) -> None:
    sandbox.fail("validate", status=503)

    replies = [validate(sandbox, "x") for _ in range(3)]
    sandbox.clear_faults()

    assert {r.status for r in replies} == {503}
    assert replies[0].json() == {"status": 503, "message": "sandbox fault"}
    assert validate(sandbox, "x").status == 401


def test_fail_sends_any_other_body_as_json(sandbox: Sandbox) -> None:
    odd = {
        "status": "oops",
        "access_token": "a" * 300,
        "refresh_token": "nul\u0000inside",
        "expires_in": 1e15,
        "scope": None,
    }
    sandbox.fail("token", status=200, body=[1, 2], times=1)
    sandbox.fail("validate", status=200, body=odd, times=1)
    sandbox.fail("validate", status=200, body=False, times=1)

    listed = refresh(sandbox, "x")
    replies = [validate(sandbox, "x") for _ in range(2)]

    assert (listed.status, listed.json()) == (200, [1, 2])
    assert listed.headers["Content-Type"] == "application/json"
    assert [r.json() for r in replies] == [odd, False]


def test_alter_changes_the_real_answer_after_it_happened(sandbox: Sandbox) -> None:
    pair = sandbox.issue_tokens(login="alice", scopes=["chat:read"])
    sandbox.alter("token", remove=["expires_in"], set={"extra": 1}, times=1)

    reply = refresh(sandbox, pair["refresh_token"])

    assert reply.status == 200
    body = reply.json()
    assert "expires_in" not in body
    assert body["extra"] == 1
    assert body["scope"] == ["chat:read"]
    # The refresh really happened: the old token is spent, the new one works.
    assert not sandbox.is_refresh_token_valid(pair["refresh_token"])
    assert sandbox.is_refresh_token_valid(body["refresh_token"])
    assert sandbox.live_tokens("alice").refresh == [body["refresh_token"]]
    assert "expires_in" in refresh(sandbox, body["refresh_token"]).json()


def test_alter_can_make_validate_say_a_token_never_expires(
    sandbox: Sandbox,
) -> None:
    pair = sandbox.issue_tokens(login="alice", scopes=[])
    sandbox.alter("validate", set={"expires_in": 0})

    replies = [validate(sandbox, t) for t in (pair["access_token"], "unknown")]

    assert replies[0].status == 200
    assert replies[0].json()["expires_in"] == 0
    assert replies[0].json()["login"] == "alice"
    # The status stays: a rejected token is still rejected, with the change.
    assert replies[1].status == 401
    assert replies[1].json()["expires_in"] == 0
    sandbox.clear_faults()
    assert validate(sandbox, pair["access_token"]).json()["expires_in"] > 0


def test_alter_leaves_answers_that_are_not_json_objects_alone(
    sandbox: Sandbox,
) -> None:
    pair = sandbox.issue_tokens(login="alice", scopes=[])
    sandbox.alter("revoke", set={"extra": 1}, times=1)

    form = {"client_id": CLIENT_ID, "token": pair["access_token"]}
    reply = http(sandbox, "POST", "oauth2/revoke", form=form)

    assert (reply.status, reply.body) == (200, b"")


def test_alter_takes_its_turn_in_the_queue_of_faults(sandbox: Sandbox) -> None:
    pair = sandbox.issue_tokens(login="alice", scopes=[])
    sandbox.fail("token", status=500, times=1)
    sandbox.alter("token", set={"expires_in": 1e15}, times=1)

    failed = refresh(sandbox, pair["refresh_token"])
    altered = refresh(sandbox, pair["refresh_token"]).json()
    plain = refresh(sandbox, altered["refresh_token"]).json()

    assert failed.status == 500
    assert altered["expires_in"] == 1e15
    assert plain["expires_in"] == 14400


def test_alter_refuses_a_single_string_as_the_keys_to_remove(
    sandbox: Sandbox,
) -> None:
    with pytest.raises(TypeError):
        sandbox.alter("token", remove="expires_in")


def test_hang_makes_a_client_time_out(sandbox: Sandbox) -> None:
    sandbox.hang("validate", times=1)

    with pytest.raises(TimeoutError):
        http(sandbox, "GET", "oauth2/validate", timeout=0.5)

    assert validate(sandbox, "x").status == 401
    assert [r.status for r in sandbox.requests] == [0, 401]


def test_rate_limit_sends_headers_and_then_recovers(sandbox: Sandbox) -> None:
    sandbox.rate_limit("users", times=1, reset_in=5)
    pair = sandbox.issue_tokens(login="alice", scopes=[])

    asked = time.time()
    limited = helix_users(sandbox, pair["access_token"])
    answered = time.time()

    assert limited.status == 429
    assert limited.json() == {"status": 429, "message": "Too Many Requests"}
    assert limited.headers["Ratelimit-Remaining"] == "0"
    assert int(limited.headers["Ratelimit-Limit"]) > 0
    # The epoch second five seconds after the answer was made, whenever that was.
    assert int(asked) + 5 <= int(limited.headers["Ratelimit-Reset"]) <= answered + 5
    assert limited.headers["Retry-After"] == "5"
    assert helix_users(sandbox, pair["access_token"]).status == 200


def test_faults_for_one_endpoint_are_used_in_order(sandbox: Sandbox) -> None:
    sandbox.rate_limit("validate", times=1)
    sandbox.fail("validate", status=500, times=1)

    statuses = [validate(sandbox, "x").status for _ in range(3)]

    assert statuses == [429, 500, 401]


# Latency --------------------------------------------------------------------------


def test_latency_delays_the_answer(sandbox: Sandbox) -> None:
    sandbox.set_latency(0.5, endpoint="validate")

    started = time.monotonic()
    validate(sandbox, "x")
    slow = time.monotonic() - started
    started = time.monotonic()
    http(sandbox, "GET", "helix/users")
    fast = time.monotonic() - started

    assert slow >= 0.5
    # Other endpoints are not delayed: a local answer takes milliseconds, and the
    # latency, had it applied, would take all of 0.5 s.
    assert fast < 0.5


# Recording ------------------------------------------------------------------------


def test_requests_are_recorded_with_query_and_form_apart(sandbox: Sandbox) -> None:
    code = sandbox.authorize(login="alice", scopes=[])
    # twitchAPI's authenticate() puts the secret in the URL; the recording
    # must let a test see that.
    params = {
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
        "code": code,
        "grant_type": "authorization_code",
        "redirect_uri": REDIRECT_URI,
    }
    in_query = http(sandbox, "POST", "oauth2/token", query=params)
    pair = in_query.json()
    refresh(sandbox, pair["refresh_token"])

    in_url, in_body = sandbox.requests
    assert in_query.status == 200
    assert in_url.endpoint == "token"
    assert in_url.method == "POST"
    assert in_url.path == "/oauth2/token"
    assert in_url.query["client_secret"] == CLIENT_SECRET
    assert in_url.form == {}
    assert in_url.status == 200
    assert in_body.query == {}
    assert in_body.form["client_secret"] == CLIENT_SECRET
    assert in_body.form["refresh_token"] == pair["refresh_token"]
    assert in_body.headers["Content-Type"] == "application/x-www-form-urlencoded"
    assert in_url.at <= in_body.at <= time.time()
    assert sandbox.count("token") == 2
    assert sandbox.count("token", grant_type="authorization_code") == 1
    assert sandbox.count("token", grant_type="refresh_token") == 1


def test_waiting_for_a_request_returns_once_it_arrives_not_once_answered(
    sandbox: Sandbox,
) -> None:
    sandbox.set_latency(60, endpoint="validate")  # no answer while the test runs
    client = HTTPConnection("127.0.0.1", sandbox.port, timeout=5)
    try:
        client.request("GET", "/oauth2/validate")

        sandbox.wait_for_request("validate")

        assert sandbox.requests == []  # arrived, but recorded only once it ends
        with pytest.raises(TimeoutError, match="1 of 2 validate"):
            sandbox.wait_for_request("validate", count=2, timeout=0.1)
    finally:
        client.close()
    # Its client gone, the request ends, recorded as never answered.
    deadline = time.monotonic() + 5
    while not sandbox.requests and time.monotonic() < deadline:
        time.sleep(0.01)
    assert [r.status for r in sandbox.requests] == [0]
    sandbox.reset()  # arrivals are counted since the last reset
    with pytest.raises(TimeoutError):
        sandbox.wait_for_request("validate", timeout=0.1)
    with pytest.raises(ValueError, match="unknown endpoint"):
        sandbox.wait_for_request("eventsub")


def test_python_api_calls_are_not_recorded(sandbox: Sandbox) -> None:
    sandbox.authorize(login="alice", scopes=[])
    sandbox.issue_tokens(login="alice", scopes=[])

    assert sandbox.requests == []


def test_tokens_issued_lists_every_token(sandbox: Sandbox) -> None:
    pair = sandbox.issue_tokens(login="alice", scopes=[])
    refreshed = refresh(sandbox, pair["refresh_token"]).json()

    issued = set(sandbox.tokens_issued())

    assert issued == {
        pair["access_token"],
        pair["refresh_token"],
        refreshed["access_token"],
        refreshed["refresh_token"],
    }
