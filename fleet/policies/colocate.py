"""Co-location: light batch jobs on inference GPUs whose memory and compute are spare.

A queued (or preempted, hence requeued) job starts on a GPU whose free memory exceeds its
need plus ``min_free_memory_gib`` and whose duty cycle is under ``max_duty_cycle_pct``;
higher priority first, then oldest. Free memory is the GPU's memory minus the larger of
what NVML says is used and what the panel has promised there (instances still starting
hold less than their budget). GPUs with MIG enabled are never used, nor GPUs with an
exclusive instance awake on them. A job only borrows the memory: an instance placed on its
card (``fleet.policies.placement``, which prefers cards with no jobs to preempt) or woken there
takes it back first, in the same change. A running job is preempted (stopped and requeued) when its
GPU's duty cycle reaches the bound, because inference wants the compute, or when free memory
falls under the margin, because an instance wants the memory.

A GPU whose instances are all asleep (vLLM sleep mode: weights offloaded or dropped, KV cache
freed, only the CUDA context left) is paid for and unused, so its sleeping instances' budgets
are lent to batch work (``sleep_lent_bytes``), exclusive instances included: the memory a
job may take there is what NVML shows free, less the margin. No duty-cycle bound applies
there, since no inference runs on it. The loan ends when an instance wakes: the wake itself
preempts the jobs on the card first (``fleet.decide.services.instance_desire``), and the agent
stops job containers before it wakes a server (``agents.agent.Agent.act``); should a wake come
by another way, the next evaluation here finds the card no longer asleep and preempts.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from fleet.policies.actions import Action, PreemptBatchJob, StartBatchJob
from fleet.policies.snapshot import FleetSnapshot, GpuView, PolicyConfig
from fleet.policies.vram import GIB, gib
from fleet.states import JOB_RUNNING, JOB_WAITING, SLEEPING

KIND = "colocate"


def gpu_free_bytes(snapshot: FleetSnapshot, gpu: GpuView, *, lent: int = 0) -> int | None:
    """Memory nobody uses or has been promised; None without a memory reading.

    ``lent`` is promised memory batch work may borrow (``sleep_lent_bytes``): it is taken off
    the promises, never off what NVML reads as used.
    """
    if gpu.memory_used_bytes is None:
        return None
    promised = snapshot.gpu_reserved_bytes(gpu.id) - lent + gpu.foreign_memory_bytes
    return gpu.memory_total_bytes - max(gpu.memory_used_bytes, promised)


def gpu_asleep(snapshot: FleetSnapshot, gpu: GpuView) -> bool:
    """Whether every instance on the GPU is asleep and told to stay so: one told to wake (desired
    running, still reported sleeping) or on its way to sleep wants its memory, so the card is not."""
    instances = snapshot.gpu_instances(gpu.id)
    return bool(instances) and all(i.desired_state == SLEEPING and i.actual_state == SLEEPING for i in instances)


def sleep_lent_bytes(snapshot: FleetSnapshot, gpu: GpuView) -> int:
    """The budgets of a sleeping card's instances, lent to batch work until one wakes; 0 elsewhere."""
    if not gpu_asleep(snapshot, gpu):
        return 0
    return sum(snapshot.reservation_bytes(i) for i in snapshot.gpu_instances(gpu.id))


def wake_evictions(
    *,
    memory_total_bytes: int,
    budgets_bytes: int,
    foreign_bytes: int,
    exclusive: bool,
    jobs: Sequence[tuple[int, int]],
) -> list[int]:
    """The jobs an instance told to serve (again) must preempt on its card, from ``jobs`` as
    (job id, memory) in the order they should go (lowest priority, newest first).

    On a card of an exclusive instance all go: jobs ran there only on memory its sleep lent. On
    a shared card they go one by one until the instances' budgets (``budgets_bytes``, the woken
    or launched one's included), the foreign processes' memory (``GpuView.foreign_memory_bytes``)
    and the jobs kept fit in the card's memory. Placement asks the same question of a launch
    (``Placement.preempts_batch``). The margin is this policy's to apply at its next evaluation;
    a wake takes back only what it needs, now.
    """
    kept = sum(memory for _, memory in jobs)
    evicted: list[int] = []
    for job_id, memory in jobs:
        if not exclusive and budgets_bytes + foreign_bytes + kept <= memory_total_bytes:
            break
        evicted.append(job_id)
        kept -= memory
    return evicted


def card_lends(*, asleep: bool, exclusive: bool) -> bool:
    """Whether a whole card's instances leave it to batch work: all asleep (``gpu_asleep``), or none
    exclusive. The services read it again under the card's lock when a job starts (``batch_job_start``)."""
    return asleep or not exclusive


