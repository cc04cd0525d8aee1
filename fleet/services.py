"""Writes to the fleet: each state change happens here, logs its decision and emits its event."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.db import transaction
from django.db.models import F
from django.utils import timezone

from fleet.events import event_publish
from fleet.models import ApiKey, Decision, Instance, JoinToken, Node, Policy, Team


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
