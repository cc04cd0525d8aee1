"""Search the pool's and autoscale's settings on past traffic for the lowest spend that meets the SLA.

Example::

    python manage.py simulate_tune --rate-series servegen.csv --mean-rate 0.5 --days 1-3 --gpu L4 \\
        --output var/tuned.json
    python manage.py policy_apply var/tuned.json --pool chat-l
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from fleet.management.commands.simulate import engine_file_read, settings_file_read
from fleet.models import RequestLog
from fleet.sim.engine import DEFAULT_PROFILE, engine_model_for
from fleet.sim.headroom import DEFAULT_HEADROOM, headroom_refused
from fleet.sim.traces import (
    Trace,
    TraceError,
    rate_series_load,
    trace_from_rate_series,
    trace_from_request_log,
    trace_load,
)
from fleet.sim.tune import DEFAULT_SPACE, Candidate, series_days, settings_file_values, tune


def days_parse(text: str) -> tuple[int, int]:
    """ "1-3" -> (first day 1, 3 days); "2" -> (2, 1)."""
    try:
        first, _, last = text.partition("-")
        begin, end = int(first), int(last or first)
    except ValueError as exc:
        raise CommandError(f"--days {text!r}: expected a day or a range such as 1-3") from exc
    if begin < 1 or end < begin:
        raise CommandError(f"--days {text!r}: days count from 1, the range in order")
    return begin, end - begin + 1


class Command(BaseCommand):
    help = (
        "Tune autoscale and pool settings on past traffic (the request log, a trace or a rate series) with the "
        "simulator: the fewest paid GPU-hours that meet the SLA. Writes a settings file policy_apply applies."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        source = parser.add_mutually_exclusive_group(required=True)
        source.add_argument("--trace", help="azure-code, azure-conv, request-log, or a CSV/JSONL file.")
        source.add_argument("--rate-series", help="A rate series CSV (Prometheus, Grafana or ServeGen export).")
        parser.add_argument("--mean-rate", type=float, help="With --rate-series: scale it to this mean (req/s).")
        parser.add_argument("--days", default="1-3", help="With --rate-series: the days to tune on (from 1).")
        parser.add_argument("--lengths", default="azure-conv", help="With --rate-series: token lengths' trace.")
        parser.add_argument("--gpu", default="H100")
        parser.add_argument("--gpus", type=int, default=8)
        parser.add_argument("--profile", default=DEFAULT_PROFILE)
        parser.add_argument("--engine", help="JSON engine model from sim_fit, overriding the defaults.")
        parser.add_argument("--policy-settings", help="JSON settings file to start the search from.")
        parser.add_argument("--seed", type=int, default=0)
        parser.add_argument("--sla-ms", type=float, default=500.0)
        parser.add_argument("--sla-target", type=float, default=0.999)
        parser.add_argument("--rounds", type=int, default=2)
        parser.add_argument("--max-evaluations", type=int, default=40)
        parser.add_argument("--workers", type=int, default=1, help="Simulations run at once.")
        parser.add_argument(
            "--headroom",
            type=float,
            default=DEFAULT_HEADROOM,
            help=(
                "Room for growth: choose the cheapest settings that also meet the SLA on the same traffic at "
                f"1 + HEADROOM times its rate, or say that none does (default {DEFAULT_HEADROOM:g}; 0: none)."
            ),
        )
        parser.add_argument(
            "--space",
            default=",".join(d.name for d in DEFAULT_SPACE),
            help=f"Dimensions to search, comma-separated, of: {', '.join(d.name for d in DEFAULT_SPACE)}.",
        )
        parser.add_argument("--output", required=True, help="Write the tuned settings file here.")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            engine = (
                engine_file_read(options["engine"], gpu=options["gpu"], profile=options["profile"])
                if options["engine"]
                else engine_model_for(options["gpu"], options["profile"])
            )
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
        # Refused before the traffic is read (the request log or a week of a rate series takes a while).
        if (why := headroom_refused(options["headroom"])) is not None:
            raise CommandError(f"--headroom: {why}")
        names = options["space"].split(",")
        unknown = set(names) - {d.name for d in DEFAULT_SPACE}
        if unknown:
            raise CommandError(f"--space: unknown dimensions {', '.join(sorted(unknown))}")
        trace = self._trace(options)
        self.stderr.write(f"tuning on {trace.name}: {len(trace.requests):,} requests")

        def say(candidate: Candidate) -> None:
            r = candidate.result
            self.stderr.write(
                f"{r.paid_gpu_hours:.3f} paid GPU-h, {r.attainment:.3%} within "
                f"({'meets' if candidate.meets_sla else 'misses'}): {json.dumps(candidate.values, sort_keys=True)}"
            )

        try:
            tuned = tune(
                trace=trace,
                engine=engine,
                gpus=options["gpus"],
                base=settings_file_read(options["policy_settings"]),
                space=[d for d in DEFAULT_SPACE if d.name in names],
                seed=options["seed"],
                sla_ms=options["sla_ms"],
                sla_target=options["sla_target"],
                rounds=options["rounds"],
                max_evaluations=options["max_evaluations"],
                workers=options["workers"],
                headroom=options["headroom"],
                progress=say,
            )
        except ValueError as exc:
            raise CommandError(f"settings: {exc}") from exc
        text = json.dumps(settings_file_values(tuned.best.values), indent=2)
        path = Path(options["output"])
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text + "\n", encoding="utf-8")
        self.stdout.write(tuned.summary)
        self.stdout.write(text)
        self.stderr.write(f"wrote {path}")

    def _trace(self, options: dict[str, Any]) -> Trace:
        try:
            if options["rate_series"]:
                series = rate_series_load(options["rate_series"])
                first, days = days_parse(options["days"])
                scale = options["mean_rate"] / series.mean_rate if options["mean_rate"] else 1.0
                return trace_from_rate_series(
                    series_days(series, first_day=first, days=days),
                    lengths=trace_load(options["lengths"]),
                    seed=options["seed"],
                    scale=scale,
                )
            if options["trace"] == "request-log":
                rows = RequestLog.objects.filter(status=200).values("at", "prompt_tokens", "output_tokens")
                return trace_from_request_log(rows)
            return trace_load(options["trace"])
        except (TraceError, ValueError) as exc:
            raise CommandError(str(exc)) from exc
