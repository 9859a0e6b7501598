"""EventSub messages are kept, answered at once, and handled after the answer,
exactly once: by the process that answered, or by `manage.py eventsub process`
when it failed or died first."""

from __future__ import annotations

import asyncio
import io
import os
import time
from datetime import timedelta
from pathlib import Path

import pytest
import time_machine
from asgiref.sync import sync_to_async
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection
from django.utils import timezone

from accounts import background, signals
from accounts.eventsub import Notification, handlers, inbox, on_event
from accounts.models import EventSubMessage, TokenEvent, TwitchToken
from tests.conftest import (
    database_write_lock,
    impatient_database,
    listening,
    make_token,
    page,
)
from tests.test_eventsub import (
    amake_token,
    answer,
    eventsub_on,
    post,
    process,
    revoke_notification,
    signed,
)

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("eventsub_on"),
]
__all__ = ["eventsub_on"]


def stream_online(user_id: str) -> dict:
    return {
        "subscription": {
            "id": "sub-2",
            "status": "enabled",
            "type": "stream.online",
            "version": "1",
            "condition": {"broadcaster_user_id": user_id},
            "transport": {"method": "webhook", "callback": "https://testserver/"},
        },
        "event": {"id": "9001", "broadcaster_user_id": user_id, "type": "live"},
    }


@pytest.fixture
def registered():
    """Handlers a test registers are forgotten after it."""
    added = []

    def register(event_type, handler):
        on_event(event_type)(handler)
        added.append(handler)
        return handler

    yield register
    for handler in added:
        handlers.forget(handler)


async def test_a_slow_handler_does_not_delay_the_answer(alice, sandbox, registered):
    token = await amake_token(alice, sandbox)
    heard = []

    async def slow(notification: Notification) -> None:
        await asyncio.sleep(2)
        heard.append((notification.event["type"], notification.connection))

    registered("stream.online", slow)
    started = time.monotonic()
    response = await answer(*signed(stream_online(token.twitch_user_id)))

    assert response.status_code == 204
    assert time.monotonic() - started < 0.5
    assert heard == []
    await background.finish_background_work()
    assert heard == [("live", token)]
    assert (await EventSubMessage.objects.aget()).status == "handled"


async def test_a_process_that_dies_after_the_answer_loses_nothing(alice, sandbox):
    token = await amake_token(alice, sandbox)
    raw, headers = signed(revoke_notification(token.twitch_user_id))

    assert (await answer(raw, headers)).status_code == 204
    background.cancel_background_work()  # the process dies before handling it
    await background.finish_background_work()
    assert (await TwitchToken.objects.aget()).status == TwitchToken.Status.ACTIVE
    assert (await EventSubMessage.objects.aget()).status == "pending"

    # Cron, once the dead process's claim on it (if it had one) has run out.
    with time_machine.travel(time.time() + inbox.LEASE.total_seconds() + 1):
        assert (await process()).startswith("1 handled")
        assert (await process()).startswith("0 handled")
    assert (await TwitchToken.objects.aget()).status == TwitchToken.Status.REVOKED
    assert await TokenEvent.objects.filter(source="twitch").acount() == 1


async def test_a_message_delivered_twice_at_once_is_handled_once(
    alice, sandbox, registered
):
    token = await amake_token(alice, sandbox)
    heard = []
    registered("stream.online", lambda notification: heard.append(notification))
    message = signed(stream_online(token.twitch_user_id))

    answers = await asyncio.gather(*(answer(*message) for _ in range(5)))
    await background.finish_background_work()
    await process()

    assert [a.status_code for a in answers] == [204] * 5
    assert len(heard) == 1
    assert await EventSubMessage.objects.acount() == 1


async def test_while_the_database_is_locked_the_message_is_spooled_and_answered(
    alice, sandbox
):
    token = await amake_token(alice, sandbox)
    raw, headers = signed(revoke_notification(token.twitch_user_id))

    lock = database_write_lock("accounts_eventsubmessage", readers_wait=True)
    await sync_to_async(lock.__enter__)()
    try:
        started = time.monotonic()
        response = await answer(raw, headers)
        elapsed = time.monotonic() - started
        background.cancel_background_work()  # and the process dies too
        assert inbox.spooled_count() == 1
    finally:
        await sync_to_async(lock.__exit__)(None, None, None)
    await background.finish_background_work()

    assert response.status_code == 204
    assert elapsed < 0.5
    output = await process()
    # From the spool, or from the insert that waited out the lock: once.
    assert output.startswith("1 handled")
    assert (await TwitchToken.objects.aget()).status == TwitchToken.Status.REVOKED
    assert inbox.spooled_count() == 0
    # Twitch redelivers it: known, not handled again.
    assert (await post(raw, headers)).status_code == 204
    assert await TokenEvent.objects.filter(source="twitch").acount() == 1


