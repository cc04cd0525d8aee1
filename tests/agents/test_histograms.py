"""Histogram arithmetic, the one definition every reader of latency uses: quantiles as
Prometheus reads them, the share within a limit, merging, counting observations."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agents.histograms import (
    attainment,
    buckets_merge,
    histogram_observe,
    histogram_quantile,
    histogram_share_within,
    histograms_merge,
    pool_latency,
)

INF = math.inf
QUANTILE_BOUNDS = (0.1, 0.5, 1.0, INF)


@pytest.mark.parametrize(
    ("counts", "q", "expected"),
    [
        ((10.0, 30.0, 40.0, 40.0), 0.0, 0.0),  # rank 0: the bottom of (0, 0.1]
        ((10.0, 30.0, 40.0, 40.0), 0.25, 0.1),  # rank 10 fills (0, 0.1] exactly
        ((10.0, 30.0, 40.0, 40.0), 0.5, 0.3),  # rank 20 in (0.1, 0.5]: 0.1 + 0.4 * 10/20
        ((10.0, 30.0, 40.0, 40.0), 0.75, 0.5),  # rank 30 fills (0.1, 0.5] exactly
        ((10.0, 30.0, 40.0, 40.0), 0.9, 0.8),  # rank 36 in (0.5, 1]: 0.5 + 0.5 * 6/10
        ((10.0, 30.0, 40.0, 40.0), 1.0, 1.0),  # rank 40 fills (0.5, 1]
        ((10.0, 30.0, 40.0, 50.0), 0.9, 1.0),  # rank 45 in +Inf: the highest finite bound
        ((0.0, 0.0, 8.0, 8.0), 0.5, 0.75),  # rank 4 in (0.5, 1] holding all 8: 0.5 + 0.5 * 4/8
        ((0.0, 0.0, 8.0, 8.0), 0.0, 0.0),  # rank 0 in the empty (0, 0.1]: its lower bound, as Prometheus
        # a torn read (8 after 10) is flattened to 10, as Prometheus does; then
        # rank 20 in (0.5, 1] (10 below, 30 inside): 0.5 + 0.5 * 10/30
        ((10.0, 8.0, 40.0, 40.0), 0.5, 0.5 + 0.5 * 10 / 30),
    ],
)
def test_histogram_quantile_known_values(counts: tuple[float, ...], q: float, expected: float) -> None:
    assert histogram_quantile(q, QUANTILE_BOUNDS, counts) == pytest.approx(expected)


def test_histogram_quantile_edges() -> None:
    assert histogram_quantile(0.5, QUANTILE_BOUNDS, (0.0, 0.0, 0.0, 0.0)) is None
    assert histogram_quantile(0.1, (-1.0, 0.0, INF), (5.0, 9.0, 10.0)) == -1.0  # non-positive first bound
    with pytest.raises(ValueError, match="quantile"):
        histogram_quantile(1.5, QUANTILE_BOUNDS, (1.0, 1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="Inf"):
        histogram_quantile(0.5, (0.1, 0.5), (1.0, 2.0))
    with pytest.raises(ValueError, match="matching"):
        histogram_quantile(0.5, QUANTILE_BOUNDS, (1.0, 2.0))


@pytest.mark.parametrize(
    ("limit", "expected"),
    [
        (0.05, 5 / 40),  # half of (0, 0.1], which holds 10: 5 of 40
        (0.1, 10 / 40),
        (0.3, 20 / 40),  # 10 below, half of (0.1, 0.5]'s 20 inside
        (1.0, 40 / 50),  # the 10 in +Inf are over any finite limit
        (5.0, 40 / 50),
        (-1.0, 0.0),
        (INF, 1.0),
    ],
)
def test_share_within_a_limit_known_values(limit: float, expected: float) -> None:
    counts = (10.0, 30.0, 40.0, 40.0) if limit < 1.0 else (10.0, 30.0, 40.0, 50.0)
    assert histogram_share_within(limit, QUANTILE_BOUNDS, counts) == pytest.approx(expected)
    assert histogram_share_within(limit, QUANTILE_BOUNDS, (0.0, 0.0, 0.0, 0.0)) is None


@given(
    inside=st.lists(st.integers(1, 50), min_size=3, max_size=3),
    over=st.integers(0, 50),
    limit=st.floats(0.001, 0.999),
)
def test_share_within_is_the_inverse_of_the_quantile(inside: list[int], over: int, limit: float) -> None:
    """The SLA verdict read as attainment and as latency agree: quantile(share(x)) == x inside the finite buckets."""
    counts = [float(sum(inside[: i + 1])) for i in range(3)]
    counts.append(counts[-1] + over)
    share = histogram_share_within(limit, QUANTILE_BOUNDS, counts)
    assert share is not None
    assert histogram_quantile(share, QUANTILE_BOUNDS, counts) == pytest.approx(limit)


def test_buckets_merge_sums_same_bounds_and_the_bounds_with_most_observations_win() -> None:
    a = (QUANTILE_BOUNDS, (10.0, 10.0, 10.0, 10.0))
    b = (QUANTILE_BOUNDS, (0.0, 20.0, 30.0, 30.0))
    idle = ((0.2, INF), (0.0, 0.0))
    assert buckets_merge([a, idle, idle, idle, b]) == (QUANTILE_BOUNDS, (10.0, 30.0, 40.0, 40.0))
    assert buckets_merge([idle, ((0.3, INF), (0.0, 0.0))]) == ((0.2, INF), (0.0, 0.0))  # a tie: the first seen
    assert buckets_merge([]) is None
    with pytest.raises(ValueError, match="length"):
        buckets_merge([((0.1, INF), (1.0,))])


def test_wire_histograms_with_other_bounds_are_left_out_of_a_merge() -> None:
    def wire(counts: list[float], count: float) -> dict[str, object]:
        return {"bounds": [0.1, 0.5, 1.0], "counts": counts, "count": count}

    merged = histograms_merge(
        [wire([1, 2, 3], 3), wire([1, 1, 1], 2), {"bounds": [1.0], "counts": [4], "count": 4}, None]
    )
    assert merged == wire([2, 3, 4], 5)
    assert histograms_merge([None, None]) is None
    assert histograms_merge([{"bounds": [], "counts": [], "count": 3}]) == {"bounds": [], "counts": [], "count": 3}


def test_observations_are_counted_at_or_under_each_bound() -> None:
    assert histogram_observe([0.41, 0.1, 0.82, 7.0], [0.1, 0.5, 1.0]) == {
        "bounds": [0.1, 0.5, 1.0],
        "counts": [1, 2, 3],
        "count": 4,
    }
    assert histogram_observe([], [0.1]) == {"bounds": [0.1], "counts": [0], "count": 0}


@pytest.mark.parametrize(
    ("bounds", "counts", "percentile", "expected"),
    [
        ([0.1, 0.5, 1.0], [50, 90, 100], 95, 0.75),  # rank 95 in (0.5, 1] holding 10: 0.5 + 0.5 * 5/10
        ([0.1, 0.5], [50, 90], 50, 0.1),  # rank 50 fills (0, 0.1]
        ([0.1, 0.5], [50, 90], 99, 0.5),  # rank 99 among the 10 over 0.5 s: the highest finite bound
    ],
)
def test_pool_latency_known_values(bounds: list[float], counts: list[int], percentile: int, expected: float) -> None:
    assert pool_latency([{"bounds": bounds, "counts": counts, "count": 100}], percentile) == pytest.approx(expected)


def test_pool_latency_and_attainment_read_the_merged_histograms() -> None:
    """Two instances: A holds 90 requests under 0.1 s and 10 in (0.5, 1]; B holds 100 under 0.1 s.

    A alone has a P95 of 0.5 + 0.5 * 5/10 = 0.75 s; the pool's 200 requests have theirs at rank
    190, the top of (0, 0.1]: 0.1 s, and 190 of 200 within 0.5 s.
    """
    a = {"bounds": [0.1, 0.5, 1.0], "counts": [90, 90, 100], "count": 100}
    b = {"bounds": [0.1, 0.5, 1.0], "counts": [100, 100, 100], "count": 100}
    assert pool_latency([a], 95) == pytest.approx(0.75)
    assert pool_latency([a, None, b], 95) == pytest.approx(0.1)
    assert attainment([a, b], 0.5) == pytest.approx(0.95)
    assert attainment([a], 0.5) == pytest.approx(0.9)
    empty = {"bounds": [0.1], "counts": [0], "count": 0}
    assert pool_latency([empty], 95) is attainment([empty], 0.5) is pool_latency([], 95) is None
    assert pool_latency([{"bounds": [], "counts": [], "count": 5}], 95) is None  # no finite bucket says anything
