"""Signing in with a password, one attempt per account at a time.

django-axes checks whether an account is locked out, then the password is checked,
then axes counts a failure: three steps. Attempts that arrive together (a burst
from many threads or workers) would all pass the first step before any of them is
counted, so every password in the burst would be checked, a right one included.
Here the three steps run as one, per username, across every worker (and on
PostgreSQL every machine): at most AXES_FAILURE_LIMIT failures are ever checked for
an account.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from axes.handlers.database import AxesDatabaseHandler
from django.conf import settings
from django.contrib.admin.forms import AdminAuthenticationForm
from django.contrib.auth.forms import AuthenticationForm
from django.contrib.auth.views import LoginView
from django.core.exceptions import ValidationError
from django.core.validators import MaxLengthValidator
from django.db import connection, transaction
from django.forms import CharField
from django.http import HttpRequest


@contextmanager
def one_attempt_at_a_time(username: str) -> Iterator[None]:
    """Hold the sign-in lock for `username` while the block runs, so axes' count
    of a failure is committed before the next attempt for it is checked.

    PostgreSQL: a transaction-scoped advisory lock on the username (the transaction
    holds nothing else of note). SQLite lives on one machine: a file lock there
    serialises every worker's attempts for the account, without holding the
    database's one write lock while a password is hashed (a few hundred ms)."""
    key = hashlib.sha256(f"twitchauth sign-in {username.lower()}".encode()).hexdigest()
    if connection.vendor == "postgresql":
        with transaction.atomic():
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", [key])
            yield
        return
    with _file_lock(key):
        yield


@contextmanager
def _file_lock(key: str) -> Iterator[None]:
    folder = Path(tempfile.gettempdir()) / "twitchauth-sign-in"
    folder.mkdir(mode=0o700, exist_ok=True)
    fd = os.open(folder / key[:32], os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # released with the file, if we die
        yield
    finally:
        os.close(fd)


def check_one_at_a_time(
    clean: Callable[[], dict[str, Any]], username: str
) -> dict[str, Any]:
    """`clean()` under the account's sign-in lock. A refusal (ValidationError) is
    raised after the lock's transaction commits: axes' count of the failure must
    stay."""
    refusal: ValidationError | None = None
    with one_attempt_at_a_time(username):
        try:
            return clean()
        except ValidationError as error:
            refusal = error
    raise refusal


class OneAttemptAtATime:
    """What both sign-in forms add to Django's: a username no account can have is
    refused by the form, and the check runs one attempt per account at a time."""

    fields: dict[str, CharField]
    cleaned_data: dict[str, Any]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Django sets the username's maximum length on the built field, which then
        # never checks it: a longer name reached authenticate(), and django-axes'
        # record of the failure (255 characters at most) was a 500 on PostgreSQL.
        username = self.fields["username"]
        username.validators.append(MaxLengthValidator(username.max_length))

    def clean(self) -> dict[str, Any]:
        username = self.cleaned_data.get("username") or ""
        return check_one_at_a_time(super().clean, username)  # type: ignore[misc]


class SignInForm(OneAttemptAtATime, AuthenticationForm):
    """Django's sign-in form, its check taken one attempt per account at a time."""


class AdminSignInForm(OneAttemptAtATime, AdminAuthenticationForm):
    """The admin's sign-in form, the same way."""


class SignInView(LoginView):
    """The sign-in page: a password, or Sign in with Twitch for a linked account
    (when OpenID Connect is on)."""

    authentication_form = SignInForm

    def get_context_data(self, **kwargs: Any) -> dict[str, Any]:
        context = super().get_context_data(**kwargs)
        context["twitch_signin"] = settings.TWITCH_OPENID_CONNECT
        return context


# Set on a request that signs someone in with Twitch (accounts/oauth/views.py).
SIGNED_IN_WITH_TWITCH = "signed_in_with_twitch"


class KeepPasswordFailures(AxesDatabaseHandler):
    """django-axes' database handler (AXES_HANDLER), except that a sign-in with
    Twitch leaves the account's failed password attempts counted: it proves control
    of the Twitch account, not knowledge of the password, so it must not give
    whoever holds that account five more guesses (AXES_RESET_ON_SUCCESS).

    `reset_user_attempts` is the database handler's own method, not a documented
    hook: tests/test_signin_with_twitch.py fails if axes stops resetting through it
    after a password sign-in, or starts to after a Twitch one."""

    def reset_user_attempts(
        self, request: HttpRequest, credentials: dict[str, Any] | None = None
    ) -> int:
        if getattr(request, SIGNED_IN_WITH_TWITCH, False):
            return 0
        return super().reset_user_attempts(request, credentials)
