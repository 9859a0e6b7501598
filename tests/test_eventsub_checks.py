"""System checks for EventSub: the types wanted, and versions Twitch removed."""

from __future__ import annotations

import io
import subprocess
import sys

import pytest
from django.core.management import call_command
from django.core.management.base import SystemCheckError

from accounts.eventsub import checks
from accounts.models import EventSubRevocation
from accounts.roles import role_named
from tests.conftest import BASE_DIR, process_env


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


def removed_version(kind: str = "stream.online", version: str = "1") -> None:
    EventSubRevocation.objects.create(
        subscription_id="s",
        subscription_type=kind,
        subscription_version=version,
        reason="version_removed",
    )


@pytest.fixture
def eventsub_configured(settings):
    settings.TWITCH_EVENTSUB_CALLBACK_URL = "https://example.com/twitch/eventsub/"
    settings.TWITCH_EVENTSUB_SECRET = "a-secret-of-some-length"
    return settings


@pytest.mark.django_db
def test_a_version_twitch_removed_is_a_warning_while_it_is_still_wanted(
    eventsub_configured,
):
    eventsub_configured.TWITCH_EVENTSUB_TYPES = "stream.online:1 stream.offline"
    removed_version()

    warnings = checks.check_eventsub_versions(databases=["default"])

    assert ids(warnings) == ["accounts.W015"]
    assert warnings[0].level == checks.checks.WARNING
    assert "stream.online version 1" in warnings[0].msg
    assert "database" in checks.check_eventsub_versions.tags


@pytest.mark.django_db
def test_a_removed_version_no_longer_wanted_is_not_reported(eventsub_configured):
    eventsub_configured.TWITCH_EVENTSUB_TYPES = "stream.offline"
    removed_version()
    assert checks.check_eventsub_versions(databases=["default"]) == []


@pytest.mark.django_db
def test_a_removed_version_is_only_looked_up_when_database_checks_are_asked_for(
    eventsub_configured, django_assert_num_queries
):
    eventsub_configured.TWITCH_EVENTSUB_TYPES = "stream.online"
    removed_version()
    with django_assert_num_queries(0):
        assert checks.check_eventsub_versions(databases=None) == []


@pytest.mark.django_db
def test_check_with_the_database_shows_a_removed_version(eventsub_configured):
    eventsub_configured.TWITCH_EVENTSUB_TYPES = "stream.online"
    removed_version()
    err = io.StringIO()

    call_command("check", "--database", "default", stderr=err, stdout=io.StringIO())

    assert "accounts.W015" in err.getvalue()


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    "command",
    [["refresh_tokens"], ["eventsub", "process"]],
    ids=["refresh_tokens", "eventsub-process"],
)
def test_cron_commands_still_run_after_twitch_removed_a_wanted_version(
    sandbox, command
):
    removed_version()

    run = subprocess.run(
        [sys.executable, "manage.py", *command],
        cwd=BASE_DIR,
        env=process_env(
            sandbox,
            TWITCH_EVENTSUB_CALLBACK_URL="https://localhost/twitch/eventsub/",
            TWITCH_EVENTSUB_SECRET="a-secret-of-some-length",
            TWITCH_EVENTSUB_TYPES="stream.online:1",
        ),
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert run.returncode == 0, run.stderr
    assert "SystemCheckError" not in run.stderr


def test_the_check_command_really_fails_on_an_unknown_type(settings):
    settings.TWITCH_EVENTSUB_TYPES = "stream.onlien"
    with pytest.raises(SystemCheckError, match="accounts.E014"):
        call_command("check")
