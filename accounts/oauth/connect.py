"""Connecting a Twitch account: which scopes to ask for, and storing the grant the
callback's code brings (the code exchange and its verified ID token, validation
right after the answer; or, without OpenID Connect, the code exchange, then
validation)."""

from __future__ import annotations

import copy
import logging
from datetime import datetime
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.contrib.auth.base_user import AbstractBaseUser
from django.db import IntegrityError
from django.db.models import QuerySet
from django.utils import timezone
from django.utils.crypto import constant_time_compare
from django.views.decorators.debug import sensitive_variables

from accounts import signals, twitch
from accounts.background import in_background
from accounts.db import atomic_write, writer_turn
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
    *,
    user: AbstractBaseUser,
    code: str,
    role: str = DEFAULT_ROLE,
    nonce: str | None = None,
) -> TwitchToken:
    """Exchange the code, learn whose token it is and store it as `user`'s
    connection in `role`.

    With OpenID Connect (`nonce`: the one the authorize request sent), one round
    trip to Twitch: the code exchange, whose verified ID token names the account;
    the new access token is validated right after the answer (`_validate_new`).
    Without, two: the code exchange, then validation. Raises `twitch.TwitchError`
    (`twitch.InvalidIdToken` among them), `AlreadyLinked` or `DatabaseError`; in
    every case nothing is stored, and a grant Twitch issued is revoked rather than
    left alive with nobody holding it.
    """
    grant = await twitch.exchange_code(code)
    if nonce is None:
        return await keep_grant(user=user, role=role, grant=grant)
    try:
        identity = await twitch.verify_id_token(
            grant.id_token, client_id=settings.TWITCH_CLIENT_ID, nonce=nonce
        )
    except BaseException:
        await twitch.revoke_quietly(grant.access_token)
        raise
    if not identity.login or grant.scopes is None or grant.expires_in is None:
        # What only validation can tell (the login behind a display name that is
        # none, scopes or expiry Twitch left out): ask it before answering.
        return await keep_grant(
            user=user, role=role, grant=grant, user_id=identity.user_id
        )
    described = twitch.TokenInfo(
        user_id=identity.user_id,
        login=identity.login,
        scopes=grant.scopes,
        expires_in=grant.expires_in,
        client_id=settings.TWITCH_CLIENT_ID,  # the ID token's audience, verified
    )
    # Stored as validated now: the validation Twitch requires of a new token
    # follows the answer within a round trip, and writes only when it disagrees
    # (or cannot be made), so a connect costs no second write. Should the process
    # stop in between, `refresh_tokens` validates the token within the hour, as
    # it does every token.
    token = await _keep(
        user=user, role=role, grant=grant, info=described, validated=True
    )
    in_background(_validate_new(token, grant.access_token, described))
    return token


@sensitive_variables()
async def keep_grant(
    *,
    user: AbstractBaseUser,
    role: str,
    grant: twitch.TokenGrant,
    source: str = TokenEvent.Source.USER,
    user_id: str | None = None,
) -> TwitchToken:
    """Validate a new grant (which names its Twitch account: `user_id` when an ID
    token already did) and store it as `user`'s connection in `role`: for the
    browser's callback and for `manage.py connect_twitch` (the device code grant)
    alike. Raises as `connect` does, with the grant revoked."""
    try:
        info = await twitch.validate(grant.access_token)
        if user_id is not None and info.user_id != user_id:
            raise twitch.InvalidIdToken(
                "Twitch's validation names another account than its ID token.",
                reason="subject",
            )
    except BaseException:
        await twitch.revoke_quietly(grant.access_token)
        raise
    return await _keep(
        user=user, role=role, grant=grant, info=info, source=source, validated=True
    )


@sensitive_variables()
async def _keep(
    *,
    user: AbstractBaseUser,
    role: str,
    grant: twitch.TokenGrant,
    info: twitch.TokenInfo,
    source: str = TokenEvent.Source.USER,
    validated: bool = False,
) -> TwitchToken:
    """Store the connection `info` describes, end the one it replaces, announce it."""
    try:
        # A transaction (the async ORM has none yet): on Django's sync thread.
        token, replaced = await sync_to_async(_store_connection)(
            user=user,
            role=role,
            grant=grant,
            info=info,
            source=source,
            validated=validated,
        )
    except BaseException:
        # Whatever went wrong (the database, the request cancelled), we will not
        # hold this token, so Twitch need not keep it alive either.
        await twitch.revoke_quietly(grant.access_token)
        raise
    if replaced:
        # The connection this one replaces is over: end it at Twitch too, after the
        # answer (the user need not wait for it; if the process stops first, that
        # access token simply expires within hours).
        in_background(twitch.revoke_quietly(replaced))
    await signals.token_connected.asend(sender=TwitchToken, token=token, role=role)
    return token


