"""Measure prefill and decode step times of a Qwen3-4B-shaped model on one GPU, as vLLM runs them.

A synthetic Qwen3-4B (36 layers, hidden 2,560, 32 query / 8 KV heads of 128, MLP 9,728,
vocabulary 151,936; the real weight shapes with random bf16 values, RMSNorm on the layer
inputs and on queries and keys; no rotary embedding) run with PyTorch's fused attention
(``scaled_dot_product_attention``: flash / memory-efficient kernels, the math fallback
forbidden) and each measured step captured in a CUDA graph, as vLLM captures its steps.

* **Prefill** of one prompt of L tokens, chunked as vLLM's chunked prefill does
  (``max_num_batched_tokens`` 8,192): each chunk of n tokens at offset p runs every layer,
  appends its keys and values to the cache, and attends causally to all p + n tokens so far
  (the lower-right causal mask). Prompts 512 to 65,536 tokens.
* **Decode**: one step of B sequences, each attending to a KV cache of C tokens, for
  B = 1..256 and C = 1k, 4k, 16k, where B x C fits 262,144 tokens of KV cache (38.6 GB).

Times are the median of CUDA-event-timed graph replays. Writes JSON (raw points only; the
engine model fits its constants from them, ``fleet.sim.engine``) to the path given:

    python3 bench/engine_calibration.py $OUT/qwen3_4b_h100_graph.json
"""

from __future__ import annotations

import datetime
import json
import statistics
import sys
import time

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.nn.attention.bias import causal_lower_right

LAYERS, HIDDEN, Q_HEADS, KV_HEADS, HEAD_DIM, MLP, VOCAB = 36, 2_560, 32, 8, 128, 9_728, 151_936
CHUNK = 8_192
PROMPTS = (512, 1_024, 2_048, 4_096, 8_192, 12_288, 16_384, 24_576, 32_768, 49_152, 65_536)
CONTEXTS = (1_024, 4_096, 16_384)
BATCHES = (1, 2, 4, 8, 16, 32, 64, 128, 256)
KV_TOKENS_MAX = 262_144
FAST = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION]
DEVICE, DTYPE = "cuda", torch.bfloat16
Q_SIZE, KV_SIZE = Q_HEADS * HEAD_DIM, KV_HEADS * HEAD_DIM


def random(*shape: int) -> torch.Tensor:
    return torch.randn(*shape, device=DEVICE, dtype=DTYPE) * 0.02


