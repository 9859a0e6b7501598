"""Migrations that change stored data, run forward on rows like production's."""

from __future__ import annotations

import hashlib
import uuid

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

from accounts.models import TwitchToken
from tests.conftest import make_token
from tests.test_eventsub import SECRET, revoke_notification, signed

pytestmark = pytest.mark.django_db(transaction=True)


def migrate(to: list[tuple[str, str]]):
    """Migrate the test database to `to`; the models as they were there."""
    executor = MigrationExecutor(connection)
    executor.migrate(to)
    return executor.loader.project_state(to).apps


@pytest.fixture
def migrated_back():
    """The test ends with the database migrated forward to the latest again."""
    yield
    executor = MigrationExecutor(connection)
    executor.migrate(executor.loader.graph.leaf_nodes())


def test_eventsub_message_ids_become_digests_and_redeliveries_stay_known(
    migrated_back, client, alice, sandbox, settings
):
    settings.TWITCH_EVENTSUB_CALLBACK_URL = "https://testserver/twitch/eventsub/"
    settings.TWITCH_EVENTSUB_SECRET = SECRET
    handled = str(uuid.uuid4())  # Twitch's ids are UUIDs
    old = migrate([("accounts", "0005_eventsub")])
    old.get_model("accounts", "EventSubMessage").objects.create(message_id=handled)

    new = migrate([("accounts", "0006_eventsub_message_digest")])

    stored = new.get_model("accounts", "EventSubMessage").objects.get()
    assert stored.digest == hashlib.sha256(handled.encode()).hexdigest()
    # Twitch redelivers the message handled before the deploy: not handled again.
    migrate(MigrationExecutor(connection).loader.graph.leaf_nodes())
    token = make_token(alice, sandbox)
    raw, headers = signed(revoke_notification(token.twitch_user_id), message_id=handled)
    response = client.post(
        "/twitch/eventsub/", raw, content_type="application/json", headers=headers
    )
    assert response.status_code == 204
    assert TwitchToken.objects.get().status == TwitchToken.Status.ACTIVE
