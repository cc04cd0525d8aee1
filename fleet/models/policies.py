"""Policies people edit, and the decisions they took."""

from __future__ import annotations

from django.core.exceptions import ValidationError
from django.db import models

from fleet.policies.settings import SCHEMAS, SettingsInvalid, policy_settings_clean


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
        ]

    def __str__(self) -> str:
        return f"{self.action}: {self.reason[:60]}"
