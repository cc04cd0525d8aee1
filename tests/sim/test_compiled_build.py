"""The optional compiled simulator (``make sim-compiled``, ``fleet/sim/compiled.py``) as a user builds it: in a
clean copy of the repository, compiled with mypyc, it gives the recorded results, its objects cross processes
as the benchmarks send them, and an edit after the build is refused until the next build, which is then taken.
"""

from __future__ import annotations

import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fleet.sim.engine import engine_model_for
from tests.support.demo_run import clean_copy
from tests.support.require import require

BUILD_TIMEOUT_S = 900


def test_an_engine_model_crosses_processes_unchanged() -> None:
    """``bench/tiers.py`` and ``compare(jobs=2)`` get results back from other processes by pickle, engine
    models with them. Compiled, a frozen class's default pickle sets its fields one by one, which frozen
    refuses; run here plain and, by the test below, compiled."""
    engine = engine_model_for("H100")
    assert pickle.loads(pickle.dumps(engine)) == engine


def _run(copy: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    # The copy's own tests run on the embedded default: never the outer run's test database.
    env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "REDIS_URL", "PYTHONPATH"}}
    return subprocess.run(
        [sys.executable, *argv], cwd=copy, env=env, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S
    )


COMPILED_CHECK = (
    "from fleet.sim.compiled import compiled_modules; built = compiled_modules(); print(built); "
    "assert all(built.values()), built"
)


@pytest.mark.services
def test_the_compiled_build_gives_the_recorded_results_and_refuses_an_edit_until_rebuilt(tmp_path: Path) -> None:
    require(shutil.which("gcc") is not None, "gcc is not installed (the compiled build needs a C compiler)")
    copy = clean_copy(tmp_path / "repo")

    built = _run(copy, "-m", "fleet.sim.compiled")
    assert built.returncode == 0, built.stdout + built.stderr
    assert _run(copy, "-c", COMPILED_CHECK).returncode == 0
    tests = _run(
        copy,
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        "tests/sim/test_sim_speed.py",
        "tests/sim/test_compiled_build.py::test_an_engine_model_crosses_processes_unchanged",
    )
    assert tests.returncode == 0 and " passed" in tests.stdout, tests.stdout + tests.stderr

    engine = copy / "fleet" / "sim" / "engine.py"
    engine.write_text(engine.read_text() + "\n# edited after the build\n")
    stale = _run(copy, "-c", "import fleet.sim.engine")
    assert stale.returncode != 0 and "changed after it was compiled" in stale.stderr, stale.stderr

    rebuilt = _run(copy, "-m", "fleet.sim.compiled")
    assert rebuilt.returncode == 0, rebuilt.stdout + rebuilt.stderr
    after = _run(copy, "-c", COMPILED_CHECK)
    assert after.returncode == 0, after.stdout + after.stderr
