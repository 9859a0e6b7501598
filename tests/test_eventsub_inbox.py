"""EventSub messages are kept, answered at once, and handled after the answer,
exactly once: by the process that answered, or by `manage.py eventsub process`
when it failed or died first."""

from __future__ import annotations

import asyncio
import time

import pytest
import time_machine
from asgiref.sync import sync_to_async

from accounts import signals
from accounts.eventsub import Notification, handlers, inbox, on_event, tasks
from accounts.models import EventSubMessage, TokenEvent, TwitchToken
from tests.conftest import database_write_lock, listening, make_token, page
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
    await tasks.finish_background_work()
    assert heard == [("live", token)]
    assert (await EventSubMessage.objects.aget()).status == "handled"


async def test_a_process_that_dies_after_the_answer_loses_nothing(alice, sandbox):
    token = await amake_token(alice, sandbox)
    raw, headers = signed(revoke_notification(token.twitch_user_id))

    assert (await answer(raw, headers)).status_code == 204
    tasks.cancel_background_work()  # the process dies before handling it
    await tasks.finish_background_work()
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
    await tasks.finish_background_work()
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
        tasks.cancel_background_work()  # and the process dies too
        assert inbox.spooled_count() == 1
    finally:
        await sync_to_async(lock.__exit__)(None, None, None)
    await tasks.finish_background_work()

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
