"""The benchmarks still run (a smoke test; their numbers belong in the README, not
in assertions)."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.conftest import BASE_DIR


def test_the_callback_benchmark_runs_four_people_through_connect_without_errors():
    row = _smoke_row()
    assert row[0] == "4" and int(row[4]) == 12  # K, flows
    assert row[11] == "0"  # errors


def test_the_reference_site_runs_the_same_flows_for_the_ceiling():
    row = _smoke_row("--reference")
    assert row[3] == "reference" and int(row[4]) == 12  # "database", flows
    assert row[11] == "0"  # errors


def _smoke_row(*options: str) -> list[str]:
    """The last row `bench/callback.py --smoke` prints, split into its columns."""
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    run = subprocess.run(
        [sys.executable, "bench/callback.py", "--smoke", *options],
        cwd=BASE_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    return run.stdout.strip().splitlines()[-1].split()
