"""Run the enabled policies on a fresh snapshot and apply their actions through the services.

Kinds run in a fixed order (reap, idle reclaim, autoscale, pre-warm, co-location), each on
a snapshot taken after the previous kind's changes, so autoscale sees what idle reclaim
just stopped. Every apply is a claim on what the policy read (an instance's generation, a
pool's instance count, a job's generation, an orphan's empty mark): an action another
worker applied first is counted as ``stale`` and skipped, never applied twice.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.core.exceptions import ValidationError
from django.utils import timezone

from fleet import selectors, services
from fleet.models import BatchJob, Decision, Gpu, Instance, MigDevice, OrphanContainer, Policy, Pool
from fleet.policies.actions import (
    Action,
    DesireInstance,
    LaunchInstance,
    PreemptBatchJob,
    StartBatchJob,
    StopOrphan,
)
from fleet.policies.autoscale import autoscale
from fleet.policies.colocate import colocate
from fleet.policies.idle import idle_reclaim
from fleet.policies.placement import PlacementRefused, pool_wake_actions
from fleet.policies.prewarm import prewarm, traffic_profile_learn
from fleet.policies.reap import reap
from fleet.policies.snapshot import FleetSnapshot, PolicyConfig

log = logging.getLogger(__name__)

ORDER = ("reap", "idle_reclaim", "autoscale", "prewarm", "colocate")


@dataclass
class Evaluation:
    applied: list[Decision] = field(default_factory=list)
    stale: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)


def _prewarm(
    snapshot: FleetSnapshot, config: PolicyConfig, now: datetime, source: selectors.RequestTimesSource | None
) -> list[Action]:
    pools = [pool.id for pool in snapshot.pools if config.for_pool(pool.id) is not None]
    if not pools:
        return []
    longest = max(int(settings["lookback_days"]) for p in pools if (settings := config.for_pool(p)))
    times = selectors.pool_request_times(pool_ids=pools, since=now - timedelta(days=longest), until=now, source=source)
    profiles = {
        pool_id: traffic_profile_learn(
            times.get(pool_id, []),
            now=now,
            lookback_days=int(settings["lookback_days"]),
            slot_minutes=int(settings["slot_minutes"]),
        )
        for pool_id in pools
        if (settings := config.for_pool(pool_id)) is not None
    }
    return prewarm(snapshot, config, now, profiles)


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
    if isinstance(action, StopOrphan):
        orphan = OrphanContainer.objects.get(pk=action.orphan_id)
        return services.orphan_stop_request(orphan=orphan, reason=reason, kind=kind, policy=policy, inputs=inputs)
    raise TypeError(f"unknown action {action!r}")


def actions_apply(*, actions: Iterable[Action], policies: dict[int, Policy], into: Evaluation) -> None:
    for action in actions:
        try:
            into.applied.append(action_apply(action=action, policies=policies))
        except services.StaleGeneration as exc:
            into.stale.append(str(exc))
        except (ValidationError, Instance.DoesNotExist, BatchJob.DoesNotExist, OrphanContainer.DoesNotExist) as exc:
            log.warning("action %s failed: %s", action.action, exc)
            into.failed.append(f"{action.reason}: {exc}")


def policies_evaluate(
    *,
    now: datetime | None = None,
    kinds: Iterable[str] = ORDER,
    request_times: selectors.RequestTimesSource | None = None,
) -> Evaluation:
    """Evaluate the enabled policies of the given kinds once and apply what they decide."""
    now = now or timezone.now()
    wanted = set(kinds)
    configs = selectors.policy_configs()
    policies = {policy.pk: policy for policy in Policy.objects.all()}
    functions: dict[str, Callable[[FleetSnapshot, PolicyConfig, datetime], list[Action]]] = {
        "reap": reap,
        "idle_reclaim": idle_reclaim,
        "autoscale": autoscale,
        "prewarm": lambda snapshot, config, at: _prewarm(snapshot, config, at, request_times),
        "colocate": colocate,
    }
    evaluation = Evaluation()
    snapshot: FleetSnapshot | None = None
    for kind in ORDER:
        if kind not in wanted:
            continue
        snapshot = snapshot or selectors.fleet_snapshot(now=now)
        before = len(evaluation.applied)
        actions_apply(actions=functions[kind](snapshot, configs[kind], now), policies=policies, into=evaluation)
        if len(evaluation.applied) != before:
            snapshot = None
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