def _usable(snapshot: FleetSnapshot, gpu: GpuView) -> bool:
    return (
        gpu.node_online
        and not gpu.mig_enabled
        and card_lends(
            asleep=gpu_asleep(snapshot, gpu),
            exclusive=any(snapshot.pool(i.pool_id).isolation == "exclusive" for i in snapshot.gpu_instances(gpu.id)),
        )
    )


def _duty_bound_applies(snapshot: FleetSnapshot, gpu: GpuView) -> bool:
    """The duty cycle protects inference's compute; on a sleeping card it is the batch work's own."""
    return not gpu_asleep(snapshot, gpu)


def colocate(snapshot: FleetSnapshot, config: PolicyConfig, now: datetime) -> list[Action]:
    settings = config.fleet
    if settings is None:
        return []
    margin = int(settings["min_free_memory_gib"] * GIB)
    max_duty = settings["max_duty_cycle_pct"]
    policy_id = config.policy_id(None)
    actions: list[Action] = []
    preempted_on: set[int] = set()
    for job in snapshot.batch_jobs:
        if job.state != JOB_RUNNING or job.gpu_id is None:
            continue
        gpu = snapshot.gpu(job.gpu_id)
        lent = sleep_lent_bytes(snapshot, gpu) if gpu else 0
        free = gpu_free_bytes(snapshot, gpu, lent=lent) if gpu else None
        if gpu is None or not _usable(snapshot, gpu):
            why = _unusable_why(snapshot, job.gpu_id)
        elif _duty_bound_applies(snapshot, gpu) and gpu.utilization_pct is not None and gpu.utilization_pct >= max_duty:
            why = f"inference load rose: duty cycle {gpu.utilization_pct:.0f}% >= {max_duty}%"
        elif free is not None and free < margin:
            why = f"memory is wanted: {gib(free)} free < margin {gib(margin)}"
        else:
            continue
        preempted_on.add(job.gpu_id)
        actions.append(
            PreemptBatchJob(
                kind=KIND,
                action="preempt",
                reason=f"batch job {job.id} preempted and requeued: {why}",
                inputs={"gpu": job.gpu_id, "duty_cycle_pct": gpu.utilization_pct if gpu else None, "free_bytes": free},
                policy_id=policy_id,
                job_id=job.id,
                generation=job.generation,
                gpu_id=job.gpu_id,
            )
        )
    free_now: dict[int, tuple[GpuView, int, int]] = {}
    for gpu in snapshot.gpus:
        if gpu.id in preempted_on or not _usable(snapshot, gpu):
            continue
        if _duty_bound_applies(snapshot, gpu) and (gpu.utilization_pct is None or gpu.utilization_pct >= max_duty):
            continue
        lent = sleep_lent_bytes(snapshot, gpu)
        if (free := gpu_free_bytes(snapshot, gpu, lent=lent)) is not None:
            free_now[gpu.id] = (gpu, free, lent)
    waiting = sorted(
        (j for j in snapshot.batch_jobs if j.state in JOB_WAITING), key=lambda j: (-j.priority, j.created_at)
    )
    for job in waiting:
        fitting = [(free, gpu, lent) for gpu, free, lent in free_now.values() if free >= job.memory_bytes + margin]
        if not fitting:
            continue
        free, gpu, lent = min(fitting, key=lambda fit: (fit[0], fit[1].id))
        fits = f"{gib(free)} free >= {gib(job.memory_bytes)} needed + {gib(margin)} margin"
        inputs: dict[str, Any] = {"gpu": gpu.id, "free_bytes": free, "duty_cycle_pct": gpu.utilization_pct}
        if lent:
            sleepers = [i.id for i in snapshot.gpu_instances(gpu.id)]
            why = (
                f"its instances sleep ({', '.join(map(str, sleepers))}), lending {gib(lent)}: {fits}; "
                f"it leaves when one wakes"
            )
            inputs |= {"lent_bytes": lent, "sleeping_instances": sleepers}
        else:
            why = f"{fits}, duty cycle {gpu.utilization_pct:.0f}% < {max_duty}%"
        actions.append(
            StartBatchJob(
                kind=KIND,
                action="colocate",
                reason=f"batch job {job.id} on {gpu.node_name}/{gpu.model_name}: {why}",
                inputs=inputs,
                policy_id=policy_id,
                job_id=job.id,
                generation=job.generation,
                gpu_id=gpu.id,
            )
        )
        free_now[gpu.id] = (gpu, free - job.memory_bytes, lent)
    return actions


def _unusable_why(snapshot: FleetSnapshot, gpu_id: int) -> str:
    waking = [
        i.id for i in snapshot.gpu_instances(gpu_id) if i.actual_state == SLEEPING and i.desired_state != SLEEPING
    ]
    if waking:
        return f"instance {', '.join(map(str, waking))} on its GPU wakes and wants its memory back"
    return "its GPU is gone, offline or now reserved for exclusive or MIG use"
