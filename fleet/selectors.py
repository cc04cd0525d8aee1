"""Reads of the fleet, shaped for the pages that show them."""

from __future__ import annotations

from django.db.models import Count, Q, QuerySet, Sum

from fleet.models import Instance, JoinToken, Node, Pool


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


def join_tokens_recent(limit: int = 10) -> list[JoinToken]:
    """The newest join tokens with the hosts that registered with each."""
    return list(JoinToken.objects.prefetch_related("nodes").order_by("-created_at")[:limit])
