"""Autoscale's scale-in back-off: a scale-in undone by a scale-out within ``scale_in_backoff_max_s`` doubles the
scale-in cool-down before the next, each one in a row, up to that same figure; one that holds clears it."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pytest

from fleet.policies.autoscale import autoscale, scale_in_cooldown, scale_in_reversals
from fleet.policies.settings import policy_defaults
from tests.policies.builders import NOW, ago, config, gpu, instance, pool, snapshot, window

OUT, IN = "scale_out", "scale_in"
COLD = window(kv_cache=0.20, latency_ms=300)


def moves(*pairs: tuple[float, str]) -> tuple[tuple[datetime, str], ...]:
    """(seconds ago, action) pairs, oldest first."""
    return tuple((ago(seconds), action) for seconds, action in pairs)


@pytest.mark.parametrize(
    ("case", "pairs", "expected"),
    [
        ("no moves", [], 0),
        ("a scale-out alone", [(100, OUT)], 0),
        ("a scale-in not (yet) undone", [(100, IN)], 0),
        ("undone 60 s later", [(1000, IN), (940, OUT)], 1),
        ("undone exactly at the cool-down", [(1000, IN), (700, OUT)], 1),
        ("a scale-out 301 s later is demand, not a reversal", [(1000, IN), (699, OUT)], 0),
        ("two in a row", [(2000, IN), (1990, OUT), (1000, IN), (940, OUT)], 2),
        ("the chain broken by one that held", [(3000, IN), (2000, OUT), (1000, IN), (940, OUT)], 1),
        ("the last one holds so far", [(2000, IN), (1990, OUT), (1000, IN)], 0),
        ("two scale-outs after it", [(1000, IN), (940, OUT), (800, OUT)], 1),
        ("two scale-ins, the second undone", [(1500, IN), (1000, IN), (940, OUT)], 1),
    ],
    ids=lambda value: value if isinstance(value, str) else "",
)
def test_reversals_in_a_row(case: str, pairs: list[tuple[float, str]], expected: int) -> None:
    assert scale_in_reversals(moves(*pairs), 300) == expected


@pytest.mark.parametrize(
    ("reversals", "cap", "expected"),
    [
        (0, 3600, 300),
        (1, 3600, 600),
        (2, 3600, 1200),
        (3, 3600, 2400),
        (4, 3600, 3600),  # 4,800 capped
        (40, 3600, 3600),
        (3, 0, 300),  # no back-off
        (3, 200, 300),  # a cap under the cool-down leaves the cool-down
    ],
)
def test_the_cool_down_doubles_up_to_the_cap(reversals: int, cap: int, expected: float) -> None:
    settings = {"scale_in_cooldown_s": 300, "scale_in_backoff_max_s": cap}
    assert scale_in_cooldown(settings, reversals) == expected


def test_the_defaults_back_off_up_to_four_hours() -> None:
    defaults = policy_defaults("autoscale")
    assert (defaults["scale_in_cooldown_s"], defaults["scale_in_backoff_max_s"]) == (300, 14_400)


def decide(scale_moves: tuple[tuple[datetime, str], ...], **settings: Any) -> list[Any]:
    """Two idle instances of a pool whose windows (all after its last move) are calm enough to scale in."""
    last_out = max((at for at, action in scale_moves if action == OUT), default=None)
    last_in = max((at for at, action in scale_moves if action == IN), default=None)
    snap = snapshot(
        pools=[
            pool(windows=(COLD, COLD), last_scale_out_at=last_out, last_scale_in_at=last_in, scale_moves=scale_moves)
        ],
        instances=[instance(i, last_request_at=ago(10 * i), gpu_id=1) for i in (1, 2)],
        gpus=[gpu(1)],
    )
    return autoscale(snap, config("autoscale", breach_windows=2, scale_in_windows=2, **settings), NOW)


def test_after_two_undone_scale_ins_the_next_waits_four_cool_downs() -> None:
    """Scale-ins 1,500 and 1,300 s ago, each undone 10 s later: the next waits 4 x 300 = 1,200 s from the last
    scale-out. At 700 s after it, the plain cool-down (300 s) is long past, but not the back-off."""
    twice = ((1500, IN), (1490, OUT), (1300, IN), (1290, OUT))
    shifted = tuple((seconds - 590, action) for seconds, action in twice)  # the last scale-out 700 s ago
    assert decide(moves(*shifted)) == []
    assert decide(moves(*shifted), scale_in_backoff_max_s=0) != []
    late = tuple((seconds - 90, action) for seconds, action in twice)  # the last scale-out 1,200 s ago
    [action] = decide(moves(*late))
    assert action.action == "scale_in"
    assert "cool-down backed off to 1200 s: the last 2 scale-in(s) were undone within 14400 s" in action.reason


def test_a_scale_in_undone_within_the_cap_counts() -> None:
    """The scale-in 1,000 s ago held for ten minutes, and the scale-out 400 s ago undid it: within the default
    cap of four hours, so it counts, and the next waits 600 s."""
    history = moves((1000, IN), (400, OUT))
    assert decide(history) == []
    assert decide(history, scale_in_backoff_max_s=500) != []  # 600 s later: past a cap of 500 s


def test_a_scale_in_that_held_clears_the_back_off() -> None:
    """Undone twice, then one held for over four hours (the cap) before traffic rose: the scale-out 400 s ago
    came 14,600 s after the scale-in. The next scale-in waits the plain 300 s."""
    history = moves((20_000, IN), (19_990, OUT), (19_800, IN), (19_790, OUT), (15_000, IN), (400, OUT))
    [action] = decide(history)
    assert action.action == "scale_in" and "cool-down" not in action.reason
