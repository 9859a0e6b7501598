"""Where handlers find the sandbox's parts on the aiohttp application."""

from __future__ import annotations

import asyncio

from aiohttp import web

from .faults import Faults
from .ledger import Ledger
from .recording import RequestLog

LEDGER = web.AppKey("twitch_sandbox.ledger", Ledger)
FAULTS = web.AppKey("twitch_sandbox.faults", Faults)
LOG = web.AppKey("twitch_sandbox.log", RequestLog)
# Requests sleeping for latency or a hang, cancelled when the sandbox stops so
# that stopping never waits for them.
SLEEPERS = web.AppKey("twitch_sandbox.sleepers", set[asyncio.Task[object]])
