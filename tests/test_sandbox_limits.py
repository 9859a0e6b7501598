"""The sandbox limits like Twitch: Helix token buckets with `Ratelimit-*` headers on
every answer and 429 when empty, and id.twitch.tv's 429 past a burst."""

from __future__ import annotations

import math
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest
import time_machine

from tests.conftest import (
    BASE_DIR,
    CLIENT_ID,
    CLIENT_SECRET,
    SUBSCRIPTIONS,
    Reply,
    app_token,
    create_subscription,
    helix_headers,
    helix_users,
    http,
    refresh,
    validate,
)
from twitch_sandbox import Sandbox

RATE_LIMIT_HEADERS = ("Ratelimit-Limit", "Ratelimit-Remaining", "Ratelimit-Reset")


def remaining(reply: Reply) -> int:
    return int(reply.headers["Ratelimit-Remaining"])


# Helix ----------------------------------------------------------------------------


def test_every_helix_answer_carries_twitchs_default_bucket(sandbox: Sandbox) -> None:
    user_token = sandbox.issue_tokens(login="alice")["access_token"]
    app = app_token(sandbox)
    too_many_ids = "helix/users?" + "&".join(f"id={n}" for n in range(101))

    # Frozen, so no point comes back between two requests.
    with time_machine.travel(time.time(), tick=False):
        replies = [
            helix_users(sandbox, user_token),
            http(sandbox, "GET", too_many_ids, headers=helix_headers(user_token)),
            http(sandbox, "GET", SUBSCRIPTIONS, headers=helix_headers(app)),
            http(sandbox, "DELETE", SUBSCRIPTIONS, headers=helix_headers(app)),
            http(
                sandbox, "DELETE", f"{SUBSCRIPTIONS}?id=no", headers=helix_headers(app)
            ),
        ]

    assert [r.status for r in replies] == [200, 400, 200, 400, 404]
    for reply in replies:
        assert reply.headers["Ratelimit-Limit"] == "800"
        assert int(reply.headers["Ratelimit-Reset"]) >= int(time.time())
    # The user's bucket and the app token's are apart.
    assert [remaining(r) for r in replies] == [799, 798, 799, 798, 797]


def test_remaining_counts_down_and_reset_says_when_the_bucket_is_full(
    sandbox: Sandbox,
) -> None:
    token = sandbox.issue_tokens(login="alice")["access_token"]

    now = time.time()
    with time_machine.travel(now, tick=False):
        replies = [helix_users(sandbox, token) for _ in range(3)]

    assert [remaining(r) for r in replies] == [799, 798, 797]
    # Three points at 800 a minute come back within a second.
    assert int(replies[-1].headers["Ratelimit-Reset"]) == math.ceil(now + 3 * 60 / 800)


def test_an_empty_bucket_answers_429_with_twitchs_body_and_headers(
    sandbox: Sandbox,
) -> None:
    sandbox.set_helix_rate_limit(points=2, per_seconds=60)
    token = sandbox.issue_tokens(login="alice")["access_token"]

    asked = time.time()
    replies = [helix_users(sandbox, token) for _ in range(3)]

    assert [r.status for r in replies] == [200, 200, 429]
    limited = replies[-1]
    assert limited.headers.get_content_type() == "application/json"
    assert limited.json() == {
        "error": "Too Many Requests",
        "status": 429,
        "message": "Too Many Requests",
    }
    assert limited.headers["Ratelimit-Limit"] == "2"
    assert limited.headers["Ratelimit-Remaining"] == "0"
    # Empty now: full again a whole period later.
    assert asked + 59 <= int(limited.headers["Ratelimit-Reset"]) <= time.time() + 61
    assert [r.status for r in sandbox.requests] == [200, 200, 429]


def test_a_limited_helix_request_is_not_carried_out(sandbox: Sandbox) -> None:
    token = app_token(sandbox)
    sandbox.set_helix_rate_limit(points=1, per_seconds=60)
    http(sandbox, "GET", SUBSCRIPTIONS, headers=helix_headers(token))

    limited = create_subscription(sandbox, "https://example.invalid/cb", token=token)

    assert limited.status == 429
    assert sandbox.subscriptions() == []


def test_the_bucket_refills_steadily_until_full(sandbox: Sandbox) -> None:
    sandbox.set_helix_rate_limit(points=4, per_seconds=60)
    token = sandbox.issue_tokens(login="alice")["access_token"]
    drained = [helix_users(sandbox, token) for _ in range(5)]

    with time_machine.travel(time.time() + 15.5):
        one_back = [helix_users(sandbox, token) for _ in range(2)]
    with time_machine.travel(int(one_back[-1].headers["Ratelimit-Reset"]) + 1):
        full = helix_users(sandbox, token)

    assert [r.status for r in drained] == [200, 200, 200, 200, 429]
    assert [r.status for r in one_back] == [200, 429]  # a point every 15 s
    assert full.status == 200
    assert remaining(full) == 3


