"""How one token's work went, as small typed values.

A token's life in a run has two verdicts, each decided in one place: what the calls
to Twitch concluded (`Findings.verdict`, by `accounts.tokens.asking`), and what the
database made of it (`Stored`, by `accounts.tokens.store`). `outcome()` combines the
two into what the run counts; the audit trail records each duty's `Attempt`.
"""

from __future__ import annotations

import enum
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime

from accounts import twitch
from accounts.models import TokenEvent, TwitchToken

# How one duty (a refresh, a validation) went, in the audit trail's own words.
Attempt = TokenEvent.Outcome


class Verdict(enum.Enum):
    """What the calls to Twitch concluded about one token."""

    NOTHING_DONE = "nothing done"  # nothing due, or its lease ran short in the queue
    REFRESHED = "refreshed"  # a new pair, its access token usable
    # A new refresh token but no usable access token: the refresh token is kept
    # (the old one may be spent) and refreshed again by the next run.
    REFRESHED_WITHOUT_ACCESS = "refreshed without a usable access token"
    VALIDATED = "validated"
    # Twitch calls the refresh token invalid: the user must reconnect.
    DEAD_GRANT = "dead grant"
    # No refresh token (Twitch sent none), and the access token is over.
    CANNOT_RENEW = "cannot be renewed"
    # Twitch calls it invalid after an attempt whose answer was lost, which may
    # have rotated it: not proof that the user must reconnect.
    MAYBE_DEAD_GRANT = "maybe dead grant"
    # Validation calls the access token invalid; refreshing is left to the next run.
    ACCESS_REJECTED = "access token rejected"
    # Twitch unavailable, the token undecryptable, or an error here: try again.
    UNFINISHED = "unfinished"


@dataclass(frozen=True)
class Findings:
    """What Twitch handed out or said about one token, and how each duty went."""

    verdict: Verdict = Verdict.NOTHING_DONE
    refresh: Attempt | None = None  # None: not attempted
    validation: Attempt | None = None
    grant: twitch.TokenGrant | None = None
    # What validation said about the token being stored.
    info: twitch.TokenInfo | None = None
    error: str = ""


@dataclass(frozen=True)
class Result:
    """One claimed token's findings, waiting to be stored under its lease."""

    token: TwitchToken
    lease: datetime
    findings: Findings


class Stored(enum.Enum):
    """What the database made of a result."""

    STORED = "stored"
    # Twitch rejected our refresh token, but the row holds a newer one by now (site
    # code or a replay stored it): stored without blaming the connection.
    SUPERSEDED = "superseded"
    GONE = "gone"  # revoked or re-claimed meanwhile: not ours to write any more
    # Could not be written; a grant stays in the spool and pins its token.
    FAILED = "failed"


class Outcome(enum.Enum):
    """What became of one token in a run, as the summary counts it."""

    REFRESHED = "refreshed"
    VALIDATED = "validated"
    NEEDS_RECONNECT = "needs reconnect"
    FAILED = "failed"
    SKIPPED = "skipped"


VERDICT_OUTCOMES = {
    Verdict.NOTHING_DONE: Outcome.SKIPPED,
    Verdict.REFRESHED: Outcome.REFRESHED,
    Verdict.REFRESHED_WITHOUT_ACCESS: Outcome.FAILED,
    Verdict.VALIDATED: Outcome.VALIDATED,
    Verdict.DEAD_GRANT: Outcome.NEEDS_RECONNECT,
    Verdict.CANNOT_RENEW: Outcome.NEEDS_RECONNECT,
    Verdict.MAYBE_DEAD_GRANT: Outcome.FAILED,
    Verdict.ACCESS_REJECTED: Outcome.FAILED,
    Verdict.UNFINISHED: Outcome.FAILED,
}


def outcome(findings: Findings, stored: Stored) -> Outcome:
    if stored in (Stored.GONE, Stored.SUPERSEDED):
        return Outcome.SKIPPED
    if stored is Stored.FAILED:
        return Outcome.FAILED
    return VERDICT_OUTCOMES[findings.verdict]


@dataclass
class Report:
    counts: Counter[Outcome] = field(default_factory=Counter)
    seconds: float = 0.0
    # Tokens whose stored secret no configured key decrypts.
    undecryptable: int = 0
    # Tokens not started within the run's budget: the next run takes them.
    left: int = 0
    # Asked to stop (a signal): the tokens not started are counted as left.
    stopped: bool = False
    # 429s Twitch answered, and the seconds the run paused for them.
    rate_limited: int = 0
    rate_limit_wait: float = 0.0
    # The seconds to wait Twitch named last, if it named any.
    retry_after: float | None = None

    @property
    def handled_all(self) -> bool:
        return not self.counts[Outcome.FAILED]

    def summary(self) -> str:
        left = f", left {self.left}" if self.left else ""
        stopped = "; stopped before the end" if self.stopped else ""
        if self.rate_limited:
            times = "once" if self.rate_limited == 1 else f"{self.rate_limited} times"
            stopped += (
                f"; rate limited by Twitch {times}, waited {self.rate_limit_wait:.1f} s"
            )
        return (
            f"refreshed {self.counts[Outcome.REFRESHED]}, "
            f"validated {self.counts[Outcome.VALIDATED]}, "
            f"needs reconnect {self.counts[Outcome.NEEDS_RECONNECT]}, "
            f"failed {self.counts[Outcome.FAILED]}, "
            f"skipped {self.counts[Outcome.SKIPPED]}{left} in {self.seconds:.1f} s"
            f"{stopped}"
        )

    def as_dict(self) -> dict[str, float | int]:
        data: dict[str, float | int] = {
            outcome.name.lower(): self.counts[outcome] for outcome in Outcome
        }
        data["left"] = self.left
        data["stopped"] = self.stopped
        data["seconds"] = round(self.seconds, 3)
        data["rate_limited"] = self.rate_limited
        data["rate_limit_wait"] = round(self.rate_limit_wait, 3)
        return data
