"""Samples the agents report: append-only, written in bulk, one row per GPU or instance per report."""

from __future__ import annotations

from django.db import models


class GpuSample(models.Model):
    id = models.BigAutoField(primary_key=True)
    gpu = models.ForeignKey("fleet.Gpu", on_delete=models.CASCADE, related_name="samples", db_index=False)
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
        indexes = [models.Index(fields=["gpu", "-at"], name="gpu_sample_gpu_time")]

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
        indexes = [models.Index(fields=["instance", "-at"], name="instance_sample_time")]

    def __str__(self) -> str:
        return f"instance {self.instance_id} at {self.at}"
