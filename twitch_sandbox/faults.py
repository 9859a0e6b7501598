"""Ways to make the sandbox misbehave: failures, hangs, rate limits, latency.

Faults queue up per endpoint and are used in order, so a test can say "one 429,
then one 500" with two calls.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Literal

from aiohttp import web

from .responses import json_response

# The names tests use; "authorize" covers both the page and the form post.
ENDPOINTS = ("authorize", "token", "validate", "revoke", "users")
# Longer than any client timeout; cancelled when the sandbox stops.
HANG_SECONDS = 3600.0
# What Helix advertises as its bucket size.
RATE_LIMIT = 800


@dataclass(slots=True)
class Fault:
    kind: Literal["fail", "hang", "rate_limit"]
    status: int = 500
    body: dict[str, object] | str | None = None
    remaining: int | None = None  # None: until cleared
    reset_in: float = 1.0

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


class Faults:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._queues: dict[str, deque[Fault]] = {}
        self._latency: dict[str | None, float] = {}

    def add(self, endpoint: str, fault: Fault) -> None:
        check_endpoint(endpoint)
        if fault.remaining is not None and fault.remaining < 1:
            raise ValueError("times must be at least 1, or None for until cleared")
        with self._lock:
            self._queues.setdefault(endpoint, deque()).append(fault)

    def take(self, endpoint: str) -> Fault | None:
        """The fault that answers this request, if any, counting it used."""
        with self._lock:
            queue = self._queues.get(endpoint)
            if not queue:
                return None
            fault = queue[0]
            if fault.remaining is not None:
                fault.remaining -= 1
                if fault.remaining == 0:
                    queue.popleft()
            return fault

    def clear(self) -> None:
        with self._lock:
            self._queues.clear()

    def set_latency(self, seconds: float, endpoint: str | None = None) -> None:
        if endpoint is not None:
            check_endpoint(endpoint)
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
