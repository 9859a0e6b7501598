"""What every page of the site shares: signing in required, rendering from async
views, and the failure page with its one human sentence."""

from __future__ import annotations

from typing import Any

from asgiref.sync import sync_to_async
from django.contrib.auth.decorators import user_passes_test
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render


async def _is_signed_in(user: Any) -> bool:
    return user.is_authenticated


# Django's login_required, with its test a coroutine: Django runs a sync test (its
# own `lambda u: u.is_authenticated`) on the sync thread and back, for an attribute.
login_required = user_passes_test(_is_signed_in)


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
