"""Sessions: Django's database sessions, each save of an existing one a single
statement (accounts/web/sessions.py), saved just before Django's middleware would
(accounts/web/middleware.py)."""

from __future__ import annotations

import pytest
from django.conf import settings
from django.contrib.sessions.backends.base import UpdateError
from django.contrib.sessions.middleware import SessionMiddleware
from django.db import connection
from django.http import HttpRequest, HttpResponse
from django.test import RequestFactory
from django.test.utils import CaptureQueriesContext

from accounts.web.middleware import SessionSaveMiddleware
from accounts.web.sessions import SessionStore

pytestmark = pytest.mark.django_db(transaction=True)


def statements(queries: CaptureQueriesContext) -> list[str]:
    return [query["sql"].split()[0] for query in queries]


def test_saving_a_changed_session_is_one_statement():
    session = SessionStore()
    session["pending"] = "first"
    session.save()  # a new session: Django's own INSERT

    session["pending"] = "second"
    with CaptureQueriesContext(connection) as queries:
        session.save()

    assert statements(queries) == ["UPDATE"]
    assert SessionStore(session.session_key)["pending"] == "second"


def test_saving_a_session_deleted_meanwhile_is_an_update_error_as_in_django():
    session = SessionStore()
    session["pending"] = "first"
    session.save()
    SessionStore(session.session_key).delete()

    session["pending"] = "second"
    with pytest.raises(UpdateError):
        session.save()


def test_a_session_saved_ahead_is_not_written_again_by_the_next_save():
    session = SessionStore()
    session["pending"] = "first"
    session.save()

    session["pending"] = "second"
    with CaptureQueriesContext(connection) as queries:
        session.save_ahead()
        session.save()  # Django's SessionMiddleware's, after the response

    assert statements(queries) == ["UPDATE"]
    session["pending"] = "third"
    session.save()  # a later change is written as ever
    assert SessionStore(session.session_key)["pending"] == "third"


def test_a_change_after_saving_ahead_is_saved_by_the_next_save():
    session = SessionStore()
    session["pending"] = "first"
    session.save()

    session["pending"] = "second"
    session.save_ahead()
    session["pending"] = "third"  # by a middleware between the two, say
    session.save()

    assert SessionStore(session.session_key)["pending"] == "third"


def test_a_request_that_changes_its_session_saves_it_once_and_gets_its_cookie():
    existing = SessionStore()
    existing["pending"] = "first"
    existing.save()
    request = RequestFactory().get("/")
    request.COOKIES[settings.SESSION_COOKIE_NAME] = existing.session_key

    def view(request: HttpRequest) -> HttpResponse:
        request.session["pending"] = "second"
        return HttpResponse("changed")

    chain = SessionMiddleware(SessionSaveMiddleware(view))
    with CaptureQueriesContext(connection) as queries:
        response = chain(request)

    assert statements(queries) == ["SELECT", "UPDATE"]  # loaded, then saved
    assert response.cookies[settings.SESSION_COOKIE_NAME].value == existing.session_key
    assert SessionStore(existing.session_key)["pending"] == "second"
