"""Re-encrypt every stored Twitch token with the first key in TOKEN_ENCRYPTION_KEYS.

Key rotation: put the new key first in TOKEN_ENCRYPTION_KEYS (keep the old ones after
it), deploy, run this command, then remove the old keys. It exits 1 while any token
cannot be decrypted with the configured keys: removing an old key then would lose it.
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import transaction

from accounts.models import TwitchToken


class Command(BaseCommand):
    help = (
        "Re-encrypt every stored Twitch token with the first TOKEN_ENCRYPTION_KEYS "
        "key. Safe to run while the site and refresh_tokens run. Exit status: 0 all "
        "re-encrypted, 1 some tokens cannot be decrypted with any configured key."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--dry-run",
            action="store_true",
            help="Count what would be re-encrypted and what cannot be decrypted; "
            "change nothing.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        dry_run = options["dry_run"]
        pks = list(
            TwitchToken.objects.exclude(access_token="", refresh_token="")
            .order_by("pk")
            .values_list("pk", flat=True)
        )
        reencrypted = unreadable = 0
        for pk in pks:
            # Row by row under a lock: re-saving a copy read before a concurrent
            # refresh stored a new refresh token would throw that new token away.
            with transaction.atomic():
                token = TwitchToken.objects.select_for_update().filter(pk=pk).first()
                if token is None:
                    continue  # deleted meanwhile
                if token.is_undecryptable:
                    unreadable += 1  # saving would keep its ciphertext as it is
                    continue
                if not dry_run:
                    token.save(update_fields=["access_token", "refresh_token"])
                reencrypted += 1
        if options["verbosity"] >= 1:
            verb = "would re-encrypt" if dry_run else "re-encrypted"
            self.stdout.write(
                self.style.SUCCESS(f"{verb} {reencrypted} token(s) with the first key")
            )
        if unreadable:
            raise CommandError(
                f"{unreadable} token(s) could not be decrypted with any key and were "
                "left as they are: restore the key they were written with before "
                "removing any.",
                returncode=1,
            )
