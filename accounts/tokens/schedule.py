"""When a token needs work, and the lease that makes one run its only refresher.

Twitch rotates the refresh token on every refresh and may end the whole grant when a
replaced one is presented again, so a token is claimed with a lease before Twitch is
asked (`accounts.tokens.store.claim`). Which tokens are due is written once, on the
model (`TwitchTokenQuerySet.due_for_refresh` and friends); a `Plan` says which of
those rules a run applies.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.conf import settings
from django.utils import timezone

from accounts.models import TwitchToken, TwitchTokenQuerySet

# While a run holds a token's lease nobody else refreshes it. A token's work is
# started only while at least LEASE_NEEDED remains, which is more than its worst
# case (three calls, three attempts each at 8 s, waits for rate limits), and its
# result is written within FLUSH_EVERY of Twitch's answer (accounts.tokens.engine):
# a lease never lapses with a rotated refresh token still in memory.
LEASE = timedelta(minutes=10)
LEASE_NEEDED = timedelta(minutes=5)
# A lease that lapsed (its run died or hung) may hide a pair in that machine's
# spool; another machine waits this much longer before claiming the token, time
# for that machine's next cron run to store the pair.
LEASE_GRACE = timedelta(minutes=20)
# The lease of a token whose new pair could not be stored except in the spool.
PINNED = timedelta(days=1)


def validation_due_after() -> timedelta:
    """How long after its last validation a token is due again: Twitch requires
    every kept token to be validated at least hourly (settings.TOKEN_VALIDATE_AFTER,
    where the reasoning behind its default lives)."""
    return settings.TOKEN_VALIDATE_AFTER


@dataclass(frozen=True)
class Plan:
    """What to do to each selected token.

    `refresh_within`: refresh tokens expiring within it; `None` refreshes all.
    `validate_after`: validate tokens last validated this long ago (by default
    `validation_due_after()`); `None` validates all. `refresh` / `validate` switch
    either duty off.
    """

    refresh: bool = True
    refresh_within: timedelta | None = timedelta(minutes=60)
    validate: bool = True
    validate_after: timedelta | None = field(default_factory=validation_due_after)

    def due(self, tokens: TwitchTokenQuerySet, *, now: datetime) -> TwitchTokenQuerySet:
        selected = tokens.none()
        if self.refresh:
            selected |= tokens.due_for_refresh(within=self.refresh_within, now=now)
        if self.validate:
            selected |= tokens.due_for_validation(after=self.validate_after, now=now)
        return selected

    def wants_refresh(self, token: TwitchToken, *, now: datetime) -> bool:
        return self.refresh and token.is_due_for_refresh(
            within=self.refresh_within, now=now
        )

    def wants_validation(self, token: TwitchToken, *, now: datetime) -> bool:
        return self.validate and token.is_due_for_validation(
            after=self.validate_after, now=now
        )


def select_due(*, plan: Plan, tokens: TwitchTokenQuerySet | None = None) -> list[int]:
    """Primary keys of the active tokens `plan` has work for, soonest expiry first."""
    tokens = TwitchToken.objects.all() if tokens is None else tokens
    return list(
        plan.due(tokens.active(), now=timezone.now())
        .order_by("expires_at", "pk")
        .values_list("pk", flat=True)
    )
