"""Idle reclaim: sleep, then stop, instances nobody has asked anything for a while.

An instance is idle when no request reached it for the pool's ``idle_minimize_after_s``
(``last_request_at``, else since it became ready), nothing is running or waiting in it,
and its GPU's duty cycle is under the threshold. A MIG-enabled GPU reports no duty cycle,
so there the empty queue decides alone. The first stage is vLLM sleep mode where the
profile enables it (the memory comes back, a wake takes about a second); without it that
stage is skipped. After ``idle_stop_after_s`` the instance is stopped. Instances that
serve are never taken below the pool's ``min_instances``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from fleet.policies.actions import Action, DesireInstance, duration
from fleet.policies.snapshot import FleetSnapshot, InstanceView, PolicyConfig, PoolView
from fleet.states import READY, RUNNING, SLEEPING, STARTING, STOPPED

KIND = "idle_reclaim"


def _duty_cycle(snapshot: FleetSnapshot, instance: InstanceView) -> float | None:
    gpu = snapshot.gpu(instance.gpu_id) if instance.gpu_id is not None else None
    if gpu is None or instance.mig_device_id is not None:
        return None
    return gpu.utilization_pct


@dataclass(frozen=True)
class IdleClock:
    """Where an instance stands on idle reclaim's clock: idle this long, sleeps and stops after
    so much more of it (0: due now). ``sleeps_in_s`` is None where no sleep stage comes (sleep
    mode off, not ready, or asleep already)."""

    idle_s: float
    sleeps_in_s: float | None
    stops_in_s: float


def idle_clock(pool: PoolView, instance: InstanceView, now: datetime) -> IdleClock | None:
    """The instance on the pool's idle thresholds; None where idle reclaim leaves it alone
    (desired stopped, requests running or waiting in it, or still starting: a start that pulls
    an image or downloads weights is not idleness, however long it takes; a start that never
    ends is reap's). The policy and the pages read this."""
    if instance.desired_state == STOPPED or instance.busy:
        return None
    if instance.desired_state == RUNNING and instance.actual_state == STARTING:
        return None
    idle_s = (now - instance.idle_since).total_seconds()
    sleeps = instance.desired_state == RUNNING and pool.enable_sleep_mode and instance.actual_state == READY
    return IdleClock(
        idle_s=idle_s,
        sleeps_in_s=max(pool.idle_minimize_after_s - idle_s, 0.0) if sleeps else None,
        stops_in_s=max(pool.idle_stop_after_s - idle_s, 0.0),
    )


def idle_reclaim(snapshot: FleetSnapshot, config: PolicyConfig, now: datetime) -> list[Action]:
    actions: list[Action] = []
    for pool in snapshot.pools:
        settings = config.for_pool(pool.id)
        if settings is None:
            continue
        instances = snapshot.instances_of(pool.id)
        spare = sum(1 for i in instances if i.desired_state == RUNNING) - pool.min_instances
        by_idleness = sorted(instances, key=lambda i: (i.idle_since, i.id))
        for instance in by_idleness:
            clock = idle_clock(pool, instance, now)
            if clock is None:
                continue
            idle_s = clock.idle_s
            if instance.desired_state == SLEEPING:
                if clock.stops_in_s == 0:
                    actions.append(_stop(pool.name, instance, idle_s, settings, config))
                continue
            if spare <= 0:
                break
            duty = _duty_cycle(snapshot, instance)
            if duty is not None and duty >= settings["idle_duty_cycle_pct"]:
                continue
            if clock.stops_in_s == 0:
                actions.append(_stop(pool.name, instance, idle_s, settings, config, duty))
                spare -= 1
            elif clock.sleeps_in_s == 0:
                level = int(settings["sleep_level"])
                actions.append(
                    DesireInstance(
                        kind=KIND,
                        action="sleep",
                        reason=f"pool {pool.name} instance {instance.id} idle for {duration(idle_s)}; "
                        f"vLLM sleep level {level}",
                        inputs=_inputs(instance, idle_s, duty) | {"sleep_level": level},
                        policy_id=config.policy_id(pool.id),
                        instance_id=instance.id,
                        pool_id=pool.id,
                        generation=instance.generation,
                        state=SLEEPING,
                    )
                )
                spare -= 1
    return actions


def _inputs(instance: InstanceView, idle_s: float, duty: float | None) -> dict[str, Any]:
    return {
        "idle_s": round(idle_s, 1),
        "idle_since": instance.idle_since.isoformat(),
        "duty_cycle_pct": duty,
        "requests_running": instance.requests_running,
        "requests_waiting": instance.requests_waiting,
    }


def _stop(
    pool_name: str,
    instance: InstanceView,
    idle_s: float,
    settings: Mapping[str, Any],
    config: PolicyConfig,
    duty: float | None = None,
) -> DesireInstance:
    return DesireInstance(
        kind=KIND,
        action="stop",
        reason=f"pool {pool_name} idle for {duration(idle_s)}; stopping instance {instance.id}",
        inputs=_inputs(instance, idle_s, duty) | {"idle_duty_cycle_pct": settings["idle_duty_cycle_pct"]},
        policy_id=config.policy_id(instance.pool_id),
        instance_id=instance.id,
        pool_id=instance.pool_id,
        generation=instance.generation,
        state=STOPPED,
    )
