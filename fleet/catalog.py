"""What the panel knows about GPU models and served models without asking anyone.

These facts drive validation (is MIG possible on this card? does the model support this
context length?) and the VRAM arithmetic the placement estimator shows. Unknown names are
allowed: validation that needs a fact the catalogue lacks is skipped, never guessed.
"""

from __future__ import annotations

from dataclasses import dataclass

GIB = 1024**3


@dataclass(frozen=True)
class GpuSpec:
    name: str
    memory_gib: int
    mig_profiles: tuple[str, ...] = ()

    @property
    def mig_capable(self) -> bool:
        return bool(self.mig_profiles)


# MIG exists on A100, A30, H100, H200 and B200 only (NVIDIA MIG user guide, "Supported GPUs").
GPUS: tuple[GpuSpec, ...] = (
    GpuSpec("NVIDIA A10G", 24),
    GpuSpec("NVIDIA L4", 24),
    GpuSpec("NVIDIA L40S", 48),
    GpuSpec("NVIDIA GeForce RTX 4090", 24),
    GpuSpec("NVIDIA A30", 24, ("1g.6gb", "2g.12gb", "4g.24gb")),
    GpuSpec("NVIDIA A100-SXM4-40GB", 40, ("1g.5gb", "1g.10gb", "2g.10gb", "3g.20gb", "4g.20gb", "7g.40gb")),
    GpuSpec("NVIDIA A100-SXM4-80GB", 80, ("1g.10gb", "1g.20gb", "2g.20gb", "3g.40gb", "4g.40gb", "7g.80gb")),
    GpuSpec("NVIDIA H100 80GB HBM3", 80, ("1g.10gb", "1g.20gb", "2g.20gb", "3g.40gb", "4g.40gb", "7g.80gb")),
    GpuSpec("NVIDIA H200", 141, ("1g.18gb", "1g.35gb", "2g.35gb", "3g.71gb", "4g.71gb", "7g.141gb")),
    GpuSpec("NVIDIA B200", 180, ("1g.23gb", "1g.45gb", "2g.45gb", "3g.90gb", "4g.90gb", "7g.180gb")),
)

MIG_FAMILIES = ("A100", "A30", "H100", "H200", "B200")


def gpu_spec(name: str) -> GpuSpec | None:
    """Find a GPU by the name NVML reports, or by a short name such as ``H100``."""
    wanted = name.strip().lower()
    for spec in GPUS:
        if spec.name.lower() == wanted:
            return spec
    for spec in GPUS:
        if wanted and wanted in spec.name.lower():
            return spec
    return None


def gpu_supports_mig(name: str) -> bool | None:
    """True or False for a known family; None where the name says nothing about MIG."""
    spec = gpu_spec(name)
    if spec is not None:
        return spec.mig_capable
    upper = name.upper()
    if any(family in upper for family in MIG_FAMILIES):
        return True
    return None


def mig_slices(profile: str) -> int:
    """Compute slices (out of 7) in a MIG profile name such as ``3g.40gb``."""
    head = profile.split("g.", 1)[0]
    if not head.isdigit() or not 1 <= int(head) <= 7:
        raise ValueError(f"not a MIG profile name: {profile!r} (expected e.g. '1g.10gb')")
    return int(head)


@dataclass(frozen=True)
class ModelSpec:
    """Architecture facts that fix a model's memory needs."""

    name: str
    parameters: int
    layers: int
    kv_heads: int
    head_dim: int
    context_limit: int


_QWEN3_4B = dict(parameters=4_022_468_096, layers=36, kv_heads=8, head_dim=128, context_limit=262_144)

MODELS: tuple[ModelSpec, ...] = (
    ModelSpec("Qwen/Qwen3-4B-Instruct-2507", **_QWEN3_4B),
    ModelSpec("Qwen/Qwen3-4B-Instruct-2507-FP8", **_QWEN3_4B),
    ModelSpec("cpatonn/Qwen3-4B-Instruct-2507-AWQ-4bit", **_QWEN3_4B),
)


def model_spec(name: str) -> ModelSpec | None:
    wanted = name.strip().lower()
    return next((spec for spec in MODELS if spec.name.lower() == wanted), None)


QUANTIZATIONS: dict[str, str] = {
    "": "none (weights as stored)",
    "awq": "AWQ 4-bit",
    "awq_marlin": "AWQ 4-bit, Marlin kernels",
    "gptq": "GPTQ",
    "gptq_marlin": "GPTQ, Marlin kernels",
    "fp8": "FP8",
    "compressed-tensors": "compressed-tensors",
    "bitsandbytes": "bitsandbytes",
    "gguf": "GGUF",
}

QUANTIZATION_BITS: dict[str, float] = {
    "": 16,
    "awq": 4,
    "awq_marlin": 4,
    "gptq": 4,
    "gptq_marlin": 4,
    "fp8": 8,
    "bitsandbytes": 4,
}

KV_CACHE_DTYPES: dict[str, str] = {
    "auto": "same as the model dtype",
    "bfloat16": "bfloat16",
    "fp8": "FP8",
    "fp8_e4m3": "FP8 E4M3",
    "fp8_e5m2": "FP8 E5M2",
}

KV_CACHE_DTYPE_BYTES: dict[str, int] = {"auto": 2, "bfloat16": 2, "fp8": 1, "fp8_e4m3": 1, "fp8_e5m2": 1}
