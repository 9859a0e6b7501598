"""`manage.py refresh_tokens` keeps every token alive, against the sandbox over HTTP."""

from __future__ import annotations

import contextlib
import io
import json
import signal
import subprocess
import sys
import time
from datetime import timedelta

import pytest
import time_machine
from django.conf import settings
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import DatabaseError, connections
from django.utils import timezone

from accounts import services, signals, twitch
from accounts.models import TokenEvent, TwitchToken
from accounts.tokens import engine as refreshing
from accounts.tokens import replay, results, store
from tests.conftest import (
    BASE_DIR,
    database_refuses_token_writes,
    database_write_lock,
    make_token,
    process_env,
)

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch):
    monkeypatch.setattr(twitch.http, "RETRY_BASE_DELAY", 0.01)


def refresh_tokens(*args: str) -> str:
    out = io.StringIO()
    call_command("refresh_tokens", *args, stdout=out)
    return out.getvalue()


def expiring(token: TwitchToken, minutes: int = 10) -> TwitchToken:
    token.expires_at = timezone.now() + timedelta(minutes=minutes)
    token.save(update_fields=["expires_at"])
    return token


def test_refresh_stores_the_rotated_refresh_token_and_uses_it_next_time(alice, sandbox):
    token = expiring(make_token(alice, sandbox))
    first_refresh_token = token.refresh_token

    refresh_tokens()

    token.refresh_from_db()
    assert token.refresh_token != first_refresh_token
    assert not sandbox.is_refresh_token_valid(first_refresh_token)
    assert sandbox.is_refresh_token_valid(token.refresh_token)
    assert token.expires_at > timezone.now() + timedelta(hours=3)
    assert token.last_refreshed_at is not None
    second_refresh_token = token.refresh_token

    expiring(token)
    refresh_tokens()

    token.refresh_from_db()
    assert token.refresh_token not in (first_refresh_token, second_refresh_token)
    assert sandbox.is_refresh_token_valid(token.refresh_token)
    assert sandbox.count("token", grant_type="refresh_token") == 2
    assert token.status == TwitchToken.Status.ACTIVE


def test_refresh_sends_one_round_trip_per_token_with_secrets_in_the_body(
    alice, bob, sandbox
):
    expiring(make_token(alice, sandbox))
    expiring(make_token(bob, sandbox))

    refresh_tokens("--no-validate")

    refreshes = [r for r in sandbox.requests if r.endpoint == "token"]
    assert len(refreshes) == 2
    assert all(r.query == {} and r.form["client_secret"] for r in refreshes)


def test_tokens_far_from_expiry_are_left_alone(alice, sandbox):
    make_token(alice, sandbox)
    output = refresh_tokens()
    assert sandbox.count("token") == 0
    assert output.startswith("refreshed 0, validated 0")


def test_all_refreshes_every_active_token(alice, bob, sandbox):
    make_token(alice, sandbox)
    make_token(bob, sandbox, status=TwitchToken.Status.REVOKED)
    refresh_tokens("--all")
    assert sandbox.count("token", grant_type="refresh_token") == 1


def test_user_limits_the_run_to_those_users(alice, bob, sandbox):
    expiring(make_token(alice, sandbox))
    bobs = expiring(make_token(bob, sandbox))
    refresh_tokens("--user", "alice")
    bobs.refresh_from_db()
    assert bobs.last_refreshed_at is None
    assert sandbox.count("token") == 1


def test_an_invalid_refresh_token_needs_a_reconnect_and_is_not_tried_again(
    alice, sandbox
):
    token = expiring(make_token(alice, sandbox))
    sandbox.disconnect_user("alice")
    heard = []
    signals.token_needs_reconnect.connect(
        lambda sender, token, **kw: heard.append(token.pk), weak=False
    )
    try:
        output = refresh_tokens()
    finally:
        signals.token_needs_reconnect.receivers.clear()

    token.refresh_from_db()
    assert token.status == TwitchToken.Status.NEEDS_RECONNECT
    assert "Invalid refresh token" in token.last_error
    assert "needs reconnect 1" in output
    assert heard == [token.pk]
    assert sandbox.count("token") == 1

    refresh_tokens()
    assert sandbox.count("token") == 1


@pytest.mark.parametrize(
    "fault",
    [
        lambda sandbox: sandbox.fail("token", status=500),
        lambda sandbox: sandbox.fail("token", status=200, body="<html>oops</html>"),
        lambda sandbox: sandbox.rate_limit("token", times=100, reset_in=0.05),
    ],
    ids=["500", "garbage", "429"],
)
def test_transient_failures_are_retried_then_exit_1_with_the_token_intact(
    alice, sandbox, fault
):
    token = expiring(make_token(alice, sandbox))
    fault(sandbox)

    with pytest.raises(CommandError) as failed:
        refresh_tokens("--no-validate")

    assert failed.value.returncode == 1
    assert sandbox.count("token") == 3  # three attempts
    stored = TwitchToken.objects.get(pk=token.pk)
    assert stored.refresh_token == token.refresh_token
    assert stored.status == TwitchToken.Status.ACTIVE
    assert stored.claimed_until is None
    assert sandbox.is_refresh_token_valid(stored.refresh_token)


