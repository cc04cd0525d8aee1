"""Replay a request trace through the panel's gateway in (sped-up) real time.

    python -m fleet.sim.replay --base-url http://127.0.0.1:8000/v1 --model NAME --trace conv [--speedup 2]

Each trace row (arrival time, prompt tokens, output tokens) becomes one chat completion
sent with the ``openai`` client and a team API key (``GPUFLEET_API_KEY``), at the row's
offset from the trace start divided by the speed-up. The prompt is filler text sized so
that the gateway's token estimate (characters / 4) gives the row's prompt tokens; rows of
the code trace wrap it in a fenced code block with code keywords, so the gateway's
request complexity fingerprint sees code as it would. ``max_tokens`` is the row's output
tokens. Every other request streams. The trace loops until the replayer is stopped. It
prints one progress line every ``--report-every`` seconds. Django is never set up here: the
replayer is a client of the panel like any other.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import logging
import os
import signal
import statistics
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import httpx
import openai

from fleet.gateway.counting import CHARS_PER_TOKEN, CHAT_MESSAGE_OVERHEAD, CHAT_REPLY_OVERHEAD

TRACES_DIR = Path(__file__).resolve().parent / "traces"
TRACES = {"conv": TRACES_DIR / "azure2023_conv.csv", "code": TRACES_DIR / "azure2023_code.csv"}
MAX_IN_FLIGHT = 512
REQUEST_TIMEOUT_S = 180.0

log = logging.getLogger("gpufleet.replay")


@dataclass(frozen=True)
class TraceRow:
    offset_s: float
    prompt_tokens: int
    output_tokens: int


def trace_path(name: str) -> Path:
    """``conv``, ``code`` or a path to a CSV with the Azure trace's columns."""
    return TRACES.get(name) or Path(name)


def trace_read(path: Path) -> list[TraceRow]:
    """Rows of an Azure-format trace (TIMESTAMP, ContextTokens, GeneratedTokens), offsets from the first."""
    rows: list[tuple[datetime, int, int]] = []
    with path.open(newline="") as handle:
        for record in csv.DictReader(handle):
            stamp = datetime.fromisoformat(record["TIMESTAMP"].strip()[:26])
            rows.append((stamp, int(record["ContextTokens"]), int(record["GeneratedTokens"])))
    if not rows:
        raise ValueError(f"{path} holds no requests")
    rows.sort()
    start = rows[0][0]
    return [TraceRow((stamp - start).total_seconds(), max(1, p), max(1, o)) for stamp, p, o in rows]


