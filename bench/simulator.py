"""The policy benchmark: both Azure traces through the simulator, policy vs static vs oracle.

Writes an HTML report and a Markdown table per trace under ``var/`` and prints the
benchmark table. The policy settings used are the JSON files in ``bench/sim/``. The fleet
is up to 8 simulated H100s (the calibrated engine model). The code trace runs as
published: its bursts already need 3 always-on H100s for 99.9% of first tokens within
500 ms. The conversation trace runs at four times its own rate (``Trace.rate_scaled``: new
Poisson arrivals at 4x the trace's rate in each minute, token lengths drawn from the trace,
the trace's clock kept; no request is a copy of another): as published, one H100 serves it
all, and nothing can be saved against one always-on instance.
"""

from __future__ import annotations

import json
import os
import sys
import time
from decimal import Decimal
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fleet.sim.compare import compare, price_preset  # noqa: E402
from fleet.sim.engine import engine_model_for  # noqa: E402
from fleet.sim.report import benchmark_markdown, comparison_html, comparison_markdown  # noqa: E402
from fleet.sim.setup import setup_build  # noqa: E402
from fleet.sim.traces import trace_load  # noqa: E402

TRACES = {"azure-code": 1, "azure-conv": 4}  # trace -> rate scale (1: as published)
GPU = os.environ.get("SIM_GPU", "H100")
GPUS = int(os.environ.get("SIM_GPUS", "8"))
SEED = int(os.environ.get("SIM_SEED", "0"))


def main() -> None:
    out = ROOT / "var"
    out.mkdir(exist_ok=True)
    engine = engine_model_for(GPU)
    comparisons = []
    for name, scale in TRACES.items():
        started = time.monotonic()
        values = json.loads((ROOT / "bench" / "sim" / f"{name}.json").read_text(encoding="utf-8"))
        setup = setup_build(engine=engine, gpus=GPUS, values=values, seed=SEED)
        trace = trace_load(name).rate_scaled(scale, seed=SEED)
        price = Decimal(os.environ["SIM_PRICE"]) if os.environ.get("SIM_PRICE") else price_preset(GPU)
        comparison = compare(trace=trace, setup=setup, price_per_gpu_hour=price)
        command = (
            f"python manage.py simulate --trace {name} --gpu {GPU} --gpus {GPUS} --scale {scale} --seed {SEED} "
            f"--policy-settings bench/sim/{name}.json"
        )
        (out / f"sim-{name}.html").write_text(comparison_html(comparison, command=command), encoding="utf-8")
        (out / f"sim-{name}.md").write_text(comparison_markdown(comparison), encoding="utf-8")
        comparisons.append(comparison)
        print(f"{name}: simulated in {time.monotonic() - started:.0f} s; reports in var/sim-{name}.*", file=sys.stderr)
    print(benchmark_markdown(comparisons))


if __name__ == "__main__":
    main()
