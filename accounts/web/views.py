"""The signed-in user's home page, `/healthz`, and the sign-in lockout page."""

from __future__ import annotations

import math
from datetime import timedelta
from typing import Any

from asgiref.sync import sync_to_async
from axes.helpers import get_client_username, get_cool_off
from axes.models import AccessAttempt
from django.db import DatabaseError, connection, transaction
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.utils import timezone
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET, require_safe

from accounts import services
from accounts.checks import check_encryption_keys
from accounts.models import TwitchToken
from accounts.roles import Role, enabled_roles, role_label
from accounts.tokens import spool
from accounts.web.pages import arender, login_required

# How long /healthz waits for a lock (a migration, a long transaction) or a slow
# query on PostgreSQL before it answers 503: load balancers give up after a few
# seconds, and the statement timeout would hold it for 30.
HEALTHZ_DATABASE_PATIENCE = 2  # seconds


# Pages about a user's connection are never kept by browsers or proxies.
@require_GET
@login_required
@never_cache
async def home(request: HttpRequest) -> HttpResponse:
    """A section per role: each enabled one, and any other the user still holds a
    live connection in (a role the site dropped), so it can be disconnected."""
    tokens = await services.connections_for(user=request.user)
    sections = [(role, tokens.pop(role.name, None)) for role in enabled_roles()]
    enabled = len(sections)
    sections += [
        (Role(name=name, label=role_label(name), scopes=()), token)
        for name, token in sorted(tokens.items())
        if token.status != TwitchToken.Status.REVOKED
    ]
    return await arender(
        request,
        "accounts/home.html",
        {
            "sections": [
                {
                    "role": role,
                    "token": token,
                    "is_default": role.is_default,
                    "enabled": index < enabled,
                    "also": _also(token, sections),
                }
                for index, (role, token) in enumerate(sections)
            ],
        },
    )


def _also(
    token: TwitchToken | None, sections: list[tuple[Role, TwitchToken | None]]
) -> str:
    """The label of another role this same Twitch account is connected in, if any:
    a bot connected as the person's own account is most often a mistake."""
    if token is None or token.status == TwitchToken.Status.REVOKED:
        return ""
    for role, other in sections:
        if (
            other is not None
            and other.pk != token.pk
            and other.status != TwitchToken.Status.REVOKED
            and other.twitch_user_id == token.twitch_user_id
        ):
            return role.label
    return ""


def sign_in_locked_out(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
    """django-axes' lockout answer: 429, Retry-After, and a sentence.

    Called with varying arguments by axes' sync and async paths, so it reads what it
    needs from the request.
    """
    username = get_client_username(request, getattr(request, "axes_credentials", None))
    cool_off = get_cool_off(request) or timedelta(minutes=15)
    last = (
        AccessAttempt.objects.filter(
            username=username, ip_address=getattr(request, "axes_ip_address", None)
        )
        .order_by("-attempt_time")
        .values_list("attempt_time", flat=True)
        .first()
    )
    remaining = (last + cool_off - timezone.now()) if last else cool_off
    seconds = max(1, math.ceil(remaining.total_seconds()))
    minutes = math.ceil(seconds / 60)
    response = render(
        request,
        "accounts/failure.html",
        {
            "title": "Too many sign-in attempts",
            "sentence": (
                "Too many failed sign-in attempts for this account from your "
                f"address. Please try again in {minutes} minute"
                f"{'' if minutes == 1 else 's'}."
            ),
        },
        status=429,
    )
    response["Retry-After"] = str(seconds)
    return response


@require_safe
async def healthz(request: HttpRequest) -> JsonResponse:
    """200 when the database answers and the stored tokens (and any spooled token
    pairs) can be decrypted; otherwise 503, naming what is wrong (for load balancers
    and monitoring). HEAD answers the same status, without the body."""
    keys = "ok" if not check_encryption_keys() else "misconfigured"
    try:
        # A raw cursor has no async API; the spool is files.
        tokens, spooled = await sync_to_async(_ping_database_and_spool)()
    except DatabaseError:
        body = {"status": "error", "database": "unavailable", "keys": keys}
        return JsonResponse(body, status=503)
    body = {
        "status": "ok",
        "database": "ok",
        "keys": keys,
        "tokens": tokens,
        "spool": spooled,
    }
    if keys != "ok" or tokens != "ok" or spooled != "ok":
        body["status"] = "error"
        return JsonResponse(body, status=503)
    return JsonResponse(body)


def _ping_database_and_spool() -> tuple[str, str]:
    """Ask the database, try to decrypt the most recently written token, and count
    spooled pairs no key decrypts (set aside, waiting for the right key)."""
    if connection.vendor == "postgresql":
        # In a transaction of its own, so that the short timeouts end with it.
        with transaction.atomic():
            with connection.cursor() as cursor:
                patience = f"{HEALTHZ_DATABASE_PATIENCE}s"
                cursor.execute(
                    "SELECT set_config('lock_timeout', %s, true), "
                    "set_config('statement_timeout', %s, true)",
                    [patience, patience],
                )
            latest = _latest_token()
    else:
        # SQLite's readers wait for no writer (WAL); a transaction here would
        # take the write lock at BEGIN (IMMEDIATE), and wait for one.
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        latest = _latest_token()
    tokens = "undecryptable" if latest and latest.is_undecryptable else "ok"
    return tokens, "undecryptable" if spool.unreadable_count() else "ok"


def _latest_token() -> TwitchToken | None:
    return (
        TwitchToken.objects.active()
        .exclude(refresh_token="")
        .order_by("-updated_at")
        .only("access_token", "refresh_token")
        .first()
    )
