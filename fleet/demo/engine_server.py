"""A SIMULATED vLLM server for the demo fleet: vLLM's HTTP API, timed by the engine model.

    python -m fleet.demo.engine_server --model M --served-model-name NAME --port P [vLLM flags]

It answers the subset of vLLM's OpenAI-compatible server that the panel uses
(``/v1/chat/completions`` and ``/v1/completions``, streamed or not, ``/v1/models``,
``/health``, ``/metrics`` in vLLM's Prometheus names, and the sleep-mode endpoints
``/sleep``, ``/wake_up``, ``/is_sleeping``), so the real agent scrapes it and the real
gateway routes to it. No model runs: requests are queued into ``fleet.sim.engine.EngineCore``
and its continuous-batching steps are played out in wall-clock time, so latencies, queue
lengths and KV-cache use follow the documented performance model of the GPU it was
given. The generated text is filler and says it is simulated. The engine writes its duty
cycle and memory to the status file the simulated GPUs read (``agents.simulated``).

vLLM flags it does not model (``--dtype``, ``--enable-prefix-caching`` ...) are accepted
and ignored. Django is never set up here (no settings, no database): the process runs beside
the agent, not the panel.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import itertools
import json
import logging
import os
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import uvicorn
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily

from agents.simulated import (
    ENV_GPU_MEMORY,
    ENV_GPU_MODEL,
    ENV_MIG_MEMORY_SHARE,
    ENV_MIG_SHARE,
    ENV_STATUS_FILE,
    status_write,
)
from fleet.catalog import GIB
from fleet.gateway.counting import CHAT_MESSAGE_OVERHEAD, CHAT_REPLY_OVERHEAD, ESTIMATE
from fleet.sim.engine import (
    E2E_BUCKETS,
    GPU_FACTS,
    GPU_MEMORY_UTILIZATION,
    PROFILES,
    TTFT_BUCKETS,
    EngineCore,
    EngineModel,
    SimRequest,
    engine_model_for,
    kv_cache_tokens_for,
)

log = logging.getLogger("gpufleet.sim.engine_server")

# The engine is stepped ahead of the wall clock by at most this much, then waits: one
# wake-up per tick keeps a busy simulated engine to a few percent of a laptop core.
TICK_S = 0.02
STATUS_EVERY_S = 0.25
# Streams carry the tokens made since their last event at most this often (the first at
# once), which keeps many simulated streams from costing the laptop more than the panel.
STREAM_EVERY_S = 0.1
DUTY_WINDOW_S = 1.0
# vLLM generates until end-of-sequence or max_tokens; a simulated model has no EOS.
DEFAULT_MAX_TOKENS = 128
# What a sleeping (level 1) engine still holds: its CUDA context.
SLEEPING_BYTES = GIB // 2
FILLER = ("simulated", " output", " from", " a", " simulated", " engine", ".")

Scope = dict[str, Any]
Send = Callable[[dict[str, Any]], Awaitable[None]]
Receive = Callable[[], Awaitable[dict[str, Any]]]


class BadRequest(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclasses.dataclass
class Tracked:
    """A request in the engine, with the progress the server has published so far."""

    request: SimRequest
    generated: int = 0
    done: bool = False
    finished: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)


class SimulatedEngine:
    """The engine core played out in wall-clock time, with vLLM's metrics and sleep mode."""

    def __init__(
        self,
        model: EngineModel,
        *,
        served_name: str,
        max_model_len: int,
        memory_bytes: int,
        gpu_uuids: list[str],
        status_file: Path | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.model = model
        self.core = EngineCore(model)
        self.served_name = served_name
        self.max_model_len = max_model_len
        self.memory_bytes = memory_bytes
        self.gpu_uuids = gpu_uuids
        self.status_file = status_file
        self.clock = clock
        self.started = clock()
        self.ready_at = self.started + model.cold_start_s
        self.sleeping = False
        self.tracked: dict[str, Tracked] = {}
        self._virtual = self.started
        self._work = asyncio.Event()
        self._progress = asyncio.Event()
        self._ids = itertools.count(1)
        self.registry = CollectorRegistry()
        labels = ["model_name"]
        self.ttft = Histogram(
            "vllm:time_to_first_token_seconds", "Time to first token (simulated).", labels, registry=self.registry,
            buckets=TTFT_BUCKETS,
        )  # fmt: skip
        self.e2e = Histogram(
            "vllm:e2e_request_latency_seconds", "End-to-end request latency (simulated).", labels,
            registry=self.registry, buckets=E2E_BUCKETS,
        )  # fmt: skip
        self.prompt_tokens = Counter("vllm:prompt_tokens", "Prompt tokens (simulated).", labels, registry=self.registry)
        self.generation_tokens = Counter(
            "vllm:generation_tokens", "Generated tokens (simulated).", labels, registry=self.registry
        )
        self.success = Counter(
            "vllm:request_success",
            "Finished requests (simulated).",
            [*labels, "finished_reason"],
            registry=self.registry,
        )
        self.registry.register(_Gauges(self))
        # Series exist from the start, at zero, as vLLM's do: the first scrape is a baseline.
        for metric in (self.ttft, self.e2e, self.prompt_tokens, self.generation_tokens):
            metric.labels(served_name)
        self.success.labels(served_name, "length")

    # -- state --------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return self.clock() >= self.ready_at

    def held_bytes(self) -> int:
        """vLLM takes its whole memory budget at start; weights first, then the KV cache."""
        if self.sleeping:
            return SLEEPING_BYTES
        if not self.ready:
            return min(self.memory_bytes, 8 * GIB)
        return self.memory_bytes

    def duty_cycle(self) -> float:
        now = self.clock()
        return self.core.busy_fraction(now - DUTY_WINDOW_S, now)

    # -- requests -----------------------------------------------------------------------

    def submit(self, prompt_tokens: int, output_tokens: int) -> Tracked:
        if prompt_tokens + output_tokens > self.max_model_len:
            raise BadRequest(
                400,
                f"This model's maximum context length is {self.max_model_len} tokens. However, you requested "
                f"{prompt_tokens + output_tokens} tokens ({prompt_tokens} in the messages, {output_tokens} in the "
                "completion). Please reduce the length of the messages or completion.",
            )
        request = SimRequest(f"sim-{next(self._ids)}", self.clock(), prompt_tokens, output_tokens)
        try:
            self.core.submit(request, request.arrival_s)
        except ValueError as exc:
            raise BadRequest(400, str(exc)) from exc
        tracked = Tracked(request)
        self.tracked[request.id] = tracked
        self.prompt_tokens.labels(self.served_name).inc(prompt_tokens)
        self._work.set()
        return tracked

    async def progress(self, tracked: Tracked, seen: int) -> int:
        """Wait until ``tracked`` has more than ``seen`` tokens or is done; its token count."""
        while tracked.generated <= seen and not tracked.done:
            await self._progress.wait()
        return tracked.generated

    def _publish(self) -> None:
        for tracked in self.tracked.values():
            tracked.generated = self.core.tokens_generated(tracked.request.id)
        for request in self.core.pop_finished():
            tracked = self.tracked.pop(request.id)
            tracked.generated, tracked.done = request.output_tokens, True
            tracked.finished.set()
            assert request.first_token_s is not None and request.finished_s is not None
            self.ttft.labels(self.served_name).observe(request.first_token_s - request.arrival_s)
            self.e2e.labels(self.served_name).observe(request.finished_s - request.arrival_s)
            self.generation_tokens.labels(self.served_name).inc(request.output_tokens)
            self.success.labels(self.served_name, "length").inc()
        self._progress.set()
        self._progress = asyncio.Event()

    async def drive(self) -> None:
        """Step the core ahead to at most ``TICK_S`` past now, sleep until then, publish."""
        while True:
            if self.sleeping or not self.ready or (self.core.waiting == 0 and self.core.running == 0):
                self._work.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._work.wait(), timeout=max(0.05, self.ready_at - self.clock()))
                continue
            now = self.clock()
            self._virtual = max(self._virtual, now)
            while self._virtual < now + TICK_S:
                duration = self.core.step(self._virtual)
                if duration == 0.0:
                    break
                self._virtual += duration
            await asyncio.sleep(max(0.0, self._virtual - self.clock()))
            self._publish()

    async def report_status(self) -> None:
        while self.status_file is not None:
            status_write(
                self.status_file,
                gpu_uuids=self.gpu_uuids,
                memory_bytes=self.held_bytes(),
                duty_cycle=self.duty_cycle(),
            )
            await asyncio.sleep(STATUS_EVERY_S)

    async def sleep(self, level: int) -> None:
        await asyncio.sleep(self.model.sleep_s)
        self.sleeping = level >= 1

    async def wake_up(self) -> None:
        if self.sleeping:
            await asyncio.sleep(self.model.wake_s)
        self.sleeping = False
        self._work.set()


