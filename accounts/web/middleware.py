"""Middleware: the chain runs on the request's own thread in one trip; a database
that does not answer gets a page, not a traceback, in a view and when saving the
session after it."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from asgiref.sync import iscoroutinefunction, markcoroutinefunction, sync_to_async
from django.conf import settings
from django.contrib.sessions.backends.base import UpdateError
from django.http import HttpRequest, HttpResponse
from django.http.response import HttpResponseBase
from django.template.loader import render_to_string
from django.utils.cache import add_never_cache_headers
from django.utils.deprecation import MiddlewareMixin

from accounts.db import DATABASE_UNAVAILABLE
from accounts.web.sessions import SessionStore

logger = logging.getLogger(__name__)

GetResponse = Callable[[HttpRequest], HttpResponseBase]
AsyncGetResponse = Callable[[HttpRequest], Awaitable[HttpResponseBase]]


class DatabaseUnavailableMiddleware(MiddlewareMixin):
    """Any view (the admin's included) whose database is unreachable, refusing
    writes or timing out answers 503 with a plain sentence; nothing was half-written,
    because the error rolled back. Other database errors are bugs, left as such."""

    def process_exception(
        self, request: HttpRequest, exception: Exception
    ) -> HttpResponse | None:
        if not isinstance(exception, DATABASE_UNAVAILABLE):
            return None
        return database_unavailable(request, exception)


class OnTheRequestThread(MiddlewareMixin):
    """Sync only, and listed below Django's middleware (just above django-axes):
    Django then runs the whole chain above it as sync code on the request's own
    thread, entered once, and calls the async view below it back on the event loop
    once. (Django's middleware is sync code behind MiddlewareMixin: in an async
    chain each of its hooks is a trip to that thread and back, about 0.14 ms of CPU
    each and some 30 a Connect flow.) This is Django's documented adaptation of a
    sync-only middleware, nothing private.

    It also loads the signed-in user there, on the thread the chain is on anyway,
    so async views read `request.user` without a trip of their own
    (`accounts.web.pages.login_required`)."""

    async_capable = False

    def process_request(self, request: HttpRequest) -> HttpResponse | None:
        # The session and the user, loaded here rather than by the view. Outside
        # the view, so a database that does not answer is answered here too.
        try:
            request.user.is_authenticated  # noqa: B018
        except DATABASE_UNAVAILABLE as error:
            return database_unavailable(request, error)
        return None


class SessionSaveMiddleware:
    """Saves a changed session just before Django's SessionMiddleware would, so
    that a database that refuses it is the 503 page, as an error in a view is.

    Listed right after SessionMiddleware, so it sees the response just before it.
    Django's SessionMiddleware saves after the view, where an error is no longer
    the view's: Django turns it into a 500 (and Django's own store calls a locked
    database a vanished session, a 400), and no middleware outside it sees the
    error itself. Saved here first, the session is still written once: the store
    skips the save Django's middleware then asks for (`SessionStore.save_ahead`),
    and Django still sets the cookie. A session deleted meanwhile is left to
    Django, which answers it as ever (SessionInterrupted, a 400)."""

    async_capable = True
    sync_capable = True

    def __init__(self, get_response: GetResponse | AsyncGetResponse) -> None:
        self.get_response = get_response
        if iscoroutinefunction(get_response):
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest) -> HttpResponseBase:
        if iscoroutinefunction(self):
            return self.__acall__(request)  # type: ignore[return-value]
        response = self.get_response(request)
        if _saves_session(request, response):
            return _save_ahead(request, response)
        return response

    async def __acall__(self, request: HttpRequest) -> HttpResponseBase:
        response = await self.get_response(request)
        # Deciding needs no database: only a save goes to the request's thread.
        if _saves_session(request, response):
            return await sync_to_async(_save_ahead)(request, response)
        return response


def _saves_session(request: HttpRequest, response: HttpResponseBase) -> bool:
    """Whether Django's SessionMiddleware is about to save this session."""
    session = getattr(request, "session", None)
    return (
        isinstance(session, SessionStore)
        and (session.modified or settings.SESSION_SAVE_EVERY_REQUEST)
        and response.status_code < 500
        # Django's own test for a session it would delete rather than save.
        and not (session.session_key is None and not session.keys())
    )


def _save_ahead(request: HttpRequest, response: HttpResponseBase) -> HttpResponseBase:
    try:
        request.session.save_ahead()
    except DATABASE_UNAVAILABLE as error:
        # The view's answer is void: its session changes were not saved.
        return database_unavailable(request, error)
    except UpdateError:
        pass  # Django's save meets it again and answers it its way
    return response


def database_unavailable(request: HttpRequest, exception: Exception) -> HttpResponse:
    """The 503 page for a database that refuses or does not answer."""
    logger.error("database error on %s: %s", request.path, type(exception).__name__)
    # Rendered without the request: its context processors (the user, the
    # messages) would ask the database again.
    page = render_to_string(
        "accounts/failure.html",
        {
            "title": "Please try again in a minute",
            "CSP_NONCE": getattr(request, "csp_nonce", ""),
            "sentence": (
                "This site's database is not answering just now, so nothing was "
                "changed. Please try again in a minute."
            ),
        },
    )
    response = HttpResponse(page, status=503)
    response["Retry-After"] = "60"
    # Also when built after the view's own headers were set (a session save).
    add_never_cache_headers(response)
    return response
