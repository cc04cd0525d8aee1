"""Writes to the fleet: each state change happens here, logs its decision and emits its event."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import IntegrityError, connection, transaction
from django.db.models import F, Q
from django.utils import timezone

from fleet import states
from fleet.events import FLEET_GROUP, event_publish, node_desired_changed, pool_group
from fleet.models import (
    ApiKey,
    BatchJob,
    Decision,
    Gpu,
    Instance,
    InstanceEvent,
    JoinToken,
    MigDevice,
    Node,
    OrphanContainer,
    Policy,
    Pool,
    RequestLog,
    Team,
)
from fleet.models.policies import static_minimum_problems
from fleet.policies.colocate import card_lends, wake_evictions
from fleet.policies.vram import gib
from fleet.selectors import gpu_foreign_bytes
from fleet.telemetry.bulk import rows_insert, rows_update
from fleet.telemetry.rollups import usage_reopen

if TYPE_CHECKING:
    from fleet.gateway.accounting import RequestRecord


def node_create(*, name: str, labels: dict[str, str] | None = None, simulated: bool = False) -> tuple[Node, str]:
    """Create a node and return it with its agent token, which is shown only now."""
    node = Node(name=name, labels=labels or {}, simulated=simulated)
    token = node.issue_token()
    node.full_clean()
    node.save()
    return node, token


def node_token_rotate(*, node: Node) -> str:
    if node.decommissioned_at is not None:
        raise ValueError(f"host {node.name} is decommissioned: register it again with a join token")
    token = node.issue_token()
    node.save(update_fields=["token_hash", "token_prefix"])
    return token


def gpus_retire(*, gpu_ids: Sequence[int], at: datetime) -> int:
    """Mark cards as gone from the fleet; their rows, samples, rollups and spend stay.

    Instances and batch jobs placed on them lose the placement, as if the cards had been
    pulled: a card swapped out of a host, or every card of a decommissioned one. A card
    that comes back (the host joins again) gets a new row; this one keeps its history.
    Returns the cards marked.
    """
    retired = Gpu.objects.filter(pk__in=gpu_ids, decommissioned_at__isnull=True).update(decommissioned_at=at)
    Instance.objects.filter(_on_cards(gpu_ids)).update(gpu=None, mig_device=None)
    BatchJob.objects.filter(gpu_id__in=gpu_ids).update(gpu=None)
    return retired


def _on_cards(gpu_ids: Sequence[int]) -> Q:
    """Instances on these cards, whole or on a MIG slice; without a join, so rows can be locked."""
    slices = MigDevice.objects.filter(gpu_id__in=gpu_ids).values("pk")
    return Q(gpu_id__in=gpu_ids) | Q(mig_device_id__in=slices)


def node_decommission(*, node: Node, reason: str = "", kind: str = "manual") -> Node:
    """Take a host out of the fleet for good, keeping everything billed to it.

    Its agent token stops working. Its instances end now: a ``stopped`` event at this
    instant ends their allocations, so no spend accrues after it (a sleeping one would
    otherwise be the first woken by its pool's next request). Its running batch jobs go
    back to the queue and its cards are retired (``gpus_retire``), so placement, live
    views and silent-node alerts pass it by. Samples, rollups, instance events and prices
    stay, so past periods bill the same before and after; deleting the node instead is
    refused by the database while any of them refer to it. Claimed with a conditional
    update, so a second call (or a second admin) changes nothing.
    """
    now = timezone.now()
    why = reason or f"host {node.name} decommissioned"
    with transaction.atomic():
        node.issue_token()  # a fresh hash nobody holds: the agent's token is refused from now on
        claimed = Node.objects.filter(pk=node.pk, decommissioned_at__isnull=True).update(
            status=Node.Status.DECOMMISSIONED,
            decommissioned_at=now,
            token_hash=node.token_hash,
            token_prefix=node.token_prefix,
            containers=[],
        )
        if claimed != 1:
            node.refresh_from_db()
            return node
        gpu_ids = list(Gpu.objects.filter(node=node, decommissioned_at__isnull=True).values_list("pk", flat=True))
        ended = _instances_end(gpu_ids=gpu_ids, at=now, reason=why, kind=kind)
        for job in BatchJob.objects.filter(gpu_id__in=gpu_ids, state=BatchJob.State.RUNNING):
            batch_job_preempt(job=job, reason=why, kind=kind)
        gpus_retire(gpu_ids=gpu_ids, at=now)
        OrphanContainer.objects.filter(node=node).delete()  # nobody is left to stop them
        decision = Decision.objects.create(
            policy_kind=kind,
            action="decommission",
            reason=why,
            inputs={"node": node.name, "gpus": len(gpu_ids), "instances_ended": ended},
            applied_at=now,
        )
    _decision_event(decision, {"node": node.name, "status": Node.Status.DECOMMISSIONED, "reason": why})
    transaction.on_commit(
        lambda: event_publish(kind="node", payload={"node": node.name, "status": Node.Status.DECOMMISSIONED})
    )
    node.refresh_from_db()
    return node


def _instances_end(*, gpu_ids: Sequence[int], at: datetime, reason: str, kind: str) -> list[int]:
    """Stop every instance on these cards now, and record that it stopped: the end of its allocation.

    No agent is left to report the stop, so the ``stopped`` state is written here, at ``at``.
    """
    placed = Instance.objects.select_for_update().filter(_on_cards(gpu_ids)).order_by("pk")
    ended = []
    for instance in placed.exclude(desired_state=Instance.Desired.STOPPED, actual_state=Instance.Actual.STOPPED):
        if instance.desired_state != Instance.Desired.STOPPED:
            instance_desire(instance=instance, state=Instance.Desired.STOPPED, reason=reason, action="stop", kind=kind)
        if instance.actual_state != Instance.Actual.STOPPED:
            InstanceEvent.objects.create(
                instance=instance,
                at=at,
                state=Instance.Actual.STOPPED,
                generation=instance.generation,
                gpu_id=instance.gpu_id,
                mig_device_id=instance.mig_device_id,
            )
            Instance.objects.filter(pk=instance.pk).update(
                actual_state=Instance.Actual.STOPPED, actual_changed_at=at, endpoint=""
            )
        ended.append(instance.pk)
    return ended


def join_token_ttl() -> timedelta:
    """How long a new join token works unless its maker says otherwise (``JOIN_TOKEN_DEFAULT_TTL_HOURS``)."""
    return timedelta(hours=settings.JOIN_TOKEN_DEFAULT_TTL_HOURS)


def join_token_create(
    *, name: str, max_uses: int | None, expires_at: datetime | Literal["default"] | None = "default"
) -> tuple[JoinToken, str]:
    """A token new hosts register with; the secret is returned once and stored hashed.

    ``expires_at`` None makes a token that never expires; left out, the token gets the
    default lifetime, the same one the admin and the Add-a-host page offer.
    """
    if expires_at == "default":
        expires_at = timezone.now() + join_token_ttl()
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

    An instance told to serve again (a wake, a start) first takes back the memory batch work
    borrowed on its card (``batch_jobs_vacate``), in the same transaction: the agent's reply
    carries the preemptions with the wake, and it stops job containers before it wakes a server.
    """
    now = timezone.now()
    with transaction.atomic():
        claimed = Instance.objects.filter(pk=instance.pk, generation=instance.generation).update(
            desired_state=state, generation=F("generation") + 1, desired_changed_at=now
        )
        if claimed != 1:
            raise StaleGeneration(f"instance {instance.pk} changed since generation {instance.generation}")
        if state == states.RUNNING and instance.desired_state != states.RUNNING:
            batch_jobs_vacate(instance=instance, action=action, kind=kind, policy=policy, at=now)
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
    _decision_event(
        decision,
        {"instance": instance.pk, "desired_state": state, "generation": instance.generation, "reason": reason},
    )
    _agents_tell(why=action, gpu_ids=[instance.gpu_id], mig_ids=[instance.mig_device_id])
    return decision


def instance_add(*, instance: Instance, reason: str, kind: str, inputs: dict[str, Any] | None = None) -> Decision:
    """Save an instance someone placed by hand, with the decision that says who and why.

    One placed to serve takes back the memory batch work borrowed on its card, as a launch does
    (``batch_jobs_vacate``, logged before the add in the same transaction).
    """
    now = timezone.now()
    with transaction.atomic():
        instance.full_clean()
        instance.save()
        if instance.desired_state == states.RUNNING:
            batch_jobs_vacate(instance=instance, action="add", kind=kind, policy=None, at=now)
        decision = Decision.objects.create(
            policy_kind=kind,
            pool_id=instance.pool_id,
            instance=instance,
            action="add",
            reason=reason,
            inputs=inputs or {},
            applied_at=now,
        )
    _decision_event(
        decision,
        {
            "instance": instance.pk,
            "desired_state": instance.desired_state,
            "generation": instance.generation,
            "reason": reason,
        },
    )
    _agents_tell(why="add", gpu_ids=[instance.gpu_id], mig_ids=[instance.mig_device_id])
    return decision


MANUAL = "manual"

# What a person may ask of one instance: the desired state each action sets, and the desired
# states it may be asked from.
INSTANCE_MANUAL_ACTIONS: dict[str, tuple[str, frozenset[str]]] = {
    "start": (states.RUNNING, frozenset({states.STOPPED})),
    "stop": (states.STOPPED, frozenset({states.RUNNING, states.SLEEPING})),
    "sleep": (states.SLEEPING, frozenset({states.RUNNING})),
    "wake": (states.RUNNING, frozenset({states.SLEEPING})),
}


class ActionRefused(ValueError):
    """A person's action that does not apply to what they acted on; nothing was changed."""


def instance_manual(*, instance: Instance, action: str, generation: int, user: str) -> Decision:
    """A person's start, stop, sleep or wake of one instance, logged as a ``manual`` decision.

    Claimed on the generation the person's page showed (``instance_desire``): if a policy,
    the gateway or another person changed the instance since, ``StaleGeneration`` and nothing
    changes. An action that does not apply (stop a stopped instance, sleep without sleep mode,
    start past the pool's maximum) is refused with ``ActionRefused``.
    """
    if action not in INSTANCE_MANUAL_ACTIONS:
        raise ActionRefused(f"unknown action {action!r}: use one of {', '.join(INSTANCE_MANUAL_ACTIONS)}")
    if instance.generation != generation:
        raise StaleGeneration(f"instance {instance.pk} changed since generation {generation}")
    state, applies_to = INSTANCE_MANUAL_ACTIONS[action]
    was = instance.desired_state
    if was not in applies_to:
        raise ActionRefused(f"instance {instance.pk} is desired {was}: {action} applies to {' or '.join(applies_to)}")
    pool = instance.pool
    if action == "sleep" and not pool.model_profile.enable_sleep_mode:
        raise ActionRefused(f"pool {pool.name}'s profile {pool.model_profile} has no vLLM sleep mode: stop it instead")
    if action == "start":
        _start_check(instance)
    return instance_desire(
        instance=instance,
        state=state,
        action=action,
        reason=f"{action} instance {instance.pk} of pool {pool.name} (desired {was} -> {state}), by {user}",
        kind=MANUAL,
        inputs={"user": user, "from": was},
    )


def _start_check(instance: Instance) -> None:
    """A stopped instance may start again on its device while the pool is under its maximum and,
    for an exclusive GPU or a MIG slice, nothing else occupies that device."""
    pool = instance.pool
    if instance.gpu_id is None:
        raise ActionRefused(f"instance {instance.pk} has no device any more: scale pool {pool.name} out instead")
    active = Instance.objects.filter(pool=pool).exclude(desired_state=states.STOPPED).count()
    if active >= pool.max_instances:
        raise ActionRefused(f"pool {pool.name} already has its maximum of {pool.max_instances} instances")
    if instance.mig_device_id is not None:
        others = Instance.objects.filter(mig_device_id=instance.mig_device_id)
    elif pool.isolation == Pool.Isolation.EXCLUSIVE:
        others = Instance.objects.filter(gpu_id=instance.gpu_id)
    else:
        return
    for other in others.exclude(pk=instance.pk):
        if states.instance_occupies_device(desired_state=other.desired_state, actual_state=other.actual_state):
            raise ActionRefused(f"instance {other.pk} occupies the device of instance {instance.pk}")


def _agents_tell(
    *,
    why: str,
    gpu_ids: Sequence[int | None] = (),
    mig_ids: Sequence[int | None] = (),
    node_ids: Sequence[int | None] = (),
) -> None:
    """Once committed, tell the agents of the nodes holding these cards (or the nodes named)
    that their desired state changed, so a waiting agent reports now (its long poll)."""

    def tell() -> None:
        nodes = set(node_ids)
        cards = [pk for pk in gpu_ids if pk is not None]
        slices = [pk for pk in mig_ids if pk is not None]
        if cards:
            nodes.update(Gpu.objects.filter(pk__in=cards).values_list("node_id", flat=True))
        if slices:
            nodes.update(MigDevice.objects.filter(pk__in=slices).values_list("gpu__node_id", flat=True))
        node_desired_changed(node_ids=nodes, why=why)

    transaction.on_commit(tell)


def _decision_event(decision: Decision, payload: dict[str, Any]) -> None:
    transaction.on_commit(
        lambda: event_publish(
            kind="decision",
            payload={
                "decision": decision.pk,
                "pool": decision.pool_id,
                "action": decision.action,
                "policy_kind": decision.policy_kind,
                "at": decision.created_at.isoformat(),
                **payload,
            },
            groups=(FLEET_GROUP, pool_group(decision.pool_id)) if decision.pool_id else (FLEET_GROUP,),
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
    instance, and the second gets ``StaleGeneration``. Like a wake, the new instance takes
    back the memory batch work borrowed on its card (``batch_jobs_vacate``), in the same
    transaction, before the launch is logged.
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
        batch_jobs_vacate(instance=instance, action=action, kind=kind, policy=policy, at=now)
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
    _agents_tell(why=action, node_ids=[gpu.node_id])
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
    """Put a waiting batch job on a GPU; conditional on the generation read, like ``instance_desire``.

    The card is locked and read again first: an instance launched or woken on it since the policy read
    the fleet (``batch_jobs_vacate`` takes the same lock) may have taken it from batch work
    (``colocate.card_lends``), and then ``StaleGeneration`` and nothing changes."""
    now = timezone.now()
    with transaction.atomic():
        taken = _card_taken(gpu)
        if taken:
            raise StaleGeneration(f"batch job {job.pk} not started on GPU {gpu.pk}: {taken}")
        claimed = BatchJob.objects.filter(pk=job.pk, generation=job.generation, state__in=states.JOB_WAITING).update(
            state=BatchJob.State.RUNNING,
            gpu=gpu,
            started_at=now,
            generation=F("generation") + 1,
            actual_state="",
            container_id="",
            exit_code=None,
            last_error="",
        )
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
    _agents_tell(why="colocate", node_ids=[gpu.node_id])
    return decision


def _card_taken(gpu: Gpu) -> str | None:
    """Why the card no longer lends to batch work (``colocate.card_lends``), read under its row's lock; None
    where it does. Call inside a transaction."""
    Gpu.objects.select_for_update().get(pk=gpu.pk)
    holders = _card_holders(gpu.pk)
    asleep = bool(holders) and all(
        (i.desired_state, i.actual_state) == (states.SLEEPING, states.SLEEPING) for i in holders
    )
    exclusive = [i.pk for i in holders if i.pool.isolation == Pool.Isolation.EXCLUSIVE]
    if card_lends(asleep=asleep, exclusive=bool(exclusive)):
        return None
    return f"exclusive instance {', '.join(map(str, exclusive))} holds it"


def _card_holders(gpu_id: int, *, including: int | None = None) -> list[Instance]:
    """The instances on a whole card that hold or will hold its memory, as placement counts them
    (``states.instance_occupies_device``), and ``including`` whatever its state."""
    return [
        instance
        for instance in Instance.objects.filter(gpu_id=gpu_id, mig_device__isnull=True).select_related(
            "pool__model_profile"
        )
        if instance.pk == including
        or states.instance_occupies_device(desired_state=instance.desired_state, actual_state=instance.actual_state)
    ]


def batch_job_preempt(
    *,
    job: BatchJob,
    reason: str,
    kind: str,
    policy: Policy | None = None,
    inputs: dict[str, Any] | None = None,
) -> Decision:
    """Stop a running batch job and requeue it; the GPU stays recorded so its agent stops the container."""
    with transaction.atomic():
        decision = _job_preempted(
            job=job,
            generation=job.generation,
            at=timezone.now(),
            reason=reason,
            kind=kind,
            policy=policy,
            inputs=inputs or {},
        )
    _agents_tell(why="preempt", gpu_ids=[job.gpu_id])
    return decision


def _job_preempted(
    *,
    job: BatchJob,
    generation: int | None,
    at: datetime,
    reason: str,
    kind: str,
    policy: Policy | None,
    inputs: dict[str, Any],
) -> Decision:
    """The one preemption step, inside the caller's transaction: a running job is marked preempted
    (requeued; its card kept, so its agent stops the container) and the decision logged. Conditional
    on the job still running and, where ``generation`` is given, on the generation the caller read."""
    rows = BatchJob.objects.filter(pk=job.pk, state=BatchJob.State.RUNNING)
    claimed = (rows if generation is None else rows.filter(generation=generation)).update(
        state=BatchJob.State.PREEMPTED,
        preempted_at=at,
        preemptions=F("preemptions") + 1,
        generation=F("generation") + 1,
        actual_state="",
    )
    if claimed != 1:
        raise StaleGeneration(f"batch job {job.pk} changed since generation {job.generation}")
    decision = Decision.objects.create(
        policy=policy,
        policy_kind=kind,
        batch_job=job,
        action="preempt",
        reason=reason,
        inputs=inputs,
        applied_at=at,
    )
    _decision_event(decision, {"batch_job": job.pk, "state": "preempted", "reason": reason})
    return decision


def batch_jobs_vacate(
    *, instance: Instance, action: str, kind: str, policy: Policy | None, at: datetime
) -> list[Decision]:
    """Preempt (stop and requeue) the batch jobs on an instance's card that its serving (again) needs
    the memory of; called by ``instance_desire``, ``instance_launch`` and ``instance_add`` inside
    their transaction, before the wake, start, launch or add is logged.

    Which jobs go is ``fleet.policies.colocate.wake_evictions``: all of them on an exclusive
    instance's card, else as few as make the card's instance budgets (all but those desired
    stopped, as placement counts them), its foreign memory (``selectors.gpu_foreign_bytes``) and
    the jobs kept fit. Each preemption is logged as a decision of the waker's kind, before the
    wake's own.
    """
    if instance.gpu_id is None or instance.mig_device_id is not None:
        return []
    # The card's lock first: a job start on it (``batch_job_start``) waits, then finds the card taken.
    gpu = Gpu.objects.select_for_update().get(pk=instance.gpu_id)
    jobs = list(
        BatchJob.objects.select_for_update()
        .filter(gpu_id=instance.gpu_id, state=BatchJob.State.RUNNING)
        .order_by("priority", "-started_at", "-pk")
    )
    if not jobs:
        return []
    holders = _card_holders(gpu.pk, including=instance.pk)
    exclusive = any(other.pool.isolation == Pool.Isolation.EXCLUSIVE for other in holders)
    budgets = sum(int(gpu.memory_total_bytes * other.pool.model_profile.gpu_memory_utilization) for other in holders)
    # Every instance that may hold memory there is among the holders (``instance_occupies_device``).
    foreign = gpu_foreign_bytes(gpu, instances=holders, jobs=jobs, now=at)
    evicted = wake_evictions(
        memory_total_bytes=gpu.memory_total_bytes,
        budgets_bytes=budgets,
        foreign_bytes=foreign,
        exclusive=exclusive,
        jobs=[(job.pk, job.memory_bytes) for job in jobs],
    )
    promised = budgets + foreign + sum(job.memory_bytes for job in jobs)
    pool = instance.pool
    decisions = []
    for job in (job for job in jobs if job.pk in evicted):
        why = (
            "the card of an exclusive instance"
            if exclusive
            else f"{gib(promised)} held or promised ({gib(foreign)} foreign) "
            f"> {gib(gpu.memory_total_bytes)} on the card"
        )
        promised -= job.memory_bytes
        reason = (
            f"batch job {job.pk} preempted and requeued: instance {instance.pk} of pool {pool.name} "
            f"is told to serve ({action}) and takes back the memory it borrowed ({why})"
        )
        inputs = {
            "gpu": gpu.pk,
            "instance": instance.pk,
            "for": action,
            "exclusive": exclusive,
            "budgets_bytes": budgets,
            "foreign_bytes": foreign,
            "job_bytes": job.memory_bytes,
            "memory_total_bytes": gpu.memory_total_bytes,
        }
        decisions.append(
            _job_preempted(job=job, generation=None, at=at, reason=reason, kind=kind, policy=policy, inputs=inputs)
        )
    return decisions


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
    _agents_tell(why="reap", node_ids=[orphan.node_id])
    return decision


GATEWAY = "gateway"


def pool_decision_log(
    *,
    pool: Pool,
    action: str,
    reason: str,
    kind: str,
    policy: Policy | None = None,
    inputs: dict[str, Any] | None = None,
) -> Decision:
    """Log a decision about a pool that changes no desired state (the static-spend guard's refusals,
    holds starting and ending, a gateway's wake that found no room), and publish it like any other.

    Taken now, it is applied now: ``applied_at`` is set so the decision's page does not show it as
    pending, and the live decisions feed shows it the moment it is made.
    """
    decision = Decision.objects.create(
        policy=policy,
        policy_kind=kind,
        pool=pool,
        action=action,
        reason=reason,
        inputs=inputs or {},
        applied_at=timezone.now(),
    )
    _decision_event(decision, {"reason": reason})
    return decision


REQUEST_LOG_FIELDS = (
    "at",
    "team",
    "pool",
    "instance",
    "endpoint",
    "model",
    "rcf",
    "tier",
    "stream",
    "prompt_tokens",
    "output_tokens",
    "tokens_from_usage",
    "ttft_ms",
    "latency_ms",
    "status",
    "cold_start",
    "retried",
    "error",
    "api_key",
)


def request_logs_write(*, records: Sequence[RequestRecord]) -> int:
    """Store a batch of gateway request records in one insert and mark their keys used.

    A record may name a pool, instance or team deleted since its request: the row is kept
    and the link dropped. Looking every link up costs three queries a batch for what
    almost never happens, so a batch written in its own transaction goes in as it is and
    the database's foreign keys, checked at commit, say when one was deleted; then the
    batch is written again with the links looked up. Inside a caller's transaction the
    commit is not this function's, so it looks them up first.
    """
    if not records:
        return 0
    if not connection.in_atomic_block:
        try:
            with transaction.atomic():
                _request_logs_store(records, existing=None)
            return len(records)
        except IntegrityError:
            pass
    with transaction.atomic():
        _request_logs_store(records, existing=_request_log_links(records))
    return len(records)


def _request_log_links(records: Sequence[RequestRecord]) -> tuple[set[int], set[int], set[int], set[int]]:
    """The pools, instances, teams and API keys named by ``records`` that still exist."""
    return (
        set(Pool.objects.filter(pk__in={r.pool_id for r in records}).values_list("pk", flat=True)),
        set(Instance.objects.filter(pk__in={r.instance_id for r in records}).values_list("pk", flat=True)),
        set(Team.objects.filter(pk__in={r.team_id for r in records}).values_list("pk", flat=True)),
        set(ApiKey.objects.filter(pk__in={r.key_id for r in records}).values_list("pk", flat=True)),
    )


def _request_logs_store(
    records: Sequence[RequestRecord], *, existing: tuple[set[int], set[int], set[int], set[int]] | None
) -> None:
    """Insert ``records`` as plain rows; with ``existing``, links to anything else become empty."""
    pools, instances, teams, keys = existing or (None, None, None, None)

    def link(pk: int | None, present: set[int] | None) -> int | None:
        return pk if present is None or pk in present else None

    rows = [
        (
            datetime.fromtimestamp(record.at, tz=UTC),
            link(record.team_id, teams),
            link(record.pool_id, pools),
            link(record.instance_id, instances),
            record.endpoint,
            record.model[:100],
            record.rcf,
            record.tier,
            record.stream,
            record.prompt_tokens,
            record.output_tokens,
            record.tokens_from_usage,
            record.ttft_ms,
            record.latency_ms,
            record.status,
            record.cold_start,
            record.retried,
            record.error[:255],
            link(record.key_id, keys),
        )
        for record in records
    ]
    last_used: dict[int, float] = {}
    for record in records:
        last_used[record.key_id] = max(record.at, last_used.get(record.key_id, 0.0))
    # Plain rows and statements, no model objects or querysets: this runs on the gateway's
    # database worker, which in the panel's mount is a thread, and every millisecond it holds
    # the interpreter there is a millisecond the event loop waits.
    rows_insert(model=RequestLog, fields=REQUEST_LOG_FIELDS, rows=rows)
    if records:  # an hour already rolled up into usage is recomputed at the next run
        usage_reopen(since=datetime.fromtimestamp(min(record.at for record in records), tz=UTC))
    for key_id, at in last_used.items():
        rows_update(model=ApiKey, pks=[key_id], values={"last_used_at": datetime.fromtimestamp(at, tz=UTC)})


# Pool fields a settings file (``simulate --policy-settings``, ``bench/tune.py``) may set on a stored pool.
POOL_SETTINGS_FIELDS = (
    "min_instances",
    "max_instances",
    "util_band_low",
    "util_band_high",
    "sla_percentile",
    "sla_latency_ms",
    "sla_e2e_latency_ms",
    "idle_minimize_after_s",
    "idle_stop_after_s",
    "prewarm_margin_s",
)


class SettingsRefused(ValueError):
    """Settings that do not validate; nothing was written."""


def pool_settings_apply(
    *,
    pool: Pool,
    values: dict[str, Any],
    user: str,
    kind: str = MANUAL,
    reason: str = "",
) -> Decision:
    """Write a settings file's pool fields and policy settings to ``pool``, validated as the admin validates
    them (``Pool.full_clean``, ``Policy.full_clean``), in one transaction with one logged decision; any
    problem raises ``SettingsRefused`` naming every one of them and changes nothing.

    ``values`` is the shape ``setup_build`` reads: ``{"pool": {field: value}, "policies": {kind: {...} |
    null}}``; a policy kind's settings become the pool's own ``Policy`` row (a null one disables the kind
    for this pool)."""
    unknown = set(values) - {"pool", "policies"}
    problems: list[str] = [f"unknown section {name!r}; expected pool, policies" for name in sorted(unknown)]
    pool_values = values.get("pool") or {}
    policy_values = values.get("policies") or {}
    if not isinstance(pool_values, dict) or not isinstance(policy_values, dict):
        raise SettingsRefused("pool and policies must be JSON objects")
    problems += [
        f"pool: {name!r} is not a pool setting; known: {', '.join(POOL_SETTINGS_FIELDS)}"
        for name in sorted(set(pool_values) - set(POOL_SETTINGS_FIELDS))
    ]
    if problems:
        raise SettingsRefused("; ".join(problems))
    with transaction.atomic():
        locked = Pool.objects.select_for_update().get(pk=pool.pk)
        before: dict[str, Any] = {"pool": {name: getattr(locked, name) for name in pool_values}, "policies": {}}
        for name, value in pool_values.items():
            setattr(locked, name, value)
        try:
            locked.full_clean()
        except ValidationError as exc:
            problems += [f"pool: {name}: {' '.join(messages)}" for name, messages in exc.message_dict.items()]
        rows: list[Policy] = []
        for policy_kind, settings_ in policy_values.items():
            row = Policy.objects.filter(kind=policy_kind, pool=locked).first()
            before["policies"][policy_kind] = None if row is None else (row.settings if row.enabled else None)
            row = row or Policy(kind=policy_kind, pool=locked)
            row.enabled = settings_ is not None
            if settings_ is not None:
                row.settings = settings_
            try:
                row.full_clean()
            except ValidationError as exc:
                problems += [
                    f"{policy_kind}: {name}: {' '.join(messages)}" for name, messages in exc.message_dict.items()
                ]
            rows.append(row)
        if problems:
            raise SettingsRefused("; ".join(problems))
        if pool_values:
            locked.save(update_fields=list(pool_values))
        for row in rows:
            row.save()
        # The minimum against the static size spans the pool and its policies: checked once all are
        # written (raising here rolls the writes back).
        if conflicts := static_minimum_problems([locked]):
            raise SettingsRefused("; ".join(conflicts))
        after = {
            "pool": {name: getattr(locked, name) for name in pool_values},
            "policies": {row.kind: row.settings if row.enabled else None for row in rows},
        }
        decision = Decision.objects.create(
            policy_kind=kind,
            pool=locked,
            action="settings_applied",
            reason=reason or f"settings applied by {user}",
            inputs={"user": user, "before": before, "after": after},
            applied_at=timezone.now(),
        )
        _decision_event(decision, {})
    pool.refresh_from_db()
    return decision


def pool_setting_claim(*, pool: Pool, name: str, seen: Any, value: Any, user: str, reason: str) -> Decision:
    """One pool setting changed by a person from the value their page showed (a recommendation's
    one click): if it is no longer ``seen``, ``StaleGeneration`` and nothing changes; otherwise
    ``pool_settings_apply`` validates, writes and logs it (``SettingsRefused`` changes nothing)."""
    if name not in POOL_SETTINGS_FIELDS:
        raise SettingsRefused(f"{name!r} is not a pool setting; known: {', '.join(POOL_SETTINGS_FIELDS)}")
    with transaction.atomic():
        current = getattr(Pool.objects.select_for_update().get(pk=pool.pk), name)
        if current != seen:
            raise StaleGeneration(f"pool {pool.name} has {name} {current}, not {seen}")
        return pool_settings_apply(pool=pool, values={"pool": {name: value}}, user=user, reason=reason)
