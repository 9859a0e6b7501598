"""A failing test prints no token: the suite's failure reports are test output
(tests/redaction.py)."""

from __future__ import annotations

import pytest

from tests.conftest import BASE_DIR

pytest_plugins = ["pytester"]

ACCESS, REFRESH = "0a" * 15, "1b" * 25  # shaped like the sandbox's


def test_a_failing_assertion_prints_no_sandbox_token(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
):
    pytester.makepyfile(
        f"""
        import logging

        def test_compares_tokens():
            logging.getLogger("site").warning("refreshed with %s", {REFRESH!r})
            assert {ACCESS!r} == {REFRESH!r}
        """
    )
    monkeypatch.setenv("PYTHONPATH", str(BASE_DIR))

    result = pytester.runpytest_subprocess(
        *("-p", "tests.redaction", "-p", "no:django", "-p", "no:cacheprovider")
    )

    result.assert_outcomes(failed=1)
    output = result.stdout.str()
    assert "<token>" in output
    for token in (ACCESS, REFRESH):
        assert token[:12] not in output and token[-12:] not in output
