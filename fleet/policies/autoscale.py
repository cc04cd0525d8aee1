"""SLA-bounded autoscaling: hold utilization in the pool's band while latency meets its SLA.

Scale out by one when the last ``breach_windows`` windows were all in breach (the SLA
percentile above its bound, the vLLM queue above ``queue_threshold``, or utilization above
the band) and the last scale-out is older than its cool-down. Scale in by one when the
last ``breach_windows`` windows all had utilization under the band, latency under
``scale_in_latency_ratio`` x the SLA and an empty queue, and neither a scale-out nor a
scale-in happened within the scale-in cool-down. The gap between the two conditions is the
hysteresis. Never below ``min_instances`` nor above ``max_instances``; scale-in never stops
a busy instance and leaves the last one to idle reclaim, which knows when nobody asks.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from datetime import datetime
from typing import Any

from fleet.policies.actions import Action, DesireInstance
from fleet.policies.placement import PlacementRefused, pool_wake_actions
from fleet.policies.snapshot import (
    RUNNING,
    STOPPED,
    FleetSnapshot,
    InstanceView,
    PolicyConfig,
    PoolView,
    PoolWindow,
)

KIND = "autoscale"


def _breaches(pool: PoolView, window: PoolWindow, settings: Mapping[str, Any]) -> list[str]:
    found = []
    if window.latency_ms is not None and window.latency_ms > pool.sla_latency_ms:
        found.append(f"P{pool.sla_percentile} {pool.sla_metric} {window.latency_ms:.0f} ms > {pool.sla_latency_ms} ms")
    if window.queue is not None and window.queue > settings["queue_threshold"]:
        found.append(f"queue {window.queue:g} > {settings['queue_threshold']}")
    if window.utilization is not None and window.utilization > pool.util_band_high:
        found.append(f"utilization {window.utilization:.0%} > {pool.util_band_high:.0%}")
    return found


def _comfortable(pool: PoolView, window: PoolWindow, settings: Mapping[str, Any]) -> bool:
    if window.utilization is None or window.utilization >= pool.util_band_low:
        return False
    if window.queue:
        return False
    bound = settings["scale_in_latency_ratio"] * pool.sla_latency_ms
    return window.latency_ms is None or window.latency_ms <= bound


def _since(now: datetime, moment: datetime | None) -> float:
    return float("inf") if moment is None else (now - moment).total_seconds()


def autoscale(snapshot: FleetSnapshot, config: PolicyConfig, now: datetime) -> list[Action]:
    actions: list[Action] = []
    for pool in snapshot.pools:
        settings = config.for_pool(pool.id)
        if settings is not None:
            actions.extend(_pool(snapshot, pool, settings, config.policy_id(pool.id), now))
    return actions


def _pool(
    snapshot: FleetSnapshot, pool: PoolView, settings: Mapping[str, Any], policy_id: int | None, now: datetime
) -> list[Action]:
    instances = snapshot.instances_of(pool.id)
    serving = [i for i in instances if i.desired_state == RUNNING]
    active = [i for i in instances if i.desired_state != STOPPED]
    if len(serving) < pool.min_instances:
        reason = f"pool {pool.name} has {len(serving)} serving instance(s), minimum {pool.min_instances}"
        return _out(snapshot, pool, reason, policy_id, ())
    if len(active) > pool.max_instances:
        reason = f"pool {pool.name} has {len(active)} instances, maximum {pool.max_instances}"
        surplus = [i for i in active if i.desired_state != RUNNING or len(serving) > pool.min_instances]
        return _in(pool, surplus, reason, policy_id, ())
    count = int(settings["breach_windows"])
    windows = pool.windows[-count:]
    if len(windows) < count:
        return []
    breaches = [_breaches(pool, window, settings) for window in windows]
    since_out = _since(now, pool.last_scale_out_at)
    since_last = min(since_out, _since(now, pool.last_scale_in_at))
    if all(breaches):
        if len(active) >= pool.max_instances or since_out < settings["scale_out_cooldown_s"]:
            return []
        reason = f"pool {pool.name} in breach for {count} window(s): {'; '.join(breaches[-1])}"
        return _out(snapshot, pool, reason, policy_id, windows)
    if (
        all(_comfortable(pool, window, settings) for window in windows)
        and len(serving) > max(pool.min_instances, 1)
        and since_last >= settings["scale_in_cooldown_s"]
    ):
        last = windows[-1]
        latency = "no latency measured" if last.latency_ms is None else f"latency {last.latency_ms:.0f} ms"
        reason = (
            f"pool {pool.name} under its band for {count} window(s): utilization {last.utilization:.0%} "
            f"< {pool.util_band_low:.0%}, {latency}, empty queue"
        )
        return _in(pool, serving, reason, policy_id, windows)
    return []


def _window_inputs(windows: tuple[PoolWindow, ...]) -> list[dict[str, Any]]:
    return [
        {"end": w.end.isoformat(), "utilization": w.utilization, "queue": w.queue, "latency_ms": w.latency_ms}
        for w in windows
    ]


def _out(
    snapshot: FleetSnapshot, pool: PoolView, reason: str, policy_id: int | None, windows: tuple[PoolWindow, ...]
) -> list[Action]:
    """One more serving instance; nothing where placement refuses (the refusal is the gateway's to show)."""
    planned = pool_wake_actions(snapshot, pool_id=pool.id, kind=KIND, reason=reason, policy_id=policy_id)
    if isinstance(planned, PlacementRefused):
        return []
    return [
        replace(
            action,
            action="scale_out",
            inputs={**action.inputs, "via": action.action, "windows": _window_inputs(windows)},
        )
        for action in planned
    ]


def _in(
    pool: PoolView,
    candidates: list[InstanceView],
    reason: str,
    policy_id: int | None,
    windows: tuple[PoolWindow, ...],
) -> list[Action]:
    """Stop the least recently used instance that is not busy; none if all are."""
    quiet = [i for i in candidates if not i.busy]
    if not quiet:
        return []
    chosen = min(quiet, key=lambda i: (i.idle_since, i.id))
    return [
        DesireInstance(
            kind=KIND,
            action="scale_in",
            reason=f"{reason}; stopping instance {chosen.id}",
            inputs={"pool": pool.name, "windows": _window_inputs(windows), "idle_since": chosen.idle_since.isoformat()},
            policy_id=policy_id,
            instance_id=chosen.id,
            pool_id=pool.id,
            generation=chosen.generation,
            state=STOPPED,
        )
    ]
