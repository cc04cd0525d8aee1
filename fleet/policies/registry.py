"""The policy kinds, the order they run in, and the evaluation loop that runs them.

One loop for production and the trace simulator alike: ``fleet.decide.evaluate`` calls it
with snapshots read from the database and an ``apply`` that goes through the services;
the simulator with snapshots of its simulated fleet and an ``apply`` that changes it.
Kinds run in a fixed order (the static-spend guard's holds, reap, idle reclaim, autoscale,
pre-warm, co-location), each on a snapshot taken after the previous kind's changes, so
autoscale sees what idle reclaim just stopped. Every kind's actions then pass the static-spend
guard (``static_hold.static_guard``) before they are applied: it refuses a scale-out past a
pool's static size, and a reclaim below it while the pool holds it, with a decision saying why.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from datetime import datetime

from fleet.policies import autoscale, colocate, idle, prewarm, reap, static_hold
from fleet.policies.actions import Action
from fleet.policies.snapshot import FleetSnapshot, PolicyConfig

ORDER = ("static_hold", "reap", "idle_reclaim", "autoscale", "prewarm", "colocate")

# Request timestamps per pool: (pool ids, since, until) -> {pool id: times in [since, until)}.
RequestTimesSource = prewarm.RequestTimesSource


def policy_functions() -> dict[str, Callable[..., list[Action]]]:
    """The policy function of each kind, looked up now (so a patched module is what runs)."""
    return {
        "static_hold": static_hold.static_hold,
        "reap": reap.reap,
        "idle_reclaim": idle.idle_reclaim,
        "autoscale": autoscale.autoscale,
        "prewarm": prewarm.prewarm,
        "colocate": colocate.colocate,
    }


def policy_decide(
    kind: str,
    snapshot: FleetSnapshot,
    config: PolicyConfig,
    now: datetime,
    request_times: RequestTimesSource,
    learner: prewarm.TrafficLearner | None = None,
) -> list[Action]:
    """What one kind decides on one snapshot; pre-warm's profiles come from ``learner`` (a fresh one
    learns from the whole look-back)."""
    function = policy_functions()[kind]
    if kind == prewarm.KIND:
        learner = learner if learner is not None else prewarm.TrafficLearner()
        return function(snapshot, config, now, learner.profiles(snapshot, config, now, request_times))
    return function(snapshot, config, now)


def policies_run(
    *,
    configs: Mapping[str, PolicyConfig],
    now: datetime,
    snapshot: Callable[[], FleetSnapshot],
    apply: Callable[[Action], bool],
    request_times: RequestTimesSource,
    kinds: Iterable[str] = ORDER,
    learner: prewarm.TrafficLearner | None = None,
) -> list[Action]:
    """Run the given kinds once, in ``ORDER``, and return every action they decided.

    ``snapshot()`` reads the fleet, again after any kind whose actions changed it;
    ``apply(action)`` says whether the action took effect (a claim another writer won
    first did not). A kind disabled fleet-wide and for every pool is skipped unread.
    ``learner`` keeps pre-warm's traffic profiles between runs (the caller keeps it), so each
    run reads only the requests since the previous one; without it the profiles are learned
    from the whole look-back.
    """
    wanted = set(kinds)
    decided: list[Action] = []
    current: FleetSnapshot | None = None
    guard = configs.get(static_hold.KIND)
    for kind in ORDER:
        config = configs.get(kind)
        if config is None or kind not in wanted or _disabled(config):
            continue
        current = current or snapshot()
        actions = policy_decide(kind, current, config, now, request_times, learner)
        if kind != static_hold.KIND and guard is not None and not _disabled(guard):
            actions = static_hold.static_guard(current, guard, now, actions)
        decided.extend(actions)
        applied = [apply(action) for action in actions]
        if any(applied):
            current = None
    return decided


def _disabled(config: PolicyConfig) -> bool:
    """Disabled fleet-wide and for every pool."""
    return config.fleet is None and all(v is None for v in config.pools.values())