def test_each_user_and_the_app_have_a_bucket_of_their_own(sandbox: Sandbox) -> None:
    sandbox.set_helix_rate_limit(points=1, per_seconds=60)
    alice = sandbox.issue_tokens(login="alice")["access_token"]
    alice_again = sandbox.issue_tokens(login="alice")["access_token"]
    bob = sandbox.issue_tokens(login="bob")["access_token"]
    first_app, second_app = app_token(sandbox), app_token(sandbox)

    def list_with(token: str) -> int:
        return http(sandbox, "GET", SUBSCRIPTIONS, headers=helix_headers(token)).status

    assert helix_users(sandbox, alice).status == 200
    # A user's tokens for one client share the bucket: "per client ID per user".
    assert helix_users(sandbox, alice_again).status == 429
    assert helix_users(sandbox, bob).status == 200
    assert list_with(first_app) == 200
    assert list_with(first_app) == 429
    # The app's tokens share one bucket: a new app token brings no new points.
    assert list_with(second_app) == 429


def test_answers_no_bucket_pays_for_carry_no_headers(sandbox: Sandbox) -> None:
    token = sandbox.issue_tokens(login="alice")["access_token"]

    unauthorized = [
        http(sandbox, "GET", "helix/users"),
        helix_users(sandbox, "not-a-token"),
        helix_users(sandbox, token, client_id="another-client"),
    ]
    counted = helix_users(sandbox, token)

    assert [r.status for r in unauthorized] == [401, 401, 401]
    for reply in unauthorized:
        assert not set(RATE_LIMIT_HEADERS) & set(reply.headers)
    assert remaining(counted) == 799


def test_a_fault_stands_in_for_the_whole_answer_and_spends_nothing(
    sandbox: Sandbox,
) -> None:
    token = sandbox.issue_tokens(login="alice")["access_token"]
    sandbox.fail("users", status=503, times=1)

    failed = helix_users(sandbox, token)
    answered = helix_users(sandbox, token)

    assert failed.status == 503
    assert "Ratelimit-Remaining" not in failed.headers
    assert remaining(answered) == 799


def test_an_altered_answer_keeps_its_rate_limit_headers(sandbox: Sandbox) -> None:
    token = sandbox.issue_tokens(login="alice")["access_token"]
    sandbox.alter("users", set={"extra": True}, times=1)

    altered = helix_users(sandbox, token)

    assert altered.json()["extra"] is True
    assert remaining(altered) == 799


# id.twitch.tv -----------------------------------------------------------------------


def test_id_twitch_tv_answers_429_past_the_burst(sandbox: Sandbox) -> None:
    sandbox.set_auth_rate_limit(burst=3, per_seconds=60)
    pair = sandbox.issue_tokens(login="alice")

    # Token, validate and revoke all draw on the client's bucket.
    refreshed = refresh(sandbox, pair["refresh_token"])
    validated = validate(sandbox, refreshed.json()["access_token"])
    revoked = http(
        sandbox,
        "POST",
        "oauth2/revoke",
        form={"client_id": CLIENT_ID, "token": pair["access_token"]},
    )
    asked = time.time()
    limited = refresh(sandbox, refreshed.json()["refresh_token"])

    assert [refreshed.status, validated.status, revoked.status] == [200, 200, 200]
    for reply in (refreshed, validated, revoked):
        assert not set(RATE_LIMIT_HEADERS) & set(reply.headers)
    assert limited.status == 429
    assert limited.body == b""  # as twurple/twurple#390 met it
    assert limited.headers["Retry-After"] == "20"  # a request's worth refills
    assert asked + 59 <= int(limited.headers["Ratelimit-Reset"]) <= time.time() + 61
    # Nothing happened: the refresh token did not rotate.
    assert sandbox.is_refresh_token_valid(refreshed.json()["refresh_token"])
    assert sandbox.refresh_count() == 1


def test_every_validation_counts_dead_tokens_and_unknown_ones_too(
    sandbox: Sandbox,
) -> None:
    sandbox.set_auth_rate_limit(burst=2, per_seconds=60)
    token = sandbox.issue_tokens(login="alice")["access_token"]
    sandbox.expire_access_tokens("alice")

    statuses = [validate(sandbox, token).status for _ in range(3)]
    unknown = [validate(sandbox, "not-a-token").status for _ in range(3)]

    assert statuses == [401, 401, 429]
    assert unknown == [401, 401, 429]  # a bucket of their own