class _Gauges:
    """vLLM's gauges, read from the engine at scrape time."""

    def __init__(self, engine: SimulatedEngine) -> None:
        self.engine = engine

    def collect(self) -> list[GaugeMetricFamily]:
        engine = self.engine
        values = (
            ("vllm:num_requests_running", "Requests in the running batch.", engine.core.running),
            ("vllm:num_requests_waiting", "Requests waiting for the batch.", engine.core.waiting),
            ("vllm:kv_cache_usage_perc", "KV-cache usage, 1 = full.", engine.core.kv_usage),
        )
        families = []
        for name, documentation, value in values:
            family = GaugeMetricFamily(name, documentation + " (simulated)", labels=["model_name"])
            family.add_metric([engine.served_name], float(value))
            families.append(family)
        return families


# -- the OpenAI-compatible API -----------------------------------------------------------


def _text(index: int) -> str:
    return FILLER[index % len(FILLER)]


def _max_tokens(payload: dict[str, Any], keys: tuple[str, ...]) -> int:
    for key in keys:
        value = payload.get(key)
        if value is not None:
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise BadRequest(400, f"{key} must be a positive integer.")
            return value
    return DEFAULT_MAX_TOKENS


def _chat_prompt_tokens(messages: Any) -> int:
    if not isinstance(messages, list) or not messages:
        raise BadRequest(400, "messages must be a non-empty list.")
    total = CHAT_REPLY_OVERHEAD
    for message in messages:
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, list):
            content = "".join(part.get("text", "") for part in content if isinstance(part, dict))
        total += CHAT_MESSAGE_OVERHEAD + ESTIMATE.count(content or "")
    return total


