"""Middleware: a database that does not answer gets a page, not a traceback;
Django's own middleware, made cheap under ASGI; and the site's static files."""

from __future__ import annotations

import logging
from functools import partial
from typing import Any

from asgiref.sync import markcoroutinefunction, sync_to_async
from csp import middleware as csp_middleware
from django.conf import settings
from django.contrib.auth import middleware as auth
from django.contrib.messages import middleware as message
from django.contrib.sessions import middleware as session
from django.db import InterfaceError, InternalError, OperationalError
from django.http import HttpRequest, HttpResponse
from django.middleware import clickjacking, common, csrf, security
from django.template.loader import render_to_string
from django.utils.cache import add_never_cache_headers
from django.utils.deprecation import MiddlewareMixin
from whitenoise.middleware import WhiteNoiseMiddleware
from whitenoise.responders import StaticFile

logger = logging.getLogger(__name__)


# Locked, timed out, unreachable, read-only: the database's state, not a bug.
# (IntegrityError and DataError are bugs or bad input: left alone.)
DATABASE_UNAVAILABLE = (OperationalError, InterfaceError, InternalError)


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


# --- Django's own middleware, with hooks that do no I/O run on the event loop -----
#
# Under ASGI, Django runs every hook of a sync middleware on its one sync thread and
# back: twice per middleware per request, about a fifth of a millisecond of CPU each
# and a wait behind other requests' database work. These hooks touch only the request
# and the response (messages live in a cookie, CSRF in its cookie), so they run where
# the request is. Only the session middleware still hops, and only to save a session
# that changed.


class HooksOnTheLoop:
    """Call a middleware's process_request and process_response directly in async
    requests; for hooks that never touch the database or block."""

    get_response: Any

    async def __acall__(self, request: HttpRequest) -> HttpResponse:
        response = None
        if hasattr(self, "process_request"):
            response = self.process_request(request)
        response = response or await self.get_response(request)
        if hasattr(self, "process_response"):
            response = self.process_response(request, response)
        return response


class SecurityMiddleware(HooksOnTheLoop, security.SecurityMiddleware):
    pass


class CommonMiddleware(HooksOnTheLoop, common.CommonMiddleware):
    pass


class CsrfViewMiddleware(HooksOnTheLoop, csrf.CsrfViewMiddleware):
    async def process_view(  # type: ignore[override]
        self, request: HttpRequest, callback: Any, args: Any, kwargs: Any
    ) -> HttpResponse | None:
        # A coroutine, so Django calls it without a hop too.
        return super().process_view(request, callback, args, kwargs)


class AuthenticationMiddleware(HooksOnTheLoop, auth.AuthenticationMiddleware):
    def process_request(self, request: HttpRequest) -> None:
        super().process_request(request)
        request.auser = partial(_auser, request)


async def _auser(request: HttpRequest) -> Any:
    """`request.auser()` in one trip to the sync thread, where Django's own makes
    two (the session, then the user). Through the middleware's own `get_user`, so
    `request.user` (templates) finds the same user without asking again."""
    if not hasattr(request, "_acached_user"):
        request._acached_user = await sync_to_async(auth.get_user)(request)
    return request._acached_user


class MessageMiddleware(HooksOnTheLoop, message.MessageMiddleware):
    """Needs MESSAGE_STORAGE to be the cookie storage (the session one would read the
    session, that is the database, on the event loop)."""


class XFrameOptionsMiddleware(HooksOnTheLoop, clickjacking.XFrameOptionsMiddleware):
    pass


class CSPMiddleware(HooksOnTheLoop, csp_middleware.CSPMiddleware):
    pass


class SessionMiddleware(session.SessionMiddleware):
    """Loads lazily as ever; hops to the sync thread only to save a changed session.
    A save the database refuses is the 503 page, as an error in a view is."""

    async def __acall__(self, request: HttpRequest) -> HttpResponse:
        self.process_request(request)
        response = await self.get_response(request)
        if request.session.modified or settings.SESSION_SAVE_EVERY_REQUEST:
            return await sync_to_async(self.process_response)(request, response)
        return self.process_response(request, response)

    def process_response(
        self, request: HttpRequest, response: HttpResponse
    ) -> HttpResponse:
        try:
            return super().process_response(request, response)
        except DATABASE_UNAVAILABLE as error:
            # After the view: DatabaseUnavailableMiddleware cannot see this, and
            # the view's answer is void (its session changes were not saved).
            return database_unavailable(request, error)


# --- The site's own static files ---------------------------------------------------


class StaticFiles(WhiteNoiseMiddleware):
    """WhiteNoise, made async: a request under STATIC_URL gets its file; any other
    request goes on down the chain without a hop to a thread. (So WHITENOISE_ROOT,
    files at the site's root, is not served.)"""

    sync_capable = False
    async_capable = True

    def __init__(self, get_response: Any) -> None:
        super().__init__(get_response)
        markcoroutinefunction(self)

    async def __call__(self, request: HttpRequest) -> HttpResponse:
        if request.path_info.startswith(self.static_prefix):
            # Opening and reading the file block, so on a thread: any thread, as no
            # database is involved (not the request's own, kept for the ORM).
            response = await sync_to_async(self.serve_if_found, thread_sensitive=False)(
                request
            )
            if response is not None:
                return response
        return await self.get_response(request)

    def serve_if_found(self, request: HttpRequest) -> HttpResponse | None:
        """WhiteNoiseMiddleware.__call__, short of calling the rest of the chain."""
        if self.autorefresh:
            static_file = self.find_file(request.path_info)
        else:
            static_file = self.files.get(request.path_info)
        if static_file is None:
            return None
        return self.serve(static_file, request)

    @staticmethod
    def serve(static_file: StaticFile, request: HttpRequest) -> HttpResponse:
        # The file is read here, on the thread, into a plain response. WhiteNoise's
        # own FileResponse would stream it through a sync iterator, which Django
        # under ASGI reads whole on a second hop anyway, with a warning each time.
        # The largest files (the admin's vendored scripts) are about 300 kB.
        answer = static_file.get_response(request.method, request.META)
        content = b""
        if answer.file is not None:
            with answer.file as file:
                content = file.read()
        response = HttpResponse(content, status=int(answer.status))
        del response["Content-Type"]  # WhiteNoise's headers name the file's own
        for name, value in answer.headers:
            response[name] = value
        return response
