"""The engine model's step times: prefill that grows with the prompt, decode by each sequence's
context, prefix-cache hits, and the H100 fit against the measured calibration.

The H100 constants, fitted by ``fleet.sim.engine`` to ``calibration/qwen3_4b_h100_graph.json``
(measured with ``bench/engine_calibration.py`` on an H100 80GB HBM3, CUDA graphs):

* prefill, a chunk of n tokens after p cached ones: a + b x n + c x ((p + n)^2 - p^2) with
  a = 2.7566 ms, b = 12.548 us a token (79,700 tokens/s), c = 8.938e-10 s a token squared;
* decode: base + per_seq x B + per_context_token x (the running sequences' contexts summed) with
  base = 4.5412 ms, per_seq = 6.342 us, per_context_token = 4.6403e-8 s (144 KiB a token read at
  3.18 TB/s).
"""

from __future__ import annotations

import pytest

from fleet.sim.engine import (
    CALIBRATIONS,
    GPU_FACTS,
    EngineCore,
    SimRequest,
    calibration,
    engine_model_for,
)

A, B, C = 2.7566e-3, 12.548e-6, 8.938e-10
BASE, PER_SEQ, PER_CONTEXT = 4.5412e-3, 6.342e-6, 4.6403e-8


def test_the_h100_fit_is_the_stated_constants() -> None:
    model = engine_model_for("H100")
    assert model.prefill_step_base_s == pytest.approx(A, rel=1e-4)
    assert 1 / model.prefill_tokens_per_s == pytest.approx(B, rel=1e-4)
    assert model.prefill_attention_s == pytest.approx(C, rel=1e-4)
    assert model.decode_step_base_s == pytest.approx(BASE, rel=1e-4)
    assert model.decode_step_per_seq_s == pytest.approx(PER_SEQ, rel=1e-3)
    assert model.decode_s_per_context_token == pytest.approx(PER_CONTEXT, rel=1e-4)
    assert CALIBRATIONS["H100"] in model.source


def test_prefill_fit_is_within_ten_percent_of_every_measured_prompt() -> None:
    """Eleven prompts, 512 to 65,536 tokens; the worst measured point is 8,192 tokens (the fit
    says 165.5 ms where 155.6 ms was measured, +6.4%)."""
    model = engine_model_for("H100")
    data = calibration(CALIBRATIONS["H100"])
    assert len(data["prefill"]) >= 7
    for point in data["prefill"]:
        assert model.prompt_prefill_s(point["tokens"]) == pytest.approx(point["seconds"], rel=0.10), point


def test_decode_fit_is_within_ten_percent_of_every_measured_step() -> None:
    model = engine_model_for("H100")
    for point in calibration(CALIBRATIONS["H100"])["decode"]:
        expected = model.decode_step_s(point["batch"], point["batch"] * point["context"])
        assert expected == pytest.approx(point["step_s"], rel=0.10), point


def test_a_32k_prompt_costs_more_than_four_8k_prompts_as_attention_grows() -> None:
    """8,192 tokens are one chunk: a + 8,192 b + 8,192^2 c = 2.757 + 102.79 + 59.98 = 165.53 ms.
    32,768 tokens are four chunks whose attention adds up to 32,768^2 c:
    4 a + 32,768 b + 32,768^2 c = 11.03 + 411.18 + 959.71 = 1,381.9 ms, 8.35 times the 8k prompt
    (the measurement: 1,398 / 155.6 = 8.98), where a flat rate would give 4."""
    model = engine_model_for("H100")
    assert model.prompt_prefill_s(8_192) == pytest.approx(0.16553, rel=1e-3)
    assert model.prompt_prefill_s(32_768) == pytest.approx(1.3819, rel=1e-3)
    assert model.prompt_prefill_s(32_768) / model.prompt_prefill_s(8_192) == pytest.approx(8.348, rel=1e-3)


def test_decode_step_sums_each_sequences_own_context() -> None:
    """Prompts of 998 and 14,999 tokens. Step 1 prefills 998 + 7,194 (the 8,192-token budget) and
    gives the short one its first token; step 2 decodes it and prefills the other 7,805; in step 3
    both decode, with contexts 998 + 2 generated = 1,000 and 14,999 + 1 = 15,000:
    base + 2 per_seq + 16,000 per_context = 4.5412 + 0.0127 + 0.7424 = 5.2963 ms."""
    model = engine_model_for("H100")
    core = EngineCore(model)
    core.submit(SimRequest("short", 0.0, prompt_tokens=998, output_tokens=50), 0.0)
    core.submit(SimRequest("long", 0.0, prompt_tokens=14_999, output_tokens=50), 0.0)
    now = core.step(0.0)
    now += core.step(now)
    assert core.step(now) == pytest.approx(0.0052963, rel=1e-4)
    assert model.decode_step_s(2, 16_000) == pytest.approx(0.0052963, rel=1e-4)


