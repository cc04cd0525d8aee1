"""How fast the simulator runs a whole comparison: trace requests simulated per wall-clock second.

The trace is ServeGen's rate series (the shared 10-minute series), its first ``--hours``
scaled to a ``--rate`` requests-a-second mean, token lengths drawn from the Azure
conversation trace; the comparison is ``compare`` as ``manage.py simulate`` runs it (static
search, oracle bound, replay and repair, policy run) on ``--gpus`` simulated H100s with the
benchmark's conversation settings. The figure is the trace's requests / the comparison's
wall-clock seconds (trace generation is timed apart); the CPU seconds and peak resident
memory of this process and of the forked one (``--jobs 2``) are printed apart. ``--profile`` prints cProfile's top
entries by cumulative time. The same arguments give the same report (its digest is printed).

    python bench/sim_speed.py --hours 2 --rate 10
"""

from __future__ import annotations

import argparse
import cProfile
import hashlib
import json
import os
import pstats
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fleet.sim.compare import compare  # noqa: E402
from fleet.sim.compiled import compiled_modules  # noqa: E402
from fleet.sim.engine import engine_model_for  # noqa: E402
from fleet.sim.report import comparison_markdown  # noqa: E402
from fleet.sim.setup import setup_build  # noqa: E402
from fleet.sim.traces import RateSeries, rate_series_load, trace_from_rate_series, trace_load  # noqa: E402

SERIES = os.environ.get("SIM_SERIES", str(ROOT / "fleet" / "sim" / "traces" / "servegen_m-mid_rate_10min.csv"))


def _cpu_s() -> tuple[float, float]:
    """CPU seconds of this process, and of its finished children (the forked process of ``--jobs 2``):
    apart, so a run shows how evenly its two processes shared the work."""
    used = os.times()
    return used.user + used.system, used.children_user + used.children_system


def _peak_gb() -> tuple[float, float]:
    """Peak resident memory (GB) of this process (trace generation included) and of the largest finished
    child (the forked process): what a week's comparison needs of the machine."""
    return (
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6,
        resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1e6,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hours", type=float, default=2.0, help="Hours of the series from its start.")
    parser.add_argument("--rate", type=float, default=10.0, help="Mean requests a second over those hours.")
    parser.add_argument("--gpus", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--series", default=SERIES, help="Rate series CSV (ServeGen or Prometheus export).")
    parser.add_argument("--jobs", type=int, default=1, help="2: static search and policy run in a second process.")
    parser.add_argument("--profile", type=int, default=0, help="Print this many cProfile entries (by cumtime).")
    args = parser.parse_args()

    series = rate_series_load(args.series)
    end = args.hours * 3600
    windows = tuple((start, min(length, end - start), rate) for start, length, rate in series.windows if start < end)
    series = RateSeries(name=series.name, start=series.start, windows=windows, missing=series.missing)
    started = time.monotonic()
    trace = trace_from_rate_series(
        series, lengths=trace_load("azure-conv"), seed=args.seed, scale=args.rate / series.mean_rate
    )
    generated = time.monotonic() - started
    values = json.loads((ROOT / "bench" / "sim" / "azure-conv.json").read_text(encoding="utf-8"))
    setup = setup_build(engine=engine_model_for("H100"), gpus=args.gpus, values=values, seed=args.seed)

    profiler = cProfile.Profile() if args.profile else None
    started, (own_before, forked_before) = time.monotonic(), _cpu_s()
    if profiler:
        profiler.enable()
    # Without --jobs the call is the one earlier versions take too, so the script measures them alike.
    comparison = (
        compare(trace=trace, setup=setup, jobs=args.jobs) if args.jobs > 1 else compare(trace=trace, setup=setup)
    )
    if profiler:
        profiler.disable()
    seconds, (own, forked) = time.monotonic() - started, _cpu_s()
    own, forked = own - own_before, forked - forked_before
    cpu = own + forked
    peak, forked_peak = _peak_gb()
    report = comparison_markdown(comparison)
    requests = len(trace.requests)
    done = [name for name, compiled in compiled_modules().items() if compiled]
    build = f"compiled ({', '.join(done)})" if done else "plain Python"
    print(report)
    print(
        f"trace: {trace.name}, {args.hours:g} h at {args.rate:g} req/s mean: {requests:,} requests "
        f"(generated in {generated:.1f} s), jobs {args.jobs}, simulator {build}\n"
        f"compare: {seconds:.1f} s, {requests / seconds:,.0f} trace requests/s "
        f"({cpu:.1f} s of CPU: {requests / cpu:,.0f} a CPU second; this process {own:.1f} s, "
        f"peak {peak:.2f} GB resident; forked {forked:.1f} s, peak {forked_peak:.2f} GB) "
        f"(static {comparison.static_instances}, oracle peak {max(comparison.schedule, default=0)}); "
        f"report digest {hashlib.sha256(report.encode()).hexdigest()[:16]}"
    )
    if profiler:
        pstats.Stats(profiler, stream=sys.stdout).sort_stats("cumulative").print_stats(args.profile)


if __name__ == "__main__":
    main()
