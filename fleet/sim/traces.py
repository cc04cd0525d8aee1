"""Request traces for the simulator: arrival time, prompt tokens and output tokens per request.

A trace can be a published one (the Azure LLM inference traces under ``traces/``), the
gateway's own request log (rows of ``RequestLog``, or that table exported to CSV/JSONL),
or any CSV or JSONL file that names the three quantities with one of the column names
below. Times are either wall-clock timestamps (ISO 8601) or seconds; either way the trace
is returned sorted and shifted so the first request arrives at 0 s, keeping the wall-clock
start so time-of-day policies (pre-warm) see the real hour.
"""

from __future__ import annotations

import csv
import json
import random
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

TRACES_DIR = Path(__file__).resolve().parent / "traces"
BUILTIN = {
    "azure-code": TRACES_DIR / "azure2023_code.csv",
    "azure-conv": TRACES_DIR / "azure2023_conv.csv",
}
# Accepted column names, first match wins: Azure's, the gateway's RequestLog, common others.
TIME_COLUMNS = ("arrival_s", "TIMESTAMP", "at", "timestamp", "time", "arrival_time")
PROMPT_COLUMNS = ("prompt_tokens", "ContextTokens", "input_tokens", "context_tokens")
OUTPUT_COLUMNS = ("output_tokens", "GeneratedTokens", "completion_tokens", "generated_tokens")
# Azure writes 7 fractional digits; datetime takes at most 6.
LONG_FRACTION = re.compile(r"(\.\d{6})\d+")
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class TraceError(ValueError):
    """A trace that cannot be read, with the file, the row and what was wrong."""


@dataclass(frozen=True)
class TraceRequest:
    arrival_s: float
    prompt_tokens: int
    output_tokens: int


@dataclass(frozen=True)
class Trace:
    name: str
    start: datetime
    requests: tuple[TraceRequest, ...]

    @property
    def duration_s(self) -> float:
        return self.requests[-1].arrival_s if self.requests else 0.0

    def sped_up(self, factor: float) -> Trace:
        """The same requests with arrival gaps divided by ``factor`` (more load per second)."""
        if factor <= 0:
            raise TraceError(f"speed-up must be positive, got {factor}")
        if factor == 1:
            return self
        requests = tuple(TraceRequest(r.arrival_s / factor, r.prompt_tokens, r.output_tokens) for r in self.requests)
        return Trace(name=f"{self.name} x{factor:g}", start=self.start, requests=requests)

    def scaled(self, copies: int, *, seed: int, jitter_s: float = 1.0) -> Trace:
        """``copies`` requests for each one, the extra ones moved by up to ``jitter_s`` either way.

        Unlike a speed-up this keeps the trace's clock: its ramps, bursts and silent gaps
        last as long as they did, against the same policy tick, only with more traffic.
        """
        if copies < 1:
            raise TraceError(f"scale must be a whole number of copies >= 1, got {copies}")
        if copies == 1:
            return self
        draw = random.Random(seed)
        requests = [
            TraceRequest(
                max(0.0, r.arrival_s + (draw.uniform(-jitter_s, jitter_s) if copy else 0.0)),
                r.prompt_tokens,
                r.output_tokens,
            )
            for r in self.requests
            for copy in range(copies)
        ]
        requests.sort(key=lambda r: r.arrival_s)
        return Trace(name=f"{self.name} scale {copies}", start=self.start, requests=tuple(requests))


def _column(fields: Iterable[str], wanted: tuple[str, ...], what: str, source: str) -> str:
    present = list(fields)
    for name in wanted:
        if name in present:
            return name
    raise TraceError(f"{source}: no {what} column; expected one of {', '.join(wanted)}, found {', '.join(present)}")


def _moment(value: Any) -> datetime | float:
    """A number of seconds, or a timestamp (naive ones are taken as UTC)."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    text = str(value).strip()
    try:
        return float(text)
    except ValueError:
        pass
    text = LONG_FRACTION.sub(lambda match: match.group(1), text)
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _tokens(value: Any, *, allow_zero: bool) -> int:
    number = float(value)
    if number != int(number) or number < (0 if allow_zero else 1):
        raise ValueError(f"{value!r} is not a {'non-negative' if allow_zero else 'positive'} whole number")
    return int(number)


def trace_from_rows(rows: Iterable[Mapping[str, Any]], *, name: str, fields: Iterable[str] | None = None) -> Trace:
    """Build a trace from mappings; raise ``TraceError`` naming the row of the first bad value."""
    rows = list(rows)
    if not rows:
        raise TraceError(f"{name}: the trace has no requests")
    columns = list(fields) if fields is not None else list(rows[0])
    time_key = _column(columns, TIME_COLUMNS, "arrival time", name)
    prompt_key = _column(columns, PROMPT_COLUMNS, "prompt tokens", name)
    output_key = _column(columns, OUTPUT_COLUMNS, "output tokens", name)
    parsed: list[tuple[datetime | float, int, int]] = []
    for number, row in enumerate(rows, start=1):
        try:
            parsed.append(
                (
                    _moment(row[time_key]),
                    _tokens(row[prompt_key], allow_zero=False),
                    _tokens(row[output_key], allow_zero=True),
                )
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise TraceError(f"{name}: row {number}: {exc}") from exc
    kinds = {type(moment) for moment, _, _ in parsed}
    if len(kinds) > 1:
        raise TraceError(f"{name}: arrival times mix timestamps and seconds")
    parsed.sort(key=lambda item: item[0])
    first = parsed[0][0]
    # One kind of arrival time throughout (checked above): all timestamps or all seconds.
    if isinstance(first, datetime):
        start = first
        offsets = [(cast(datetime, moment) - first).total_seconds() for moment, _, _ in parsed]
    else:
        start = EPOCH
        offsets = [float(cast(float, moment)) - first for moment, _, _ in parsed]
    requests = tuple(
        TraceRequest(offset, prompt, max(1, output))
        for offset, (_, prompt, output) in zip(offsets, parsed, strict=True)
    )
    return Trace(name=name, start=start, requests=requests)


def trace_load(source: str | Path) -> Trace:
    """Read a built-in trace by name (``azure-code``, ``azure-conv``) or a CSV/JSONL file."""
    path = BUILTIN.get(str(source), Path(source))
    if not path.is_file():
        known = ", ".join(BUILTIN)
        raise TraceError(f"{source}: no such file (built-in traces: {known})")
    name = str(source) if str(source) in BUILTIN else path.stem
    if path.suffix.lower() in (".jsonl", ".ndjson"):
        rows = []
        with path.open(encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise TraceError(f"{path.name}: line {number}: not JSON ({exc.msg})") from exc
                if not isinstance(row, dict):
                    raise TraceError(f"{path.name}: line {number}: expected a JSON object")
                rows.append(row)
        return trace_from_rows(rows, name=name)
    with path.open(encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        return trace_from_rows(reader, name=name, fields=reader.fieldnames or [])


def trace_from_request_log(rows: Iterable[Any], *, name: str = "request log") -> Trace:
    """The gateway's ``RequestLog`` rows (model instances or ``values()`` dicts) with token counts."""
    usable = [
        {"at": row["at"], "prompt_tokens": row["prompt_tokens"], "output_tokens": row["output_tokens"]}
        for row in (r if isinstance(r, Mapping) else vars(r) for r in rows)
        if row.get("prompt_tokens") and row.get("output_tokens") is not None
    ]
    return trace_from_rows(usable, name=name, fields=("at", "prompt_tokens", "output_tokens"))
