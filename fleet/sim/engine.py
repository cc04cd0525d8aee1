"""The simulated vLLM engine: a performance model per GPU and a continuous-batching core.

Both the trace simulator and the demo's simulated vLLM servers step the same
``EngineCore`` in virtual seconds, so a latency the demo shows and a latency the benchmark
reports come from one model. Everything here is a simulation; nothing runs on a GPU.

How the default numbers are derived (Qwen3-4B-Instruct-2507, bf16 weights, bf16 KV cache)
------------------------------------------------------------------------------------------
Model facts (``fleet.catalog``): 4,022,468,096 parameters, so 8.04 GB of bf16 weights
(2 bytes each); KV cache 2 x 36 layers x 8 KV heads x 128 head dim x 2 B = 144 KiB a token.

GPU facts, from the vendors' datasheets (dense, no sparsity):

====== ======= ================ =================== ==============================
GPU    memory  memory bandwidth bf16 tensor (dense) host link (offload / reload)
====== ======= ================ =================== ==============================
A10G   24 GB   600 GB/s         70 TFLOPS [1]       PCIe 4.0 x16, 25 GB/s usable
L4     24 GB   300 GB/s         121 TFLOPS [2]      PCIe 4.0 x16, 25 GB/s usable
L40S   48 GB   864 GB/s         362 TFLOPS [3]      PCIe 4.0 x16, 25 GB/s usable
A100   80 GB   2,039 GB/s       312 TFLOPS [4]      PCIe 4.0 x16, 25 GB/s usable
H100   80 GB   3,350 GB/s       989 TFLOPS [5]      PCIe 5.0 x16, 50 GB/s usable
====== ======= ================ =================== ==============================

[1] AWS G5 / NVIDIA A10G as tabulated by Baseten, "NVIDIA A10 vs A10G for ML model
inference" (A10G: 24 GB GDDR6, 600 GB/s; its tensor throughput is below the A10's 125
TFLOPS); [2] NVIDIA L4 datasheet (242 TFLOPS bf16 with sparsity); [3] NVIDIA L40S datasheet
(733 with sparsity); [4] NVIDIA A100 datasheet, 80 GB SXM; [5] NVIDIA H100 datasheet, SXM
(1,979 with sparsity).

Arithmetic, each a documented assumption a user can replace with ``sim_fit``:

* **Decode** is memory-bandwidth bound: every step reads all weights once, and each running
  sequence reads its own KV cache, prompt plus the tokens it generated so far:
  ``step = decode_step_base_s + decode_step_per_seq_s x B + decode_s_per_context_token x
  (sum of the B contexts)``. Arithmetic: base = weight bytes / (bandwidth x 0.75) (75% of the
  datasheet bandwidth is what well-tuned decode kernels sustain), per context token = 144 KiB
  / (bandwidth x 0.75), per sequence = its 2 x 4.02 GFLOP of matmul at 40% of peak. The core
  keeps the sum of contexts as two running sums (prompts, decode start steps), so a step
  costs O(1) in it whatever the batch.
* **Prefill** is compute bound, and its attention grows with the prompt. vLLM prefills a long
  prompt in chunks of ``max_num_batched_tokens`` (8,192); a chunk of n tokens after p tokens
  already in the cache costs ``a + b x n + c x ((p + n)^2 - p^2)``: b for the matmuls (linear),
  c for causal attention over everything so far (its FLOPs are 4 x layers x heads x head_dim x
  L^2 / 2 over a prompt of L, and the chunks' terms add up to c x L^2), a the step's fixed part.
  The weights are read once a step, so a step with prompt chunks beside decodes costs its
  decode part plus ``max(0, a - decode base + b x N) + c x (chunks' attention)`` (N prompt
  tokens). Arithmetic: b = 2 x parameters / (peak x 0.40) (40% model FLOPs utilization),
  a = the decode base, c = the H100's measured c scaled by peak compute (989 / this GPU's).
  A prefix-cache hit (``SimRequest.cached_prompt_tokens``) starts the prompt at the cached
  offset: no matmul for those tokens, but later chunks still attend to them; at least the
  last prompt token is computed, as in vLLM.
* **H100, measured** (``calibration/qwen3_4b_h100_graph.json``, ``bench/engine_calibration.py``):
  a Qwen3-4B-shaped model (real weight shapes, random bf16 values) with PyTorch's fused
  attention, every step captured in a CUDA graph as vLLM runs, on an H100 80GB HBM3
  (torch 2.11): prefill of 512-65,536-token prompts chunked at 8,192, and decode steps of
  1-256 sequences at 1k, 4k and 16k tokens of context. ``prefill_fit`` and ``decode_fit``
  fit the constants by least squares on relative error: a = 2.76 ms, b = 12.55 us a token
  (79,700 tokens/s), c = 8.94e-10 s a token squared (causal attention at 330 TFLOP/s);
  decode base 4.54 ms (8.05 GB of weights at 1.77 TB/s), 6.3 us a sequence and 46.4 ns a
  context token (144 KiB at 3.18 TB/s). Every measured point is within 7% of its fit. A 12k
  prompt costs 1.9x, a 32k one 3.4x and an 85k one 7.1x what the linear rate alone says.
  The earlier figure, 42,600 tokens/s, came from eager transformers
  (``calibration/qwen3_4b_h100_hf_eager.json``): launch overhead, not the GPU.
* **KV capacity** follows the VRAM estimator (``fleet.policies.vram``): vLLM takes
  ``gpu_memory_utilization`` (0.9) of the card, minus weights and the estimator's 1.5 GiB
  overhead, and fills the rest with KV cache. H100: 80 GiB x 0.9 - 7.49 GiB - 1.5 GiB =
  63.0 GiB / 144 KiB = 458,807 tokens.
* **max_num_seqs** 256 and **max_num_batched_tokens** 8,192: vLLM's engine defaults.
* **Cold start** 30 s: the vLLM blog ("vLLM Sleep Mode", 2025-10-26) gives 30-100+ s for a
  full model (re)load; a 4B model with a warm compile cache sits at the low end.
* **Sleep / wake** (sleep level 1: weights offloaded to host memory over the host link):
  ``weights / link + 0.1 s``. H100 8.04 GB / 50 GB/s + 0.1 = 0.26 s; PCIe 4.0 cards 0.42 s.
  The same blog and the vLLM "Zero-reload model switching" post report wakes of 0.1-0.4 s.
"""

