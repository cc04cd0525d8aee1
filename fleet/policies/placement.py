"""Where a new instance of a pool goes, and how a pool is woken; pure, shared with the gateway.

A device fits when the profile's vLLM budget (``gpu_memory_utilization`` x device memory)
covers what the model needs (weights + one full-length sequence of KV cache + overhead)
and the device has that budget free: its memory minus the other instances' budgets minus
what foreign processes hold. Batch jobs only borrow memory: inference takes it back, so a
new instance preempts the jobs it needs the memory of (all of them on an exclusive card, as
a wake does), and a device that needs no preemption is chosen before one that does.
Isolation decides which devices are candidates: ``exclusive`` a whole GPU with nothing
of ours on it, ``mig`` a free MIG slice of the pool's profile, ``shared`` any GPU with room
that holds no exclusive instance. Shared placement packs the fullest GPU that fits, so
empty GPUs stay available for exclusive pools.
"""

from __future__ import annotations

from dataclasses import dataclass

from fleet.policies.actions import Action, DesireInstance, LaunchInstance
from fleet.policies.colocate import wake_evictions
from fleet.policies.snapshot import FleetSnapshot, GpuView, PoolView
from fleet.policies.vram import gib
from fleet.states import READY, RUNNING, SLEEPING, STOPPED


@dataclass(frozen=True)
class Placement:
    pool_id: int
    gpu_id: int
    mig_device_id: int | None
    reservation_bytes: int
    free_bytes: int
    explanation: str
    # Whether the instance takes back memory batch jobs borrowed there (they are preempted):
    # a device that needs no preemption is chosen first.
    preempts_batch: bool = False


@dataclass(frozen=True)
class PlacementRefused:
    pool_id: int
    message: str


def _gpu_eligible(snapshot: FleetSnapshot, pool: PoolView, gpu: GpuView) -> str | None:
    """Why the GPU cannot take the pool, or None."""
    if not gpu.node_online:
        return "node offline"
    if pool.gpu_model and gpu.model_name != pool.gpu_model:
        return f"is a {gpu.model_name}, pool wants {pool.gpu_model}"
    others = snapshot.gpu_instances(gpu.id)
    if pool.isolation == "mig":
        return None if gpu.mig_enabled else "MIG not enabled"
    if gpu.mig_enabled:
        return "MIG enabled: whole-GPU pools cannot use it"
    if pool.isolation == "exclusive" and others:
        return f"holds {len(others)} instance(s); exclusive pools need an empty GPU"
    if any(snapshot.pool(other.pool_id).isolation == "exclusive" for other in others):
        return "held by an exclusive instance"
    return None


def _need(pool: PoolView, device_bytes: int) -> tuple[int, str | None]:
    """The budget vLLM takes on this device, and why it is not enough for the model (or None)."""
    budget = pool.reservation_bytes(device_bytes)
    if pool.estimate is not None and pool.estimate.required_bytes > budget:
        return budget, (
            f"budget {gib(device_bytes)} x {pool.gpu_memory_utilization:.2f} = {gib(budget)} "
            f"< {gib(pool.estimate.required_bytes)} needed"
        )
    return budget, None


def placement_choose(snapshot: FleetSnapshot, *, pool_id: int) -> Placement | PlacementRefused:
    """Choose a device for one more instance of the pool, or refuse with the arithmetic."""
    pool = snapshot.pool(pool_id)
    fits: list[Placement] = []
    misses: list[str] = []
    for gpu in snapshot.gpus:
        why = _gpu_eligible(snapshot, pool, gpu)
        if why is not None:
            misses.append(f"{gpu.node_name}/{gpu.uuid}: {why}")
            continue
        if pool.isolation == "mig":
            _mig_candidates(snapshot, pool, gpu, fits, misses)
            continue
        budget, short = _need(pool, gpu.memory_total_bytes)
        budgets = snapshot.gpu_budgets_bytes(gpu.id)
        free = gpu.memory_total_bytes - budgets - gpu.foreign_memory_bytes
        if short is None and budget > free:
            short = (
                f"{gib(free)} free ({gib(gpu.memory_total_bytes)} - {gib(budgets)} promised to instances "
                f"- {gib(gpu.foreign_memory_bytes)} foreign) < budget {gib(budget)}"
            )
        if short is not None:
            misses.append(f"{gpu.node_name}/{gpu.uuid}: {short}")
            continue
        explanation = f"{gpu.node_name}/{gpu.model_name}: budget {gib(budget)} of {gib(free)} free"
        borrowed = snapshot.gpu_batch_bytes(gpu.id)
        # An exclusive instance takes back everything batch work borrowed on its card, a shared
        # one what its budget needs: the rule ``instance_launch`` applies (``batch_jobs_vacate``).
        preempts = bool(
            wake_evictions(
                memory_total_bytes=gpu.memory_total_bytes,
                budgets_bytes=budgets + budget,
                foreign_bytes=gpu.foreign_memory_bytes,
                exclusive=pool.isolation == "exclusive",
                jobs=[(job.id, job.memory_bytes) for job in snapshot.gpu_batch_jobs(gpu.id)],
            )
        )
        if preempts:
            explanation += f", taking back memory lent to batch jobs ({gib(borrowed)} running)"
        fits.append(
            Placement(
                pool_id=pool.id,
                gpu_id=gpu.id,
                mig_device_id=None,
                reservation_bytes=budget,
                free_bytes=free,
                explanation=explanation,
                preempts_batch=preempts,
            )
        )
    if fits:
        return min(
            fits,
            key=lambda placement: (
                placement.preempts_batch,
                placement.free_bytes - placement.reservation_bytes,
                placement.gpu_id,
            ),
        )
    estimate = pool.estimate.arithmetic() if pool.estimate else "model architecture unknown to the catalogue"
    detail = "; ".join(misses[:6]) or "no GPUs reported"
    more = f" and {len(misses) - 6} more" if len(misses) > 6 else ""
    return PlacementRefused(pool_id=pool.id, message=f"pool {pool.name} fits nowhere. {estimate}. {detail}{more}.")


