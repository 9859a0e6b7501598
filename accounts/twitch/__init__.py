"""The one seam between the site and Twitch.

Nothing else in the project imports twitchAPI or aiohttp. Every transport or protocol
failure leaves this package as a `TwitchError` (`TwitchUnavailable`: keep what you
hold and try later, its `TwitchRateLimited` saying how long for after a 429;
`TwitchRejected`, and its `InvalidCredential`: Twitch said no), whose text is safe
to show and to log because it never carries a credential.

- `errors`: that family of exceptions.
- `http`: one aiohttp session per event loop, `TIMEOUT`, `run_sync`, retries, and
  the translation of failures and HTTP statuses.
- `oauth`: the id.twitch.tv endpoints (authorize, token, validate, revoke), called
  with form bodies and parsed strictly.
- `helix`: EventSub subscriptions, with the app access token.
- `device`: the Device Code Grant (a device code, then polling until approved).
- `oidc`: Twitch's ID tokens (OpenID Connect) verified against its published keys.
- `scopes`: the catalogue of Twitch's scopes (current, deprecated, removed), plain
  data that the sandbox imports too.
- `clients`: twitchAPI clients for site code, whose token renewals are the site's.
- `twitchapi`: the adapter holding every use of twitchAPI's private names.

Other code imports from here (`from accounts import twitch`). The tunables
(`TIMEOUT`, `RETRY_BASE_DELAY`, `MAX_RETRY_WAIT`) are not re-exported: a test
shortens them where they are read, `twitch.http`, and patching a copy here would
silently change nothing.
"""

from accounts.twitch.clients import (
    AppClient,
    Renew,
    RenewApp,
    UserClient,
    app_client,
    user_client,
)
from accounts.twitch.device import (
    DeviceAuthorization,
    DevicePollingStopped,
    poll_device_authorization,
    start_device_authorization,
)
from accounts.twitch.errors import (
    DeviceAccessDenied,
    DeviceCodeExpired,
    InvalidCredential,
    InvalidIdToken,
    TwitchError,
    TwitchRateLimited,
    TwitchRejected,
    TwitchUnavailable,
)
from accounts.twitch.helix import (
    create_eventsub_subscription,
    delete_eventsub_subscription,
)
from accounts.twitch.http import close_http_session, run_sync, with_retries
from accounts.twitch.oauth import (
    ID_TOKEN_CLAIMS,
    KNOWN_SCOPES,
    AppGrant,
    RevokeResult,
    TokenGrant,
    TokenInfo,
    authorize_url,
    exchange_code,
    expires_at,
    fetch_app_token,
    refresh,
    revoke,
    revoke_quietly,
    validate,
)
from accounts.twitch.oidc import IdToken, keys_known, verify_id_token, warm_keys

__all__ = [
    "ID_TOKEN_CLAIMS",
    "KNOWN_SCOPES",
    "AppClient",
    "AppGrant",
    "DeviceAccessDenied",
    "DeviceAuthorization",
    "DeviceCodeExpired",
    "DevicePollingStopped",
    "IdToken",
    "InvalidCredential",
    "InvalidIdToken",
    "Renew",
    "RenewApp",
    "RevokeResult",
    "TokenGrant",
    "TokenInfo",
    "TwitchError",
    "TwitchRateLimited",
    "TwitchRejected",
    "TwitchUnavailable",
    "UserClient",
    "app_client",
    "authorize_url",
    "close_http_session",
    "create_eventsub_subscription",
    "delete_eventsub_subscription",
    "exchange_code",
    "expires_at",
    "keys_known",
    "fetch_app_token",
    "poll_device_authorization",
    "refresh",
    "revoke",
    "revoke_quietly",
    "run_sync",
    "start_device_authorization",
    "user_client",
    "validate",
    "verify_id_token",
    "warm_keys",
    "with_retries",
]
