"""Each misconfiguration is reported by `manage.py check`, naming the variable."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.core.checks import run_checks
from django.core.management import call_command
from django.core.management.base import SystemCheckError
from django.utils import timezone

from accounts import checks
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
    "scope", ["openid", "channel:manage:guest_star", "user:read:whispers:future"]
)
def test_scopes_twitchapi_does_not_know_are_only_a_warning(settings, scope):
    # Twitch has scopes twitchAPI 4.5.0's AuthScope lacks; they must stay usable.
    settings.TWITCH_SCOPES = ["chat:read", scope]
    warnings = checks.check_scopes()
    assert ids(warnings) == ["accounts.W005"]
    assert scope in warnings[0].msg
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
    assert checks.check_eventsub() == []


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
    assert ids(checks.check_eventsub()) == ["accounts.E008"]


@pytest.mark.parametrize("secret", ["", "short", "x" * 101, "naïve-secret-here"])
def test_an_eventsub_secret_of_the_wrong_size_is_reported(settings, secret):
    settings.TWITCH_EVENTSUB_CALLBACK_URL = "https://example.com/twitch/eventsub/"
    settings.TWITCH_EVENTSUB_SECRET = secret
    assert ids(checks.check_eventsub()) == ["accounts.E009"]


def test_a_good_eventsub_configuration_passes(settings):
    settings.TWITCH_EVENTSUB_CALLBACK_URL = "https://example.com/twitch/eventsub/"
    settings.TWITCH_EVENTSUB_SECRET = "a-secret-long-enough"
    assert checks.check_eventsub() == []


# Our subclasses of Django's middleware, and Django's own path for each.
DJANGO_PATHS = {
    "accounts.web.middleware.SecurityMiddleware": (
        "django.middleware.security.SecurityMiddleware"
    ),
    "accounts.web.middleware.XFrameOptionsMiddleware": (
        "django.middleware.clickjacking.XFrameOptionsMiddleware"
    ),
    "accounts.web.middleware.CsrfViewMiddleware": (
        "django.middleware.csrf.CsrfViewMiddleware"
    ),
}


def deploy_warnings() -> list[str]:
    """The ids `manage.py check --deploy` shows: every check's, less the silenced."""
    return sorted(
        message.id
        for message in run_checks(include_deployment_checks=True)
        if not message.is_silenced()
    )


def test_our_middleware_is_not_reported_missing_at_deploy():
    shown = deploy_warnings()
    assert not {"security.W001", "security.W002", "security.W003"} & set(shown)
    assert not {"accounts.W008", "accounts.W009", "accounts.W010"} & set(shown)


def test_ssl_redirect_off_is_reported_at_deploy(settings):
    settings.SECURE_SSL_REDIRECT = False
    assert deploy_warnings().count("security.W008") == 1

    settings.SECURE_SSL_REDIRECT = True
    assert "security.W008" not in deploy_warnings()


def test_hsts_off_is_reported_at_deploy(settings):
    settings.SECURE_HSTS_SECONDS = 0
    assert deploy_warnings().count("security.W004") == 1


def test_x_frame_options_other_than_deny_is_reported_at_deploy(settings):
    settings.X_FRAME_OPTIONS = "SAMEORIGIN"
    assert deploy_warnings().count("security.W019") == 1


def test_an_insecure_csrf_cookie_is_reported_at_deploy(settings):
    settings.CSRF_COOKIE_SECURE = False
    assert deploy_warnings().count("security.W016") == 1


@pytest.mark.parametrize(
    ("middleware", "warning"),
    [
        ("accounts.web.middleware.SecurityMiddleware", "accounts.W008"),
        ("accounts.web.middleware.XFrameOptionsMiddleware", "accounts.W009"),
        ("accounts.web.middleware.CsrfViewMiddleware", "accounts.W010"),
    ],
)
def test_missing_middleware_is_reported_at_deploy(settings, middleware, warning):
    settings.MIDDLEWARE = [path for path in settings.MIDDLEWARE if path != middleware]
    shown = set(deploy_warnings())
    assert shown & {"accounts.W008", "accounts.W009", "accounts.W010"} == {warning}


def test_missing_security_middleware_leaves_its_settings_unchecked(settings):
    # As with Django's own: without the middleware the settings do nothing, and
    # the one warning says so.
    settings.MIDDLEWARE = [
        path
        for path in settings.MIDDLEWARE
        if path != "accounts.web.middleware.SecurityMiddleware"
    ]
    settings.SECURE_SSL_REDIRECT = False
    settings.SECURE_HSTS_SECONDS = 0
    shown = deploy_warnings()
    assert "accounts.W008" in shown
    assert not {"security.W004", "security.W008"} & set(shown)


def test_django_own_middleware_is_checked_once(settings):
    settings.MIDDLEWARE = [DJANGO_PATHS.get(path, path) for path in settings.MIDDLEWARE]
    settings.SECURE_SSL_REDIRECT = False
    settings.X_FRAME_OPTIONS = "SAMEORIGIN"
    settings.CSRF_COOKIE_SECURE = False
    assert checks.check_django_middleware() == []
    shown = deploy_warnings()
    for warning in ("security.W008", "security.W016", "security.W019"):
        assert shown.count(warning) == 1
    assert not {"accounts.W008", "accounts.W009", "accounts.W010"} & set(shown)


@pytest.mark.parametrize(
    "misconfigured",
    [
        {
            "SECURE_SSL_REDIRECT": False,
            "SECURE_HSTS_SECONDS": 0,
            "SECURE_CONTENT_TYPE_NOSNIFF": False,
            "SECURE_REFERRER_POLICY": None,
            "SECURE_CROSS_ORIGIN_OPENER_POLICY": "not-a-policy",
            "X_FRAME_OPTIONS": "SAMEORIGIN",
            "CSRF_COOKIE_SECURE": False,
        },
        {
            "SECURE_HSTS_SECONDS": 3600,
            "SECURE_HSTS_INCLUDE_SUBDOMAINS": False,
            "SECURE_HSTS_PRELOAD": False,
            "SECURE_REFERRER_POLICY": "not-a-policy",
        },
    ],
)
def test_deploy_checks_say_what_they_would_with_django_own_middleware(
    settings, misconfigured
):
    for name, value in misconfigured.items():
        setattr(settings, name, value)
    ours = deploy_warnings()
    settings.MIDDLEWARE = [DJANGO_PATHS.get(path, path) for path in settings.MIDDLEWARE]
    assert ours == deploy_warnings()


def test_check_deploy_really_warns_of_ssl_redirect_off(settings):
    settings.SECURE_SSL_REDIRECT = False
    with pytest.raises(SystemCheckError, match=r"security\.W008"):
        call_command("check", deploy=True, fail_level="WARNING")