def test_a_timeout_is_retried_and_a_later_success_is_stored(
    alice, sandbox, monkeypatch
):
    import aiohttp

    monkeypatch.setattr(twitch.http, "TIMEOUT", aiohttp.ClientTimeout(total=0.3))
    token = expiring(make_token(alice, sandbox))
    sandbox.hang("token", times=1)

    output = refresh_tokens("--no-validate")

    assert output.startswith("refreshed 1,")
    token.refresh_from_db()
    assert sandbox.is_refresh_token_valid(token.refresh_token)
    assert sandbox.count("token") == 2


def test_a_rate_limit_is_waited_out(alice, sandbox):
    expiring(make_token(alice, sandbox))
    sandbox.rate_limit("token", times=1, reset_in=0.2)
    assert refresh_tokens("--no-validate").startswith("refreshed 1,")


def test_tokens_are_validated_hourly(alice, sandbox):
    token = make_token(alice, sandbox)
    refresh_tokens()
    assert sandbox.count("validate") == 0

    with time_machine.travel(timezone.now() + timedelta(minutes=61), tick=True):
        output = refresh_tokens()
        token.refresh_from_db()
        assert token.last_validated_at > timezone.now() - timedelta(minutes=1)

    assert "validated 1" in output
    validate = next(r for r in sandbox.requests if r.endpoint == "validate")
    assert validate.headers["Authorization"] == f"OAuth {token.access_token}"
    assert TokenEvent.objects.filter(action="validate", outcome="succeeded").exists()


def test_a_token_that_fails_validation_is_refreshed(alice, sandbox):
    token = make_token(alice, sandbox, last_validated_at=None)
    sandbox.expire_access_tokens("alice")

    output = refresh_tokens("--validate-only")

    token.refresh_from_db()
    assert output.startswith("refreshed 1,")
    assert sandbox.is_access_token_valid(token.access_token)
    assert token.status == TwitchToken.Status.ACTIVE


def test_no_validate_skips_validation(alice, sandbox):
    make_token(alice, sandbox, last_validated_at=None)
    refresh_tokens("--no-validate")
    assert sandbox.count("validate") == 0


def test_dry_run_changes_nothing_and_calls_nobody(alice, bob, sandbox):
    token = expiring(make_token(alice, sandbox))
    make_token(bob, sandbox, last_validated_at=None)

    output = refresh_tokens("--dry-run")

    assert output.strip() == "dry run: would refresh 1, validate 1"
    assert sandbox.requests == []
    stored = TwitchToken.objects.get(pk=token.pk)
    assert (stored.refresh_token, stored.updated_at) == (
        token.refresh_token,
        token.updated_at,
    )


def test_json_prints_the_summary_as_one_object(alice, sandbox):
    expiring(make_token(alice, sandbox))
    summary = json.loads(refresh_tokens("--json"))
    assert summary["refreshed"] == 1 and summary["failed"] == 0
    assert set(summary) >= {"refreshed", "needs_reconnect", "skipped", "seconds"}


def test_a_person_at_a_terminal_sees_a_progress_bar(alice, bob, sandbox):
    expiring(make_token(alice, sandbox))
    expiring(make_token(bob, sandbox))

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    out = Terminal()
    call_command("refresh_tokens", stdout=out)
    assert "[" + "#" * 30 + "] 2/2" in out.getvalue()
    assert "refreshed 2," in out.getvalue()


@pytest.mark.parametrize(
    "args",
    [
        ["--concurrency", "0"],
        ["--within", "-1"],
        ["--user", "nobody"],
        ["--all", "--validate-only"],
    ],
)
def test_bad_arguments_exit_2_with_a_clear_message(alice, args):
    with pytest.raises(CommandError) as failed:
        refresh_tokens(*args)
    assert failed.value.returncode == 2


def test_the_audit_trail_records_the_command_s_refreshes(alice, sandbox):
    token = expiring(make_token(alice, sandbox))
    refresh_tokens("--no-validate")
    event = TokenEvent.objects.get(token=token)
    assert (event.action, event.outcome, event.source) == (
        "refresh",
        "succeeded",
        "command",
    )


