"""Each misconfiguration is reported by `manage.py check`, naming the variable."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.core.checks import run_checks
from django.core.management import call_command
from django.core.management.base import SystemCheckError
from django.utils import timezone

from accounts import checks
from accounts.eventsub import checks as eventsub_checks
from accounts.tokens.schedule import Plan, select_due
from tests.conftest import make_token


def ids(messages) -> list[str]:
    return [message.id for message in messages]


def test_a_correct_configuration_passes_every_check():
    call_command("check")


def test_missing_twitch_credentials_are_reported(settings):
    settings.TWITCH_CLIENT_SECRET = ""
    errors = checks.check_twitch_credentials()
    assert ids(errors) == ["accounts.E001"]
    assert "TWITCH_CLIENT_SECRET" in errors[0].msg


@pytest.mark.parametrize("uri", ["", "/twitch/callback/", "ftp://x/twitch/callback/"])
def test_a_redirect_uri_that_is_not_absolute_is_reported(settings, uri):
    settings.TWITCH_REDIRECT_URI = uri
    assert ids(checks.check_redirect_uri()) == ["accounts.E002"]


def test_a_redirect_uri_that_does_not_route_to_the_callback_is_reported(settings):
    settings.TWITCH_REDIRECT_URI = "https://example.com/twitch/callbak/"
    errors = checks.check_redirect_uri()
    assert ids(errors) == ["accounts.E003"]
    assert "TWITCH_REDIRECT_URI" in errors[0].msg


def test_malformed_scopes_are_reported_by_name(settings):
    settings.TWITCH_SCOPES = ["chat:read", "Chat Read!"]
    errors = checks.check_scopes()
    assert ids(errors) == ["accounts.E004"]
    assert "Chat Read!" in errors[0].msg and "TWITCH_SCOPES" in errors[0].msg


@pytest.mark.parametrize(
    "scope",
    [
        "openid",
        "channel:manage:guest_star",
        "moderator:manage:suspicious_users",
        "editor:manage:clips",
    ],
)
def test_scopes_twitch_has_and_twitchapi_lacks_are_fine(settings, scope):
    # twitchAPI 4.5.0's AuthScope lacks them; Twitch has them, so they are used.
    settings.TWITCH_SCOPES = ["chat:read", scope]
    assert checks.check_scopes() == []


def test_a_scope_twitch_does_not_have_is_an_error_with_a_guess(settings):
    settings.TWITCH_SCOPES = ["chat:read", "chat:raed", "user:read:whispers:future"]
    errors = checks.check_scopes()
    assert ids(errors) == ["accounts.E011"]
    assert "chat:raed (did you mean chat:read?)" in errors[0].msg
    assert "user:read:whispers:future" in errors[0].msg
    assert "TWITCH_SCOPES" in errors[0].msg


def test_optional_scopes_twitch_does_not_have_are_an_error_too(settings):
    settings.TWITCH_OPTIONAL_SCOPES = ["user:bott"]
    errors = checks.check_scopes()
    assert ids(errors) == ["accounts.E011"]
    assert "TWITCH_OPTIONAL_SCOPES" in errors[0].msg


def test_a_scope_twitch_has_removed_is_an_error(settings):
    settings.TWITCH_SCOPES = ["chat:read", "channel_subscriptions"]
    errors = checks.check_scopes()
    assert ids(errors) == ["accounts.E012"]
    assert "channel_subscriptions (since 2022-02-28)" in errors[0].msg


def test_a_deprecated_scope_is_only_a_warning(settings):
    settings.TWITCH_SCOPES = ["chat:read", "user:edit:follows"]
    warnings = checks.check_scopes()
    assert ids(warnings) == ["accounts.W013"]
    assert "user:edit:follows" in warnings[0].msg
    assert not any(w.is_serious() for w in warnings)


def test_a_malformed_encryption_key_is_reported_without_showing_it(settings):
    settings.TOKEN_ENCRYPTION_KEYS = [settings.TOKEN_ENCRYPTION_KEYS[0], "not-a-key"]
    errors = checks.check_encryption_keys()
    assert ids(errors) == ["accounts.E005"]
    assert "key #2" in errors[0].msg and "not-a-key" not in errors[0].msg


def test_missing_encryption_keys_are_reported(settings):
    settings.TOKEN_ENCRYPTION_KEYS = []
    assert ids(checks.check_encryption_keys()) == ["accounts.E006"]


def test_a_base_url_without_a_trailing_slash_is_reported(settings):
    settings.TWITCH_AUTH_BASE_URL = "https://id.twitch.tv/oauth2"
    assert ids(checks.check_base_urls()) == ["accounts.E007"]


@pytest.mark.parametrize("minutes", [0, 60, 90])
def test_a_validation_interval_of_an_hour_or_more_is_reported(settings, minutes):
    settings.TOKEN_VALIDATE_AFTER = timedelta(minutes=minutes)
    assert ids(checks.check_validation_interval()) == ["accounts.E010"]


@pytest.mark.django_db
def test_the_validation_interval_is_a_setting_the_command_follows(
    settings, alice, sandbox
):
    # A token validated 20 minutes ago: not due at the default 40, due at 15.
    token = make_token(
        alice, sandbox, last_validated_at=timezone.now() - timedelta(minutes=20)
    )
    assert checks.check_validation_interval() == []
    assert select_due(plan=Plan(refresh=False)) == []
    settings.TOKEN_VALIDATE_AFTER = timedelta(minutes=15)
    assert select_due(plan=Plan(refresh=False)) == [token.pk]


def test_the_check_command_really_fails_on_a_misconfiguration(settings):
    settings.TWITCH_SCOPES = ["no spaces!"]
    with pytest.raises(SystemCheckError, match="no spaces!"):
        call_command("check")


def test_the_check_command_really_fails_on_a_scope_typo(settings):
    settings.TWITCH_SCOPES = ["chat:read", "chat:eidt"]
    with pytest.raises(SystemCheckError, match="accounts.E011"):
        call_command("check")


def test_http_urls_to_twitch_warn_at_deploy_outside_debug(settings):
    settings.DEBUG = False
    settings.TWITCH_REDIRECT_URI = "http://example.com/twitch/callback/"
    settings.TWITCH_AUTH_BASE_URL = "http://id.twitch.tv/oauth2/"
    settings.TWITCH_API_BASE_URL = "https://api.twitch.tv/helix/"
    assert ids(checks.check_https_to_twitch()) == ["accounts.W006", "accounts.W007"]

    settings.DEBUG = True
    assert checks.check_https_to_twitch() == []


def test_https_urls_to_twitch_pass_the_deploy_check(settings):
    settings.DEBUG = False
    settings.TWITCH_REDIRECT_URI = "https://example.com/twitch/callback/"
    settings.TWITCH_AUTH_BASE_URL = "https://id.twitch.tv/oauth2/"
    settings.TWITCH_API_BASE_URL = "https://api.twitch.tv/helix/"
    assert checks.check_https_to_twitch() == []


def test_the_deploy_check_runs_only_with_deploy(settings):
    from django.core import checks as django_checks

    settings.DEBUG = False
    settings.TWITCH_REDIRECT_URI = "http://example.com/twitch/callback/"
    plain = django_checks.run_checks(include_deployment_checks=False)
    deploy = django_checks.run_checks(include_deployment_checks=True)
    assert "accounts.W006" not in ids(plain)
    assert "accounts.W006" in ids(deploy)


def test_static_files_never_collected_are_reported_by_the_deploy_check(
    settings, tmp_path
):
    settings.DEBUG = False
    settings.STATIC_ROOT = tmp_path
    settings.STORAGES = {
        **settings.STORAGES,
        "staticfiles": {
            "BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"
        },
    }
    assert ids(checks.check_static_files_collected()) == ["accounts.W011"]

    call_command("collectstatic", "--noinput", verbosity=0)
    assert checks.check_static_files_collected() == []


def test_eventsub_is_off_without_a_callback_url(settings):
    settings.TWITCH_EVENTSUB_CALLBACK_URL = ""
    settings.TWITCH_EVENTSUB_SECRET = ""
    assert eventsub_checks.check_eventsub() == []


@pytest.mark.parametrize(
    "url",
    [
        "http://example.com/twitch/eventsub/",
        "https://example.com:8443/twitch/eventsub/",
        "https://example.com/twitch/elsewhere/",
        "/twitch/eventsub/",
    ],
)
def test_an_eventsub_callback_that_twitch_cannot_call_is_reported(settings, url):
    settings.DEBUG = False
    settings.TWITCH_EVENTSUB_CALLBACK_URL = url
    settings.TWITCH_EVENTSUB_SECRET = "a-secret-long-enough"
    assert ids(eventsub_checks.check_eventsub()) == ["accounts.E008"]


@pytest.mark.parametrize("secret", ["", "short", "x" * 101, "naïve-secret-here"])
def test_an_eventsub_secret_of_the_wrong_size_is_reported(settings, secret):
    settings.TWITCH_EVENTSUB_CALLBACK_URL = "https://example.com/twitch/eventsub/"
    settings.TWITCH_EVENTSUB_SECRET = secret
    assert ids(eventsub_checks.check_eventsub()) == ["accounts.E009"]


def test_a_good_eventsub_configuration_passes(settings):
    settings.TWITCH_EVENTSUB_CALLBACK_URL = "https://example.com/twitch/eventsub/"
    settings.TWITCH_EVENTSUB_SECRET = "a-secret-long-enough"
    assert eventsub_checks.check_eventsub() == []


def test_django_s_security_middleware_is_found_by_its_own_deploy_checks(settings):
    # Django's security, clickjacking and CSRF middleware are listed by their own
    # paths, so Django's deploy checks see them: none is reported missing, and
    # none of those reports is silenced.
    missing = {"security.W001", "security.W002", "security.W003"}
    shown = {message.id for message in run_checks(include_deployment_checks=True)}
    assert not missing & shown
    assert not missing & set(settings.SILENCED_SYSTEM_CHECKS)


def test_check_deploy_really_warns_of_ssl_redirect_off(settings):
    settings.SECURE_SSL_REDIRECT = False
    with pytest.raises(SystemCheckError, match=r"security\.W008"):
        call_command("check", deploy=True, fail_level="WARNING")
