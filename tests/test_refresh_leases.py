"""One refresher per grant, and no rotated refresh token lost: leases, runs that
overlap, connections that change meanwhile, a database that refuses writes, runs
that are stopped or killed."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys

import pytest
from django.conf import settings
from django.core.management.base import CommandError
from django.db import DatabaseError, connections
from django.utils import timezone

from accounts import services, twitch
from accounts.models import TokenEvent, TwitchToken
from accounts.tokens import engine as refreshing
from accounts.tokens import results, store
from tests.conftest import (
    BASE_DIR,
    database_refuses_token_writes,
    database_write_lock,
    make_token,
    process_env,
)
from tests.refresh_helpers import expiring, refresh_tokens, wait_for

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch):
    monkeypatch.setattr(twitch.http, "RETRY_BASE_DELAY", 0.01)


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
        # While the refresh waits on Twitch.
        await asyncio.to_thread(sandbox.wait_for_request, "token")
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
        wait_for(
            lambda: (
                TwitchToken.objects.filter(claimed_until__isnull=False).count() == 10
            )
        )
        with database_write_lock():
            wait_for(lambda: sandbox.count("token") == 10)  # Twitch has answered
            # The run has kept the pairs in its spool and cannot store them.
            wait_for(lambda: spooled_pairs() == 10)
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


def spooled_pairs() -> int:
    """Token pairs in the spool's files, read or not."""
    return sum(
        len(path.read_bytes().splitlines())
        for path in settings.TOKEN_SPOOL_DIR.glob("*.spool")
    )


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
