"""A tuning run judges its candidates by the pool's own SLA, every term of it (a first-token bound growing
with the prompt, an end-to-end bound), on the pool as ``manage.py simulate --pool`` simulates it, running the
pool's served model where the simulator has an engine model for it, and says so where it has none."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone

from fleet.decide.services import POOL_SETTINGS_FIELDS
from fleet.decide.tuning import (
    PoolSla,
    TuningRefused,
    engine_profile_for,
    pool_engine,
    pool_sla,
    pool_tuning_base,
    pool_view_fixed,
    tuning_run_apply,
    tuning_run_create,
    tuning_run_execute,
)
from fleet.models import ModelProfile, Pool, TuningRun
from fleet.sim.engine import DEFAULT_PROFILE, engine_model_for
from tests.factories import chat_profile, make_pool
from tests.support.tuning import log_requests

pytestmark = pytest.mark.django_db


def test_a_first_token_pools_sla_keeps_its_growth_with_the_prompt_and_its_end_to_end_bound() -> None:
    pool = make_pool(sla_percentile=95, sla_latency_ms=500, sla_ms_per_1k_prompt_tokens=20, sla_e2e_latency_ms=3000)
    assert pool_sla(pool) == PoolSla(sla_ms=500.0, sla_target=0.95, e2e_sla_ms=3000.0, sla_ms_per_1k_prompt_tokens=20.0)


@pytest.mark.parametrize(
    ("latency_ms", "e2e_ms", "first_token_ms", "whole_ms"),
    [
        # The tighter of the two end-to-end bounds, 1,500 ms; the TTFT bucket bound at or above it is 2.5 s.
        (2000, 1500, 2500.0, 1500.0),
        # No second bound: 800 ms on the whole answer; the bucket at or above it is 1 s.
        (800, None, 1000.0, 800.0),
    ],
)
def test_an_end_to_end_pools_bound_is_on_the_whole_answer_and_its_first_token_bound_never_binds(
    latency_ms: int, e2e_ms: int | None, first_token_ms: float, whole_ms: float
) -> None:
    pool = make_pool(sla_metric="e2e", sla_percentile=99, sla_latency_ms=latency_ms, sla_e2e_latency_ms=e2e_ms)
    assert pool_sla(pool) == PoolSla(
        sla_ms=first_token_ms, sla_target=0.99, e2e_sla_ms=whole_ms, sla_ms_per_1k_prompt_tokens=0.0
    )


def long_prompt_run(pool: Pool) -> TuningRun:
    """The pool's 600 answered requests, one a second, of 8,000-token prompts and 8 tokens out, tuned with
    one simulation (the settings it starts from, no headroom asked) on its one GPU: each prompt's prefill
    alone takes 8,000 / 80,000 tokens a second (the H100 model's prefill rate) = 100 ms, and each is done
    before the next comes."""
    log_requests(pool, 600, start=timezone.now() - timedelta(hours=1), prompt_tokens=8000, output_tokens=8)
    run = tuning_run_create(pool=pool, user="admin", days=1, max_evaluations=1, headroom=0)
    tuning_run_execute(run.pk)
    run.refresh_from_db()
    assert (run.state, run.error, run.requests, run.evaluations) == ("done", "", 600, 1)
    return run


def test_a_bound_growing_with_the_prompt_judges_each_request_by_its_own_bound() -> None:
    """A flat 50 ms first-token bound is missed by every request (its prefill alone takes 100 ms); 100 ms
    more per 1,000 prompt tokens gives each 50 + 8 x 100 = 850 ms, met by all. Judged by the flat bound
    only, the run would report none within the SLA."""
    pool = make_pool(min_instances=1, max_instances=1, sla_latency_ms=50, sla_ms_per_1k_prompt_tokens=100)

    run = long_prompt_run(pool)

    assert (run.base_attainment, run.tuned_attainment, run.meets_sla) == (1.0, 1.0, True)
    assert run.sla == "P95 time to first token <= 50 ms + 100 ms per 1k prompt tokens"


def test_an_end_to_end_bound_beside_the_first_token_one_judges_the_whole_answer() -> None:
    """Every first token comes within 500 ms, but no answer within 50 ms (its prefill alone takes 100 ms):
    with the pool's end-to-end bound, none is within the SLA and the run says the SLA is not met."""
    pool = make_pool(min_instances=1, max_instances=1, sla_latency_ms=500, sla_e2e_latency_ms=50)

    run = long_prompt_run(pool)

    assert (run.base_attainment, run.tuned_attainment, run.meets_sla) == (0.0, 0.0, False)
    assert run.sla == "P95 time to first token <= 500 ms, end-to-end <= 50 ms"


def test_the_simulated_pool_takes_what_simulate_pool_takes_beyond_the_tuned_settings() -> None:
    """Its id and name (its per-pool policy rows), and the bound per 1k prompt tokens that autoscale reads;
    never a setting the search moves (those come from the settings it starts from)."""
    pool = make_pool(sla_ms_per_1k_prompt_tokens=20, sla_e2e_latency_ms=900, min_instances=1)
    engine = engine_model_for("H100")

    fixed = pool_view_fixed(pool=pool, engine=engine, gpus=pool.max_instances)

    assert (fixed["id"], fixed["name"], fixed["sla_ms_per_1k_prompt_tokens"]) == (pool.pk, "chat-l", 20.0)
    assert not set(fixed) & set(POOL_SETTINGS_FIELDS)


def other_model_pool(**fields: Any) -> Pool:
    profile = ModelProfile.objects.create(
        name="llama-8b", model="meta-llama/Llama-3.1-8B-Instruct", served_name="llama", dtype="bfloat16"
    )
    return make_pool("llama-l", model_profile=profile, **fields)


def test_the_pools_served_model_is_simulated_where_the_simulator_has_it_and_named_a_stand_in_where_not() -> None:
    assert engine_profile_for(chat_profile()) == DEFAULT_PROFILE
    engine, label = pool_engine(make_pool(gpu_model="NVIDIA L4"))
    assert (engine.gpu_model, engine.profile, label) == ("L4", DEFAULT_PROFILE, f"L4, {DEFAULT_PROFILE}")

    engine, label = pool_engine(other_model_pool())

    assert (engine.gpu_model, engine.profile) == ("H100", DEFAULT_PROFILE)
    assert label == (
        f"H100, {DEFAULT_PROFILE} (a stand-in: the simulator has no engine model for meta-llama/Llama-3.1-8B-Instruct)"
    )


def test_a_run_whose_pools_sla_changed_since_is_stale_and_applies_nothing() -> None:
    """The bound per 1k prompt tokens is not a setting the run could change, but it judged the run."""
    pool = make_pool(min_instances=2, max_instances=4)
    run = TuningRun.objects.create(
        pool=pool,
        requested_by="admin",
        traffic_from=timezone.now() - timedelta(days=3),
        traffic_to=timezone.now(),
        max_evaluations=3,
        state=TuningRun.State.DONE,
        base_settings=pool_tuning_base(pool),
        sla=pool.sla_label,
        settings={"pool": {"min_instances": 1}},
        base_paid_gpu_hours=2.0,
        tuned_paid_gpu_hours=1.0,
        base_attainment=0.99,
        tuned_attainment=0.98,
    )
    Pool.objects.filter(pk=pool.pk).update(sla_ms_per_1k_prompt_tokens=20)

    with pytest.raises(TuningRefused, match="settings or SLA changed"):
        tuning_run_apply(run=run, user="operator")

    pool.refresh_from_db()
    assert pool.min_instances == 2
