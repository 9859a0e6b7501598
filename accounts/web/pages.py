"""What every page of the site shares: signing in required, rendering from async
views, and the failure page with its one human sentence."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import wraps
from typing import Any

from asgiref.sync import sync_to_async
from django.contrib.auth.views import redirect_to_login
from django.http import HttpRequest, HttpResponse
from django.http.response import HttpResponseBase
from django.shortcuts import render

AsyncView = Callable[..., Awaitable[HttpResponseBase]]


def login_required(view: AsyncView) -> AsyncView:
    """Django's login_required for the site's async views, reading `request.user`,
    which the middleware loaded on the request's thread (OnTheRequestThread):
    Django's own would load it again with `request.auser()`, a trip to that thread.
    """

    @wraps(view)
    async def signed_in_only(
        request: HttpRequest, *args: Any, **kwargs: Any
    ) -> HttpResponseBase:
        if request.user.is_authenticated:
            return await view(request, *args, **kwargs)
        return redirect_to_login(request.get_full_path())

    return signed_in_only


async def arender(
    request: HttpRequest, template: str, context: dict[str, Any], status: int = 200
) -> HttpResponse:
    # Context processors read request.user, the session and messages lazily, and
    # those lazy reads query the database: render in a thread where that is allowed.
    return await sync_to_async(render)(request, template, context, status=status)


async def failure_page(
    request: HttpRequest, sentence: str, *, status: int
) -> HttpResponse:
    """The page for a failure the user can read: a sentence, and a 4xx/5xx status."""
    return await arender(
        request, "accounts/failure.html", {"sentence": sentence}, status=status
    )