def test_batched_decode_steps_match_one_step_at_a_time_as_contexts_grow() -> None:
    """``steps`` runs decode-only steps in one call; with contexts growing a token a step each
    step is longer than the last, and the finish times must equal stepping one at a time."""
    model = engine_model_for("H100")

    def finish_times(batched: bool) -> dict[str, float | None]:
        core = EngineCore(model)
        for index in range(3):
            request = SimRequest(str(index), 0.0, prompt_tokens=3_000 * (index + 1), output_tokens=400 + 300 * index)
            core.submit(request, 0.0)
        now, finished = 0.0, dict[str, float | None]()
        while True:
            duration = core.steps(now, now + 0.5) if batched else core.step(now)
            if duration == 0.0:
                return finished
            now += duration
            finished.update({r.id: r.finished_s for r in core.pop_finished()})

    one_by_one, batched = finish_times(False), finish_times(True)
    assert batched.keys() == one_by_one.keys() == {"0", "1", "2"}
    for key, value in one_by_one.items():
        assert batched[key] == pytest.approx(value, rel=1e-9)


def test_a_prefix_cached_request_prefills_only_its_uncached_tokens() -> None:
    """12,000 prompt tokens, 8,000 of them cached: one chunk of 4,000 after 8,000 cached tokens,
    a + 4,000 b + (12,000^2 - 8,000^2) c = 2.757 + 50.19 + 71.50 = 124.45 ms to the first token.
    Uncached it is two chunks (8,192 and 3,808): 2 a + 12,000 b + 12,000^2 c = 284.80 ms."""
    model = engine_model_for("H100")
    first_token = {}
    for cached in (8_000, 0):
        core = EngineCore(model)
        core.submit(SimRequest("r", 0.0, 12_000, 1, cached_prompt_tokens=cached), 0.0)
        now = 0.0
        while duration := core.step(now):
            now += duration
        [request] = core.pop_finished()
        first_token[cached] = request.first_token_s
        assert core.prompt_tokens_total == 12_000 - cached
    assert first_token[8_000] == pytest.approx(0.12445, rel=1e-3)
    assert first_token[0] == pytest.approx(0.28480, rel=1e-3)
    assert model.prompt_prefill_s(12_000, cached_tokens=8_000) == pytest.approx(0.12445, rel=1e-3)


def test_a_fully_cached_prompt_still_computes_its_last_token() -> None:
    """As vLLM does: one token after 99 cached, a step of max(base, a + b) + (100^2 - 99^2) c =
    4.5412 ms + 0.18 us (the weights are read once whatever the prompt)."""
    core = EngineCore(engine_model_for("H100"))
    core.submit(SimRequest("r", 0.0, 100, 1, cached_prompt_tokens=100), 0.0)
    assert core.step(0.0) == pytest.approx(BASE + 199 * C, rel=1e-4)
    assert core.prompt_tokens_total == 1
    with pytest.raises(ValueError, match="negative"):
        core.submit(SimRequest("bad", 0.0, 100, 1, cached_prompt_tokens=-1), 0.0)


def test_uncalibrated_gpus_scale_the_measured_attention_by_their_compute() -> None:
    """The A100 has 312 of the H100's 989 TFLOPS, so its attention costs 989/312 = 3.17 times as much."""
    h100 = engine_model_for("H100")
    a100 = engine_model_for("A100")
    assert set(CALIBRATIONS) < set(GPU_FACTS)
    assert a100.prefill_attention_s == pytest.approx(h100.prefill_attention_s * 989 / 312)
    assert a100.prefill_step_base_s is None


def test_a_mig_slice_scales_the_new_terms_with_its_compute_and_bandwidth() -> None:
    """A slice with 2/7 of the compute and 1/4 of the bandwidth: attention and the prefill step's
    fixed part take 7/2 as long, a context token's read 4 times as long."""
    from fleet.demo.engine_server import device_model

    whole = engine_model_for("H100")
    sliced = device_model(whole, compute_share=2 / 7, bandwidth_share=0.25)
    assert sliced.prefill_attention_s == pytest.approx(whole.prefill_attention_s * 3.5)
    assert sliced.prefill_step_base_s == pytest.approx(A * 3.5, rel=1e-4)
    assert sliced.decode_s_per_context_token == pytest.approx(whole.decode_s_per_context_token * 4)
