"""Forward evaluation of tuned settings: tune on the first days of a rate series, report on the days after.

Settings tuned (``fleet.sim.tune.tune``) on days 1..``--tune-days`` of the ServeGen rate series, scaled to a
stated mean rate over its first week, lengths drawn from the Azure conversation trace, are then run on the
following days beside the defaults, the benchmark's conversation settings and the static fleet
(``forward_rows``). Plain Python (no Django)::

    python bench/tune.py --gpu A100 --mean-rate 1.0 --output var/tuned.json --markdown var/tune.md
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fleet.sim.engine import EngineModel, engine_model_for
from fleet.sim.headroom import headroom_traffic
from fleet.sim.traces import RateSeries, Trace, rate_series_load, trace_from_rate_series, trace_load
from fleet.sim.tune import (
    DEFAULT_SPACE,
    Candidate,
    HeadroomCheck,
    Values,
    forward_markdown,
    forward_rows,
    series_days,
    settings_file_values,
    tune,
)

ROOT = Path(__file__).resolve().parent.parent
SERIES = ROOT / "fleet" / "sim" / "traces" / "servegen_m-mid_rate_10min.csv"


def series_arguments(parser: argparse.ArgumentParser, *, gpu: str, mean_rate: float) -> None:
    """The arguments of a run on the rate series: the series, the lengths, the simulated fleet and the rate."""
    parser.add_argument("--series", default=str(SERIES), help="A rate series CSV (traces.rate_series_load).")
    parser.add_argument("--lengths", default="azure-conv", help="The trace token lengths are drawn from.")
    parser.add_argument("--gpu", default=gpu)
    parser.add_argument("--gpus", type=int, default=8)
    parser.add_argument("--mean-rate", type=float, default=mean_rate, help="Requests a second over the first week.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    series_arguments(parser, gpu="A100", mean_rate=1.0)
    parser.add_argument("--tune-days", type=int, default=3)
    parser.add_argument("--test-days", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--max-evaluations", type=int, default=24)
    parser.add_argument("--workers", type=int, default=1, help="Candidates simulated at once while tuning.")
    parser.add_argument(
        "--forward-workers",
        type=int,
        default=1,
        help="Settings sets run at once on the days after (each process holds those days' requests and a run's "
        "results: two, for four days at 30 req/s, ran out of 23 GB).",
    )
    parser.add_argument("--headroom", type=float, default=0.0, help="As simulate_tune --headroom.")
    parser.add_argument(
        "--space",
        default=",".join(d.name for d in DEFAULT_SPACE),
        help="The dimensions of fleet.sim.tune.DEFAULT_SPACE to search, comma-separated (default: all).",
    )
    parser.add_argument(
        "--tuned", help="Evaluate this settings file forward (one an earlier run wrote) instead of tuning anew."
    )
    parser.add_argument("--output", default="var/tuned.json")
    parser.add_argument("--markdown", default="var/tune.md")
    args = parser.parse_args()

    series = rate_series_load(args.series)
    week = series_days(series, first_day=1, days=7)
    scale = args.mean_rate / week.mean_rate
    lengths = trace_load(args.lengths)
    engine = engine_model_for(args.gpu)
    test_first = args.tune_days + 1
    test = trace_from_rate_series(
        series_days(series, first_day=test_first, days=args.test_days), lengths=lengths, seed=args.seed, scale=scale
    )
    if args.tuned:
        values = json.loads(Path(args.tuned).read_text(encoding="utf-8"))
        summary = f"settings read from {args.tuned}"
    else:
        values, summary = _tuned(args, series=series, engine=engine, lengths=lengths, scale=scale)
    conv = json.loads((ROOT / "bench/sim/azure-conv.json").read_text(encoding="utf-8"))
    print(f"evaluating on {test.name}: {len(test.requests):,} requests", flush=True)
    rows = forward_rows(
        trace=test,
        engine=engine,
        gpus=args.gpus,
        settings={"defaults": {}, "bench/sim/azure-conv.json": conv, f"tuned on days 1-{args.tune_days}": values},
        seed=args.seed,
        workers=args.forward_workers,
    )
    title = (
        f"Days {test_first}-{test_first + args.test_days - 1} of {series.name}, {args.mean_rate:g} req/s mean over "
        f"days 1-7 (scale {scale:.3g}), lengths {args.lengths}, simulated {engine.gpu_model} x{args.gpus}, "
        f"seed {args.seed}; tuned: {summary}"
    )
    table = forward_markdown(rows, title=title)
    print(table)
    markdown = ROOT / args.markdown
    markdown.parent.mkdir(parents=True, exist_ok=True)
    markdown.write_text(table, encoding="utf-8")


def _tuned(
    args: argparse.Namespace, *, series: RateSeries, engine: EngineModel, lengths: Trace, scale: float
) -> tuple[Values, str]:
    """Tune on days 1..``--tune-days``; write the settings to ``--output``; return them and the search's summary."""
    train = trace_from_rate_series(
        series_days(series, first_day=1, days=args.tune_days), lengths=lengths, seed=args.seed, scale=scale
    )
    # The engine's prefill rate is a measured figure (sim_fit measures a user's own), not a tuned one.
    base = {"policies": {"autoscale": {"prefill_tokens_per_s": round(engine.prefill_tokens_per_s)}}}
    began = time.monotonic()

    def say(candidate: Candidate, *, at_headroom: HeadroomCheck | None = None) -> None:
        r = candidate.result if at_headroom is None else at_headroom.result
        meets = candidate.meets_sla if at_headroom is None else at_headroom.meets_sla
        where = "" if at_headroom is None else f"at {headroom_traffic(args.headroom)}: "
        print(
            f"[{time.monotonic() - began:6.0f} s] {where}{r.paid_gpu_hours:8.3f} paid GPU-h {r.attainment:.4%} "
            f"{'meets' if meets else 'misses'} {json.dumps(candidate.values, sort_keys=True)}",
            flush=True,
        )

    print(f"tuning on {train.name}: {len(train.requests):,} requests (scale {scale:.3g})", flush=True)
    tuned = tune(
        trace=train,
        engine=engine,
        gpus=args.gpus,
        base=base,
        space=[d for d in DEFAULT_SPACE if d.name in args.space.split(",")],
        seed=args.seed,
        rounds=args.rounds,
        max_evaluations=args.max_evaluations,
        workers=args.workers,
        headroom=args.headroom,
        progress=say,
        checked=lambda check: say(check.candidate, at_headroom=check),
    )
    print(tuned.summary, flush=True)
    values = settings_file_values(tuned.best.values)
    output = ROOT / args.output
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(values, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {output}", flush=True)
    return values, tuned.summary


if __name__ == "__main__":
    main()
