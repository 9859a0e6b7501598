"""Ways to make the sandbox misbehave: failures, hangs, rate limits, altered
answers, latency.

A ``Fault`` is the one description of a fault: which endpoint, what kind, how
many times, and the kind's options. It checks those options itself, because
they arrive both from Python and, through the control endpoints, from a JSON
body; ``Sandbox.fail``, ``hang``, ``rate_limit`` and ``alter`` build one and
both transports go through them. Faults queue up per endpoint and are used in
order, so a test can say "one 429, then one 500" with two calls.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

from aiohttp import web

from .responses import json_response

# The names tests use; "authorize" covers both the page and the form post.
ENDPOINTS = (
    "authorize",
    "token",
    "validate",
    "revoke",
    "users",
    "eventsub_create",
    "eventsub_list",
    "eventsub_delete",
    "keys",
    "openid_configuration",
    "userinfo",
    "device",
)
# Longer than any client timeout; cancelled when the sandbox stops.
HANG_SECONDS = 3600.0
# What Helix advertises as its bucket size.
RATE_LIMIT = 800


@dataclass(slots=True)
class Fault:
    endpoint: str
    kind: Literal["fail", "hang", "rate_limit", "alter"]
    times: int | None = None  # answers left to spoil; None: until cleared
    # "fail": None for the default body, a str as text/html, anything else as JSON.
    status: int = 500
    body: object = None
    # "rate_limit": when the bucket refills.
    reset_in: float = 1.0
    # "alter": what to set in, and drop from, the real answer's JSON object.
    changes: Mapping[str, object] | None = None
    removals: Iterable[str] = ()

    def __post_init__(self) -> None:
        check_endpoint(self.endpoint)
        # Numbers may come from a JSON body as any JSON number.
        if self.times is not None:
            self.times = int(self.times)
            if self.times < 1:
                raise ValueError("times must be at least 1, or None for until cleared")
        self.status = int(self.status)
        self.reset_in = float(self.reset_in)
        if self.changes is not None and not isinstance(self.changes, Mapping):
            raise TypeError("set must be a JSON object of keys to set")
        self.changes = dict(self.changes or {})
        # One string would otherwise be taken as a list of one-letter keys.
        if isinstance(self.removals, str):
            raise TypeError("remove must be a list of keys, not one string")
        self.removals = tuple(self.removals)
        if not all(isinstance(key, str) for key in self.removals):
            raise TypeError("remove must be a list of keys")

    def response(self) -> web.Response:
        if self.kind == "rate_limit":
            headers = {
                "Ratelimit-Limit": str(RATE_LIMIT),
                "Ratelimit-Remaining": "0",
                "Ratelimit-Reset": str(int(time.time() + self.reset_in)),
                "Retry-After": str(max(1, math.ceil(self.reset_in))),
            }
            body = {"status": 429, "message": "Too Many Requests"}
            return json_response(body, status=429, headers=headers)
        if isinstance(self.body, str):
            # A body that is not JSON, like a proxy's error page.
            return web.Response(
                status=self.status, text=self.body, content_type="text/html"
            )
        body = self.body
        if body is None:
            body = {"status": self.status, "message": "sandbox fault"}
        return json_response(body, status=self.status)

    def alter(self, response: web.StreamResponse) -> web.StreamResponse:
        """The real answer with the changes applied, if its body is a JSON
        object; any other answer unchanged."""
        if (
            not isinstance(response, web.Response)
            or response.content_type != "application/json"
            or not isinstance(response.body, bytes)
        ):
            return response
        body = json.loads(response.body)
        if not isinstance(body, dict):
            return response
        for key in self.removals:
            body.pop(key, None)
        body.update(self.changes or {})
        headers = {
            name: value
            for name, value in response.headers.items()
            if name.lower() not in ("content-type", "content-length")
        }
        return json_response(body, status=response.status, headers=headers)


class Faults:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._queues: dict[str, deque[Fault]] = {}
        self._latency: dict[str | None, float] = {}

    def add(self, fault: Fault) -> None:
        with self._lock:
            self._queues.setdefault(fault.endpoint, deque()).append(fault)

    def take(self, endpoint: str) -> Fault | None:
        """The fault that answers this request, if any, counting it used."""
        with self._lock:
            queue = self._queues.get(endpoint)
            if not queue:
                return None
            fault = queue[0]
            if fault.times is not None:
                fault.times -= 1
                if fault.times == 0:
                    queue.popleft()
            return fault

    def clear(self) -> None:
        with self._lock:
            self._queues.clear()

    def set_latency(self, seconds: float, endpoint: str | None = None) -> None:
        if endpoint is not None:
            check_endpoint(endpoint)
        seconds = float(seconds)  # from JSON, any number
        if seconds < 0:
            raise ValueError("latency cannot be negative")
        with self._lock:
            self._latency[endpoint] = seconds

    def latency(self, endpoint: str) -> float:
        """An endpoint's own latency wins over the one set for all."""
        with self._lock:
            return self._latency.get(endpoint, self._latency.get(None, 0.0))

    def reset(self) -> None:
        with self._lock:
            self._queues.clear()
            self._latency.clear()


def check_endpoint(endpoint: str) -> None:
    if endpoint not in ENDPOINTS:
        raise ValueError(f"unknown endpoint {endpoint!r}; use one of {ENDPOINTS}")
