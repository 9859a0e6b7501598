"""What the site does with Twitch connections: connect, revoke, and the client for
site code.

Views, admin actions and commands call the services (this module, `oauth_state`
and `refreshing`); the services call the Twitch seam (`accounts.twitch`), and
nothing else does. Business rules live here and nowhere else. Site code imports
`twitch_for`, `NoUsableToken` and `TwitchUnavailable` from this module.
"""

from __future__ import annotations

import asyncio
import contextvars
import copy
import enum
import logging
from collections import Counter
from collections.abc import Coroutine
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.contrib.auth.base_user import AbstractBaseUser
from django.db import IntegrityError, transaction
from django.db.models import QuerySet
from django.utils import timezone
from django.views.decorators.debug import sensitive_variables

from accounts import signals, twitch
from accounts.app_token import twitch_app
from accounts.models import TokenEvent, TwitchToken
from accounts.refreshing import (
    MissingScopes,
    NoUsableToken,
    TokenStoreUnavailable,
    twitch_for,
)
from accounts.twitch import (
    KNOWN_SCOPES,
    InvalidCredential,
    TwitchError,
    TwitchRejected,
    TwitchUnavailable,
)

__all__ = [
    "KNOWN_SCOPES",
    "AlreadyLinked",
    "InvalidCredential",
    "MissingScopes",
    "NoUsableToken",
    "RevokeOutcome",
    "ScopesNotOffered",
    "TokenStoreUnavailable",
    "TwitchError",
    "TwitchRejected",
    "TwitchUnavailable",
    "connect",
    "connection_for",
    "revoke_token",
    "arevoke_tokens",
    "revoke_tokens",
    "scopes_to_request",
    "twitch_app",
    "twitch_for",
]

logger = logging.getLogger(__name__)

# --- Connecting --------------------------------------------------------------------


class ScopesNotOffered(ValueError):
    """A page asked for scopes that are not in TWITCH_OPTIONAL_SCOPES."""

    def __init__(self, scopes: list[str]) -> None:
        super().__init__(f"Scopes not offered: {' '.join(scopes)}")
        self.scopes = scopes


async def scopes_to_request(*, user: AbstractBaseUser, asked: str) -> list[str]:
    """What to ask Twitch for: the required scopes, the optional ones the user's
    connection already has (a reconnect must not lose "Enable chat bot"), and the
    optional ones a feature page `asked` for (space-separated). Raises
    `ScopesNotOffered` for anything outside TWITCH_OPTIONAL_SCOPES."""
    requested = asked.split()
    if refused := [s for s in requested if s not in settings.TWITCH_OPTIONAL_SCOPES]:
        raise ScopesNotOffered(refused)
    held = []
    if settings.TWITCH_OPTIONAL_SCOPES:  # else nothing to keep, and no query
        token = await TwitchToken.objects.filter(user=user).afirst()
        if token is not None and token.status != TwitchToken.Status.REVOKED:
            optional = settings.TWITCH_OPTIONAL_SCOPES
            held = [s for s in token.scopes or [] if s in optional]
    return list(dict.fromkeys([*settings.TWITCH_SCOPES, *held, *requested]))


class AlreadyLinked(Exception):
    """The Twitch account is already connected to another site user."""

    def __init__(self, login: str) -> None:
        super().__init__(f"Twitch account {login} is connected to another user.")
        self.login = login


@sensitive_variables()
async def connect(*, user: AbstractBaseUser, code: str) -> TwitchToken:
    """Exchange the code, learn whose token it is and store it for `user`.

    Exactly two round trips to Twitch: the code exchange, then validation (which
    names the Twitch account). Raises `twitch.TwitchError`, `AlreadyLinked` or
    `DatabaseError`; in every case nothing is stored, and a grant Twitch issued is
    revoked rather than left alive with nobody holding it.
    """
    grant = await twitch.exchange_code(code)
    try:
        info = await twitch.validate(grant.access_token)
        # A transaction (the async ORM has none yet): on Django's sync thread.
        token, replaced = await sync_to_async(_store_connection)(
            user=user, grant=grant, info=info
        )
    except BaseException:
        # Whatever went wrong (Twitch, the database, the request cancelled), we
        # will not hold this token, so Twitch need not keep it alive either.
        await twitch.revoke_quietly(grant.access_token)
        raise
    if replaced:
        # The connection this one replaces is over: end it at Twitch too, after the
        # answer (the user need not wait for it; if the process stops first, that
        # access token simply expires within hours).
        _in_background(twitch.revoke_quietly(replaced))
    await signals.token_connected.asend(sender=TwitchToken, token=token)
    return token


