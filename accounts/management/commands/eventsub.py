"""Keep the site's EventSub subscriptions in step with what it wants, and handle
the messages the webhook kept.

    manage.py eventsub status       # Twitch's list, costs, what is missing and why
    manage.py eventsub subscribe    # create what is missing, delete what is not wanted
    manage.py eventsub subscribe --replace  # after changing TWITCH_EVENTSUB_SECRET
    manage.py eventsub unsubscribe  # delete this site's subscriptions
    manage.py eventsub process      # handle what is not handled yet (cron, each minute)

What is wanted: `user.authorization.revoke` for the application, and each type of
TWITCH_EVENTSUB_TYPES for every connected account that has granted its scopes.
Twitch calls the webhook at TWITCH_EVENTSUB_CALLBACK_URL (HTTPS, port 443) to
verify each new subscription before enabling it; `subscribe` waits for that.

Exit status: 0 done; 1 Twitch failed, refused a subscription or did not verify
the callback, a message was given up, or the database refused the spooled
messages; 2 bad arguments or EventSub not configured.
"""

from __future__ import annotations

import time
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import DatabaseError

from accounts import background
from accounts.eventsub import checks as eventsub_checks
from accounts.eventsub import inbox
from accounts.eventsub import subscriptions as eventsub

# How long `subscribe` waits for Twitch to verify the callback.
VERIFICATION_WAIT = 15.0  # seconds
_PENDING = ("webhook_callback_verification_pending",)


