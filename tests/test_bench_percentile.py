"""The one percentile the benches report (``bench.chart_queries.percentile``), on hand-computed cases."""

from __future__ import annotations

import math

from bench.chart_queries import percentile


def test_the_95th_of_five_times_interpolates_between_the_two_slowest() -> None:
    """Inclusive: the 95th of 1..5 ms sits at (5 - 1) x 0.95 = 3.8 places in, 4 + 0.8 x (5 - 4) = 4.8 ms."""
    assert math.isclose(percentile([3.0, 1.0, 5.0, 2.0, 4.0], 95), 4.8)
    assert math.isclose(percentile([3.0, 1.0, 5.0, 2.0, 4.0], 50), 3.0)


def test_a_high_percentile_of_two_is_never_past_the_worst() -> None:
    """The 99th of 10 and 20 ms: 10 + 0.99 x 10 = 19.9 ms, not beyond 20 (the exclusive method gives 29.7)."""
    assert math.isclose(percentile([10.0, 20.0], 99), 19.9)
    assert percentile([10.0, 20.0], 99) <= 20.0


def test_one_time_is_its_own_percentile_and_none_is_nan() -> None:
    assert percentile([7.5], 95) == 7.5
    assert math.isnan(percentile([], 95))