@pytest.mark.django_db(transaction=True)
def test_four_runs_at_once_refresh_each_token_exactly_once(django_user_model, sandbox):
    tokens = [
        expiring(make_token(django_user_model.objects.create_user(f"u{n}"), sandbox))
        for n in range(40)
    ]
    sandbox.set_latency(0.05)
    env = process_env(sandbox)
    command = [sys.executable, "manage.py", "refresh_tokens", "--concurrency", "4"]
    runs = [
        subprocess.Popen(command, cwd=BASE_DIR, env=env, stdout=subprocess.PIPE)
        for _ in range(4)
    ]
    outputs = [run.communicate(timeout=120)[0].decode() for run in runs]

    assert [run.returncode for run in runs] == [0] * 4, outputs
    assert sandbox.count("token", grant_type="refresh_token") == 40
    for token in tokens:
        token.refresh_from_db()
        assert sandbox.is_refresh_token_valid(token.refresh_token)
        assert token.claimed_until is None
    refreshed = sum(int(out.split("refreshed ")[1].split(",")[0]) for out in outputs)
    assert refreshed == 40


def test_a_rejection_after_an_unanswered_attempt_is_not_taken_for_a_dead_connection(
    alice, sandbox
):
    # The first attempt may have rotated the token at Twitch before its answer
    # was lost; only a later run that gets a clear "invalid" gives up on it.
    token = expiring(make_token(alice, sandbox))
    sandbox.disconnect_user("alice")
    sandbox.fail("token", status=502, times=1)

    with pytest.raises(CommandError):
        refresh_tokens("--no-validate")
    token.refresh_from_db()
    assert token.status == TwitchToken.Status.ACTIVE

    refresh_tokens("--no-validate")
    token.refresh_from_db()
    assert token.status == TwitchToken.Status.NEEDS_RECONNECT


def test_a_token_refreshed_by_site_code_meanwhile_is_not_marked_needs_reconnect(
    alice, sandbox
):
    token = expiring(make_token(alice, sandbox))
    (claimed,) = store.claim([token.pk], plan=refreshing.Plan())
    # Site code (twitch_for) stores a fresh pair while the run holds the old one...
    fresh = sandbox.issue_tokens(login="alice", scopes=["chat:read"])
    TwitchToken.objects.filter(pk=token.pk).update(refresh_token=fresh["refresh_token"])
    # ...so Twitch's "invalid refresh token" for the old one means nothing.
    findings = results.Findings(
        results.Verdict.DEAD_GRANT,
        refresh=TokenEvent.Outcome.REJECTED,
        error="Invalid refresh token",
    )
    result = results.Result(claimed, claimed.claimed_until, findings)

    (stored,) = store.store_results(
        [result], source=TokenEvent.Source.COMMAND, actor=None
    )

    token.refresh_from_db()
    assert token.status == TwitchToken.Status.ACTIVE
    assert token.refresh_token == fresh["refresh_token"]
    assert results.outcome(findings, stored) is results.Outcome.SKIPPED


@pytest.mark.django_db(transaction=True)
async def test_a_token_revoked_during_its_refresh_stays_revoked_and_twitch_is_told(
    alice, sandbox
):
    import asyncio

    from asgiref.sync import sync_to_async

    token = await sync_to_async(lambda: expiring(make_token(alice, sandbox)))()
    sandbox.set_latency(0.3, endpoint="token")

    async def revoke_midway() -> None:
        await asyncio.sleep(0.1)
        await services.revoke_token(
            token=await TwitchToken.objects.aget(pk=token.pk),
            source=TokenEvent.Source.USER,
        )

    report, _ = await asyncio.gather(
        refreshing.amaintain_tokens(
            pks=[token.pk],
            plan=refreshing.Plan(validate=False),
            source=TokenEvent.Source.COMMAND,
        ),
        revoke_midway(),
    )

    stored = await TwitchToken.objects.aget(pk=token.pk)
    assert stored.status == TwitchToken.Status.REVOKED
    assert stored.refresh_token == "" and stored.access_token == ""
    assert report.counts[refreshing.Outcome.SKIPPED] == 1
    # The pair Twitch issued for the refresh was revoked rather than left alive.
    revoked = [r.form["token"] for r in sandbox.requests if r.endpoint == "revoke"]
    assert len(revoked) == 2
    assert not any(sandbox.is_access_token_valid(t) for t in revoked)


def test_an_undecryptable_token_fails_without_stopping_the_others(
    alice, bob, sandbox, settings
):
    from cryptography.fernet import Fernet

    lost = expiring(make_token(alice, sandbox))
    fine = expiring(make_token(bob, sandbox))
    new_key = Fernet.generate_key().decode()
    old_key = settings.TOKEN_ENCRYPTION_KEYS[0]
    settings.TOKEN_ENCRYPTION_KEYS = [new_key, old_key]
    fine.save()  # re-encrypted with the new key
    settings.TOKEN_ENCRYPTION_KEYS = [new_key]  # the old key removed too soon

    with pytest.raises(CommandError) as failed:
        refresh_tokens("--no-validate")

    assert failed.value.returncode == 1
    assert sandbox.count("token") == 1
    lost = TwitchToken.objects.get(pk=lost.pk)
    assert lost.status == TwitchToken.Status.ACTIVE
    assert "TOKEN_ENCRYPTION_KEYS" in lost.last_error
    assert lost.claimed_until is None
    settings.TOKEN_ENCRYPTION_KEYS = [new_key, old_key]  # the key comes back...
    restored = TwitchToken.objects.get(pk=lost.pk)  # ...and so does the token
    assert sandbox.is_refresh_token_valid(restored.refresh_token)


