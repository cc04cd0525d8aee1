"""Fit the simulator's engine model to the gateway's request log (``simulate --engine`` reads the result)."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone

from fleet.models import RequestLog
from fleet.sim.fit import engine_fit


class Command(BaseCommand):
    help = "Least-squares fit of prefill rate and decode step time to the gateway's RequestLog."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--from-request-log", action="store_true", required=True)
        parser.add_argument("--days", type=float, default=7.0, help="Use requests from the last N days.")
        parser.add_argument("--pool", type=int, help="Only requests served by this pool id.")
        parser.add_argument("--output", help="Write the fitted engine fields here as JSON.")

    def handle(self, *args: Any, days: float, pool: int | None, output: str | None, **options: Any) -> None:
        rows = RequestLog.objects.filter(status=200, at__gte=timezone.now() - timedelta(days=days))
        if pool is not None:
            rows = rows.filter(pool_id=pool)
        try:
            fit = engine_fit(rows.values("prompt_tokens", "output_tokens", "ttft_ms", "latency_ms").iterator())
        except ValueError as exc:
            raise CommandError(f"cannot fit the request log: {exc}") from exc
        fields = fit.engine_fields()
        text = json.dumps(fields, indent=2)
        self.stdout.write(text)
        if output:
            Path(output).write_text(text + "\n", encoding="utf-8")
            self.stderr.write(f"wrote {output}")
