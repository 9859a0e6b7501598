"""The benchmarks still run (a smoke test; their numbers belong in the README, not
in assertions)."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.conftest import BASE_DIR


def test_the_callback_benchmark_runs_four_people_through_connect_without_errors():
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    run = subprocess.run(
        [sys.executable, "bench/callback.py", "--smoke"],
        cwd=BASE_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    row = run.stdout.strip().splitlines()[-1].split()
    assert row[0] == "4" and int(row[4]) == 12  # K, flows
    assert row[11] == "0"  # errors
