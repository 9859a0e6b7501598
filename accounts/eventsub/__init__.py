"""EventSub: the webhook (webhook.py, views.py), its inbox (inbox.py), the
built-in handling (builtin.py), the subscriptions the site wants (catalogue.py,
subscriptions.py), and the way site code hears events (handlers.py)."""

from accounts.eventsub.handlers import Notification, on_event

__all__ = ["Notification", "on_event"]
