"""A pool's latency over a window and its SLA attainment have one definition: the policy
windows, the SLA alerts, the rollups, the dashboard and the simulator read the same figure
from the same requests. Each test would fail if one of them computed its own again."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from agents.histograms import histogram_observe
from dashboard import selectors as pages
from fleet import selectors
from fleet.costs.alerts import alerts_evaluate
from fleet.models import Alert, AlertRule, InstanceSample, PoolMinute
from fleet.sim.engine import TTFT_BUCKETS
from fleet.sim.setup import setup_build
from fleet.sim.simulate import Simulation
from fleet.sim.traces import Trace, TraceRequest
from fleet.telemetry import rollups
from tests.factories import make_gpu, make_instance, make_node, make_pool
from tests.sim.test_simulate import autoscale_snapshots
from tests.sim.toy import TOY, sim_result

pytestmark = pytest.mark.django_db

NOW = datetime(2026, 11, 25, 12, 0, 40, tzinfo=UTC)
BOUNDS = [0.1, 0.25, 0.5, 1.0, 2.5]


def within(fast: int, slow: int) -> dict[str, Any]:
    """``fast`` requests under 0.1 s and ``slow`` ones in (0.5, 1] s."""
    return {"bounds": BOUNDS, "counts": [fast, fast, fast, fast + slow, fast + slow], "count": fast + slow}


def test_the_alert_and_the_dashboard_read_the_same_attainment_from_the_same_requests() -> None:
    """Both pools promise P95 TTFT <= 500 ms over the last 5 minutes.

    "met": instance A served 90 requests under 0.1 s and 10 in (0.5, 1] s (its own P95 is
    0.5 + 0.5 * 5/10 = 0.75 s, over the SLA); instance B 100 under 0.1 s. The pool's 200
    requests: 190 within 0.5 s, 0.95, exactly its target: met, no alert.
    "missed": one instance, 80 under 0.1 s and 20 in (0.5, 1] s: 0.80 within, P95 at rank 95
    of 100, 0.5 + 0.5 * 15/20 = 0.875 s.
    """
    node = make_node()
    met = make_pool("met", sla_metric="ttft", sla_percentile=95, sla_latency_ms=500)
    missed = make_pool("missed", sla_metric="ttft", sla_percentile=95, sla_latency_ms=500)
    a, b = make_instance(met, make_gpu(node, 0)), make_instance(met, make_gpu(node, 1))
    c = make_instance(missed, make_gpu(node, 2))
    at = NOW - timedelta(seconds=30)
    for instance, histogram, p95 in ((a, within(90, 10), 0.75), (b, within(100, 0), 0.095), (c, within(80, 20), 0.875)):
        # The agent sends its own P95 beside the buckets; neither the alert nor the dashboard may use it.
        InstanceSample.objects.create(instance=instance, at=at, state="ready", ttft_histogram=histogram, ttft_p95_s=p95)
    rollups.minutes_rollup(start=NOW.replace(second=0), end=NOW.replace(second=0) + timedelta(minutes=1))
    AlertRule.objects.create(name="sla", kind="sla_breach", window_s=300, email_to="ops@example.com")

    rows = pages.sla_attainment(time_range=pages.time_range_parse(params={"range": "1h"}, now=NOW))
    alerts_evaluate(now=NOW)

    assert {row["name"]: row["attainment"] for row in rows} == {
        "met": pytest.approx(0.95),
        "missed": pytest.approx(0.8),
    }
    alert = Alert.objects.get()
    assert (alert.key, alert.value) == ("pool:missed", "80.0%")
    assert "P95 time to first token 0.875 s" in alert.message


def test_rollups_and_policy_windows_read_the_same_p95_when_instances_report_other_bounds() -> None:
    """A busy instance reports bounds 0.1, 0.5, 1 s; an idle one, of another vLLM, 0.25, 1 s and no requests
    in three reports. The busy one's 10 requests decide: rank 9.5 in (0.5, 1] holding 4 of them,
    0.5 + 0.5 * 3.5/4 = 0.9375 s."""
    node = make_node()
    pool = make_pool(sla_metric="ttft", sla_percentile=95, sla_latency_ms=500)
    busy = make_instance(pool, make_gpu(node, 0), actual_state="ready")
    idle = make_instance(pool, make_gpu(node, 1), actual_state="ready")
    at = NOW - timedelta(seconds=30)
    InstanceSample.objects.create(
        instance=busy,
        at=at,
        state="ready",
        ttft_histogram={"bounds": [0.1, 0.5, 1.0], "counts": [2, 6, 10], "count": 10},
    )
    for back in (0, 5, 10):
        InstanceSample.objects.create(
            instance=idle,
            at=at - timedelta(seconds=back),
            state="ready",
            ttft_histogram={"bounds": [0.25, 1.0], "counts": [0, 0], "count": 0},
        )
    rollups.minutes_rollup(start=NOW.replace(second=0), end=NOW.replace(second=0) + timedelta(minutes=1))

    [view] = selectors.fleet_snapshot(now=NOW).pools

    assert PoolMinute.objects.get(pool=pool).ttft_p95_s == pytest.approx(0.9375)
    assert view.windows[-1].latency_ms == pytest.approx(937.5)


START = datetime(2026, 3, 2, 9, tzinfo=UTC)


def test_the_policy_window_reads_the_latency_the_simulator_reads_for_the_same_requests(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two 400-token prompts at once on one instance: first tokens after 0.41 s and 0.82 s (the
    second waits for the first's prefill). In vLLM's TTFT buckets they sit in (0.25, 0.5] and
    (0.75, 1]; the P95 at rank 1.9 of 2 reads 0.75 + 0.25 * 0.9 = 0.975 s, not the 0.82 s
    the slower request took: production sees the buckets, and so must the simulator."""
    engine = TOY
    setup = replace(setup_build(engine=engine, gpus=1, values={"pool": {"sla_percentile": 95}}), start_jitter=0.0)
    trace = Trace(
        name="hand",
        start=START,
        requests=tuple(TraceRequest(*r) for r in ((0.0, 400, 1), (0.0, 400, 1), (40.0, 100, 1))),
    )
    seen = autoscale_snapshots(monkeypatch)
    Simulation(trace=trace, setup=setup, label="policy").run()
    simulated = seen[0].pools[0].windows[-1].latency_ms  # the tick at 30 s: the window [-30 s, 30 s)

    pool = make_pool(sla_metric="ttft", sla_percentile=95, sla_latency_ms=500)
    instance = make_instance(pool, make_gpu(make_node(), 0), actual_state="ready")
    InstanceSample.objects.create(
        instance=instance,
        at=NOW - timedelta(seconds=10),
        state="ready",
        ttft_histogram=histogram_observe([0.41, 0.82], TTFT_BUCKETS),
    )
    [view] = selectors.fleet_snapshot(now=NOW).pools

    assert simulated == pytest.approx(975)
    assert view.windows[-1].latency_ms == pytest.approx(975)


def test_the_simulators_attainment_is_the_dashboards_for_the_same_requests() -> None:
    """First tokens after 0.11, 0.41 and 0.82 s against a 300 ms SLA. In vLLM's TTFT buckets
    0.11 s sits in (0.1, 0.25], 0.41 s in (0.25, 0.5]: 300 ms is a fifth into that bucket, so
    (1 + 1/5) / 3 = 0.4 within, as the dashboard reads a pool's buckets (not the 1/3 the raw
    values give)."""
    ttft_s = [0.11, 0.41, 0.82]
    result = sim_result(sla_ms=300.0, ttft_s=ttft_s)
    pool = make_pool(sla_metric="ttft", sla_percentile=95, sla_latency_ms=300)
    PoolMinute.objects.create(
        pool=pool,
        bucket=NOW.replace(second=0),
        samples=1,
        instances=1,
        requests=3,
        prompt_tokens=0,
        generation_tokens=0,
        ttft_histogram=histogram_observe(ttft_s, TTFT_BUCKETS),
    )
    [row] = pages.sla_attainment(time_range=pages.time_range_parse(params={"range": "1h"}, now=NOW))

    assert result.attainment == pytest.approx(0.4)
    assert row["attainment"] == pytest.approx(0.4)
