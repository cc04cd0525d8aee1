"""Cold starts drawn from a stated model: provisioning, image pull, weight download, load, failure."""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import pytest

from fleet.gateway.config import GatewayConfig
from fleet.sim.setup import SimSetup, setup_build
from fleet.sim.simulate import Simulation
from fleet.sim.startup import ColdStartModel, start_draw
from fleet.sim.traces import Trace, TraceRequest
from fleet.states import STARTING
from tests.sim.toy import START, TOY

# Qwen3-4B in bf16: 4,022,468,096 parameters x 2 bytes.
WEIGHT_BYTES = 8_044_936_192
# At 1 GB/s the download takes 8.044936192 s.
DOWNLOAD_S = WEIGHT_BYTES / 1e9
ONLY_THE_GATEWAY: dict[str, Any] = {
    "autoscale": None,
    "prewarm": None,
    "colocate": None,
    "reap": None,
    "idle_reclaim": None,
}


def setup_with(
    model: ColdStartModel, *, gpus: int, policies: Mapping[str, Any] | None = None, **fields: Any
) -> SimSetup:
    values = {"policies": ONLY_THE_GATEWAY if policies is None else policies, "pool": {"idle_stop_after_s": 200}}
    base = setup_build(engine=TOY, gpus=gpus, values=values)
    return replace(
        base,
        start_jitter=0.0,
        cold_start=model,
        gateway=replace(GatewayConfig(), hold_timeout_s=300.0),
        **fields,
    )


def trace_of(*arrivals: float) -> Trace:
    return Trace(name="hand", start=START, requests=tuple(TraceRequest(t, 100, 1) for t in arrivals))


def test_the_default_model_is_a_cached_load_and_nothing_else() -> None:
    """Weights cached, image present, no failure, no provisioning: the start is the load alone."""
    draw = start_draw(
        ColdStartModel(), random.Random(1), at_s=0.0, load_s=31.5, weight_bytes=WEIGHT_BYTES, node_fresh=False
    )
    assert (draw.weights_cached, draw.image_present, draw.fails, draw.provisioned) == (True, True, False, False)
    assert draw.total_s == 31.5


def test_draws_follow_the_stated_probabilities_and_each_start_its_formula() -> None:
    """2,000 draws, 30% without cached weights, 20% pulling the image: expected 600 and 400, standard
    deviations sqrt(2000 x 0.3 x 0.7) = 20.5 and sqrt(2000 x 0.2 x 0.8) = 17.9; allowed 4 of them.
    Each start: 60 s provisioning (a fresh node) + 100 s pull if pulled + 8.04 s download if not cached + 30 s."""
    model = ColdStartModel(
        weights_cached_p=0.7, download_bytes_per_s=1e9, image_present_p=0.8, image_pull_s=100.0, node_provision_s=60
    )
    rng = random.Random(11)
    draws = [
        start_draw(model, rng, at_s=0.0, load_s=30.0, weight_bytes=WEIGHT_BYTES, node_fresh=True) for _ in range(2000)
    ]
    uncached = sum(1 for d in draws if not d.weights_cached)
    pulled = sum(1 for d in draws if not d.image_present)
    assert abs(uncached - 600) <= 4 * 20.5
    assert abs(pulled - 400) <= 4 * 17.9
    for d in draws:
        expected = 60 + (0 if d.image_present else 100) + (0 if d.weights_cached else DOWNLOAD_S) + 30
        assert d.total_s == pytest.approx(expected)
    assert not any(d.fails for d in draws)


def test_probabilities_are_checked() -> None:
    with pytest.raises(ValueError, match="failure_p"):
        ColdStartModel(failure_p=1.5)


def bursts(count: int, every_s: float = 600.0) -> Trace:
    """One request every ``every_s``: idle reclaim stops the instance between them (200 s idle, longer
    than any start here: idle reclaim counts a starting instance idle from its launch), so each
    request wakes the pool and starts the stopped instance again: one start per request."""
    return trace_of(*[i * every_s for i in range(count)])


IDLE_ONLY: dict[str, Any] = {**ONLY_THE_GATEWAY, "idle_reclaim": {}}


