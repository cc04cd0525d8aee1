"""Co-location on a sleeping card: its instances' budgets are lent to batch work until one wakes."""

from __future__ import annotations

from typing import Any

from fleet.policies.colocate import colocate, gpu_asleep, sleep_lent_bytes, wake_evictions
from fleet.policies.snapshot import BatchJobView
from tests.policies.builders import GIB, NOW, ago, config, gpu, instance, pool, snapshot

# An 80 GiB card whose exclusive instance (budget 0.9 x 80 = 72 GiB) sleeps: NVML shows 1 GiB used,
# its CUDA context, which the snapshot counts as foreign (the panel promises a sleeper nothing).
EXCLUSIVE = pool(1, isolation="exclusive", gpu_memory_utilization=0.9)


def asleep(instance_id: int = 5, **kwargs: Any) -> Any:
    return instance(instance_id, gpu_id=1, desired_state="sleeping", actual_state="sleeping", **kwargs)


def card(**kwargs: Any) -> Any:
    values: dict[str, Any] = dict(memory_used_bytes=1 * GIB, foreign_memory_bytes=1 * GIB, utilization_pct=0)
    values.update(kwargs)
    return gpu(1, **values)


def job(job_id: int, memory_gib: float, **kwargs: Any) -> BatchJobView:
    values: dict[str, Any] = dict(
        id=job_id, state="queued", generation=1, memory_bytes=int(memory_gib * GIB), created_at=ago(100 - job_id)
    )
    values.update(kwargs)
    return BatchJobView(**values)


def decide(gpus: list[Any], jobs: list[Any], instances: list[Any], pools: list[Any] = [EXCLUSIVE]) -> list[Any]:  # noqa: B006
    return colocate(snapshot(gpus=gpus, batch_jobs=jobs, instances=instances, pools=pools), config("colocate"), NOW)


def test_a_job_starts_in_the_memory_an_exclusive_instance_freed_by_sleeping() -> None:
    # Free: 80 - max(1 used, 72 promised - 72 lent + 1 foreign) = 79 GiB; 75 needed + 4 margin = 79 fits.
    (start,) = decide([card()], [job(1, 75)], [asleep()])
    assert (start.action, start.job_id, start.gpu_id) == ("colocate", 1, 1)
    assert start.inputs["free_bytes"] == 79 * GIB
    assert start.inputs["lent_bytes"] == int(80 * GIB * 0.9)
    assert start.inputs["sleeping_instances"] == [5]
    assert "it leaves when one wakes" in start.reason
    assert decide([card()], [job(1, 75.5)], [asleep()]) == []


def test_without_sleep_the_exclusive_card_stays_closed() -> None:
    awake = instance(5, gpu_id=1)
    assert decide([card(memory_used_bytes=73 * GIB)], [job(1, 1)], [awake]) == []


def test_a_card_on_its_way_to_sleep_or_to_waking_lends_nothing() -> None:
    falling_asleep = instance(5, gpu_id=1, desired_state="sleeping", actual_state="ready")
    waking = instance(5, gpu_id=1, desired_state="running", actual_state="sleeping")
    for state in (falling_asleep, waking):
        snap = snapshot(gpus=[card()], instances=[state], pools=[EXCLUSIVE])
        assert not gpu_asleep(snap, snap.gpus[0])
        assert sleep_lent_bytes(snap, snap.gpus[0]) == 0
        assert decide([card()], [job(1, 1)], [state]) == []


def test_no_duty_cycle_bound_on_a_sleeping_card_its_load_is_the_batch_works_own() -> None:
    busy = card(utilization_pct=95, memory_used_bytes=41 * GIB)
    running = job(1, 40, state="running", gpu_id=1)
    # Free: 80 - max(41 used, 72 + 40 - 72 + 1) = 39 GiB: job 2 (30 + 4) starts, job 1 stays.
    actions = decide([busy], [running, job(2, 30)], [asleep()])
    assert [(a.action, a.job_id) for a in actions] == [("colocate", 2)]
    assert actions[0].inputs["free_bytes"] == 39 * GIB


def test_the_job_is_preempted_once_an_instance_of_its_card_is_told_to_wake() -> None:
    waking = instance(5, gpu_id=1, desired_state="running", actual_state="sleeping")
    (preempt,) = decide([card(memory_used_bytes=41 * GIB)], [job(1, 40, state="running", gpu_id=1)], [waking])
    assert (preempt.action, preempt.job_id) == ("preempt", 1)
    assert "instance 5 on its GPU wakes" in preempt.reason


def test_every_instance_of_a_shared_card_must_sleep_for_the_loan() -> None:
    shared = pool(1, gpu_memory_utilization=0.4)  # 32 GiB budgets
    other = instance(6, gpu_id=1)
    # One awake: free = 80 - max(33 used, 32 + 32 + 1 foreign) = 15 GiB < 12 + 4.
    assert decide([card(memory_used_bytes=33 * GIB)], [job(1, 12)], [asleep(), other], [shared]) == []
    # Both asleep: free = 80 - max(2 used, 64 - 64 + 2 foreign) = 78 GiB, 64 of them lent.
    (start,) = decide(
        [card(memory_used_bytes=2 * GIB, foreign_memory_bytes=2 * GIB)], [job(1, 12)], [asleep(), asleep(6)], [shared]
    )
    assert start.inputs["free_bytes"] == 78 * GIB
    assert start.inputs["lent_bytes"] == 2 * int(80 * GIB * 0.4)


def test_never_on_a_mig_card_even_asleep() -> None:
    assert decide([card(mig_enabled=True)], [job(1, 1)], [asleep()]) == []


def test_a_wake_evicts_every_job_from_an_exclusive_card_and_as_few_as_fit_from_a_shared_one() -> None:
    jobs = [(3, 2 * GIB), (2, 4 * GIB), (1, 6 * GIB)]  # in eviction order

    def evicted(budgets_gib: int, *, exclusive: bool = False, foreign_gib: int = 0) -> list[int]:
        return wake_evictions(
            memory_total_bytes=80 * GIB,
            budgets_bytes=budgets_gib * GIB,
            foreign_bytes=foreign_gib * GIB,
            exclusive=exclusive,
            jobs=jobs,
        )

    assert evicted(8, exclusive=True) == [3, 2, 1]
    # Shared, 72 GiB of budgets: 72 + 12 = 84 > 80; without job 3, 82 > 80; without job 2 too, 78 fits.
    assert evicted(72) == [3, 2]
    assert evicted(68) == []  # 68 + 12 = 80 fits
    # Memory foreign processes hold counts as the budgets do: 68 + 1 + 12 = 81 > 80, 68 + 1 + 10 fits.
    assert evicted(68, foreign_gib=1) == [3]
