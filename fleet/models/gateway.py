"""What the gateway served: one row per routed request, written in batches."""

from __future__ import annotations

from django.db import models


class RequestLog(models.Model):
    """A request the gateway routed (or held and gave up on), with the figures spend and SLAs need.

    Requests refused before routing (bad key, malformed body, over-long prompt) leave no
    row: they never reached a pool, so they cost nothing and tell nothing about capacity.
    """

    class Endpoint(models.TextChoices):
        CHAT = "chat", "chat completions"
        COMPLETIONS = "completions", "completions"

    id = models.BigAutoField(primary_key=True)
    at = models.DateTimeField(help_text="When the gateway received the request.")
    team = models.ForeignKey(
        "fleet.Team", on_delete=models.SET_NULL, null=True, blank=True, related_name="requests", db_index=False
    )
    pool = models.ForeignKey(
        "fleet.Pool", on_delete=models.SET_NULL, null=True, blank=True, related_name="requests", db_index=False
    )
    instance = models.ForeignKey(
        "fleet.Instance", on_delete=models.SET_NULL, null=True, blank=True, related_name="requests"
    )
    api_key = models.ForeignKey(
        "fleet.ApiKey",
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="requests",
        db_index=False,
        verbose_name="API key",
        help_text="The key the request came with; empty for rows logged before keys were recorded.",
    )
    endpoint = models.CharField(max_length=16, choices=Endpoint.choices)
    model = models.CharField(max_length=100)
    rcf = models.FloatField(help_text="Request complexity fingerprint.")
    tier = models.CharField(max_length=1, help_text="Tier the RCF chose; the pool may be a fallback's.")
    stream = models.BooleanField(default=False)
    prompt_tokens = models.PositiveIntegerField(null=True, blank=True)
    output_tokens = models.PositiveIntegerField(null=True, blank=True)
    tokens_from_usage = models.BooleanField(
        default=False, help_text="Token counts came from the server's usage report, not the gateway's count."
    )
    ttft_ms = models.FloatField(null=True, blank=True, help_text="To the first streamed byte; empty when not streamed.")
    latency_ms = models.FloatField(help_text="End to end, as the gateway saw it.")
    status = models.PositiveSmallIntegerField()
    cold_start = models.BooleanField(default=False, help_text="Held while its pool woke from zero.")
    retried = models.BooleanField(default=False, help_text="Failed over to a second instance.")
    error = models.CharField(max_length=255, blank=True)

    class Meta:
        ordering = ["-at"]
        indexes = [
            # The request log's first page, unfiltered, newest first (``dashboard.request_log``).
            models.Index(fields=["-at", "-id"], name="request_time"),
            models.Index(fields=["pool", "at"], name="request_pool_time"),
            models.Index(fields=["team", "at"], name="request_team_time"),
            models.Index(fields=["api_key", "at"], name="request_key_time"),
        ]

    def __str__(self) -> str:
        return f"{self.at:%Y-%m-%d %H:%M:%S} {self.model} {self.status}"


class UsageHour(models.Model):
    """Gateway usage of one UTC hour per pool, team and key: what spend shares read for whole hours.

    Summed from ``RequestLog`` by the hourly rollup run with the expressions the raw read uses
    (``fleet.costs.teams``), so a range read from these rows plus the raw log at its edges adds
    up to the very decimals the raw log alone gives. Only hours before the ``usage`` watermark
    are complete; the gateway pulls the watermark back when it logs a request for an earlier
    hour. Pools cascade and teams and keys are ``SET_NULL``, so deleting one drops its usage
    here as it drops from the log's reads. The unique constraint keeps NULLs distinct: rows
    that lose their team or key that way may then share an hour without failing the deletion
    (the read sums them).
    """

    hour = models.DateTimeField(help_text="Start of the UTC hour.")
    pool = models.ForeignKey("fleet.Pool", on_delete=models.CASCADE, related_name="+", db_index=False)
    team = models.ForeignKey("fleet.Team", on_delete=models.SET_NULL, null=True, related_name="+", db_index=False)
    api_key = models.ForeignKey("fleet.ApiKey", on_delete=models.SET_NULL, null=True, related_name="+", db_index=False)
    gpu_ms = models.DecimalField(
        max_digits=24, decimal_places=3, help_text="Sum of the requests' latencies, each as milliseconds to 3 places."
    )
    tokens = models.BigIntegerField(help_text="Prompt plus output tokens; a missing count is 0.")
    requests = models.PositiveIntegerField()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["hour", "pool", "team", "api_key"], name="usage_hour_unique"),
        ]

    def __str__(self) -> str:
        return f"pool {self.pool_id} team {self.team_id} key {self.api_key_id} at {self.hour:%Y-%m-%d %H:00}"
