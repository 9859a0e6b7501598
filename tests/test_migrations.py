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


def test_every_connection_becomes_the_default_role_with_its_tokens_and_history(
    migrated_back, alice, bob, sandbox
):
    old = migrate([("accounts", "0006_eventsub_message_digest")])
    Token = old.get_model("accounts", "TwitchToken")
    Event = old.get_model("accounts", "TokenEvent")
    issued = sandbox.issue_tokens(login="alice", scopes=["chat:read"])
    kept = Token.objects.create(
        user_id=alice.pk,
        twitch_user_id=sandbox.add_user("alice").id,
        login="alice",
        access_token=issued["access_token"],
        refresh_token=issued["refresh_token"],
        scopes=["chat:read"],
    )
    Event.objects.create(
        token=kept, action="connect", outcome="succeeded", source="user"
    )
    Token.objects.create(
        user_id=bob.pk, twitch_user_id="7", login="gone", status="revoked"
    )

    migrate([("accounts", "0007_connection_roles")])
    migrate(MigrationExecutor(connection).loader.graph.leaf_nodes())

    tokens = {token.login: token for token in TwitchToken.objects.all()}
    assert {token.role for token in tokens.values()} == {"main"}
    assert tokens["alice"].refresh_token == issued["refresh_token"]  # decrypts
    assert tokens["alice"].events.count() == 1
    # A person may now add a bot beside their own account.
    TwitchToken.objects.create(
        user=alice, role="bot", twitch_user_id="8", login="alicebot"
    )
    assert alice.twitch_tokens.count() == 2


def test_going_back_before_roles_is_refused_while_bots_exist(
    migrated_back, alice, sandbox
):
    make_token(alice, sandbox, role="bot", login="alicebot")

    with pytest.raises(RuntimeError, match="roles other than 'main' exist"):
        migrate([("accounts", "0006_eventsub_message_digest")])

    assert TwitchToken.objects.get().role == "bot"  # nothing was undone
