"""Settings searches run on a pool's own past traffic, and what they found."""

from __future__ import annotations

from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models

from fleet.sim.headroom import MAX_HEADROOM


class TuningRun(models.Model):
    """One search of a pool's settings (``fleet.sim.tune``) on its request log over ``traffic_from`` ..
    ``traffic_to``: the settings it started from, the changes it found, and both on that traffic."""

    class State(models.TextChoices):
        QUEUED = "queued", "queued"
        RUNNING = "running", "running"
        DONE = "done", "done"
        FAILED = "failed", "failed"

    pool = models.ForeignKey("fleet.Pool", on_delete=models.CASCADE, related_name="tuning_runs")
    requested_by = models.CharField(max_length=150)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    traffic_from = models.DateTimeField(help_text="The request log from this time ...")
    traffic_to = models.DateTimeField(help_text="... up to (not including) this one.")
    max_evaluations = models.PositiveIntegerField(
        help_text="At most this many candidates simulated (each one run again at the headroom is one more)."
    )
    headroom = models.FloatField(
        default=0.0,
        validators=[MinValueValidator(0.0), MaxValueValidator(MAX_HEADROOM)],
        help_text=(
            "Room for growth: the settings chosen also meet the SLA on the same traffic at 1 + this times its "
            "rate (0: not asked)."
        ),
    )
    state = models.CharField(max_length=8, choices=State.choices, default=State.QUEUED)
    error = models.TextField(blank=True, help_text="Why the run failed; nothing was applied.")
    finished_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(
        null=True,
        blank=True,
        help_text="The last sign of life of the process running it; a run silent too long is failed as lost.",
    )
    engine = models.CharField(max_length=255, blank=True, help_text="The simulated GPU and served model.")
    sla = models.CharField("SLA", max_length=255, blank=True, help_text="The pool's SLA the candidates were judged by.")
    requests = models.PositiveIntegerField(null=True, blank=True, help_text="Requests in the traffic replayed.")
    base_settings = models.JSONField(
        default=dict, blank=True, help_text="The pool's settings when the run read them, which the search started from."
    )
    settings = models.JSONField(
        default=dict,
        blank=True,
        help_text="What the search changed, in the shape policy_apply reads: {pool: {...}, policies: {kind: {...}}}.",
    )
    evaluations = models.PositiveIntegerField(
        null=True, blank=True, help_text="Simulations run: the candidates, and those run again at the headroom."
    )
    meets_sla = models.BooleanField(null=True, blank=True, help_text="Whether the settings found meet the SLA.")
    base_paid_gpu_hours = models.FloatField(null=True, blank=True)
    tuned_paid_gpu_hours = models.FloatField(null=True, blank=True)
    base_attainment = models.FloatField(null=True, blank=True, help_text="Share of requests within the SLA.")
    tuned_attainment = models.FloatField(null=True, blank=True, help_text="Share of requests within the SLA.")
    holds_headroom = models.BooleanField(
        null=True, blank=True, help_text="Whether the settings found also meet the SLA at the headroom."
    )
    headroom_attainment = models.FloatField(
        null=True, blank=True, help_text="The settings found: share of requests within the SLA at the headroom."
    )
    applied_decision = models.OneToOneField(
        "fleet.Decision", on_delete=models.SET_NULL, null=True, blank=True, related_name="tuning_run"
    )
    applied_at = models.DateTimeField(null=True, blank=True)
    applied_by = models.CharField(max_length=150, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"tuning {self.pool} {self.traffic_from:%Y-%m-%d}..{self.traffic_to:%Y-%m-%d} ({self.state})"