# Strong references: the event loop keeps only weak ones to its tasks.
_background: set[asyncio.Task[Any]] = set()


def _in_background(work: Coroutine[Any, Any, Any]) -> None:
    # In a context of its own: the request's would tie any sync call the work makes
    # to the request's thread (twitchauth_site/asgi.py), which asgiref refuses once
    # the request has ended.
    task = asyncio.get_running_loop().create_task(work, context=contextvars.Context())
    _background.add(task)
    task.add_done_callback(_background.discard)


async def finish_background_work() -> None:
    """Wait for work started in the background (tests; a graceful shutdown)."""
    while _background:
        await asyncio.gather(*_background, return_exceptions=True)


def _store_connection(
    *, user: AbstractBaseUser, grant: twitch.TokenGrant, info: twitch.TokenInfo
) -> tuple[TwitchToken, str]:
    """Store the connection; return it and the access token of the one it replaced."""
    now = timezone.now()
    fields = {
        "twitch_user_id": info.user_id,
        "login": info.login,
        "access_token": grant.access_token,
        "refresh_token": grant.refresh_token,
        # Validation describes the token as Twitch holds it now.
        "scopes": info.scopes,
        "expires_at": twitch.expires_at(now, grant.expires_in, info),
        "status": TwitchToken.Status.ACTIVE,
        "last_validated_at": now,
        "last_error": "",
        "claimed_until": None,
    }
    try:
        # A Twitch account connected to another user makes the write below break
        # the one-live-connection constraint: no query to ask first.
        with transaction.atomic():
            previous = TwitchToken.objects.select_for_update().filter(user=user).first()
            # Reconnecting updates the user's one row in place.
            if previous is None:
                token = TwitchToken.objects.create(user=user, **fields)
            else:
                TwitchToken.objects.filter(pk=previous.pk).update(
                    **fields, updated_at=now
                )
                # The row as it now is, without reading it again; `previous`
                # itself stays as it was, for the record below.
                token = copy.copy(previous)
                for name, value in {**fields, "updated_at": now}.items():
                    setattr(token, name, value)
            if previous is None or previous.status == TwitchToken.Status.REVOKED:
                detail = f"Connected as {info.login}"
            else:
                detail = f"Reconnected as {info.login} (was {previous.login})"
            TokenEvent.objects.create(
                token=token,
                action=TokenEvent.Action.CONNECT,
                outcome=TokenEvent.Outcome.SUCCEEDED,
                source=TokenEvent.Source.USER,
                actor=user,
                detail=detail[:200],
            )
    except IntegrityError:
        # Another user has connected this Twitch account (perhaps at this very
        # moment); any other integrity failure is the database's, not the user's.
        if _linked_elsewhere(user=user, twitch_user_id=info.user_id).exists():
            raise AlreadyLinked(info.login) from None
        raise
    replaced = ""
    if previous is not None and previous.status != TwitchToken.Status.REVOKED:
        replaced = previous.access_token
    return token, replaced


def _linked_elsewhere(
    *, user: AbstractBaseUser, twitch_user_id: str
) -> QuerySet[TwitchToken]:
    return (
        TwitchToken.objects.filter(twitch_user_id=twitch_user_id)
        .exclude(status=TwitchToken.Status.REVOKED)
        .exclude(user=user)
    )


# --- Revoking ----------------------------------------------------------------------


