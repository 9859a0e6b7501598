"""Keep OAuth credentials out of access logs."""

from __future__ import annotations

import logging
import re

# Twitch sends the authorization code (and our state) to the callback in the query
# string; the code is single-use, but a credential all the same.
_CREDENTIAL_PARAMETER = re.compile(r"(?<=[?&])(code|state)=[^&\s\"]*")


def redact(text: str) -> str:
    return _CREDENTIAL_PARAMETER.sub(r"\1=[redacted]", text)


class RedactOAuthParameters(logging.Filter):
    """Blank out `code=` and `state=` values in a log record's arguments."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(
                redact(arg) if isinstance(arg, str) else arg for arg in record.args
            )
        return True
