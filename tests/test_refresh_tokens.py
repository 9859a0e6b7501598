"""`manage.py refresh_tokens` keeps every token alive, against the sandbox over HTTP:
what it selects, what it prints, how it exits, and what the audit trail says."""

from __future__ import annotations

import contextlib
import io
import json
from datetime import timedelta

import pytest
import time_machine
from django.core.management import call_command
from django.core.management.base import CommandError
from django.utils import timezone

from accounts import signals, twitch
from accounts.models import TokenEvent, TwitchToken
from tests.conftest import (
    make_token,
)
from tests.refresh_helpers import expiring, refresh_tokens

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch):
    monkeypatch.setattr(twitch.http, "RETRY_BASE_DELAY", 0.01)


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


def test_verbosity_0_prints_nothing_when_all_went_well(alice, sandbox):
    expiring(make_token(alice, sandbox))
    assert refresh_tokens("--verbosity", "0") == ""
    assert refresh_tokens("--dry-run", "--verbosity", "0") == ""
    assert sandbox.count("token") == 1


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


@pytest.mark.parametrize("within", ["99999999999", "527041"])
def test_a_within_beyond_any_date_exits_2_with_a_clear_message(alice, within):
    with pytest.raises(CommandError, match="--within must be between") as failed:
        refresh_tokens("--within", within)
    assert failed.value.returncode == 2


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


def test_the_audit_trail_records_the_command_s_refreshes(alice, sandbox):
    token = expiring(make_token(alice, sandbox))
    refresh_tokens("--no-validate")
    event = TokenEvent.objects.get(token=token)
    assert (event.action, event.outcome, event.source) == (
        "refresh",
        "succeeded",
        "command",
    )


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
