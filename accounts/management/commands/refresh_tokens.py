"""Keep every Twitch token alive: refresh those about to expire, validate hourly.

Twitch user tokens expire after about four hours and Twitch requires apps to validate
the tokens they keep at least once an hour. Run this from cron every 10-15 minutes: a
token is validated once TOKEN_VALIDATE_AFTER (40 minutes by default) has passed since
its last validation, so no token goes more than an hour without one. Overlapping runs,
and runs on several machines, are safe: each token is handled by one run.

SIGTERM or SIGINT (a deploy, a cron timeout, Ctrl-C) stops it gracefully: no new
token is started, the calls already at Twitch finish (within the seam's timeout) and
what they bring is stored; a second signal stops it at once.

Exit status: 0 when every selected token was handled (a token that needs its user to
reconnect counts as handled), 1 when transient failures remain (they are retried on
the next run), 2 for bad arguments, 128 + the signal's number when stopped by one
(143 for SIGTERM, 130 for SIGINT).
"""

from __future__ import annotations

import json
import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import DatabaseError
from django.utils import timezone

from accounts import twitch
from accounts.models import TokenEvent, TwitchToken
from accounts.tokens import engine, replay, spool

# Tokens live hours; a year covers any real use and stays far from date overflow.
MAX_WITHIN = 366 * 24 * 60


class StopRequest(threading.Event):
    """Set by the first SIGTERM or SIGINT; `signum` says which."""

    signum = signal.SIGTERM


@contextmanager
def stop_on_signals() -> Iterator[StopRequest]:
    """While the block runs, SIGTERM and SIGINT ask the run to stop gracefully; a
    second one ends the process at once (the spool keeps what Twitch answered).
    Outside the main thread (tests) signals cannot be caught."""
    stop = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return
    caught = (signal.SIGTERM, signal.SIGINT)

    def ask_to_stop(signum: int, frame: object) -> None:
        if stop.is_set():
            # At once, as asked: what Twitch answered is in the spool already.
            os._exit(128 + signum)
        stop.signum = signal.Signals(signum)
        stop.set()

    previous = {signum: signal.signal(signum, ask_to_stop) for signum in caught}
    try:
        yield stop
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


