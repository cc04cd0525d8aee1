"""The simulator imports what it simulates and nothing of the panel: a trace runs where Django cannot be imported."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

RUN = """
import sys

sys.modules["django"] = None  # from here on, importing Django fails
from datetime import UTC, datetime

from fleet.sim.compare import compare
from fleet.sim.engine import engine_model_for
from fleet.sim.report import comparison_markdown
from fleet.sim.setup import setup_build
from fleet.sim.traces import Trace, TraceRequest

requests = tuple(TraceRequest(t * 3.0, 300 + 40 * (t % 5), 8) for t in range(80))
trace = Trace(name="hand", start=datetime(2026, 3, 2, 9, tzinfo=UTC), requests=requests)
comparison = compare(trace=trace, setup=setup_build(engine=engine_model_for("H100"), gpus=2))
assert comparison_markdown(comparison).startswith("### hand on simulated")
print(comparison.policy.requests, comparison.policy.failed, len(comparison.policy.timeline))
print(sorted(name for name, module in sys.modules.items() if name.startswith("django") and module is not None))
"""


def test_a_trace_runs_with_django_not_importable() -> None:
    env = {key: value for key, value in os.environ.items() if key != "DJANGO_SETTINGS_MODULE"}
    done = subprocess.run(
        [sys.executable, "-c", RUN], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    counts, django_modules = done.stdout.splitlines()
    requests, failed, ticks = (int(value) for value in counts.split())
    assert (requests, failed) == (80, 0) and ticks >= 7
    assert django_modules == "[]"
