"""The gateway asks its database worker for a scale-out when its outstanding requests show pressure,
once per autoscale's scale-out cool-down however long the pressure lasts."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from types import SimpleNamespace
from typing import Any

import pytest

from fleet.gateway import app, worker
from fleet.gateway.app import Gateway
from fleet.gateway.config import GatewayConfig
from fleet.gateway.counting import ESTIMATE
from fleet.gateway.table import PoolRoute, RoutingTable, Upstream
from fleet.gateway.upstream import Target

COOLDOWN_S = 60.0


def table(**overrides: Any) -> RoutingTable:
    """Pool 1: two ready instances of max_num_seqs 4, band top 0.65 (pressure from 4 x 0.65 = 2.6 each)."""
    route = PoolRoute(
        pool_id=1,
        name="chat",
        tier="L",
        served_name="m",
        max_model_len=8192,
        counter=ESTIMATE,
        upstreams=tuple(Upstream(i, 1, Target.parse(f"http://127.0.0.1:{9000 + i}")) for i in (1, 2)),
        max_num_seqs=4,
        util_band_high=0.65,
        max_instances=4,
        serving=2,
        active=2,
        scale_out_cooldown_s=COOLDOWN_S,
    )
    return RoutingTable(keys={}, pools={1: replace(route, **overrides)})


class Clocked:
    """A gateway on a hand-set monotonic clock whose database worker records the scale-outs asked for."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.clock = 100.0
        monkeypatch.setattr(
            app, "time", SimpleNamespace(monotonic=lambda: self.clock, perf_counter=time.perf_counter, time=time.time)
        )
        self.asked: list[dict[str, Any]] = []
        monkeypatch.setattr(worker, "pool_scale_out", lambda **kwargs: self.asked.append(kwargs) or 1)
        self.gateway = Gateway(config=GatewayConfig(refresh_s=1.0), table_loader=table)
        self.gateway.table = table()
        self.gateway._executor = ThreadPoolExecutor(1)

    def request(self, at: float, outstanding: dict[int, int]) -> int:
        """One request arriving at ``at`` with the instances holding ``outstanding``: how many asks so far."""
        self.clock = at
        self.gateway.picker.outstanding = dict(outstanding)

        async def arrive() -> None:
            self.gateway._pressure(1, arriving=1)
            await asyncio.gather(*self.gateway._tasks, return_exceptions=True)

        asyncio.run(arrive())
        return len(self.asked)


@pytest.fixture
def clocked(monkeypatch: pytest.MonkeyPatch) -> Clocked:
    return Clocked(monkeypatch)


def test_sustained_pressure_asks_once_per_cool_down(clocked: Clocked) -> None:
    """3 + 2 outstanding + the arriving one = 6 on 2 instances = 3 each = 75% of 4 >= 65%: ask at 100 s.
    Asked again only 60 s later (160 s), however many requests come under pressure meanwhile."""
    hot = {1: 3, 2: 2}
    assert clocked.request(100.0, hot) == 1
    assert [clocked.request(at, hot) for at in (100.1, 110.0, 130.0, 159.9)] == [1, 1, 1, 1]
    assert clocked.request(160.0, hot) == 2
    assert clocked.request(170.0, hot) == 2
    ask = clocked.asked[0]
    assert ask["pool_id"] == 1 and "load 75% of max_num_seqs 4 >= band top 65%" in ask["reason"]


def test_no_ask_under_the_band(clocked: Clocked) -> None:
    """2 + 2 outstanding + 1 = 5 on 2 = 2.5 each = 62.5% < 65%: nothing."""
    assert clocked.request(100.0, {1: 2, 2: 2}) == 0


def test_a_scale_out_logged_elsewhere_starts_the_cool_down(clocked: Clocked) -> None:
    """The tick's autoscale (or another gateway) scaled out 10 s ago, read at the last refresh: 10 < 60 s."""
    clocked.gateway.table = table(last_scale_out_at=time.time() - 10)
    assert clocked.request(100.0, {1: 4, 2: 4}) == 0
    clocked.gateway.table = table(last_scale_out_at=time.time() - 61)
    assert clocked.request(101.0, {1: 4, 2: 4}) == 1


def test_no_ask_where_autoscale_is_off_or_an_instance_is_on_its_way(clocked: Clocked) -> None:
    clocked.gateway.table = table(scale_out_cooldown_s=None)
    assert clocked.request(100.0, {1: 4, 2: 4}) == 0
    clocked.gateway.table = table(serving=3, active=3)
    assert clocked.request(200.0, {1: 4, 2: 4}) == 0


def test_a_failed_ask_is_tried_again_a_second_later(clocked: Clocked, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[float] = []

    def down(**kwargs: Any) -> int:
        calls.append(clocked.clock)
        raise ConnectionError("database away")

    monkeypatch.setattr(worker, "pool_scale_out", down)
    hot = {1: 4, 2: 4}
    clocked.request(100.0, hot)
    clocked.request(100.5, hot)
    clocked.request(101.0, hot)
    assert calls == [100.0, 101.0]
