"""The estimator's arithmetic against the figures anyone can check by hand."""

from __future__ import annotations

import pytest

from fleet.policies.placement import PlacementRefused, placement_choose
from fleet.policies.vram import KIB, OVERHEAD_BYTES, ProfileFacts, vram_estimate_for
from tests.policies.builders import GIB, QWEN, gpu, pool, qwen_estimate, snapshot


def test_qwen3_4b_bf16_kv_cache_is_144_kib_a_token() -> None:
    estimate = qwen_estimate()
    assert estimate is not None
    assert estimate.kv_bytes_per_token == 2 * 36 * 8 * 128 * 2 == 144 * KIB


@pytest.mark.parametrize(("tokens", "gib"), [(32_768, 4.5), (262_144, 36.0), (8_192, 1.125)])
def test_kv_cache_for_a_full_sequence(tokens: int, gib: float) -> None:
    estimate = qwen_estimate(tokens)
    assert estimate is not None
    assert estimate.kv_bytes == gib * GIB


def test_weights_follow_the_bits_of_dtype_or_quantization() -> None:
    bf16, awq, fp32 = (
        qwen_estimate(),
        qwen_estimate(quantization="awq", dtype="float16"),
        qwen_estimate(dtype="float32"),
    )
    assert bf16 is not None and awq is not None and fp32 is not None
    assert bf16.weight_bytes == 4_022_468_096 * 2  # about 8 GB, 7.49 GiB
    assert awq.weight_bytes == 4_022_468_096 // 2
    assert fp32.weight_bytes == 4_022_468_096 * 4
    assert fp32.kv_bytes_per_token == 2 * bf16.kv_bytes_per_token


def test_a_float32_profile_takes_4_bytes_a_weight_and_a_kv_element_and_the_overhead() -> None:
    estimate = vram_estimate_for(ProfileFacts(QWEN, "float32", "", "auto", 8_192))
    assert estimate is not None
    # 4,022,468,096 x 4 B = 16,089,872,384; 2 x 36 x 8 x 128 x 4 B = 294,912 B a token x 8,192
    # = 2,415,919,104; overhead 1.5 GiB = 1,610,612,736; in all 20,116,404,224 B.
    assert (estimate.weight_bytes, estimate.kv_bytes, estimate.overhead_bytes) == (
        16_089_872_384,
        2_415_919_104,
        1_610_612_736,
    )
    assert estimate.required_bytes == 20_116_404_224


def test_fp8_kv_cache_halves_the_cache() -> None:
    estimate = qwen_estimate(32_768, kv_cache_dtype="fp8")
    assert estimate is not None
    assert estimate.kv_bytes == 2.25 * GIB


def test_required_is_weights_plus_one_sequence_plus_overhead_and_the_line_shows_it() -> None:
    estimate = qwen_estimate(262_144)
    assert estimate is not None
    assert estimate.required_bytes == 4_022_468_096 * 2 + 36 * GIB + OVERHEAD_BYTES
    line = estimate.arithmetic()
    assert "2 x 36 layers x 8 KV heads x 128 head dim x 2 B = 144 KiB/token" in line
    assert "x 262,144 tokens = 36.0 GiB" in line
    assert "4,022,468,096 parameters x 16 bit = 7.5 GiB" in line


def test_unknown_models_and_quantizations_have_no_estimate() -> None:
    assert vram_estimate_for(ProfileFacts("acme/mystery", "auto", "", "auto", 1)) is None
    assert vram_estimate_for(ProfileFacts(QWEN, "auto", "gguf", "auto", 1)) is None


def test_a_256k_context_on_24_gib_cards_is_refused_with_the_arithmetic() -> None:
    l4 = gpu(1, model_name="NVIDIA L4", memory_total_bytes=24 * GIB)
    refused = placement_choose(snapshot(pools=[pool(estimate=qwen_estimate(262_144))], gpus=[l4]), pool_id=1)
    assert isinstance(refused, PlacementRefused)
    assert "36.0 GiB" in refused.message and "144 KiB/token" in refused.message
    assert "budget 24.0 GiB x 0.90 = 21.6 GiB < 45.0 GiB needed" in refused.message


def test_a_256k_context_fits_an_h100() -> None:
    placed = placement_choose(snapshot(pools=[pool(estimate=qwen_estimate(262_144))], gpus=[gpu(1)]), pool_id=1)
    assert not isinstance(placed, PlacementRefused)
    assert placed.reservation_bytes == int(80 * GIB * 0.9)
