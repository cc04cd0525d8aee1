"""Reads of the fleet, shaped for the pages that show them."""

from __future__ import annotations

import logging

from django.core.exceptions import ValidationError
from django.db.models import Count, Q, QuerySet, Sum

from fleet.models import ApiKey, Instance, Node, Policy, Pool
from fleet.policies.settings import policy_defaults, policy_settings_validate

logger = logging.getLogger(__name__)


def nodes_overview() -> QuerySet[Node]:
    """Nodes with their GPU count and total GPU memory, in one query."""
    return Node.objects.annotate(gpu_count=Count("gpus"), gpu_memory_bytes=Sum("gpus__memory_total_bytes")).order_by(
        "name"
    )


def pools_overview() -> QuerySet[Pool]:
    """Pools with instance counts by actual state and their profile, in one query."""
    return (
        Pool.objects.select_related("model_profile")
        .annotate(
            instances_total=Count("instances"),
            instances_ready=Count("instances", filter=Q(instances__actual_state=Instance.Actual.READY)),
            instances_sleeping=Count("instances", filter=Q(instances__actual_state=Instance.Actual.SLEEPING)),
        )
        .order_by("tier", "name")
    )


def gateway_api_keys() -> QuerySet[ApiKey, tuple[int, int, str]]:
    """(key id, team id, digest) of every usable key: what the gateway authenticates against."""
    return ApiKey.objects.filter(revoked_at__isnull=True).values_list("pk", "team_id", "key_hash")


def gateway_pools() -> QuerySet[Pool]:
    return Pool.objects.filter(enabled=True).select_related("model_profile").order_by("tier", "name")


def gateway_ready_instances() -> QuerySet[Instance, tuple[int, int, str]]:
    """(instance id, pool id, endpoint) of instances the agent reports ready, in enabled pools."""
    return (
        Instance.objects.filter(actual_state=Instance.Actual.READY, pool__enabled=True)
        .exclude(endpoint="")
        .order_by("pk")
        .values_list("pk", "pool_id", "endpoint")
    )


def routing_policy_settings() -> tuple[dict[str, float | int | bool], bool]:
    """The fleet-wide routing policy's settings (defaults filled in) and whether it is enabled.

    Settings that fail validation (edited outside the admin) fall back to the defaults with
    a warning rather than stopping the gateway.
    """
    policy = Policy.objects.filter(kind=Policy.Kind.ROUTING, pool=None).first()
    if policy is None:
        return policy_defaults("routing"), True
    try:
        return policy_settings_validate(kind="routing", settings=policy.settings), policy.enabled
    except ValidationError as exc:
        logger.warning("routing policy settings invalid (%s); using the defaults", "; ".join(exc.messages))
        return policy_defaults("routing"), policy.enabled
