"""``TrafficHistory`` counts a tick's requests a slot at a time: the same counts as slot by slot per request,
slot edges, a day's last slot cut short at midnight and requests at the same instant included."""

from __future__ import annotations

import random
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest

from fleet.policies.prewarm import TrafficHistory, slot_index, slot_start

START = datetime(2026, 3, 2, tzinfo=UTC)


@pytest.mark.parametrize("slot_minutes", [1, 7, 15, 97, 1440])
def test_counts_per_slot_are_those_of_each_request_own_slot(slot_minutes: int) -> None:
    rng = random.Random(slot_minutes)
    times = [START + timedelta(seconds=rng.uniform(0, 3 * 86400)) for _ in range(2000)]
    for day in range(3):
        midnight = START + timedelta(days=day)
        times += [midnight, midnight - timedelta(microseconds=1), midnight + timedelta(minutes=1435)]
        times += [midnight + timedelta(minutes=slot_minutes * k) for k in range(3)] * 2
    history = TrafficHistory(lookback_days=7, slot_minutes=slot_minutes)
    now = START
    for _ in range(3 * 24):
        now += timedelta(hours=1)
        history.advance(times, now)
    counted = [t for t in times if START - timedelta(days=7) <= t < now]
    per_slot = Counter(slot_start(t, slot_minutes) for t in counted)
    assert list(history.slots) == sorted(per_slot.items())
    assert history.weekly == Counter({(b.weekday(), slot_index(b, slot_minutes)): n for b, n in per_slot.items()})
    daily: Counter[int] = Counter()
    for began, n in per_slot.items():
        daily[slot_index(began, slot_minutes)] += n
    assert history.daily == daily
