"""Measure prefill throughput and decode step time of a Qwen3-4B-shaped model on one GPU.

Random weights in bf16 (the shape, not the checkpoint, sets the speed), run with Hugging
Face transformers and its eager kernels (SDPA attention, no CUDA graphs, no paged
attention): this is not vLLM. Prefill is compute-bound and transfers to vLLM; decode step
times carry transformers' per-step Python and kernel-launch overhead, which vLLM's CUDA
graphs remove, so they are an upper bound on vLLM's. Writes JSON to the path given; the
H100 result is kept in ``fleet/sim/calibration/`` and read by ``fleet.sim.engine``.

    python bench/engine_calibration.py fleet/sim/calibration/qwen3_4b_h100_hf_eager.json
"""

from __future__ import annotations

import json
import sys
import time

import torch
import transformers
from transformers import DynamicCache, Qwen3Config, Qwen3ForCausalLM

PROMPTS = (256, 512, 1024, 2048, 4096, 8192)
BATCHES = (1, 2, 4, 8, 16, 32, 64, 128, 256)
DECODE_CONTEXT = 512
DECODE_STEPS = 16


def timed(function, repeat: int = 3) -> float:
    torch.cuda.synchronize()
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        function()
        torch.cuda.synchronize()
        best = min(best, time.perf_counter() - started)
    return best


def main(path: str) -> None:
    config = Qwen3Config(
        vocab_size=151_936,
        hidden_size=2_560,
        intermediate_size=9_728,
        num_hidden_layers=36,
        num_attention_heads=32,
        num_key_value_heads=8,
        head_dim=128,
        max_position_embeddings=40_960,
        tie_word_embeddings=True,
    )
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = Qwen3ForCausalLM(config).to(torch.bfloat16).eval()
    parameters = sum(p.numel() for p in model.parameters())
    result: dict = {
        "what": "Qwen3-4B-shaped model, random bf16 weights, HF transformers eager (SDPA), not vLLM",
        "device": torch.cuda.get_device_name(0),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "parameters": parameters,
        "prefill": [],
        "decode": [],
    }
    with torch.inference_mode():
        for length in PROMPTS:
            ids = torch.randint(0, config.vocab_size, (1, length), device="cuda")
            model(ids, logits_to_keep=1)
            seconds = timed(lambda ids=ids: model(ids, logits_to_keep=1))
            result["prefill"].append({"tokens": length, "seconds": seconds, "tokens_per_s": length / seconds})
            print("prefill", result["prefill"][-1], flush=True)
        for batch in BATCHES:
            ids = torch.randint(0, config.vocab_size, (batch, DECODE_CONTEXT), device="cuda")
            cache = DynamicCache()
            model(ids, past_key_values=cache, use_cache=True, logits_to_keep=1)
            step = torch.randint(0, config.vocab_size, (batch, 1), device="cuda")
            model(step, past_key_values=cache, use_cache=True)
            torch.cuda.synchronize()
            started = time.perf_counter()
            for _ in range(DECODE_STEPS):
                model(step, past_key_values=cache, use_cache=True)
            torch.cuda.synchronize()
            seconds = (time.perf_counter() - started) / DECODE_STEPS
            result["decode"].append({"batch": batch, "context": DECODE_CONTEXT, "step_s": seconds})
            print("decode", result["decode"][-1], flush=True)
            del cache
            torch.cuda.empty_cache()
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(result, handle, indent=2)


if __name__ == "__main__":
    main(sys.argv[1])
