"""What leaves the seam when Twitch does not do what was asked: one small family of
exceptions, whose texts never carry a credential."""

from __future__ import annotations


class TwitchError(Exception):
    """Twitch did not do what was asked. The text never contains a credential."""


class TwitchUnavailable(TwitchError):
    """Twitch could not be reached, timed out, failed (5xx) or rate limited us.

    Nothing is known about the credential: keep it and try again later.
    """

    def __init__(
        self,
        message: str,
        *,
        retry_after: float | None = None,
        rate_limited: bool = False,
        retryable: bool = True,
    ) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        # A 429 means Twitch did nothing; any other failure leaves it unknown
        # whether Twitch acted on the request before its answer was lost.
        self.rate_limited = rate_limited
        # False when asking again could do harm: Twitch may have rotated the
        # refresh token the request presented (see `oauth.refresh`).
        self.retryable = retryable


class TwitchRateLimited(TwitchUnavailable):
    """Twitch rate limited us (429): it did nothing with the request.

    `retry_after`: seconds until Twitch says its bucket refills (None when it did
    not say). Raised within the seam's timeout rather than waiting longer.
    """

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message, retry_after=retry_after, rate_limited=True)


class TwitchRejected(TwitchError):
    """Twitch answered the request with a refusal (4xx)."""

    def __init__(self, message: str, *, status: int) -> None:
        super().__init__(message)
        self.status = status


class InvalidCredential(TwitchRejected):
    """Twitch says the code or token itself is no good (used, expired, revoked)."""

    # Set by with_retries: an earlier attempt of the same call may have been acted
    # on (a refresh token rotated) without its answer reaching us.
    after_unanswered_attempt = False
