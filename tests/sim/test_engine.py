"""The simulated engine: its documented arithmetic and its continuous batching in virtual time."""

from __future__ import annotations

import pytest

from fleet import catalog
from fleet.sim.engine import (
    GPU_FACTS,
    EngineCore,
    EngineModel,
    SimRequest,
    engine_model_for,
)

QWEN3_4B_BF16_BYTES = 4_022_468_096 * 2
KV_BYTES_PER_TOKEN = 2 * 36 * 8 * 128 * 2


def toy_model(**overrides: object) -> EngineModel:
    """Round numbers so expected times can be worked out by hand."""
    values: dict[str, object] = dict(
        gpu_model="H100",
        profile="toy",
        prefill_tokens_per_s=1000.0,
        decode_step_base_s=0.01,
        decode_step_per_seq_s=0.001,
        max_num_seqs=2,
        kv_cache_tokens=1000,
        cold_start_s=30.0,
        sleep_s=0.5,
        wake_s=0.5,
        source="test",
        max_num_batched_tokens=200,
    )
    values.update(overrides)
    return EngineModel(**values)  # type: ignore[arg-type]


def run_until_idle(core: EngineCore, now: float = 0.0) -> float:
    while True:
        duration = core.step(now)
        if duration == 0.0:
            return now
        now += duration