def _completion_prompts(prompt: Any) -> list[int]:
    if isinstance(prompt, str):
        return [ESTIMATE.count(prompt)]
    if isinstance(prompt, list) and prompt and all(type(item) is int for item in prompt):
        return [len(prompt)]
    if isinstance(prompt, list) and prompt and all(isinstance(item, str) for item in prompt):
        return [ESTIMATE.count(item) for item in prompt]
    if isinstance(prompt, list) and prompt and all(isinstance(item, list) for item in prompt):
        return [len(item) for item in prompt]
    raise BadRequest(400, "prompt must be a string, a list of strings, or token ids.")


class EngineApp:
    """The ASGI application in front of one ``SimulatedEngine``."""

    def __init__(self, engine: SimulatedEngine) -> None:
        self.engine = engine
        self._tasks: list[asyncio.Task[None]] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        try:
            await self._route(scope, receive, send)
        except BadRequest as exc:
            await _json(
                send,
                exc.status,
                {"object": "error", "message": str(exc), "type": "BadRequestError", "code": exc.status},
            )

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self._tasks = [
                    asyncio.create_task(self.engine.drive()),
                    asyncio.create_task(self.engine.report_status()),
                ]
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                for task in self._tasks:
                    task.cancel()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _route(self, scope: Scope, receive: Receive, send: Send) -> None:
        path, method, engine = scope["path"], scope["method"], self.engine
        if path == "/health":
            await _json(send, 200 if engine.ready else 503, {} if engine.ready else {"status": "loading (simulated)"})
        elif path == "/metrics":
            await _respond(send, 200, generate_latest(engine.registry), b"text/plain; version=0.0.4; charset=utf-8")
        elif path == "/v1/models":
            await _json(send, 200, {"object": "list", "data": [self._model_card()]})
        elif path == "/is_sleeping":
            await _json(send, 200, {"is_sleeping": engine.sleeping})
        elif path == "/sleep" and method == "POST":
            level = int((parse_qs(scope.get("query_string", b"").decode()).get("level") or ["1"])[0])
            await engine.sleep(level)
            await _respond(send, 200, b"", b"text/plain")
        elif path == "/wake_up" and method == "POST":
            await engine.wake_up()
            await _respond(send, 200, b"", b"text/plain")
        elif path in ("/v1/chat/completions", "/v1/completions") and method == "POST":
            if not engine.ready:
                raise BadRequest(503, "The simulated engine is still loading.")
            payload = await _body(receive)
            await self._complete(path == "/v1/chat/completions", payload, send)
        else:
            await _json(send, 404, {"detail": "Not Found"})

    def _model_card(self) -> dict[str, Any]:
        return {
            "id": self.engine.served_name,
            "object": "model",
            "created": int(time.time()),
            "owned_by": "vllm",
            "root": self.engine.served_name,
            "max_model_len": self.engine.max_model_len,
        }

    async def _complete(self, chat: bool, payload: dict[str, Any], send: Send) -> None:
        engine = self.engine
        model = payload.get("model")
        if model != engine.served_name:
            raise BadRequest(404, f"The model `{model}` does not exist.")
        if chat:
            prompts = [_chat_prompt_tokens(payload.get("messages"))]
            output = _max_tokens(payload, ("max_completion_tokens", "max_tokens"))
        else:
            prompts = _completion_prompts(payload.get("prompt"))
            output = _max_tokens(payload, ("max_tokens",))
        tracked = [engine.submit(tokens, output) for tokens in prompts]
        kind = "chat.completion" if chat else "text_completion"
        head = {
            "id": f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}",
            "created": int(time.time()),
            "model": model,
        }
        usage = {
            "prompt_tokens": sum(prompts),
            "completion_tokens": output * len(prompts),
            "total_tokens": sum(prompts) + output * len(prompts),
        }
        if payload.get("stream"):
            options = payload.get("stream_options") or {}
            await self._stream(chat, head, kind, tracked, usage if options.get("include_usage") else None, send)
            return
        for item in tracked:
            await item.finished.wait()
        choices = []
        for index, item in enumerate(tracked):
            text = "".join(_text(i) for i in range(item.request.output_tokens))
            body = {"message": {"role": "assistant", "content": text}} if chat else {"text": text}
            choices.append({"index": index, **body, "finish_reason": "length", "logprobs": None})
        await _json(send, 200, {**head, "object": kind, "choices": choices, "usage": usage})

    async def _stream(
        self,
        chat: bool,
        head: dict[str, Any],
        kind: str,
        tracked: list[Tracked],
        usage: dict[str, int] | None,
        send: Send,
    ) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
        chunk_kind = f"{kind}.chunk" if chat else kind

        async def event(choices: list[dict[str, Any]], **extra: Any) -> None:
            body = json.dumps({**head, "object": chunk_kind, "choices": choices, **extra})
            await send({"type": "http.response.body", "body": f"data: {body}\n\n".encode(), "more_body": True})

        if chat:
            await event([{"index": i, "delta": {"role": "assistant", "content": ""}} for i in range(len(tracked))])
        for index, item in enumerate(tracked):
            seen = 0
            while seen < item.request.output_tokens:
                count = await self.engine.progress(item, seen)
                text = "".join(_text(i) for i in range(seen, count))
                seen = count
                finish = "length" if seen >= item.request.output_tokens else None
                delta = {"delta": {"content": text}} if chat else {"text": text}
                await event([{"index": index, **delta, "finish_reason": finish}])
                if finish is None:
                    await asyncio.sleep(STREAM_EVERY_S)
        if usage is not None:
            await event([], usage=usage)
        await send({"type": "http.response.body", "body": b"data: [DONE]\n\n", "more_body": False})


