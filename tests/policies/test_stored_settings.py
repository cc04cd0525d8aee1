"""An invalid stored policy row means the same wherever it is read: its kind's defaults, logged once, with why."""

from __future__ import annotations

import logging

import pytest

from fleet import selectors
from fleet.gateway.table import routing_table_load
from fleet.models import BatchJob, Policy
from fleet.policies import settings as policy_settings
from fleet.policies.routing import RoutingSettings
from fleet.sim.engine import engine_model_for
from fleet.sim.setup import setup_build
from fleet.sim_pool import pool_sim_setup
from fleet.telemetry import ingest
from tests.factories import GIB, make_gpu, make_node, make_pool

pytestmark = pytest.mark.django_db

# The method's defaults, copied from the schema by hand.
COLOCATE_DEFAULTS = {"min_free_memory_gib": 4.0, "max_duty_cycle_pct": 30, "max_image_mb": 200}
ROUTING_DEFAULTS = {
    "weight_code_block": 1.8,
    "weight_code_keywords": 1.5,
    "weight_math": 1.6,
    "prompt_tokens_scale": 512,
    "max_tokens_scale": 256,
    "cap": 5.0,
    "tier_s_min": 3.0,
    "tier_m_min": 1.2,
}


@pytest.fixture(autouse=True)
def nothing_reported_yet(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each row's problem is logged once a process; a test starts from a process that logged none."""
    monkeypatch.setattr(policy_settings, "_REPORTED", {})


def _simulated_policies(pool_id: int):  # type: ignore[no-untyped-def]
    engine = engine_model_for("H100")
    return pool_sim_setup(pool_id=pool_id, engine=engine, gpus=2, base=setup_build(engine=engine, gpus=2))


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]


def test_an_invalid_colocate_row_means_its_defaults_to_the_evaluate_loop_the_agent_reply_and_the_simulator(
    caplog: pytest.LogCaptureFixture,
) -> None:
    Policy.objects.filter(kind="colocate", pool=None).update(settings={"max_image_mb": "big"})
    node = make_node()
    gpu = make_gpu(node)
    pool = make_pool()
    BatchJob.objects.create(name="clean", image="cleaner:1", memory_bytes=GIB, state="running", gpu=gpu)

    with caplog.at_level(logging.WARNING):
        evaluated = selectors.policy_configs()["colocate"].for_pool(pool.pk)
        [reply] = ingest.batch_jobs_for(node)
        simulated = _simulated_policies(pool.pk).policies["colocate"].for_pool(pool.pk)
        selectors.policy_configs()

    assert evaluated == simulated == COLOCATE_DEFAULTS
    assert reply.max_image_bytes == 200 * 1_000_000
    assert _warnings(caplog) == [
        "batch co-location (fleet): stored settings are invalid (max_image_mb: expected a number, got 'big'.); "
        "the defaults of colocate apply"
    ]


def test_an_invalid_routing_row_means_its_defaults_to_the_gateway_the_evaluate_loop_and_the_simulator(
    caplog: pytest.LogCaptureFixture,
) -> None:
    Policy.objects.filter(kind="routing", pool=None).update(settings={"cap": 0.05})
    pool = make_pool()

    with caplog.at_level(logging.WARNING):
        gateway = routing_table_load().settings
        values, enabled = selectors.routing_policy_settings()
        evaluated = selectors.policy_configs()["routing"].for_pool(None)
        simulated = _simulated_policies(pool.pk).routing

    assert evaluated == values == ROUTING_DEFAULTS and enabled
    assert gateway == simulated == RoutingSettings.defaults()
    assert _warnings(caplog) == [
        "routing (request complexity) (fleet): stored settings are invalid (cap: 0.05 is below the minimum 0.1.); "
        "the defaults of routing apply"
    ]


def test_a_row_mended_and_broken_again_is_reported_again(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        for settings in ({"orphan_grace_s": -1}, {"orphan_grace_s": -1}, {}, {"orphan_grace_s": -1}):
            Policy.objects.filter(kind="reap", pool=None).update(settings=settings)
            assert selectors.policy_configs()["reap"].for_pool(None) == {"orphan_grace_s": 600}
    assert len(_warnings(caplog)) == 2