# --- Twitch as strict and odd as it really is ---------------------------------------

FAKE_ACCESS, FAKE_REFRESH = "a" * 30, "b" * 50
# Answers without a usable refresh token: retried like any nonsense, three attempts.
UNUSABLE_ANSWERS = {
    "refresh-token-number": {"access_token": FAKE_ACCESS, "refresh_token": 12345},
    "refresh-token-missing": {"access_token": FAKE_ACCESS, "expires_in": 14400},
    "refresh-token-with-nul": {"access_token": FAKE_ACCESS, "refresh_token": "a\u0000"},
    "a-list": [1, 2, 3],
}
# A refresh token but no usable access token: the refresh token is presented next.
PARTIAL_ANSWERS = {
    "access-token-null": {"access_token": None, "refresh_token": FAKE_REFRESH},
    "access-token-empty": {"access_token": "", "refresh_token": FAKE_REFRESH},
    "access-token-with-nul": {
        "access_token": "ab\u0000cd",
        "refresh_token": FAKE_REFRESH,
    },
}
# Well-formed tokens with a useless lifetime: validating the access token says
# whether Twitch really issued them (here it did not), so they are not retried.
USELESS_LIFETIMES = {"expires-in-huge": 1e15, "expires-in-negative": -5}
USELESS_LIFETIMES["expires-in-a-string"] = "soon"
MALFORMED_ANSWERS = {
    **{name: (body, 3) for name, body in UNUSABLE_ANSWERS.items()},
    **{
        name: (
            {
                "access_token": FAKE_ACCESS,
                "refresh_token": FAKE_REFRESH,
                "expires_in": lifetime,
            },
            1,
        )
        for name, lifetime in USELESS_LIFETIMES.items()
    },
}


@pytest.mark.parametrize(
    ("answer", "times"), MALFORMED_ANSWERS.values(), ids=MALFORMED_ANSWERS
)
def test_a_malformed_token_answer_costs_only_that_token(
    django_user_model, sandbox, answer, times
):
    first, *others = [
        expiring(
            make_token(django_user_model.objects.create_user(f"u{n}"), sandbox),
            minutes=10 + n,
        )
        for n in range(3)
    ]
    sandbox.fail("token", status=200, body=answer, times=times)

    with pytest.raises(CommandError) as failed:
        refresh_tokens("--no-validate", "--concurrency", "1")

    assert failed.value.returncode == 1
    stored = TwitchToken.objects.get(pk=first.pk)
    assert stored.refresh_token == first.refresh_token
    assert sandbox.is_refresh_token_valid(stored.refresh_token)
    assert stored.status == TwitchToken.Status.ACTIVE and stored.last_error
    for token in others:
        token.refresh_from_db()
        assert sandbox.is_refresh_token_valid(token.refresh_token)
        assert token.last_refreshed_at is not None
    assert not TwitchToken.objects.filter(claimed_until__isnull=False).exists()


@pytest.mark.parametrize("answer", PARTIAL_ANSWERS.values(), ids=PARTIAL_ANSWERS)
def test_a_refresh_token_twitch_never_issued_is_found_out_and_ours_refreshed(
    alice, sandbox, answer
):
    token = expiring(make_token(alice, sandbox))
    sandbox.fail("token", status=200, body=answer, times=1)

    output = refresh_tokens("--no-validate")

    # Presented, the sent refresh token was refused: ours was never rotated, so
    # it was presented again, for a real pair.
    assert output.startswith("refreshed 1,")
    # Named, not printed, should this fail: they are credentials.
    names = {token.refresh_token: "ours", FAKE_REFRESH: "sent"}
    presented = [names.get(r.form["refresh_token"], "other") for r in sandbox.requests]
    assert presented == ["ours", "sent", "ours"]
    token.refresh_from_db()
    assert sandbox.is_refresh_token_valid(token.refresh_token)


def follow_up_fails(sandbox) -> None:
    sandbox.alter("token", set={"access_token": None}, times=1)  # rotated for real
    sandbox.fail("token", status=503, times=1)  # the follow-up


def every_answer_partial(sandbox) -> None:
    sandbox.alter("token", set={"access_token": None}, times=3)  # each for real