from __future__ import annotations

import bisect
import functools
import heapq
import json
import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path

from fleet import catalog
from fleet.policies.vram import ProfileFacts, vram_estimate_for
from fleet.sim.compiled import compiled_fresh

compiled_fresh(__file__)

DEFAULT_PROFILE = "qwen3-4b-instruct-bf16"
CALIBRATION_DIR = Path(__file__).resolve().parent / "calibration"
# Step times measured on a GPU (``bench/engine_calibration.py``, for DEFAULT_PROFILE) that
# replace the arithmetic: GPU -> file in CALIBRATION_DIR.
CALIBRATIONS = {"H100": "qwen3_4b_h100_graph.json"}
# The GPU whose measured attention cost the others scale by their datasheet compute.
ATTENTION_REFERENCE_GPU = "H100"
GPU_MEMORY_UTILIZATION = 0.9
BANDWIDTH_EFFICIENCY = 0.75
COMPUTE_EFFICIENCY = 0.40
COLD_START_S = 30.0
SLEEP_FIXED_S = 0.1
MAX_NUM_SEQS = 256
MAX_NUM_BATCHED_TOKENS = 8_192
# vLLM's own latency bucket bounds (up to 40 s): the engine server's /metrics and the
# simulator's windows read a simulated engine's latencies from the grid a real server reports.
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0)
E2E_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0, 480.0)


@dataclass(frozen=True)
class GpuFacts:
    """Datasheet figures the engine model is derived from (see the module docstring)."""

    name: str
    memory_gib: int
    bandwidth_gb_s: float
    bf16_tflops: float
    host_link_gb_s: float
    citation: str


