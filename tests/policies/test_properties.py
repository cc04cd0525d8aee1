"""Properties that must hold for any fleet: bounds, busy instances, GPU memory."""

from __future__ import annotations

from datetime import timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from fleet.policies.actions import DesireInstance, LaunchInstance
from fleet.policies.autoscale import autoscale
from fleet.policies.idle import idle_reclaim
from fleet.policies.placement import Placement, placement_choose
from fleet.policies.reap import reap
from fleet.policies.snapshot import FleetSnapshot, GpuView, InstanceView, PoolView, PoolWindow
from tests.policies.builders import GIB, NOW, config, qwen_estimate

STATES = ("running", "sleeping", "stopped")


@st.composite
def fleets(draw: st.DrawFn) -> FleetSnapshot:
    gpus = tuple(
        GpuView(
            id=g,
            node_id=1,
            uuid=f"GPU-{g}",
            model_name="NVIDIA H100 80GB HBM3",
            memory_total_bytes=draw(st.sampled_from([24, 48, 80])) * GIB,
            utilization_pct=draw(st.one_of(st.none(), st.floats(0, 100))),
            memory_used_bytes=0,
            foreign_memory_bytes=draw(st.integers(0, 30)) * GIB,
        )
        for g in range(1, draw(st.integers(1, 4)) + 1)
    )
    pools = []
    for p in range(1, draw(st.integers(1, 3)) + 1):
        low = draw(st.floats(0.1, 0.6))
        minimum = draw(st.integers(0, 3))
        windows = tuple(
            PoolWindow(
                start=NOW - timedelta(seconds=60),
                end=NOW,
                utilization=draw(st.one_of(st.none(), st.floats(0, 1))),
                queue=draw(st.one_of(st.none(), st.floats(0, 20))),
                latency_ms=draw(st.one_of(st.none(), st.floats(0, 2000))),
                running=draw(st.one_of(st.none(), st.floats(0, 300))),
                kv_cache=draw(st.one_of(st.none(), st.floats(0, 1))),
                prompt_tokens_rate=draw(st.one_of(st.none(), st.floats(0, 80_000))),
            )
            for _ in range(draw(st.integers(0, 4)))
        )
        pools.append(
            PoolView(
                id=p,
                name=f"p{p}",
                isolation=draw(st.sampled_from(["shared", "exclusive"])),
                min_instances=minimum,
                max_instances=minimum + draw(st.integers(0, 3)),
                util_band_low=low,
                util_band_high=low + 0.15,
                enable_sleep_mode=draw(st.booleans()),
                gpu_memory_utilization=draw(st.sampled_from([0.2, 0.3, 0.5, 0.9])),
                estimate=qwen_estimate(draw(st.sampled_from([8192, 32768, 262144]))),
                windows=windows,
            )
        )
    instances = tuple(
        InstanceView(
            id=i,
            pool_id=draw(st.integers(1, len(pools))),
            desired_state=draw(st.sampled_from(STATES)),
            actual_state=draw(st.sampled_from(["ready", "starting", "sleeping", "stopped"])),
            generation=1,
            created_at=NOW - timedelta(hours=3),
            gpu_id=draw(st.integers(1, len(gpus))),
            last_request_at=NOW - timedelta(seconds=draw(st.integers(0, 3000))),
            expires_at=draw(st.one_of(st.none(), st.just(NOW - timedelta(seconds=1)))),
            requests_running=draw(st.sampled_from([None, 0, 0, 1, 3])),
            requests_waiting=draw(st.sampled_from([None, 0, 0, 2])),
        )
        for i in range(1, draw(st.integers(0, 8)) + 1)
    )
    return FleetSnapshot(at=NOW, pools=tuple(pools), instances=instances, gpus=gpus)


def _after(snapshot: FleetSnapshot, actions: list) -> dict[int, str]:  # type: ignore[type-arg]
    states = {i.id: i.desired_state for i in snapshot.instances}
    for action in actions:
        if isinstance(action, DesireInstance):
            states[action.instance_id] = action.state
    return states


