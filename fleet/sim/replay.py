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
import logging
import os
import signal
import statistics
import time
from dataclasses import dataclass, field

import httpx
import openai
from openai.types.chat import ChatCompletionMessageParam

from fleet.gateway.counting import CHARS_PER_TOKEN, CHAT_MESSAGE_OVERHEAD, CHAT_REPLY_OVERHEAD
from fleet.sim.traces import Trace, TraceRequest, trace_load

# The demo's short names for the two Azure traces; anything else goes to ``trace_load``.
SHORT_NAMES = {"conv": "azure-conv", "code": "azure-code"}
API_KEY_ENV = "GPUFLEET_API_KEY"
MAX_IN_FLIGHT = 512
REQUEST_TIMEOUT_S = 180.0

log = logging.getLogger("gpufleet.replay")


def trace_for(name: str) -> Trace:
    """``conv``, ``code``, a built-in trace name or a CSV/JSONL path (see ``fleet.sim.traces``)."""
    return trace_load(SHORT_NAMES.get(name, name))


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
    def __init__(self, client: openai.AsyncOpenAI, model: str, trace: Trace, *, speedup: float, code: bool) -> None:
        self.client, self.model, self.rows = client, model, trace.requests
        self.speedup, self.code = speedup, code
        self.tally = Tally()
        self.limit = asyncio.Semaphore(MAX_IN_FLIGHT)
        self.span_s = trace.duration_s + 1.0

    async def one(self, row: TraceRequest, stream: bool) -> None:
        messages: list[ChatCompletionMessageParam] = [
            {"role": "user", "content": prompt_text(row.prompt_tokens, code=self.code)}
        ]
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
                due = started + (lap * self.span_s + row.arrival_s) / self.speedup
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
    trace = trace_for(args.trace)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    client = openai.AsyncOpenAI(
        base_url=args.base_url,
        api_key=os.environ[API_KEY_ENV],
        timeout=REQUEST_TIMEOUT_S,
        max_retries=0,
        # openai takes a client of the httpx the project pins as well; its types name only httpx2.
        http_client=httpx.AsyncClient(  # type: ignore[arg-type]
            limits=httpx.Limits(max_connections=MAX_IN_FLIGHT), timeout=REQUEST_TIMEOUT_S
        ),
    )
    code = "code" in trace.name
    print(
        f"replay: {len(trace.requests)} requests of {trace.name}, {trace.duration_s:.0f} s long,"
        f" at {args.speedup:g}x through {args.base_url} as model {args.model}",
        flush=True,
    )
    async with client:
        await Replayer(client, args.model, trace, speedup=args.speedup, code=code).run(
            report_every_s=args.report_every, stop=stop
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m fleet.sim.replay", description=__doc__)
    parser.add_argument("--base-url", required=True, help="the gateway, e.g. http://127.0.0.1:8000/v1")
    parser.add_argument("--model", required=True, help="served model name the pools serve")
    parser.add_argument("--trace", default="conv", help="conv, code, or a CSV/JSONL path")
    parser.add_argument("--speedup", type=float, default=1.0)
    parser.add_argument("--report-every", type=float, default=10.0)
    args = parser.parse_args(argv)
    if args.speedup <= 0:
        parser.error("--speedup must be positive")
    if not os.environ.get(API_KEY_ENV):
        parser.error(f"set {API_KEY_ENV} to a team API key of the panel")
    logging.basicConfig(level=logging.WARNING)
    asyncio.run(replay(args))


if __name__ == "__main__":
    main()
