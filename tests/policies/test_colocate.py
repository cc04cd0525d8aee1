"""Co-location: start batch work where memory and compute are spare; preempt it when inference wants them."""

from __future__ import annotations

from typing import Any

from fleet.policies.colocate import colocate
from fleet.policies.snapshot import BatchJobView
from tests.policies.builders import GIB, NOW, ago, config, gpu, instance, pool, snapshot


def job(job_id: int, memory_gib: float = 2, **kwargs: Any) -> BatchJobView:
    values: dict[str, Any] = dict(
        id=job_id, state="queued", generation=1, memory_bytes=int(memory_gib * GIB), created_at=ago(100 - job_id)
    )
    values.update(kwargs)
    return BatchJobView(**values)


def decide(gpus: list[Any], jobs: list[Any], instances: list[Any] = (), pools: list[Any] = ()) -> list[Any]:  # type: ignore[assignment]
    snap = snapshot(gpus=gpus, batch_jobs=jobs, instances=instances, pools=pools or [pool()])
    return [(a.action, a.job_id, a.gpu_id) for a in colocate(snap, config("colocate"), NOW)]


def test_a_job_starts_where_free_memory_exceeds_need_plus_margin() -> None:
    # 80 GiB, 74 used: 6 GiB free = 2 needed + 4 margin exactly.
    assert decide([gpu(1, memory_used_bytes=74 * GIB, utilization_pct=10)], [job(1)]) == [("colocate", 1, 1)]
    assert decide([gpu(1, memory_used_bytes=74 * GIB + 1, utilization_pct=10)], [job(1)]) == []


def test_duty_cycle_bound() -> None:
    assert decide([gpu(1, utilization_pct=29.9)], [job(1)]) == [("colocate", 1, 1)]
    assert decide([gpu(1, utilization_pct=30)], [job(1)]) == []
    assert decide([gpu(1, utilization_pct=None)], [job(1)]) == []


def test_memory_promised_to_a_starting_instance_is_not_free() -> None:
    starting = instance(5, gpu_id=1, actual_state="starting")
    snap_gpu = gpu(1, memory_used_bytes=0, utilization_pct=0)
    assert decide([snap_gpu], [job(1, memory_gib=5)], [starting], [pool(gpu_memory_utilization=0.9)]) == []


def test_priority_then_age_and_the_free_memory_is_spent() -> None:
    jobs = [job(1, memory_gib=40), job(2, memory_gib=40, priority=5), job(3, memory_gib=40)]
    assert decide([gpu(1, memory_used_bytes=0)], jobs) == [("colocate", 2, 1)]


def test_never_on_mig_or_exclusive_gpus() -> None:
    exclusive = [pool(1, isolation="exclusive", gpu_memory_utilization=0.1)]
    assert decide([gpu(1, mig_enabled=True)], [job(1)]) == []
    assert decide([gpu(1)], [job(1)], [instance(5, gpu_id=1)], exclusive) == []


def test_preempted_when_inference_load_rises_or_memory_is_wanted() -> None:
    running = [job(1, state="running", gpu_id=1), job(2, state="running", gpu_id=2), job(3, state="running", gpu_id=3)]
    gpus = [
        gpu(1, utilization_pct=30, memory_used_bytes=10 * GIB),
        gpu(2, utilization_pct=5, memory_used_bytes=77 * GIB),
        gpu(3, utilization_pct=5, memory_used_bytes=10 * GIB),
    ]
    assert decide(gpus, running) == [("preempt", 1, 1), ("preempt", 2, 2)]


def test_a_preempted_job_is_requeued_but_not_on_the_gpu_it_just_left() -> None:
    gpus = [gpu(1, utilization_pct=50, memory_used_bytes=10 * GIB), gpu(2, utilization_pct=5, memory_used_bytes=0)]
    jobs = [job(1, state="running", gpu_id=1), job(2, state="preempted", gpu_id=1)]
    assert decide(gpus, jobs) == [("preempt", 1, 1), ("colocate", 2, 2)]
