"""SLA alerts judge a pool whose first-token bound grows with the prompt as the dashboard does: each request
from the gateway's request log against its own bound, not the histograms against the flat latency."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from fleet.costs.alerts import alerts_evaluate
from fleet.decide import services
from fleet.models import Alert, InstanceSample
from tests.costs.test_alerts import eager_tasks, rule  # noqa: F401 (eager_tasks: the autouse fixture)
from tests.factories import make_instance, make_pool, make_request_record

pytestmark = pytest.mark.django_db


def test_a_long_prompt_within_its_own_bound_fires_nothing_and_requests_over_theirs_do() -> None:
    """P95 time to first token <= 500 ms + 20 ms per 1k prompt tokens, a 60 s window.

    First only a 30,000-token prompt whose first token took 1,050 ms (bound 1,100 ms: within), while the
    instance's TTFT histogram has its one request over 500 ms: the flat reading would fire at 0 %, the
    request log says 1 of 1 within, so nothing fires. Then a 1,000-token prompt in 530 ms (bound 520: over)
    and a 100-token one in 200 ms (bound 502: within): 2 of 3 within, 66.7 % < 95 %: it fires.
    """
    pool = make_pool(sla_metric="ttft", sla_percentile=95, sla_latency_ms=500, sla_ms_per_1k_prompt_tokens=20)
    instance = make_instance(pool)
    now = timezone.now()
    slow = {"bounds": [0.5, 2.0], "counts": [0, 1], "count": 1}
    InstanceSample.objects.create(instance=instance, at=now - timedelta(seconds=30), state="ready", ttft_histogram=slow)
    at = (now - timedelta(seconds=30)).timestamp()
    record = dict(pool_id=pool.pk, stream=True)
    services.request_logs_write(records=[make_request_record(at=at, prompt_tokens=30_000, ttft_ms=1050.0, **record)])
    rule(name="sla", kind="sla_breach", window_s=60, email_to="ops@example.com")
    alerts_evaluate(now=now)
    assert not Alert.objects.exists()
    services.request_logs_write(
        records=[
            make_request_record(at=at + 1, prompt_tokens=1_000, ttft_ms=530.0, **record),
            make_request_record(at=at + 2, prompt_tokens=100, ttft_ms=200.0, **record),
        ]
    )
    alerts_evaluate(now=now)
    alert = Alert.objects.get()
    assert (alert.key, alert.value, alert.state) == (f"pool:{pool.name}", "66.7%", "firing")
    assert "within their own first-token bound" in alert.message
    assert "500 ms + 20 ms per 1k prompt tokens" in alert.message