class Command(BaseCommand):
    help = (
        "EventSub: status, subscribe (idempotent: create what is wanted, delete "
        "what is not), unsubscribe, process (handle kept messages; cron). Exit "
        "status: 0 done, 1 Twitch failed, refused or did not verify, a message was "
        "given up or the database refused the spool; 2 bad arguments or EventSub "
        "not configured."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "action",
            choices=["status", "subscribe", "unsubscribe", "process"],
            help="status: list subscriptions, costs and what is missing; subscribe: "
            "make Twitch's list match what is wanted; unsubscribe: delete ours; "
            "process: handle messages not handled yet.",
        )
        parser.add_argument(
            "--replace",
            action="store_true",
            help="With subscribe: delete ours and subscribe again (after changing "
            "TWITCH_EVENTSUB_SECRET; Twitch never says which secret it signs with).",
        )
        parser.add_argument(
            "--limit",
            type=int,
            default=None,
            help="With process: handle at most this many messages.",
        )

    def handle(self, *args: Any, action: str, **options: Any) -> None:
        if not eventsub.enabled():
            raise CommandError(
                "EventSub is off: set TWITCH_EVENTSUB_CALLBACK_URL and "
                "TWITCH_EVENTSUB_SECRET (see `manage.py check`).",
                returncode=2,
            )
        if options["replace"] and action != "subscribe":
            raise CommandError("--replace goes with subscribe only.", returncode=2)
        if options["limit"] is not None and action != "process":
            raise CommandError("--limit goes with process only.", returncode=2)
        verbosity = options["verbosity"]
        try:
            if action == "subscribe":
                self.subscribe(verbosity=verbosity, replace=options["replace"])
            elif action == "process":
                self.process(verbosity=verbosity, limit=options["limit"])
            else:
                getattr(self, action)(verbosity=verbosity)
        except eventsub.TwitchError as error:
            raise CommandError(f"Twitch failed: {error}", returncode=1) from None

    def status(self, *, verbosity: int) -> None:
        listed, wanted, missing = eventsub.run(eventsub.status)
        for subscription in listed.data:
            mark = "" if eventsub.is_ours(subscription) else "  (another callback)"
            self.stdout.write(
                f"{subscription.get('id')}  {subscription.get('type')} "
                f"v{subscription.get('version')}  {subscription.get('status')}  "
                f"cost {subscription.get('cost', 0)}  "
                f"{_condition(subscription.get('condition'))}{mark}"
            )
        for subscription, next_step in eventsub.astray(listed.data, wanted):
            self.stdout.write(
                self.style.WARNING(
                    f"{subscription.get('type')} v{subscription.get('version')} "
                    f"{_condition(subscription.get('condition'))}: {next_step}"
                )
            )
        absent = eventsub.absent(listed.data, wanted)
        for one in absent:
            self.stdout.write(
                self.style.WARNING(
                    f"absent on Twitch: {one.type.key} for {one.who}: created by "
                    "the next subscribe"
                )
            )
        for one in missing:
            self.stdout.write(
                self.style.WARNING(
                    f"missing: {one.type.key} for {one.who}: {one.reason}"
                )
            )
        for message in eventsub_checks.check_eventsub_versions(databases=["default"]):
            self.stdout.write(self.style.ERROR(f"{message.msg} ({message.id})"))
        self.stdout.write(
            f"{len(listed.data)} subscription(s), cost {listed.total_cost} of "
            f"max_total_cost {listed.max_total_cost}; {len(wanted)} wanted, "
            f"{len(absent)} absent, {len(missing)} missing"
        )

    def subscribe(self, *, verbosity: int, replace: bool) -> None:
        outcome = eventsub.run(lambda: eventsub.reconcile(replace=replace))
        created = {s["id"]: s for s in outcome.created}
        deadline = time.monotonic() + VERIFICATION_WAIT
        while (
            any(s.get("status") in _PENDING for s in created.values())
            and time.monotonic() < deadline
        ):
            time.sleep(0.2)
            listed = {s.get("id"): s for s in eventsub.run(eventsub.listing).data}
            created = {i: listed.get(i, {"id": i, "status": "gone"}) for i in created}
        unverified = [s for s in created.values() if s.get("status") != "enabled"]
        if verbosity >= 2:
            for subscription in created.values():
                self.stdout.write(
                    f"created {subscription.get('id')} {subscription.get('type')} "
                    f"{subscription.get('status')}"
                )
        for one in outcome.missing:
            if verbosity >= 1:
                self.stdout.write(
                    self.style.WARNING(
                        f"missing: {one.type.key} for {one.who}: {one.reason}"
                    )
                )
        for one, reason in outcome.refused:
            self.stderr.write(f"refused: {one.type.key} for {one.who}: {reason}")
        summary = (
            f"{len(created)} created, {len(outcome.kept)} already there, "
            f"{len(outcome.deleted)} deleted, {len(outcome.missing)} missing"
        )
        if unverified:
            statuses = ", ".join(sorted({str(s.get("status")) for s in unverified}))
            raise CommandError(
                f"{summary}; but {len(unverified)} subscription(s) are {statuses}: "
                "Twitch could not verify TWITCH_EVENTSUB_CALLBACK_URL (is the site "
                "reachable there over HTTPS, with the same TWITCH_EVENTSUB_SECRET?).",
                returncode=1,
            )
        if outcome.refused:
            raise CommandError(
                f"{summary}; Twitch refused {len(outcome.refused)}", returncode=1
            )
        if verbosity >= 1:
            self.stdout.write(self.style.SUCCESS(summary))

    def unsubscribe(self, *, verbosity: int) -> None:
        deleted = eventsub.run(eventsub.unsubscribe)
        if verbosity >= 1:
            self.stdout.write(self.style.SUCCESS(f"deleted {deleted} subscription(s)"))

    def process(self, *, verbosity: int, limit: int | None) -> None:
        try:
            imported = inbox.import_spool()
        except DatabaseError as error:
            raise CommandError(
                f"0 handled; the database refused the spooled messages "
                f"({type(error).__name__}), {inbox.spooled_count()} left in the "
                "spool for the next run",
                returncode=1,
            ) from None

        async def handle_due() -> dict[str, int]:
            counts = await inbox.handle_due(limit=limit)
            await background.finish_background_work()  # what handling started
            return counts

        counts = eventsub.run(handle_due)
        pruned = inbox.prune()
        summary = (
            f"{counts['handled']} handled, {counts['retrying']} to retry, "
            f"{counts['failed']} given up; {imported} from the spool, "
            f"{pruned} old pruned"
        )
        if counts["failed"]:
            raise CommandError(summary, returncode=1)
        if verbosity >= 1:
            self.stdout.write(self.style.SUCCESS(summary))


def _condition(condition: object) -> str:
    if not isinstance(condition, dict):
        return ""
    return " ".join(f"{k}={v}" for k, v in sorted(condition.items()))
