"""Check the panel's VRAM estimator against a real GPU: weights and KV cache of Qwen3-4B.

Builds a randomly initialised model of Qwen3-4B-Instruct-2507's architecture (36 layers,
hidden 2560, 32 heads, 8 KV heads, head dim 128, intermediate 9728, vocabulary 151936,
tied embeddings) in bf16 on CUDA, then a KV-cache tensor for each requested token count,
and prints, per component, the estimator's figure beside what PyTorch allocated and what
NVML saw the process take. No weights are downloaded: random values take the same memory.

It compares like with like. What PyTorch allocated for the weights and for each KV cache
must match the estimator's weights and KV cache within the tolerance (2%). NVML counts the
whole process, CUDA context and allocator slack included (0.5-0.8 GiB on an H100), so its
total is checked against the estimator's whole figure: at least weights + KV cache (less
the tolerance), at most that plus the estimator's overhead allowance. Exits 1 otherwise.

Needs only torch, transformers and nvidia-ml-py (not the panel's dependencies):

    python bench/vram_estimate_check.py --tokens 32768 262144

Importable without CUDA or torch: everything that touches them runs in ``main``.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MODEL = "Qwen/Qwen3-4B-Instruct-2507"
ARCHITECTURE: dict[str, Any] = dict(
    num_hidden_layers=36,
    hidden_size=2560,
    num_attention_heads=32,
    num_key_value_heads=8,
    head_dim=128,
    intermediate_size=9728,
    vocab_size=151936,
    tie_word_embeddings=True,
    max_position_embeddings=262144,
)
GIB = 1024**3


def estimator() -> Any:
    """The panel's estimator module, loaded without the panel.

    ``fleet/__init__.py`` starts the Celery app, which a GPU host running this check need
    not have; the estimator itself is plain Python, so its package is registered bare.
    """
    if "fleet" not in sys.modules:
        package = types.ModuleType("fleet")
        package.__path__ = [str(Path(__file__).resolve().parent.parent / "fleet")]
        sys.modules["fleet"] = package
    return importlib.import_module("fleet.policies.vram")


def expected(tokens: int) -> dict[str, int]:
    """The estimator's weights and KV-cache bytes for bf16 at ``tokens`` tokens."""
    vram = estimator()
    estimate = vram.vram_estimate_for(vram.ProfileFacts(MODEL, "bfloat16", "", "auto", tokens))
    return {"weights": estimate.weight_bytes, "kv_cache": estimate.kv_bytes, "parameters": estimate.parameters}


def kv_shape(tokens: int) -> tuple[int, int, int, int, int]:
    """K and V for every layer: (2, layers, tokens, KV heads, head dim), as paged caches hold them."""
    return (
        2,
        ARCHITECTURE["num_hidden_layers"],
        tokens,
        ARCHITECTURE["num_key_value_heads"],
        ARCHITECTURE["head_dim"],
    )


@dataclass(frozen=True)
class Component:
    """One allocation: the estimator's bytes and what PyTorch and NVML saw it take."""

    name: str
    estimate: int
    allocated: int
    nvml: int


@dataclass(frozen=True)
class Total:
    """The process as NVML sees it with weights and one KV cache held, and the estimator's figures for it."""

    name: str
    nvml: int
    weights_and_kv: int
    overhead: int


