"""Writes to the fleet: each state change happens here, logs its decision and emits its event."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from django.db import transaction
from django.db.models import F
from django.utils import timezone

from fleet.events import event_publish
from fleet.models import ApiKey, Decision, Instance, Node, Policy, Pool, RequestLog, Team

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
    token = node.issue_token()
    node.save(update_fields=["token_hash", "token_prefix"])
    return token


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


GATEWAY = "gateway"


def pool_wake(*, pool_id: int, reason: str, inputs: dict[str, Any] | None = None) -> list[Decision]:
    """Ask for capacity in a pool the gateway is holding requests for; return what was decided.

    In order: an instance already desired running is on its way (nothing to do); else a
    sleeping, then a stopped, instance is set running; else, if the pool has no instance
    at all, one is created on a free GPU (``fleet.gateway.placement``). Each change is a
    gateway decision with its reason. The pool row is locked so two gateway processes
    waking the same pool create one instance, not two.
    """
    from fleet.gateway.placement import placement_free_slot

    with transaction.atomic():
        pool = Pool.objects.select_for_update().get(pk=pool_id)
        instances = list(Instance.objects.filter(pool=pool).order_by("pk"))
        if any(instance.desired_state == Instance.Desired.RUNNING for instance in instances):
            return []
        waiting = [instance for instance in instances if instance.desired_state == Instance.Desired.SLEEPING] or [
            instance for instance in instances if instance.desired_state == Instance.Desired.STOPPED
        ]
        if waiting:
            try:
                decision = instance_desire(
                    instance=waiting[0],
                    state=Instance.Desired.RUNNING,
                    reason=reason,
                    action="wake",
                    kind=GATEWAY,
                    inputs=inputs,
                )
            except StaleGeneration:
                return []
            return [decision]
        if instances or pool.max_instances == 0:
            return []
        slot = placement_free_slot(pool=pool)
        if slot is None:
            decision = Decision.objects.create(
                policy_kind=GATEWAY,
                pool=pool,
                action="wake_failed",
                reason=f"{reason}; no free GPU fits pool {pool.name}",
                inputs=inputs or {},
            )
            return [decision]
        gpu, mig_device = slot
        instance = Instance.objects.create(
            pool=pool, gpu=gpu, mig_device=mig_device, desired_state=Instance.Desired.RUNNING
        )
        where = f"{gpu}" + (f" slice {mig_device.profile}" if mig_device else "")
        decision = Decision.objects.create(
            policy_kind=GATEWAY,
            pool=pool,
            instance=instance,
            action="create",
            reason=f"{reason}; placed on free {where}",
            inputs=inputs or {},
            applied_at=timezone.now(),
        )
    transaction.on_commit(
        lambda: event_publish(
            kind="decision",
            payload={
                "decision": decision.pk,
                "instance": instance.pk,
                "pool": pool.pk,
                "action": "create",
                "desired_state": instance.desired_state,
                "generation": instance.generation,
                "reason": decision.reason,
            },
        )
    )
    return [decision]


def request_logs_write(*, records: Sequence[RequestRecord]) -> int:
    """Store a batch of gateway request records in one insert and mark their keys used."""
    if not records:
        return 0
    # Rows may name a pool, instance or team deleted since the request; keep the row, drop the link.
    pools = set(Pool.objects.filter(pk__in={r.pool_id for r in records}).values_list("pk", flat=True))
    instances = set(Instance.objects.filter(pk__in={r.instance_id for r in records}).values_list("pk", flat=True))
    teams = set(Team.objects.filter(pk__in={r.team_id for r in records}).values_list("pk", flat=True))
    rows = [
        RequestLog(
            at=datetime.fromtimestamp(record.at, tz=UTC),
            team_id=record.team_id if record.team_id in teams else None,
            pool_id=record.pool_id if record.pool_id in pools else None,
            instance_id=record.instance_id if record.instance_id in instances else None,
            endpoint=record.endpoint,
            model=record.model[:100],
            rcf=record.rcf,
            tier=record.tier,
            stream=record.stream,
            prompt_tokens=record.prompt_tokens,
            output_tokens=record.output_tokens,
            tokens_from_usage=record.tokens_from_usage,
            ttft_ms=record.ttft_ms,
            latency_ms=record.latency_ms,
            status=record.status,
            cold_start=record.cold_start,
            retried=record.retried,
            error=record.error[:255],
        )
        for record in records
    ]
    last_used: dict[int, float] = {}
    for record in records:
        last_used[record.key_id] = max(record.at, last_used.get(record.key_id, 0.0))
    with transaction.atomic():
        RequestLog.objects.bulk_create(rows, batch_size=1000)
        for key_id, at in last_used.items():
            ApiKey.objects.filter(pk=key_id).update(last_used_at=datetime.fromtimestamp(at, tz=UTC))
    return len(rows)
