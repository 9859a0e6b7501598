"""The adapter to twitchAPI 4.5.0 (pinned in requirements.txt): every use of its
private names, and every override of its methods, is here and nowhere else.

Where a public knob does the job it is used: tokens go in through
`set_user_authentication(..., validate=False)` and `set_app_authentication`, come
back through `get_user_auth_token()`, `get_user_auth_scope()` and
`get_app_token()`, `has_required_auth` says whether a user token is set, and
`session_timeout` bounds Helix calls. Four hooks remain, each with a test in
tests/test_twitchapi_adapter.py that fails when twitchAPI changes it:

- `_api_request` (private): every Helix request goes through it, and twitchAPI
  lets aiohttp's errors and its own `TwitchBackendException` out; no knob
  translates them.
- `refresh_used_token`: what twitchAPI calls on a 401. Its own refreshes by
  itself (`user_auth_refresh_callback` only hears of it afterwards), and
  `auto_refresh_auth = False` would turn the 401 into an error without asking the
  site.
- `get_refreshed_user_auth_token`: what twitchAPI's Chat and EventSub websocket
  call for a token. Its own validates on a session without our timeout.
- `_refresh_app_token` (private): the one place twitchAPI renews an app token
  (after a 401, and in `get_refreshed_app_token`); its own puts the client secret
  in the URL, and `app_auth_refresh_callback` only hears of it afterwards.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
from twitchAPI.twitch import Twitch
from twitchAPI.type import AuthScope, AuthType, TwitchBackendException

from accounts.twitch.errors import InvalidCredential, TwitchUnavailable
from accounts.twitch.http import unavailable
from accounts.twitch.oauth import validate

# Given the access and refresh token a client holds, return the pair it should use
# now. The site's implementation refreshes through its leased path, so there is
# one refresher per grant (accounts.tokens.client.twitch_for).
Renew = Callable[[str, str], Awaitable[tuple[str, str]]]

# Given the app access token Twitch just refused, return the one to use now.
RenewApp = Callable[[str], Awaitable[str]]


class SiteClient(Twitch):
    """twitchAPI's `Twitch`, speaking the site's language: transport failures and
    Twitch's 5xx answers leave as `TwitchUnavailable`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Renewals take turns; unlike twitchAPI's own flag, always released.
        self._renewing = asyncio.Lock()

    # Hook: twitchAPI 4.5.0's private `Twitch._api_request`.
    async def _api_request(self, *args: Any, **kwargs: Any) -> aiohttp.ClientResponse:
        try:
            return await super()._api_request(*args, **kwargs)
        except (TimeoutError, aiohttp.ClientError) as error:
            raise unavailable("Helix", error) from None
        except TwitchBackendException:
            raise TwitchUnavailable("Twitch's Helix API failed (5xx).") from None


class UserClient(SiteClient):
    """A client acting as one user, whose refreshing is the site's job.

    twitchAPI would refresh on any 401 by itself, with the refresh token it was
    given, on a session without our timeout, and leave its refresh lock held when
    that fails (so the next call waits forever). Here a 401 asks `renew` instead,
    under an asyncio lock that is always released.
    """

    renew: Renew

    async def use_tokens(
        self, access_token: str, refresh_token: str, scopes: list[AuthScope]
    ) -> None:
        """Call as the user with this pair from now on.

        twitchAPI's own validation is skipped: it would use a session without our
        timeout, and refresh behind the site's back.
        """
        await self.set_user_authentication(
            access_token, scopes, refresh_token, validate=False
        )
        # twitchAPI has no public getter for the refresh token it holds.
        self._site_refresh_token = refresh_token

    # Hook: twitchAPI 4.5.0's `Twitch.refresh_used_token`, called on a 401.
    async def refresh_used_token(self) -> None:
        if not self.has_required_auth(AuthType.USER, []):
            await super().refresh_used_token()
            return
        async with self._renewing:
            access_token, refresh_token = await self.renew(
                self.get_user_auth_token() or "", self._site_refresh_token
            )
            await self.use_tokens(
                access_token, refresh_token, self.get_user_auth_scope()
            )

    # Hook: twitchAPI 4.5.0's `Twitch.get_refreshed_user_auth_token`.
    async def get_refreshed_user_auth_token(self) -> str | None:
        # twitchAPI's Chat and EventSub websocket call this; its own version
        # validates on a session with a 300-second timeout and refreshes by itself.
        if (token := self.get_user_auth_token()) is None:
            return None
        try:
            await validate(token)
        except InvalidCredential:
            await self.refresh_used_token()
        return self.get_user_auth_token()


class AppClient(SiteClient):
    """A client with the app access token, whose renewal is the site's job (one
    process fetches, all share)."""

    renew_app: RenewApp

    # Hook: twitchAPI 4.5.0's private `Twitch._refresh_app_token`, which would put
    # the client secret in a URL.
    async def _refresh_app_token(self) -> None:
        async with self._renewing:
            refused = self.get_app_token() or ""
            await self.set_app_authentication(await self.renew_app(refused), [])
