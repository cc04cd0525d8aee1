"""``/metrics``: the fleet's latest state in Prometheus exposition format.

One custom collector, registered once in a registry of its own, reads the latest state
from the database at each scrape (through ``fleet.selectors``), so the exposition never
holds series for GPUs or instances that are gone, and nothing grows between scrapes.
Labels are bounded by the fleet's size: node, GPU index/UUID/model, pool, instance id,
state, currency; nothing per request.

Access: a scrape is let in when it carries ``Authorization: Bearer <METRICS_TOKEN>`` (if
that setting is set) or comes from an address in ``METRICS_ALLOWED_IPS`` (addresses or
networks; loopback by default). Behind a reverse proxy, list it in ``TRUSTED_PROXIES``: the
address is then the client's as the proxy saw it (``fleet.project.client_address``), and a
forwarded-for header from any other peer is ignored.
"""

from __future__ import annotations

import hmac
import ipaddress
import time
from collections.abc import Iterator
from datetime import timedelta
from decimal import Decimal

from django.conf import settings
from django.db.models import Count
from django.http import HttpRequest, HttpResponse
from django.utils import timezone
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from fleet import selectors
from fleet.costs.selectors import spend_metric_rows
from fleet.models import Instance, Node
from fleet.policies.windows import REPORT_INTERVAL_S
from fleet.project.client_address import client_address

NODE_UP_WITHIN = timedelta(seconds=3 * REPORT_INTERVAL_S)
GPU_LABELS = ["node", "gpu", "uuid", "model"]


class FleetCollector(Collector):
    """Reads the fleet's latest state at each scrape."""

    def collect(self) -> Iterator[Metric]:
        yield from self._gpus()
        yield from self._nodes()
        yield from self._instances()
        yield from self._spend()

    def _gpus(self) -> Iterator[Metric]:
        families: dict[str, GaugeMetricFamily | CounterMetricFamily] = {
            "utilization_gpu_pct": GaugeMetricFamily(
                "gpufleet_gpu_utilization_ratio", "GPU duty cycle (NVML utilization), 0-1.", labels=GPU_LABELS
            ),
            "sm_activity_pct": GaugeMetricFamily(
                "gpufleet_gpu_sm_activity_ratio", "Share of streaming multiprocessors busy, 0-1.", labels=GPU_LABELS
            ),
            "memory_used_bytes": GaugeMetricFamily(
                "gpufleet_gpu_memory_used_bytes", "GPU memory in use.", labels=GPU_LABELS
            ),
            "memory_total_bytes": GaugeMetricFamily(
                "gpufleet_gpu_memory_total_bytes", "GPU memory in all.", labels=GPU_LABELS
            ),
            "power_watts": GaugeMetricFamily("gpufleet_gpu_power_watts", "GPU power draw.", labels=GPU_LABELS),
            "temperature_c": GaugeMetricFamily(
                "gpufleet_gpu_temperature_celsius", "GPU core temperature.", labels=GPU_LABELS
            ),
            "energy_joules": CounterMetricFamily(
                "gpufleet_gpu_energy_joules", "Energy the GPU consumed since its driver loaded.", labels=GPU_LABELS
            ),
        }
        scale = {"utilization_gpu_pct": 0.01, "sm_activity_pct": 0.01}
        for row in selectors.gpus_latest():
            labels = [row["node"], str(row["index"]), row["uuid"], row["model"]]
            for field, family in families.items():
                if row[field] is not None:
                    family.add_metric(labels, float(row[field]) * scale.get(field, 1.0))
        yield from families.values()

    def _nodes(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("gpufleet_node_up", "1 if the node reported recently, else 0.", labels=["node"])
        seen = GaugeMetricFamily(
            "gpufleet_node_last_seen_timestamp_seconds", "When the node last reported (Unix time).", labels=["node"]
        )
        recent = timezone.now() - NODE_UP_WITHIN
        for name, last_seen in Node.objects.filter(decommissioned_at__isnull=True).values_list("name", "last_seen_at"):
            up.add_metric([name], 1.0 if last_seen is not None and last_seen >= recent else 0.0)
            if last_seen is not None:
                seen.add_metric([name], last_seen.timestamp())
        yield up
        yield seen

    def _instances(self) -> Iterator[Metric]:
        by_state = GaugeMetricFamily(
            "gpufleet_pool_instances", "Instances of the pool by actual state.", labels=["pool", "state"]
        )
        for pool, state, count in (
            Instance.objects.values_list("pool__name", "actual_state").annotate(n=Count("pk")).order_by()
        ):
            by_state.add_metric([pool, state], float(count))
        labels = ["pool", "instance"]
        waiting = GaugeMetricFamily("gpufleet_instance_requests_waiting", "Requests queued.", labels=labels)
        running = GaugeMetricFamily("gpufleet_instance_requests_running", "Requests being served.", labels=labels)
        p95 = GaugeMetricFamily(
            "gpufleet_instance_latency_p95_seconds",
            "95th percentile latency over the last report window.",
            labels=[*labels, "metric"],
        )
        for row in selectors.instances_latest():
            ids = [row["pool"], str(row["instance_id"])]
            if row["requests_waiting"] is not None:
                waiting.add_metric(ids, row["requests_waiting"])
            if row["requests_running"] is not None:
                running.add_metric(ids, row["requests_running"])
            for metric in ("ttft", "e2e"):
                if row[f"{metric}_p95_s"] is not None:
                    p95.add_metric([*ids, metric], row[f"{metric}_p95_s"])
        yield from (by_state, waiting, running, p95)

    def _spend(self) -> Iterator[Metric]:
        """Month-to-date spend per pool and savings, from the cost module's arithmetic (Decimal)."""
        spend = CounterMetricFamily(
            "gpufleet_spend",
            'GPU spend this billing month in currency units; pool="" is unallocated capacity.',
            labels=["currency", "pool"],
        )
        savings = CounterMetricFamily(
            "gpufleet_savings",
            "Saved this billing month against every GPU holding an always-on instance, in currency units.",
            labels=["currency"],
        )
        for labels, value in spend_rows_cached():
            if labels["__name__"] == "gpufleet_spend_total":
                spend.add_metric([labels["currency"], labels["pool"]], float(value))
            else:
                savings.add_metric([labels["currency"]], float(value))
        yield from (spend, savings)


registry = CollectorRegistry(auto_describe=False)
registry.register(FleetCollector())


def _allowed(request: HttpRequest) -> bool:
    token = settings.METRICS_TOKEN
    if token:
        scheme, _, given = request.META.get("HTTP_AUTHORIZATION", "").partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode()):
            return True
    address = client_address(request)
    if address is None:
        return False
    return any(address in ipaddress.ip_network(allowed, strict=False) for allowed in settings.METRICS_ALLOWED_IPS)


def metrics(request: HttpRequest) -> HttpResponse:
    """The exposition, or 403 for a scraper with neither the token nor an allowed address."""
    if not _allowed(request):
        return HttpResponse("forbidden: send the metrics token or scrape from an allowed address\n", status=403)
    return HttpResponse(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)


SPEND_CACHE_S = 30.0
_spend_cache: tuple[float, list[tuple[dict[str, str], Decimal]]] | None = None


def spend_rows_cached() -> list[tuple[dict[str, str], Decimal]]:
    """The spend rows, recomputed at most every SPEND_CACHE_S: they are computed from history."""
    global _spend_cache
    now = time.monotonic()
    if _spend_cache is None or now - _spend_cache[0] > SPEND_CACHE_S:
        _spend_cache = (now, spend_metric_rows())
    return _spend_cache[1]
