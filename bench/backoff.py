"""Autoscale's scale-in back-off on a day of the ServeGen rate series at a rate where the pool needs two cards.

Under steady traffic no instance is idle, so autoscale scales in only by draining (``scale_in_drain``). It
guesses the load on one instance fewer linearly, but one H100 fewer holds far more than twice the sequences
(each request runs longer in a bigger batch), so the gateway scales out again within minutes. This runs the
day with draining off, and on with the back-off off (``scale_in_backoff_max_s`` 0), at an hour and at its
default (four hours), then with the four hours and a scale-in load margin (``scale_in_load_margin``: the guess
times 1.3 or 1.6 must stay within the band), beside the static fleet (``fleet.sim.tune.forward_rows``: each
policy run from the static fleet, savings against it). ``--rows`` runs only the rows whose label holds one of
the words given (the static fleet always). Plain Python (no Django)::

    python bench/backoff.py --day 6 --mean-rate 30 --workers 2
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.tune import series_arguments
from fleet.sim.engine import engine_model_for
from fleet.sim.traces import rate_series_load, trace_from_rate_series, trace_load
from fleet.sim.tune import forward_markdown, forward_rows, series_days


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    series_arguments(parser, gpu="H100", mean_rate=30.0)
    parser.add_argument("--day", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--rows", nargs="*", default=[], help="Only the rows whose label holds one of these words.")
    args = parser.parse_args()

    engine = engine_model_for(args.gpu)
    # The engine's prefill rate is a measured figure (sim_fit measures a user's own), as bench/tune.py's base.
    prefill = {"prefill_tokens_per_s": round(engine.prefill_tokens_per_s)}

    def autoscale(**settings: object) -> dict[str, object]:
        return {"policies": {"autoscale": {**prefill, **settings}}}

    settings = {
        "no draining (the default)": autoscale(),
        "draining, no back-off": autoscale(scale_in_drain=True, scale_in_backoff_max_s=0),
        "draining, back-off up to 1 h": autoscale(scale_in_drain=True, scale_in_backoff_max_s=3600),
        "draining, back-off up to 4 h (the default)": autoscale(scale_in_drain=True),
        "the same, scale-in load margin 1.3": autoscale(scale_in_drain=True, scale_in_load_margin=1.3),
        "the same, scale-in load margin 1.6": autoscale(scale_in_drain=True, scale_in_load_margin=1.6),
    }
    if args.rows:
        settings = {label: values for label, values in settings.items() if any(word in label for word in args.rows)}
        if not settings:
            parser.error(f"no row's label holds any of {args.rows}")
    series = rate_series_load(args.series)
    scale = args.mean_rate / series_days(series, first_day=1, days=7).mean_rate
    trace = trace_from_rate_series(
        series_days(series, first_day=args.day, days=1), lengths=trace_load(args.lengths), seed=args.seed, scale=scale
    )
    began = time.monotonic()
    rows = forward_rows(
        trace=trace, engine=engine, gpus=args.gpus, settings=settings, seed=args.seed, workers=args.workers
    )
    title = (
        f"Day {args.day} of {series.name}, {args.mean_rate:g} req/s mean over days 1-7 (scale {scale:.3g}), "
        f"{len(trace.requests):,} requests, lengths {args.lengths}, simulated {engine.gpu_model} x{args.gpus}, "
        f"seed {args.seed}, SLA 99.9% within 500 ms; {time.monotonic() - began:.0f} s"
    )
    print(forward_markdown(rows, title=title))
    for row in rows:
        actions = row.result.actions
        moves = ", ".join(f"{kind} {action} {n}" for (kind, action), n in sorted(actions.items()) if "scale" in action)
        print(f"{row.label}: {moves or 'no scale-out or scale-in'}")


if __name__ == "__main__":
    main()
