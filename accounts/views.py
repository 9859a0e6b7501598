"""The pages a signed-in user sees, and the async OAuth flow behind Connect Twitch."""

from __future__ import annotations

import logging
import math
from datetime import timedelta
from typing import Any

from asgiref.sync import sync_to_async
from axes.helpers import get_client_username, get_cool_off
from axes.models import AccessAttempt
from django.contrib import messages
from django.contrib.auth.decorators import user_passes_test
from django.db import DatabaseError, connection
from django.http import (
    Http404,
    HttpRequest,
    HttpResponse,
    HttpResponseRedirect,
    JsonResponse,
)
from django.shortcuts import render
from django.utils import timezone
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.cache import never_cache
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_POST

from accounts import eventsub as eventsub_service
from accounts import oauth_state, services
from accounts.checks import check_encryption_keys
from accounts.models import TokenEvent, TwitchToken

logger = logging.getLogger(__name__)

# RFC 6749, section 4.1.2.1: what an authorization server may put in `error`.
OAUTH_ERROR_CODES = frozenset(
    {
        "invalid_request",
        "unauthorized_client",
        "unsupported_response_type",
        "invalid_scope",
        "server_error",
        "temporarily_unavailable",
    }
)


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


# Pages about a user's connection are never kept by browsers or proxies.
@require_GET
@login_required
@never_cache
async def home(request: HttpRequest) -> HttpResponse:
    token = await services.connection_for(user=await request.auser())
    return await arender(request, "accounts/home.html", {"token": token})


@require_POST
@login_required
@never_cache
async def connect(request: HttpRequest) -> HttpResponse:
    try:
        scopes = await services.scopes_to_request(
            user=await request.auser(), asked=request.POST.get("scopes", "")
        )
    except services.ScopesNotOffered:
        # The refused names are not repeated: they are whatever the form sent.
        return await _failure(
            request,
            "This page asked Twitch for permissions this site does not offer, so "
            "nothing was started. Please tell the site's staff.",
            status=400,
        )
    authorize_url = await oauth_state.begin_connect(
        session=request.session,
        next_url=_safe_next(request, request.POST.get("next")),
        scopes=scopes,
        # Reconnecting asks Twitch to show the consent page again, so the user can
        # pick another account or grant new scopes.
        force_verify=request.POST.get("reconnect") == "1",
    )
    return HttpResponseRedirect(authorize_url)


@require_GET
@never_cache
async def callback(request: HttpRequest) -> HttpResponse:
    user = await request.auser()
    if not user.is_authenticated:
        return await _failure(
            request,
            "Please sign in to this site first, then press Connect Twitch again.",
            status=400,
        )
    state = request.GET.get("state", "")
    error = request.GET.get("error", "")
    if not state:
        if error:
            # Twitch may leave the state out of a redirect_mismatch.
            pending = await oauth_state.has_pending(session=request.session)
            return await _twitch_error(request, error, from_our_flow=pending)
        return await _failure(
            request,
            "This Twitch sign-in link is incomplete. "
            "Please press Connect Twitch again.",
            status=400,
        )
    try:
        next_url = await oauth_state.take_state(session=request.session, state=state)
    except oauth_state.InvalidState:
        return await _failure(
            request,
            "This Twitch sign-in link has expired, was already used, or was not "
            "started from this browser. Please press Connect Twitch again.",
            status=400,
        )
    if error:
        return await _twitch_error(request, error, from_our_flow=True)
    code = request.GET.get("code", "")
    if not code:
        return await _failure(
            request,
            "Twitch sent you back without a sign-in code. Please try again.",
            status=400,
        )
    try:
        token = await services.connect(user=user, code=code)
    except services.AlreadyLinked as linked:
        return await _failure(
            request,
            f"The Twitch account {linked.login} is already connected to another user "
            "of this site. Disconnect it there first, or connect a different account.",
            status=409,
        )
    except services.InvalidCredential:
        return await _failure(
            request,
            "Twitch did not accept this sign-in; it may have taken too long. "
            "Nothing was changed. Please connect again.",
            status=400,
        )
    except services.TwitchRejected as rejected:
        logger.error("Twitch refused the code exchange: %s", rejected)
        return await _failure(
            request,
            "Twitch refused this site's request, which usually means the site's Twitch "
            "settings are wrong. Nothing was changed; please tell the site's staff.",
            status=502,
        )
    except services.TwitchUnavailable as unavailable:
        logger.warning("Twitch unavailable during connect: %s", unavailable)
        return await _failure(
            request,
            "Twitch could not be reached just now. Nothing was changed; please try "
            "again in a minute.",
            status=502,
        )
    except DatabaseError:
        logger.exception("could not store a new Twitch connection")
        return await _failure(
            request,
            "This site could not save your Twitch connection just now, so nothing "
            "was changed. Please try again in a minute.",
            status=502,
        )
    messages.success(request, f"Connected as {token.login} on Twitch.")
    return HttpResponseRedirect(next_url)


