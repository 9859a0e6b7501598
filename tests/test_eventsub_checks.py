"""System checks for EventSub: the types wanted, and versions Twitch removed."""

from __future__ import annotations

import pytest
from django.core.management import call_command
from django.core.management.base import SystemCheckError

from accounts import checks
from accounts.models import EventSubRevocation
from accounts.roles import role_named


def ids(messages) -> list[str]:
    return [message.id for message in messages]


def test_known_types_whose_scopes_are_asked_for_pass(settings):
    settings.TWITCH_EVENTSUB_TYPES = "stream.online stream.offline channel.update:2"
    assert checks.check_eventsub_types() == []


def test_an_unknown_type_or_version_is_an_error(settings):
    settings.TWITCH_EVENTSUB_TYPES = "stream.online strem.offline channel.update:9"
    errors = checks.check_eventsub_types()
    assert ids(errors) == ["accounts.E014"]
    assert "strem.offline, channel.update:9" in errors[0].msg


def test_a_type_for_a_role_that_is_off_is_an_error(settings):
    settings.TWITCH_BOT_SCOPES = []
    settings.TWITCH_EVENTSUB_TYPES = "channel.chat.message"
    assert role_named("bot") is None
    assert "accounts.E014" in ids(checks.check_eventsub_types())


def test_a_scope_no_connection_is_asked_for_is_a_warning(settings):
    settings.TWITCH_SCOPES = ["chat:read"]
    settings.TWITCH_OPTIONAL_SCOPES = []
    settings.TWITCH_EVENTSUB_TYPES = "channel.subscribe"
    warnings = checks.check_eventsub_types()
    assert ids(warnings) == ["accounts.W014"]
    assert "channel:read:subscriptions" in warnings[0].msg


@pytest.mark.django_db
def test_a_version_twitch_removed_is_an_error(settings):
    settings.TWITCH_EVENTSUB_CALLBACK_URL = "https://example.com/twitch/eventsub/"
    EventSubRevocation.objects.create(
        subscription_id="s",
        subscription_type="channel.update",
        subscription_version="1",
        reason="version_removed",
    )
    errors = checks.check_eventsub_versions()
    assert ids(errors) == ["accounts.E015"]
    assert "channel.update version 1" in errors[0].msg


def test_the_check_command_really_fails_on_an_unknown_type(settings):
    settings.TWITCH_EVENTSUB_TYPES = "stream.onlien"
    with pytest.raises(SystemCheckError, match="accounts.E014"):
        call_command("check")