def failures(components: list[Component], totals: list[Total], tolerance: float) -> list[str]:
    """Every check that fails, as a line; empty when the estimator holds."""
    found = [
        f"{c.name}: PyTorch allocated {c.allocated / GIB:.3f} GiB, estimator {c.estimate / GIB:.3f} GiB "
        f"(off by {abs(c.allocated / c.estimate - 1):.1%} > {tolerance:.0%})"
        for c in components
        if abs(c.allocated / c.estimate - 1) > tolerance
    ]
    for t in totals:
        low, high = t.weights_and_kv * (1 - tolerance), t.weights_and_kv + t.overhead
        if not low <= t.nvml <= high:
            found.append(
                f"{t.name}: NVML {t.nvml / GIB:.3f} GiB outside {low / GIB:.3f}-{high / GIB:.3f} GiB "
                "(weights + KV cache, up to the overhead allowance)"
            )
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, nargs="+", default=[32_768, 262_144])
    parser.add_argument("--tolerance", type=float, default=0.02, help="Largest relative difference accepted.")
    args = parser.parse_args(argv)

    import pynvml
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    if not torch.cuda.is_available():
        print("no CUDA device: run this on a GPU host", file=sys.stderr)
        return 2
    pynvml.nvmlInit()
    # The CUDA device's UUID names the same card in NVML, whatever CUDA_VISIBLE_DEVICES reorders.
    handle = pynvml.nvmlDeviceGetHandleByUUID(f"GPU-{torch.cuda.get_device_properties(0).uuid}")

    def nvml_used() -> int:
        torch.cuda.synchronize()
        return int(pynvml.nvmlDeviceGetMemoryInfo(handle).used)

    before_context = nvml_used()
    torch.zeros(1, device="cuda")
    context = nvml_used() - before_context
    print(f"GPU: {pynvml.nvmlDeviceGetName(handle)}; CUDA context took {context / GIB:.2f} GiB (NVML)")

    rows: list[Component] = []
    totals: list[Total] = []
    base_nvml, base_torch = nvml_used(), torch.cuda.memory_allocated()
    torch.set_default_dtype(torch.bfloat16)
    with torch.device("cuda"):
        model = Qwen3ForCausalLM(Qwen3Config(**ARCHITECTURE))
    parameters = sum(p.numel() for p in model.parameters())
    want = expected(args.tokens[0])
    print(f"parameters: model {parameters:,}, catalogue {want['parameters']:,}")
    rows.append(
        Component("weights", want["weights"], torch.cuda.memory_allocated() - base_torch, nvml_used() - base_nvml)
    )
    for tokens in args.tokens:
        base_nvml, base_torch = nvml_used(), torch.cuda.memory_allocated()
        cache = torch.empty(kv_shape(tokens), dtype=torch.bfloat16, device="cuda")
        cache.fill_(0)
        kv = expected(tokens)["kv_cache"]
        rows.append(
            Component(
                f"KV cache, {tokens:,} tokens", kv, torch.cuda.memory_allocated() - base_torch, nvml_used() - base_nvml
            )
        )
        totals.append(
            Total(
                f"process, {tokens:,} tokens",
                nvml_used() - before_context,
                want["weights"] + kv,
                estimator().OVERHEAD_BYTES,
            )
        )
        del cache
        torch.cuda.empty_cache()

    print(f"{'component':<28}{'estimator':>14}{'torch':>14}{'torch/est.':>11}{'NVML':>14}")
    for c in rows:
        print(
            f"{c.name:<28}{c.estimate / GIB:>11.3f} GiB{c.allocated / GIB:>10.3f} GiB"
            f"{c.allocated / c.estimate:>11.4f}{c.nvml / GIB:>10.3f} GiB"
        )
    overhead = estimator().OVERHEAD_BYTES
    print(f"{'whole process (NVML)':<28}{'weights+KV':>14}{'+ overhead':>14}{'NVML':>14}", end="")
    print(f"   (overhead allowance {overhead / GIB:.2f} GiB)")
    for t in totals:
        print(
            f"{t.name:<28}{t.weights_and_kv / GIB:>11.3f} GiB{(t.weights_and_kv + t.overhead) / GIB:>10.3f} GiB"
            f"{t.nvml / GIB:>10.3f} GiB"
        )
    problems = failures(rows, totals, args.tolerance)
    if parameters != want["parameters"]:
        problems.insert(0, f"parameters: model {parameters:,} != catalogue {want['parameters']:,}")
    for problem in problems:
        print(f"FAIL: {problem}")
    if not problems:
        print(f"OK: PyTorch allocations within {args.tolerance:.0%}, NVML totals within the overhead allowance")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
