"""The catalogue's arithmetic is the one the method's figures are checked against."""

from __future__ import annotations

import pytest

from fleet import catalog
from fleet.policies.vram import ProfileFacts, vram_estimate_for

GIB = 1024**3


def test_the_reported_256k_peak_of_9_1_gb_contradicts_the_arithmetic() -> None:
    estimate = vram_estimate_for(ProfileFacts("Qwen/Qwen3-4B-Instruct-2507", "bfloat16", "", "auto", 262_144))
    assert estimate is not None
    # 36 x 8 x 128 x 2 x 2 B = 144 KiB a token x 262,144 = 36 GiB, plus 8,044,936,192 B of bf16 weights.
    assert estimate.kv_bytes + estimate.weight_bytes == 36 * GIB + 8_044_936_192 > 40 * GIB > 9.1e9


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
