"""Connecting a Twitch account: which scopes to ask for, and storing the grant the
callback's code brings (the code exchange, then validation)."""

from __future__ import annotations

import asyncio
import contextvars
import copy
import logging
from collections.abc import Coroutine
from typing import Any

from asgiref.sync import sync_to_async
from django.contrib.auth.base_user import AbstractBaseUser
from django.db import IntegrityError
from django.db.models import QuerySet
from django.utils import timezone
from django.views.decorators.debug import sensitive_variables

from accounts import signals, twitch
from accounts.db import atomic_write
from accounts.models import TokenEvent, TwitchToken
from accounts.roles import DEFAULT_ROLE, Role

logger = logging.getLogger(__name__)


class ScopesNotOffered(ValueError):
    """A page asked for scopes that the role does not offer (its optional scopes)."""

    def __init__(self, scopes: list[str]) -> None:
        super().__init__(f"Scopes not offered: {' '.join(scopes)}")
        self.scopes = scopes


async def scopes_to_request(
    *, user: AbstractBaseUser, role: Role, asked: str
) -> list[str]:
    """What to ask Twitch for, for `user`'s connection in `role`: the role's required
    scopes, the optional ones that connection already has (a reconnect must not lose
    "Enable chat bot"), and the optional ones a feature page `asked` for
    (space-separated). Raises `ScopesNotOffered` for anything else."""
    requested = asked.split()
    if refused := [s for s in requested if s not in role.optional_scopes]:
        raise ScopesNotOffered(refused)
    held = []
    if role.optional_scopes:  # else nothing to keep, and no query
        token = await TwitchToken.objects.filter(user=user, role=role.name).afirst()
        if token is not None and token.status != TwitchToken.Status.REVOKED:
            held = [s for s in token.scopes or [] if s in role.optional_scopes]
    return list(dict.fromkeys([*role.scopes, *held, *requested]))


class AlreadyLinked(Exception):
    """The Twitch account is already connected to another site user in this role."""

    def __init__(self, login: str, role: str) -> None:
        super().__init__(
            f"Twitch account {login} is connected to another user as {role}."
        )
        self.login = login
        self.role = role


@sensitive_variables()
async def connect(
    *, user: AbstractBaseUser, code: str, role: str = DEFAULT_ROLE
) -> TwitchToken:
    """Exchange the code, learn whose token it is and store it as `user`'s
    connection in `role`.

    Exactly two round trips to Twitch: the code exchange, then validation (which
    names the Twitch account). Raises `twitch.TwitchError`, `AlreadyLinked` or
    `DatabaseError`; in every case nothing is stored, and a grant Twitch issued is
    revoked rather than left alive with nobody holding it.
    """
    grant = await twitch.exchange_code(code)
    try:
        info = await twitch.validate(grant.access_token)
        # A transaction (the async ORM has none yet): on Django's sync thread.
        token, replaced = await sync_to_async(store_connection)(
            user=user, role=role, grant=grant, info=info
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
    await signals.token_connected.asend(sender=TwitchToken, token=token, role=role)
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


def store_connection(
    *,
    user: AbstractBaseUser,
    role: str,
    grant: twitch.TokenGrant,
    info: twitch.TokenInfo,
    source: str = TokenEvent.Source.USER,
) -> tuple[TwitchToken, str]:
    """Store the connection (validated: `info`); return it and the access token of
    the one it replaced. Raises `AlreadyLinked`. For the browser's callback and
    `manage.py connect_twitch` alike."""
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
        with atomic_write():
            previous = (
                TwitchToken.objects.select_for_update()
                .filter(user=user, role=role)
                .first()
            )
            # Reconnecting updates the user's row for this role in place.
            if previous is None:
                token = TwitchToken.objects.create(user=user, role=role, **fields)
            else:
                TwitchToken.objects.filter(pk=previous.pk).update(
                    **fields, updated_at=now
                )
                # The row as it now is, without reading it again; `previous`
                # itself stays as it was, for the record below.
                token = copy.copy(previous)
                for name, value in {**fields, "updated_at": now}.items():
                    setattr(token, name, value)
            as_role = "" if role == DEFAULT_ROLE else f" ({role})"
            if previous is None or previous.status == TwitchToken.Status.REVOKED:
                detail = f"Connected as {info.login}{as_role}"
            else:
                detail = f"Reconnected as {info.login}{as_role} (was {previous.login})"
            TokenEvent.objects.create(
                token=token,
                action=TokenEvent.Action.CONNECT,
                outcome=TokenEvent.Outcome.SUCCEEDED,
                source=source,
                actor=user,
                detail=detail[:200],
            )
    except IntegrityError:
        # Another user has connected this Twitch account (perhaps at this very
        # moment); any other integrity failure is the database's, not the user's.
        linked = _linked_elsewhere(user=user, role=role, twitch_user_id=info.user_id)
        if linked.exists():
            raise AlreadyLinked(info.login, role) from None
        raise
    replaced = ""
    if previous is not None and previous.status != TwitchToken.Status.REVOKED:
        replaced = previous.access_token
    return token, replaced


def _linked_elsewhere(
    *, user: AbstractBaseUser, role: str, twitch_user_id: str
) -> QuerySet[TwitchToken]:
    return (
        TwitchToken.objects.filter(twitch_user_id=twitch_user_id, role=role)
        .exclude(status=TwitchToken.Status.REVOKED)
        .exclude(user=user)
    )
