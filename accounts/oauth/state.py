"""The OAuth `state` of Connect Twitch and Sign in with Twitch: random, bound to the
browser session, single-use and short-lived; with it, what the flow is for and the
OpenID Connect nonce its ID token must carry."""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass, field
from datetime import timedelta
from enum import StrEnum
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.contrib.sessions.backends.base import SessionBase
from django.db import IntegrityError, connection, transaction
from django.utils import timezone
from django.utils.crypto import constant_time_compare

from accounts import twitch
from accounts.db import writer_turn
from accounts.models import SpentOAuthState
from accounts.roles import DEFAULT_ROLE

STATE_SESSION_KEY = "twitch_oauth_states"
STATE_LIFETIME = 600  # seconds
# Several tabs may be mid-flow at once; the oldest pending state is dropped first.
MAX_PENDING_STATES = 5
# Spent states older than their lifetime are deleted by about one callback in this
# many.
PRUNE_EVERY = 20


class InvalidState(Exception):
    """The callback's state is missing, unknown, expired or already used."""


class Purpose(StrEnum):
    """What a flow comes back to do."""

    CONNECT = "connect"  # store a connection for the signed-in user
    SIGN_IN = "signin"  # sign in the person whose connection this is


@dataclass(frozen=True)
class PendingFlow:
    """What a state was minted for, as stored with it in the session: the callback
    finishes exactly that (a callback cannot land in another role or purpose)."""

    next_url: str
    role: str
    purpose: Purpose = Purpose.CONNECT
    # The OpenID Connect nonce the ID token must carry; None without OIDC.
    nonce: str | None = field(default=None, repr=False)


async def begin_flow(
    *,
    session: SessionBase,
    purpose: Purpose,
    next_url: str,
    role: str,
    scopes: list[str],
    force_verify: bool = False,
) -> str:
    """Mint a state (and, with OpenID Connect, a nonce) bound to this browser
    session, to `purpose` and to `role`, and return Twitch's authorize URL asking
    for `scopes` (plus `openid`)."""
    state = secrets.token_urlsafe(32)  # 256 bits
    flow: dict[str, Any] = {
        "created": time.time(),
        "next": next_url,
        "role": role,
        "purpose": purpose.value,
    }
    claims = None
    if settings.TWITCH_OPENID_CONNECT:
        # Single-use with its state, which is: the ID token names this very flow.
        flow["nonce"] = secrets.token_urlsafe(32)
        scopes = [*scopes, "openid"] if "openid" not in scopes else scopes
        if purpose is Purpose.CONNECT:
            claims = twitch.ID_TOKEN_CLAIMS
    pending = dict(await session.aget(STATE_SESSION_KEY, {}))
    pending[state] = flow
    newest = sorted(pending.items(), key=lambda item: item[1]["created"])
    await session.aset(STATE_SESSION_KEY, dict(newest[-MAX_PENDING_STATES:]))
    return twitch.authorize_url(
        state=state,
        scopes=scopes,
        force_verify=force_verify,
        nonce=flow.get("nonce"),
        claims=claims,
    )


async def take_state(*, session: SessionBase, state: str) -> PendingFlow:
    """Consume a pending state and return the flow that was stored with it.

    The state is removed and the session saved *before* anything else happens, and
    its use is recorded in `SpentOAuthState`, so a replayed callback is refused
    even when it read the session at the same moment as the first.
    """
    pending: dict[str, dict[str, Any]] = dict(await session.aget(STATE_SESSION_KEY, {}))
    # Compare against every pending state in constant time, not by dict lookup.
    match = next((s for s in pending if constant_time_compare(s, state)), None)
    now = time.time()
    fresh = {
        s: data for s, data in pending.items() if now - data["created"] < STATE_LIFETIME
    }
    if match is not None:
        fresh.pop(match, None)
    usable = (
        match is not None
        and bool(state)
        and now - pending[match]["created"] < STATE_LIFETIME
    )
    if fresh != pending:
        await session.aset(STATE_SESSION_KEY, fresh)
    # The session save and the spend: database work, so on Django's sync thread,
    # in one trip.
    spent = await sync_to_async(_save_and_spend)(
        session, state=match if usable else None, save=fresh != pending
    )
    if match is None or not state:
        raise InvalidState("unknown")
    if not usable:
        raise InvalidState("expired")
    if not spent:
        raise InvalidState("replayed")
    flow = pending[match]
    # A flow begun before roles (or OpenID Connect) existed: a connect of the
    # default role, without a nonce.
    return PendingFlow(
        next_url=str(flow["next"]),
        role=str(flow.get("role", DEFAULT_ROLE)),
        purpose=Purpose(flow.get("purpose", Purpose.CONNECT)),
        nonce=flow.get("nonce"),
    )


async def signing_in(*, session: SessionBase) -> bool:
    """Whether this browser has a Sign in with Twitch pending (it may come back
    without being signed in to the site)."""
    pending: dict[str, dict[str, Any]] = await session.aget(STATE_SESSION_KEY, {})
    return any(flow.get("purpose") == Purpose.SIGN_IN for flow in pending.values())


async def first_mismatch_of_a_pending_flow(*, session: SessionBase) -> bool:
    """Whether this browser has a flow pending (not ended or expired) that no
    `redirect_mismatch` without a state has come back for yet; those flows have
    had theirs now. A browser reloading that page is the same error, not news."""
    pending: dict[str, dict[str, Any]] = dict(await session.aget(STATE_SESSION_KEY, {}))
    now = time.time()
    unreported = [
        state
        for state, data in pending.items()
        if now - data["created"] < STATE_LIFETIME and not data.get("mismatch")
    ]
    if not unreported:
        return False
    for state in unreported:
        pending[state] = {**pending[state], "mismatch": True}
    await session.aset(STATE_SESSION_KEY, pending)
    return True


def _save_and_spend(session: SessionBase, *, state: str | None, save: bool) -> bool:
    """Save the session (the state gone from it) and record `state` as used; False
    if a concurrent request already used it."""
    # One writer turn for both writes (accounts/db.py).
    with writer_turn():
        if save:
            session.save()
            # Saved: the session middleware need not write it again at the end.
            session.modified = False
        spent = state is not None and _spend_state(state)
    # The callback now waits on Twitch twice: a pooled connection serves other
    # requests meanwhile instead of idling with this one.
    if getattr(connection, "pool", None) and transaction.get_autocommit():
        connection.close()
    return spent


def _spend_state(state: str) -> bool:
    """Record the state as used; False if a concurrent request already did."""
    digest = hashlib.sha256(state.encode()).hexdigest()
    # Pruning now and then is enough: an old row only takes space.
    if secrets.randbelow(PRUNE_EVERY) == 0:
        SpentOAuthState.objects.filter(
            spent_at__lt=timezone.now() - timedelta(seconds=STATE_LIFETIME)
        ).delete()
    try:
        # One INSERT, committed at once; the primary key lets it succeed only once.
        SpentOAuthState.objects.create(digest=digest)
    except IntegrityError:
        return False
    return True