def prompt_text(tokens: int, *, code: bool) -> str:
    """Filler text that the gateway's estimate counts as ``tokens`` prompt tokens in one chat message."""
    body_tokens = max(1, tokens - CHAT_MESSAGE_OVERHEAD - CHAT_REPLY_OVERHEAD)
    if not code:
        return "the " * body_tokens
    fence = "```python\n"
    inner = max(0, body_tokens * CHARS_PER_TOKEN - 2 * len(fence))
    return fence + ("def " * (inner // 8) + "for " * (inner // 8)).ljust(inner) + fence


@dataclass
class Tally:
    sent: int = 0
    ok: int = 0
    failed: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)
    first_tokens: list[float] = field(default_factory=list)

    def line(self, elapsed: float, trace_s: float) -> str:
        """Counts so far; P95s over the requests finished since the previous line."""
        latencies, self.latencies = self.latencies, []
        first_tokens, self.first_tokens = self.first_tokens, []
        errors = ", ".join(f"{k}: {v}" for k, v in sorted(self.errors.items())) or "none"
        return (
            f"replay: {elapsed:5.0f} s wall, trace at {trace_s:6.0f} s; sent {self.sent}, ok {self.ok}, "
            f"failed {self.failed}; P95 end-to-end {_p95(latencies)}, time to first token {_p95(first_tokens)}"
            f" (streamed); errors: {errors}"
        )


def _p95(values: list[float]) -> str:
    if not values:
        return "-"
    return f"{statistics.quantiles(values, n=20)[-1] if len(values) >= 2 else values[0]:.2f} s"


class Replayer:
    def __init__(
        self, client: openai.AsyncOpenAI, model: str, rows: list[TraceRow], *, speedup: float, code: bool
    ) -> None:
        self.client, self.model, self.rows = client, model, rows
        self.speedup, self.code = speedup, code
        self.tally = Tally()
        self.limit = asyncio.Semaphore(MAX_IN_FLIGHT)
        self.span_s = rows[-1].offset_s + 1.0

    async def one(self, row: TraceRow, stream: bool) -> None:
        messages = [{"role": "user", "content": prompt_text(row.prompt_tokens, code=self.code)}]
        started = time.monotonic()
        first: float | None = None
        try:
            if stream:
                chunks = await self.client.chat.completions.create(
                    model=self.model, messages=messages, max_tokens=row.output_tokens, stream=True
                )
                async for chunk in chunks:
                    if first is None and chunk.choices and chunk.choices[0].delta.content:
                        first = time.monotonic() - started
            else:
                await self.client.chat.completions.create(
                    model=self.model, messages=messages, max_tokens=row.output_tokens
                )
        except (openai.APIError, httpx.HTTPError) as exc:
            self.tally.failed += 1
            key = str(getattr(exc, "status_code", None) or type(exc).__name__)
            self.tally.errors[key] = self.tally.errors.get(key, 0) + 1
        else:
            self.tally.ok += 1
            self.tally.latencies.append(time.monotonic() - started)
            if first is not None:
                self.tally.first_tokens.append(first)
        finally:
            self.limit.release()

    async def run(self, *, report_every_s: float, stop: asyncio.Event) -> None:
        started = time.monotonic()
        next_report = started + report_every_s
        tasks: set[asyncio.Task[None]] = set()
        lap = 0
        while not stop.is_set():
            for index, row in enumerate(self.rows):
                due = started + (lap * self.span_s + row.offset_s) / self.speedup
                while not stop.is_set() and (wait := due - time.monotonic()) > 0:
                    if time.monotonic() >= next_report:
                        trace_s = (time.monotonic() - started) * self.speedup % self.span_s
                        print(self.tally.line(time.monotonic() - started, trace_s), flush=True)
                        next_report += report_every_s
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), timeout=min(wait, 1.0))
                if stop.is_set():
                    break
                await self.limit.acquire()
                self.tally.sent += 1
                task = asyncio.create_task(self.one(row, stream=index % 2 == 1))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            lap += 1
        for task in tasks:
            task.cancel()


async def replay(args: argparse.Namespace) -> None:
    path = trace_path(args.trace)
    rows = trace_read(path)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    client = openai.AsyncOpenAI(
        base_url=args.base_url,
        api_key=os.environ.get("GPUFLEET_API_KEY", ""),
        timeout=REQUEST_TIMEOUT_S,
        max_retries=0,
        http_client=httpx.AsyncClient(limits=httpx.Limits(max_connections=MAX_IN_FLIGHT), timeout=REQUEST_TIMEOUT_S),
    )
    code = args.trace == "code" or "code" in path.stem
    print(
        f"replay: {len(rows)} requests of {path.name} (real trace), {rows[-1].offset_s:.0f} s long,"
        f" at {args.speedup:g}x through {args.base_url} as model {args.model}",
        flush=True,
    )
    async with client:
        await Replayer(client, args.model, rows, speedup=args.speedup, code=code).run(
            report_every_s=args.report_every, stop=stop
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m fleet.sim.replay", description=__doc__)
    parser.add_argument("--base-url", required=True, help="the gateway, e.g. http://127.0.0.1:8000/v1")
    parser.add_argument("--model", required=True, help="served model name the pools serve")
    parser.add_argument("--trace", default="conv", help="conv, code, or a CSV path")
    parser.add_argument("--speedup", type=float, default=1.0)
    parser.add_argument("--report-every", type=float, default=10.0)
    args = parser.parse_args(argv)
    if args.speedup <= 0:
        parser.error("--speedup must be positive")
    logging.basicConfig(level=logging.WARNING)
    asyncio.run(replay(args))


if __name__ == "__main__":
    main()
