"""`manage.py refresh_tokens` keeps every token alive, against the sandbox over HTTP."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from datetime import timedelta

import pytest
import time_machine
from django.core.management import call_command
from django.core.management.base import CommandError
from django.utils import timezone

from accounts import signals, twitch
from accounts.models import TokenEvent, TwitchToken
from tests.conftest import BASE_DIR, make_token, process_env

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch):
    monkeypatch.setattr(twitch, "RETRY_BASE_DELAY", 0.01)


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

    monkeypatch.setattr(twitch, "TIMEOUT", aiohttp.ClientTimeout(total=0.3))
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
    "args", [["--concurrency", "0"], ["--within", "-1"], ["--user", "nobody"]]
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
    from accounts import services

    token = expiring(make_token(alice, sandbox))
    (claimed,) = services._claim([token.pk], plan=services.Plan())
    # Site code (twitch_for) stores a fresh pair while the run holds the old one...
    fresh = sandbox.issue_tokens(login="alice", scopes=["chat:read"])
    TwitchToken.objects.filter(pk=token.pk).update(refresh_token=fresh["refresh_token"])
    # ...so Twitch's "invalid refresh token" for the old one means nothing.
    result = services._Result(
        token=claimed,
        lease=claimed.claimed_until,
        outcome=services.Outcome.NEEDS_RECONNECT,
        error="Invalid refresh token",
    )

    services._store_results([result], source=TokenEvent.Source.COMMAND, actor=None)

    token.refresh_from_db()
    assert token.status == TwitchToken.Status.ACTIVE
    assert token.refresh_token == fresh["refresh_token"]
    assert result.outcome is services.Outcome.SKIPPED


@pytest.mark.django_db(transaction=True)
async def test_a_token_revoked_during_its_refresh_stays_revoked_and_twitch_is_told(
    alice, sandbox
):
    import asyncio

    from asgiref.sync import sync_to_async

    from accounts import services

    token = await sync_to_async(lambda: expiring(make_token(alice, sandbox)))()
    sandbox.set_latency(0.3, endpoint="token")

    async def revoke_midway() -> None:
        await asyncio.sleep(0.1)
        await services.revoke_token(
            token=await TwitchToken.objects.aget(pk=token.pk),
            source=TokenEvent.Source.USER,
        )

    report, _ = await asyncio.gather(
        services.maintain_tokens(
            pks=[token.pk],
            plan=services.Plan(validate=False),
            source=TokenEvent.Source.COMMAND,
        ),
        revoke_midway(),
    )

    stored = await TwitchToken.objects.aget(pk=token.pk)
    assert stored.status == TwitchToken.Status.REVOKED
    assert stored.refresh_token == "" and stored.access_token == ""
    assert report.counts[services.Outcome.SKIPPED] == 1
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