def test_each_simulated_start_takes_its_drawn_case() -> None:
    """30 starts, half without cached weights and half pulling the image, each on a node provisioned
    again (one GPU a node, released when its instance stops): 15 s + 100 s if pulled + 8.04 s if
    downloaded + 30 s, measured from the start to ready. Counts within 4 standard deviations
    (sqrt(30 x 0.25) = 2.7) of 15."""
    model = ColdStartModel(
        weights_cached_p=0.5, download_bytes_per_s=1e9, image_present_p=0.5, image_pull_s=100.0, node_provision_s=15
    )
    simulation = Simulation(
        trace=bursts(30), setup=setup_with(model, gpus=1, policies=IDLE_ONLY), label="policy", initial_instances=0
    )
    result = simulation.run()
    assert result.failed == 0
    assert len(simulation.starts) == result.cold_starts == 30
    expected = [
        15 + (0 if d.image_present else 100) + (0 if d.weights_cached else DOWNLOAD_S) + 30 for d in simulation.starts
    ]
    assert simulation.cold_measured[1] == pytest.approx(expected)
    assert result.node_provisions == 30
    assert abs(result.starts_uncached - 15) <= 4 * 2.7 and abs(result.image_pulls - 15) <= 4 * 2.7
    assert 0 < result.starts_uncached < 30 and 0 < result.image_pulls < 30


def test_a_reserved_node_is_provisioned_once() -> None:
    """Without release the node stays paid after its instance stops, so only the first start provisions:
    90 s (60 + 30) for the first, 30 s for the others."""
    model = ColdStartModel(node_provision_s=60)
    simulation = Simulation(
        trace=bursts(3),
        setup=setup_with(model, gpus=1, policies=IDLE_ONLY, node_release=False),
        label="policy",
        initial_instances=0,
    )
    result = simulation.run()
    assert simulation.cold_measured[1] == pytest.approx([90.0, 30.0, 30.0])
    assert result.node_provisions == 1
    # The first request waited for the provisioned start: 90 s + 0.11 s of prefill.
    assert result.ttft_s[0] == pytest.approx(90.11)


class Scripted(random.Random):
    """A random stream that returns the given values, in order."""

    def __init__(self, values: list[float]) -> None:
        super().__init__(0)
        self.values = list(values)

    def random(self) -> float:
        return self.values.pop(0)


def test_a_failed_start_leaves_the_instance_failed_and_the_fleet_serves() -> None:
    """Two GPUs, each its own node; only the gateway acts. Each start draws (cached, image, failure).

    0 s: a request finds no instance; the gateway launches instance 1 on GPU 1. Its start fails at
    30 s (draw 0.1 < 0.5): it is failed, still desired running, so GPU 1 stays taken and its node
    paid. 31 s: a second request; the gateway's wake (30 s after the first) launches instance 2 on
    GPU 2, the one placement finds free. 35 s: the agent restarts instance 1 (5 s after the failure).
    61 s: instance 2 is ready and serves both held requests, each a 0.01 + 100 / 1000 s prefill: first
    tokens at 61.11 and 61.22 s (the second joins the step after the first's), the end of the run.

    Held (billed) GPU-seconds: instance 1 0-30 and 35-61.22, instance 2 31-61.22 = 30 + 26.22 + 30.22
    = 86.44. Paid: GPU 1 0-61.22, GPU 2 31-61.22 = 91.44; 5 s more than held, the failed gap.
    """
    model = ColdStartModel(failure_p=0.5)
    simulation = Simulation(
        trace=trace_of(0.0, 31.0), setup=setup_with(model, gpus=2), label="policy", initial_instances=0
    )
    simulation.start_random = Scripted([0.0, 0.0, 0.1, 0.0, 0.0, 0.9, 0.0, 0.0, 0.9])
    result = simulation.run()
    assert [(s.at_s, s.fails) for s in simulation.starts] == [(0.0, True), (31.0, False), (35.0, False)]
    assert result.start_failures == 1 and result.failed == 0 and result.cold_starts == 1
    assert result.ttft_s == pytest.approx([61.11, 61.22 - 31])
    assert [i.gpu_id for i in simulation.instances.values()] == [1, 2]
    assert simulation.instances[1].actual == STARTING
    assert result.gpu_hours == pytest.approx(86.44 / 3600)
    assert result.paid_gpu_hours == pytest.approx(91.44 / 3600)
    assert result.idle_paid_gpu_hours == pytest.approx(5 / 3600)