async def test_a_failing_handler_is_retried_with_backoff_and_the_others_run_once(
    alice, sandbox, registered
):
    token = await amake_token(alice, sandbox)
    calls = {"steady": 0, "flaky": 0}

    def steady(notification: Notification) -> None:
        calls["steady"] += 1

    async def flaky(notification: Notification) -> None:
        calls["flaky"] += 1
        if calls["flaky"] < 3:
            raise RuntimeError("Twitch is down")

    registered("stream.online", steady)
    registered("stream.online", flaky)
    await post(*signed(stream_online(token.twitch_user_id)))
    first = await EventSubMessage.objects.aget()
    assert (first.status, first.attempts) == ("pending", 1)

    with time_machine.travel(time.time() + 31, tick=True):
        await process()  # 30 s later: fails again, next in 60 s
    with time_machine.travel(time.time() + 31 + 45, tick=True):
        assert (await process()).startswith("0 handled")
    with time_machine.travel(time.time() + 31 + 61, tick=True):
        assert (await process()).startswith("1 handled")

    assert calls == {"steady": 1, "flaky": 3}
    assert (await EventSubMessage.objects.aget()).status == "handled"


async def test_a_handler_that_keeps_failing_is_given_up_after_max_attempts(
    alice, sandbox, registered, monkeypatch, caplog
):
    monkeypatch.setattr(inbox, "MAX_ATTEMPTS", 2)
    token = await amake_token(alice, sandbox)

    def broken(notification: Notification) -> None:
        raise ValueError("a bug")

    registered("stream.online", broken)
    await post(*signed(stream_online(token.twitch_user_id)))
    with (
        time_machine.travel(time.time() + 31, tick=True),
        pytest.raises(Exception, match="1 given up"),
    ):
        await process()

    failed = await EventSubMessage.objects.aget()
    assert (failed.status, failed.attempts) == ("failed", 2)
    assert any("given up" in r.getMessage() for r in caplog.records)


async def test_a_disconnect_ends_every_role_of_that_twitch_account_whoever_holds_it(
    alice, bob, sandbox
):
    main = await amake_token(alice, sandbox)
    bot = await amake_token(
        bob, sandbox, twitch_user_id=main.twitch_user_id, role="bot"
    )
    heard = []

    async def on_revoked(sender, token, role, **kwargs):
        heard.append((token.pk, role))

    with listening(signals.token_revoked, on_revoked):
        await post(*signed(revoke_notification(main.twitch_user_id)))

    statuses = {t.pk: t.status async for t in TwitchToken.objects.all()}
    assert statuses == {main.pk: "revoked", bot.pk: "revoked"}
    assert sorted(heard) == sorted([(main.pk, "main"), (bot.pk, "bot")])


def test_old_messages_are_pruned_but_pending_ones_stay(alice, sandbox, settings):
    settings.TWITCH_EVENTSUB_KEEP_DAYS = 1
    old = time.time() - 2 * 86400
    with time_machine.travel(old, tick=False):
        for status in ("handled", "failed", "pending"):
            EventSubMessage.objects.create(digest=status * 3, status=status)
    EventSubMessage.objects.create(digest="new", status="handled")

    assert inbox.prune() == 2
    assert sorted(EventSubMessage.objects.values_list("digest", flat=True)) == [
        "new",
        "pendingpendingpending",
    ]


def test_staff_read_received_messages_in_the_admin(admin_client, alice, sandbox):
    token = make_token(alice, sandbox)
    EventSubMessage.objects.create(
        digest="d" * 64,
        message_id="msg-1",
        message_type="notification",
        subscription_type="stream.online",
        subscription_version="1",
        body=stream_online(token.twitch_user_id),
        status="failed",
        last_error="ValueError (attempt 8)",
    )

    listing = page(admin_client.get("/admin/accounts/eventsubmessage/"))
    detail = page(
        admin_client.get(f"/admin/accounts/eventsubmessage/{'d' * 64}/change/")
    )

    assert "stream.online" in listing and "msg-1" in listing
    assert "ValueError (attempt 8)" in detail and '"type": "live"' in detail


