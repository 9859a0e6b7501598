"""Manage the EventSub subscription that tells the site at once when a user
disconnects the app on Twitch (`user.authorization.revoke`).

    manage.py eventsub status       # every subscription of this application
    manage.py eventsub subscribe    # create ours, unless a live one exists
    manage.py eventsub subscribe --replace  # after changing TWITCH_EVENTSUB_SECRET
    manage.py eventsub unsubscribe  # delete ours

Twitch calls the webhook at TWITCH_EVENTSUB_CALLBACK_URL (HTTPS, port 443) to verify
it before the subscription is enabled. Exit status: 0 done, 1 Twitch failed or the
verification did not succeed, 2 bad arguments or EventSub not configured.
"""

from __future__ import annotations

import time
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from accounts.eventsub import subscriptions as eventsub

# How long `subscribe` waits for Twitch to verify the callback.
VERIFICATION_WAIT = 15.0  # seconds


class Command(BaseCommand):
    help = (
        "Manage the user.authorization.revoke EventSub subscription: status, "
        "subscribe (idempotent), unsubscribe. Exit status: 0 done, 1 Twitch failed "
        "or did not verify the callback, 2 bad arguments or EventSub not configured."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "action",
            choices=["status", "subscribe", "unsubscribe"],
            help="status: list subscriptions; subscribe: create ours unless a live "
            "one exists; unsubscribe: delete ours.",
        )
        parser.add_argument(
            "--replace",
            action="store_true",
            help="With subscribe: delete ours and subscribe again (after changing "
            "TWITCH_EVENTSUB_SECRET; Twitch never says which secret it signs with).",
        )

    def handle(self, *args: Any, action: str, **options: Any) -> None:
        if not eventsub.enabled():
            raise CommandError(
                "EventSub is off: set TWITCH_EVENTSUB_CALLBACK_URL and "
                "TWITCH_EVENTSUB_SECRET (see `manage.py check`).",
                returncode=2,
            )
        try:
            if action == "subscribe":
                self.subscribe(
                    verbosity=options["verbosity"], replace=options["replace"]
                )
            else:
                getattr(self, action)(verbosity=options["verbosity"])
        except eventsub.TwitchError as error:
            raise CommandError(f"Twitch failed: {error}", returncode=1) from None

    def status(self, *, verbosity: int) -> None:
        subscriptions = eventsub.run(eventsub.subscriptions)
        for subscription in subscriptions:
            callback = (subscription.get("transport") or {}).get("callback", "")
            self.stdout.write(
                f"{subscription.get('id')}  {subscription.get('type')}  "
                f"{subscription.get('status')}  {callback}"
            )
        self.stdout.write(f"{len(subscriptions)} subscription(s)")

    def subscribe(self, *, verbosity: int, replace: bool) -> None:
        subscription, created = eventsub.run(
            lambda: eventsub.subscribe(replace=replace)
        )
        deadline = time.monotonic() + VERIFICATION_WAIT
        while (
            subscription.get("status") == "webhook_callback_verification_pending"
            and time.monotonic() < deadline
        ):
            time.sleep(0.2)
            subscription = next(
                (
                    s
                    for s in eventsub.run(eventsub.subscriptions)
                    if s.get("id") == subscription.get("id")
                ),
                {"status": "gone"},
            )
        status = subscription.get("status")
        verb = "subscribed" if created else "already subscribed"
        if status != "enabled":
            raise CommandError(
                f"{verb}, but the subscription is {status}: Twitch could not verify "
                "TWITCH_EVENTSUB_CALLBACK_URL (is the site reachable there over "
                "HTTPS, with the same TWITCH_EVENTSUB_SECRET?).",
                returncode=1,
            )
        if verbosity >= 1:
            self.stdout.write(
                self.style.SUCCESS(f"{verb}: {subscription.get('id')} {status}")
            )

    def unsubscribe(self, *, verbosity: int) -> None:
        deleted = eventsub.run(eventsub.unsubscribe)
        if verbosity >= 1:
            self.stdout.write(self.style.SUCCESS(f"deleted {deleted} subscription(s)"))
