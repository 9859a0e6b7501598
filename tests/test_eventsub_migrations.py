"""Migration 0008 (EventSub's inbox), run forward on rows like production's."""

from __future__ import annotations

import hashlib
import uuid

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

from accounts.models import EventSubMessage, TwitchToken
from tests.conftest import make_token
from tests.test_eventsub import SECRET, revoke_notification, signed
from tests.test_migrations import migrate, migrated_back

pytestmark = pytest.mark.django_db(transaction=True)
__all__ = ["migrated_back"]


def test_messages_handled_before_the_inbox_stay_handled_and_known(
    migrated_back, client, alice, sandbox, settings
):
    settings.TWITCH_EVENTSUB_CALLBACK_URL = "https://testserver/twitch/eventsub/"
    settings.TWITCH_EVENTSUB_SECRET = SECRET
    handled = str(uuid.uuid4())
    digest = hashlib.sha256(handled.encode()).hexdigest()
    old = migrate([("accounts", "0007_connection_roles")])
    old.get_model("accounts", "EventSubMessage").objects.create(digest=digest)
    old.get_model("accounts", "EventSubRevocation").objects.create(
        subscription_id="s", subscription_type="user.authorization.revoke", reason="x"
    )

    new = migrate([("accounts", "0008_eventsub_inbox")])

    stored = new.get_model("accounts", "EventSubMessage").objects.get()
    assert (stored.digest, stored.status, stored.attempts) == (digest, "handled", 0)
    revocation = new.get_model("accounts", "EventSubRevocation").objects.get()
    assert (revocation.condition, revocation.subscription_version) == ({}, "")
    # Twitch redelivers the message handled before the deploy: not handled again.
    migrate(MigrationExecutor(connection).loader.graph.leaf_nodes())
    token = make_token(alice, sandbox)
    raw, headers = signed(revoke_notification(token.twitch_user_id), message_id=handled)
    response = client.post(
        "/twitch/eventsub/", raw, content_type="application/json", headers=headers
    )
    assert response.status_code == 204
    assert TwitchToken.objects.get().status == TwitchToken.Status.ACTIVE
    assert EventSubMessage.objects.get().status == "handled"