@pytest.mark.parametrize(
    ("faults", "requests"), [(follow_up_fails, 2), (every_answer_partial, 3)]
)
def test_a_follow_up_that_fails_keeps_the_newest_refresh_token_for_the_next_run(
    alice, sandbox, faults, requests
):
    token = expiring(make_token(alice, sandbox))
    faults(sandbox)

    with pytest.raises(CommandError):
        refresh_tokens("--no-validate")

    # Not the old one again (Twitch would end the grant): the newest, due now.
    kept = TwitchToken.objects.get(pk=token.pk)
    assert kept.refresh_token != token.refresh_token
    assert sandbox.is_refresh_token_valid(kept.refresh_token)
    assert kept.access_token == "" and kept.expires_at <= timezone.now()
    assert "no usable access token" in kept.last_error
    assert sandbox.count("token") == requests

    assert refresh_tokens("--no-validate").startswith("refreshed 1,")
    kept.refresh_from_db()
    assert sandbox.is_refresh_token_valid(kept.refresh_token)
    assert kept.access_token in sandbox.live_tokens(kept.login).access


def test_a_later_refused_follow_up_does_not_present_the_spent_refresh_token_again(
    alice, sandbox
):
    token = expiring(make_token(alice, sandbox))
    sandbox.alter("token", set={"access_token": None}, times=1)  # rotated for real
    # So was the one it sent, but what came back is not Twitch's:
    sandbox.alter(
        "token", set={"access_token": None, "refresh_token": FAKE_REFRESH}, times=1
    )

    with pytest.raises(CommandError):
        refresh_tokens("--no-validate")

    assert sandbox.count("token") == 3  # not a fourth, with the spent one
    assert sandbox.live_tokens(token.login).refresh  # the grant itself lives on
    token.refresh_from_db()
    assert token.status == TwitchToken.Status.ACTIVE and token.last_error


def test_an_error_while_storing_one_result_keeps_every_other_rotated_token(
    alice, bob, sandbox, monkeypatch
):
    alices, bobs = (
        expiring(make_token(alice, sandbox)),
        expiring(make_token(bob, sandbox)),
    )
    changes = store.changes_for

    def changes_but_choke_on_alice(result, **kwargs):
        if result.token.pk == alices.pk:
            raise RuntimeError("a bug while storing")
        return changes(result, **kwargs)

    monkeypatch.setattr(store, "changes_for", changes_but_choke_on_alice)
    with pytest.raises(CommandError):
        refresh_tokens("--no-validate")

    bobs.refresh_from_db()
    assert sandbox.is_refresh_token_valid(bobs.refresh_token)
    assert bobs.claimed_until is None
    # Alice's new pair could not be written: it waits in the spool, and her lease
    # stays so nobody presents her old refresh token meanwhile.
    assert list(settings.TOKEN_SPOOL_DIR.glob("*.spool"))
    alices.refresh_from_db()
    assert alices.claimed_until is not None

    monkeypatch.undo()
    refresh_tokens("--no-validate")  # the next run stores it before anything else

    alices.refresh_from_db()
    assert sandbox.is_refresh_token_valid(alices.refresh_token)
    assert alices.status == TwitchToken.Status.ACTIVE
    assert alices.claimed_until is None
    assert sandbox.count("token", grant_type="refresh_token") == 2
    assert not list(settings.TOKEN_SPOOL_DIR.glob("*.spool"))


@pytest.mark.django_db(transaction=True)
def test_rotated_tokens_survive_kill_9_while_the_database_refuses_writes(
    django_user_model, sandbox
):
    tokens = [
        expiring(make_token(django_user_model.objects.create_user(f"u{n}"), sandbox))
        for n in range(10)
    ]
    sandbox.set_latency(1.0, endpoint="token")
    command = [sys.executable, "manage.py", "refresh_tokens", "--no-validate"]
    run = subprocess.Popen(command, cwd=BASE_DIR, env=process_env(sandbox))
    try:
        _wait_for(
            lambda: (
                TwitchToken.objects.filter(claimed_until__isnull=False).count() == 10
            )
        )
        with database_write_lock():
            _wait_for(lambda: sandbox.count("token") == 10)  # Twitch has answered
            time.sleep(0.5)  # the run holds the pairs and cannot store them
            run.send_signal(signal.SIGKILL)
            run.wait(timeout=10)
            assert (
                TwitchToken.objects.filter(last_refreshed_at__isnull=False).count() == 0
            )
    finally:
        if run.poll() is None:
            run.kill()
    sandbox.set_latency(0)

    output = refresh_tokens("--no-validate")  # the next run, as cron starts it

    assert output.startswith("refreshed 0,")  # nothing left to refresh
    for token in tokens:
        stored = TwitchToken.objects.get(pk=token.pk)
        assert stored.status == TwitchToken.Status.ACTIVE
        assert stored.refresh_token != token.refresh_token
        assert sandbox.is_refresh_token_valid(stored.refresh_token)
        assert stored.claimed_until is None
    presented = [
        r.form["refresh_token"] for r in sandbox.requests if r.endpoint == "token"
    ]
    assert len(presented) == len(set(presented)) == 10
    assert TokenEvent.objects.filter(detail__contains="spool").count() == 10


