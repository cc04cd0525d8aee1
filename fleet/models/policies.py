"""Policies people edit, and the decisions they took."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from django.core.exceptions import ValidationError
from django.db import models

from fleet.models.serving import Pool
from fleet.policies.settings import SCHEMAS, SettingsInvalid, policy_settings_clean, policy_settings_stored
from fleet.policies.static_hold import minimum_conflict


class Policy(models.Model):
    """One policy kind, for one pool or (pool empty) the whole fleet."""

    class Kind(models.TextChoices):
        IDLE_RECLAIM = "idle_reclaim", "idle reclaim"
        PREWARM = "prewarm", "pre-warm"
        AUTOSCALE = "autoscale", "SLA-bounded autoscaling"
        COLOCATE = "colocate", "batch co-location"
        REAP = "reap", "reap orphans"
        ROUTING = "routing", "routing (request complexity)"
        STATIC_HOLD = "static_hold", "static-spend guard"

    kind = models.CharField(max_length=32, choices=Kind.choices)
    pool = models.ForeignKey(
        "fleet.Pool",
        on_delete=models.CASCADE,
        null=True,
        blank=True,
        related_name="policies",
        help_text="Empty: applies to the whole fleet, unless a pool has its own.",
    )
    enabled = models.BooleanField(default=True)
    settings = models.JSONField(default=dict, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name_plural = "policies"
        ordering = ["kind", "pool__name"]
        constraints = [
            models.UniqueConstraint(fields=["kind", "pool"], name="policy_kind_pool_unique"),
            models.UniqueConstraint(
                fields=["kind"], condition=models.Q(pool__isnull=True), name="policy_kind_fleet_unique"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} ({self.pool or 'fleet'})"

    def clean(self) -> None:
        """Errors come keyed by setting, the names of the admin's typed fields."""
        if self.kind in SCHEMAS:
            try:
                self.settings = policy_settings_clean(kind=self.kind, settings=self.settings)
            except SettingsInvalid as exc:
                raise ValidationError(exc.message_dict) from exc


def static_minimum_problems(pools: Iterable[Pool], *, saving: Sequence[Policy] = ()) -> list[str]:
    """Each of ``pools`` whose minimum is above its static size while autoscale and the static-spend
    guard both apply to it (``static_hold.minimum_conflict``): the one check made wherever one of
    the three is saved (the admin's policy and pool forms, ``pool_settings_apply``).

    It spans rows, so it is no model's ``clean``: a settings file that changes a pool's minimum
    and its static size together is checked once both are in place, not each against the other's
    old value. A pool is governed by its own row of a kind, enabled or not, else by the fleet's,
    as the policies read them (``PolicyConfig.for_pool``). Each of ``saving`` counts as saved in
    place of what its row holds now, and where one of them is an autoscale or static-hold policy
    only the pools such a policy governs are checked: a conflict is refused where it is made,
    not when an unrelated policy is saved. The pools' minimums are theirs as given.
    """
    kinds = (Policy.Kind.AUTOSCALE, Policy.Kind.STATIC_HOLD)
    saving = [policy for policy in saving if policy.kind in kinds]
    stored = Policy.objects.filter(kind__in=kinds).exclude(pk__in=[p.pk for p in saving if p.pk is not None])
    rows = {(row.kind, row.pool_id): row for row in stored}
    rows.update({(policy.kind, policy.pool_id): policy for policy in saving})

    def governing(kind: str, pool_id: int | None) -> Policy | None:
        return rows.get((kind, pool_id)) or rows.get((kind, None))

    problems = []
    for pool in pools:
        autoscale, guard = governing(Policy.Kind.AUTOSCALE, pool.pk), governing(Policy.Kind.STATIC_HOLD, pool.pk)
        if autoscale is None or guard is None or not (autoscale.enabled and guard.enabled):
            continue
        if saving and not any(policy in (autoscale, guard) for policy in saving):
            continue
        settings = policy_settings_stored(kind=guard.kind, settings=guard.settings, row=str(guard))
        problem = minimum_conflict(
            pool=pool.name,
            min_instances=pool.min_instances,
            static_replicas=int(settings["static_replicas"]),
            autoscale=f"the policy {autoscale}",
            guard=f"the policy {guard}",
        )
        if problem:
            problems.append(problem)
    return problems


class Decision(models.Model):
    """What a policy decided, when and why, with the inputs it saw."""

    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    policy = models.ForeignKey(Policy, on_delete=models.SET_NULL, null=True, blank=True, related_name="decisions")
    policy_kind = models.CharField(max_length=32, help_text="Who decided: a policy kind, 'manual' or 'gateway'.")
    pool = models.ForeignKey("fleet.Pool", on_delete=models.SET_NULL, null=True, blank=True, related_name="decisions")
    instance = models.ForeignKey(
        "fleet.Instance", on_delete=models.SET_NULL, null=True, blank=True, related_name="decisions"
    )
    batch_job = models.ForeignKey(
        "fleet.BatchJob", on_delete=models.SET_NULL, null=True, blank=True, related_name="decisions"
    )
    action = models.CharField(max_length=32)
    reason = models.TextField()
    inputs = models.JSONField(default=dict, blank=True)
    applied_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [
            models.Index(fields=["pool", "-created_at"], name="decision_pool_time"),
            models.Index(fields=["policy_kind", "-created_at"], name="decision_kind_time"),
            # An instance's newest decision before a range: where each decision's effect begins.
            models.Index(fields=["instance", "-created_at", "-id"], name="decision_instance_time"),
        ]

    def __str__(self) -> str:
        return f"{self.action}: {self.reason[:60]}"
