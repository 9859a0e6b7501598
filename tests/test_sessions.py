"""Sessions: Django's database sessions, each save of an existing one a single
statement (accounts/sessions.py)."""

from __future__ import annotations

import pytest
from django.contrib.sessions.backends.base import UpdateError
from django.db import connection
from django.test.utils import CaptureQueriesContext

from accounts.web.sessions import SessionStore

pytestmark = pytest.mark.django_db(transaction=True)


def test_saving_a_changed_session_is_one_statement():
    session = SessionStore()
    session["pending"] = "first"
    session.save()  # a new session: Django's own INSERT

    session["pending"] = "second"
    with CaptureQueriesContext(connection) as queries:
        session.save()

    assert [q["sql"].split()[0] for q in queries] == ["UPDATE"]
    assert SessionStore(session.session_key)["pending"] == "second"


def test_saving_a_session_deleted_meanwhile_is_an_update_error_as_in_django():
    session = SessionStore()
    session["pending"] = "first"
    session.save()
    SessionStore(session.session_key).delete()

    session["pending"] = "second"
    with pytest.raises(UpdateError):
        session.save()
