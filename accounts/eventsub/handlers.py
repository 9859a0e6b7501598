"""How site code hears EventSub events: register a handler for a type.

    from accounts.eventsub import Notification, on_event

    @on_event("stream.online")
    async def announce(notification: Notification) -> None:
        if notification.connection is not None:
            ...  # notification.event["started_at"], notification.connection.user

Register in your AppConfig.ready(), and add the type to TWITCH_EVENTSUB_TYPES.
A handler runs after Twitch has been answered. One that raises is tried again
later, with backoff, by `manage.py eventsub process` (handlers of the same
message that succeeded are not run again); after MAX_ATTEMPTS the message is
marked failed in the admin. A sync handler runs in one transaction with the
message's record, so its database writes take effect exactly once; an async one
may run again if the process dies while it runs, or if it outlives the worker's
claim on the message (it is cancelled 15 s before, and retried): make it safe to
repeat. A handler is known by its module and qualified name: two different
functions of the same name for one type are refused (`ValueError`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from accounts.models import TwitchToken


@dataclass(frozen=True)
class Notification:
    """One event Twitch sent, as handlers see it."""

    type: str
    version: str
    event: dict[str, Any]
    condition: dict[str, Any]
    subscription_id: str
    message_id: str
    received_at: datetime
    # The connection the subscription was made for (the catalogue's first party:
    # the broadcaster's main connection for stream.online); None when no live
    # connection of the site matches any more.
    connection: TwitchToken | None = field(default=None, repr=False)


Handler = Callable[[Notification], Awaitable[None] | None]

_registry: dict[str, list[tuple[str, Handler]]] = {}


def on_event(event_type: str) -> Callable[[Handler], Handler]:
    """Register the decorated function (sync or async, taking a `Notification`)
    for notifications of `event_type`."""

    def register(handler: Handler) -> Handler:
        # The name is what a message notes once the handler is done with it.
        name = f"{handler.__module__}.{handler.__qualname__}"
        handlers = _registry.setdefault(event_type, [])
        for existing_name, existing in handlers:
            if existing_name != name:
                continue
            if existing is not handler:
                raise ValueError(
                    f"another handler named {name} is already registered for "
                    f"{event_type}: give each its own name"
                )
            return handler  # registered twice (ready() run again): once is enough
        handlers.append((name, handler))
        return handler

    return register


def forget(handler: Handler) -> None:
    """Unregister a handler (tests)."""
    for handlers in _registry.values():
        handlers[:] = [(n, h) for n, h in handlers if h is not handler]


def handlers_for(event_type: str) -> list[tuple[str, Handler]]:
    return list(_registry.get(event_type, ()))
