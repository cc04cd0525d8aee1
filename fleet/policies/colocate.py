"""Co-location: light batch jobs on inference GPUs whose memory and compute are spare.

A queued (or preempted, hence requeued) job starts on a GPU whose free memory exceeds its
need plus ``min_free_memory_gib`` and whose duty cycle is under ``max_duty_cycle_pct``;
higher priority first, then oldest. Free memory is the GPU's memory minus the larger of
what NVML says is used and what the panel has promised there (instances still starting
hold less than their budget). GPUs with MIG enabled or with an exclusive instance are never
used. A running job is preempted (stopped and requeued) when its GPU's duty cycle reaches
the bound, because inference wants the compute, or when free memory falls under the
margin, because an instance wants the memory.
"""

from __future__ import annotations

from datetime import datetime

from fleet.policies.actions import Action, PreemptBatchJob, StartBatchJob
from fleet.policies.snapshot import FleetSnapshot, GpuView, PolicyConfig
from fleet.policies.vram import GIB, gib
from fleet.states import JOB_RUNNING, JOB_WAITING

KIND = "colocate"


def gpu_free_bytes(snapshot: FleetSnapshot, gpu: GpuView) -> int | None:
    """Memory nobody uses or has been promised; None without a memory reading."""
    if gpu.memory_used_bytes is None:
        return None
    promised = snapshot.gpu_reserved_bytes(gpu.id) + gpu.foreign_memory_bytes
    return gpu.memory_total_bytes - max(gpu.memory_used_bytes, promised)


def _usable(snapshot: FleetSnapshot, gpu: GpuView) -> bool:
    return (
        gpu.node_online
        and not gpu.mig_enabled
        and not any(snapshot.pool(i.pool_id).isolation == "exclusive" for i in snapshot.gpu_instances(gpu.id))
    )


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
        free = gpu_free_bytes(snapshot, gpu) if gpu else None
        if gpu is None or not _usable(snapshot, gpu):
            why = "its GPU is gone, offline or now reserved for exclusive or MIG use"
        elif gpu.utilization_pct is not None and gpu.utilization_pct >= max_duty:
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
    free_now = {
        gpu.id: (gpu, free)
        for gpu in snapshot.gpus
        if gpu.id not in preempted_on
        and _usable(snapshot, gpu)
        and gpu.utilization_pct is not None
        and gpu.utilization_pct < max_duty
        and (free := gpu_free_bytes(snapshot, gpu)) is not None
    }
    waiting = sorted(
        (j for j in snapshot.batch_jobs if j.state in JOB_WAITING), key=lambda j: (-j.priority, j.created_at)
    )
    for job in waiting:
        fitting = [(free, gpu) for gpu, free in free_now.values() if free >= job.memory_bytes + margin]
        if not fitting:
            continue
        free, gpu = min(fitting, key=lambda pair: (pair[0], pair[1].id))
        actions.append(
            StartBatchJob(
                kind=KIND,
                action="colocate",
                reason=f"batch job {job.id} on {gpu.node_name}/{gpu.model_name}: {gib(free)} free "
                f">= {gib(job.memory_bytes)} needed + {gib(margin)} margin, duty cycle {gpu.utilization_pct:.0f}% "
                f"< {max_duty}%",
                inputs={"gpu": gpu.id, "free_bytes": free, "duty_cycle_pct": gpu.utilization_pct},
                policy_id=policy_id,
                job_id=job.id,
                generation=job.generation,
                gpu_id=gpu.id,
            )
        )
        free_now[gpu.id] = (gpu, free - job.memory_bytes)
    return actions
