"""The simulator picks as the gateway does: on the same routing table, the same instances, cool-down included."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import pytest

from fleet.gateway import app
from fleet.gateway.app import Gateway, Routed
from fleet.gateway.config import GatewayConfig
from fleet.gateway.counting import ESTIMATE
from fleet.gateway.protocol import load_json, parse_chat
from fleet.gateway.table import ApiKeyRoute, PoolRoute, RoutingTable, Upstream
from fleet.gateway.upstream import Target, UpstreamUnavailable
from fleet.sim.engine import engine_model_for
from fleet.sim.setup import SimPool, pool_view_default, setup_build
from fleet.sim.simulate import Simulation
from fleet.sim.traces import Trace, TraceRequest
from fleet.states import STOPPED

COOLDOWN_S = 15.0
GROUPS = [[1], [2]]  # pool 1's tier first, then pool 2's as the fallback


def port(instance_id: int) -> int:
    return 9000 + instance_id


def routing_table(ready: dict[int, list[int]]) -> RoutingTable:
    """The table a refresh builds: each pool with the instances the agents report ready, by id."""
    pools = {
        pool_id: PoolRoute(
            pool_id=pool_id,
            name=f"pool-{pool_id}",
            tier="L",
            served_name="m",
            max_model_len=8192,
            counter=ESTIMATE,
            upstreams=tuple(Upstream(i, pool_id, Target.parse(f"http://127.0.0.1:{port(i)}")) for i in instance_ids),
        )
        for pool_id, instance_ids in ready.items()
    }
    return RoutingTable(keys={}, pools=pools)


class DeadInstance:
    """Upstreams where one instance refuses connections and every other one answers 200."""

    def __init__(self, instance_id: int) -> None:
        self.port = port(instance_id)

    async def request(self, target: Target, method: bytes, path: bytes, body: bytes) -> Any:
        if target.port == self.port:
            raise UpstreamUnavailable("connection refused")
        return SimpleNamespace(status=200)


class Fleets:
    """The same fleet twice: a gateway with its routing table, and a simulation with the same instances."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.clock = 100.0
        monkeypatch.setattr(
            app, "time", SimpleNamespace(monotonic=lambda: self.clock, perf_counter=time.perf_counter, time=time.time)
        )
        config = GatewayConfig(cooldown_s=COOLDOWN_S)
        self.gateway = Gateway(config=config, table_loader=lambda: routing_table({}))
        engine = engine_model_for("H100")
        pools = tuple(SimPool(pool_view_default(engine=engine, gpus=5, id=i, name=f"pool-{i}")) for i in (1, 2))
        setup = replace(setup_build(engine=engine, gpus=5), pools=pools, gateway=config)
        start = datetime(2026, 3, 2, 9, tzinfo=UTC)
        trace = Trace(name="hand", start=start, requests=tuple(TraceRequest(0.0, 100, 4) for _ in range(20)))
        self.simulation = Simulation(trace=trace, setup=setup, label="policy")
        self.simulation.now = self.clock
        for pool_id in (1, 1, 1, 2):  # instances 1, 2 and 3 in pool 1, 4 in pool 2
            self.simulation._warm_instance(pool_id)
        self.simulation._begin_start(self.simulation._new_instance(1, 5))  # instance 5 starting: in no table
        self.gateway.table = routing_table({1: [1, 2, 3], 2: [4]})
        self.sent = 0

    def at(self, seconds: float) -> None:
        self.clock = seconds
        self.simulation.now = seconds

    def pick(self, send: bool = True) -> int:
        """Both picks, which must agree; with ``send`` the request stays in flight on the instance picked."""
        upstream = self.gateway.pick(GROUPS)
        instance = self.simulation._pick(GROUPS)
        assert upstream is not None and instance is not None
        assert upstream.instance_id == instance.id
        if send:
            outstanding = self.gateway.picker.outstanding
            outstanding[upstream.instance_id] = outstanding.get(upstream.instance_id, 0) + 1
            self.simulation._submit(instance, self.sent)
            self.sent += 1
        return instance.id

    def fail(self) -> tuple[int, int]:
        """The gateway's pick is refused, cooled down and retried on another; the simulator's pick after the same."""
        upstream = self.gateway.pick(GROUPS)
        assert upstream is not None
        self.gateway._upstreams = DeadInstance(upstream.instance_id)  # type: ignore[assignment]
        routed = Routed(
            started=0.0,
            wall=0.0,
            key=ApiKeyRoute(1, 1),
            request=parse_chat(load_json(b'{"model": "m", "messages": [{"role": "user", "content": "hi"}]}')),
            rcf=1.0,
            tier="L",
            prompt_tokens=1,
            groups=GROUPS,
        )
        _, retried = asyncio.run(self.gateway._exchange(routed, upstream, b"/v1/chat/completions", b"{}"))
        failed = self.simulation._pick(GROUPS)
        assert failed is not None and failed.id == upstream.instance_id
        self.simulation.picker.cool(failed.id, now=self.simulation.now)
        instead = self.simulation._pick(GROUPS)
        assert instead is not None and instead.id == retried.instance_id
        return failed.id, instead.id


def test_the_simulators_pick_is_the_gateways_cool_down_included(monkeypatch: pytest.MonkeyPatch) -> None:
    fleets = Fleets(monkeypatch)
    # Fewest outstanding first, ties to the least picked: round-robin over pool 1's ready instances.
    assert [fleets.pick() for _ in range(4)] == [1, 2, 3, 1]
    # Instance 2 fails at 100 s: the request goes to 3, and 2 sits out its cool-down on both.
    assert fleets.fail() == (2, 3)
    fleets.at(100 + COOLDOWN_S - 1)
    assert [fleets.pick() for _ in range(3)] == [3, 1, 3]
    assert fleets.gateway.picker.cooldown == fleets.simulation.picker.cooldown == {2: 100 + COOLDOWN_S}
    # A policy stops 1 and 3 and the next refresh drops them: while 2 cools, pool 2 takes the request.
    for instance_id in (1, 3):
        fleets.simulation.instances[instance_id].desired = STOPPED
    fleets.gateway.table = routing_table({1: [2], 2: [4]})
    assert fleets.pick(send=False) == 4
    # Once the cool-down is over, 2 is back in pool 1's rotation.
    fleets.at(100 + COOLDOWN_S)
    assert fleets.pick() == 2
    assert fleets.gateway.picker.cooldown == fleets.simulation.picker.cooldown == {}