async def _body(receive: Receive) -> dict[str, Any]:
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            break
    try:
        payload = json.loads(b"".join(chunks) or b"{}")
    except ValueError as exc:
        raise BadRequest(400, f"The body is not JSON: {exc}") from exc
    if not isinstance(payload, dict):
        raise BadRequest(400, "The body must be a JSON object.")
    return payload


async def _respond(send: Send, status: int, body: bytes, content_type: bytes) -> None:
    await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", content_type)]})
    await send({"type": "http.response.body", "body": body})


async def _json(send: Send, status: int, payload: dict[str, Any]) -> None:
    await _respond(send, status, json.dumps(payload).encode(), b"application/json")


# -- the command line --------------------------------------------------------------------


def device_model(model: EngineModel, *, compute_share: float, bandwidth_share: float) -> EngineModel:
    """The engine model on a MIG slice: prefill gets the slice's share of compute, decode its
    share of memory bandwidth (memory slices carry bandwidth in proportion to their size)."""
    if compute_share >= 1.0:
        return model
    return dataclasses.replace(
        model,
        prefill_tokens_per_s=model.prefill_tokens_per_s * compute_share,
        decode_step_base_s=model.decode_step_base_s / bandwidth_share,
        decode_step_per_seq_s=model.decode_step_per_seq_s / bandwidth_share,
        decode_s_per_context_token=model.decode_s_per_context_token / bandwidth_share,
        prefill_attention_s=model.prefill_attention_s / compute_share,
        prefill_step_base_s=None if model.prefill_step_base_s is None else model.prefill_step_base_s / compute_share,
        source=f"{model.source}; MIG slice: x{compute_share:.3f} compute, x{bandwidth_share:.3f} bandwidth",
    )


