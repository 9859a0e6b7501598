"""Asking Twitch about one claimed token: refresh it, validate it, or both, as the
run's plan says, and conclude (`Findings.verdict`).

A pair Twitch hands out goes to `keep` the moment it arrives, before anything else is
awaited: Twitch has most likely retired the old refresh token by then.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from django.utils import timezone
from django.views.decorators.debug import sensitive_variables

from accounts import twitch
from accounts.models import TwitchToken
from accounts.tokens.results import Attempt, Findings, Verdict
from accounts.tokens.schedule import LEASE_NEEDED, Plan

logger = logging.getLogger(__name__)

T = TypeVar("T")

UNDECRYPTABLE = "The stored token cannot be decrypted: check TOKEN_ENCRYPTION_KEYS."
CANNOT_RENEW = (
    "Twitch sent no refresh token with this access token, which has now expired or "
    "been refused: the user must reconnect."
)


@sensitive_variables()
async def ask_twitch(
    token: TwitchToken,
    *,
    plan: Plan,
    attempts: int,
    keep: Callable[[twitch.TokenGrant], None],
    refresh_before: float | None = None,
    stopping: Callable[[], bool] | None = None,
    rate_limited: Callable[[twitch.TwitchRateLimited], None] | None = None,
    deadline: float | None = None,
) -> Findings:
    """Do what `plan` wants of one claimed token. A refresh that validation calls
    for is left to the next run once `refresh_before` (time.monotonic) has passed;
    once `stopping()` says so, a failed call is not tried again; each 429 Twitch
    answers is told to `rate_limited`. Never raises: one token's surprise must not
    cost the others their results. A token that met only 429s is UNFINISHED: Twitch
    did nothing, so its refresh token is as good as before."""
    assert token.claimed_until is not None
    now = timezone.now()
    if token.claimed_until - now < LEASE_NEEDED:
        return Findings()  # waited too long in the queue; the next run takes it
    wants_refresh = plan.wants_refresh(token, now=now)
    wants_validation = plan.wants_validation(token, now=now)
    if token.is_undecryptable:
        # We cannot even ask Twitch: say so on the duty that was due.
        if wants_refresh:
            return Findings(
                Verdict.UNFINISHED, refresh=Attempt.UNDECRYPTABLE, error=UNDECRYPTABLE
            )
        return Findings(
            Verdict.UNFINISHED, validation=Attempt.UNDECRYPTABLE, error=UNDECRYPTABLE
        )

    if not token.refresh_token:
        # Twitch sent no refresh token with the access token we hold: nothing to
        # refresh with. It is used while it lasts, and validating it says whether
        # it still does (rejected: the connection cannot be renewed).
        wants_validation = wants_validation or wants_refresh
        wants_refresh = False

    async def retried(call: Callable[[], Awaitable[T]]) -> T:
        """`call` with the run's retries: its attempts, its stop and its pace."""
        return await twitch.with_retries(
            call,
            attempts=attempts,
            stopping=stopping,
            rate_limited=rate_limited,
            deadline=deadline,
        )

    refresh: Attempt | None = None
    validation: Attempt | None = None
    grant: twitch.TokenGrant | None = None
    info: twitch.TokenInfo | None = None
    error = ""
    try:
        # 1. Validation alone: the token as stored.
        if wants_validation and not wants_refresh:
            try:
                info = await retried(lambda: twitch.validate(token.access_token))
                return Findings(
                    Verdict.VALIDATED, validation=Attempt.SUCCEEDED, info=info
                )
            except twitch.InvalidCredential as rejected:
                # Twitch answered, so this counts as the hourly validation.
                validation = Attempt.REJECTED
                if not token.refresh_token:
                    return Findings(
                        Verdict.CANNOT_RENEW, validation=validation, error=CANNOT_RENEW
                    )
                out_of_time = (
                    refresh_before is not None and time.monotonic() > refresh_before
                )
                if out_of_time or (stopping is not None and stopping()):
                    return Findings(
                        Verdict.ACCESS_REJECTED,
                        validation=validation,
                        error="Twitch says the access token is invalid; the next "
                        "run refreshes it.",
                    )
                # An invalid access token is what refreshing is for.
                error = str(rejected)
            except twitch.TwitchError as unavailable:
                return Findings(
                    Verdict.UNFINISHED,
                    validation=Attempt.UNAVAILABLE,
                    error=str(unavailable),
                )
        elif not wants_refresh:
            return Findings()

        # 2. The refresh.
        try:
            grant = await retried(lambda: twitch.refresh(token.refresh_token))
        except twitch.InvalidCredential as rejected:
            verdict = (
                Verdict.MAYBE_DEAD_GRANT
                if rejected.after_unanswered_attempt
                else Verdict.DEAD_GRANT
            )
            return Findings(
                verdict,
                refresh=Attempt.REJECTED,
                validation=validation,
                error=str(rejected),
            )
        except twitch.TwitchError as unavailable:
            return Findings(
                Verdict.UNFINISHED,
                refresh=Attempt.UNAVAILABLE,
                validation=validation,
                error=str(unavailable),
            )
        refresh = Attempt.SUCCEEDED
        keep(grant)
        if not grant.access_token:
            # Only a refresh token to show for it (twitch.refresh): the newest Twitch
            # handed out, kept, due at once, and refreshed again by the next run.
            return Findings(
                Verdict.REFRESHED_WITHOUT_ACCESS,
                refresh=refresh,
                validation=validation,
                grant=grant,
                error="Twitch's refresh answer held no usable access token; the "
                "next run refreshes again.",
            )

        # 3. What the answer left out, and the validation that was due.
        if grant.expires_in is None or grant.scopes is None:
            # Twitch left the lifetime out or sent nonsense there or in the scopes:
            # validating the new access token tells them, and that Twitch really
            # issued the token. A pair Twitch itself calls invalid is not stored:
            # storing it would replace a refresh token that may well still work.
            try:
                info = await retried(lambda: twitch.validate(grant.access_token))
                validation = Attempt.SUCCEEDED
            except twitch.InvalidCredential:
                return Findings(
                    Verdict.UNFINISHED,
                    refresh=Attempt.UNAVAILABLE,
                    validation=validation,
                    error="Twitch's refresh answer held no usable token; the stored "
                    "one is kept.",
                )
            except twitch.TwitchError:
                pass  # kept, with an unknown expiry: the next run looks again
        if wants_validation and validation is None:
            try:
                info = await retried(lambda: twitch.validate(grant.access_token))
                validation = Attempt.SUCCEEDED
            except twitch.InvalidCredential:
                return Findings(
                    # With no refresh token either, nothing is left to renew with.
                    Verdict.REFRESHED_WITHOUT_ACCESS
                    if grant.refresh_token
                    else Verdict.CANNOT_RENEW,
                    refresh=refresh,
                    validation=Attempt.REJECTED,
                    grant=grant,
                    error="Twitch rejected the access token it just issued.",
                )
            except twitch.TwitchError:
                validation = Attempt.UNAVAILABLE
        return Findings(
            Verdict.REFRESHED,
            refresh=refresh,
            validation=validation,
            grant=grant,
            info=info,
            error=error,
        )
    except Exception:
        logger.exception("unexpected failure while maintaining token %s", token.pk)
        error = "Unexpected error; see the logs."
        if grant is not None and refresh is Attempt.SUCCEEDED:
            # The pair Twitch handed out is kept whatever happened after.
            verdict = (
                Verdict.REFRESHED
                if grant.access_token
                else Verdict.REFRESHED_WITHOUT_ACCESS
            )
            return Findings(
                verdict,
                refresh=refresh,
                validation=Attempt.ERROR,
                grant=grant,
                info=info,
                error=error,
            )
        if wants_refresh and refresh is None:
            return Findings(
                Verdict.UNFINISHED,
                refresh=Attempt.ERROR,
                validation=validation,
                error=error,
            )
        return Findings(
            Verdict.UNFINISHED, refresh=refresh, validation=Attempt.ERROR, error=error
        )
