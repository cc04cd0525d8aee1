"""Run the enabled policies on snapshots read from the database and apply their actions through the services.

The loop itself is ``fleet.policies.registry.policies_run``, the one the trace simulator
runs on its simulated fleet; this module reads what it needs and applies what it decides.
Every apply is a claim on what the policy read (an instance's generation, a
pool's instance count, a job's generation, an orphan's empty mark): an action another
worker applied first is counted as ``stale`` and skipped, never applied twice.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from django.core.exceptions import ValidationError
from django.utils import timezone

from fleet import selectors
from fleet.decide import services
from fleet.models import BatchJob, Decision, Gpu, Instance, MigDevice, OrphanContainer, Policy, Pool
from fleet.policies.actions import (
    Action,
    DesireInstance,
    LaunchInstance,
    PoolDecision,
    PreemptBatchJob,
    StartBatchJob,
    StopOrphan,
)
from fleet.policies.placement import PlacementRefused, pool_wake_actions
from fleet.policies.pressure import pressure_actions
from fleet.policies.prewarm import TrafficLearner
from fleet.policies.registry import ORDER, RequestTimesSource, policies_run
from fleet.policies.static_hold import KIND as STATIC_HOLD
from fleet.policies.static_hold import static_guard
from fleet.states import RUNNING, STOPPED

log = logging.getLogger(__name__)

# Pre-warm's traffic profiles, kept by this process between evaluations of the reported
# request rates: each evaluation reads only the samples since the previous one (a new
# process learns from the whole look-back on its first).
TRAFFIC = TrafficLearner()


@dataclass
class Evaluation:
    applied: list[Decision] = field(default_factory=list)
    stale: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)


def action_apply(*, action: Action, policies: dict[int, Policy]) -> Decision:
    """Apply one action through the service that claims, logs and publishes it."""
    policy = policies.get(action.policy_id) if action.policy_id is not None else None
    reason, kind, inputs = action.reason, action.kind, dict(action.inputs)
    if isinstance(action, DesireInstance):
        instance = Instance.objects.get(pk=action.instance_id)
        instance.generation = action.generation
        return services.instance_desire(
            instance=instance,
            state=action.state,
            action=action.action,
            reason=reason,
            kind=kind,
            policy=policy,
            inputs=inputs,
        )
    if isinstance(action, LaunchInstance):
        return services.instance_launch(
            pool=Pool.objects.get(pk=action.pool_id),
            gpu=Gpu.objects.get(pk=action.gpu_id),
            mig_device=MigDevice.objects.get(pk=action.mig_device_id) if action.mig_device_id else None,
            active_seen=action.active_seen,
            action=action.action,
            expires_at=action.expires_at,
            reason=reason,
            kind=kind,
            policy=policy,
            inputs=inputs,
        )
    if isinstance(action, StartBatchJob):
        job = BatchJob.objects.get(pk=action.job_id)
        job.generation = action.generation
        return services.batch_job_start(
            job=job, gpu=Gpu.objects.get(pk=action.gpu_id), reason=reason, kind=kind, policy=policy, inputs=inputs
        )
    if isinstance(action, PreemptBatchJob):
        job = BatchJob.objects.get(pk=action.job_id)
        job.generation = action.generation
        return services.batch_job_preempt(job=job, reason=reason, kind=kind, policy=policy, inputs=inputs)
    if isinstance(action, PoolDecision):
        return services.pool_decision_log(
            pool=Pool.objects.get(pk=action.pool_id),
            action=action.action,
            reason=reason,
            kind=kind,
            policy=policy,
            inputs=inputs,
        )
    if isinstance(action, StopOrphan):
        orphan = OrphanContainer.objects.get(pk=action.orphan_id)
        return services.orphan_stop_request(orphan=orphan, reason=reason, kind=kind, policy=policy, inputs=inputs)
    raise TypeError(f"unknown action {action!r}")


def action_record(*, action: Action, policies: dict[int, Policy], into: Evaluation) -> bool:
    """Apply one action, recording it as applied, stale or failed; whether it was applied."""
    try:
        into.applied.append(action_apply(action=action, policies=policies))
        return True
    except services.StaleGeneration as exc:
        into.stale.append(str(exc))
    except (ValidationError, Instance.DoesNotExist, BatchJob.DoesNotExist, OrphanContainer.DoesNotExist) as exc:
        log.warning("action %s failed: %s", action.action, exc)
        into.failed.append(f"{action.reason}: {exc}")
    return False


def policies_evaluate(
    *,
    now: datetime | None = None,
    kinds: Iterable[str] = ORDER,
    request_times: RequestTimesSource | None = None,
) -> Evaluation:
    """Evaluate the enabled policies of the given kinds once and apply what they decide.

    Pre-warm learns from ``request_times`` (default: rebuilt from the reported request rates,
    kept up to date in ``TRAFFIC``; a source passed here is learned from its whole look-back).
    """
    now = now or timezone.now()
    policies = {policy.pk: policy for policy in Policy.objects.all()}
    evaluation = Evaluation()
    policies_run(
        configs=selectors.policy_configs(),
        now=now,
        snapshot=lambda: selectors.fleet_snapshot(now=now),
        apply=lambda action: action_record(action=action, policies=policies, into=evaluation),
        request_times=request_times or selectors.request_times_from_samples,
        kinds=kinds,
        learner=TRAFFIC if request_times is None else None,
    )
    return evaluation


def pool_wake(*, pool: Pool, reason: str, kind: str = "gateway") -> Decision | PlacementRefused:
    """Give an empty (or saturated) pool one more serving instance now: the gateway's wake path.

    Wakes a sleeping instance, restarts a stopped one or places a new one; refused with
    the placement arithmetic when nothing fits. A concurrent wake of the same pool that
    got there first wins and this one returns its refusal as stale.
    """
    snapshot = selectors.fleet_snapshot()
    planned = pool_wake_actions(snapshot, pool_id=pool.pk, kind=kind, reason=reason)
    if isinstance(planned, PlacementRefused):
        return planned
    try:
        return action_apply(action=planned[0], policies={})
    except services.StaleGeneration as exc:
        return PlacementRefused(pool_id=pool.pk, message=f"another writer changed pool {pool.name} first: {exc}")


def pool_wake_request(*, pool_id: int, reason: str, inputs: dict[str, Any] | None = None) -> list[Decision]:
    """Capacity for a pool the gateway holds requests for, now: what was decided.

    An instance already desired running is on its way (nothing to do). Otherwise the
    policies' wake path decides, with the same placement (VRAM estimate, isolation) as
    scale-out: wake a sleeping instance, restart a stopped one or place a new one. When
    nothing fits, a ``wake_failed`` decision records the placement arithmetic; a wake-up that
    lost its claim to another gateway's finds that one on its way, and records nothing.
    """
    pool = Pool.objects.get(pk=pool_id)
    if Instance.objects.filter(pool=pool, desired_state=Instance.Desired.RUNNING).exists():
        return []
    outcome = pool_wake(pool=pool, reason=reason, kind=services.GATEWAY)
    if isinstance(outcome, PlacementRefused):
        if Instance.objects.filter(pool=pool, desired_state=Instance.Desired.RUNNING).exists():
            # Another gateway's wake-up of this pool won the claim: capacity is on its way, nothing failed.
            return []
        refused = f"{reason}; {outcome.message}"
        return [
            services.pool_decision_log(
                pool=pool, action="wake_failed", reason=refused, kind=services.GATEWAY, inputs=inputs
            )
        ]
    return [outcome]


def pool_scale_out_request(*, pool_id: int, reason: str, inputs: dict[str, Any] | None = None) -> list[Decision]:
    """One more instance for a pool the gateway sees under pressure (``pressure.pressure_scale_out``), now.

    Planned on a fresh snapshot by ``pressure.pressure_actions`` under autoscale's settings for
    the pool: nothing where autoscale is off for it, within its scale-out cool-down of the
    last scale-out (the tick's or a gateway's), while an instance is on its way, or where
    nothing fits; past the pool's static size the static-spend guard refuses it and logs why
    (``static_hold.static_guard``: that decision is what is returned). Applied as a claim: of
    two gateways asking for the same pressure, the second finds the pool changed
    (``StaleGeneration``) or the cool-down running.
    """
    now = timezone.now()
    configs = selectors.policy_configs()
    snapshot = selectors.fleet_snapshot(now=now)
    planned = pressure_actions(
        snapshot,
        pool_id=pool_id,
        settings=configs["autoscale"].for_pool(pool_id),
        now=now,
        reason=reason,
        inputs=inputs,
    )
    # A scale-out past the pool's static size is refused, the refusal logged (``static_hold``).
    planned = static_guard(snapshot, configs[STATIC_HOLD], now, planned[:1])
    if not planned:
        return []
    try:
        return [action_apply(action=action, policies={}) for action in planned]
    except services.StaleGeneration as exc:
        log.info("gateway scale-out of pool %s lost to another writer: %s", pool_id, exc)
        return []


def pool_scale(*, pool: Pool, delta: int, active_seen: int, user: str) -> Decision:
    """A person's +1 or -1 on a pool, within its minimum and maximum, as a ``manual`` decision.

    +1 takes the path scale-out takes (``pool_wake_actions``: wake a sleeping instance, start
    a stopped one again, else place a new one); -1 stops one instance, a sleeping one first,
    else the one idle longest, as scale-in does. ``active_seen`` is the count of instances not
    desired stopped that the person's page showed: if it changed since, ``StaleGeneration``
    and nothing changes. Out of bounds, or nowhere to place, ``ActionRefused``.
    """
    if delta not in (1, -1):
        raise services.ActionRefused(f"a pool is scaled by +1 or -1, not {delta:+d}")
    snapshot = selectors.fleet_snapshot()
    if not any(view.id == pool.pk for view in snapshot.pools):
        raise services.ActionRefused(f"pool {pool.name} is disabled: enable it first")
    active = [i for i in snapshot.instances_of(pool.pk) if i.desired_state != STOPPED]
    if len(active) != active_seen:
        raise services.StaleGeneration(f"pool {pool.name} has {len(active)} active instances, not {active_seen}")
    reason = f"pool {pool.name} scaled {delta:+d} from {len(active)} instance(s) by {user}"
    action: Action
    if delta > 0:
        planned = pool_wake_actions(snapshot, pool_id=pool.pk, kind=services.MANUAL, reason=reason)
        if isinstance(planned, PlacementRefused):
            raise services.ActionRefused(planned.message)
        action = planned[0]
        if isinstance(action, LaunchInstance):
            action = replace(action, active_seen=active_seen)
        action = replace(action, inputs={**action.inputs, "user": user, "via": action.action}, action="scale_out")
    else:
        if len(active) <= pool.min_instances:
            raise services.ActionRefused(f"pool {pool.name} is at its minimum of {pool.min_instances} instance(s)")
        chosen = min(active, key=lambda i: (i.desired_state == RUNNING, i.busy, i.idle_since, i.id))
        action = DesireInstance(
            kind=services.MANUAL,
            action="scale_in",
            reason=f"{reason}; stopping instance {chosen.id}",
            inputs={"user": user, "pool": pool.name, "idle_since": chosen.idle_since.isoformat()},
            instance_id=chosen.id,
            pool_id=pool.pk,
            generation=chosen.generation,
            state=STOPPED,
        )
    return action_apply(action=action, policies={})
