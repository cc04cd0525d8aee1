"""The dashboard's SLA attainment of a pool whose first-token bound grows with the prompt: judged request by
request from the gateway's request log, and shown on the overview page."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from dashboard import figures
from dashboard import selectors as pages
from fleet.decide import services
from tests.factories import make_pool, make_request_record

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


def log_three_requests(pool_id: int, at: datetime) -> None:
    """Under 500 ms + 20 ms per 1k prompt tokens, through the gateway's own write path:

    * 30,000 tokens, first token in 1,050 ms: bound 500 + 20 x 30 = 1,100 ms, within, only because of the
      per-token term (the flat 500 ms would miss it);
    * 1,000 tokens in 530 ms: bound 520 ms, over;
    * 100 tokens in 200 ms: bound 502 ms, within;
    * and a non-streamed answer, which has no time to first token and is not judged.
    """
    when = at.timestamp()
    services.request_logs_write(
        records=[
            make_request_record(pool_id=pool_id, at=when, stream=True, prompt_tokens=30_000, ttft_ms=1050.0),
            make_request_record(pool_id=pool_id, at=when + 1, stream=True, prompt_tokens=1_000, ttft_ms=530.0),
            make_request_record(pool_id=pool_id, at=when + 2, stream=True, prompt_tokens=100, ttft_ms=200.0),
            make_request_record(pool_id=pool_id, at=when + 3, prompt_tokens=50_000, ttft_ms=None),
        ]
    )


@pytest.mark.django_db
def test_attainment_of_a_growing_bound_is_read_from_the_request_log() -> None:
    """2 of the 3 judged requests within their own bound: 2/3. The same log under a flat 500 ms pool is not
    read (its attainment comes from histograms, and it has none): None. Outside the range: nothing judged."""
    growing = make_pool("chat-long", sla_percentile=95, sla_latency_ms=500, sla_ms_per_1k_prompt_tokens=20)
    flat = make_pool("chat-flat", sla_percentile=95, sla_latency_ms=500)
    log_three_requests(growing.pk, NOW - timedelta(minutes=10))
    log_three_requests(flat.pk, NOW - timedelta(minutes=10))
    log_three_requests(growing.pk, NOW - timedelta(hours=2))
    rows = {
        row["name"]: row
        for row in pages.sla_attainment(time_range=pages.time_range_parse(params={"range": "1h"}, now=NOW))
    }
    assert rows["chat-long"]["attainment"] == pytest.approx(2 / 3)
    assert rows["chat-long"]["requests"] == 3
    assert rows["chat-long"]["sla"] == "P95 time to first token <= 500 ms + 20 ms per 1k prompt tokens"
    assert (rows["chat-flat"]["attainment"], rows["chat-flat"]["requests"]) == (None, 0)


@pytest.mark.django_db
def test_the_overview_shows_the_growing_bound_and_its_attainment(admin_client: Client) -> None:
    """The overview's attainment chart carries 2/3 = 66.7 % for the pool, against its P95 target, and the
    pools table its SLA label."""
    pool = make_pool("chat-long", sla_percentile=95, sla_latency_ms=500, sla_ms_per_1k_prompt_tokens=20)
    log_three_requests(pool.pk, timezone.now() - timedelta(minutes=10))
    page = admin_client.get(reverse("dashboard:index"), {"range": "1h"}).content.decode()
    assert "P95 time to first token &lt;= 500 ms + 20 ms per 1k prompt tokens" in page
    assert "66.66666666666" in page  # the bar: 2/3 x 100


def test_the_latency_chart_names_its_line_the_floor_of_a_growing_bound() -> None:
    """The percentiles are of all prompts, long and short, so the line at 500 ms is only an empty prompt's
    bound: its name says so; a flat pool's line keeps its name."""
    at = [NOW - timedelta(minutes=2), NOW - timedelta(minutes=1)]
    history = {"at": at, "p50": [100.0, 120.0], "p95": [900.0, 1000.0], "p99": [1100.0, 1200.0]}
    span = (NOW - timedelta(hours=1), NOW)
    label = "P95 time to first token <= 500 ms + 20 ms per 1k prompt tokens"
    common = dict(history=history, sla_ms=500, sla_label=label, metric="time to first token", span=span)
    growing = figures.pool_latency(**common, sla_per_1k_prompt_tokens=20.0)
    line = growing["data"][-1]
    assert (line["name"], line["y"], line["hovertext"]) == (
        "SLA floor 500 ms (+ 20 ms per 1k prompt tokens)",
        [500, 500],
        label,
    )
    assert figures.pool_latency(**common)["data"][-1]["name"] == "SLA 500 ms"
