"""twitchAPI clients for site code, with the site's URLs, timeout and tokens, whose
renewals are the site's job (see `twitchapi` for how twitchAPI is bent to that)."""

from __future__ import annotations

from typing import TypeVar

from django.conf import settings
from django.views.decorators.debug import sensitive_variables
from twitchAPI.type import AuthScope

from accounts.twitch import http
from accounts.twitch.oauth import KNOWN_SCOPES
from accounts.twitch.twitchapi import (
    AppClient,
    Renew,
    RenewApp,
    SiteClient,
    UserClient,
)

__all__ = ["AppClient", "Renew", "RenewApp", "UserClient", "app_client", "user_client"]

ClientT = TypeVar("ClientT", bound=SiteClient)


@sensitive_variables()
async def user_client(
    *, access_token: str, refresh_token: str, scopes: list[str], renew: Renew
) -> UserClient:
    """A twitchAPI client acting as one user, with our URLs, timeout and scopes.

    The caller has validated the token; a 401 later asks `renew` for the pair to
    use (twitchAPI never refreshes on its own).
    """
    client = await _site_client(UserClient)
    client.renew = renew
    # Scopes twitchAPI does not know (openid, newer ones) cannot be named to it.
    known = [AuthScope(scope) for scope in scopes if scope in KNOWN_SCOPES]
    await client.use_tokens(access_token, refresh_token, known)
    return client


@sensitive_variables()
async def app_client(*, access_token: str, renew: RenewApp) -> AppClient:
    """A twitchAPI client authenticated with the app access token; a 401 asks
    `renew` for the one to use."""
    client = await _site_client(AppClient)
    client.renew_app = renew
    await client.set_app_authentication(access_token, [])
    return client


async def _site_client(cls: type[ClientT]) -> ClientT:
    """A twitchAPI client with our URLs and timeout, and no token yet."""
    return await cls(
        settings.TWITCH_CLIENT_ID,
        settings.TWITCH_CLIENT_SECRET,
        authenticate_app=False,
        base_url=settings.TWITCH_API_BASE_URL,
        auth_base_url=settings.TWITCH_AUTH_BASE_URL,
        # Read now: tests shorten it.
        session_timeout=http.TIMEOUT,
    )
