"""Request traces for the simulator: arrival time, prompt tokens and output tokens per request.

A trace can be a published one (the Azure LLM inference traces under ``traces/``), the
gateway's own request log (rows of ``RequestLog``, or that table exported to CSV/JSONL),
or any CSV or JSONL file that names the three quantities with one of the column names
below. Times are either wall-clock timestamps (ISO 8601) or seconds; either way the trace
is returned sorted and shifted so the first request arrives at 0 s, keeping the wall-clock
start so time-of-day policies (pre-warm) see the real hour.

A trace can also be generated: arrivals drawn from a rate per window (``arrivals_from_rates``),
a recorded trace's own rate scaled (``Trace.rate_scaled``) or a rate series exported from a
metrics store (``trace_from_rate_series``), with token lengths drawn from a reference.
"""

from __future__ import annotations

import csv
import gc
import itertools
import json
import math
import random
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
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
# A rate series: ServeGen's export, Prometheus/Grafana CSV exports ("Time" and the series' value).
RATE_TIME_COLUMNS = ("window_start_s", "timestamp", "Time", "time", "start")
RATE_COLUMNS = ("total_rate_rps", "rate_rps", "rate", "value", "Value", "requests_per_s")
RATE_LENGTH_COLUMNS = ("window_s", "length_s", "step_s")
# Azure writes 7 fractional digits; datetime takes at most 6.
LONG_FRACTION = re.compile(r"(\.\d{6})\d+")
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class TraceError(ValueError):
    """A trace that cannot be read, with the file, the row and what was wrong."""


