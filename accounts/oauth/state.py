"""The OAuth `state` of Connect Twitch: random, bound to the browser session,
single-use and short-lived."""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from asgiref.sync import sync_to_async
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


@dataclass(frozen=True)
class PendingFlow:
    """What a state was minted for, as stored with it in the session: the callback
    finishes exactly that (a callback cannot land in another role)."""

    next_url: str
    role: str


async def begin_connect(
    *,
    session: SessionBase,
    next_url: str,
    role: str,
    scopes: list[str],
    force_verify: bool = False,
) -> str:
    """Mint a state bound to this browser session and to `role`, and return
    Twitch's authorize URL asking for `scopes`."""
    state = secrets.token_urlsafe(32)  # 256 bits
    pending = dict(await session.aget(STATE_SESSION_KEY, {}))
    pending[state] = {"created": time.time(), "next": next_url, "role": role}
    newest = sorted(pending.items(), key=lambda item: item[1]["created"])
    await session.aset(STATE_SESSION_KEY, dict(newest[-MAX_PENDING_STATES:]))
    return twitch.authorize_url(state=state, scopes=scopes, force_verify=force_verify)


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
    # A flow begun before roles existed connects the default role.
    return PendingFlow(
        next_url=str(flow["next"]), role=str(flow.get("role", DEFAULT_ROLE))
    )


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
