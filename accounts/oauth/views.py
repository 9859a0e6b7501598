"""The Connect Twitch flow's pages: connect (to Twitch), callback (back from it)
and disconnect. The state lives in `accounts.oauth.state`, storing the grant in
`accounts.oauth.connect`."""

from __future__ import annotations

import logging

from asgiref.sync import sync_to_async
from axes.handlers.proxy import AxesProxyHandler
from django.conf import settings
from django.contrib import messages
from django.contrib.auth import alogin
from django.db import DatabaseError
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET, require_POST

from accounts import services, twitch
from accounts.background import in_background
from accounts.models import TokenEvent, TwitchToken
from accounts.oauth import connect as connecting
from accounts.oauth import pages
from accounts.oauth import signin as signing_in
from accounts.oauth import state as oauth_state
from accounts.oauth.state import PendingFlow, Purpose
from accounts.roles import (
    DEFAULT_ROLE,
    ROLE_NAME_RE,
    Role,
    enabled_roles,
    role_label,
    role_named,
)
from accounts.web.pages import failure_page, login_required
from accounts.web.signin import SIGNED_IN_WITH_TWITCH

logger = logging.getLogger(__name__)

# The backend a Twitch sign-in's session is recorded with.
TWITCH_SIGNIN_BACKEND = "accounts.oauth.signin.TwitchSignInBackend"


@require_POST
@login_required
@never_cache
async def connect(request: HttpRequest) -> HttpResponse:
    role = _posted_role(request)
    if role is None:
        return await pages.unknown_role_page(request)
    try:
        scopes = await connecting.scopes_to_request(
            user=request.user, role=role, asked=request.POST.get("scopes", "")
        )
    except connecting.ScopesNotOffered:
        # The refused names are not repeated: they are whatever the form sent.
        return await failure_page(
            request,
            "This page asked Twitch for permissions this site does not offer, so "
            "nothing was started. Please tell the site's staff.",
            status=400,
        )
    authorize_url = await oauth_state.begin_flow(
        session=request.session,
        purpose=Purpose.CONNECT,
        next_url=_safe_next(request, request.POST.get("next")),
        role=role.name,
        scopes=scopes,
        # Reconnecting asks Twitch to show the consent page again, so the user can
        # pick another account or grant new scopes; so does connecting a role
        # while the person holds another: the browser is most likely signed in
        # to Twitch as that other account.
        force_verify=request.POST.get("reconnect") == "1"
        or not role.is_default
        or await _holds_another_role(request.user, role),
    )
    if settings.TWITCH_OPENID_CONNECT and not twitch.keys_known():
        # While the person is on Twitch: the callback then needs no key fetch.
        in_background(twitch.warm_keys())
    return HttpResponseRedirect(authorize_url)


@require_POST
@never_cache
async def signin(request: HttpRequest) -> HttpResponse:
    """Sign in with Twitch (the login page's button): asks Twitch for `openid` only
    and comes back to the callback."""
    if not settings.TWITCH_OPENID_CONNECT:
        return await failure_page(
            request,
            "Signing in with Twitch is not available on this site. Please sign in "
            "with your username and password.",
            status=404,
        )
    authorize_url = await oauth_state.begin_flow(
        session=request.session,
        purpose=Purpose.SIGN_IN,
        next_url=_safe_next(request, request.POST.get("next")),
        role=DEFAULT_ROLE,
        scopes=[],
    )
    return HttpResponseRedirect(authorize_url)