class Command(BaseCommand):
    help = (
        "Refresh active Twitch tokens that expire soon and validate those not "
        "validated within TOKEN_VALIDATE_AFTER_MINUTES (run it every 10-15 "
        "minutes). Exit status: 0 all handled, 1 transient failures remain "
        "(retried next run), 2 bad arguments, 143/130 stopped by SIGTERM/SIGINT "
        "(what Twitch answered is stored)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--within",
            type=int,
            default=60,
            metavar="MINUTES",
            help="Refresh tokens that expire within this many minutes (default 60).",
        )
        parser.add_argument(
            "--all",
            action="store_true",
            help="Refresh every active token, whatever its expiry.",
        )
        parser.add_argument(
            "--user",
            action="append",
            default=[],
            metavar="USERNAME",
            help="Only this user's token (repeatable).",
        )
        duties = parser.add_mutually_exclusive_group()
        duties.add_argument(
            "--no-validate",
            action="store_true",
            help="Skip the hourly validation that Twitch requires.",
        )
        duties.add_argument(
            "--validate-only",
            action="store_true",
            help="Only validate (a token Twitch rejects is then refreshed).",
        )
        parser.add_argument(
            "--concurrency",
            type=int,
            default=20,
            help="How many requests to Twitch may be in flight at once (default 20).",
        )
        parser.add_argument(
            "--dry-run",
            action="store_true",
            help="Say what would be done; change nothing and call nobody.",
        )
        parser.add_argument(
            "--json",
            action="store_true",
            help="Print the summary as one JSON object.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if not 0 <= options["within"] <= MAX_WITHIN:
            raise CommandError(
                f"--within must be between 0 and {MAX_WITHIN} minutes (a year).",
                returncode=2,
            )
        if not 1 <= options["concurrency"] <= 500:
            raise CommandError("--concurrency must be between 1 and 500.", returncode=2)
        if options["all"] and options["validate_only"]:
            raise CommandError(
                "--all refreshes every token; --validate-only refreshes none. "
                "Choose one.",
                returncode=2,
            )
        plan = engine.Plan(
            refresh=not options["validate_only"],
            refresh_within=None
            if options["all"]
            else timedelta(minutes=options["within"]),
            validate=not options["no_validate"],
        )
        pks = engine.select_due(plan=plan, tokens=self._tokens(options["user"]))

        if options["dry_run"]:
            self._dry_run(
                plan, pks, as_json=options["json"], verbosity=options["verbosity"]
            )
            return

        progress = self._progress_bar(len(pks)) if self._interactive(options) else None
        try:
            with stop_on_signals() as stop:
                # Pairs a dead run left (and set-aside lines a key may read now) are
                # stored first, even when no token is due.
                twitch.run_sync(replay.areplay_spool, source=TokenEvent.Source.COMMAND)
                report = engine.maintain_tokens(
                    pks=pks,
                    plan=plan,
                    source=TokenEvent.Source.COMMAND,
                    concurrency=options["concurrency"],
                    progress=progress,
                    stop=stop,
                )
        except DatabaseError as error:
            raise CommandError(
                f"The database refused writes ({type(error).__name__}). Token pairs "
                "Twitch already issued are kept in TOKEN_SPOOL_DIR; the next run "
                "stores them before anything else.",
                returncode=1,
            ) from None
        if progress is not None:
            self.stdout.write("")
        if options["json"]:
            self.stdout.write(json.dumps(report.as_dict()))
        elif options["verbosity"] >= 1:
            style = self.style.SUCCESS if report.handled_all else self.style.WARNING
            self.stdout.write(style(report.summary()))
        if report.undecryptable:
            self.stderr.write(
                f"{report.undecryptable} token(s) cannot decrypt: check "
                "TOKEN_ENCRYPTION_KEYS (was a key removed before rotate_token_keys?)."
            )
        if report.stopped:
            name = signal.Signals(stop.signum).name
            self.stderr.write(
                f"Stopped by {name}: {report.left} token(s) left for the next run; "
                "every answer Twitch gave was stored."
            )
            raise CommandError(f"Stopped by {name}.", returncode=128 + stop.signum)
        if unreadable := spool.unreadable_count():
            self.stderr.write(
                f"{unreadable} token pair(s) in the spool cannot be decrypted: check "
                f"TOKEN_ENCRYPTION_KEYS. They are kept in {spool.directory()} "
                f"(*{spool.UNREADABLE_SUFFIX}) until a key reads them; delete those "
                "files only to give the pairs up."
            )
            if report.handled_all:
                raise CommandError(
                    "Spooled token pairs cannot be decrypted.", returncode=1
                )
        if not report.handled_all:
            failed = report.counts[engine.Outcome.FAILED] - report.undecryptable
            raise CommandError(
                f"{failed} token(s) could not be handled because Twitch failed; "
                "the next run retries them."
                if failed
                else "Some tokens cannot decrypt: check TOKEN_ENCRYPTION_KEYS.",
                returncode=1,
            )

    def _tokens(self, usernames: list[str]) -> Any:
        tokens = TwitchToken.objects.all()
        if not usernames:
            return tokens
        known = set(
            get_user_model()
            .objects.filter(username__in=usernames)
            .values_list("username", flat=True)
        )
        if unknown := sorted(set(usernames) - known):
            raise CommandError(f"No such user: {', '.join(unknown)}.", returncode=2)
        return tokens.filter(user__username__in=usernames)

    def _dry_run(
        self, plan: engine.Plan, pks: list[int], *, as_json: bool, verbosity: int
    ) -> None:
        now = timezone.now()
        tokens = TwitchToken.objects.filter(pk__in=pks).order_by("expires_at")
        to_refresh = to_validate = 0
        for token in tokens.iterator():
            refresh = plan.wants_refresh(token, now=now)
            validate = plan.wants_validation(token, now=now)
            to_refresh += refresh
            to_validate += validate
            if verbosity >= 2 and not as_json:
                duties = " and ".join(
                    duty
                    for duty, wanted in (("refresh", refresh), ("validate", validate))
                    if wanted
                )
                self.stdout.write(f"would {duties} {token}")
        if as_json:
            self.stdout.write(
                json.dumps(
                    {"dry_run": True, "refresh": to_refresh, "validate": to_validate}
                )
            )
        elif verbosity >= 1:
            self.stdout.write(
                f"dry run: would refresh {to_refresh}, validate {to_validate}"
            )

    def _interactive(self, options: dict[str, Any]) -> bool:
        return (
            not options["json"] and options["verbosity"] >= 1 and self.stdout.isatty()
        )

    def _progress_bar(self, total: int) -> Any:
        done = 0

        def advance(count: int) -> None:
            nonlocal done
            done += count
            width = 30
            filled = width * done // total if total else width
            bar = "#" * filled + "-" * (width - filled)
            self.stdout.write(f"\r[{bar}] {done}/{total}", ending="")
            self.stdout.flush()

        return advance
