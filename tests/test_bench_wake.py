"""``bench/wake_cost.py`` run as the README gives it: its rows preempt what the eviction rule says."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.require import require

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.services


def test_the_wake_bench_prints_its_table_with_the_preemptions_the_rule_gives() -> None:
    """Baseline: nothing on the card, nothing preempted. Exclusive: its one job goes. Shared: 21.6 GiB
    budget + 0.5 GiB foreign + 2 x 1 GiB = 24.1 > 24 GiB, so the newest job goes and the other fits."""
    url = os.environ.get("DATABASE_URL", "")
    require(url.startswith("postgres"), "the wake benchmark needs PostgreSQL (DATABASE_URL)")
    done = subprocess.run(
        [sys.executable, "bench/wake_cost.py", "--wakes", "2", "--db-name", "bench_wake_test", "--database-url", url],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    rows = [
        [cell.strip() for cell in line.split("|")[1:-1]]
        for line in done.stdout.splitlines()
        if line.startswith("| ") and not line.startswith("| wake ")
    ]
    assert [(row[0], row[1]) for row in rows] == [
        ("baseline: no job on the card", "0.0"),
        ("exclusive card, 1 job (16 GiB)", "1.0"),
        ("shared card, 2 jobs and 0.5 GiB foreign, 1 goes", "1.0"),
    ]
    assert rows[0][-1] == "1.00x"
    assert all(float(row[2]) > 0 for row in rows)
