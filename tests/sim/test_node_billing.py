"""Billing by the node: a node is paid from its first taken GPU until all of them are free (and it is released)."""

from __future__ import annotations

import pytest

from fleet.sim.billing import node_billed_hours, node_billed_intervals, node_of
from fleet.sim.setup import SimSetup
from fleet.sim.simulate import Simulation
from fleet.sim.traces import Trace, TraceRequest
from fleet.states import READY
from tests.sim.toy import START, toy_setup

# Two nodes of two GPUs: GPU 1 held 0-100 s, GPU 2 50-300 s (node 1), GPU 3 0-60 s (node 2).
HOLDS: list[tuple[int, float, float | None]] = [(1, 0.0, 100.0), (2, 50.0, 300.0), (3, 0.0, 60.0)]


def test_gpus_are_numbered_onto_nodes_in_order() -> None:
    assert [node_of(gpu, 2) for gpu in (1, 2, 3, 4)] == [1, 1, 2, 2]
    assert [node_of(gpu, 8) for gpu in (1, 8, 9, 16, 17)] == [1, 1, 2, 2, 3]
    assert [node_of(gpu, 1) for gpu in (1, 2, 3)] == [1, 2, 3]
    with pytest.raises(ValueError):
        node_of(1, 0)


def test_two_nodes_hand_computed_with_release() -> None:
    """Node 1 is paid from 0 s (GPU 1 taken) to 300 s (GPU 2 freed): its GPUs' holds overlap at
    50-100 s, so it never empties. Node 2 is paid 0-60 s. 360 node-seconds = 0.1 node-hours."""
    billed = node_billed_intervals(HOLDS, gpus_per_node=2, release=True, end=300.0)
    assert billed == {1: [(0.0, 300.0)], 2: [(0.0, 60.0)]}
    assert node_billed_hours(HOLDS, gpus_per_node=2, release=True, end=300.0) == pytest.approx(360 / 3600)


def test_two_nodes_hand_computed_without_release() -> None:
    """A reserved fleet pays both nodes from their first use (0 s) to the end (300 s): 600 node-seconds."""
    billed = node_billed_intervals(HOLDS, gpus_per_node=2, release=False, end=300.0)
    assert billed == {1: [(0.0, 300.0)], 2: [(0.0, 300.0)]}
    assert node_billed_hours(HOLDS, gpus_per_node=2, release=False, end=300.0) == pytest.approx(600 / 3600)


def test_a_node_that_empties_is_released_and_an_open_hold_runs_to_the_end() -> None:
    """GPU 1 held 0-10 s and again from 20 s, still held at the end (40 s): paid 10 + 20 = 30 s, the
    10-20 s gap free; without release 0-40 s. A node never used costs nothing."""
    holds: list[tuple[int, float, float | None]] = [(1, 0.0, 10.0), (1, 20.0, None)]
    assert node_billed_hours(holds, gpus_per_node=4, release=True, end=40.0) == pytest.approx(30 / 3600)
    assert node_billed_hours(holds, gpus_per_node=4, release=False, end=40.0) == pytest.approx(40 / 3600)
    assert node_billed_hours([], gpus_per_node=4, release=False, end=40.0) == 0.0


def test_one_gpu_per_node_bills_each_gpu_its_own_holds() -> None:
    """The default: every GPU is its own bill, so the hours are the GPUs' holds: 100 + 250 + 60 = 410 s."""
    assert node_billed_hours(HOLDS, gpus_per_node=1, release=True, end=300.0) == pytest.approx(410 / 3600)


def schedule_run(setup: SimSetup) -> Simulation:
    """An oracle-style schedule of warm instances: 3 over [0, 30), 1 over [30, 90), 2 from 90 s.

    Requests at 0 s and 100 s (100 prompt tokens, one output token): the run ends at 100.11 s.
    At 0 s three instances take GPUs 1, 2, 3; at 30 s the two with the highest ids (GPUs 3 and 2)
    are stopped; at 90 s a fourth instance is placed.
    """
    trace = Trace(name="hand", start=START, requests=(TraceRequest(0.0, 100, 1), TraceRequest(100.0, 100, 1)))
    simulation = Simulation(trace=trace, setup=setup, label="schedule", schedule=(3, 1, 1, 2))
    return simulation