def test_h100_default_follows_the_stated_arithmetic() -> None:
    model = engine_model_for("NVIDIA H100 80GB HBM3")
    assert model.gpu_model == "H100"
    # The H100's steps are fitted to graph-captured measurements (tests/sim/test_engine_model.py
    # checks the fit); the other GPUs keep the datasheet arithmetic: the A100 reads its weights at
    # 75% of 2,039 GB/s.
    assert "qwen3_4b_h100_graph.json" in model.source
    assert engine_model_for("A100").decode_step_base_s == pytest.approx(QWEN3_4B_BF16_BYTES / (2039e9 * 0.75))
    assert engine_model_for("A100").prefill_tokens_per_s == pytest.approx(312e12 * 0.4 / (2 * 4_022_468_096))
    budget = int(80 * catalog.GIB * 0.9)
    expected_kv = (budget - QWEN3_4B_BF16_BYTES - 3 * catalog.GIB // 2) // KV_BYTES_PER_TOKEN
    assert model.kv_cache_tokens == expected_kv
    assert model.wake_s == pytest.approx(QWEN3_4B_BF16_BYTES / 50e9 + 0.1)
    assert "simulated" in model.source


def test_every_documented_gpu_has_a_model_ordered_by_bandwidth() -> None:
    models = {name: engine_model_for(name) for name in GPU_FACTS}
    assert set(models) == {"A10G", "L4", "L40S", "A100", "H100"}
    by_decode = sorted(models, key=lambda name: models[name].decode_step_base_s)
    assert by_decode == ["H100", "A100", "L40S", "A10G", "L4"]
    assert models["L40S"].kv_cache_tokens > models["A10G"].kv_cache_tokens > 0


def test_unknown_gpu_or_profile_is_refused_with_the_known_names() -> None:
    with pytest.raises(ValueError, match="A10G"):
        engine_model_for("TPU v5")
    with pytest.raises(ValueError, match="qwen3-4b-instruct-bf16"):
        engine_model_for("H100", "llama-70b")


def test_step_times_are_linear_in_tokens_and_batch() -> None:
    model = toy_model()
    assert model.prefill_s(500) == pytest.approx(0.01 + 0.5)
    assert model.decode_step_s(1) == pytest.approx(0.011)
    assert model.decode_step_s(10) == pytest.approx(0.02)


def test_single_request_first_token_after_prefill_then_one_token_per_step() -> None:
    core = EngineCore(toy_model())
    request = SimRequest("a", 0.0, prompt_tokens=100, output_tokens=3)
    core.submit(request, 0.0)
    assert core.waiting == 1
    end = run_until_idle(core)
    assert request.first_token_s == pytest.approx(0.01 + 0.1)
    assert request.finished_s == pytest.approx(0.11 + 2 * 0.011)
    assert end == pytest.approx(request.finished_s)
    assert core.pop_finished() == [request]
    assert core.pop_finished() == []
    assert core.running == 0 and core.kv_usage == 0.0


def test_long_prompt_is_prefilled_in_chunks_of_the_token_budget() -> None:
    core = EngineCore(toy_model())
    request = SimRequest("a", 0.0, prompt_tokens=450, output_tokens=1)
    core.submit(request, 0.0)
    durations = []
    now = 0.0
    while duration := core.step(now):
        durations.append(duration)
        now += duration
    assert durations == pytest.approx([0.21, 0.21, 0.06])
    assert request.first_token_s == request.finished_s == pytest.approx(0.48)
    assert core.prompt_tokens_total == 450  # vLLM's prompt_tokens_total counter, chunk by chunk


def test_max_num_seqs_queues_the_third_request_until_one_finishes() -> None:
    core = EngineCore(toy_model())
    requests = [SimRequest(str(i), 0.0, prompt_tokens=10, output_tokens=5) for i in range(3)]
    for request in requests:
        core.submit(request, 0.0)
    core.step(0.0)
    assert (core.running, core.waiting) == (2, 1)
    run_until_idle(core, 0.1)
    assert requests[2].first_token_s > max(r.finished_s for r in requests[:2])  # type: ignore[operator]


def test_kv_capacity_holds_back_admission_and_oversized_requests_are_refused() -> None:
    core = EngineCore(toy_model(max_num_seqs=10))
    big = SimRequest("big", 0.0, prompt_tokens=600, output_tokens=100)
    other = SimRequest("other", 0.0, prompt_tokens=300, output_tokens=100)
    core.submit(big, 0.0)
    core.submit(other, 0.0)
    core.step(0.0)
    assert (core.running, core.waiting) == (1, 1)
    assert 0 < core.kv_usage <= 1
    with pytest.raises(ValueError, match="KV tokens"):
        core.submit(SimRequest("huge", 0.0, prompt_tokens=990, output_tokens=20), 0.0)


def test_decode_streams_progress_and_batches_share_a_step() -> None:
    core = EngineCore(toy_model())
    a = SimRequest("a", 0.0, prompt_tokens=10, output_tokens=4)
    b = SimRequest("b", 0.0, prompt_tokens=10, output_tokens=4)
    core.submit(a, 0.0)
    core.submit(b, 0.0)
    now = core.step(0.0)
    assert core.tokens_generated("a") == core.tokens_generated("b") == 1
    now += core.step(now)
    assert core.tokens_generated("a") == 2
    run_until_idle(core, now)
    assert a.finished_s == b.finished_s
    core.pop_finished()
    with pytest.raises(KeyError):
        core.tokens_generated("a")


def test_busy_fraction_is_the_share_of_time_spent_in_steps() -> None:
    core = EngineCore(toy_model(max_num_batched_tokens=1000))
    core.submit(SimRequest("a", 0.0, prompt_tokens=490, output_tokens=1), 0.0)
    duration = core.step(0.0)
    assert duration == pytest.approx(0.5)
    assert core.busy_fraction(0.0, 1.0) == pytest.approx(0.5)
    core.submit(SimRequest("b", 2.0, prompt_tokens=190, output_tokens=1), 2.0)
    core.step(2.0)
    assert core.busy_fraction(0.0, 4.0) == pytest.approx(0.7 / 4)
    assert core.busy_fraction(1.0, 2.0) == 0.0
    assert core.busy_fraction(2.1, 2.2) == pytest.approx(1.0)
    assert core.step(3.0) == 0.0


def test_steps_in_one_call_match_steps_one_at_a_time() -> None:
    def run(batched: bool, horizon: float) -> list[float | None]:
        core = EngineCore(toy_model(max_num_seqs=8))
        requests = [SimRequest(str(i), 0.0, prompt_tokens=20 + i, output_tokens=5 + 7 * i) for i in range(5)]
        for request in requests:
            core.submit(request, 0.0)
        now = 0.0
        while True:
            duration = core.steps(now, now + horizon) if batched else core.step(now)
            if duration == 0.0:
                break
            now += duration
        assert core.busy_fraction(0.0, now) == pytest.approx(1.0)
        return [moment for r in requests for moment in (r.first_token_s, r.finished_s)]

    one_by_one = run(False, 0.0)
    assert run(True, 10.0) == pytest.approx(one_by_one)
    assert run(True, 0.05) == pytest.approx(one_by_one)
