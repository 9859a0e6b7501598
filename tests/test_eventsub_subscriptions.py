"""The EventSub types a site wants, kept in step with Twitch (the sandbox, as
strict as Twitch: scopes, conditions, pages, costs, revocations), and the served
webhook answering at once while Twitch or the site's own work is slow."""

from __future__ import annotations

import asyncio
import io
import time
from datetime import timedelta

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.utils import timezone

from accounts import background
from accounts.models import EventSubMessage, EventSubRevocation, TokenEvent, TwitchToken
from tests.conftest import EVENTSUB_SECRET, REDIRECT_URI, connect_twitch
from tests.test_eventsub_served import wait_until_handled

pytestmark = pytest.mark.django_db(transaction=True)

STREAM = "stream.online stream.offline channel.update:2"


@pytest.fixture
def wanted(site, sandbox, settings):
    """The served site, this process configured like it, wanting STREAM."""
    sandbox.allow_insecure_callbacks = True
    settings.TWITCH_EVENTSUB_CALLBACK_URL = f"{site}/twitch/eventsub/"
    settings.TWITCH_EVENTSUB_SECRET = EVENTSUB_SECRET
    settings.TWITCH_EVENTSUB_TYPES = STREAM
    return settings


def eventsub(*args: str) -> str:
    out = io.StringIO()
    call_command("eventsub", *args, stdout=out, stderr=io.StringIO())
    return out.getvalue()


def connection(user, sandbox, *, scopes=("chat:read",), role="main", login=None):
    """A stored connection whose grant (and scopes) the sandbox really issued."""
    login = login or user.username
    issued = sandbox.issue_tokens(login=login, scopes=list(scopes))
    account = sandbox.add_user(login)
    token = TwitchToken.objects.create(
        user=user,
        role=role,
        twitch_user_id=account.id,
        login=account.login,
        access_token=issued["access_token"],
        refresh_token=issued["refresh_token"],
        scopes=list(scopes),
        expires_at=timezone.now() + timedelta(hours=4),
        last_validated_at=timezone.now(),
    )
    TokenEvent.objects.create(
        token=token, action="connect", outcome="succeeded", source="user"
    )
    return token


def kinds(sandbox) -> list[tuple[str, str, str]]:
    return sorted(
        (s["type"], s["version"], s["status"]) for s in sandbox.subscriptions()
    )


def test_subscribe_creates_each_wanted_type_for_every_connected_account(
    wanted, sandbox, alice, bob
):
    alices = connection(alice, sandbox)
    connection(bob, sandbox)

    output = eventsub("subscribe")

    assert output.startswith("7 created, 0 already there, 0 deleted, 0 missing")
    assert kinds(sandbox) == sorted(
        [("user.authorization.revoke", "1", "enabled")]
        + [("stream.online", "1", "enabled")] * 2
        + [("stream.offline", "1", "enabled")] * 2
        + [("channel.update", "2", "enabled")] * 2
    )
    mine = [
        s
        for s in sandbox.subscriptions()
        if s["condition"] == {"broadcaster_user_id": alices.twitch_user_id}
    ]
    assert len(mine) == 3
    # Again: nothing to do.
    assert eventsub("subscribe").startswith("0 created, 7 already there, 0 deleted")
    assert sandbox.count("eventsub_create") == 7


def test_subscribe_reads_every_page_and_deletes_what_nothing_wants(
    wanted, sandbox, alice, bob, settings
):
    sandbox.set_eventsub_limits(page_size=2)
    connection(alice, sandbox)
    connection(bob, sandbox)
    eventsub("subscribe")
    settings.TWITCH_EVENTSUB_TYPES = "stream.online"

    output = eventsub("subscribe")

    assert output.startswith("0 created, 3 already there, 4 deleted")
    assert sorted(s["type"] for s in sandbox.subscriptions()) == [
        "stream.online",
        "stream.online",
        "user.authorization.revoke",
    ]
    listed = [r for r in sandbox.requests if r.endpoint == "eventsub_list"]
    assert any("after" in r.query for r in listed)  # it followed the cursor


def test_status_shows_costs_and_what_is_missing_and_why(
    wanted, sandbox, alice, bob, settings
):
    settings.TWITCH_EVENTSUB_TYPES = "stream.online channel.subscribe"
    connection(alice, sandbox, scopes=["channel:read:subscriptions"])
    bobs = connection(bob, sandbox)  # never granted channel:read:subscriptions
    eventsub("subscribe")

    status = eventsub("status")

    assert f"missing: channel.subscribe:1 for {bobs.login}: the main connection" in (
        status
    )
    assert "has not granted channel:read:subscriptions" in status
    # Both authorized the app: no cost (Twitch: 1 only for users who have not).
    assert "4 subscription(s), cost 0 of max_total_cost 10000" in status
    assert "cost 0" in status