def _wait_for(condition, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.05)


@pytest.mark.parametrize("every", [10, 15])
def test_with_cron_every_10_or_15_minutes_no_token_goes_an_hour_unvalidated(
    django_user_model, sandbox, every
):
    start = timezone.now()
    with time_machine.travel(start, tick=False) as clock:
        for n in range(6):
            # Tokens connected at different moments of the cron cycle.
            make_token(django_user_model.objects.create_user(f"u{n}"), sandbox)
            clock.shift(timedelta(minutes=every / 6))
        for _ in range(6 * 60 // every):
            refresh_tokens()
            clock.shift(timedelta(minutes=every))

    validations: dict[str, list[float]] = {}
    for request in sandbox.requests:
        if request.endpoint == "validate":
            token = request.headers["Authorization"].split()[1]
            user = sandbox.user_for_access_token(token)
            validations.setdefault(user.login, []).append(request.at)
    assert len(validations) == 6
    for login, times in validations.items():
        connected = TwitchToken.objects.get(login=login).created_at.timestamp()
        moments = [connected, *times]
        longest = max(b - a for a, b in zip(moments, moments[1:], strict=False))
        assert longest <= 60 * 60, f"{login}: {longest / 60:.0f} minutes"
    assert sandbox.count("token", grant_type="refresh_token") >= 6  # and refreshed


def test_a_refresh_answer_without_expires_in_takes_the_expiry_from_validation(
    alice, sandbox
):
    token = expiring(make_token(alice, sandbox))
    sandbox.alter("token", remove=["expires_in"])

    output = refresh_tokens("--no-validate")

    assert output.startswith("refreshed 1,")
    token.refresh_from_db()
    assert sandbox.is_refresh_token_valid(token.refresh_token)
    assert token.expires_at > timezone.now() + timedelta(hours=3)
    assert sandbox.count("validate") == 1  # the new token, to learn its lifetime


def test_a_refresh_answer_with_unreadable_scopes_keeps_the_new_pair(alice, sandbox):
    # Twitch rotated the refresh token: asking again with the old one would end
    # the grant. The pair is kept; validation says which scopes the token has.
    token = expiring(make_token(alice, sandbox))
    sandbox.alter("token", set={"scope": {"not": "a list"}}, times=1)

    output = refresh_tokens("--no-validate")

    assert output.startswith("refreshed 1,")
    token.refresh_from_db()
    assert sandbox.is_refresh_token_valid(token.refresh_token)
    assert token.scopes == ["chat:read"]
    assert sandbox.count("token") == 1
    assert sandbox.count("validate") == 1  # the new token, to learn its scopes


def test_a_refresh_answer_without_an_access_token_is_followed_up_with_its_refresh_token(
    alice, sandbox
):
    # The old refresh token may be rotated away already; the new one is what to
    # present, and Twitch's answer to it says whether it was Twitch's at all.
    token = expiring(make_token(alice, sandbox))
    sandbox.alter("token", set={"access_token": None}, times=1)

    output = refresh_tokens("--no-validate")

    assert output.startswith("refreshed 1,")
    token.refresh_from_db()
    assert sandbox.is_refresh_token_valid(token.refresh_token)
    assert sandbox.count("token", grant_type="refresh_token") == 2
    assert sandbox.refresh_count(token.refresh_token) == 2  # one grant, no reuse


def test_a_token_that_does_not_expire_is_never_refreshed_in_a_loop(alice, sandbox):
    token = make_token(alice, sandbox, last_validated_at=None)
    sandbox.alter("validate", set={"expires_in": 0})

    refresh_tokens()
    token.refresh_from_db()
    assert token.expires_at is None  # Twitch says it does not expire

    for _ in range(3):
        refresh_tokens()
    with time_machine.travel(timezone.now() + timedelta(minutes=45), tick=True):
        assert "validated 1" in refresh_tokens()
    assert sandbox.count("token") == 0


def test_validation_follows_a_renamed_twitch_account_and_its_scopes(alice, sandbox):
    token = make_token(alice, sandbox, last_validated_at=None)
    sandbox.alter("validate", set={"login": "alice_renamed", "scopes": None})

    refresh_tokens("--validate-only")

    token.refresh_from_db()
    assert (token.login, token.scopes) == ("alice_renamed", [])


@pytest.mark.parametrize("within", ["99999999999", "527041"])
def test_a_within_beyond_any_date_exits_2_with_a_clear_message(alice, within):
    with pytest.raises(CommandError, match="--within must be between") as failed:
        refresh_tokens("--within", within)
    assert failed.value.returncode == 2


@pytest.mark.django_db(transaction=True)
def test_no_new_refresh_starts_while_the_database_refuses_to_store_them(
    django_user_model, sandbox, monkeypatch
):
    monkeypatch.setattr(refreshing, "FLUSH_EVERY", 0.02)
    monkeypatch.setattr(refreshing, "STORE_PATIENCE", 0.2)
    tokens = [
        expiring(make_token(django_user_model.objects.create_user(f"u{n}"), sandbox))
        for n in range(30)
    ]
    sandbox.set_latency(0.05, endpoint="token")

    with (
        database_refuses_token_writes(only_column="refresh_token"),
        pytest.raises(CommandError, match="kept in TOKEN_SPOOL_DIR") as failed,
    ):
        refresh_tokens("--no-validate", "--concurrency", "2")
    assert failed.value.returncode == 1
    started = sandbox.count("token")
    assert started <= 6, f"{started} refreshes began while nothing could be stored"

    sandbox.set_latency(0)
    refresh_tokens("--no-validate")

    presented = [
        r.form["refresh_token"] for r in sandbox.requests if r.endpoint == "token"
    ]
    assert len(presented) == len(set(presented)) == 30
    for token in tokens:
        stored = TwitchToken.objects.get(pk=token.pk)
        assert stored.status == TwitchToken.Status.ACTIVE
        assert sandbox.is_refresh_token_valid(stored.refresh_token)


# --- The audit trail says which duty went how ---------------------------------------

DUTY_CASES = {
    "refresh-succeeds": (
        "expiring",
        True,
        lambda sandbox: None,
        [("refresh", "succeeded")],
        TwitchToken.Status.ACTIVE,
    ),
    "validation-succeeds": (
        "fresh",
        False,
        lambda sandbox: None,
        [("validate", "succeeded")],
        TwitchToken.Status.ACTIVE,
    ),
    "validation-401-then-refresh": (
        "fresh",
        False,
        lambda sandbox: sandbox.expire_access_tokens("alice"),
        [("validate", "rejected"), ("refresh", "succeeded")],
        TwitchToken.Status.ACTIVE,
    ),
    "validation-401-then-refresh-rejected": (
        "fresh",
        False,
        lambda sandbox: sandbox.disconnect_user("alice"),
        [("validate", "rejected"), ("refresh", "rejected")],
        TwitchToken.Status.NEEDS_RECONNECT,
    ),
    "validation-unavailable": (
        "fresh",
        False,
        lambda sandbox: sandbox.fail("validate", status=503),
        [("validate", "unavailable")],
        TwitchToken.Status.ACTIVE,
    ),
    "refresh-unavailable": (
        "expiring",
        True,
        lambda sandbox: sandbox.fail("token", status=503),
        [("refresh", "unavailable")],
        TwitchToken.Status.ACTIVE,
    ),
    "refresh-rejected-after-a-lost-answer": (
        "expiring",
        True,
        lambda sandbox: (
            sandbox.disconnect_user("alice"),
            sandbox.fail("token", status=502, times=1),
        ),
        [("refresh", "rejected")],
        TwitchToken.Status.ACTIVE,  # may have rotated: not proof of a dead grant
    ),
}


@pytest.mark.parametrize(
    ("expiry", "validated", "twitch_does", "events", "status"),
    DUTY_CASES.values(),
    ids=DUTY_CASES,
)
def test_the_audit_trail_names_each_duty_and_how_it_went(
    alice, sandbox, expiry, validated, twitch_does, events, status
):
    token = make_token(alice, sandbox)
    if expiry == "expiring":
        expiring(token)
    if not validated:
        TwitchToken.objects.filter(pk=token.pk).update(last_validated_at=None)
    twitch_does(sandbox)

    with contextlib.suppress(CommandError):
        refresh_tokens()

    recorded = TokenEvent.objects.filter(token=token).order_by("pk")
    assert [(e.action, e.outcome) for e in recorded] == events
    assert all(e.detail for e in recorded if e.outcome != "succeeded")
    assert TwitchToken.objects.get(pk=token.pk).status == status


@pytest.mark.parametrize("due", ["refresh", "validation"])
def test_an_undecryptable_token_is_recorded_as_such_not_as_twitch_failing(
    alice, sandbox, settings, due
):
    from cryptography.fernet import Fernet

    token = make_token(alice, sandbox)
    if due == "refresh":
        expiring(token)
    else:
        TwitchToken.objects.filter(pk=token.pk).update(last_validated_at=None)
    settings.TOKEN_ENCRYPTION_KEYS = [Fernet.generate_key().decode()]
    errors = io.StringIO()

    with pytest.raises(CommandError, match="TOKEN_ENCRYPTION_KEYS"):
        call_command("refresh_tokens", stdout=io.StringIO(), stderr=errors)

    assert "cannot decrypt: check TOKEN_ENCRYPTION_KEYS" in errors.getvalue()
    assert "Twitch failed" not in errors.getvalue()

    event = TokenEvent.objects.get(token=token)
    action = "refresh" if due == "refresh" else "validate"
    assert (event.action, event.outcome) == (action, "undecryptable")
    assert sandbox.requests == []


def test_which_tokens_are_due_is_one_rule_for_queries_and_rows(
    django_user_model, sandbox
):
    now = timezone.now()
    moments = [None, now - timedelta(hours=2), now, now + timedelta(minutes=30)]
    moments += [now + timedelta(hours=3)]
    for n, moment in enumerate(moments):
        make_token(
            django_user_model.objects.create_user(f"u{n}"),
            sandbox,
            expires_at=moment,
            last_validated_at=moment and moment - timedelta(hours=2),
        )
    tokens = TwitchToken.objects.all()

    for within in (None, timedelta(0), timedelta(minutes=60)):
        assert set(tokens.due_for_refresh(within=within, now=now)) == {
            t for t in tokens if t.is_due_for_refresh(within=within, now=now)
        }
    for after in (None, timedelta(minutes=40), timedelta(hours=3)):
        assert set(tokens.due_for_validation(after=after, now=now)) == {
            t for t in tokens if t.is_due_for_validation(after=after, now=now)
        }


def test_verbosity_0_prints_nothing_when_all_went_well(alice, sandbox):
    expiring(make_token(alice, sandbox))
    assert refresh_tokens("--verbosity", "0") == ""
    assert refresh_tokens("--dry-run", "--verbosity", "0") == ""
    assert sandbox.count("token") == 1


# --- A rotated pair is never only in memory ------------------------------------------


@pytest.mark.django_db(transaction=True)
async def test_a_run_stopped_while_validating_a_new_pair_keeps_it_for_the_next(
    alice, sandbox
):
    import asyncio

    from asgiref.sync import sync_to_async

    token = await sync_to_async(
        lambda: expiring(make_token(alice, sandbox, last_validated_at=None))
    )()
    sandbox.hang("validate")  # the follow-up validation never answers
    run = asyncio.create_task(
        refreshing.amaintain_tokens(
            pks=[token.pk], plan=refreshing.Plan(), source=TokenEvent.Source.COMMAND
        )
    )
    while sandbox.count("token") == 0:
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.1)
    run.cancel()  # a deploy, a dropped request, a kill: Twitch has rotated
    with contextlib.suppress(asyncio.CancelledError):
        await run
    sandbox.clear_faults()

    await replay.areplay_spool(source=TokenEvent.Source.COMMAND)

    stored = await TwitchToken.objects.aget(pk=token.pk)
    assert stored.refresh_token != token.refresh_token
    assert sandbox.is_refresh_token_valid(stored.refresh_token)
    assert stored.claimed_until is None


