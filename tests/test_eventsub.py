"""EventSub `user.authorization.revoke`: Twitch's signed webhook, checked before
anything is believed, handled once, and disconnects seen at once."""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import secrets
import time
from datetime import UTC, datetime, timedelta

import pytest
import time_machine
from asgiref.sync import sync_to_async
from django.core.management import call_command
from django.db import IntegrityError
from django.test import AsyncClient

from accounts import background, signals
from accounts.models import (
    EventSubMessage,
    EventSubRevocation,
    TokenEvent,
    TwitchToken,
)
from tests.conftest import CLIENT_ID, listening, make_token, page

pytestmark = pytest.mark.django_db(transaction=True)

SECRET = "eventsub-secret-for-tests"
amake_token = sync_to_async(make_token)


@pytest.fixture(autouse=True)
def eventsub_on(settings):
    settings.TWITCH_EVENTSUB_CALLBACK_URL = "https://testserver/twitch/eventsub/"
    settings.TWITCH_EVENTSUB_SECRET = SECRET


def twitch_time(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f") + "123Z"


def signed(body: dict, **options) -> tuple[bytes, dict[str, str]]:
    return signed_raw(json.dumps(body).encode(), **options)


def signed_raw(
    raw: bytes,
    *,
    message_type: str = "notification",
    message_id: str | None = None,
    sent: datetime | None = None,
    secret: str = SECRET,
) -> tuple[bytes, dict[str, str]]:
    message_id = message_id or secrets.token_hex(8)
    timestamp = twitch_time(sent or datetime.now(UTC))
    signature = hmac.new(
        secret.encode(), message_id.encode() + timestamp.encode() + raw, hashlib.sha256
    ).hexdigest()
    return raw, {
        "Twitch-Eventsub-Message-Id": message_id,
        "Twitch-Eventsub-Message-Timestamp": timestamp,
        "Twitch-Eventsub-Message-Signature": f"sha256={signature}",
        "Twitch-Eventsub-Message-Type": message_type,
        "Twitch-Eventsub-Subscription-Type": "user.authorization.revoke",
        "Twitch-Eventsub-Subscription-Version": "1",
    }


def revoke_notification(user_id: str, *, login: str | None = "alice", **event):
    return {
        "subscription": {
            "id": "sub-1",
            "status": "enabled",
            "type": "user.authorization.revoke",
            "version": "1",
            "condition": {"client_id": CLIENT_ID},
            "transport": {"method": "webhook", "callback": "https://testserver/"},
        },
        "event": {
            "client_id": CLIENT_ID,
            "user_id": user_id,
            "user_login": login,
            "user_name": login and login.title(),
            **event,
        },
    }


async def answer(
    raw: bytes, headers: dict[str, str], client: AsyncClient | None = None
):
    """What the webhook answers; what it does after the answer may still run."""
    client = client or AsyncClient(enforce_csrf_checks=True)
    return await client.post(
        "/twitch/eventsub/", raw, content_type="application/json", headers=headers
    )


async def process() -> str:
    """`manage.py eventsub process`, as cron runs it."""
    out = io.StringIO()
    await sync_to_async(call_command)("eventsub", "process", stdout=out)
    return out.getvalue()


async def post(raw: bytes, headers: dict[str, str], client: AsyncClient | None = None):
    """What the webhook answers, once what it started after the answer is done."""
    response = await answer(raw, headers, client)
    await background.finish_background_work()
    return response


async def test_the_verification_challenge_is_echoed_as_plain_text():
    raw, headers = signed(
        {"challenge": "pogchamp-kappa-360noscope", "subscription": {}},
        message_type="webhook_callback_verification",
    )

    response = await post(raw, headers)

    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain")
    assert response.content == b"pogchamp-kappa-360noscope"


@pytest.mark.parametrize(
    "tamper",
    [
        lambda raw, headers: headers.pop("Twitch-Eventsub-Message-Signature"),
        lambda raw, headers: headers.update(
            {"Twitch-Eventsub-Message-Signature": "sha256=" + "0" * 64}
        ),
        lambda raw, headers: headers.update({"Twitch-Eventsub-Message-Id": "other"}),
        lambda raw, headers: headers.update(
            {"Twitch-Eventsub-Message-Timestamp": twitch_time(datetime.now(UTC))}
        ),
    ],
    ids=["missing", "wrong", "id-changed", "timestamp-changed"],
)
async def test_a_missing_or_wrong_signature_is_refused_before_anything_else(
    alice, sandbox, tamper
):
    token = await amake_token(alice, sandbox)
    raw, headers = signed(revoke_notification(token.twitch_user_id))
    tamper(raw, headers)

    response = await post(raw, headers)

    assert response.status_code == 403
    assert (await TwitchToken.objects.aget()).status == TwitchToken.Status.ACTIVE


async def test_a_body_changed_after_signing_is_refused(alice, sandbox):
    token = await amake_token(alice, sandbox)
    raw, headers = signed(revoke_notification("1"))
    tampered = raw.replace(b'"1"', f'"{token.twitch_user_id}"'.encode())

    assert (await post(tampered, headers)).status_code == 403


async def test_a_message_signed_with_another_secret_is_refused():
    raw, headers = signed({"challenge": "x"}, secret="not-our-secret-at-all")
    assert (await post(raw, headers)).status_code == 403


async def test_while_the_secret_is_rotated_the_previous_one_still_delivers(settings):
    previous = "the-secret-before-this-one"
    raw, headers = signed(
        {"challenge": "x"},
        message_type="webhook_callback_verification",
        secret=previous,
    )
    assert (await post(raw, headers)).status_code == 403  # not without saying so

    settings.TWITCH_EVENTSUB_PREVIOUS_SECRET = previous

    again, headers = signed(
        {"challenge": "x"},
        message_type="webhook_callback_verification",
        secret=previous,
    )
    assert (await post(again, headers)).status_code == 200
    current, headers = signed(
        {"challenge": "y"}, message_type="webhook_callback_verification"
    )
    assert (await post(current, headers)).status_code == 200
    other, headers = signed(
        {"challenge": "z"},
        message_type="webhook_callback_verification",
        secret="neither-of-them-at-all",
    )
    assert (await post(other, headers)).status_code == 403


def test_a_malformed_previous_secret_is_a_system_check_error(settings):
    from accounts.eventsub.checks import check_eventsub

    settings.TWITCH_EVENTSUB_PREVIOUS_SECRET = "short"

    errors = check_eventsub()

    assert [e.id for e in errors] == ["accounts.E009"]
    assert "TWITCH_EVENTSUB_PREVIOUS_SECRET" in errors[0].msg


@pytest.mark.parametrize(
    ("age", "status"),
    [
        (timedelta(minutes=11), 403),
        (timedelta(minutes=-5), 403),  # from the future
        (timedelta(minutes=9), 200),
    ],
    ids=["eleven-minutes-old", "five-minutes-ahead", "nine-minutes-old"],
)
async def test_messages_older_than_ten_minutes_or_from_the_future_are_refused(
    age, status
):
    raw, headers = signed(
        {"challenge": "c"},
        message_type="webhook_callback_verification",
        sent=datetime.now(UTC) - age,
    )
    assert (await post(raw, headers)).status_code == status


async def test_a_disconnect_on_twitch_revokes_the_connection_at_once(
    alice, bob, sandbox
):
    token = await amake_token(alice, sandbox)
    other = await amake_token(bob, sandbox)
    heard = []

    async def on_revoked(sender, token, **kwargs):
        heard.append(token.pk)

    raw, headers = signed(revoke_notification(token.twitch_user_id))
    with listening(signals.token_revoked, on_revoked):
        response = await post(raw, headers)

    assert response.status_code == 204
    stored = await TwitchToken.objects.aget(pk=token.pk)
    assert stored.status == TwitchToken.Status.REVOKED
    assert stored.access_token == "" and stored.refresh_token == ""
    event = await TokenEvent.objects.aget(token=stored)
    assert (event.action, event.outcome, event.source) == (
        "revoke",
        "succeeded",
        "twitch",
    )
    assert heard == [token.pk]
    untouched = await TwitchToken.objects.aget(pk=other.pk)
    assert untouched.status == TwitchToken.Status.ACTIVE
    assert sandbox.requests == []  # Twitch already knows; nobody is asked


async def test_a_user_who_is_gone_has_no_login_or_name(alice, sandbox):
    token = await amake_token(alice, sandbox)
    raw, headers = signed(revoke_notification(token.twitch_user_id, login=None))

    assert (await post(raw, headers)).status_code == 204
    assert (await TwitchToken.objects.aget()).status == TwitchToken.Status.REVOKED


async def test_a_message_seen_before_is_answered_and_not_handled_again(
    alice, bob, sandbox
):
    token = await amake_token(alice, sandbox)
    raw, headers = signed(revoke_notification(token.twitch_user_id))
    assert (await post(raw, headers)).status_code == 204
    # The same Twitch account connects again (to bob) before Twitch redelivers.
    again = await amake_token(bob, sandbox, twitch_user_id=token.twitch_user_id)

    replay = await post(raw, headers)

    assert replay.status_code == 204
    assert (await TwitchToken.objects.aget(pk=again.pk)).status == "active"
    assert await TokenEvent.objects.filter(source="twitch").acount() == 1


async def test_a_notification_for_another_application_is_ignored(alice, sandbox):
    token = await amake_token(alice, sandbox)
    body = revoke_notification(token.twitch_user_id, client_id="someone-else")
    raw, headers = signed(body)

    assert (await post(raw, headers)).status_code == 204
    assert (await TwitchToken.objects.aget()).status == TwitchToken.Status.ACTIVE


async def test_a_revoked_subscription_is_an_operator_error_shown_in_the_admin(
    caplog,
):
    body = {
        "subscription": {
            "id": "sub-1",
            "status": "authorization_revoked",
            "type": "user.authorization.revoke",
            "version": "1",
        }
    }
    raw, headers = signed(body, message_type="revocation")

    assert (await post(raw, headers)).status_code == 204

    revocation = await EventSubRevocation.objects.aget()
    assert revocation.reason == "authorization_revoked"
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert errors and "authorization_revoked" in errors[0].getMessage()


def test_staff_see_revoked_subscriptions_in_the_admin(admin_client):
    EventSubRevocation.objects.create(
        subscription_id="sub-1",
        subscription_type="user.authorization.revoke",
        reason="notification_failures_exceeded",
    )
    listing = admin_client.get("/admin/accounts/eventsubrevocation/")
    assert "notification_failures_exceeded" in page(listing)


async def test_the_endpoint_is_off_without_its_settings(settings):
    settings.TWITCH_EVENTSUB_CALLBACK_URL = ""
    raw, headers = signed({"challenge": "c"})
    assert (await post(raw, headers)).status_code == 404


async def test_a_signed_body_that_is_not_json_is_a_400_not_a_500():
    assert (await post(*signed_raw(b"not json"))).status_code == 400


async def test_a_signed_body_nested_100_000_deep_is_a_400_not_a_500():
    raw = b'{"event": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    assert (await post(*signed_raw(raw))).status_code == 400


@pytest.mark.parametrize(
    ("message_type", "where"),
    [
        ("notification", ("event", "user_id")),
        ("notification", ("event", "user_login")),
        ("revocation", ("subscription", "status")),
        ("revocation", ("subscription", "id")),
    ],
    ids=["user_id", "user_login", "subscription-status", "subscription-id"],
)
@pytest.mark.parametrize("text", ["12\x0034", "12\ud80034"], ids=["nul", "surrogate"])
async def test_text_no_database_stores_in_a_signed_body_is_a_400_not_a_500(
    alice, sandbox, message_type, where, text
):
    token = await amake_token(alice, sandbox)
    body = revoke_notification(token.twitch_user_id)
    body["subscription"]["status"] = "authorization_revoked"
    outer, field = where
    body[outer][field] = text  # JSON escapes both: \u0000, \ud800

    response = await post(*signed(body, message_type=message_type))

    assert response.status_code == 400
    assert (await TwitchToken.objects.aget()).status == TwitchToken.Status.ACTIVE
    assert not await EventSubRevocation.objects.aexists()


async def test_message_ids_are_compared_whole(alice, bob, sandbox):
    alices = await amake_token(alice, sandbox)
    bobs = await amake_token(bob, sandbox)
    shared = "m" * 100  # ids alike in their first hundred characters

    first = signed(revoke_notification(alices.twitch_user_id), message_id=shared + "1")
    second = signed(revoke_notification(bobs.twitch_user_id), message_id=shared + "2")
    assert (await post(*first)).status_code == 204
    assert (await post(*second)).status_code == 204

    assert (await TwitchToken.objects.aget(pk=bobs.pk)).status == "revoked"
    assert await TokenEvent.objects.filter(source="twitch").acount() == 2
    assert (await post(*first)).status_code == 204  # a long id seen before
    assert await TokenEvent.objects.filter(source="twitch").acount() == 2


async def test_a_failure_while_revoking_is_answered_and_retried_later(
    alice, sandbox, monkeypatch
):
    token = await amake_token(alice, sandbox)
    raw, headers = signed(revoke_notification(token.twitch_user_id))

    def refuse(**fields):
        raise IntegrityError("the event could not be written")

    with monkeypatch.context() as patched:
        patched.setattr(TokenEvent.objects, "create", refuse)
        answered = await post(raw, headers)
    assert answered.status_code == 204  # kept: Twitch need not deliver it again
    assert (await TwitchToken.objects.aget()).status == TwitchToken.Status.ACTIVE
    kept = await EventSubMessage.objects.aget()
    assert (kept.status, kept.attempts) == ("pending", 1)
    assert kept.last_error.startswith("IntegrityError")

    await process()  # not due yet: backoff
    assert (await TwitchToken.objects.aget()).status == TwitchToken.Status.ACTIVE
    with time_machine.travel(time.time() + 31, tick=True):
        await process()
    assert (await TwitchToken.objects.aget()).status == TwitchToken.Status.REVOKED
    assert (await EventSubMessage.objects.aget()).status == "handled"
    assert await TokenEvent.objects.filter(source="twitch").acount() == 1


async def test_a_late_redelivery_spares_a_connection_made_after_the_disconnect(
    alice, sandbox
):
    token = await amake_token(alice, sandbox)  # Twitch still accepts its token
    await TokenEvent.objects.acreate(
        token=token, action="connect", outcome="succeeded", source="user"
    )
    raw, headers = signed(revoke_notification(token.twitch_user_id))

    assert (await post(raw, headers)).status_code == 204

    assert (await TwitchToken.objects.aget()).status == TwitchToken.Status.ACTIVE


async def test_a_late_redelivery_is_answered_in_time_when_twitch_cannot_say(
    alice, sandbox, monkeypatch
):
    from accounts.eventsub import builtin

    monkeypatch.setattr(builtin, "RECONNECT_CHECK_BUDGET", 0.3)
    token = await amake_token(alice, sandbox)
    await TokenEvent.objects.acreate(
        token=token, action="connect", outcome="succeeded", source="user"
    )
    sandbox.hang("validate")  # the seam alone would wait 8 s
    raw, headers = signed(revoke_notification(token.twitch_user_id))

    started = time.monotonic()
    assert (await answer(raw, headers)).status_code == 204
    # Answered before Twitch is asked anything.
    assert time.monotonic() - started < 1
    await background.finish_background_work()

    # Twitch could not vouch for the connection in time: the signed message wins.
    assert (await TwitchToken.objects.aget()).status == TwitchToken.Status.REVOKED


async def test_a_recent_connection_twitch_no_longer_accepts_is_revoked(alice, sandbox):
    token = await amake_token(alice, sandbox)
    await TokenEvent.objects.acreate(
        token=token, action="connect", outcome="succeeded", source="user"
    )
    sandbox.disconnect_user("alice")
    raw, headers = signed(revoke_notification(token.twitch_user_id))

    assert (await post(raw, headers)).status_code == 204

    assert (await TwitchToken.objects.aget()).status == TwitchToken.Status.REVOKED


async def test_a_failing_signal_receiver_neither_fails_the_webhook_nor_repeats(
    alice, sandbox, caplog
):
    token = await amake_token(alice, sandbox)

    async def broken(sender, token, **kwargs):
        raise RuntimeError("a bug in a receiver")

    raw, headers = signed(revoke_notification(token.twitch_user_id))
    with listening(signals.token_revoked, broken):
        response = await post(raw, headers)

    assert response.status_code == 204
    assert (await TwitchToken.objects.aget()).status == TwitchToken.Status.REVOKED
    assert any("receiver" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(
    "message_type", ["", "notifcation"], ids=["missing", "unknown"]
)
async def test_a_signed_message_of_no_known_type_is_a_400_and_not_kept(
    alice, sandbox, message_type, caplog
):
    token = await amake_token(alice, sandbox)
    raw, headers = signed(
        revoke_notification(token.twitch_user_id), message_type=message_type
    )
    if not message_type:
        del headers["Twitch-Eventsub-Message-Type"]

    response = await post(raw, headers)

    assert response.status_code == 400
    assert not await EventSubMessage.objects.aexists()
    assert (await TwitchToken.objects.aget()).status == TwitchToken.Status.ACTIVE
    assert any("message type" in r.getMessage() for r in caplog.records)


async def test_an_unsigned_message_of_no_known_type_is_still_a_403():
    raw, headers = signed({"x": 1}, message_type="whatever", secret="not-ours-at-all")
    assert (await post(raw, headers)).status_code == 403