def _mig_candidates(
    snapshot: FleetSnapshot, pool: PoolView, gpu: GpuView, fits: list[Placement], misses: list[str]
) -> None:
    for device in snapshot.mig_devices:
        if device.gpu_id != gpu.id:
            continue
        label = f"{gpu.node_name}/{device.uuid} ({device.profile})"
        if device.profile != pool.mig_profile:
            misses.append(f"{label}: pool wants {pool.mig_profile}")
        elif snapshot.mig_device_taken(device.id):
            misses.append(f"{label}: taken")
        else:
            budget, short = _need(pool, device.memory_total_bytes)
            if short is not None:
                misses.append(f"{label}: {short}")
                continue
            fits.append(
                Placement(
                    pool_id=pool.id,
                    gpu_id=gpu.id,
                    mig_device_id=device.id,
                    reservation_bytes=budget,
                    free_bytes=device.memory_total_bytes,
                    explanation=f"{label}: budget {gib(budget)}",
                )
            )


def pool_wake_actions(
    snapshot: FleetSnapshot, *, pool_id: int, kind: str, reason: str, policy_id: int | None = None
) -> list[Action] | PlacementRefused:
    """One more serving instance for the pool, cheapest first.

    Wake a sleeping instance (about a second), else start a stopped one again on the device
    it had if that device still fits, else launch a new one where placement says. Used by
    the gateway on a request to an empty pool, by pre-warm and by autoscale scale-out.
    """
    pool = snapshot.pool(pool_id)
    instances = snapshot.instances_of(pool_id)
    active = [instance for instance in instances if instance.desired_state != STOPPED]
    sleeping = sorted(
        (i for i in instances if i.desired_state == SLEEPING), key=lambda i: (i.actual_state != SLEEPING, i.id)
    )
    inputs = {"pool": pool.name, "active_instances": len(active)}
    if sleeping:
        chosen = sleeping[0]
        return [
            DesireInstance(
                action="wake",
                reason=f"{reason}; waking sleeping instance {chosen.id}",
                instance_id=chosen.id,
                pool_id=pool_id,
                generation=chosen.generation,
                state=RUNNING,
                kind=kind,
                policy_id=policy_id,
                inputs=inputs,
            )
        ]
    if len(active) >= pool.max_instances:
        return PlacementRefused(
            pool_id=pool_id, message=f"pool {pool.name} already has its maximum of {pool.max_instances} instances"
        )
    placement = placement_choose(snapshot, pool_id=pool_id)
    if isinstance(placement, PlacementRefused):
        return placement
    restartable = [
        i
        for i in instances
        if i.desired_state == STOPPED
        and i.actual_state != READY
        and (i.gpu_id, i.mig_device_id) == (placement.gpu_id, placement.mig_device_id)
    ]
    if restartable:
        chosen = max(restartable, key=lambda i: i.id)
        return [
            DesireInstance(
                action="start",
                reason=f"{reason}; starting stopped instance {chosen.id} again ({placement.explanation})",
                instance_id=chosen.id,
                pool_id=pool_id,
                generation=chosen.generation,
                state=RUNNING,
                kind=kind,
                policy_id=policy_id,
                inputs=inputs,
            )
        ]
    return [
        LaunchInstance(
            action="launch",
            reason=f"{reason}; new instance on {placement.explanation}",
            pool_id=pool_id,
            gpu_id=placement.gpu_id,
            mig_device_id=placement.mig_device_id,
            active_seen=len(active),
            kind=kind,
            policy_id=policy_id,
            inputs=inputs,
        )
    ]