GPU_FACTS: dict[str, GpuFacts] = {
    facts.name: facts
    for facts in (
        GpuFacts("A10G", 24, 600, 70, 25, "Baseten, NVIDIA A10 vs A10G (AWS G5 specifications)"),
        GpuFacts("L4", 24, 300, 121, 25, "NVIDIA L4 datasheet"),
        GpuFacts("L40S", 48, 864, 362, 25, "NVIDIA L40S datasheet"),
        GpuFacts("A100", 80, 2039, 312, 25, "NVIDIA A100 datasheet (80 GB SXM)"),
        GpuFacts("H100", 80, 3350, 989, 50, "NVIDIA H100 datasheet (SXM)"),
    )
}


PROFILES: dict[str, ProfileFacts] = {
    DEFAULT_PROFILE: ProfileFacts("Qwen/Qwen3-4B-Instruct-2507", "bfloat16", "", "auto", 8_192),
}


@dataclass(frozen=True)
class EngineModel:
    gpu_model: str
    profile: str
    prefill_tokens_per_s: float
    decode_step_base_s: float
    decode_step_per_seq_s: float
    max_num_seqs: int
    kv_cache_tokens: int
    cold_start_s: float
    sleep_s: float
    wake_s: float
    source: str
    max_num_batched_tokens: int = MAX_NUM_BATCHED_TOKENS
    # The fixed part of a step that carries prompt tokens (the intercept of the prefill fit);
    # None: the decode step's base, which makes a prefill step ``base + tokens / rate``.
    prefill_step_base_s: float | None = None
    # Causal attention of prompt chunks: seconds per token squared (``c`` in the module docstring).
    prefill_attention_s: float = 0.0
    # A decode step's KV-cache read: seconds per token of context over all running sequences.
    decode_s_per_context_token: float = 0.0

    def __reduce__(self) -> tuple[type[EngineModel], tuple[object, ...]]:
        """Pickled as its constructor's arguments: compiled (``make sim-compiled``) a frozen class's
        default pickle sets its fields one by one, which frozen refuses, and the benchmarks' processes
        send engine models back with their results (``bench/tiers.py``)."""
        return (EngineModel, tuple(getattr(self, field.name) for field in fields(self)))

    def prefill_extra_s(self, tokens: int, attention: int) -> float:
        """What a step's prompt chunks add to its decode part: ``tokens`` prompt tokens whose chunks
        span ``attention`` = the sum over chunks of (offset + n)^2 - offset^2 (a chunk of n tokens
        after ``offset`` tokens already cached attends causally to all of them). The weights are read
        once a step, so the matmul part counts only beyond the decode base."""
        if tokens <= 0:
            return 0.0
        base = self.decode_step_base_s if self.prefill_step_base_s is None else self.prefill_step_base_s
        matmul = max(0.0, base - self.decode_step_base_s + tokens / self.prefill_tokens_per_s)
        return matmul + self.prefill_attention_s * attention

    def prefill_s(self, tokens: int, offset: int = 0) -> float:
        """A prefill-only step: one chunk of ``tokens`` prompt tokens after ``offset`` already cached."""
        return self.decode_step_base_s + self.prefill_extra_s(tokens, (offset + tokens) ** 2 - offset**2)

    def prompt_prefill_s(self, prompt_tokens: int, cached_tokens: int = 0) -> float:
        """One prompt alone on the engine, in chunks of ``max_num_batched_tokens`` as vLLM's chunked
        prefill runs it; a cached prefix costs no compute, but later chunks still attend to it."""
        total, offset = 0.0, min(cached_tokens, prompt_tokens - 1)
        while offset < prompt_tokens:
            chunk = min(self.max_num_batched_tokens, prompt_tokens - offset)
            total += self.prefill_s(chunk, offset)
            offset += chunk
        return total

    def decode_step_s(self, batch: int, context_tokens: int = 0) -> float:
        """One decode step for ``batch`` running sequences (one token each) holding ``context_tokens``
        of KV cache between them (each sequence's prompt plus the tokens it generated so far)."""
        return (
            self.decode_step_base_s
            + self.decode_step_per_seq_s * batch
            + self.decode_s_per_context_token * context_tokens
        )

    def step_s(
        self, *, prefill_tokens: int, decode_batch: int, prefill_attention: int = 0, decode_context_tokens: int = 0
    ) -> float:
        """A mixed step (chunked prefill beside decodes) reads the weights once for both."""
        return self.decode_step_s(decode_batch, decode_context_tokens) + self.prefill_extra_s(
            prefill_tokens, prefill_attention
        )


