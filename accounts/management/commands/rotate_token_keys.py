"""Re-encrypt every stored Twitch token with the first key in TOKEN_ENCRYPTION_KEYS.

Key rotation: put the new key first in TOKEN_ENCRYPTION_KEYS (keep the old ones after
it), deploy, run this command, then remove the old keys.
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand
from django.db import transaction

from accounts.models import TwitchToken


class Command(BaseCommand):
    help = (
        "Re-encrypt every stored Twitch token with the first TOKEN_ENCRYPTION_KEYS "
        "key. Safe to run while the site and refresh_tokens run."
    )

    def handle(self, *args: Any, **options: Any) -> None:
        pks = list(
            TwitchToken.objects.exclude(access_token="", refresh_token="")
            .order_by("pk")
            .values_list("pk", flat=True)
        )
        unreadable = 0
        for pk in pks:
            # Row by row under a lock: re-saving a copy read before a concurrent
            # refresh stored a new refresh token would throw that new token away.
            with transaction.atomic():
                token = TwitchToken.objects.select_for_update().filter(pk=pk).first()
                if token is None:
                    continue
                if token.is_undecryptable:
                    unreadable += 1  # saving would keep its ciphertext as it is
                    continue
                token.save(update_fields=["access_token", "refresh_token"])
        self.stdout.write(
            self.style.SUCCESS(
                f"re-encrypted {len(pks) - unreadable} token(s) with the first key"
            )
        )
        if unreadable:
            self.stderr.write(
                self.style.WARNING(
                    f"{unreadable} token(s) could not be decrypted with any key and "
                    "were left as they are: restore the key they were written with."
                )
            )