def _serving(snapshot: FleetSnapshot, states: dict[int, str], pool_id: int) -> int:
    return sum(1 for i in snapshot.instances if i.pool_id == pool_id and states[i.id] == "running")


@settings(max_examples=300, deadline=None)
@given(fleets())
def test_idle_reclaim_and_autoscale_never_go_below_min_nor_stop_a_busy_instance(snapshot: FleetSnapshot) -> None:
    for policy in (idle_reclaim, autoscale):
        actions = policy(snapshot, config(policy.__name__, prefill_tokens_per_s=40_000), NOW)
        states = _after(snapshot, actions)
        busy = {i.id for i in snapshot.instances if i.busy}
        for action in actions:
            if isinstance(action, DesireInstance) and action.state != "running":
                assert action.instance_id not in busy
        for pool in snapshot.pools:
            before = _serving(snapshot, {i.id: i.desired_state for i in snapshot.instances}, pool.id)
            assert _serving(snapshot, states, pool.id) >= min(before, pool.min_instances)


@settings(max_examples=300, deadline=None)
@given(fleets())
def test_draining_autoscale_stops_at_most_one_instance_the_least_loaded_and_never_below_min(
    snapshot: FleetSnapshot,
) -> None:
    actions = autoscale(snapshot, config("autoscale", scale_in_drain=True), NOW)
    stopped = [a for a in actions if isinstance(a, DesireInstance) and a.state == "stopped"]
    states = _after(snapshot, actions)
    for pool in snapshot.pools:
        before = _serving(snapshot, {i.id: i.desired_state for i in snapshot.instances}, pool.id)
        assert _serving(snapshot, states, pool.id) >= min(before, pool.min_instances)
    for action in stopped:
        chosen = next(i for i in snapshot.instances if i.id == action.instance_id)
        others = [i for i in snapshot.instances if i.pool_id == chosen.pool_id and i.desired_state == "running"]
        if chosen.busy and chosen.desired_state == "running":
            assert all(i.busy and i.in_flight >= chosen.in_flight for i in others)
    assert len({a.pool_id for a in stopped}) == len(stopped)


@settings(max_examples=300, deadline=None)
@given(fleets())
def test_autoscale_never_exceeds_max(snapshot: FleetSnapshot) -> None:
    actions = autoscale(snapshot, config("autoscale"), NOW)
    for pool in snapshot.pools:
        active = sum(1 for i in snapshot.instances if i.pool_id == pool.id and i.desired_state != "stopped")
        launched = sum(1 for a in actions if isinstance(a, LaunchInstance) and a.pool_id == pool.id)
        restarted = sum(
            1
            for a in actions
            if isinstance(a, DesireInstance)
            and a.pool_id == pool.id
            and a.state == "running"
            and next(i for i in snapshot.instances if i.id == a.instance_id).desired_state == "stopped"
        )
        assert active + launched + restarted <= max(active, pool.max_instances)


@settings(max_examples=300, deadline=None)
@given(fleets())
def test_the_reaper_never_stops_a_busy_instance(snapshot: FleetSnapshot) -> None:
    busy = {i.id for i in snapshot.instances if i.busy}
    assert not [a for a in reap(snapshot, config("reap"), NOW) if getattr(a, "instance_id", None) in busy]


@settings(max_examples=300, deadline=None)
@given(fleets(), st.data())
def test_placement_never_promises_more_than_a_gpu_has(snapshot: FleetSnapshot, data: st.DataObject) -> None:
    pool = data.draw(st.sampled_from(snapshot.pools))
    placed = placement_choose(snapshot, pool_id=pool.id)
    if not isinstance(placed, Placement):
        return
    gpu = snapshot.gpu(placed.gpu_id)
    assert gpu is not None
    promised = snapshot.gpu_reserved_bytes(gpu.id)
    assert promised + placed.reservation_bytes + gpu.foreign_memory_bytes <= gpu.memory_total_bytes
    assert pool.estimate is None or pool.estimate.required_bytes <= placed.reservation_bytes
    if pool.isolation == "exclusive":
        assert not snapshot.gpu_instances(gpu.id)
