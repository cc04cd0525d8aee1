"""Writes to the fleet: each state change happens here, logs its decision and emits its event."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.db import transaction
from django.db.models import F
from django.utils import timezone

from fleet.events import event_publish
from fleet.models import (
    ApiKey,
    BatchJob,
    Decision,
    Gpu,
    Instance,
    JoinToken,
    MigDevice,
    Node,
    OrphanContainer,
    Policy,
    Pool,
    Team,
)


def node_create(*, name: str, labels: dict[str, str] | None = None, simulated: bool = False) -> tuple[Node, str]:
    """Create a node and return it with its agent token, which is shown only now."""
    node = Node(name=name, labels=labels or {}, simulated=simulated)
    token = node.issue_token()
    node.full_clean()
    node.save()
    return node, token


def node_token_rotate(*, node: Node) -> str:
    token = node.issue_token()
    node.save(update_fields=["token_hash", "token_prefix"])
    return token


def join_token_create(*, name: str, max_uses: int | None, expires_at: datetime | None) -> tuple[JoinToken, str]:
    """A token new hosts register with; the secret is returned once and stored hashed."""
    token = JoinToken(name=name, max_uses=max_uses, expires_at=expires_at)
    secret = token.issue_token()
    token.full_clean()
    token.save()
    return token, secret


def api_key_create(*, team: Team, name: str) -> tuple[ApiKey, str]:
    key = ApiKey(team=team, name=name)
    secret = key.issue()
    key.save()
    return key, secret


class StaleGeneration(Exception):
    """Another writer changed the instance first; re-read it and decide again."""


def instance_desire(
    *,
    instance: Instance,
    state: str,
    reason: str,
    action: str,
    kind: str,
    policy: Policy | None = None,
    inputs: dict[str, Any] | None = None,
) -> Decision:
    """Set an instance's desired state, bump its generation and log why.

    ``kind`` names who decided: a policy kind, ``manual`` for people, ``gateway`` for wake-ups.
    The update is conditional on the generation the caller read, so two policy workers
    acting on the same instance cannot both apply: the second gets ``StaleGeneration``.
    """
    now = timezone.now()
    with transaction.atomic():
        claimed = Instance.objects.filter(pk=instance.pk, generation=instance.generation).update(
            desired_state=state, generation=F("generation") + 1, desired_changed_at=now
        )
        if claimed != 1:
            raise StaleGeneration(f"instance {instance.pk} changed since generation {instance.generation}")
        decision = Decision.objects.create(
            policy=policy,
            policy_kind=kind,
            pool_id=instance.pool_id,
            instance=instance,
            action=action,
            reason=reason,
            inputs=inputs or {},
            applied_at=now,
        )
    instance.refresh_from_db()
    transaction.on_commit(
        lambda: event_publish(
            kind="decision",
            payload={
                "decision": decision.pk,
                "instance": instance.pk,
                "pool": instance.pool_id,
                "action": action,
                "desired_state": state,
                "generation": instance.generation,
                "reason": reason,
            },
        )
    )
    return decision


def _decision_event(decision: Decision, payload: dict[str, Any]) -> None:
    transaction.on_commit(
        lambda: event_publish(
            kind="decision",
            payload={"decision": decision.pk, "pool": decision.pool_id, "action": decision.action, **payload},
        )
    )


def instance_launch(
    *,
    pool: Pool,
    gpu: Gpu,
    mig_device: MigDevice | None,
    active_seen: int,
    reason: str,
    action: str,
    kind: str,
    policy: Policy | None = None,
    inputs: dict[str, Any] | None = None,
    expires_at: datetime | None = None,
) -> Decision:
    """Create an instance that should run on the given device, and log why.

    The pool's row is locked and its count of instances that are not desired stopped must
    still be ``active_seen``: two workers scaling the same pool out at once launch one
    instance, and the second gets ``StaleGeneration``.
    """
    now = timezone.now()
    with transaction.atomic():
        Pool.objects.select_for_update().get(pk=pool.pk)
        active = Instance.objects.filter(pool=pool).exclude(desired_state=Instance.Desired.STOPPED).count()
        if active != active_seen:
            raise StaleGeneration(f"pool {pool.name} has {active} active instances, not {active_seen}")
        if mig_device is not None and (
            Instance.objects.filter(mig_device=mig_device).exclude(desired_state=Instance.Desired.STOPPED).exists()
        ):
            raise StaleGeneration(f"{mig_device} was taken")
        instance = Instance(pool=pool, gpu=gpu, mig_device=mig_device, expires_at=expires_at)
        instance.full_clean()
        instance.save()
        decision = Decision.objects.create(
            policy=policy,
            policy_kind=kind,
            pool=pool,
            instance=instance,
            action=action,
            reason=reason,
            inputs=inputs or {},
            applied_at=now,
        )
    _decision_event(
        decision,
        {"instance": instance.pk, "desired_state": instance.desired_state, "generation": 1, "reason": reason},
    )
    return decision


def batch_job_start(
    *,
    job: BatchJob,
    gpu: Gpu,
    reason: str,
    kind: str,
    policy: Policy | None = None,
    inputs: dict[str, Any] | None = None,
) -> Decision:
    """Put a waiting batch job on a GPU; conditional on the generation read, like ``instance_desire``."""
    now = timezone.now()
    with transaction.atomic():
        claimed = BatchJob.objects.filter(
            pk=job.pk, generation=job.generation, state__in=[BatchJob.State.QUEUED, BatchJob.State.PREEMPTED]
        ).update(state=BatchJob.State.RUNNING, gpu=gpu, started_at=now, generation=F("generation") + 1)
        if claimed != 1:
            raise StaleGeneration(f"batch job {job.pk} changed since generation {job.generation}")
        decision = Decision.objects.create(
            policy=policy,
            policy_kind=kind,
            batch_job=job,
            action="colocate",
            reason=reason,
            inputs=inputs or {},
            applied_at=now,
        )
    _decision_event(decision, {"batch_job": job.pk, "gpu": gpu.pk, "state": "running", "reason": reason})
    return decision


def batch_job_preempt(
    *,
    job: BatchJob,
    reason: str,
    kind: str,
    policy: Policy | None = None,
    inputs: dict[str, Any] | None = None,
) -> Decision:
    """Stop a running batch job and requeue it; the GPU stays recorded so its agent stops the container."""
    now = timezone.now()
    with transaction.atomic():
        claimed = BatchJob.objects.filter(pk=job.pk, generation=job.generation, state=BatchJob.State.RUNNING).update(
            state=BatchJob.State.PREEMPTED,
            preempted_at=now,
            preemptions=F("preemptions") + 1,
            generation=F("generation") + 1,
        )
        if claimed != 1:
            raise StaleGeneration(f"batch job {job.pk} changed since generation {job.generation}")
        decision = Decision.objects.create(
            policy=policy,
            policy_kind=kind,
            batch_job=job,
            action="preempt",
            reason=reason,
            inputs=inputs or {},
            applied_at=now,
        )
    _decision_event(decision, {"batch_job": job.pk, "state": "preempted", "reason": reason})
    return decision


def orphan_stop_request(
    *,
    orphan: OrphanContainer,
    reason: str,
    kind: str,
    policy: Policy | None = None,
    inputs: dict[str, Any] | None = None,
) -> Decision:
    """Ask the orphan's node to stop it, once: the request is a conditional update of an empty mark."""
    now = timezone.now()
    with transaction.atomic():
        claimed = OrphanContainer.objects.filter(pk=orphan.pk, stop_requested_at__isnull=True).update(
            stop_requested_at=now
        )
        if claimed != 1:
            raise StaleGeneration(f"container {orphan.container_id[:12]} already marked for stopping")
        decision = Decision.objects.create(
            policy=policy, policy_kind=kind, action="reap", reason=reason, inputs=inputs or {}, applied_at=now
        )
    _decision_event(decision, {"node": orphan.node_id, "container_id": orphan.container_id, "reason": reason})
    return decision