def test_staff_can_retry_a_failed_message_from_the_admin(admin_client):
    EventSubMessage.objects.create(
        digest="e" * 64, message_id="m", status="failed", attempts=8
    )

    admin_client.post(
        "/admin/accounts/eventsubmessage/",
        {"action": "retry_messages", "_selected_action": ["e" * 64]},
    )

    retried = EventSubMessage.objects.get()
    assert (retried.status, retried.attempts) == ("pending", 0)


async def test_a_handler_that_outlives_its_claim_is_not_run_twice_at_once(
    alice, sandbox, registered, monkeypatch
):
    monkeypatch.setattr(inbox, "LEASE", timedelta(seconds=1))
    monkeypatch.setattr(inbox, "LEASE_MARGIN", timedelta(seconds=0.4))
    token = await amake_token(alice, sandbox)
    runs = {"started": 0, "finished": 0}

    async def slow(notification: Notification) -> None:
        runs["started"] += 1
        await asyncio.sleep(2)  # longer than the claim
        runs["finished"] += 1

    registered("stream.online", slow)
    assert (await answer(*signed(stream_online(token.twitch_user_id)))).status_code
    await asyncio.sleep(1.2)  # the claim has run out; the first run would go on

    assert (await process()).startswith("0 handled")  # cron finds nothing due
    await background.finish_background_work()

    assert runs == {"started": 1, "finished": 0}
    message = await EventSubMessage.objects.aget()
    # Cut off before its claim ran out: a failure, retried later.
    assert (message.status, message.attempts) == ("pending", 1)
    assert message.last_error.startswith("TimeoutError")
    assert message.next_attempt_at is not None


async def test_a_worker_whose_claim_was_taken_over_does_not_overwrite_the_outcome(
    alice, sandbox, registered
):
    token = await amake_token(alice, sandbox)
    taken_over = []

    async def handler(notification: Notification) -> None:
        # Meanwhile another worker took the message over (this one's claim ran
        # out) and handled it.
        await EventSubMessage.objects.filter(
            message_id=notification.message_id
        ).aupdate(claim="another-worker", status="handled", attempts=0)
        taken_over.append(notification.message_id)
        raise RuntimeError("this worker fails late")

    registered("stream.online", handler)
    await post(*signed(stream_online(token.twitch_user_id)))

    assert taken_over
    message = await EventSubMessage.objects.aget()
    assert (message.status, message.attempts, message.claim) == (
        "handled",
        0,
        "another-worker",
    )


def test_the_admin_leaves_a_message_being_handled_alone(admin_client):
    claimed_until = timezone.now() + timedelta(minutes=1)
    EventSubMessage.objects.create(
        digest="f" * 64,
        message_id="m",
        status="pending",
        attempts=3,
        claim="a-worker",
        claimed_until=claimed_until,
    )

    response = admin_client.post(
        "/admin/accounts/eventsubmessage/",
        {"action": "retry_messages", "_selected_action": ["f" * 64]},
        follow=True,
    )

    message = EventSubMessage.objects.get()
    assert (message.attempts, message.claim, message.claimed_until) == (
        3,
        "a-worker",
        claimed_until,
    )
    assert "being handled" in page(response)


def spooled_row(digest: str = "a" * 64) -> EventSubMessage:
    return EventSubMessage(
        digest=digest,
        received_at=timezone.now(),
        message_id="m-1",
        message_type="notification",
        subscription_type="stream.online",
        body={"event": {}},
    )


def test_a_spooled_message_is_on_disk_before_the_answer(monkeypatch):
    synced = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        real_fsync(fd)
        path = Path(os.readlink(f"/proc/self/fd/{fd}"))
        # What a power cut would leave: the file under its final name?
        synced.append((path, (inbox.spool_directory() / f"{'a' * 64}.json").exists()))

    monkeypatch.setattr(os, "fsync", fsync)
    inbox.spool(spooled_row())

    directory = inbox.spool_directory().resolve()
    [(file, _), (folder, renamed)] = synced
    assert file.parent == directory and file.name.startswith(".aaaa")
    # The rename itself is made durable: the directory is synced after it.
    assert (folder, renamed) == (directory, True)


