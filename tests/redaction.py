"""Failure reports without credentials: a failing assertion prints its operands,
and in these tests they are often tokens the sandbox issued (or a captured log
line that should never have held one)."""

from __future__ import annotations

import re

import pytest

# The sandbox's tokens, shaped like Twitch's: 30 hex digits for access, 50 for
# refresh (twitch_sandbox/ledger.py); and as pytest shortens long operands, its
# first and last dozen digits around "...".
SANDBOX_TOKEN = re.compile(
    r"\b(?:[0-9a-f]{50}|[0-9a-f]{30}|[0-9a-f]{8,}\.\.\.[0-9a-f]{8,})\b"
)


def redact(text: str) -> str:
    return SANDBOX_TOKEN.sub("<token>", text)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo
) -> pytest.TestReport:
    report = yield
    if report.failed:
        report.longrepr = redact(str(report.longrepr))
        report.sections = [(title, redact(text)) for title, text in report.sections]
    return report
