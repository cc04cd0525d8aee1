"""``bench/capacity.py``, the arithmetic behind docs/capacity.md, run as the doc runs it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIGURES = ["--server-ms", "4", "--nginx-ms", "0.1", "--db-ms", "1", "--redis-ms", "0.1", "--gateway-ms", "0.5"]


def capacity(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "bench/capacity.py", *args], cwd=ROOT, capture_output=True, text=True, timeout=60
    )


def test_cores_for_ten_thousand_hosts() -> None:
    """10,000 hosts every 5 s = 2,000 reports/s, x 8 GPUs = 16,000 samples/s. Replicas at 4 ms a report:
    2,000 x 4 / 1000 = 8.00 cores fully busy, 8 / 0.5 = 16.00 sized at 50 %, 1000 / 4 = 250 reports/s a core.
    PostgreSQL at 1 ms: 2,000 x 1 / 1000 = 2.00 busy, 4.00 sized, 1,000 a core. The report path in all:
    (4 + 0.1 + 1 + 0.1) x 2 / 0.5 = 20.8 cores. The gateway at 0.5 ms and 1,000 requests/s: 0.5 / 0.5 = 1.00."""
    done = capacity(*FIGURES)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert "2,000 reports/s (16,000 GPU samples/s)" in lines[0] and "50% busy" in lines[0]
    replicas = next(line for line in lines if line.startswith("report replicas"))
    assert replicas.split()[2:] == ["4.00", "250", "8.00", "16.00", "16"]
    database = next(line for line in lines if line.startswith("PostgreSQL"))
    assert database.split()[1:] == ["1.00", "1,000", "2.00", "4.00", "4"]
    assert "sized: 20.8 cores" in done.stdout
    assert "gateway at 1,000 requests/s, sized: 1.00 cores" in done.stdout


def test_headroom_and_fleet_are_the_callers() -> None:
    """2,500 hosts every 10 s = 250 reports/s; at 80 % busy the replicas need 250 x 4 / 1000 / 0.8 = 1.25 cores."""
    done = capacity(*FIGURES, "--hosts", "2500", "--interval", "10", "--utilization", "0.8")
    assert done.returncode == 0, done.stderr
    replicas = next(line for line in done.stdout.splitlines() if line.startswith("report replicas"))
    assert replicas.split()[4:6] == ["1.00", "1.25"]


def test_bad_input_is_refused() -> None:
    """A utilization over 1 or an interval of 0 exits 2 with the reason, printing no table."""
    refused = ((["--utilization", "1.5"], "--utilization must be in (0, 1]"), (["--interval", "0"], "above 0"))
    for bad, reason in refused:
        done = capacity(*FIGURES, *bad)
        assert done.returncode == 2 and reason in done.stderr, done.stderr
        assert "report replicas" not in done.stdout
