"""Placement honours isolation, memory promised to others and memory foreign processes hold."""

from __future__ import annotations

import pytest

from fleet.policies.actions import DesireInstance, LaunchInstance
from fleet.policies.placement import Placement, PlacementRefused, placement_choose, pool_wake_actions
from fleet.policies.snapshot import BatchJobView, MigView
from tests.policies.builders import GIB, NOW, gpu, instance, pool, snapshot

SMALL = 0.3  # 24 GiB of an 80 GiB card: room for a chat profile, leaves room for others


def place(**kwargs):  # type: ignore[no-untyped-def]
    return placement_choose(snapshot(**kwargs), pool_id=1)


def test_shared_pools_pack_the_fullest_gpu_that_fits() -> None:
    pools = [pool(1, gpu_memory_utilization=SMALL), pool(2, gpu_memory_utilization=SMALL)]
    placed = place(pools=pools, gpus=[gpu(1), gpu(2)], instances=[instance(5, pool_id=2, gpu_id=2)])
    assert isinstance(placed, Placement) and placed.gpu_id == 2


@pytest.mark.parametrize(
    ("foreign_gib", "fits"),
    [(0, True), (56, True), (57, False)],  # 80 - 56 = 24 = the budget exactly; one GiB more does not fit
)
def test_memory_held_by_foreign_processes_is_subtracted(foreign_gib: int, fits: bool) -> None:
    placed = place(
        pools=[pool(gpu_memory_utilization=SMALL)],
        gpus=[gpu(1, foreign_memory_bytes=foreign_gib * GIB, memory_used_bytes=foreign_gib * GIB)],
    )
    assert isinstance(placed, Placement) is fits
    if not fits:
        assert "foreign" in placed.message


def test_exclusive_pools_need_a_gpu_without_other_instances() -> None:
    pools = [pool(1, isolation="exclusive"), pool(2, gpu_memory_utilization=0.1)]
    placed = place(pools=pools, gpus=[gpu(1), gpu(2)], instances=[instance(5, pool_id=2, gpu_id=1)])
    assert isinstance(placed, Placement) and placed.gpu_id == 2
    refused = place(pools=pools, gpus=[gpu(1)], instances=[instance(5, pool_id=2, gpu_id=1)])
    assert isinstance(refused, PlacementRefused) and "exclusive pools need an empty GPU" in refused.message


def test_shared_pools_never_join_an_exclusive_instance() -> None:
    pools = [pool(1, gpu_memory_utilization=0.1), pool(2, isolation="exclusive", gpu_memory_utilization=0.1)]
    refused = place(pools=pools, gpus=[gpu(1)], instances=[instance(5, pool_id=2, gpu_id=1)])
    assert isinstance(refused, PlacementRefused) and "held by an exclusive instance" in refused.message


def test_stopped_instances_promise_nothing() -> None:
    pools = [pool(1, isolation="exclusive")]
    gone = instance(5, gpu_id=1, desired_state="stopped", actual_state="stopped")
    placed = place(pools=pools, gpus=[gpu(1)], instances=[gone])
    assert isinstance(placed, Placement)


@pytest.mark.parametrize("actual_state", ["starting", "ready", "stopping"])
def test_an_instance_told_to_stop_holds_its_gpu_until_its_process_has_exited(actual_state: str) -> None:
    pools = [pool(1, isolation="exclusive")]
    leaving = instance(5, gpu_id=1, desired_state="stopped", actual_state=actual_state)
    refused = place(pools=pools, gpus=[gpu(1)], instances=[leaving])
    assert isinstance(refused, PlacementRefused)
    assert "holds 1 instance(s); exclusive pools need an empty GPU" in refused.message


def job(gib_: int, gpu_id: int = 1) -> BatchJobView:
    return BatchJobView(
        id=gpu_id, state="running", generation=1, memory_bytes=gib_ * GIB, created_at=NOW, gpu_id=gpu_id
    )


@pytest.mark.parametrize(
    ("isolation", "utilization", "job_gib", "preempts"),
    [
        # Shared, budget 24 GiB of 80: a 56 GiB job leaves exactly 24 beside it; 57 GiB must go.
        ("shared", SMALL, 56, False),
        ("shared", SMALL, 57, True),
        # Exclusive, budget 72 GiB: the card's jobs go whatever their size, as a wake's do.
        ("exclusive", 0.9, 1, True),
    ],
)
def test_batch_jobs_only_borrow_memory_a_new_instance_takes_back(
    isolation: str, utilization: float, job_gib: int, preempts: bool
) -> None:
    placed = place(
        pools=[pool(isolation=isolation, gpu_memory_utilization=utilization)], gpus=[gpu(1)], batch_jobs=[job(job_gib)]
    )
    assert isinstance(placed, Placement)
    assert (placed.gpu_id, placed.free_bytes, placed.preempts_batch) == (1, 80 * GIB, preempts)
    assert ("taking back memory lent to batch jobs" in placed.explanation) is preempts


@pytest.mark.parametrize(("foreign_gib", "preempts"), [(0, False), (1, True)])
def test_memory_foreign_processes_hold_counts_in_what_a_launch_takes_back(foreign_gib: int, preempts: bool) -> None:
    # Budget 24 GiB of 80 beside a 56 GiB job: it fits exactly with nothing foreign; with 1 GiB
    # foreign the budget still fits the card (80 - 1 = 79 free) but not beside the job, which goes.
    placed = place(
        pools=[pool(gpu_memory_utilization=SMALL)],
        gpus=[gpu(1, foreign_memory_bytes=foreign_gib * GIB, memory_used_bytes=(56 + foreign_gib) * GIB)],
        batch_jobs=[job(56)],
    )
    assert isinstance(placed, Placement)
    assert (placed.free_bytes, placed.preempts_batch) == ((80 - foreign_gib) * GIB, preempts)


