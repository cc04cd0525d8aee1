"""The policy kinds, the order they run in, and the evaluation loop that runs them.

One loop for production and the trace simulator alike: ``fleet.policies.evaluate`` calls it
with snapshots read from the database and an ``apply`` that goes through the services;
the simulator with snapshots of its simulated fleet and an ``apply`` that changes it.
Kinds run in a fixed order (reap, idle reclaim, autoscale, pre-warm, co-location), each
on a snapshot taken after the previous kind's changes, so autoscale sees what idle
reclaim just stopped.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from datetime import datetime, timedelta

from fleet.policies import autoscale, colocate, idle, prewarm, reap
from fleet.policies.actions import Action
from fleet.policies.snapshot import FleetSnapshot, PolicyConfig

ORDER = ("reap", "idle_reclaim", "autoscale", "prewarm", "colocate")

# Request timestamps per pool: (pool ids, since, until) -> {pool id: times in [since, until)}.
RequestTimesSource = Callable[[list[int], datetime, datetime], dict[int, list[datetime]]]


def policy_functions() -> dict[str, Callable[..., list[Action]]]:
    """The policy function of each kind, looked up now (so a patched module is what runs)."""
    return {
        "reap": reap.reap,
        "idle_reclaim": idle.idle_reclaim,
        "autoscale": autoscale.autoscale,
        "prewarm": prewarm.prewarm,
        "colocate": colocate.colocate,
    }


def traffic_profiles(
    snapshot: FleetSnapshot, config: PolicyConfig, now: datetime, request_times: RequestTimesSource
) -> dict[int, prewarm.TrafficProfile]:
    """The traffic profile of each pool pre-warm is enabled for, over its look-back."""
    pools = [pool.id for pool in snapshot.pools if config.for_pool(pool.id) is not None]
    if not pools:
        return {}
    longest = max(int(settings["lookback_days"]) for p in pools if (settings := config.for_pool(p)))
    times = request_times(pools, now - timedelta(days=longest), now)
    return {
        pool_id: prewarm.traffic_profile_learn(
            times.get(pool_id, []),
            now=now,
            lookback_days=int(settings["lookback_days"]),
            slot_minutes=int(settings["slot_minutes"]),
        )
        for pool_id in pools
        if (settings := config.for_pool(pool_id)) is not None
    }


def policy_decide(
    kind: str, snapshot: FleetSnapshot, config: PolicyConfig, now: datetime, request_times: RequestTimesSource
) -> list[Action]:
    """What one kind decides on one snapshot."""
    function = policy_functions()[kind]
    if kind == prewarm.KIND:
        return function(snapshot, config, now, traffic_profiles(snapshot, config, now, request_times))
    return function(snapshot, config, now)


def policies_run(
    *,
    configs: Mapping[str, PolicyConfig],
    now: datetime,
    snapshot: Callable[[], FleetSnapshot],
    apply: Callable[[Action], bool],
    request_times: RequestTimesSource,
    kinds: Iterable[str] = ORDER,
) -> list[Action]:
    """Run the given kinds once, in ``ORDER``, and return every action they decided.

    ``snapshot()`` reads the fleet, again after any kind whose actions changed it;
    ``apply(action)`` says whether the action took effect (a claim another writer won
    first did not). A kind disabled fleet-wide and for every pool is skipped unread.
    """
    wanted = set(kinds)
    decided: list[Action] = []
    current: FleetSnapshot | None = None
    for kind in ORDER:
        config = configs[kind]
        if kind not in wanted or (config.fleet is None and all(v is None for v in config.pools.values())):
            continue
        current = current or snapshot()
        actions = policy_decide(kind, current, config, now, request_times)
        decided.extend(actions)
        applied = [apply(action) for action in actions]
        if any(applied):
            current = None
    return decided
