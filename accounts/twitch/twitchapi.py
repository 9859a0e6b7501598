"""The adapter to twitchAPI 4.5.0 (pinned in requirements.txt): every use of its
private names, and every override of its methods, is here and nowhere else.

Where a public knob does the job it is used: tokens go in through
`set_user_authentication(..., validate=False)` and `set_app_authentication`, come
back through `get_user_auth_token()`, `get_user_auth_scope()` and
`get_app_token()`, `has_required_auth` says whether a user token is set, and
`session_timeout` bounds Helix calls. Five hooks remain, each with a test in
tests/test_twitchapi_adapter.py that fails when twitchAPI changes it:

- `_api_request` (private): every Helix request goes through it, and twitchAPI
  lets aiohttp's errors and its own `TwitchBackendException` out; no knob
  translates them. It also starts the call's time budget (`session_timeout`).
- `_check_request_return` (private): where twitchAPI looks at each Helix answer.
  On a 429, or any answer saying `Ratelimit-Remaining: 0`, its own sleeps until
  `Ratelimit-Reset` without a cap (an hour, if Twitch says so), then hands a 429
  back as if it were data; no knob turns that off. Here a 429 is waited out only
  when the reset comes within the call's budget, and is otherwise a
  `TwitchRateLimited`; an empty bucket alone never sleeps (the next call's 429,
  if any, decides).
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
import time
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from typing import Any

import aiohttp
from twitchAPI.twitch import Twitch
from twitchAPI.type import AuthScope, AuthType, TwitchBackendException

from accounts.twitch import http
from accounts.twitch.errors import (
    InvalidCredential,
    TwitchRateLimited,
    TwitchUnavailable,
)
from accounts.twitch.http import seconds_to_reset, unavailable
from accounts.twitch.oauth import validate

# Given the access and refresh token a client holds, return the pair it should use
# now. The site's implementation refreshes through its leased path, so there is
# one refresher per grant (accounts.tokens.client.twitch_for).
Renew = Callable[[str, str], Awaitable[tuple[str, str]]]

# Given the app access token Twitch just refused, return the one to use now.
RenewApp = Callable[[str], Awaitable[str]]

# When the Helix call under way must be over (time.monotonic): its first request's
# start plus `session_timeout`. twitchAPI's own retries (after a 401, a 503, a
# 429 waited out) run inside the first request, so they see it set.
_deadline: ContextVar[float | None] = ContextVar("helix_deadline", default=None)
# A 429 is waited out only if this much of the budget is left after the wait, for
# asking again.
RETRY_ROOM = 0.5  # seconds
# Statuses on which twitchAPI 4.5.0's `_check_request_return` retries or raises
# before it reaches its rate-limit sleep; on any other, that sleep is all it does.
_HANDLED_BEFORE_SLEEPING = frozenset({400, 401, 404, 500, 503})


class SiteClient(Twitch):
    """twitchAPI's `Twitch`, speaking the site's language: transport failures and
    Twitch's 5xx answers leave as `TwitchUnavailable`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Renewals take turns; unlike twitchAPI's own flag, always released.
        self._renewing = asyncio.Lock()

    # Hook: twitchAPI 4.5.0's private `Twitch._api_request`.
    async def _api_request(self, *args: Any, **kwargs: Any) -> aiohttp.ClientResponse:
        started = None
        if _deadline.get() is None:
            started = _deadline.set(time.monotonic() + self._budget())
        try:
            return await super()._api_request(*args, **kwargs)
        except (TimeoutError, aiohttp.ClientError) as error:
            raise unavailable("Helix", error) from None
        except TwitchBackendException:
            raise TwitchUnavailable("Twitch's Helix API failed (5xx).") from None
        finally:
            if started is not None:
                _deadline.reset(started)

    # Hook: twitchAPI 4.5.0's private `Twitch._check_request_return`.
    async def _check_request_return(
        self,
        session: aiohttp.ClientSession,
        response: aiohttp.ClientResponse,
        method: str,
        url: str,
        auth_type: AuthType,
        required_scope: list[Any],
        data: dict | None = None,
        retries: int = 1,
    ) -> aiohttp.ClientResponse:
        if response.status == 429:
            wait = seconds_to_reset(response.headers)
            response.release()
            deadline = _deadline.get()
            left = 0.0 if deadline is None else deadline - time.monotonic()
            if retries > 0 and wait is not None and wait + RETRY_ROOM <= left:
                await asyncio.sleep(wait)
                # The retry gets what is left of the budget, not a budget of its own.
                async with asyncio.timeout(left - wait):
                    return await self._api_request(
                        method,
                        session,
                        url,
                        auth_type,
                        required_scope,
                        data=data,
                        retries=retries - 1,
                    )
            raise TwitchRateLimited(
                "Twitch's Helix API is rate limiting us.", retry_after=wait
            )
        if (
            response.headers.get("Ratelimit-Remaining") == "0"
            and response.status not in _HANDLED_BEFORE_SLEEPING
        ):
            # An answer that emptied the bucket: twitchAPI would only sleep until
            # the reset, uncapped. The next call meets a 429 if it is still empty.
            return response
        return await super()._check_request_return(
            session,
            response,
            method,
            url,
            auth_type,
            required_scope,
            data=data,
            retries=retries,
        )

    def _budget(self) -> float:
        """Seconds one Helix call may take, retries and waits included."""
        timeout = self.session_timeout
        if isinstance(timeout, aiohttp.ClientTimeout) and timeout.total:
            return timeout.total
        return http.TIMEOUT.total or 8.0


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