def test_each_client_has_its_own_auth_bucket(sandbox: Sandbox) -> None:
    sandbox.set_auth_rate_limit(burst=1, per_seconds=60)
    pair = sandbox.issue_tokens(login="alice")
    refresh(sandbox, pair["refresh_token"])

    ours = refresh(sandbox, pair["refresh_token"])
    theirs = http(
        sandbox,
        "POST",
        "oauth2/token",
        form={
            "client_id": "another-client",
            "client_secret": CLIENT_SECRET,
            "grant_type": "client_credentials",
        },
    )

    assert ours.status == 429
    assert theirs.status == 400  # "invalid client", not throttled


def test_the_default_auth_limit_cuts_a_burst_of_a_hundred_and_one(
    sandbox: Sandbox,
) -> None:
    # Frozen, so nothing refills while the burst goes out.
    with time_machine.travel(time.time(), tick=False):
        statuses = [validate(sandbox, "x").status for _ in range(101)]

    assert statuses == [401] * 100 + [429]


def test_the_auth_limit_can_be_lifted(sandbox: Sandbox) -> None:
    sandbox.set_auth_rate_limit(burst=None)

    with time_machine.travel(time.time(), tick=False):
        statuses = {validate(sandbox, "x").status for _ in range(150)}

    assert statuses == {401}


# Configuration ----------------------------------------------------------------------


def test_reset_fills_the_buckets_and_restores_the_limits(sandbox: Sandbox) -> None:
    sandbox.set_helix_rate_limit(points=1, per_seconds=60)
    sandbox.set_auth_rate_limit(burst=1, per_seconds=60)
    token = sandbox.issue_tokens(login="alice")["access_token"]
    helix_users(sandbox, token)
    validate(sandbox, token)

    sandbox.reset()
    token = sandbox.issue_tokens(login="alice")["access_token"]

    answered = helix_users(sandbox, token)
    assert answered.headers["Ratelimit-Limit"] == "800"
    assert remaining(answered) == 799
    assert validate(sandbox, token).status == 200
    assert validate(sandbox, token).status == 200


def test_a_new_limit_starts_every_bucket_full(sandbox: Sandbox) -> None:
    token = sandbox.issue_tokens(login="alice")["access_token"]
    sandbox.set_helix_rate_limit(points=1, per_seconds=60)
    helix_users(sandbox, token)

    sandbox.set_helix_rate_limit(points=5, per_seconds=1)

    assert remaining(helix_users(sandbox, token)) == 4


@pytest.mark.parametrize(
    ("points", "per_seconds"),
    [(0, 60), (1.5, 60), ("800", 60), (True, 60), (800, 0), (800, float("inf"))],
)
def test_limits_must_be_positive_numbers(
    sandbox: Sandbox, points: object, per_seconds: object
) -> None:
    with pytest.raises(ValueError, match="points|per_seconds"):
        sandbox.set_helix_rate_limit(points=points, per_seconds=per_seconds)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="points|per_seconds"):
        sandbox.set_auth_rate_limit(burst=points, per_seconds=per_seconds)  # type: ignore[arg-type]


def test_control_endpoints_set_both_limits(sandbox: Sandbox) -> None:
    token = sandbox.issue_tokens(login="alice")["access_token"]

    helix = http(
        sandbox,
        "POST",
        "_sandbox/helix-rate-limit",
        json_body={"points": 1, "per_seconds": 60},
    )
    auth = http(
        sandbox,
        "POST",
        "_sandbox/auth-rate-limit",
        json_body={"burst": 1, "per_seconds": 60},
    )
    bad = http(sandbox, "POST", "_sandbox/helix-rate-limit", json_body={"points": 0})

    assert helix.json() == auth.json() == {"ok": True}
    assert [helix_users(sandbox, token).status for _ in range(2)] == [200, 429]
    assert [validate(sandbox, token).status for _ in range(2)] == [200, 429]
    assert bad.status == 400
    assert "points" in bad.json()["message"]

    lifted = http(
        sandbox, "POST", "_sandbox/auth-rate-limit", json_body={"burst": None}
    )
    assert lifted.status == 200
    assert validate(sandbox, token).status == 200


def test_command_line_takes_both_limits() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "twitch_sandbox", "--port", str(port)]
    limits = ["--auth-rate-limit", "1/60", "--helix-rate-limit", "5/1"]
    with subprocess.Popen(
        command + limits, cwd=BASE_DIR, stdout=subprocess.PIPE, text=True
    ) as process:
        try:
            assert process.stdout is not None
            process.stdout.readline()  # listening
            statuses = [_validate_status(port) for _ in range(2)]
        finally:
            process.terminate()
            process.wait(timeout=5)
    bad = subprocess.run(
        [*command, "--auth-rate-limit", "5"],
        cwd=BASE_DIR,
        capture_output=True,
        text=True,
    )

    assert statuses == [401, 429]
    assert bad.returncode == 2
    assert "'5' is not POINTS/SECONDS" in bad.stderr


def _validate_status(port: int) -> int:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/oauth2/validate",
        headers={"Authorization": "OAuth x"},
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as error:
        with error:
            return error.code
