"""The API for site code (chat bots, stream tools) and the one place that names it.

    from accounts.services import NoUsableToken, TwitchUnavailable, twitch_for

Everything here lives in the package of its concern (`accounts.tokens`,
`accounts.oauth`, `accounts.twitch`); this module only gathers what other code
may rely on.
"""

from __future__ import annotations

from django.contrib.auth.base_user import AbstractBaseUser

from accounts.models import TwitchToken
from accounts.oauth.connect import AlreadyLinked, ScopesNotOffered, connect
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
    "KNOWN_SCOPES",
    "AlreadyLinked",
    "InvalidCredential",
    "MissingScopes",
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
    "revoke_token",
    "revoke_tokens",
    "twitch_app",
    "twitch_for",
]


async def connection_for(*, user: AbstractBaseUser) -> TwitchToken | None:
    """The user's Twitch connection, whatever its status, or None."""
    return await TwitchToken.objects.filter(user=user).afirst()
