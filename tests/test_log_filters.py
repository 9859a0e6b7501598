"""Access logs never keep the OAuth code or state from the callback's URL."""

from __future__ import annotations

import logging

from twitchauth_site.log_filters import RedactOAuthParameters


def test_the_callback_code_and_state_are_redacted_from_access_log_lines():
    record = logging.LogRecord(
        "uvicorn.access",
        logging.INFO,
        __file__,
        1,
        '%s - "%s %s HTTP/%s" %d',
        (
            "127.0.0.1:5000",
            "GET",
            "/twitch/callback/?code=SECRETCODE&scope=chat%3Aread&state=SECRETSTATE",
            "1.1",
            302,
        ),
        None,
    )

    RedactOAuthParameters().filter(record)

    line = record.getMessage()
    assert "SECRETCODE" not in line and "SECRETSTATE" not in line
    assert "code=[redacted]" in line and "scope=chat%3Aread" in line


def test_the_asgi_application_installs_the_filter_on_uvicorn_s_access_log():
    import twitchauth_site.asgi  # noqa: F401

    filters = logging.getLogger("uvicorn.access").filters
    assert any(isinstance(f, RedactOAuthParameters) for f in filters)
