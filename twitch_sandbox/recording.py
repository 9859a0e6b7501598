"""Every request the sandbox answered, so tests can assert on what the site sent."""

from __future__ import annotations

import threading
from collections import Counter, deque
from dataclasses import dataclass

# What tests ask about; "authorize_post" is the consent form being submitted.
RECORDED_ENDPOINTS = (
    "authorize",
    "authorize_post",
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
# Enough for any test; a long benchmark keeps only the latest requests while
# the counts stay exact.
MAX_RECORDED = 100_000


@dataclass(frozen=True)
class RecordedRequest:
    endpoint: str
    method: str
    path: str
    # Kept apart so a test can tell a secret sent in the URL from one sent in
    # the body.
    query: dict[str, str]
    form: dict[str, str]
    headers: dict[str, str]
    status: int  # 0: never answered (hung, or the client gave up first)
    at: float

    @property
    def grant_type(self) -> str | None:
        return self.form.get("grant_type", self.query.get("grant_type"))


class RequestLog:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        # Notified as each request arrives, for tests waiting on one.
        self._arrival = threading.Condition(self._lock)
        self._requests: deque[RecordedRequest] = deque(maxlen=MAX_RECORDED)
        self._counts: Counter[tuple[str, str | None]] = Counter()
        self._arrived: Counter[str] = Counter()

    def arrive(self, endpoint: str) -> None:
        """A request has come in; it is recorded once answered (or given up)."""
        with self._arrival:
            self._arrived[endpoint] += 1
            self._arrival.notify_all()

    def wait_for_arrival(self, endpoint: str, count: int, timeout: float) -> None:
        check_recorded_endpoint(endpoint)
        with self._arrival:
            if not self._arrival.wait_for(
                lambda: self._arrived[endpoint] >= count, timeout
            ):
                raise TimeoutError(
                    f"{self._arrived[endpoint]} of {count} {endpoint} request(s)"
                    f" arrived within {timeout} s"
                )

    def record(self, request: RecordedRequest) -> None:
        with self._lock:
            self._requests.append(request)
            self._counts[request.endpoint, request.grant_type] += 1

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._requests)

    def count(self, endpoint: str, *, grant_type: str | None = None) -> int:
        check_recorded_endpoint(endpoint)
        with self._lock:
            if grant_type is not None:
                return self._counts[endpoint, grant_type]
            return sum(n for (e, _), n in self._counts.items() if e == endpoint)

    def counts(self) -> dict[str, int]:
        with self._lock:
            totals = dict.fromkeys(RECORDED_ENDPOINTS, 0)
            for (endpoint, _), n in self._counts.items():
                totals[endpoint] += n
            return totals

    def reset(self) -> None:
        with self._lock:
            self._requests.clear()
            self._counts.clear()
            self._arrived.clear()


def check_recorded_endpoint(endpoint: str) -> None:
    if endpoint not in RECORDED_ENDPOINTS:
        raise ValueError(
            f"unknown endpoint {endpoint!r}; use one of {RECORDED_ENDPOINTS}"
        )
