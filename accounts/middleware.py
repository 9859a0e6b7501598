"""A database that refuses writes or does not answer gets a page, not a traceback."""

from __future__ import annotations

import logging

from django.db import InterfaceError, InternalError, OperationalError
from django.http import HttpRequest, HttpResponse
from django.template.loader import render_to_string
from django.utils.deprecation import MiddlewareMixin

logger = logging.getLogger(__name__)


class DatabaseUnavailableMiddleware(MiddlewareMixin):
    """Any view (the admin's included) whose database is unreachable, refusing
    writes or timing out answers 503 with a plain sentence; nothing was half-written,
    because the error rolled back. Other database errors are bugs, left as such."""

    def process_exception(
        self, request: HttpRequest, exception: Exception
    ) -> HttpResponse | None:
        # Locked, timed out, unreachable, read-only: the database's state, not a
        # bug. (IntegrityError and DataError are bugs or bad input: left alone.)
        if not isinstance(exception, OperationalError | InterfaceError | InternalError):
            return None
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
        return response