@require_GET
@never_cache
async def callback(request: HttpRequest) -> HttpResponse:
    user = request.user
    if not user.is_authenticated and not await oauth_state.signing_in(
        session=request.session
    ):
        return await failure_page(
            request,
            "Please sign in to this site first, then press Connect Twitch again.",
            status=400,
        )
    state = request.GET.get("state", "")
    error = request.GET.get("error", "")
    if not state:
        if error:
            # Twitch may leave the state out of a redirect_mismatch; it alerts
            # operators once per pending flow of this browser.
            ours = error == "redirect_mismatch" and (
                await oauth_state.first_mismatch_of_a_pending_flow(
                    session=request.session
                )
            )
            return await pages.twitch_error_page(request, error, from_our_flow=ours)
        return await failure_page(
            request,
            "This Twitch sign-in link is incomplete. "
            "Please press Connect Twitch again.",
            status=400,
        )
    try:
        flow = await oauth_state.take_state(session=request.session, state=state)
    except oauth_state.InvalidState:
        return await failure_page(
            request,
            "This Twitch sign-in link has expired, was already used, or was not "
            "started from this browser. Please press Connect Twitch again.",
            status=400,
        )
    if error:
        return await pages.twitch_error_page(request, error, from_our_flow=True)
    code = request.GET.get("code", "")
    if not code:
        return await failure_page(
            request,
            "Twitch sent you back without a sign-in code. Please try again.",
            status=400,
        )
    if flow.purpose is Purpose.SIGN_IN:
        return await _sign_in(request, code=code, flow=flow)
    if not user.is_authenticated:
        return await failure_page(
            request,
            "Please sign in to this site first, then press Connect Twitch again.",
            status=400,
        )
    if role_named(flow.role) is None:
        # The site stopped offering this role since the flow began; the code is
        # not exchanged, so Twitch issues no grant.
        return await pages.unknown_role_page(request)
    try:
        token = await services.connect(
            user=user, code=code, role=flow.role, nonce=flow.nonce
        )
    except services.AlreadyLinked as linked:
        if linked.role == DEFAULT_ROLE:
            taken = "connected to another user"
        else:
            taken = f"the {role_label(linked.role).lower()} of another user"
        return await failure_page(
            request,
            f"The Twitch account {linked.login} is already {taken} of this site. "
            "Disconnect it there first, or connect a different account.",
            status=409,
        )
    except services.InvalidCredential:
        return await failure_page(
            request,
            "Twitch did not accept this sign-in; it may have taken too long. "
            "Nothing was changed. Please connect again.",
            status=400,
        )
    except twitch.InvalidIdToken as invalid:
        return await pages.invalid_id_token_page(request, invalid)
    except services.TwitchRejected as rejected:
        logger.error("Twitch refused the code exchange: %s", rejected)
        return await failure_page(
            request,
            "Twitch refused this site's request, which usually means the site's Twitch "
            "settings are wrong. Nothing was changed; please tell the site's staff.",
            status=502,
        )
    except services.TwitchUnavailable as unavailable:
        logger.warning("Twitch unavailable during connect: %s", unavailable)
        return await failure_page(
            request,
            "Twitch could not be reached just now. Nothing was changed; please try "
            "again in a minute.",
            status=502,
        )
    except DatabaseError:
        logger.exception("could not store a new Twitch connection")
        return await failure_page(
            request,
            "This site could not save your Twitch connection just now, so nothing "
            "was changed. Please try again in a minute.",
            status=502,
        )
    if token.role == DEFAULT_ROLE:
        messages.success(request, f"Connected as {token.login} on Twitch.")
    else:
        messages.success(
            request, f"Connected {token.role_label.lower()} {token.login} on Twitch."
        )
    if also := await _same_account_in_another_role(token):
        messages.warning(
            request,
            f"{token.login} is also your {also.role_label.lower()}. If you meant "
            "another account, press Reconnect there and, on Twitch, choose "
            '"Not you?" to sign in as it.',
        )
    return HttpResponseRedirect(flow.next_url)


@require_POST
@login_required
@never_cache
async def disconnect(request: HttpRequest) -> HttpResponse:
    user = request.user
    role = _posted_role(request, enabled_only=False)
    if role is None:
        return await pages.unknown_role_page(request)
    token = await services.connection_for(user=user, role=role.name)
    if role_named(role.name) is None and token is None:
        # A role the site dropped is accepted only where the person holds one.
        return await pages.unknown_role_page(request)
    if token is None or token.status == TwitchToken.Status.REVOKED:
        messages.info(request, f"No {role.label.lower()} is connected.")
        return HttpResponseRedirect("/")
    outcome = await services.revoke_token(
        token=token, source=TokenEvent.Source.USER, actor=user
    )
    # Say exactly what happened: Twitch's revoke ends an access token, and it
    # promises nothing about the refresh token (which we no longer hold).
    if role.is_default:
        name, whose = token.login, "your"
    else:
        name, whose = f"{role.label.lower()} {token.login}", f"{token.login}'s"
    remove_at_twitch = (
        f"To remove this site from {whose} Twitch account altogether, disconnect it "
        f"under Connections in {whose} Twitch settings."
    )
    if outcome is services.RevokeOutcome.REVOKED_LOCALLY:
        messages.warning(
            request,
            f"Disconnected {name}: this site deleted its tokens, but Twitch "
            f"could not be reached to end them. {remove_at_twitch}",
        )
    elif outcome is services.RevokeOutcome.ALREADY_INVALID:
        messages.success(
            request,
            f"Disconnected {name}: this site deleted its tokens. Twitch had "
            f"already ended the access token, so there was nothing to end there. "
            f"{remove_at_twitch}",
        )
    else:
        messages.success(
            request,
            f"Disconnected {name}: Twitch ended this site's access token and "
            f"this site deleted its tokens. {remove_at_twitch}",
        )
    return HttpResponseRedirect("/")