def gpu_short_name(gpu_model: str) -> str:
    """``NVIDIA H100 80GB HBM3`` -> ``H100``: the engine table is keyed by family."""
    upper = gpu_model.upper()
    for name in sorted(GPU_FACTS, key=len, reverse=True):
        if name.upper() in upper:
            return name
    known = ", ".join(GPU_FACTS)
    raise ValueError(f"no engine model for GPU {gpu_model!r}; known: {known}")


def kv_cache_tokens_for(*, memory_gib: float, profile: ProfileFacts) -> int:
    """vLLM's KV cache: its memory budget minus weights and overhead, in tokens."""
    estimate = vram_estimate_for(profile)
    if estimate is None:
        raise ValueError(f"the catalogue lacks the architecture of {profile.model}")
    budget = int(memory_gib * catalog.GIB * GPU_MEMORY_UTILIZATION)
    free = budget - estimate.weight_bytes - estimate.overhead_bytes
    return max(0, free // estimate.kv_bytes_per_token)


def least_squares_relative(rows: Sequence[Sequence[float]], measured: Sequence[float]) -> tuple[float, ...]:
    """The coefficients ``x`` minimising the sum of ((row . x - m) / m)^2: every measured point's
    relative error weighs alike, so short prompts and small batches count as much as long ones.
    Columns are scaled to 1 before the normal equations are solved (they span nine decades)."""
    width = len(rows[0])
    scale = [max(abs(row[j]) for row in rows) or 1.0 for j in range(width)]
    scaled = [[row[j] / scale[j] / m for j in range(width)] for row, m in zip(rows, measured, strict=True)]
    system = [
        [sum(r[i] * r[j] for r in scaled) for j in range(width)] + [sum(r[i] for r in scaled)] for i in range(width)
    ]
    for col in range(width):
        pivot = max(range(col, width), key=lambda k: abs(system[k][col]))
        system[col], system[pivot] = system[pivot], system[col]
        for other in range(width):
            if other != col:
                factor = system[other][col] / system[col][col]
                system[other] = [a - factor * b for a, b in zip(system[other], system[col], strict=True)]
    return tuple(system[j][width] / system[j][j] / scale[j] for j in range(width))


@functools.cache
def calibration(name: str) -> dict:
    """A measurement file of ``bench/engine_calibration.py`` (read once)."""
    return json.loads((CALIBRATION_DIR / name).read_text(encoding="utf-8"))


def prefill_fit(data: dict) -> tuple[float, float, float]:
    """``(a, b, c)`` of a prompt of L tokens prefilled alone in chunks of ``data['chunk_tokens']``:
    ``t(L) = chunks(L) x a + b x L + c x L^2`` (a chunk of n tokens after p cached ones costs
    ``a + b x n + c x ((p + n)^2 - p^2)``; over a prompt the attention terms add up to c x L^2)."""
    points = data["prefill"]
    rows = [(math.ceil(p["tokens"] / data["chunk_tokens"]), p["tokens"], p["tokens"] ** 2) for p in points]
    a, b, c = least_squares_relative(rows, [p["seconds"] for p in points])
    return a, b, c


def decode_fit(data: dict) -> tuple[float, float, float]:
    """``(base, per_seq, per_context_token)`` of a decode step of B sequences of C tokens of context:
    ``t = base + per_seq x B + per_context_token x B x C``."""
    points = data["decode"]
    rows = [(1.0, float(p["batch"]), float(p["batch"] * p["context"])) for p in points]
    base, per_seq, per_context = least_squares_relative(rows, [p["step_s"] for p in points])
    return base, per_seq, per_context


def engine_model_for(gpu_model: str, profile: str = DEFAULT_PROFILE) -> EngineModel:
    """The documented default model for a GPU family and served-model profile."""
    if profile not in PROFILES:
        raise ValueError(f"no engine model for profile {profile!r}; known: {', '.join(PROFILES)}")
    facts = GPU_FACTS[gpu_short_name(gpu_model)]
    settings = PROFILES[profile]
    estimate = vram_estimate_for(settings)
    assert estimate is not None, settings.model
    weight_bytes = estimate.weight_bytes
    flops_per_token = 2 * estimate.parameters
    bandwidth = facts.bandwidth_gb_s * 1e9 * BANDWIDTH_EFFICIENCY
    compute = facts.bf16_tflops * 1e12 * COMPUTE_EFFICIENCY
    link_s = weight_bytes / (facts.host_link_gb_s * 1e9)
    prefill_rate, prefill_base = compute / flops_per_token, None
    decode_base, per_seq = weight_bytes / bandwidth, flops_per_token / compute
    per_context = estimate.kv_bytes_per_token / bandwidth
    reference = GPU_FACTS[ATTENTION_REFERENCE_GPU]
    _, _, reference_attention = prefill_fit(calibration(CALIBRATIONS[reference.name]))
    attention = reference_attention * reference.bf16_tflops / facts.bf16_tflops
    source = f"simulated: derived from {facts.citation} (see fleet.sim.engine)"
    if facts.name in CALIBRATIONS:
        name = CALIBRATIONS[facts.name]
        data = calibration(name)
        prefill_base, linear, attention = prefill_fit(data)
        prefill_rate = 1 / linear
        decode_base, per_seq, per_context = decode_fit(data)
        source = (
            f"{source}; prefill and decode steps fitted to times measured on {data['device']} "
            f"(torch {data['torch']}, {data['date'][:10]}, CUDA graphs; {name})"
        )
    return EngineModel(
        gpu_model=facts.name,
        profile=profile,
        prefill_tokens_per_s=prefill_rate,
        decode_step_base_s=decode_base,
        decode_step_per_seq_s=per_seq,
        max_num_seqs=MAX_NUM_SEQS,
        kv_cache_tokens=kv_cache_tokens_for(memory_gib=facts.memory_gib, profile=settings),
        cold_start_s=COLD_START_S,
        sleep_s=link_s + SLEEP_FIXED_S,
        wake_s=link_s + SLEEP_FIXED_S,
        source=source,
        prefill_step_base_s=prefill_base,
        prefill_attention_s=attention,
        decode_s_per_context_token=per_context,
    )


def _steps_within(seconds: float, first: float, growth: float) -> int:
    """How many decode steps fit in ``seconds`` when the first takes ``first`` and each one after
    takes ``growth`` more than the one before (n steps take n x first + growth x n(n-1)/2)."""
    if seconds < first:
        return 0
    if growth <= 0:
        return int(seconds // first)
    half = first - growth / 2
    count = int((-half + math.sqrt(half * half + 2 * growth * seconds)) / growth)
    while count > 0 and count * first + growth * count * (count - 1) / 2 > seconds:
        count -= 1
    return count


@dataclass(slots=True)
class SimRequest:
    id: str
    arrival_s: float
    prompt_tokens: int
    output_tokens: int
    first_token_s: float | None = None
    finished_s: float | None = None
    # Leading prompt tokens whose KV cache the engine already holds (vLLM's prefix cache): they
    # cost no prefill compute. At least the last prompt token is always computed, as in vLLM.
    cached_prompt_tokens: int = 0


class _Slot:
    """A request the core holds: its prompt progress, the KV tokens it reserved, its decode start.
    A plain class with slots: one is made per request, and a generated dataclass ``__init__`` with a
    ``__post_init__`` cost two calls each."""

    __slots__ = ("decode_from", "prefilled", "request", "reserved")

    def __init__(self, request: SimRequest, reserved: int) -> None:
        self.request = request
        self.prefilled = min(request.cached_prompt_tokens, request.prompt_tokens - 1)
        self.decode_from = -1
        self.reserved = reserved


class EngineCore:
    """Continuous batching in virtual time.

    The same stepping drives the discrete-event simulator and the demo's simulated vLLM
    server (which maps virtual seconds to wall seconds).

    A step admits waiting requests in arrival order while fewer than ``max_num_seqs`` run
    and their prompt plus output fits the free KV cache (reserving the whole sequence up
    front, so a request is never preempted), then runs every decoding sequence one token
    and fills the rest of the ``max_num_batched_tokens`` budget with prompt chunks
    (chunked prefill). A request's first token comes at the end of the step that finishes
    its prompt, as in vLLM. Decoding sequences are not touched one by one each step: each
    knows the step it started decoding at, and a heap holds the step each one finishes
    at, so a step costs O(log n) however large the batch.
    """

    def __init__(self, model: EngineModel) -> None:
        self.model = model
        self._waiting: deque[SimRequest] = deque()
        self._prefilling: list[_Slot] = []
        self._decoding: list[tuple[int, int, _Slot]] = []
        self._finished: list[SimRequest] = []
        self._progress: dict[str, _Slot] = {}
        self._reserved = 0
        self._steps = 0
        self._sequence = 0
        self._decode_prompt_tokens = 0
        self._decode_from_sum = 0
        self._busy_starts: list[float] = []
        self._busy_ends: list[float] = []
        self._busy_before: list[float] = []
        self.prompt_tokens_total = 0

    def submit(self, request: SimRequest, now_s: float) -> None:
        """Queue a request; one that could never fit the KV cache is refused, as vLLM does."""
        need = request.prompt_tokens + max(1, request.output_tokens)
        if need > self.model.kv_cache_tokens:
            raise ValueError(
                f"request {request.id} needs {need} KV tokens; the engine holds {self.model.kv_cache_tokens}"
            )
        if request.prompt_tokens < 1:
            raise ValueError(f"request {request.id} has no prompt tokens")
        if request.cached_prompt_tokens < 0:
            raise ValueError(f"request {request.id} has a negative cached prefix")
        self._waiting.append(request)
        self._progress[request.id] = _Slot(request, need)

    def _admit(self) -> None:
        waiting, prefilling, decoding, progress = self._waiting, self._prefilling, self._decoding, self._progress
        max_num_seqs, kv_cache_tokens = self.model.max_num_seqs, self.model.kv_cache_tokens
        while waiting and len(prefilling) + len(decoding) < max_num_seqs:
            slot = progress[waiting[0].id]
            if self._reserved + slot.reserved > kv_cache_tokens:
                return
            waiting.popleft()
            self._reserved += slot.reserved
            prefilling.append(slot)

    def step(self, now_s: float) -> float:
        """Run one scheduler iteration starting at ``now_s``; its duration, 0.0 when idle."""
        if self._waiting:
            self._admit()
        prefilling, decoding_heap = self._prefilling, self._decoding
        if not prefilling and not decoding_heap:
            return 0.0
        model = self.model
        decoding = len(decoding_heap)
        budget = model.max_num_batched_tokens - decoding
        chunks: list[tuple[_Slot, int]] = []
        attention = prefill_tokens = 0
        for slot in prefilling:
            if budget <= 0:
                break
            prefilled = slot.prefilled
            chunk = slot.request.prompt_tokens - prefilled
            if budget < chunk:
                chunk = budget
            chunks.append((slot, chunk))
            attention += (prefilled + chunk) ** 2 - prefilled**2
            prefill_tokens += chunk
            budget -= chunk
        self.prompt_tokens_total += prefill_tokens
        # ``model.step_s`` and ``_decode_context_tokens`` written out (the same operations in the same
        # order: the same float).
        duration = (
            model.decode_step_base_s
            + model.decode_step_per_seq_s * decoding
            + model.decode_s_per_context_token
            * (self._decode_prompt_tokens + decoding * (1 + self._steps) - self._decode_from_sum)
        )
        if prefill_tokens > 0:
            duration = duration + model.prefill_extra_s(prefill_tokens, attention)
        end = now_s + duration
        self._steps += 1
        steps = self._steps
        while decoding_heap and decoding_heap[0][0] <= steps:
            _, _, slot = heapq.heappop(decoding_heap)
            self._decode_prompt_tokens -= slot.request.prompt_tokens
            self._decode_from_sum -= slot.decode_from
            self._finish(slot, end)
        for slot, chunk in chunks:
            slot.prefilled += chunk
            request = slot.request
            if slot.prefilled < request.prompt_tokens:
                continue
            prefilling.remove(slot)
            slot.decode_from = steps
            request.first_token_s = end
            if request.output_tokens <= 1:
                self._finish(slot, end)
                continue
            self._sequence += 1
            heapq.heappush(decoding_heap, (steps + request.output_tokens - 1, self._sequence, slot))
            self._decode_prompt_tokens += request.prompt_tokens
            self._decode_from_sum += steps
        busy_ends = self._busy_ends
        if busy_ends and now_s <= busy_ends[-1]:  # ``_record_busy``'s merge, the usual case, written out
            if end > busy_ends[-1]:
                busy_ends[-1] = end
        else:
            self._record_busy(now_s, end)
        return duration

    def steps(self, now_s: float, until_s: float) -> float:
        """Like ``step``, but runs identical decode-only steps back to back, as many as fit before
        ``until_s`` (when something outside may change the batch) and before the next sequence
        finishes: what ``step`` would do one call at a time, in one call. Returns their duration."""
        self._admit()
        if self._prefilling or not self._decoding:
            return self.step(now_s)
        decoding = len(self._decoding)
        first = self.model.decode_step_s(decoding, self._decode_context_tokens())
        growth = self.model.decode_s_per_context_token * decoding  # every step adds a token to each context
        count = min(self._decoding[0][0] - self._steps, _steps_within(until_s - now_s, first, growth))
        if count <= 1:
            return self.step(now_s)
        ahead = (count - 1) * first + growth * (count - 1) * (count - 2) / 2
        self._steps += count - 1
        self._record_busy(now_s, now_s + ahead)
        return ahead + self.step(now_s + ahead)

    def advance(self, now_s: float, horizon_s: float) -> tuple[float, float | None, list[SimRequest]]:
        """``steps`` called again and again from ``now_s`` until a run of steps ends at or after
        ``horizon_s`` or the engine idles, with the requests finished by each run collected once it
        ends before the horizon: ``(end, before, collected)``, ``end`` the end of the last run (the
        start where idle at once), ``before`` the end of the last run that ended before the
        horizon (None: none did), ``collected`` what those runs finished, in order. The requests
        the last run finished stay in the core (``pop_finished``). The same steps with the same
        floats as those calls (a decode-only step is written out here: this loop is where a
        simulation spends its time), in one call."""
        model = self.model
        base = model.decode_step_base_s
        per_seq = model.decode_step_per_seq_s
        per_context = model.decode_s_per_context_token
        heap = self._decoding
        waiting = self._waiting
        progress = self._progress
        busy_ends = self._busy_ends
        heappop = heapq.heappop
        end = now_s
        before: float | None = None
        collected: list[SimRequest] = []
        while True:
            if waiting:
                self._admit()
            if self._prefilling or not heap:
                duration = self.step(end)
            else:
                batch = len(heap)
                steps = self._steps
                step_at = end
                first = (
                    base
                    + per_seq * batch
                    + per_context * (self._decode_prompt_tokens + batch * (1 + steps) - self._decode_from_sum)
                )
                growth = per_context * batch
                count = heap[0][0] - steps
                if count > 1:
                    # ``_steps_within(horizon_s - end, first, growth)`` written out.
                    seconds = horizon_s - end
                    if seconds < first:
                        count = 0
                    elif growth <= 0:
                        count = min(count, int(seconds // first))
                    else:
                        half = first - growth / 2
                        within = int((-half + math.sqrt(half * half + 2 * growth * seconds)) / growth)
                        while within > 0 and within * first + growth * within * (within - 1) / 2 > seconds:
                            within -= 1
                        count = min(count, within)
                ahead = 0.0
                if count > 1:
                    ahead = (count - 1) * first + growth * (count - 1) * (count - 2) / 2
                    steps += count - 1
                    step_at = end + ahead
                    if busy_ends and end <= busy_ends[-1]:  # ``_record_busy``'s merge, written out
                        if step_at > busy_ends[-1]:
                            busy_ends[-1] = step_at
                    else:
                        self._record_busy(end, step_at)
                # The last step of the run (``step`` on a batch of decodes alone).
                step = (
                    base
                    + per_seq * batch
                    + per_context * (self._decode_prompt_tokens + batch * (1 + steps) - self._decode_from_sum)
                )
                step_end = step_at + step
                steps += 1
                self._steps = steps
                while heap and heap[0][0] <= steps:
                    _, _, slot = heappop(heap)
                    request = slot.request
                    self._decode_prompt_tokens -= request.prompt_tokens
                    self._decode_from_sum -= slot.decode_from
                    # ``_finish`` written out.
                    request.finished_s = step_end
                    slot.decode_from = steps - request.output_tokens + 1
                    self._reserved -= slot.reserved
                    self._finished.append(request)
                if busy_ends and step_at <= busy_ends[-1]:
                    if step_end > busy_ends[-1]:
                        busy_ends[-1] = step_end
                else:
                    self._record_busy(step_at, step_end)
                duration = ahead + step if count > 1 else step
            if duration <= 0:
                break
            end += duration
            if end >= horizon_s:
                break
            before = end
            if self._finished:
                finished, self._finished = self._finished, []
                for request in finished:
                    progress.pop(request.id, None)
                collected += finished
        return end, before, collected

    def _finish(self, slot: _Slot, end: float) -> None:
        slot.request.finished_s = end
        slot.decode_from = self._steps - slot.request.output_tokens + 1
        self._reserved -= slot.reserved
        self._finished.append(slot.request)

    def _record_busy(self, start: float, end: float) -> None:
        """Back-to-back steps merge into one interval, so the history stays short."""
        if self._busy_ends and start <= self._busy_ends[-1]:
            self._busy_ends[-1] = max(self._busy_ends[-1], end)
            return
        before = self._busy_before[-1] + self._busy_ends[-1] - self._busy_starts[-1] if self._busy_ends else 0.0
        self._busy_starts.append(start)
        self._busy_ends.append(end)
        self._busy_before.append(before)

    def _busy_until(self, t: float) -> float:
        """Seconds spent in steps from the first step up to time ``t``."""
        index = bisect.bisect_right(self._busy_starts, t) - 1
        if index < 0:
            return 0.0
        return self._busy_before[index] + min(t, self._busy_ends[index]) - self._busy_starts[index]

    def pop_finished(self) -> list[SimRequest]:
        finished, self._finished = self._finished, []
        for request in finished:
            self._progress.pop(request.id, None)
        return finished

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    @property
    def running(self) -> int:
        return len(self._prefilling) + len(self._decoding)

    def _decode_context_tokens(self) -> int:
        """The decoding sequences' KV cache: their prompts plus the tokens each generated so far
        (1 + steps - decode_from), from two running sums, so it costs O(1) however large the batch."""
        return self._decode_prompt_tokens + len(self._decoding) * (1 + self._steps) - self._decode_from_sum

    @property
    def kv_usage(self) -> float:
        """KV cache in use (prompt processed plus tokens generated), 0..1, as vLLM reports it."""
        used = sum(slot.prefilled for slot in self._prefilling) + self._decode_context_tokens()
        return min(1.0, used / self.model.kv_cache_tokens) if self.model.kv_cache_tokens else 0.0

    def busy_fraction(self, since_s: float, now_s: float) -> float:
        """Share of ``[since_s, now_s]`` spent in steps: the simulated GPU duty cycle."""
        if now_s <= since_s:
            return 0.0
        return (self._busy_until(now_s) - self._busy_until(since_s)) / (now_s - since_s)

    def tokens_generated(self, request_id: str) -> int:
        """Output tokens produced so far for a request not yet collected by ``pop_finished``."""
        slot = self._progress.get(request_id)
        if slot is None:
            raise KeyError(f"request {request_id} is unknown to this engine or already collected")
        if slot.decode_from < 0:
            return 0
        return min(slot.request.output_tokens, 1 + self._steps - slot.decode_from)