def test_twitch_refuses_a_subscription_its_user_has_not_authorized(
    wanted, sandbox, alice, settings
):
    settings.TWITCH_EVENTSUB_TYPES = "channel.subscribe"
    # The site believes the scope was granted; Twitch knows it was not.
    connection(alice, sandbox, scopes=["chat:read"]).__class__.objects.update(
        scopes=["channel:read:subscriptions"]
    )

    with pytest.raises(CommandError, match="refused 1") as refused:
        eventsub("subscribe")
    assert refused.value.returncode == 1
    assert [s["type"] for s in sandbox.subscriptions()] == ["user.authorization.revoke"]


def test_chat_messages_are_read_as_the_bot_with_the_broadcasters_consent(
    wanted, sandbox, alice, settings
):
    settings.TWITCH_BOT_SCOPES = ["user:read:chat", "user:bot"]
    settings.TWITCH_EVENTSUB_TYPES = "channel.chat.message"
    broadcaster = connection(alice, sandbox, scopes=["channel:bot"])
    bot = connection(
        alice, sandbox, scopes=["user:read:chat", "user:bot"], role="bot", login="botty"
    )

    eventsub("subscribe")

    [chat] = [
        s for s in sandbox.subscriptions() if s["type"] != "user.authorization.revoke"
    ]
    assert chat["condition"] == {
        "broadcaster_user_id": broadcaster.twitch_user_id,
        "user_id": bot.twitch_user_id,
    }
    assert chat["status"] == "enabled"


def test_a_failures_exceeded_subscription_is_made_again_but_a_revoked_one_is_not(
    wanted, sandbox, alice, bob
):
    alices = connection(alice, sandbox)
    bobs = connection(bob, sandbox)
    eventsub("subscribe")
    by_user = {
        s["condition"].get("broadcaster_user_id"): s
        for s in sandbox.subscriptions()
        if s["type"] == "stream.online"
    }
    sandbox.revoke_subscription(
        by_user[alices.twitch_user_id]["id"], "notification_failures_exceeded"
    )
    sandbox.revoke_subscription(
        by_user[bobs.twitch_user_id]["id"], "authorization_revoked"
    )
    wait_until_handled(count=2)
    assert EventSubRevocation.objects.count() == 2

    output = eventsub("subscribe")

    online = {
        s["condition"]["broadcaster_user_id"]: s["status"]
        for s in sandbox.subscriptions()
        if s["type"] == "stream.online"
    }
    assert online == {alices.twitch_user_id: "enabled"}
    assert "1 created" in output and "1 missing" in output
    assert "missing: stream.online:1 for bob: Twitch revoked it" in output


async def test_connecting_an_account_subscribes_it_after_the_answer(
    wanted, sandbox, alice_client, alice
):
    sandbox.redirect_uris.append(REDIRECT_URI)  # this process's own callback
    response = await connect_twitch(alice_client, login="alice")
    assert response.status_code == 302

    await background.finish_background_work()

    token = await TwitchToken.objects.aget()
    conditions = [s["condition"] for s in sandbox.subscriptions()]
    assert conditions.count({"broadcaster_user_id": token.twitch_user_id}) == 3
    for subscription in sandbox.subscriptions():
        verified = await asyncio.to_thread(
            sandbox.wait_for_subscription_status, subscription["id"], "enabled"
        )
        assert verified["status"] == "enabled"


@pytest.mark.parametrize("site", [{"TWITCH_EVENTSUB_TYPES": STREAM}], indirect=True)
def test_a_connection_revoked_on_twitch_loses_its_subscriptions(
    wanted, sandbox, alice, bob
):
    alices = connection(alice, sandbox)
    connection(bob, sandbox)
    eventsub("subscribe")

    sandbox.disconnect_user("alice")
    wait_until_handled()

    # The served site revoked the connection, and its own token_revoked receiver
    # deletes what nothing wants any more, after its answer.
    assert wait_for(
        lambda: (
            not [
                s
                for s in sandbox.subscriptions()
                if alices.twitch_user_id in s["condition"].values()
            ]
        )
    )
    assert TwitchToken.objects.get(pk=alices.pk).status == "revoked"
    assert len(sandbox.subscriptions()) == 4  # bob's three, and the app's


def test_a_revoke_is_answered_at_once_while_twitch_is_slow(wanted, sandbox, alice):
    eventsub("subscribe")
    connection(alice, sandbox)  # connected just now: Twitch is asked about it
    sandbox.set_latency(3.0, "validate")

    sandbox.disconnect_user("alice")

    notification = next(
        d for d in sandbox.deliveries if d.message_type == "notification"
    )
    assert notification.ok and notification.retry == 0
    assert notification.elapsed < 0.5
    wait_until_handled(timeout=15)


def test_twenty_deliveries_at_once_are_all_answered_within_a_second(
    wanted, sandbox, alice
):
    alices = connection(alice, sandbox)
    eventsub("subscribe")
    [online] = [s for s in sandbox.subscriptions() if s["type"] == "stream.online"]
    messages = [sandbox.event_message(online["id"]) for _ in range(20)]

    deliveries = sandbox.deliver_all(messages)

    assert all(d.ok and d.retry == 0 for d in deliveries)
    assert max(d.elapsed for d in deliveries) < 1.0
    wait_until_handled(count=20)
    assert (
        EventSubMessage.objects.filter(subscription_type="stream.online").count() == 20
    )
    assert alices.twitch_user_id in str(EventSubMessage.objects.first().body)


