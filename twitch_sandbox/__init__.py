"""A local stand-in for Twitch's OAuth server (OpenID Connect included: ID
tokens, rotating signing keys, discovery, UserInfo; the Device Code Grant), Helix
``GET /users`` and EventSub webhooks (a catalogue of subscription types with their
conditions and required scopes, deliveries that time out and are retried, costs,
pagination).

Built from shared/twitch-oauth.md: same paths, parameters, JSON fields, status
codes and error bodies as Twitch, strict where Twitch is strict, plus handles
for tests (users, expiry, disconnects, faults, altered answers, latency, live
tokens, a record of every request, signed webhook messages, forged ID tokens)
and Twitch's rate limits (Helix token buckets, id.twitch.tv's burst limit)::

    sandbox = Sandbox(redirect_uris=["http://testserver/twitch/callback/"])
    sandbox.start()
    ...  # point TWITCH_AUTH_BASE_URL at sandbox.auth_base_url
    sandbox.stop()
"""

from __future__ import annotations

from .faults import ENDPOINTS
from .ledger import LiveTokens, SandboxUser
from .recording import RECORDED_ENDPOINTS, RecordedRequest
from .sandbox import Sandbox
from .webhooks import Delivery, WebhookMessage

__all__ = [
    "Delivery",
    "ENDPOINTS",
    "LiveTokens",
    "RECORDED_ENDPOINTS",
    "RecordedRequest",
    "Sandbox",
    "SandboxUser",
    "WebhookMessage",
]