def engine_from_args(argv: list[str] | None = None) -> tuple[SimulatedEngine, argparse.Namespace]:
    """vLLM's server flags (the modelled ones), plus the GPU the simulated GPUs assigned."""
    env = os.environ.get
    parser = argparse.ArgumentParser(prog="python -m fleet.demo.engine_server", description=__doc__)
    parser.add_argument("--model", required=True)
    parser.add_argument("--served-model-name")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--max-model-len", type=int, default=8192)
    parser.add_argument("--max-num-seqs", type=int)
    parser.add_argument("--gpu-memory-utilization", type=float, default=GPU_MEMORY_UTILIZATION)
    parser.add_argument("--gpu", default=env(ENV_GPU_MODEL, "H100"), help=f"simulated GPU model (env {ENV_GPU_MODEL})")
    parser.add_argument("--cold-start-s", type=float, help="override the model's cold start (seconds)")
    args, _ignored = parser.parse_known_args(argv)
    base = engine_model_for(args.gpu)
    device_bytes = int(env(ENV_GPU_MEMORY) or GPU_FACTS[base.gpu_model].memory_gib * GIB)
    model = dataclasses.replace(
        device_model(
            base,
            compute_share=float(env(ENV_MIG_SHARE) or 1.0),
            bandwidth_share=float(env(ENV_MIG_MEMORY_SHARE) or 1.0),
        ),
        kv_cache_tokens=kv_cache_tokens_for(
            memory_gib=device_bytes / GIB * args.gpu_memory_utilization / GPU_MEMORY_UTILIZATION,
            profile=PROFILES[base.profile],
        ),
        max_num_seqs=args.max_num_seqs or base.max_num_seqs,
        cold_start_s=base.cold_start_s if args.cold_start_s is None else args.cold_start_s,
    )
    status_file = env(ENV_STATUS_FILE)
    engine = SimulatedEngine(
        model,
        served_name=args.served_model_name or args.model,
        max_model_len=args.max_model_len,
        memory_bytes=int(device_bytes * args.gpu_memory_utilization),
        gpu_uuids=[uuid for uuid in (env("CUDA_VISIBLE_DEVICES") or "").split(",") if uuid],
        status_file=Path(status_file) if status_file else None,
    )
    return engine, args


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s simulated-vllm %(levelname)s %(message)s")
    engine, args = engine_from_args(argv)
    log.info(
        "SIMULATED vLLM engine (no model runs): %s on a simulated %s, cold start %.0f s; %s",
        engine.served_name,
        engine.model.gpu_model,
        engine.model.cold_start_s,
        engine.model.source,
    )
    uvicorn.run(
        EngineApp(engine),
        host=args.host,
        port=args.port,
        log_level="warning",
        lifespan="on",
        timeout_graceful_shutdown=2,
    )


if __name__ == "__main__":
    main()
