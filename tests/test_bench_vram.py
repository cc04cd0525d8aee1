"""The GPU check script imports anywhere and computes what the estimator says, shaped as it allocates."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_script_imports_without_torch_or_the_panel_and_matches_the_arithmetic() -> None:
    code = (
        "import sys, json; sys.path.insert(0, 'bench'); import vram_estimate_check as v; "
        "print(json.dumps([v.expected(32768), v.expected(262144), list(v.kv_shape(32768)), "
        "'torch' in sys.modules, 'celery' in sys.modules]))"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    short, long, shape, torch_loaded, celery_loaded = json.loads(result.stdout)
    assert short["kv_cache"] == 4.5 * 1024**3 and long["kv_cache"] == 36 * 1024**3
    assert short["weights"] == 2 * 4_022_468_096
    assert math.prod(shape) * 2 == short["kv_cache"]
    assert not torch_loaded and not celery_loaded