@require_POST
@login_required
@never_cache
async def disconnect(request: HttpRequest) -> HttpResponse:
    user = await request.auser()
    token = await services.connection_for(user=user)
    if token is None or token.status == TwitchToken.Status.REVOKED:
        messages.info(request, "No Twitch account is connected.")
        return HttpResponseRedirect("/")
    outcome = await services.revoke_token(
        token=token, source=TokenEvent.Source.USER, actor=user
    )
    # Say exactly what happened: Twitch's revoke ends an access token, and it
    # promises nothing about the refresh token (which we no longer hold).
    remove_at_twitch = (
        "To remove this site from your Twitch account altogether, disconnect it "
        "under Connections in your Twitch settings."
    )
    if outcome is services.RevokeOutcome.REVOKED_LOCALLY:
        messages.warning(
            request,
            f"Disconnected {token.login}: this site deleted its tokens, but Twitch "
            f"could not be reached to end them. {remove_at_twitch}",
        )
    elif outcome is services.RevokeOutcome.ALREADY_INVALID:
        messages.success(
            request,
            f"Disconnected {token.login}: this site deleted its tokens. Twitch had "
            f"already ended the access token, so there was nothing to end there. "
            f"{remove_at_twitch}",
        )
    else:
        messages.success(
            request,
            f"Disconnected {token.login}: Twitch ended this site's access token and "
            f"this site deleted its tokens. {remove_at_twitch}",
        )
    return HttpResponseRedirect("/")


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


@csrf_exempt
@require_POST
async def eventsub(request: HttpRequest) -> HttpResponse:
    """Twitch's EventSub webhook: no CSRF token or session, a signature instead."""
    if not eventsub_service.enabled():
        raise Http404("EventSub is not configured.")
    try:
        message = eventsub_service.verify(request.headers, request.body)
    except eventsub_service.UnreadableMessage as unreadable:
        logger.warning("refused an EventSub message: %s", unreadable)
        return HttpResponse("Bad Request", status=400, content_type="text/plain")
    except eventsub_service.InvalidMessage as invalid:
        logger.warning("refused an EventSub message: %s", invalid)
        return HttpResponse("Forbidden", status=403, content_type="text/plain")
    if message.type == "webhook_callback_verification":
        challenge = message.body.get("challenge")
        if not isinstance(challenge, str):
            return HttpResponse("No challenge", status=400, content_type="text/plain")
        return HttpResponse(challenge, content_type="text/plain")
    await eventsub_service.handle(message)
    return HttpResponse(status=204)


@require_GET
async def healthz(request: HttpRequest) -> JsonResponse:
    """200 when the database answers and the stored tokens can be decrypted;
    otherwise 503, naming what is wrong (for load balancers and monitoring)."""
    keys = "ok" if not check_encryption_keys() else "misconfigured"
    try:
        # A raw cursor has no async API.
        tokens = await sync_to_async(_ping_database)()
    except DatabaseError:
        body = {"status": "error", "database": "unavailable", "keys": keys}
        return JsonResponse(body, status=503)
    body = {"status": "ok", "database": "ok", "keys": keys, "tokens": tokens}
    if keys != "ok" or tokens != "ok":
        body["status"] = "error"
        return JsonResponse(body, status=503)
    return JsonResponse(body)


def _ping_database() -> str:
    """Ask the database, and try to decrypt the most recently written token."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
    latest = (
        TwitchToken.objects.active()
        .exclude(refresh_token="")
        .order_by("-updated_at")
        .only("access_token", "refresh_token")
        .first()
    )
    return "undecryptable" if latest and latest.is_undecryptable else "ok"


async def _twitch_error(
    request: HttpRequest, error: str, *, from_our_flow: bool
) -> HttpResponse:
    """The page for an OAuth error. `from_our_flow`: it came with a valid pending
    state, or with none to a browser mid-flow, so it is most likely Twitch
    answering this site (anyone can craft the link)."""
    if error == "access_denied":
        sentence = (
            "You cancelled the connection on Twitch, so nothing was connected. "
            "Press Connect Twitch whenever you are ready."
        )
    elif error == "redirect_mismatch":
        if from_our_flow:
            logger.error("Twitch reports redirect_mismatch: check TWITCH_REDIRECT_URI")
        else:
            logger.info("a callback without a valid state says redirect_mismatch")
        sentence = (
            "Twitch does not recognise this site's return address, so the connection "
            "cannot finish. Please tell the site's staff."
        )
    else:
        # Only OAuth's own error codes are named: never echo text that anyone
        # could put in a link.
        code = error if error in OAUTH_ERROR_CODES else "unknown error"
        sentence = (
            f"Twitch could not complete the connection ({code}). Please try again."
        )
    return await _failure(request, sentence, status=400)


async def _failure(request: HttpRequest, sentence: str, *, status: int) -> HttpResponse:
    return await arender(
        request, "accounts/failure.html", {"sentence": sentence}, status=status
    )


def _safe_next(request: HttpRequest, next_url: str | None) -> str:
    if next_url and url_has_allowed_host_and_scheme(
        next_url, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    ):
        return next_url
    return "/"
