from __future__ import annotations

from django.apps import AppConfig


class AccountsConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "accounts"
    verbose_name = "Twitch connections"

    def ready(self) -> None:
        from accounts import (
            checks,  # noqa: F401  (registers the system checks)
            signals,
        )
        from accounts.eventsub import (
            checks as eventsub_checks,  # noqa: F401  (registers EventSub's checks)
        )
        from accounts.eventsub import subscriptions

        # EventSub subscriptions follow connections (after the answer).
        signals.token_connected.connect(subscriptions.connected)
        signals.token_revoked.connect(subscriptions.revoked)
