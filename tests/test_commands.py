"""The small commands: the demo account for newcomers."""

from __future__ import annotations

import io

import pytest
from django.contrib.auth.models import User
from django.core.management import call_command
from django.core.management.base import CommandError

pytestmark = pytest.mark.django_db


def printed_password(out: io.StringIO) -> str:
    return out.getvalue().split("password '")[1].split("'")[0]


def test_create_demo_user_prints_working_credentials_in_debug(settings):
    settings.DEBUG = True
    out = io.StringIO()

    call_command("create_demo_user", stdout=out)

    user = User.objects.get(username="demo")
    assert user.check_password(printed_password(out))
    assert user.is_staff and user.is_superuser


def test_create_demo_user_refuses_to_run_in_production(settings):
    settings.DEBUG = False
    with pytest.raises(CommandError, match="local development"):
        call_command("create_demo_user")


def test_create_demo_user_refuses_to_change_an_existing_user_without_force(
    settings, alice
):
    settings.DEBUG = True

    with pytest.raises(CommandError, match="already exists.*--force") as refused:
        call_command("create_demo_user", username="alice")

    assert refused.value.returncode == 1
    alice.refresh_from_db()
    assert alice.check_password("pw")
    assert not alice.is_staff and not alice.is_superuser


def test_create_demo_user_with_force_resets_an_existing_user(settings, alice):
    settings.DEBUG = True
    alice.is_active = False
    alice.save()
    out = io.StringIO()

    call_command("create_demo_user", username="alice", force=True, stdout=out)

    assert "Reset demo account" in out.getvalue()
    alice.refresh_from_db()
    assert alice.check_password(printed_password(out))
    assert not alice.check_password("pw")
    assert alice.is_active and alice.is_staff and alice.is_superuser


@pytest.mark.parametrize("username", ["", "   "])
def test_create_demo_user_refuses_an_empty_username(settings, username):
    settings.DEBUG = True

    with pytest.raises(CommandError, match="must not be empty") as refused:
        call_command("create_demo_user", username=username, force=True)

    assert refused.value.returncode == 2
    assert not User.objects.exists()


def test_create_demo_user_refuses_a_username_django_would_reject(settings):
    settings.DEBUG = True

    with pytest.raises(CommandError, match="valid username") as refused:
        call_command("create_demo_user", username="demo user")

    assert refused.value.returncode == 2
    assert not User.objects.exists()