def test_a_card_with_no_job_to_preempt_is_chosen_first() -> None:
    # Card 1 is the tighter fit for the shared pool (a 40 GiB instance of pool 2 on it) but its
    # 30 GiB job would have to go; card 2's 10 GiB job may stay beside the 24 GiB budget.
    pools = [pool(1, gpu_memory_utilization=SMALL), pool(2, gpu_memory_utilization=0.5)]
    placed = place(
        pools=pools,
        gpus=[gpu(1), gpu(2)],
        instances=[instance(5, pool_id=2, gpu_id=1)],
        batch_jobs=[job(30), job(10, 2)],
    )
    assert isinstance(placed, Placement) and (placed.gpu_id, placed.preempts_batch) == (2, False)
    exclusive = place(pools=[pool(1, isolation="exclusive")], gpus=[gpu(1), gpu(2)], batch_jobs=[job(10)])
    assert isinstance(exclusive, Placement) and (exclusive.gpu_id, exclusive.preempts_batch) == (2, False)


def test_mig_pools_take_a_free_slice_of_their_profile() -> None:
    mig_pool = pool(1, isolation="mig", mig_profile="3g.40gb", gpu_memory_utilization=0.9)
    devices = [
        MigView(id=10, gpu_id=1, uuid="MIG-a", profile="1g.10gb", memory_total_bytes=10 * GIB),
        MigView(id=11, gpu_id=1, uuid="MIG-b", profile="3g.40gb", memory_total_bytes=40 * GIB),
        MigView(id=12, gpu_id=1, uuid="MIG-c", profile="3g.40gb", memory_total_bytes=40 * GIB),
    ]
    taken = instance(5, gpu_id=1, mig_device_id=11)
    placed = place(pools=[mig_pool], gpus=[gpu(1, mig_enabled=True)], mig_devices=devices, instances=[taken])
    assert isinstance(placed, Placement) and placed.mig_device_id == 12
    refused = place(pools=[mig_pool], gpus=[gpu(1, mig_enabled=False)], mig_devices=devices)
    assert isinstance(refused, PlacementRefused) and "MIG not enabled" in refused.message


def test_a_mig_slice_too_small_for_the_model_is_refused_with_the_arithmetic() -> None:
    mig_pool = pool(1, isolation="mig", mig_profile="1g.10gb")
    devices = [MigView(id=10, gpu_id=1, uuid="MIG-a", profile="1g.10gb", memory_total_bytes=10 * GIB)]
    refused = place(pools=[mig_pool], gpus=[gpu(1, mig_enabled=True)], mig_devices=devices)
    assert isinstance(refused, PlacementRefused)
    assert "budget 10.0 GiB x 0.90 = 9.0 GiB < 10.1 GiB needed" in refused.message


def test_gpu_model_and_offline_nodes_are_honoured() -> None:
    refused = place(
        pools=[pool(gpu_model="NVIDIA L4")], gpus=[gpu(1), gpu(2, model_name="NVIDIA L4", node_online=False)]
    )
    assert isinstance(refused, PlacementRefused)
    assert "pool wants NVIDIA L4" in refused.message and "node offline" in refused.message


def test_waking_prefers_a_sleeping_instance_then_a_new_placement() -> None:
    sleeping = instance(5, desired_state="sleeping", actual_state="sleeping", generation=7)
    woken = pool_wake_actions(
        snapshot(pools=[pool()], gpus=[gpu(5)], instances=[sleeping]), pool_id=1, kind="gateway", reason="request"
    )
    assert woken == [
        DesireInstance(
            kind="gateway",
            action="wake",
            reason="request; waking sleeping instance 5",
            inputs={"pool": "pool-1", "active_instances": 1},
            instance_id=5,
            pool_id=1,
            generation=7,
            state="running",
        )
    ]
    launched = pool_wake_actions(snapshot(pools=[pool()], gpus=[gpu(1)]), pool_id=1, kind="gateway", reason="r")
    assert isinstance(launched, list) and isinstance(launched[0], LaunchInstance)
    assert (launched[0].gpu_id, launched[0].active_seen) == (1, 0)


def test_waking_a_full_pool_is_refused() -> None:
    refused = pool_wake_actions(
        snapshot(pools=[pool(max_instances=1)], gpus=[gpu(1), gpu(2)], instances=[instance(1)]),
        pool_id=1,
        kind="gateway",
        reason="r",
    )
    assert isinstance(refused, PlacementRefused) and "maximum of 1" in refused.message


def test_a_stopped_instance_on_the_chosen_gpu_is_started_again() -> None:
    stopped = instance(5, gpu_id=1, desired_state="stopped", actual_state="stopped", generation=4)
    actions = pool_wake_actions(
        snapshot(pools=[pool()], gpus=[gpu(1)], instances=[stopped]), pool_id=1, kind="prewarm", reason="r"
    )
    assert isinstance(actions, list)
    assert isinstance(actions[0], DesireInstance) and (actions[0].instance_id, actions[0].action) == (5, "start")
