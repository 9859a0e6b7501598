"""What the site does with Twitch connections: connect, refresh, validate, revoke.

Views, admin actions and commands call these; these call the Twitch seam
(`accounts.twitch`). Business rules live here and nowhere else.
"""

from __future__ import annotations

import enum
import logging
import secrets
import time
from datetime import timedelta
from typing import Any

from asgiref.sync import sync_to_async
from django.contrib.auth.base_user import AbstractBaseUser
from django.contrib.sessions.backends.base import SessionBase
from django.db import IntegrityError, transaction
from django.utils import timezone
from django.utils.crypto import constant_time_compare

from accounts import signals, twitch
from accounts.models import TokenEvent, TwitchToken

logger = logging.getLogger(__name__)

# --- The OAuth state -------------------------------------------------------------

STATE_SESSION_KEY = "twitch_oauth_states"
STATE_LIFETIME = 600  # seconds
# Several tabs may be mid-flow at once; the oldest pending state is dropped first.
MAX_PENDING_STATES = 5


class InvalidState(Exception):
    """The callback's state is missing, unknown, expired or already used."""


async def begin_connect(
    *, session: SessionBase, next_url: str, force_verify: bool = False
) -> str:
    """Mint a state bound to this browser session and return Twitch's authorize URL."""
    state = secrets.token_urlsafe(32)  # 256 bits
    pending = dict(await session.aget(STATE_SESSION_KEY, {}))
    pending[state] = {"created": time.time(), "next": next_url}
    newest = sorted(pending.items(), key=lambda item: item[1]["created"])
    await session.aset(STATE_SESSION_KEY, dict(newest[-MAX_PENDING_STATES:]))
    return twitch.authorize_url(state=state, force_verify=force_verify)


async def take_state(*, session: SessionBase, state: str) -> str:
    """Consume a pending state and return the `next` URL that was stored with it.

    The state is removed and the session saved *before* anything else happens, so
    a replayed callback finds nothing, even while the first is still talking to
    Twitch.
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
    if fresh != pending:
        await session.aset(STATE_SESSION_KEY, fresh)
        await session.asave()
    if match is None or not state:
        raise InvalidState("unknown")
    if now - pending[match]["created"] >= STATE_LIFETIME:
        raise InvalidState("expired")
    return str(pending[match]["next"])


# --- Connecting --------------------------------------------------------------------


class AlreadyLinked(Exception):
    """The Twitch account is already connected to another site user."""

    def __init__(self, login: str) -> None:
        super().__init__(f"Twitch account {login} is connected to another user.")
        self.login = login


async def connect(*, user: AbstractBaseUser, code: str) -> TwitchToken:
    """Exchange the code, learn whose token it is and store it for `user`.

    Exactly two round trips to Twitch: the code exchange, then validation (which
    names the Twitch account). Raises `twitch.TwitchError` or `AlreadyLinked`;
    either way nothing is stored.
    """
    grant = await twitch.exchange_code(code)
    info = await twitch.validate(grant.access_token)
    try:
        token = await sync_to_async(_store_connection)(
            user=user, grant=grant, info=info
        )
    except AlreadyLinked:
        # We will not hold this token, so Twitch need not keep it alive either.
        await _revoke_quietly(grant.access_token)
        raise
    await signals.token_connected.asend(sender=TwitchToken, token=token)
    return token


def _store_connection(
    *, user: AbstractBaseUser, grant: twitch.TokenGrant, info: twitch.TokenInfo
) -> TwitchToken:
    now = timezone.now()
    fields = {
        "twitch_user_id": info.user_id,
        "login": info.login,
        "access_token": grant.access_token,
        "refresh_token": grant.refresh_token,
        "scopes": grant.scopes,
        "expires_at": now + timedelta(seconds=grant.expires_in),
        "status": TwitchToken.Status.ACTIVE,
        "last_validated_at": now,
        "last_error": "",
        "claimed_until": None,
    }
    try:
        with transaction.atomic():
            linked_elsewhere = (
                TwitchToken.objects.filter(twitch_user_id=info.user_id)
                .exclude(status=TwitchToken.Status.REVOKED)
                .exclude(user=user)
            )
            if linked_elsewhere.exists():
                raise AlreadyLinked(info.login)
            # Reconnecting updates the user's one row in place.
            token, _ = TwitchToken.objects.update_or_create(user=user, defaults=fields)
            TokenEvent.objects.create(
                token=token,
                action=TokenEvent.Action.CONNECT,
                outcome=TokenEvent.Outcome.SUCCEEDED,
                source=TokenEvent.Source.USER,
                actor=user,
                detail=f"Connected as {info.login}",
            )
    except IntegrityError:
        # Another user connected the same account at the same moment.
        raise AlreadyLinked(info.login) from None
    return token


async def _revoke_quietly(access_token: str) -> bool:
    try:
        await twitch.revoke(access_token)
    except twitch.InvalidCredential:
        return True  # already dead at Twitch
    except twitch.TwitchError as error:
        logger.warning("could not revoke a token at Twitch: %s", error)
        return False
    return True


# --- Revoking ----------------------------------------------------------------------


class RevokeOutcome(enum.Enum):
    REVOKED = "revoked"
    # Forgotten here, but Twitch could not be told: the user should disconnect the
    # app in their Twitch settings too.
    REVOKED_LOCALLY = "revoked locally but Twitch was unreachable"
    ALREADY_REVOKED = "already revoked"


async def revoke_token(
    *,
    token: TwitchToken,
    source: TokenEvent.Source,
    actor: AbstractBaseUser | None = None,
) -> RevokeOutcome:
    """Revoke the token at Twitch, then wipe its secrets here whatever Twitch said.

    The site must stop holding the credential even when Twitch cannot be reached.
    The row stays, marked revoked, for the record.
    """
    if token.status == TwitchToken.Status.REVOKED and not token.refresh_token:
        return RevokeOutcome.ALREADY_REVOKED
    told_twitch = True
    if token.access_token:
        told_twitch = await _revoke_quietly(token.access_token)
    await sync_to_async(_wipe)(
        token=token, told_twitch=told_twitch, source=source, actor=actor
    )
    await signals.token_revoked.asend(sender=TwitchToken, token=token)
    return RevokeOutcome.REVOKED if told_twitch else RevokeOutcome.REVOKED_LOCALLY


def _wipe(
    *,
    token: TwitchToken,
    told_twitch: bool,
    source: TokenEvent.Source,
    actor: AbstractBaseUser | None,
) -> None:
    token.wipe_secrets()
    token.status = TwitchToken.Status.REVOKED
    token.claimed_until = None
    token.last_error = "" if told_twitch else "Revoked here; Twitch was unreachable."
    with transaction.atomic():
        token.save(
            update_fields=[
                "access_token",
                "refresh_token",
                "status",
                "claimed_until",
                "last_error",
                "updated_at",
            ]
        )
        TokenEvent.objects.create(
            token=token,
            action=TokenEvent.Action.REVOKE,
            outcome=(
                TokenEvent.Outcome.SUCCEEDED
                if told_twitch
                else TokenEvent.Outcome.UNAVAILABLE
            ),
            source=source,
            actor=actor,
            detail="" if told_twitch else "Twitch was unreachable; secrets wiped here.",
        )


async def connection_for(user: AbstractBaseUser) -> TwitchToken | None:
    return await TwitchToken.objects.filter(user=user).afirst()