@dataclass(frozen=True, slots=True)
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

    def rate_profile(self, window_s: float = 60.0) -> list[RateWindow]:
        """The trace's own arrival rate per ``window_s`` window: (start s, length s, requests per second).

        Windows cover 0 s to the last arrival; the last one ends there (it may be shorter).
        """
        if window_s <= 0:
            raise TraceError(f"rate window must be positive, got {window_s}")
        end = self.duration_s
        count = max(1, math.ceil(end / window_s))
        counts = [0] * count
        for request in self.requests:
            counts[min(count - 1, int(request.arrival_s // window_s))] += 1
        windows = []
        for index, arrivals in enumerate(counts):
            start = index * window_s
            length = min(window_s, end - start) if end > start else window_s
            windows.append((start, length, arrivals / length))
        return windows

    def rate_scaled(self, factor: float, *, seed: int, window_s: float = 60.0, cv: float = 1.0) -> Trace:
        """New arrivals at ``factor`` times the trace's own rate in each ``window_s`` window.

        Arrivals are drawn afresh (``arrivals_from_rates``: Poisson within a window for
        ``cv`` 1, burstier above), token lengths drawn from the trace's own (prompt,
        output) pairs. The trace's clock is kept (its ramps and silences last as long as
        they did), and no request is a copy of another: copies within a second of each
        other would arrive as one burst, which no real traffic at that rate does. Below
        the window the trace's own burstiness is replaced by the stated ``cv``; a smaller
        window keeps more of it. ``factor`` 1 with ``cv`` 1 is the trace as recorded.
        """
        if factor <= 0:
            raise TraceError(f"rate scale must be positive, got {factor}")
        if factor == 1 and cv == 1:
            return self
        windows = [(start, length, rate * factor) for start, length, rate in self.rate_profile(window_s)]
        label = f"{self.name} rate x{factor:g}" + (f" cv {cv:g}" if cv != 1 else "")
        return trace_from_arrivals(
            arrivals_from_rates(windows, seed=seed, cv=cv), lengths=self, seed=seed, name=label, start=self.start
        )


# (window start in seconds, window length in seconds, requests per second)
RateWindow = tuple[float, float, float]
# Token lengths for generated arrivals: a reference trace's (prompt, output) pairs, a list of
# such pairs (an empirical distribution), or a function drawing one pair.
LengthSource = Trace | Sequence[tuple[int, int]] | Callable[[random.Random], tuple[int, int]]


def arrivals_from_rates(windows: Iterable[RateWindow], *, seed: int, cv: float = 1.0) -> list[float]:
    """Arrival times, sorted, of a renewal process whose rate is constant within each window.

    ``cv`` is the coefficient of variation of the gaps between arrivals: 1 is a Poisson
    process (exponential gaps; within a window of rate r over L seconds the count is
    Poisson(r x L)), above 1 burstier (gamma gaps of shape 1/cv^2), below 1 more regular.
    The process runs on the windows' cumulative expected count (time rescaling), so a gap
    that straddles a window boundary continues at the next window's rate, and a zero-rate
    window is silence. Seeded: the same windows, seed and cv give the same times.
    """
    if cv <= 0:
        raise TraceError(f"the gaps' coefficient of variation must be positive, got {cv}")
    draw = random.Random(seed)
    if cv == 1:
        expovariate = draw.expovariate

        def gap() -> float:
            return expovariate(1.0)

    else:
        shape = 1 / cv**2
        gammavariate = draw.gammavariate

        def gap() -> float:
            return gammavariate(shape, 1 / shape)  # mean 1, variance 1 / shape = cv^2

    times: list[float] = []
    append = times.append
    previous_end = -math.inf
    # ``due`` is how much expected count remains until the next arrival, from the current window's start.
    due = gap()
    for start, length, rate in sorted(windows):
        if length <= 0 or rate < 0 or not math.isfinite(rate):
            raise TraceError(f"window at {start:g} s: length {length:g} s and rate {rate:g}/s must be positive")
        if start < previous_end:
            raise TraceError(f"window at {start:g} s overlaps the one before it")
        previous_end = start + length
        if rate == 0:
            continue
        expected = rate * length
        per_count = 1 / rate
        while due < expected:
            append(start + due * per_count)
            due += gap()
        due -= expected
    return times


def _length_pairs(lengths: Trace | Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    if isinstance(lengths, Trace):
        return [(r.prompt_tokens, r.output_tokens) for r in lengths.requests]
    return [(int(prompt), int(output)) for prompt, output in lengths]


def trace_from_arrivals(
    arrivals: Sequence[float], *, lengths: LengthSource, seed: int, name: str, start: datetime = EPOCH
) -> Trace:
    """A trace of the given arrival times with token lengths drawn (seeded) from ``lengths``."""
    draw = random.Random(f"lengths {seed}")
    if callable(lengths):
        chosen = [lengths(draw) for _ in arrivals]
    else:
        pairs = _length_pairs(lengths)
        if not pairs:
            raise TraceError(f"{name}: no (prompt, output) pairs to draw token lengths from")
        chosen = draw.choices(pairs, k=len(arrivals))
    # Millions of new objects, none of them cyclic: the cyclic collector would only rescan them.
    collecting = gc.isenabled()
    gc.disable()
    try:
        requests = tuple(
            TraceRequest(at, prompt, max(1, output)) for at, (prompt, output) in zip(arrivals, chosen, strict=True)
        )
    finally:
        if collecting:
            gc.enable()
    return Trace(name=name, start=start, requests=requests)


@dataclass(frozen=True)
class RateSeries:
    """Request rates per window, as exported from a metrics store (``rate_series_load``)."""

    name: str
    start: datetime
    windows: tuple[RateWindow, ...]
    # Windows the file left empty or NaN (no data), kept as zero-rate: silence, not traffic.
    missing: int = 0

    @property
    def zero_windows(self) -> int:
        return sum(1 for _, _, rate in self.windows if rate == 0)

    @property
    def mean_rate(self) -> float:
        span = sum(length for _, length, _ in self.windows)
        return sum(length * rate for _, length, rate in self.windows) / span if span else 0.0


def rate_series_from_rows(
    rows: Iterable[Mapping[str, Any]], *, name: str, fields: Iterable[str] | None = None, window_s: float | None = None
) -> RateSeries:
    """Rate windows from mappings with a window start and a rate (requests per second).

    The start is seconds or a timestamp (``_moment``); a window lasts one step of the
    export (the shortest distance between starts), unless a length column or ``window_s``
    says otherwise. An empty or NaN rate (a metrics store's "no data") is kept as a
    zero-rate window, and an absent row leaves its step uncovered, which is silence too;
    both are counted in ``missing``. A zero is silence either way.
    Shifted so the first window starts at 0 s, keeping its wall-clock start.
    """
    rows = list(rows)
    if not rows:
        raise TraceError(f"{name}: the rate series has no rows")
    columns = list(fields) if fields is not None else list(rows[0])
    time_key = _column(columns, RATE_TIME_COLUMNS, "window start", name)
    others = [column for column in columns if column != time_key]
    rate_key = next((c for c in RATE_COLUMNS if c in columns), others[0] if len(others) == 1 else None)
    if rate_key is None:
        raise TraceError(
            f"{name}: no rate column; expected one of {', '.join(RATE_COLUMNS)}, found {', '.join(columns)}"
        )
    length_key = next((c for c in RATE_LENGTH_COLUMNS if c in columns), None)
    parsed: list[tuple[datetime | float, float, float | None]] = []
    missing = 0
    for number, row in enumerate(rows, start=1):
        try:
            text = str(row[rate_key] if row[rate_key] is not None else "").strip()
            rate = float(text) if text else math.nan
            if math.isnan(rate):
                missing += 1
                rate = 0.0
            if rate < 0 or not math.isfinite(rate):
                raise ValueError(f"rate {text!r} is not a non-negative number")
            length = float(row[length_key]) if length_key else window_s
            parsed.append((_moment(row[time_key]), rate, length))
        except (KeyError, TypeError, ValueError) as exc:
            raise TraceError(f"{name}: row {number}: {exc}") from exc
    if len({type(moment) for moment, _, _ in parsed}) > 1:
        raise TraceError(f"{name}: window starts mix timestamps and seconds")
    parsed.sort(key=lambda item: item[0])
    first = parsed[0][0]
    if isinstance(first, datetime):
        start = first
        offsets = [(cast(datetime, moment) - first).total_seconds() for moment, _, _ in parsed]
    else:
        start = EPOCH + timedelta(seconds=first)
        offsets = [float(cast(float, moment)) - first for moment, _, _ in parsed]
    steps = [b - a for a, b in itertools.pairwise(offsets)]
    if any(step <= 0 for step in steps):
        raise TraceError(f"{name}: two windows start at the same time")
    # The export's step: the shortest distance between window starts (absent rows only make some longer).
    step = min(steps) if steps else None
    windows: list[RateWindow] = []
    for index, (offset, (_, rate, length)) in enumerate(zip(offsets, parsed, strict=True)):
        if length is None:
            if step is None:
                raise TraceError(f"{name}: one window and no length; give the window length")
            length = min(step, steps[index]) if index < len(steps) else step
        if length <= 0:
            raise TraceError(f"{name}: window at {offset:g} s has no length")
        if index < len(steps) and step is not None and steps[index] > 1.5 * step:
            # Absent rows (Prometheus writes no point where there is no data): silence, counted as missing.
            missing += round(steps[index] / step) - 1
        windows.append((offset, length, rate))
    return RateSeries(name=name, start=start, windows=tuple(windows), missing=missing)


def rate_series_load(path: str | Path, *, window_s: float | None = None) -> RateSeries:
    """Read a rate series CSV: a window start column and a rate column (see ``rate_series_from_rows``).

    A file of two columns without a header (Prometheus' ``query_range`` values written out as
    CSV: Unix time, rate) is read as such.
    """
    path = Path(path)
    if not path.is_file():
        raise TraceError(f"{path}: no such file")
    with path.open(encoding="utf-8", newline="") as handle:
        rows = [row for row in csv.reader(handle) if row]
    if not rows:
        raise TraceError(f"{path.stem}: the rate series has no rows")
    header = rows[0]
    if len(header) == 2 and not set(header) & set(RATE_TIME_COLUMNS) and _is_moment(header[0]):
        header, data = ["timestamp", "value"], rows
    else:
        data = rows[1:]
    records = [dict(zip(header, row, strict=False)) for row in data]
    return rate_series_from_rows(records, name=path.stem, fields=header, window_s=window_s)


def _is_moment(text: str) -> bool:
    try:
        _moment(text)
    except ValueError:
        return False
    return True


def trace_from_rate_series(
    rows_or_path: RateSeries | str | Path | Iterable[RateWindow],
    *,
    lengths: LengthSource,
    seed: int,
    cv: float = 1.0,
    scale: float = 1.0,
) -> Trace:
    """Arrivals at ``scale`` x the series' rates (``arrivals_from_rates``), token lengths drawn from ``lengths``.

    A provider's rates are far above one fleet's: ``scale`` brings them to its size (the
    shape, not the volume, is what a policy meets). Zero-rate windows, including those
    the source had no data for, stay silent; the trace's name says how many there were.
    """
    if scale <= 0:
        raise TraceError(f"rate scale must be positive, got {scale}")
    if isinstance(rows_or_path, RateSeries):
        series = rows_or_path
    elif isinstance(rows_or_path, str | Path):
        series = rate_series_load(rows_or_path)
    else:
        series = RateSeries(name="rate series", start=EPOCH, windows=tuple(rows_or_path))
    windows = [(start, length, rate * scale) for start, length, rate in series.windows]
    name = f"{series.name} x{scale:g}" + (f" cv {cv:g}" if cv != 1 else "")
    if series.zero_windows:
        name += f" ({series.zero_windows} zero-rate windows kept silent"
        name += f", {series.missing} without data)" if series.missing else ")"
    return trace_from_arrivals(
        arrivals_from_rates(windows, seed=seed, cv=cv), lengths=lengths, seed=seed, name=name, start=series.start
    )


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
