"""The GPU check script imports anywhere and computes what the estimator says, shaped as it allocates."""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent
GIB = 1024**3


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


def check_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("vram_estimate_check", ROOT / "bench" / "vram_estimate_check.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


WEIGHTS = 2 * 4_022_468_096
KV = 36 * GIB


@pytest.mark.parametrize(
    ("torch_weights", "nvml_total", "failing"),
    [
        # NVML counts the CUDA context too (0.6 GiB here): like with like, that is no failure.
        (WEIGHTS, WEIGHTS + KV + int(0.6 * GIB), []),
        (int(WEIGHTS * 1.05), WEIGHTS + KV + int(0.6 * GIB), ["weights"]),
        (WEIGHTS, WEIGHTS + KV + 2 * GIB, ["process"]),
        (WEIGHTS, int((WEIGHTS + KV) * 0.9), ["process"]),
    ],
    ids=["context in NVML only", "weights off by 5%", "beyond the overhead allowance", "NVML below the estimate"],
)
def test_the_check_compares_torch_with_components_and_nvml_with_the_whole_estimate(
    torch_weights: int, nvml_total: int, failing: list[str]
) -> None:
    v = check_script()
    components = [
        v.Component("weights", WEIGHTS, torch_weights, torch_weights + int(0.6 * GIB)),
        v.Component("KV cache, 262,144 tokens", KV, KV, KV + 2 * 1024**2),
    ]
    totals = [v.Total("process, 262,144 tokens", nvml_total, WEIGHTS + KV, v.estimator().OVERHEAD_BYTES)]
    found = v.failures(components, totals, 0.02)
    assert [line.split()[0].strip(":,") for line in found] == failing