@sensitive_variables()
async def _validate_new(
    token: TwitchToken, access_token: str, described: twitch.TokenInfo
) -> None:
    """Validate a connection stored from its ID token. Agreeing with what was
    stored, it writes nothing; telling more (other scopes, say), it stores that;
    failing to reach Twitch, it leaves the token due for the next run; disagreeing
    (Twitch refuses the token, or names another account), it ends it: the user is
    asked to reconnect, with an event and `token_needs_reconnect`."""
    try:
        info = await twitch.validate(access_token)
    except twitch.InvalidCredential:
        problem = "Twitch refused the new token when it was validated"
    except twitch.TwitchError as error:
        logger.info("could not validate new connection %s: %s", token.pk, error)
        await sync_to_async(_store_first_validation)(token, None)
        return
    else:
        if info.user_id == token.twitch_user_id:
            if (info.login, sorted(info.scopes)) != (
                described.login,
                sorted(described.scopes),
            ):
                await sync_to_async(_store_first_validation)(token, info)
            return
        problem = "Validation named another Twitch account than the ID token"
    ended = await sync_to_async(_end_new)(token, access_token, problem)
    if ended is not None:
        logger.warning("new connection %s ended: %s", token.pk, problem)
        await twitch.revoke_quietly(access_token)
        await signals.token_needs_reconnect.asend(
            sender=TwitchToken, token=ended, role=ended.role
        )


def _still_holding(pk: int, access_token: str) -> TwitchToken | None:
    """The row, locked, if it still holds `access_token` (not reconnected or
    revoked since); inside a transaction."""
    row = TwitchToken.objects.select_for_update().filter(pk=pk).first()
    if row is None or row.status != TwitchToken.Status.ACTIVE:
        return None
    return row if constant_time_compare(row.access_token, access_token) else None


def _store_first_validation(token: TwitchToken, info: twitch.TokenInfo | None) -> None:
    """What the first validation taught (None: it could not be made, so the token
    is due at the next run)."""
    now = timezone.now()
    if info is None:
        changes: dict[str, Any] = {"last_validated_at": None}
    else:
        changes = {
            "login": info.login,
            "scopes": info.scopes,
            "expires_at": twitch.expires_at(now, None, info),
            "last_validated_at": now,
        }
    # One UPDATE, and only of the row as this connect stored it: a reconnect or a
    # refresh since (each moves `updated_at`) has newer facts than ours.
    with writer_turn():
        TwitchToken.objects.filter(
            pk=token.pk,
            updated_at=token.updated_at,
            status=TwitchToken.Status.ACTIVE,
        ).update(**changes)


@sensitive_variables()
def _end_new(token: TwitchToken, access_token: str, problem: str) -> TwitchToken | None:
    with atomic_write():
        if (row := _still_holding(token.pk, access_token)) is None:
            return None
        row.wipe_secrets()
        row.status = TwitchToken.Status.NEEDS_RECONNECT
        row.last_error = problem[:200]
        row.save(
            update_fields=[
                "access_token",
                "refresh_token",
                "status",
                "last_error",
                "updated_at",
            ]
        )
        TokenEvent.objects.create(
            token=row,
            action=TokenEvent.Action.VALIDATE,
            outcome=TokenEvent.Outcome.REJECTED,
            source=TokenEvent.Source.SITE,
            detail=problem[:200],
        )
    return row


def _store_connection(
    *,
    user: AbstractBaseUser,
    role: str,
    grant: twitch.TokenGrant,
    info: twitch.TokenInfo,
    source: str,
    validated: bool,
) -> tuple[TwitchToken, str]:
    """Store the connection `info` describes (from validation, when `validated`;
    else from the ID token and the token answer); return it and the access token
    of the one it replaced. Raises `AlreadyLinked`."""
    now = timezone.now()
    fields = {
        "twitch_user_id": info.user_id,
        "login": info.login,
        "access_token": grant.access_token,
        "refresh_token": grant.refresh_token,
        "scopes": info.scopes,
        "expires_at": twitch.expires_at(now, grant.expires_in, info),
        "status": TwitchToken.Status.ACTIVE,
        "last_validated_at": now if validated else None,
        "last_error": "",
        "claimed_until": None,
    }
    # Twice at most: a first connection of this role made at the same moment
    # (another tab) makes our INSERT fail; the second try updates that row.
    for attempt in (1, 2):
        try:
            return _write_connection(
                user=user, role=role, info=info, fields=fields, source=source, now=now
            )
        except IntegrityError:
            # Another user has connected this Twitch account in this role
            # (perhaps at this very moment); any other integrity failure is the
            # database's, not the user's.
            linked = _linked_elsewhere(
                user=user, role=role, twitch_user_id=info.user_id
            )
            if linked.exists():
                raise AlreadyLinked(info.login, role) from None
            mine = TwitchToken.objects.filter(user=user, role=role)
            if attempt == 2 or not mine.exists():
                raise
    raise AssertionError("unreachable")


def _write_connection(
    *,
    user: AbstractBaseUser,
    role: str,
    info: twitch.TokenInfo,
    fields: dict[str, Any],
    source: str,
    now: datetime,
) -> tuple[TwitchToken, str]:
    # A Twitch account connected to another user makes the write below break the
    # one-live-connection constraint: no query to ask first.
    with atomic_write():
        previous = (
            TwitchToken.objects.select_for_update().filter(user=user, role=role).first()
        )
        # Reconnecting updates the user's row for this role in place.
        if previous is None:
            token = TwitchToken.objects.create(user=user, role=role, **fields)
        else:
            TwitchToken.objects.filter(pk=previous.pk).update(**fields, updated_at=now)
            # The row as it now is, without reading it again; `previous` itself
            # stays as it was, for the record below.
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
            # A person acting here; an operator's command acts for them.
            actor=user if source == TokenEvent.Source.USER else None,
            detail=detail[:200],
        )
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