@pytest.mark.skipif("connection.vendor != 'sqlite'")
def test_on_sqlite_a_kept_message_is_committed_with_a_full_sync():
    executed = []

    def record(execute, sql, params, many, context):
        executed.append(sql.split()[0].upper() + " " + " ".join(sql.split()[1:2]))
        return execute(sql, params, many, context)

    with connection.execute_wrapper(record):
        assert inbox._insert(spooled_row())
        mode = connection.cursor().execute("PRAGMA synchronous").fetchone()[0]

    inserts = [i for i, sql in enumerate(executed) if sql.startswith("INSERT")]
    full = [i for i, sql in enumerate(executed) if sql == "PRAGMA synchronous=FULL"]
    assert inserts and full and full[0] < inserts[0]
    assert mode == 1  # NORMAL again for the connection's other writes


async def test_receivers_missed_by_a_crash_after_the_revoke_are_told_by_cron(
    alice, sandbox, monkeypatch
):
    token = await amake_token(alice, sandbox)
    heard = []

    async def on_revoked(sender, token, **kwargs):
        heard.append(token.pk)

    async def dies(*args, **kwargs):
        raise asyncio.CancelledError  # the process dies as it would tell them

    with listening(signals.token_revoked, on_revoked):
        with monkeypatch.context() as patched:
            patched.setattr(signals.token_revoked, "asend_robust", dies)
            await post(*signed(revoke_notification(token.twitch_user_id)))
        assert (await TwitchToken.objects.aget()).status == "revoked"  # committed
        assert heard == []

        with time_machine.travel(time.time() + inbox.LEASE.total_seconds() + 1):
            assert (await process()).startswith("1 handled")
            assert (await process()).startswith("0 handled")

    assert heard == [token.pk]  # at least once; here once
    assert await TokenEvent.objects.filter(source="twitch").acount() == 1


def test_a_second_handler_of_the_same_name_is_refused(registered):
    def announce(notification: Notification) -> None:
        pass

    registered("stream.online", announce)
    registered("stream.online", announce)  # the same function again: fine

    def other(notification: Notification) -> None:
        pass

    other.__qualname__ = announce.__qualname__  # a name already taken
    with pytest.raises(ValueError, match="already registered"):
        on_event("stream.online")(other)
    assert [h for _, h in handlers.handlers_for("stream.online")] == [announce]


@pytest.mark.parametrize(
    ("args", "wrong"),
    [
        (["status", "--replace"], "--replace"),
        (["subscribe", "--limit", "3"], "--limit"),
    ],
)
def test_an_option_the_action_ignores_is_refused(args, wrong):
    with pytest.raises(CommandError, match=wrong) as refused:
        call_command("eventsub", *args)
    assert refused.value.returncode == 2


def test_process_says_so_when_the_database_refuses_the_spool():
    inbox.spool(spooled_row())
    with database_write_lock("accounts_eventsubmessage"):
        impatient_database()
        with pytest.raises(CommandError, match="0 handled") as refused:
            call_command("eventsub", "process", stdout=io.StringIO())
    assert refused.value.returncode == 1
    assert "1 left in the spool" in str(refused.value)
    assert inbox.spooled_count() == 1


async def test_a_type_outside_the_catalogue_hears_of_the_persons_own_account_first(
    alice, bob, sandbox, settings, registered
):
    settings.TWITCH_BOT_SCOPES = ["user:bot"]
    shared = sandbox.add_user("sharedaccount").id
    # The same Twitch account: Alice's bot (made first) and Bob's own account.
    await amake_token(alice, sandbox, role="bot", twitch_user_id=shared)
    bobs = await amake_token(bob, sandbox, twitch_user_id=shared)
    heard = []

    async def handler(notification: Notification) -> None:
        heard.append(notification.connection)

    registered("channel.hype_train.begin", handler)
    message = stream_online(shared)
    message["subscription"].update(type="channel.hype_train.begin", id="sub-hype")
    message["subscription"]["condition"] = {"broadcaster_user_id": shared}

    await answer(*signed(message))
    await background.finish_background_work()

    assert heard == [bobs]