async def _sign_in(
    request: HttpRequest, *, code: str, flow: PendingFlow
) -> HttpResponse:
    """The callback of Sign in with Twitch: the linked person, signed in as a
    password sign-in would (session key cycled, `user_logged_in` sent)."""
    if flow.nonce is None or not settings.TWITCH_OPENID_CONNECT:
        # Begun with OpenID Connect off (cannot be verified), or turned off since.
        return await failure_page(
            request,
            "This Twitch sign-in link has expired. Please try again.",
            status=400,
        )
    try:
        person = await signing_in.person_signing_in(code=code, nonce=flow.nonce)
    except signing_in.NotLinked:
        return await failure_page(
            request,
            "This Twitch account is not linked to an account on this site. Sign in "
            "with your username and password, then connect Twitch on your page.",
            status=403,
        )
    except signing_in.SignInRefused as refused:
        # One sentence whatever the reason: whoever holds the Twitch account
        # learns nothing about the site account (that it is staff, say).
        logger.info("a Twitch sign-in was refused: %s", refused.reason)
        return await failure_page(
            request,
            "This account cannot sign in with Twitch. Please sign in with your "
            "username and password.",
            status=403,
        )
    except services.InvalidCredential:
        return await failure_page(
            request,
            "Twitch did not accept this sign-in; it may have taken too long. "
            "Please try again.",
            status=400,
        )
    except twitch.InvalidIdToken as invalid:
        return await pages.invalid_id_token_page(request, invalid)
    except services.TwitchError as failed:
        logger.warning("Twitch failed during a sign-in: %s", failed)
        return await failure_page(
            request,
            "Twitch could not be reached just now. Please try again in a minute, or "
            "sign in with your username and password.",
            status=502,
        )
    except DatabaseError:
        logger.exception("could not look up a Twitch sign-in")
        return await failure_page(
            request,
            "This site could not sign you in just now. Please try again in a minute.",
            status=502,
        )
    credentials = {"username": person.get_username()}
    # Locked out after failed passwords (django-axes) stays locked out.
    if await sync_to_async(AxesProxyHandler.is_locked)(request, credentials):
        return await failure_page(
            request,
            "Too many failed sign-in attempts for this account from your address. "
            "Please try again later.",
            status=429,
        )
    # Failed passwords stay counted (KeepPasswordFailures), and the session is
    # one TwitchSignInBackend checks again at every request.
    setattr(request, SIGNED_IN_WITH_TWITCH, True)
    await alogin(request, person, backend=TWITCH_SIGNIN_BACKEND)
    return HttpResponseRedirect(flow.next_url)


def _posted_role(request: HttpRequest, *, enabled_only: bool = True) -> Role | None:
    """The role the form names (none: the default role), or None if this site has
    no such role. Disconnecting also accepts a role the site has since dropped, so
    its connections can still be ended."""
    name = request.POST.get("role") or DEFAULT_ROLE
    role = role_named(name)
    if role is None and not enabled_only and ROLE_NAME_RE.fullmatch(name):
        role = Role(name=name, label=role_label(name), scopes=())
    return role


async def _holds_another_role(user: object, role: Role) -> bool:
    if len(enabled_roles()) == 1:
        return False  # one role: nothing to ask the database
    return (
        await TwitchToken.objects.filter(user=user)
        .exclude(role=role.name)
        .exclude(status=TwitchToken.Status.REVOKED)
        .aexists()
    )


async def _same_account_in_another_role(token: TwitchToken) -> TwitchToken | None:
    """The person's live connection in another role to the same Twitch account: a
    bot connected as the streamer's own account is most often a mistake."""
    if len(enabled_roles()) == 1:
        return None  # one role: nothing to ask the database
    return (
        await TwitchToken.objects.filter(
            user_id=token.user_id, twitch_user_id=token.twitch_user_id
        )
        .exclude(pk=token.pk)
        .exclude(status=TwitchToken.Status.REVOKED)
        .afirst()
    )


def _safe_next(request: HttpRequest, next_url: str | None) -> str:
    if next_url and url_has_allowed_host_and_scheme(
        next_url, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    ):
        return next_url
    return "/"