def wait_for(condition, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False


def online_of(sandbox, token) -> list[dict]:
    return [
        s
        for s in sandbox.subscriptions()
        if s["type"] == "stream.online"
        and s["condition"] == {"broadcaster_user_id": token.twitch_user_id}
    ]


def test_a_subscription_ended_for_the_user_stays_down_when_its_message_was_lost(
    wanted, sandbox, alice, bob
):
    connection(alice, sandbox)
    bobs = connection(bob, sandbox)
    eventsub("subscribe")
    [online] = online_of(sandbox, bobs)
    sandbox.revoke_subscription(online["id"], "authorization_revoked")
    wait_until_handled()
    EventSubRevocation.objects.all().delete()  # as if the message never came

    first = eventsub("subscribe")
    second = eventsub("subscribe")

    assert [s["status"] for s in online_of(sandbox, bobs)] == []
    assert "missing: stream.online:1 for bob: Twitch revoked it" in first
    assert "missing: stream.online:1 for bob: Twitch revoked it" in second
    assert EventSubRevocation.objects.get().subscription_id == online["id"]


def test_after_a_reconnect_an_ended_subscription_is_made_again_in_the_same_run(
    wanted, sandbox, alice
):
    alices = connection(alice, sandbox)
    eventsub("subscribe")
    [online] = online_of(sandbox, alices)
    sandbox.revoke_subscription(online["id"], "authorization_revoked")
    wait_until_handled()
    TokenEvent.objects.create(
        token=alices, action="connect", outcome="succeeded", source="user"
    )

    output = eventsub("subscribe")

    assert [s["status"] for s in online_of(sandbox, alices)] == ["enabled"]
    assert output.startswith("1 created")


@pytest.mark.parametrize(
    "reason", ["moderator_removed", "chat_user_banned", "beta_maintenance"]
)
def test_other_revocations_for_the_user_s_sake_are_not_made_again(
    wanted, sandbox, alice, reason
):
    alices = connection(alice, sandbox)
    eventsub("subscribe")
    [online] = online_of(sandbox, alices)
    sandbox.revoke_subscription(online["id"], reason)
    wait_until_handled()

    output = eventsub("subscribe")

    assert online_of(sandbox, alices) == []
    assert f"missing: stream.online:1 for alice: Twitch revoked it ({reason})" in (
        output
    )


def test_a_deleted_twitch_account_loses_its_subscriptions_for_good(
    wanted, sandbox, alice, bob
):
    alices = connection(alice, sandbox)
    bobs = connection(bob, sandbox)
    eventsub("subscribe")

    sandbox.disconnect_user("alice", gone=True)
    wait_until_handled()

    reasons = set(EventSubRevocation.objects.values_list("reason", flat=True))
    assert reasons == {"user_removed"}
    assert EventSubRevocation.objects.count() == 3  # alice's three
    assert TwitchToken.objects.get(pk=alices.pk).status == "revoked"
    output = eventsub("subscribe")
    named = [
        s
        for s in sandbox.subscriptions()
        if alices.twitch_user_id in s["condition"].values()
    ]
    assert named == []
    assert len(online_of(sandbox, bobs)) == 1
    assert "0 created" in output


def test_status_reports_what_is_absent_or_not_enabled_and_what_will_happen(
    wanted, sandbox, alice
):
    alices = connection(alice, sandbox)
    eventsub("subscribe")
    by_type = {
        s["type"]: s
        for s in sandbox.subscriptions()
        if alices.twitch_user_id in s["condition"].values()
    }
    sandbox.eventsub.delete(by_type["stream.offline"]["id"])  # gone from Twitch
    sandbox.revoke_subscription(
        by_type["stream.online"]["id"], "notification_failures_exceeded"
    )
    wait_until_handled()

    status = eventsub("status")

    assert "absent on Twitch: stream.offline:1 for alice: created by the next" in (
        status
    )
    assert (
        "stream.online v1 broadcaster_user_id="
        f"{alices.twitch_user_id}: notification_failures_exceeded: recreated by "
        "the next subscribe"
    ) in status
    assert "4 wanted, 2 absent, 0 missing" in status


def test_status_shows_a_version_twitch_removed_while_it_is_wanted(
    wanted, sandbox, alice
):
    alices = connection(alice, sandbox)
    eventsub("subscribe")
    [online] = online_of(sandbox, alices)
    sandbox.revoke_subscription(online["id"], "version_removed")
    wait_until_handled()

    status = eventsub("status")

    assert "Twitch removed EventSub stream.online version 1" in status
    assert "(accounts.W015)" in status
    assert "version_removed: deleted by the next subscribe" in status
