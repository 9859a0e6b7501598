"""Create (or reset) the local demo account, so a newcomer can sign in at once.

Development only: it refuses to run unless DEBUG is on, because a known account
has no place on a production site.
"""

from __future__ import annotations

import secrets
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError


class Command(BaseCommand):
    help = (
        "Create or reset the 'demo' superuser with a fresh random password and print "
        "it. Refuses to run unless DEBUG is on."
    )

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument(
            "--username", default="demo", help="Account name (default: demo)."
        )

    def handle(self, *args: Any, username: str, **options: Any) -> None:
        if not settings.DEBUG:
            raise CommandError(
                "create_demo_user is for local development (DEBUG=True)."
            )
        password = secrets.token_urlsafe(9)
        user, created = get_user_model().objects.get_or_create(username=username)
        user.is_staff = user.is_superuser = True
        user.set_password(password)
        user.save()
        verb = "Created" if created else "Reset"
        self.stdout.write(
            self.style.SUCCESS(
                f"{verb} demo account: username {username!r}, password {password!r}"
            )
        )
