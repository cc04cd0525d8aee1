"""Replay a request trace through a simulated fleet run by the production policies.

Example::

    python manage.py simulate --trace azure-conv --gpu H100 --gpus 16 --scale 8 \\
        --report var/sim-conv.html --markdown var/sim-conv.md
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from fleet.models import Pool, PriceRate, RequestLog
from fleet.sim.compare import compare, price_preset
from fleet.sim.engine import DEFAULT_PROFILE, EngineModel, engine_model_for
from fleet.sim.report import comparison_html, comparison_markdown
from fleet.sim.setup import SimSetup, setup_build
from fleet.sim.traces import Trace, TraceError, trace_from_request_log, trace_load
from fleet.sim_pool import pool_sim_setup


class ProgressBar:
    """Progress of each stage of a comparison (static search, oracle, policy run) on stderr.

    On a terminal one line redrawn in place, at most ten times a second; otherwise (a log
    file, CI) a plain line at each stage's start and every further 10%, so a long run shows
    it is alive without filling the log. Each line carries the seconds since the bar began."""

    def __init__(self, write: Callable[[str], None], *, tty: bool = True) -> None:
        self.write = write
        self.tty = tty
        self.began = time.monotonic()
        self.drawn = 0.0
        self.shown: tuple[str, int] | None = None

    def __call__(self, label: str, done: float) -> None:
        now = time.monotonic()
        elapsed = f"{now - self.began:6.0f} s"
        if not self.tty:
            tenth = int(min(done, 1.0) * 10)
            if self.shown is not None and self.shown[0] == label and self.shown[1] >= tenth:
                return
            self.shown = (label, tenth)
            self.write(f"{label:<22} {done:4.0%} {elapsed}\n")
            return
        if now - self.drawn < 0.1 and done < 1:
            return
        self.drawn = now
        filled = int(done * 30)
        bar = f"\r{label:<22} [{'#' * filled}{'.' * (30 - filled)}] {done:4.0%} {elapsed}"
        self.write(bar + ("\n" if done >= 1 else ""))


def settings_file_read(path: str | None) -> dict[str, Any]:
    """The JSON settings file ``setup_build`` takes (pool fields, policy settings, routing)."""
    if not path:
        return {}
    try:
        values = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise CommandError(f"cannot read settings {path}: {exc}") from exc
    if not isinstance(values, dict):
        raise CommandError(f"{path}: expected a JSON object")
    return values


def engine_file_read(path: str, *, gpu: str, profile: str) -> EngineModel:
    """An engine model fitted by ``sim_fit``: its fields override the documented defaults."""
    try:
        fitted = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise CommandError(f"cannot read engine model {path}: {exc}") from exc
    base = engine_model_for(gpu, profile)
    unknown = set(fitted) - set(base.__dataclass_fields__)
    if unknown:
        raise CommandError(f"{path}: unknown engine fields {', '.join(sorted(unknown))}")
    return replace(base, **fitted)


def price_lookup(engine: EngineModel, given: str | None) -> Decimal | None:
    """The given price, else the latest fleet-wide rate the panel has for this GPU model, else its preset."""
    if given is not None:
        try:
            return Decimal(given)
        except InvalidOperation as exc:
            raise CommandError(f"--price: {given!r} is not a number") from exc
    rate = (
        PriceRate.objects.filter(gpu_model__icontains=engine.gpu_model, node__isnull=True)
        .order_by("-effective_from")
        .first()
    )
    return rate.price_per_gpu_hour if rate else price_preset(engine.gpu_model)


class Command(BaseCommand):
    help = (
        "Simulate a request trace on a simulated GPU fleet run by the production policies; report vs static and oracle."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--trace", required=True, help="azure-code, azure-conv, request-log, or a CSV/JSONL file.")
        parser.add_argument("--gpu", default="H100", help="A10G, L4, L40S, A100 or H100.")
        parser.add_argument("--gpus", type=int, default=16, help="GPUs in the simulated fleet (one instance each).")
        parser.add_argument("--profile", default=DEFAULT_PROFILE)
        parser.add_argument("--engine", help="JSON engine model from sim_fit, overriding the defaults.")
        parser.add_argument("--speedup", type=float, default=1.0, help="Divide arrival gaps by this.")
        parser.add_argument(
            "--scale",
            type=float,
            default=1.0,
            help="Run at this many times the trace's own rate: new seeded arrivals at the scaled rate of each "
            "--scale-window-s window, token lengths drawn from the trace (no request is copied); 1: as recorded.",
        )
        parser.add_argument(
            "--cv",
            "--burstiness",
            dest="cv",
            type=float,
            default=1.0,
            help="With --scale: coefficient of variation of the gaps between arrivals (1: Poisson, above 1 burstier).",
        )
        parser.add_argument(
            "--scale-window-s", type=float, default=60.0, help="With --scale: the window the trace's rate is read in."
        )
        parser.add_argument("--seed", type=int, default=0)
        parser.add_argument(
            "--pool", type=int, help="Simulate this pool of the panel with its stored policy and routing settings."
        )
        parser.add_argument(
            "--policy-settings",
            dest="policy_settings",
            help="JSON file: pool fields, policy settings, routing settings.",
        )
        parser.add_argument("--sla-ms", type=float, default=500.0)
        parser.add_argument(
            "--e2e-sla-ms",
            dest="e2e_sla_ms",
            type=float,
            help="An end-to-end latency bound beside the first-token one: a request is within the SLA only "
            "if it meets both (default: first token only).",
        )
        parser.add_argument(
            "--sla-ms-per-1k-prompt-tokens",
            dest="sla_ms_per_1k_prompt_tokens",
            type=float,
            default=0.0,
            help="Lets the first-token bound grow with the prompt: --sla-ms plus this many ms per 1,000 prompt "
            "tokens, each request judged against its own bound (default 0: one flat bound).",
        )
        parser.add_argument("--sla-target", type=float, default=0.999, help="Share of requests within the SLA.")
        parser.add_argument("--price", help="Price per GPU-hour (default: the panel's rate for the GPU model).")
        parser.add_argument("--report", help="Write the HTML report here.")
        parser.add_argument("--markdown", help="Write the Markdown table here.")
        parser.add_argument("--quiet", action="store_true", help="No progress bar.")
        parser.add_argument(
            "--jobs",
            type=int,
            default=1,
            help="2: the static search and the policy run in a second process beside the oracle (same report).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        trace = self._trace(options)
        try:
            engine = (
                engine_file_read(options["engine"], gpu=options["gpu"], profile=options["profile"])
                if options["engine"]
                else engine_model_for(options["gpu"], options["profile"])
            )
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
        setup = self._setup(engine, options)
        if options["pool"] is not None:
            try:
                setup = pool_sim_setup(pool_id=options["pool"], engine=engine, gpus=options["gpus"], base=setup)
            except Pool.DoesNotExist as exc:
                raise CommandError(f"--pool {options['pool']}: no such pool") from exc
        progress = (
            None
            if options["quiet"]
            else ProgressBar(lambda text: self.stderr.write(text, ending=""), tty=self.stderr.isatty())
        )
        comparison = compare(
            trace=trace,
            setup=setup,
            price_per_gpu_hour=price_lookup(engine, options["price"]),
            progress=progress,
            jobs=options["jobs"],
        )
        markdown = comparison_markdown(comparison)
        self.stdout.write(markdown)
        command = "python manage.py simulate " + " ".join(sys.argv[2:])
        for key, text in (("markdown", markdown), ("report", comparison_html(comparison, command=command))):
            if options[key]:
                path = Path(options[key])
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(text, encoding="utf-8")
                self.stderr.write(f"wrote {path}")

    def _trace(self, options: dict[str, Any]) -> Trace:
        try:
            if options["trace"] == "request-log":
                rows = RequestLog.objects.filter(status=200).values("at", "prompt_tokens", "output_tokens")
                trace = trace_from_request_log(rows)
            else:
                trace = trace_load(options["trace"])
            return trace.sped_up(options["speedup"]).rate_scaled(
                options["scale"], seed=options["seed"], window_s=options["scale_window_s"], cv=options["cv"]
            )
        except TraceError as exc:
            raise CommandError(str(exc)) from exc

    def _setup(self, engine: EngineModel, options: dict[str, Any]) -> SimSetup:
        try:
            return setup_build(
                engine=engine,
                gpus=options["gpus"],
                values=settings_file_read(options["policy_settings"]),
                seed=options["seed"],
                sla_ms=options["sla_ms"],
                sla_target=options["sla_target"],
                e2e_sla_ms=options.get("e2e_sla_ms"),
                sla_ms_per_1k_prompt_tokens=options.get("sla_ms_per_1k_prompt_tokens") or 0.0,
            )
        except (TypeError, ValueError) as exc:
            raise CommandError(f"settings: {exc}") from exc