def graph_time(function, reps: int) -> tuple[float, bool]:
    """Median seconds of ``function`` replayed from a CUDA graph (eager if capture fails)."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(2):
            function()
    torch.cuda.current_stream().wait_stream(stream)
    torch.cuda.synchronize()
    captured = True
    try:
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            function()
        run = graph.replay
    except Exception as error:
        print("graph capture failed, timing eagerly:", repr(error)[:300], flush=True)
        captured, run = False, function
        torch.cuda.synchronize()
    for _ in range(2):
        run()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        run()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    del run
    return statistics.median(times), captured


class Model:
    def __init__(self) -> None:
        self.layers = [
            {
                "qkv": random(Q_SIZE + 2 * KV_SIZE, HIDDEN),
                "o": random(HIDDEN, Q_SIZE),
                "gate_up": random(2 * MLP, HIDDEN),
                "down": random(HIDDEN, MLP),
                "norm1": torch.ones(HIDDEN, device=DEVICE, dtype=DTYPE),
                "norm2": torch.ones(HIDDEN, device=DEVICE, dtype=DTYPE),
                "q_norm": torch.ones(HEAD_DIM, device=DEVICE, dtype=DTYPE),
                "k_norm": torch.ones(HEAD_DIM, device=DEVICE, dtype=DTYPE),
            }
            for _ in range(LAYERS)
        ]
        self.lm_head = random(VOCAB, HIDDEN)
        self.final_norm = torch.ones(HIDDEN, device=DEVICE, dtype=DTYPE)
        self.parameters = sum(t.numel() for layer in self.layers for t in layer.values()) + self.lm_head.numel()

    def mlp(self, layer: dict, x: torch.Tensor) -> torch.Tensor:
        gate_up = F.rms_norm(x, (HIDDEN,), layer["norm2"]) @ layer["gate_up"].t()
        return x + (F.silu(gate_up[:, :MLP]) * gate_up[:, MLP:]) @ layer["down"].t()

    def qkv(self, layer: dict, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        tokens = x.shape[0]
        qkv = F.rms_norm(x, (HIDDEN,), layer["norm1"]) @ layer["qkv"].t()
        q = F.rms_norm(qkv[:, :Q_SIZE].view(tokens, Q_HEADS, HEAD_DIM), (HEAD_DIM,), layer["q_norm"])
        k = F.rms_norm(qkv[:, Q_SIZE : Q_SIZE + KV_SIZE].view(tokens, KV_HEADS, HEAD_DIM), (HEAD_DIM,), layer["k_norm"])
        v = qkv[:, Q_SIZE + KV_SIZE :].view(tokens, KV_HEADS, HEAD_DIM)
        return q, k, v

    def prefill(self, x: torch.Tensor, k_cache: list, v_cache: list, attend) -> torch.Tensor:
        """One prompt, chunk by chunk; ``x`` holds the prompt's input embeddings."""
        length = x.shape[0]
        for offset in range(0, length, CHUNK):
            n = min(CHUNK, length - offset)
            h = x[offset : offset + n]
            for index, layer in enumerate(self.layers):
                q, k, v = self.qkv(layer, h)
                k_cache[index][0, :, offset : offset + n].copy_(k.transpose(0, 1))
                v_cache[index][0, :, offset : offset + n].copy_(v.transpose(0, 1))
                q = q.transpose(0, 1).unsqueeze(0)
                keys = k_cache[index][:, :, : offset + n]
                values = v_cache[index][:, :, : offset + n]
                out = attend(q, keys, values, offset)
                h = h + out[0].transpose(0, 1).reshape(n, Q_SIZE) @ layer["o"].t()
                h = self.mlp(layer, h)
        return F.rms_norm(h[-1:], (HIDDEN,), self.final_norm) @ self.lm_head.t()

    def decode(self, x: torch.Tensor, k_cache: list, v_cache: list) -> torch.Tensor:
        batch = x.shape[0]
        for index, layer in enumerate(self.layers):
            q, _, _ = self.qkv(layer, x)
            out = F.scaled_dot_product_attention(
                q.view(batch, Q_HEADS, 1, HEAD_DIM), k_cache[index], v_cache[index], enable_gqa=True
            )
            x = x + out.reshape(batch, Q_SIZE) @ layer["o"].t()
            x = self.mlp(layer, x)
        return F.rms_norm(x, (HIDDEN,), self.final_norm) @ self.lm_head.t()


def attend_gqa(q, keys, values, offset):
    if offset == 0:
        return F.scaled_dot_product_attention(q, keys, values, is_causal=True, enable_gqa=True)
    mask = causal_lower_right(q.shape[2], keys.shape[2])
    return F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, enable_gqa=True)


def attend_expanded(q, keys, values, offset):
    group = Q_HEADS // KV_HEADS
    keys, values = keys.repeat_interleave(group, dim=1), values.repeat_interleave(group, dim=1)
    if offset == 0:
        return F.scaled_dot_product_attention(q, keys, values, is_causal=True)
    return F.scaled_dot_product_attention(q, keys, values, attn_mask=causal_lower_right(q.shape[2], keys.shape[2]))


def check_chunked_attention(attend) -> float:
    """Chunked attention (lower-right causal) against whole-prompt causal attention in float64."""
    length, chunk = 384, 128
    q = torch.randn(1, Q_HEADS, length, HEAD_DIM, device=DEVICE, dtype=DTYPE)
    k = torch.randn(1, KV_HEADS, length, HEAD_DIM, device=DEVICE, dtype=DTYPE)
    v = torch.randn(1, KV_HEADS, length, HEAD_DIM, device=DEVICE, dtype=DTYPE)
    with sdpa_kernel(FAST):
        parts = [
            attend(q[:, :, p : p + chunk], k[:, :, : p + chunk], v[:, :, : p + chunk], p)
            for p in range(0, length, chunk)
        ]
    out = torch.cat(parts, dim=2).double()
    group = Q_HEADS // KV_HEADS
    kd, vd = k.double().repeat_interleave(group, 1), v.double().repeat_interleave(group, 1)
    scores = (q.double() @ kd.transpose(-1, -2)) / HEAD_DIM**0.5
    scores = scores.masked_fill(torch.ones(length, length, device=DEVICE, dtype=torch.bool).triu(1), float("-inf"))
    reference = scores.softmax(-1) @ vd
    return float((out - reference).norm() / reference.norm())