def test_a_claim_that_fails_midway_still_stores_what_was_refreshed(
    django_user_model, sandbox, monkeypatch
):
    tokens = [
        expiring(make_token(django_user_model.objects.create_user(f"u{n}"), sandbox))
        for n in range(15)
    ]
    claim, calls = store.claim, []

    def claim_then_fail(pks, **kwargs):
        calls.append(pks)
        if len(calls) > 1:
            raise DatabaseError("the database went away")
        return claim(pks, **kwargs)

    monkeypatch.setattr(store, "claim", claim_then_fail)
    with pytest.raises(CommandError):
        refresh_tokens("--no-validate", "--concurrency", "1")

    # Every refresh Twitch answered is stored: the first batch's, all or (when the
    # failing claim came before the last of them started) all but the last.
    refreshed = TwitchToken.objects.filter(last_refreshed_at__isnull=False)
    assert refreshed.count() == sandbox.count("token") in (9, 10)
    for token in TwitchToken.objects.all():
        assert sandbox.is_refresh_token_valid(token.refresh_token)
        assert token.claimed_until is None
    assert len(tokens) - refreshed.count() >= 5


@pytest.mark.django_db(transaction=True)
def test_given_up_results_do_not_stall_the_run(django_user_model, sandbox, monkeypatch):
    import threading

    tokens = [
        expiring(make_token(django_user_model.objects.create_user(f"u{n}"), sandbox))
        for n in range(4)
    ]
    monkeypatch.setattr(refreshing, "MAX_UNSTORED", 1)
    monkeypatch.setattr(
        store,
        "changes_for",
        lambda result, **kwargs: (_ for _ in ()).throw(RuntimeError("a bug")),
    )
    done = threading.Event()

    def run() -> None:
        try:
            with contextlib.suppress(CommandError):
                refresh_tokens("--no-validate", "--concurrency", "1")
            done.set()
        finally:
            connections.close_all()  # this thread's own connection

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    assert done.wait(20), "the run hung"
    # Every pair is kept for the next run, its token pinned meanwhile.
    assert all(
        TwitchToken.objects.get(pk=t.pk).claimed_until > timezone.now() for t in tokens
    )
