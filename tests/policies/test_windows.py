"""``pool_windows`` puts each report in the window its time falls in, edges included, as a filter per window would."""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from fleet.policies.snapshot import per_instance_mean, per_instance_total
from fleet.policies.windows import WINDOW_S, WINDOWS, pool_windows

NOW = datetime(2026, 3, 2, 12, 0, 30, 250_000, tzinfo=UTC)


@dataclass(frozen=True)
class Sample:
    instance_id: int
    at: datetime
    requests_running: float | None
    requests_waiting: float | None
    kv_cache_usage: float | None
    prompt_tokens_rate: float | None


def test_each_report_counts_in_the_window_its_time_falls_in() -> None:
    """Reports at every window edge (a window holds its start, not its end), a microsecond either side, at
    ``now`` and before the oldest window, with values missing at random: each window's figures are those of
    the reports a plain filter on [start, end) finds."""
    rng = random.Random(7)
    moments = []
    for back in range(WINDOWS + 2):
        edge = NOW - timedelta(seconds=back * WINDOW_S)
        moments += [edge, edge - timedelta(microseconds=1), edge + timedelta(microseconds=1)]
    moments += [NOW - timedelta(seconds=rng.uniform(0, WINDOW_S * WINDOWS + 30)) for _ in range(200)]

    def value() -> float | None:
        return None if rng.random() < 0.2 else rng.uniform(0, 10)

    samples = [Sample(rng.randint(1, 3), at, value(), value(), value(), value()) for at in moments]
    duty = [(at, rng.random()) for at in moments[::2]]
    seen: list[tuple[datetime, datetime, list[Sample]]] = []

    def latency(start: datetime, end: datetime, mine: list[Sample]) -> float:
        seen.append((start, end, mine))
        return float(len(mine))

    windows = pool_windows(now=NOW, samples=samples, duty=duty, max_num_seqs=8, latency=latency)
    assert len(windows) == WINDOWS and windows[-1].end == NOW
    for window, (start, end, mine) in zip(windows, seen, strict=True):
        assert (start, end) == (window.start, window.end) and end - start == timedelta(seconds=WINDOW_S)
        expected = [s for s in samples if start <= s.at < end]
        assert mine == expected
        busy = [v for at, v in duty if start <= at < end]
        assert window.utilization == (sum(busy) / len(busy) if busy else None)

        def by_instance(field: str, chosen: list[Sample] = expected) -> dict[int, list[float]]:
            values: dict[int, list[float]] = {}
            for s in chosen:
                if (number := getattr(s, field)) is not None:
                    values.setdefault(s.instance_id, []).append(number)
            return values

        assert window.queue == per_instance_total(by_instance("requests_waiting"))
        assert window.running == per_instance_mean(by_instance("requests_running"))
        assert window.kv_cache == per_instance_mean(by_instance("kv_cache_usage"))
        assert window.prompt_tokens_rate == per_instance_mean(by_instance("prompt_tokens_rate"))