class RevokeOutcome(enum.Enum):
    # Twitch ended the access token; our copy of the refresh token is wiped (Twitch
    # promises nothing about the refresh token itself).
    REVOKED = "revoked"
    # Twitch said the access token was already invalid (expired or revoked), so it
    # did nothing; our copies are wiped.
    ALREADY_INVALID = "already invalid at Twitch"
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
    # The caller's copy may be older than a refresh that happened since: revoke
    # the access token the row holds now.
    token = await TwitchToken.objects.filter(pk=token.pk).afirst() or token
    if token.status == TwitchToken.Status.REVOKED and not token.refresh_token:
        return RevokeOutcome.ALREADY_REVOKED
    if token.access_token:
        result = await twitch.revoke_quietly(token.access_token)
        outcome = {
            twitch.RevokeResult.ENDED: RevokeOutcome.REVOKED,
            twitch.RevokeResult.ALREADY_INVALID: RevokeOutcome.ALREADY_INVALID,
            None: RevokeOutcome.REVOKED_LOCALLY,
        }[result]
    elif token.is_undecryptable:
        outcome = RevokeOutcome.REVOKED_LOCALLY
    else:
        outcome = RevokeOutcome.ALREADY_INVALID
    # The row and its audit event in one transaction: on Django's sync thread.
    stored_meanwhile = await sync_to_async(_wipe)(
        token=token, outcome=outcome, source=source, actor=actor
    )
    if stored_meanwhile:
        # A refresh stored a new pair while we talked to Twitch: end it too.
        await twitch.revoke_quietly(stored_meanwhile)
    await signals.token_revoked.asend(sender=TwitchToken, token=token)
    return outcome


async def arevoke_tokens(
    *,
    tokens: list[TwitchToken],
    source: TokenEvent.Source,
    actor: AbstractBaseUser | None = None,
    concurrency: int = 20,
) -> Counter[RevokeOutcome]:
    """Revoke many tokens, `concurrency` at a time; count each outcome."""
    limit = asyncio.Semaphore(concurrency)

    async def revoke_one(token: TwitchToken) -> RevokeOutcome:
        async with limit:
            return await revoke_token(token=token, source=source, actor=actor)

    return Counter(await asyncio.gather(*(revoke_one(token) for token in tokens)))


def revoke_tokens(**options: Any) -> Counter[RevokeOutcome]:
    """`arevoke_tokens` for sync callers (admin actions)."""
    return twitch.run_sync(arevoke_tokens, **options)


# What the audit trail and Last error say about each way a revoke can go.
_REVOKE_RECORDS = {
    RevokeOutcome.REVOKED: (TokenEvent.Outcome.SUCCEEDED, "", ""),
    RevokeOutcome.ALREADY_INVALID: (
        TokenEvent.Outcome.REJECTED,
        "Twitch said the access token was already invalid, so it did nothing; "
        "secrets wiped here.",
        "",
    ),
    RevokeOutcome.REVOKED_LOCALLY: (
        TokenEvent.Outcome.UNAVAILABLE,
        "Twitch was unreachable; secrets wiped here.",
        "Revoked here; Twitch was unreachable.",
    ),
}


def _wipe(
    *,
    token: TwitchToken,
    outcome: RevokeOutcome,
    source: TokenEvent.Source,
    actor: AbstractBaseUser | None,
) -> str:
    """Wipe the row; return an access token it gained since `token` was read."""
    event_outcome, detail, last_error = _REVOKE_RECORDS[outcome]
    with transaction.atomic():
        current = TwitchToken.objects.select_for_update().filter(pk=token.pk).first()
        stored_meanwhile = ""
        if current is not None and current.access_token != token.access_token:
            stored_meanwhile = current.access_token
        token.mark_revoked(last_error=last_error)
        TokenEvent.objects.create(
            token=token,
            action=TokenEvent.Action.REVOKE,
            outcome=event_outcome,
            source=source,
            actor=actor,
            detail=detail,
        )
    return stored_meanwhile


async def connection_for(*, user: AbstractBaseUser) -> TwitchToken | None:
    return await TwitchToken.objects.filter(user=user).afirst()
