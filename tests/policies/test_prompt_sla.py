"""A time-to-first-token bound that grows with the prompt: the one function that defines it, autoscale's
breach judged request by request, and production's windows read from the gateway's request log."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from agents.histograms import requests_attainment, ttft_bound_ms
from fleet import selectors
from fleet.decide import services
from fleet.policies.autoscale import autoscale
from fleet.policies.snapshot import PoolWindow
from fleet.policies.windows import over_bound_share
from tests.factories import make_gpu, make_instance, make_node, make_pool, make_request_record
from tests.policies.builders import NOW, ago, config, gpu, instance, pool, snapshot


@pytest.mark.parametrize(
    ("flat", "per_1k", "tokens", "expected"),
    [
        (500, 20, 30_000, 1_100),  # 500 + 20 x 30
        (500, 20, 0, 500),
        (500, 0, 30_000, 500),  # no per-token term: today's flat bound
        (500, 1_000, 4_000, 4_500),  # 500 + 1,000 x 4
        (300, 2.5, 1_000, 302.5),
    ],
)
def test_the_bound_grows_by_the_term_per_1k_prompt_tokens(
    flat: int, per_1k: float, tokens: int, expected: float
) -> None:
    assert ttft_bound_ms(flat, per_1k, tokens) == pytest.approx(expected)


def test_requests_are_judged_each_against_its_own_bound() -> None:
    """500 ms + 20 ms per 1k: 30,000 tokens in 1,050 ms (bound 1,100: within only through the term),
    1,000 tokens in 530 ms (bound 520: over), 100 tokens in 200 ms (bound 502: within); a request exactly
    at its bound (1,000 tokens in 520 ms) counts within. 3/4 within, 1/4 over; nothing judged: None."""
    judged = [(1050.0, 30_000), (530.0, 1_000), (200.0, 100), (520.0, 1_000)]
    assert requests_attainment(judged, 500, 20) == pytest.approx(0.75)
    assert over_bound_share(judged, 500, 20) == pytest.approx(0.25)
    assert requests_attainment(judged, 500, 0) == pytest.approx(0.25)  # flat: only the 200 ms one
    assert requests_attainment([], 500, 20) is None and over_bound_share([], 500, 20) is None


SETTINGS = dict(breach_windows=2, scale_in_windows=2, scale_out_cooldown_s=0, scale_in_cooldown_s=0)


def windows(share: float | None, latency_ms: float | None = None, kv_cache: float = 0.2) -> tuple[PoolWindow, ...]:
    """Two one-minute windows with load ``kv_cache`` (0.2: under the band, and 0.4 on one of two instances,
    still inside it), the pool's flat percentile ``latency_ms`` and ``share`` of requests over their bound."""
    return tuple(
        PoolWindow(
            start=ago(60 * back),
            end=ago(60 * (back - 1)),
            kv_cache=kv_cache,
            queue=0,
            latency_ms=latency_ms,
            over_bound_share=share,
        )
        for back in (2, 1)
    )


def decide(pool_windows: tuple[PoolWindow, ...], **pool_kwargs: Any) -> list[str]:
    snap = snapshot(
        pools=[pool(windows=pool_windows, gpu_memory_utilization=0.3, **pool_kwargs)],
        instances=[instance(i, last_request_at=ago(10 * i), gpu_id=1) for i in (1, 2)],
        gpus=[gpu(1), gpu(2)],
    )
    return [a.action for a in autoscale(snap, config("autoscale", **SETTINGS), NOW)]


GROWING = dict(sla_percentile=95, sla_latency_ms=500, sla_ms_per_1k_prompt_tokens=20.0)


