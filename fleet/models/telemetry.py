"""Telemetry: raw samples the agents report, and the rollups every chart reads.

Raw samples are append-only and written in bulk (one INSERT per report and table). They
are read two ways: one GPU or instance over a time range (the btree on ``(gpu, at DESC)``
answers that, and "latest per GPU" as one index probe per GPU), and everything in a time
window (rollups, retention). For the second, PostgreSQL gets a BRIN index on ``at``: rows
arrive roughly in time order, so a BRIN of a few pages replaces a btree that would grow as
large as the table and cost a write on every insert. SQLite has no BRIN and gets a btree.

Rollups hold per-minute and per-hour aggregates. Means are stored with the number of
samples behind them so an hour is the sample-weighted mean of its minutes; latency is
stored as merged histogram buckets, and its percentiles are computed from those buckets,
never averaged. A minute or hour without samples has no row: a host that was offline
shows a gap, not zeros.
"""

from __future__ import annotations

from typing import Any

from django.db import models
from django.db.backends.base.schema import BaseDatabaseSchemaEditor


class TimeIndex(models.Index):
    """A BRIN index on PostgreSQL, a btree elsewhere: for append-only time columns.

    ``pages_per_range`` 32 keeps each summary to about 32 pages of rows (a few seconds of
    a large fleet's reports), tight enough for minute windows.
    """

    def create_sql(self, model: Any, schema_editor: BaseDatabaseSchemaEditor, using: str = "", **kwargs: Any) -> Any:
        if schema_editor.connection.vendor == "postgresql":
            statement = super().create_sql(model, schema_editor, using=" USING brin", **kwargs)
            statement.template = statement.template.replace("%(extra)s", " WITH (pages_per_range = 32)%(extra)s")
            return statement
        return super().create_sql(model, schema_editor, using=using, **kwargs)


class GpuSample(models.Model):
    id = models.BigAutoField(primary_key=True)
    gpu = models.ForeignKey("fleet.Gpu", on_delete=models.PROTECT, related_name="samples", db_index=False)
    at = models.DateTimeField()
    utilization_gpu_pct = models.FloatField(null=True, help_text="NVML duty cycle.")
    sm_activity_pct = models.FloatField(null=True, help_text="Share of SMs busy (GPM), where supported.")
    memory_used_bytes = models.BigIntegerField(null=True)
    memory_total_bytes = models.BigIntegerField(null=True)
    power_watts = models.FloatField(null=True)
    power_limit_watts = models.FloatField(null=True)
    energy_joules = models.FloatField(null=True)
    temperature_c = models.FloatField(null=True)
    sm_clock_mhz = models.IntegerField(null=True)
    mem_clock_mhz = models.IntegerField(null=True)
    pstate = models.SmallIntegerField(null=True)
    throttle_reasons = models.JSONField(default=list)
    ecc_uncorrected = models.BigIntegerField(null=True)

    class Meta:
        indexes = [
            models.Index(fields=["gpu", "-at"], name="gpu_sample_gpu_time"),
            TimeIndex(fields=["at"], name="gpu_sample_time"),
        ]

    def __str__(self) -> str:
        return f"gpu {self.gpu_id} at {self.at}"


class InstanceSample(models.Model):
    id = models.BigAutoField(primary_key=True)
    instance = models.ForeignKey("fleet.Instance", on_delete=models.CASCADE, related_name="samples", db_index=False)
    at = models.DateTimeField()
    state = models.CharField(max_length=16)
    requests_waiting = models.FloatField(null=True)
    requests_running = models.FloatField(null=True)
    kv_cache_usage = models.FloatField(null=True)
    request_rate = models.FloatField(null=True)
    prompt_tokens_rate = models.FloatField(null=True)
    generation_tokens_rate = models.FloatField(null=True)
    ttft_p50_s = models.FloatField(null=True)
    ttft_p95_s = models.FloatField(null=True)
    e2e_p50_s = models.FloatField(null=True)
    e2e_p95_s = models.FloatField(null=True)
    ttft_histogram = models.JSONField(null=True, help_text="Bucket bounds and counts in the window, for rollups.")
    e2e_histogram = models.JSONField(null=True)

    class Meta:
        indexes = [
            models.Index(fields=["instance", "-at"], name="instance_sample_time"),
            TimeIndex(fields=["at"], name="instance_sample_at"),
        ]

    def __str__(self) -> str:
        return f"instance {self.instance_id} at {self.at}"


