"""Twitch's rate limits: Helix token buckets, and id.twitch.tv's burst limit.

Helix, as Twitch's API guide documents it ("Rate limits", dev.twitch.tv/docs/api/
guide): a token bucket of 800 points, refilled continuously at 800 points a minute;
each request costs one point. The bucket belongs to the client ID for app calls (all
its app access tokens: the stricter reading) and to the client ID and user for user
calls (two tokens of one user share it). Every answer carries ``Ratelimit-Limit``
(the points added per minute, which is also the bucket's size),
``Ratelimit-Remaining`` and ``Ratelimit-Reset`` (Unix seconds when the bucket is
full again); an empty bucket answers 429 with the same headers. Tests may shrink the
bucket and the minute (``Limit``); the headers then speak of that bucket and that
period. The docs say nothing of answers no bucket pays for (a missing or dead token,
a Client-Id that does not match): those carry no headers here, the reading that
trusts a client least.

id.twitch.tv documents no limit, yet answers 429 to bursts: a validation for each
of some 120 users in a short time was enough (twurple/twurple#390), with an empty
body. Modelled as a bucket per client of ``DEFAULT_AUTH_BURST`` requests refilled
over ``DEFAULT_AUTH_PER_SECONDS``: bursts are cut, a steady pace is not. Answers
carry no rate-limit headers until the 429, which has ``Retry-After`` and
``Ratelimit-Reset`` (the two a client may meet), and no body.

Which request goes to which bucket is decided in app.py, beside the faults.

Times come from ``time.time()``, like the ledger's, so time-machine refills a
bucket as it expires a token.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Hashable
from dataclasses import dataclass
from typing import TypeGuard

from aiohttp import web

from .responses import helix_error

HELIX_ENDPOINTS = ("users", "eventsub_create", "eventsub_list", "eventsub_delete")
AUTH_ENDPOINTS = ("token", "validate", "revoke", "device")
# Twitch's documented default: 800 points, refilled at 800 a minute.
DEFAULT_HELIX_POINTS = 800
DEFAULT_HELIX_PER_SECONDS = 60.0
# Generous for one client, but below the burst twurple#390 met; a benchmark that
# measures the site rather than Twitch turns it off (--auth-rate-limit off).
DEFAULT_AUTH_BURST = 100
DEFAULT_AUTH_PER_SECONDS = 1.0


@dataclass(frozen=True)
class Limit:
    """A bucket's size and how long it takes to refill from empty."""

    points: int
    per_seconds: float

    @classmethod
    def checked(cls, points: object, per_seconds: object) -> Limit:
        """Both numbers checked: they may come from a JSON body as any value."""
        if not (_number(points) and points == int(points) and points >= 1):
            raise ValueError("points must be a whole number, at least 1")
        if not (_number(per_seconds) and per_seconds > 0):
            raise ValueError("per_seconds must be a number of seconds above 0")
        return cls(int(points), float(per_seconds))


@dataclass(frozen=True)
class Spent:
    """What one request found in its bucket."""

    allowed: bool
    limit: Limit
    remaining: int
    reset_at: float  # when the bucket is full again
    retry_at: float  # when it holds a point again

    def headers(self) -> dict[str, str]:
        return {
            "Ratelimit-Limit": str(self.limit.points),
            "Ratelimit-Remaining": str(self.remaining),
            # Rounded up: at this second the bucket is full.
            "Ratelimit-Reset": str(math.ceil(self.reset_at)),
        }


class _Bucket:
    __slots__ = ("points", "updated")

    def __init__(self, points: float, now: float) -> None:
        self.points = points
        self.updated = now


class Buckets:
    """Token buckets of one kind, one per key, all of the same ``Limit``."""

    def __init__(self, limit: Limit | None) -> None:
        self._lock = threading.Lock()
        self._default = limit
        self.limit = limit  # None: no limit
        self._buckets: dict[Hashable, _Bucket] = {}

    def configure(self, limit: Limit | None) -> None:
        """A new limit, every bucket full again."""
        with self._lock:
            self.limit = limit
            self._buckets.clear()

    def reset(self) -> None:
        self.configure(self._default)

    def spend(self, key: Hashable) -> Spent | None:
        """Take a point from ``key``'s bucket; None when there is no limit."""
        with self._lock:
            limit = self.limit
            if limit is None:
                return None
            now = time.time()
            rate = limit.points / limit.per_seconds
            bucket = self._buckets.get(key)
            if bucket is None:
                bucket = self._buckets[key] = _Bucket(limit.points, now)
            else:
                # A clock moved back (time-machine) refills nothing.
                elapsed = max(0.0, now - bucket.updated)
                bucket.points = min(limit.points, bucket.points + elapsed * rate)
                bucket.updated = now
            allowed = bucket.points >= 1
            if allowed:
                bucket.points -= 1
            return Spent(
                allowed,
                limit,
                remaining=math.floor(bucket.points),
                reset_at=now + (limit.points - bucket.points) / rate,
                retry_at=now + max(0.0, 1 - bucket.points) / rate,
            )


class RateLimits:
    """Both limits; ``reset()`` goes back to the ones the sandbox started with."""

    def __init__(self, *, helix: Limit, auth: Limit | None) -> None:
        self.helix = Buckets(helix)
        self.auth = Buckets(auth)

    def reset(self) -> None:
        self.helix.reset()
        self.auth.reset()


def _number(value: object) -> TypeGuard[float]:
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
    )


def too_many_requests(endpoint: str, spent: Spent) -> web.Response:
    if endpoint in HELIX_ENDPOINTS:
        response = helix_error(429, "Too Many Requests")
        response.headers.update(spent.headers())
        return response
    # Empty, as twurple#390 saw it: a client must not count on a JSON body here.
    # Retry-After: until the next request would pass; Ratelimit-Reset: until the
    # bucket is full, as on Helix.
    headers = {
        "Retry-After": str(max(1, math.ceil(spent.retry_at - time.time()))),
        "Ratelimit-Reset": str(math.ceil(spent.reset_at)),
    }
    return web.Response(status=429, headers=headers)
