"""The benchmarks still run (a smoke test; their numbers belong in the README, not
in assertions)."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.conftest import BASE_DIR


def test_the_callback_benchmark_runs_four_people_through_connect_without_errors():
    one_trip, two_trips = _smoke_rows()[-2:]
    for row, trips in ((one_trip, "1"), (two_trips, "2")):
        assert row[0] == "4" and row[4] == trips and int(row[5]) == 12  # K, flows
        assert row[12] == "0"  # errors


def test_the_reference_site_runs_the_same_flows_for_the_ceiling():
    row = _smoke_rows("--reference")[-1]
    assert row[3] == "reference" and int(row[5]) == 12  # "database", flows
    assert row[12] == "0"  # errors


def _smoke_rows(*options: str) -> list[list[str]]:
    """The rows `bench/callback.py --smoke` prints, split into their columns."""
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
    return [line.split() for line in run.stdout.strip().splitlines()]
