"""The pages the Connect and Sign in with Twitch flows answer with when something
went wrong: one sentence each, never an echo of what a link or a form carried."""

from __future__ import annotations

import logging

from django.http import HttpRequest, HttpResponse

from accounts import twitch
from accounts.web.pages import failure_page

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


async def invalid_id_token_page(
    request: HttpRequest, invalid: twitch.InvalidIdToken
) -> HttpResponse:
    # The reason names the check, never the token. A nonce that does not match is
    # most likely a replayed or injected code: the browser's to answer for (400);
    # any other failure is Twitch's answer not holding up (502).
    logger.warning("an ID token failed verification: %s", invalid.reason)
    if invalid.reason == "nonce":
        return await failure_page(
            request,
            "This Twitch sign-in does not belong to the one this browser started, so "
            "nothing was changed. Please try again.",
            status=400,
        )
    return await failure_page(
        request,
        "Twitch's answer could not be verified, so nothing was changed. Please try "
        "again in a minute.",
        status=502,
    )


async def twitch_error_page(
    request: HttpRequest, error: str, *, from_our_flow: bool
) -> HttpResponse:
    """The page for an OAuth error. `from_our_flow`: it came with a valid pending
    state, or with none to a browser mid-flow (the first time for that flow), so it
    is most likely Twitch answering this site (anyone can craft the link)."""
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
    return await failure_page(request, sentence, status=400)


async def unknown_role_page(request: HttpRequest) -> HttpResponse:
    # The posted name is not repeated: it is whatever the form sent.
    return await failure_page(
        request,
        "This page asked for a kind of Twitch connection this site does not have, "
        "so nothing was changed. Please tell the site's staff.",
        status=400,
    )
