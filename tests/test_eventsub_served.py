"""EventSub end to end: the sandbox, as Twitch, verifies the served site's webhook
and tells it when a user disconnects the app; `manage.py eventsub` manages it."""

from __future__ import annotations

import io
import time
from datetime import UTC, datetime, timedelta

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from accounts.models import EventSubMessage, TokenEvent, TwitchToken
from tests.conftest import EVENTSUB_SECRET, make_token

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def eventsub_site(site, sandbox, settings) -> str:
    """The served site, with this process configured like it (for the command)."""
    sandbox.allow_insecure_callbacks = True  # the test site speaks plain http
    settings.TWITCH_EVENTSUB_CALLBACK_URL = f"{site}/twitch/eventsub/"
    settings.TWITCH_EVENTSUB_SECRET = EVENTSUB_SECRET
    return site


def wait_until_handled(count: int | None = None, timeout: float = 10.0) -> None:
    """Until the served site has handled what it was sent (after its answer)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        messages = EventSubMessage.objects.all()
        if not messages.exclude(status="handled").exists() and (
            count is None or messages.count() >= count
        ):
            return
        time.sleep(0.05)
    raise AssertionError("the site did not handle the messages in time")


def eventsub(*args: str) -> str:
    out = io.StringIO()
    call_command("eventsub", *args, stdout=out)
    return out.getvalue()


def test_subscribe_creates_the_subscription_and_twitch_verifies_the_site(
    eventsub_site, sandbox
):
    output = eventsub("subscribe")

    [subscription] = sandbox.subscriptions()
    assert subscription["status"] == "enabled"
    assert subscription["type"] == "user.authorization.revoke"
    assert subscription["condition"] == {"client_id": sandbox.client_id}
    assert output.startswith("1 created, 0 already there, 0 deleted, 0 missing")
    [verification] = sandbox.deliveries
    assert (verification.message_type, verification.status) == (
        "webhook_callback_verification",
        200,
    )


def test_subscribing_again_creates_no_duplicate(eventsub_site, sandbox):
    eventsub("subscribe")
    output = eventsub("subscribe")

    assert output.startswith("0 created, 1 already there")
    assert len(sandbox.subscriptions()) == 1
    assert sandbox.count("eventsub_create") == 1


def test_status_lists_and_unsubscribe_deletes(eventsub_site, sandbox):
    eventsub("subscribe")
    [subscription] = sandbox.subscriptions()

    assert subscription["id"] in eventsub("status")
    assert eventsub("unsubscribe").startswith("deleted 1 subscription")
    assert sandbox.subscriptions() == []
    after = eventsub("status")
    assert "absent on Twitch: user.authorization.revoke:1 for the application" in after
    assert "0 subscription(s), cost 0 of max_total_cost 10000; 1 wanted, 1 absent" in (
        after
    )


def test_a_user_who_disconnects_on_twitch_is_revoked_at_once(
    eventsub_site, sandbox, alice, bob
):
    eventsub("subscribe")
    token = make_token(alice, sandbox)
    other = make_token(bob, sandbox)

    sandbox.disconnect_user("alice")  # returns once the site has answered
    wait_until_handled()

    token.refresh_from_db()
    assert token.status == TwitchToken.Status.REVOKED
    assert token.refresh_token == "" and token.access_token == ""
    assert TokenEvent.objects.filter(token=token, source="twitch").exists()
    other.refresh_from_db()
    assert other.status == TwitchToken.Status.ACTIVE
    assert sandbox.deliveries[-1].message_type == "notification"
    assert 200 <= sandbox.deliveries[-1].status < 300


def test_a_user_who_is_gone_is_revoked_too(eventsub_site, sandbox, alice):
    eventsub("subscribe")
    token = make_token(alice, sandbox)

    sandbox.disconnect_user("alice", gone=True)
    wait_until_handled()

    token.refresh_from_db()
    assert token.status == TwitchToken.Status.REVOKED


def test_replays_bad_signatures_and_stale_messages(eventsub_site, sandbox, alice, bob):
    eventsub("subscribe")
    token = make_token(alice, sandbox)
    message = sandbox.notification_message("alice")

    assert 200 <= sandbox.deliver(message) < 300
    wait_until_handled()
    token.refresh_from_db()
    assert token.status == TwitchToken.Status.REVOKED
    # The Twitch account connects again, to bob; Twitch redelivers the old message.
    again = make_token(bob, sandbox, twitch_user_id=token.twitch_user_id)
    assert 200 <= sandbox.deliver(message) < 300
    wait_until_handled()
    again.refresh_from_db()
    assert again.status == TwitchToken.Status.ACTIVE

    forged = sandbox.notification_message("alice", secret="someone-elses-secret")
    stale = sandbox.notification_message(
        "alice", timestamp=datetime.now(UTC) - timedelta(minutes=11)
    )
    assert sandbox.deliver(forged) == 403
    assert sandbox.deliver(stale) == 403
    again.refresh_from_db()
    assert again.status == TwitchToken.Status.ACTIVE


def test_a_subscription_twitch_revokes_is_recorded(eventsub_site, sandbox):
    from accounts.models import EventSubRevocation

    eventsub("subscribe")
    [subscription] = sandbox.subscriptions()

    sandbox.revoke_subscription(subscription["id"], reason="user_removed")
    wait_until_handled()

    revocation = EventSubRevocation.objects.get()
    assert (revocation.subscription_id, revocation.reason) == (
        subscription["id"],
        "user_removed",
    )


def test_subscribe_with_twitch_down_exits_1(eventsub_site, sandbox, monkeypatch):
    from accounts import twitch

    monkeypatch.setattr(twitch.http, "RETRY_BASE_DELAY", 0.01)
    sandbox.fail("eventsub_list", status=503)

    with pytest.raises(CommandError) as failed:
        eventsub("subscribe")
    assert failed.value.returncode == 1


def test_a_callback_twitch_cannot_verify_exits_1(eventsub_site, sandbox, settings):
    settings.TWITCH_EVENTSUB_SECRET = "not-the-sites-secret"  # the site answers 403

    with pytest.raises(CommandError, match="could not verify") as failed:
        eventsub("subscribe")
    assert failed.value.returncode == 1


def test_the_command_without_eventsub_configured_exits_2(settings):
    settings.TWITCH_EVENTSUB_CALLBACK_URL = ""
    with pytest.raises(CommandError, match="EventSub is off") as failed:
        eventsub("status")
    assert failed.value.returncode == 2


def test_a_moved_callback_replaces_the_old_subscription(
    eventsub_site, sandbox, settings
):
    eventsub("subscribe")
    [old] = sandbox.subscriptions()
    settings.TWITCH_EVENTSUB_CALLBACK_URL = f"{eventsub_site}/moved/eventsub/"

    with pytest.raises(CommandError):  # nothing answers there: not verified
        eventsub("subscribe")

    assert old["id"] not in [s["id"] for s in sandbox.subscriptions()]
    assert eventsub("unsubscribe").startswith("deleted 1 subscription")


def test_replace_subscribes_again_after_a_new_secret(eventsub_site, sandbox):
    eventsub("subscribe")
    [old] = sandbox.subscriptions()

    output = eventsub("subscribe", "--replace")

    [new] = sandbox.subscriptions()
    assert new["id"] != old["id"] and new["status"] == "enabled"
    assert output.startswith("1 created, 0 already there, 1 deleted")
