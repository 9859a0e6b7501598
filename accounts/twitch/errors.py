"""What leaves the seam when Twitch does not do what was asked: one small family of
exceptions, whose texts never carry a credential."""

from __future__ import annotations

from typing import Literal


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


class DeviceCodeExpired(TwitchRejected):
    """A device code expired (or Twitch no longer accepts it) before anyone
    approved it: nothing was granted, and the person has to start again."""

    def __init__(self, message: str) -> None:
        super().__init__(message, status=400)


class DeviceAccessDenied(TwitchRejected):
    """The person at Twitch's activation page declined: nothing was granted."""

    def __init__(self, message: str) -> None:
        super().__init__(message, status=400)


IdTokenProblem = Literal[
    "missing",  # the token answer held none
    "malformed",  # not a JWT, or claims of the wrong shape
    "signature",  # not RS256, or the signature does not verify
    "unknown_key",  # signed by a key Twitch does not publish
    "expired",  # outside its lifetime (or issued in the future)
    "issuer",  # not issued by Twitch
    "audience",  # issued to another application
    "nonce",  # not the nonce of our authorize request
    "subject",  # its subject is not a Twitch user id
]


class InvalidIdToken(TwitchError):
    """Twitch's token answer held no ID token, or one that must not be believed.

    `reason` says which check failed, for logs and tests; the text never
    contains the token.
    """

    def __init__(self, message: str, *, reason: IdTokenProblem) -> None:
        super().__init__(message)
        self.reason = reason