@pytest.mark.parametrize(
    ("case", "pool_windows", "pool_kwargs", "expected"),
    [
        # P95: the SLA lets 5 % of requests exceed their bound.
        ("6 % over their bound breaches a P95 SLA", windows(0.06, kv_cache=0.6), GROWING, ["scale_out"]),
        ("exactly 5 % over is no breach", windows(0.05, kv_cache=0.6), GROWING, []),
        # A P90 SLA lets 10 % exceed: 6 % is fine.
        ("6 % over is within a P90 SLA", windows(0.06, kv_cache=0.6), {**GROWING, "sla_percentile": 90}, []),
        # The flat percentile (1,100 ms > 500 ms) is long prompts, not a breach: each is judged by its bound.
        ("a flat P95 over 500 ms is no breach", windows(0.01, 1100, kv_cache=0.6), GROWING, []),
        ("nothing judged, no latency breach", windows(None, 1100, kv_cache=0.6), GROWING, []),
        # No per-token term: the flat path as before, the share unread.
        ("flat pool: P95 620 ms > 500 ms breaches", windows(0.0, 620, kv_cache=0.6), {}, ["scale_out"]),
        ("flat pool: the share is not read", windows(0.5, 380, kv_cache=0.6), {}, []),
        # The term bounds time to first token: on an end-to-end SLA the flat path applies.
        (
            "an end-to-end SLA keeps the flat path",
            windows(0.5, 380, kv_cache=0.6),
            {**GROWING, "sla_metric": "e2e"},
            [],
        ),
        # Scale-in: the share at most scale_in_latency_ratio (0.7) x the 5 % allowed = 3.5 %.
        ("3 % over and a light load scales in", windows(0.03, 1100), GROWING, ["scale_in"]),
        ("4 % over holds the instance", windows(0.04, 1100), GROWING, []),
        ("nothing judged and a light load scales in", windows(None, 1100), GROWING, ["scale_in"]),
    ],
    ids=lambda value: value if isinstance(value, str) else "",
)
def test_autoscale_judges_a_growing_bound_by_the_share_of_requests_over_it(
    case: str, pool_windows: tuple[PoolWindow, ...], pool_kwargs: dict[str, Any], expected: list[str]
) -> None:
    assert decide(pool_windows, **pool_kwargs) == expected


@pytest.mark.django_db
def test_production_windows_judge_the_gateways_logged_requests() -> None:
    """A pool with 500 ms + 20 ms per 1k prompt tokens. Logged by the gateway's own write path, each placed
    in the window its first token came in (received at + TTFT):

    * last window (60-0 s ago): 30,000 tokens received 40 s ago, first token in 1,050 ms (bound 1,100:
      within); 1,000 tokens received 30 s ago in 530 ms (bound 520: over); a non-streamed answer (no TTFT,
      not judged). 1 of 2 over: 0.5.
    * the window before (120-60 s ago): 100 tokens received 90 s ago in 200 ms (bound 502): 0.0 over.
    * a request received 59.5 s ago whose first token took 1,000 ms counts in the last window, not the one
      it was received in: 20,000 tokens, bound 900 ms, over. Last window: 2 of 3 over.

    A flat pool with the same kind of log carries no share: its windows are judged by histograms.
    """
    node = make_node()
    growing = make_pool("growing", sla_percentile=95, sla_latency_ms=500, sla_ms_per_1k_prompt_tokens=20)
    flat = make_pool("flat", sla_percentile=95, sla_latency_ms=500)
    for index, row in enumerate((growing, flat)):
        make_instance(row, make_gpu(node, index), actual_state="ready")
    now = NOW.timestamp()
    services.request_logs_write(
        records=[
            make_request_record(pool_id=growing.pk, at=now - 40, stream=True, prompt_tokens=30_000, ttft_ms=1050.0),
            make_request_record(pool_id=growing.pk, at=now - 30, stream=True, prompt_tokens=1_000, ttft_ms=530.0),
            make_request_record(pool_id=growing.pk, at=now - 20, prompt_tokens=50_000, ttft_ms=None),
            make_request_record(pool_id=growing.pk, at=now - 90, stream=True, prompt_tokens=100, ttft_ms=200.0),
            make_request_record(pool_id=growing.pk, at=now - 59.5, stream=True, prompt_tokens=20_000, ttft_ms=1000.0),
            make_request_record(pool_id=flat.pk, at=now - 30, stream=True, prompt_tokens=1_000, ttft_ms=530.0),
        ]
    )
    views = {view.name: view for view in selectors.fleet_snapshot(now=NOW).pools}
    assert views["growing"].sla_ms_per_1k_prompt_tokens == 20
    assert [w.over_bound_share for w in views["growing"].windows[-2:]] == [pytest.approx(0.0), pytest.approx(2 / 3)]
    assert views["growing"].windows[0].over_bound_share is None
    assert all(w.over_bound_share is None for w in views["flat"].windows)
    assert views["growing"].windows[-1].end - views["growing"].windows[-1].start == timedelta(seconds=60)