class GpuRollup(models.Model):
    """One GPU over one bucket (a minute or an hour); the abstract shape of both tables."""

    gpu = models.ForeignKey("fleet.Gpu", on_delete=models.PROTECT, related_name="+", db_index=False)
    bucket = models.DateTimeField(help_text="Start of the minute or hour.")
    samples = models.PositiveIntegerField(help_text="Raw samples behind the means; the weight of this row.")
    utilization_mean = models.FloatField(null=True, help_text="Duty cycle, 0-100.")
    utilization_max = models.FloatField(null=True)
    sm_activity_mean = models.FloatField(null=True, help_text="SM activity, 0-100.")
    sm_activity_max = models.FloatField(null=True)
    memory_used_mean = models.FloatField(null=True, help_text="Bytes.")
    memory_used_max = models.BigIntegerField(null=True)
    memory_total = models.BigIntegerField(null=True)
    power_mean = models.FloatField(null=True, help_text="Watts.")
    power_max = models.FloatField(null=True)
    temperature_max = models.FloatField(null=True)
    energy_joules = models.FloatField(
        null=True, help_text="Energy counter increase attributed to this bucket; gaps and resets add nothing."
    )

    class Meta:
        abstract = True

    def __str__(self) -> str:
        return f"gpu {self.gpu_id} from {self.bucket}"


class GpuMinute(GpuRollup):
    class Meta:
        constraints = [models.UniqueConstraint(fields=["gpu", "bucket"], name="gpu_minute_unique")]
        indexes = [TimeIndex(fields=["bucket"], name="gpu_minute_bucket")]


class GpuHour(GpuRollup):
    class Meta:
        constraints = [models.UniqueConstraint(fields=["gpu", "bucket"], name="gpu_hour_unique")]
        indexes = [models.Index(fields=["bucket"], name="gpu_hour_bucket")]


class GpuDay(models.Model):
    """One GPU over one UTC day, summed from its hour rollups: what spend over weeks and months reads.

    A month of a thousand GPUs is 30,000 of these, where summing hour rows per day meant
    scanning 720,000. Only complete days are written (the ``day`` watermark).
    """

    gpu = models.ForeignKey("fleet.Gpu", on_delete=models.PROTECT, related_name="+", db_index=False)
    bucket = models.DateTimeField(help_text="Start of the day (UTC).")
    first_hour = models.DateTimeField(help_text="The first hour of the day in which the GPU reported.")
    hours = models.PositiveSmallIntegerField(help_text="Hours of the day in which the GPU reported.")
    samples = models.PositiveIntegerField(help_text="Raw samples behind the hours.")
    utilization_mean = models.FloatField(null=True, help_text="Mean of the hours' duty cycles, 0-100.")

    class Meta:
        constraints = [models.UniqueConstraint(fields=["gpu", "bucket"], name="gpu_day_unique")]
        indexes = [models.Index(fields=["bucket"], name="gpu_day_bucket")]

    def __str__(self) -> str:
        return f"gpu {self.gpu_id} on {self.bucket:%Y-%m-%d}"


class PoolRollup(models.Model):
    """One pool's instances over one bucket: queue, KV cache, traffic and merged latency buckets.

    Histograms are stored as ``{"bounds": [...], "counts": [...], "count": n}``: cumulative
    counts at the finite bounds and the total, the agent protocol's shape, summed over
    every instance and report in the bucket. Percentiles are derived from them.
    """

    pool = models.ForeignKey("fleet.Pool", on_delete=models.CASCADE, related_name="+", db_index=False)
    bucket = models.DateTimeField(help_text="Start of the minute or hour.")
    samples = models.PositiveIntegerField()
    instances = models.PositiveIntegerField(help_text="Distinct instances that reported in the bucket.")
    requests_waiting_mean = models.FloatField(null=True)
    requests_waiting_max = models.FloatField(null=True)
    requests_running_mean = models.FloatField(null=True)
    requests_running_max = models.FloatField(null=True)
    kv_cache_usage_mean = models.FloatField(null=True, help_text="0-1.")
    requests = models.FloatField(help_text="Requests finished (observations in the end-to-end histogram).")
    prompt_tokens = models.FloatField()
    generation_tokens = models.FloatField()
    ttft_histogram = models.JSONField(null=True)
    e2e_histogram = models.JSONField(null=True)
    ttft_p50_s = models.FloatField(null=True)
    ttft_p95_s = models.FloatField(null=True)
    ttft_p99_s = models.FloatField(null=True)
    e2e_p50_s = models.FloatField(null=True)
    e2e_p95_s = models.FloatField(null=True)
    e2e_p99_s = models.FloatField(null=True)

    class Meta:
        abstract = True

    def __str__(self) -> str:
        return f"pool {self.pool_id} from {self.bucket}"


class PoolMinute(PoolRollup):
    class Meta:
        constraints = [models.UniqueConstraint(fields=["pool", "bucket"], name="pool_minute_unique")]
        indexes = [models.Index(fields=["bucket"], name="pool_minute_bucket")]


class PoolHour(PoolRollup):
    class Meta:
        constraints = [models.UniqueConstraint(fields=["pool", "bucket"], name="pool_hour_unique")]
        indexes = [models.Index(fields=["bucket"], name="pool_hour_bucket")]


class RollupWatermark(models.Model):
    """How far a rollup is complete; ingest pulls it back when late reports land before it."""

    name = models.CharField(max_length=16, primary_key=True)
    done_until = models.DateTimeField(help_text="Every bucket starting before this is computed.")

    def __str__(self) -> str:
        return f"{self.name} done until {self.done_until}"
