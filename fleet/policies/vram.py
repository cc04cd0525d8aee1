"""How much GPU memory a model profile needs, with the arithmetic shown.

The formula, per instance:

* weights = parameters x bits per weight / 8 (16 for bf16/fp16, 32 for float32, the
  quantization's bits otherwise: AWQ/GPTQ 4, FP8 8);
* KV cache = 2 (K and V) x layers x KV heads x head dim x bytes per element, per token,
  times ``max_model_len`` tokens: vLLM refuses to start unless its KV cache holds at
  least one full-length sequence, so this is the least it can run with;
* overhead = a fixed 1.5 GiB for the CUDA context, activations at the prefill peak and
  CUDA graphs.

``required`` is their sum. vLLM itself takes ``gpu_memory_utilization`` x the device's
memory at start-up, whatever the model needs, and fills the rest with KV cache; so the
memory an instance *reserves* on a device is that budget, and the budget must cover
``required``. Placement checks both (see ``placement.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from fleet import catalog

GIB = catalog.GIB
KIB = 1024
OVERHEAD_BYTES = 3 * GIB // 2


@dataclass(frozen=True)
class VramEstimate:
    model: str
    parameters: int
    bits_per_weight: float
    layers: int
    kv_heads: int
    head_dim: int
    kv_dtype_bytes: int
    kv_tokens: int
    overhead_bytes: int = OVERHEAD_BYTES

    @property
    def weight_bytes(self) -> int:
        return int(self.parameters * self.bits_per_weight / 8)

    @property
    def kv_bytes_per_token(self) -> int:
        return 2 * self.layers * self.kv_heads * self.head_dim * self.kv_dtype_bytes

    @property
    def kv_bytes(self) -> int:
        return self.kv_bytes_per_token * self.kv_tokens

    @property
    def required_bytes(self) -> int:
        return self.weight_bytes + self.kv_bytes + self.overhead_bytes

    def arithmetic(self) -> str:
        """One line a person can check by hand."""
        return (
            f"{self.model} needs {gib(self.required_bytes)}: "
            f"weights {self.parameters:,} parameters x {self.bits_per_weight:g} bit = {gib(self.weight_bytes)}; "
            f"KV cache 2 x {self.layers} layers x {self.kv_heads} KV heads x {self.head_dim} head dim "
            f"x {self.kv_dtype_bytes} B = {self.kv_bytes_per_token // KIB} KiB/token "
            f"x {self.kv_tokens:,} tokens = {gib(self.kv_bytes)}; overhead {gib(self.overhead_bytes)}"
        )


def gib(value: float) -> str:
    return f"{value / GIB:.1f} GiB"


def bits_per_weight(*, dtype: str, quantization: str) -> float | None:
    """Bits each parameter takes on the GPU; None for a quantization the catalogue lacks."""
    if quantization:
        return catalog.QUANTIZATION_BITS.get(quantization)
    return 32 if dtype == "float32" else 16


def kv_dtype_bytes(*, dtype: str, kv_cache_dtype: str) -> int:
    """Bytes per KV element: ``auto`` follows the model's dtype (4 for float32, 2 otherwise)."""
    if kv_cache_dtype == "auto":
        return 4 if dtype == "float32" else 2
    return catalog.KV_CACHE_DTYPE_BYTES.get(kv_cache_dtype, 2)


class ServedProfile(Protocol):
    """What the estimate reads of a profile: a ``ModelProfile`` row, or a plain ``ProfileFacts``."""

    @property
    def model(self) -> str: ...

    @property
    def dtype(self) -> str: ...

    @property
    def quantization(self) -> str: ...

    @property
    def kv_cache_dtype(self) -> str: ...

    @property
    def max_model_len(self) -> int: ...


@dataclass(frozen=True)
class ProfileFacts:
    """A served model's settings as the estimate takes them, where there is no ``ModelProfile`` row."""

    model: str
    dtype: str
    quantization: str
    kv_cache_dtype: str
    max_model_len: int


def vram_estimate_for(profile: ServedProfile) -> VramEstimate | None:
    """The estimate for a profile, or None where the catalogue lacks the architecture.

    The one place a profile becomes bytes: placement, the admin, the demo and the simulator
    all ask here, so the figure the admin shows is the one placement checks.
    """
    spec = catalog.model_spec(profile.model)
    bits = bits_per_weight(dtype=profile.dtype, quantization=profile.quantization)
    if spec is None or bits is None:
        return None
    return VramEstimate(
        model=spec.name,
        parameters=spec.parameters,
        bits_per_weight=bits,
        layers=spec.layers,
        kv_heads=spec.kv_heads,
        head_dim=spec.head_dim,
        kv_dtype_bytes=kv_dtype_bytes(dtype=profile.dtype, kv_cache_dtype=profile.kv_cache_dtype),
        kv_tokens=profile.max_model_len,
    )
