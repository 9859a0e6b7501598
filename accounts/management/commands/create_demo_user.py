"""Create the local demo account, so a newcomer can sign in at once.

Development only: it refuses to run unless DEBUG is on, because a known account
has no place on a production site. It makes the account a superuser with a fresh
password, so it leaves an existing user alone unless told to take it over with
--force (scripts/dev does, for the `demo` account it owns).

Exit status: 0 when the account was created or reset, 1 when DEBUG is off or the
user exists and --force was not given, 2 for a missing or invalid username.
"""

from __future__ import annotations

import secrets
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import transaction


class Command(BaseCommand):
    help = (
        "Create the 'demo' superuser with a fresh random password and print it. "
        "Refuses to run unless DEBUG is on, and to change an existing user unless "
        "--force. Exit status: 0 done, 1 refused (DEBUG off, or the user exists), "
        "2 bad username."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--username", default="demo", help="Account name (default: demo)."
        )
        parser.add_argument(
            "--force",
            action="store_true",
            help="If the user exists, make it a superuser and reset its password.",
        )

    def handle(self, *args: Any, username: str, force: bool, **options: Any) -> None:
        if not settings.DEBUG:
            raise CommandError(
                "create_demo_user is for local development (DEBUG=True)."
            )
        User = get_user_model()
        if not username.strip():
            raise CommandError("--username must not be empty.", returncode=2)
        try:
            User._meta.get_field(User.USERNAME_FIELD).clean(username, None)
        except ValidationError as error:
            raise CommandError(
                f"--username {username!r}: {' '.join(error.messages)}", returncode=2
            ) from None

        password = secrets.token_urlsafe(9)
        with transaction.atomic():
            user, created = User._default_manager.get_or_create(
                **{User.USERNAME_FIELD: username}
            )
            if not created and not force:
                raise CommandError(
                    f"User {username!r} already exists; create_demo_user would make "
                    "it a superuser and reset its password. Pass --force to do "
                    "that, or choose another --username."
                )
            user.is_staff = user.is_superuser = user.is_active = True
            user.set_password(password)
            user.save()
        verb = "Created" if created else "Reset"
        self.stdout.write(
            self.style.SUCCESS(
                f"{verb} demo account: username {username!r}, password {password!r}"
            )
        )
