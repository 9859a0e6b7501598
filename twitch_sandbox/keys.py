"""Where handlers find the sandbox's parts on the aiohttp application."""

from __future__ import annotations

import asyncio

from aiohttp import web

from .faults import Faults
from .ledger import Ledger
from .limits import RateLimits
from .recording import RequestLog
from .webhooks import Subscriptions

LEDGER = web.AppKey("twitch_sandbox.ledger", Ledger)
FAULTS = web.AppKey("twitch_sandbox.faults", Faults)
LOG = web.AppKey("twitch_sandbox.log", RequestLog)
EVENTSUB = web.AppKey("twitch_sandbox.eventsub", Subscriptions)
LIMITS = web.AppKey("twitch_sandbox.limits", RateLimits)
# Requests sleeping for latency or a hang, cancelled when the sandbox stops so
# that stopping never waits for them.
SLEEPERS = web.AppKey("twitch_sandbox.sleepers", set[asyncio.Task[object]])
# Verification challenges on their way to a callback, cancelled likewise.
DELIVERING = web.AppKey("twitch_sandbox.delivering", set[asyncio.Task[None]])