def main(path: str) -> None:
    torch.manual_seed(0)
    started = time.time()
    result: dict = {
        "what": (
            "Qwen3-4B-shaped model (real weight shapes, random bf16 values, RMSNorms, no rotary), "
            "PyTorch SDPA fused attention (math fallback forbidden), every step captured in a CUDA graph; "
            "prefill chunked at 8,192 tokens with lower-right causal attention over the cache; "
            "decode attends to a dense per-sequence KV cache; median of CUDA-event-timed replays"
        ),
        "script": "bench/engine_calibration.py",
        "device": torch.cuda.get_device_name(0),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "chunk_tokens": CHUNK,
        "prefill": [],
        "decode": [],
    }

    def save() -> None:
        with open(path, "w", encoding="utf-8") as handle:
            json.dump(result, handle, indent=1)

    attend, variant = attend_gqa, "lower-right causal mask, grouped-query (enable_gqa)"
    try:
        error = check_chunked_attention(attend_gqa)
    except Exception as failure:
        print("grouped-query lower-right attention failed:", repr(failure)[:300], flush=True)
        attend, variant = attend_expanded, "lower-right causal mask, KV heads repeated to 32"
        error = check_chunked_attention(attend_expanded)
    result["attention"] = {"variant": variant, "chunked_vs_float64_relative_error": error}
    print("attention", result["attention"], flush=True)
    assert error < 2e-2, error
    model = Model()
    result["parameters"] = model.parameters
    result["weight_bytes"] = model.parameters * 2
    save()
    with torch.inference_mode(), sdpa_kernel(FAST):
        longest = max(PROMPTS)
        k_cache = [torch.empty(1, KV_HEADS, longest, HEAD_DIM, device=DEVICE, dtype=DTYPE) for _ in range(LAYERS)]
        v_cache = [torch.empty(1, KV_HEADS, longest, HEAD_DIM, device=DEVICE, dtype=DTYPE) for _ in range(LAYERS)]
        for length in PROMPTS:
            x = torch.randn(length, HIDDEN, device=DEVICE, dtype=DTYPE)
            try:
                seconds, graphed = graph_time(
                    lambda x=x: model.prefill(x, k_cache, v_cache, attend), reps=10 if length <= 16_384 else 5
                )
            except Exception as failure:
                result.setdefault("errors", []).append(f"prefill {length}: {failure!r}"[:500])
                print("prefill failed", length, repr(failure)[:300], flush=True)
                continue
            row = {"tokens": length, "seconds": seconds, "tokens_per_s": length / seconds, "graph": graphed}
            result["prefill"].append(row)
            print("prefill", row, flush=True)
            save()
            torch.cuda.empty_cache()
        del k_cache, v_cache
        torch.cuda.empty_cache()
        flat_k = [torch.empty(KV_TOKENS_MAX * KV_SIZE, device=DEVICE, dtype=DTYPE).normal_() for _ in range(LAYERS)]
        flat_v = [torch.empty(KV_TOKENS_MAX * KV_SIZE, device=DEVICE, dtype=DTYPE).normal_() for _ in range(LAYERS)]
        for context in CONTEXTS:
            for batch in BATCHES:
                if batch * context > KV_TOKENS_MAX:
                    continue
                size = batch * context * KV_SIZE
                k_cache = [t[:size].view(batch, KV_HEADS, context, HEAD_DIM) for t in flat_k]
                v_cache = [t[:size].view(batch, KV_HEADS, context, HEAD_DIM) for t in flat_v]
                x = torch.randn(batch, HIDDEN, device=DEVICE, dtype=DTYPE)
                try:
                    seconds, graphed = graph_time(lambda x=x, k=k_cache, v=v_cache: model.decode(x, k, v), reps=30)
                except Exception as failure:
                    result.setdefault("errors", []).append(f"decode {batch}x{context}: {failure!r}"[:500])
                    print("decode failed", batch, context, repr(failure)[:300], flush=True)
                    continue
                kv_bytes = 2 * LAYERS * batch * context * KV_SIZE * 2
                row = {
                    "batch": batch,
                    "context": context,
                    "step_s": seconds,
                    "graph": graphed,
                    "achieved_tb_s": (result["weight_bytes"] + kv_bytes) / seconds / 1e12,
                }
                result["decode"].append(row)
                print("decode", row, flush=True)
                save()
                torch.cuda.empty_cache()
    result["wall_s"] = time.time() - started
    save()
    print("\nprefill: tokens  ms  tokens/s")
    for row in result["prefill"]:
        print(f"{row['tokens']:>7} {row['seconds'] * 1e3:9.2f} {row['tokens_per_s']:>9,.0f}")
    print("decode: context batch ms  TB/s")
    for row in result["decode"]:
        print(f"{row['context']:>7} {row['batch']:>4} {row['step_s'] * 1e3:8.3f} {row['achieved_tb_s']:5.2f}")


if __name__ == "__main__":
    main(sys.argv[1])
