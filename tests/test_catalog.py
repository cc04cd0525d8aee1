"""The catalogue's arithmetic is the one the method's figures are checked against."""

from __future__ import annotations

import pytest

from fleet import catalog

GIB = 1024**3


def test_qwen3_4b_kv_cache_arithmetic() -> None:
    spec = catalog.model_spec("Qwen/Qwen3-4B-Instruct-2507")
    assert spec is not None
    assert spec.kv_bytes_per_token() == 144 * 1024
    assert spec.kv_bytes_per_token() * 32_768 == 4.5 * GIB
    assert spec.kv_bytes_per_token() * 262_144 == 36 * GIB
    assert spec.kv_bytes_per_token(kv_dtype_bytes=1) == 72 * 1024


def test_the_reported_256k_peak_of_9_1_gb_contradicts_the_arithmetic() -> None:
    spec = catalog.model_spec("Qwen/Qwen3-4B-Instruct-2507")
    assert spec is not None
    needed = spec.kv_bytes_per_token() * 262_144 + spec.weight_bytes(16)
    assert needed > 40 * GIB > 9.1e9


@pytest.mark.parametrize(
    ("name", "mig"),
    [
        ("NVIDIA A10G", False),
        ("NVIDIA L4", False),
        ("NVIDIA GeForce RTX 4090", False),
        ("NVIDIA H100 80GB HBM3", True),
        ("NVIDIA A100-SXM4-80GB", True),
        ("NVIDIA H100 PCIe", True),
        ("Some Future GPU", None),
    ],
)
def test_mig_support_by_gpu_model(name: str, mig: bool | None) -> None:
    assert catalog.gpu_supports_mig(name) is mig


def test_mig_slices_parse_and_reject() -> None:
    assert catalog.mig_slices("3g.40gb") == 3
    with pytest.raises(ValueError, match="not a MIG profile name"):
        catalog.mig_slices("9g.80gb")