def test_a_simulated_fleet_is_billed_by_the_node_hand_computed() -> None:
    """Two nodes of two GPUs. Holds: GPU 1 0-100.11 s; GPU 2 0-30 s and, packed onto node 1 which is
    still paid, 90-100.11 s; GPU 3 0-30 s.

    Node 1 paid 0-100.11 s, node 2 0-30 s: 130.11 node-seconds, 260.22 GPU-seconds paid. Held:
    100.11 + 30 + 10.11 + 30 = 170.22 GPU-seconds. Idle but paid: GPU 2 30-90 s (60 s) and GPU 4
    0-30 s (30 s) = 90 GPU-seconds.
    """
    simulation = schedule_run(toy_setup(gpus=4, gpus_per_node=2))
    result = simulation.run()
    assert result.duration_s == pytest.approx(100.11)
    holds = sorted(simulation.gpu_holds)
    assert [gpu for gpu, _, _ in holds] == [1, 2, 2, 3]
    assert [t for _, start, end in holds for t in (start, end)] == pytest.approx(
        [0.0, 100.11, 0.0, 30.0, 90.0, 100.11, 0.0, 30.0]
    )
    assert result.gpu_hours == pytest.approx(170.22 / 3600)
    assert result.node_hours == pytest.approx(130.11 / 3600)
    assert result.paid_gpu_hours == pytest.approx(260.22 / 3600)
    assert result.idle_paid_gpu_hours == pytest.approx(90 / 3600)


def test_a_reserved_fleet_pays_every_node_it_used_to_the_end() -> None:
    """Same holds; both nodes paid 0-100.11 s: 200.22 node-seconds, 400.44 GPU-seconds."""
    result = schedule_run(toy_setup(gpus=4, gpus_per_node=2, node_release=False)).run()
    assert result.gpu_hours == pytest.approx(170.22 / 3600)
    assert result.node_hours == pytest.approx(200.22 / 3600)
    assert result.paid_gpu_hours == pytest.approx(400.44 / 3600)


def test_one_gpu_per_node_pays_what_is_held() -> None:
    """The default: at 90 s the lowest free GPU (2) is taken; every GPU is its own bill, so paid = held."""
    simulation = schedule_run(toy_setup(gpus=4))
    result = simulation.run()
    assert result.gpus_per_node == 1
    assert result.node_hours == pytest.approx(170.22 / 3600)
    assert result.paid_gpu_hours == pytest.approx(result.gpu_hours)
    assert result.idle_paid_gpu_hours == pytest.approx(0.0)


def test_placement_packs_onto_a_node_already_paid_for() -> None:
    """Two nodes of two GPUs with an instance on GPU 3: the next goes to GPU 4 (node 2, paid) rather
    than GPU 1 (node 1, which would start a second bill); with one GPU per node, to GPU 1."""
    trace = Trace(name="hand", start=START, requests=(TraceRequest(0.0, 100, 1),))
    for per_node, expected in ((2, 4), (1, 1)):
        simulation = Simulation(
            trace=trace, setup=toy_setup(gpus=4, gpus_per_node=per_node), label="static", static_instances=0
        )
        instance = simulation._new_instance(1, 3)
        simulation._set_actual(instance, READY)
        assert simulation._free_gpu() == expected


def test_the_snapshot_shows_the_policies_the_nodes() -> None:
    """Production placement reads each GPU's node from the snapshot: GPUs 1-2 on node 1, 3-4 on node 2."""
    trace = Trace(name="hand", start=START, requests=(TraceRequest(0.0, 100, 1),))
    simulation = Simulation(trace=trace, setup=toy_setup(gpus=4, gpus_per_node=2), label="policy")
    gpus = simulation._snapshot().gpus
    assert [g.node_id for g in gpus] == [1, 1, 2, 2]
    assert [g.node_name for g in gpus] == ["simulated-1", "simulated-1", "simulated-2", "simulated-2"]
