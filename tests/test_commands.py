"""The small commands: the demo account for newcomers."""

from __future__ import annotations

import io

import pytest
from django.contrib.auth import authenticate
from django.core.management import call_command
from django.core.management.base import CommandError

pytestmark = pytest.mark.django_db


def test_create_demo_user_prints_working_credentials_in_debug(settings):
    settings.DEBUG = True
    out = io.StringIO()

    call_command("create_demo_user", stdout=out)

    password = out.getvalue().split("password '")[1].split("'")[0]
    user = authenticate(username="demo", password=password)
    assert user is not None and user.is_staff


def test_create_demo_user_refuses_to_run_in_production(settings):
    settings.DEBUG = False
    with pytest.raises(CommandError, match="local development"):
        call_command("create_demo_user")
