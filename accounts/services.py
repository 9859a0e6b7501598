"""The API for site code (chat bots, stream tools) and the one place that names it.

    from accounts.services import NoUsableToken, TwitchUnavailable, twitch_for

    async with twitch_for(user) as twitch:  # the person's own account
        ...
    async with twitch_for(user, role="bot") as bot:  # the account their bot speaks as
        ...

Everything here lives in the package of its concern (`accounts.tokens`,
`accounts.oauth`, `accounts.twitch`); this module only gathers what other code
may rely on.
"""

from __future__ import annotations

from django.contrib.auth.base_user import AbstractBaseUser

from accounts.eventsub import Notification, on_event
from accounts.models import TwitchToken
from accounts.oauth.connect import AlreadyLinked, ScopesNotOffered, connect
from accounts.roles import BOT_ROLE, DEFAULT_ROLE
from accounts.tokens.app_token import twitch_app
from accounts.tokens.client import (
    MissingScopes,
    NoUsableToken,
    TokenStoreUnavailable,
    twitch_for,
)
from accounts.tokens.revoke import (
    RevokeOutcome,
    arevoke_tokens,
    revoke_token,
    revoke_tokens,
)
from accounts.twitch import (
    KNOWN_SCOPES,
    InvalidCredential,
    TwitchError,
    TwitchRateLimited,
    TwitchRejected,
    TwitchUnavailable,
)

__all__ = [
    "BOT_ROLE",
    "DEFAULT_ROLE",
    "KNOWN_SCOPES",
    "AlreadyLinked",
    "InvalidCredential",
    "MissingScopes",
    "Notification",
    "NoUsableToken",
    "RevokeOutcome",
    "ScopesNotOffered",
    "TokenStoreUnavailable",
    "TwitchError",
    "TwitchRateLimited",
    "TwitchRejected",
    "TwitchUnavailable",
    "arevoke_tokens",
    "connect",
    "connection_for",
    "connections_for",
    "on_event",
    "revoke_token",
    "revoke_tokens",
    "twitch_app",
    "twitch_for",
]


async def connection_for(
    *, user: AbstractBaseUser, role: str = DEFAULT_ROLE
) -> TwitchToken | None:
    """The user's Twitch connection in `role`, whatever its status, or None."""
    return await TwitchToken.objects.filter(user=user, role=role).afirst()


async def connections_for(*, user: AbstractBaseUser) -> dict[str, TwitchToken]:
    """The user's Twitch connections by role, whatever their status."""
    return {token.role: token async for token in TwitchToken.objects.filter(user=user)}
