"""The static-spend guard: a pool never costs more than the always-on fleet the method replaces.

The static fleet is ``static_replicas`` instances up all the time, sized for the peak. Autoscale,
idle reclaim, pre-warm and the gateway's scale-out under pressure can cost more than it: cold
starts are paid while they load, churn pays them again, and a scale-out can go above the static
count. A pool whose ``static_hold`` policy states a static size (0: no guard) gets two rules:

1. **Never above the static size.** An action that would add a billed instance to the pool
   (a launch, or starting a stopped one again; waking a sleeping one adds none, it is billed
   already) while ``static_replicas`` are billed is refused (``static_guard``), and the refusal is a
   decision: "holding the static size N: ...". Billed means what placement counts against a device
   (``InstanceView.occupies_device``: desired not stopped, or still holding memory while it
   stops), so starting and draining instances count. A pool already over its static size (the size
   lowered, or ``min_instances`` above it: the guard wins, and autoscale's scale-outs to its minimum
   are refused) has its surplus stopped, idle instances first. With this rule the pool's spend over
   any window is at most the static fleet's.
2. **Hold the static size once the policy has not saved.** Where, over the last
   ``window_hours``, the pool's billed instance-hours (``held_hours``, the one definition the
   production snapshot and the simulator both compute) came to at least the static fleet's
   (``static_replicas`` x the window), the policy gained nothing over a whole window: the guard
   holds the static size, refusing every stop or sleep that would take the pool's serving
   instances below N, so the churn stops. It logs one decision when the hold starts and one
   when it ends, each with the figures. The hold ends when the trailing spend falls under
   ``release_ratio`` x the static fleet's (fewer than N were serving), or after a whole window
   held: that window then cost at most the static fleet's, and the policy gets a fresh one,
   measured from the release (a trigger needs a whole window measured, so a pool that kept N
   up throughout is held again only after another whole window, not at once).

Refusals are logged at most once per ``refusal_log_s`` per pool (a breach lasting an hour would
otherwise log one every evaluation); the scale-out is refused every time.

The guard is not applied to the gateway's wake of an empty pool (``pool_wake_request``: no
instance is desired running, so one more serving instance is what serves the request) nor to a
person's +1 (``pool_scale``): a person overrides policies.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from fleet.policies.actions import Action, DesireInstance, LaunchInstance, PoolDecision
from fleet.policies.snapshot import FleetSnapshot, PolicyConfig, PoolView
from fleet.states import RUNNING, SLEEPING, STOPPED

KIND = "static_hold"

HOLD_START = "hold_start"
HOLD_END = "hold_end"
REFUSE = "static_refused"


def minimum_conflict(*, pool: str, min_instances: int, static_replicas: int, autoscale: str, guard: str) -> str | None:
    """Why a pool's minimum cannot stand with its static size, or None where it can.

    With both policies on, autoscale launches up to ``min_instances`` and rule 1 refuses every
    launch past ``static_replicas`` (and stops the surplus), so a minimum above a static size
    (0: no guard) is a setting that can never hold: refused where it is saved, from either side.
    ``autoscale`` and ``guard`` name the two policies as the admin lists them.
    """
    if not static_replicas or min_instances <= static_replicas:
        return None
    return (
        f"Pool {pool} keeps a minimum of {min_instances} instances, above its static size of {static_replicas}: "
        f"{autoscale} would launch up to the minimum and {guard} refuse every launch past the static size. "
        f"Lower the pool's minimum to {static_replicas}, raise the static size to {min_instances}, "
        "or turn one of the two policies off for the pool."
    )


def held_hours(runs: Iterable[tuple[datetime, datetime | None]], *, since: datetime, until: datetime) -> float:
    """Billed instance-hours in [since, until): the overlap of each run (an instance in a state that
    holds its device, as billing counts it; end None: still holding) with the window.

    The one figure rule 2 compares with the static fleet: production builds the runs from the
    instances' state events (``selectors.fleet_snapshot``), the simulator from its instances' billed
    intervals; both pass them here. An instance on a MIG slice counts one per hour like one on a
    whole GPU: the static fleet is counted in instances of the same pool.
    """
    if until < since:
        raise ValueError(f"window ends ({until.isoformat()}) before it starts ({since.isoformat()})")
    total = 0.0
    for start, end in runs:
        first, last = max(start, since), min(until if end is None else end, until)
        if first < last:
            total += (last - first).total_seconds()
    return total / 3600


def window_start(*, now: datetime, hours: float, since: datetime | None, released_at: datetime | None) -> datetime:
    """Where the trailing window of a pool starts: ``hours`` back, but not before the pool could be
    billed (``since``: the pool's creation, the trace's start) nor before the last hold ended."""
    moments = [now - timedelta(hours=hours)]
    moments.extend(m for m in (since, released_at) if m is not None)
    return max(moments)


@dataclass(frozen=True)
class Figures:
    """Paid against static over the pool's trailing window: both in instance-hours."""

    replicas: int
    window_hours: float
    measured_hours: float
    paid: float
    static: float

    def inputs(self) -> dict[str, Any]:
        return {
            "static_replicas": self.replicas,
            "window_hours": self.window_hours,
            "measured_hours": round(self.measured_hours, 4),
            "paid_gpu_hours": round(self.paid, 4),
            "static_gpu_hours": round(self.static, 4),
        }

    def text(self) -> str:
        return (
            f"paid {self.paid:.2f} GPU-h over the last {self.measured_hours:.2f} h against the static fleet's "
            f"{self.static:.2f} ({self.replicas} x {self.measured_hours:.2f} h)"
        )


def replicas_of(config: PolicyConfig | None, pool_id: int) -> tuple[int, Mapping[str, Any] | None]:
    """The pool's static size (0: no guard) and its settings."""
    settings = config.for_pool(pool_id) if config is not None else None
    return (int(settings["static_replicas"]) if settings is not None else 0), settings


def figures_of(pool: PoolView, settings: Mapping[str, Any], now: datetime) -> Figures | None:
    """The pool's figures from its snapshot (None where the builder did not measure them)."""
    if pool.static_paid_hours is None or pool.static_window_start is None:
        return None
    measured = max((now - pool.static_window_start).total_seconds(), 0.0) / 3600
    replicas = int(settings["static_replicas"])
    return Figures(
        replicas=replicas,
        window_hours=float(settings["window_hours"]),
        measured_hours=measured,
        paid=pool.static_paid_hours,
        static=replicas * measured,
    )


def static_hold(snapshot: FleetSnapshot, config: PolicyConfig, now: datetime) -> list[Action]:
    """Start or end each pool's hold (rule 2): one decision at each change, with the figures."""
    actions: list[Action] = []
    for pool in snapshot.pools:
        replicas, settings = replicas_of(config, pool.id)
        held = pool.static_held_since is not None
        if settings is None or not replicas:
            if held:
                reason = f"pool {pool.name} has no static size any more: the hold ends"
                actions.append(_decision(pool, HOLD_END, reason, {}, config))
            continue
        actions.extend(_surplus_stops(snapshot, pool, replicas, config))
        figures = figures_of(pool, settings, now)
        if figures is None:
            continue
        window = figures.window_hours
        if not held:
            if figures.measured_hours >= window and figures.paid >= figures.static:
                reason = f"holding the static size {replicas} of pool {pool.name}: {figures.text()}"
                actions.append(_decision(pool, HOLD_START, reason, figures.inputs(), config))
            continue
        assert pool.static_held_since is not None
        held_h = (now - pool.static_held_since).total_seconds() / 3600
        ratio = float(settings["release_ratio"])
        if figures.paid < ratio * figures.static:
            why = f"under {ratio:g} x static"
        elif held_h >= window:
            why = f"held a whole window ({held_h:.2f} h >= {window:g} h)"
        else:
            continue
        reason = f"pool {pool.name} no longer holds its static size {replicas}: {figures.text()}, {why}"
        inputs = {**figures.inputs(), "held_hours": round(held_h, 4), "release_ratio": ratio}
        actions.append(_decision(pool, HOLD_END, reason, inputs, config))
    return actions


def _surplus_stops(snapshot: FleetSnapshot, pool: PoolView, replicas: int, config: PolicyConfig) -> list[Action]:
    """Stop what the pool has billed beyond its static size (rule 1 on a fleet that is over it already:
    the static size lowered, or ``min_instances`` above it): sleeping instances first, then the idle
    ones, longest idle first. A busy instance is left until it is quiet (stopping it would cut its
    requests short), so the surplus may take more than one evaluation to go."""
    active = [i for i in snapshot.instances_of(pool.id) if i.desired_state != STOPPED]
    # Instances already told to stop are on their way out: only the others are surplus to stop.
    if len(active) <= replicas:
        return []
    billed = billed_count(snapshot, pool.id)
    candidates = sorted(
        (i for i in active if not i.busy), key=lambda i: (i.desired_state != SLEEPING, i.idle_since, i.id)
    )
    return [
        DesireInstance(
            kind=KIND,
            action="stop",
            reason=f"holding the static size {replicas} of pool {pool.name}: {billed} instance(s) billed; "
            f"stopping instance {chosen.id}",
            inputs={"static_replicas": replicas, "billed": billed, "idle_since": chosen.idle_since.isoformat()},
            policy_id=config.policy_id(pool.id),
            instance_id=chosen.id,
            pool_id=pool.id,
            generation=chosen.generation,
            state=STOPPED,
        )
        for chosen in candidates[: len(active) - replicas]
    ]


def _decision(
    pool: PoolView, action: str, reason: str, inputs: Mapping[str, Any], config: PolicyConfig
) -> PoolDecision:
    return PoolDecision(
        kind=KIND, action=action, reason=reason, inputs=inputs, policy_id=config.policy_id(pool.id), pool_id=pool.id
    )


def billed_count(snapshot: FleetSnapshot, pool_id: int) -> int:
    """The pool's instances that are billed or about to be (``occupies_device``)."""
    return sum(1 for i in snapshot.instances_of(pool_id) if i.occupies_device)


def _adds(snapshot: FleetSnapshot, action: Action) -> int | None:
    """The pool an action adds a billed instance to, else None."""
    if isinstance(action, LaunchInstance):
        return action.pool_id
    if isinstance(action, DesireInstance) and action.state in (RUNNING, SLEEPING):
        instance = next((i for i in snapshot.instances if i.id == action.instance_id), None)
        if instance is not None and not instance.occupies_device:
            return action.pool_id
    return None


def _takes_serving(snapshot: FleetSnapshot, action: Action) -> int | None:
    """The pool an action takes a serving instance from (a stop or a sleep of one desired running)."""
    if isinstance(action, DesireInstance) and action.state in (STOPPED, SLEEPING):
        instance = next((i for i in snapshot.instances if i.id == action.instance_id), None)
        if instance is not None and instance.desired_state == RUNNING:
            return action.pool_id
    return None


def static_guard(
    snapshot: FleetSnapshot, config: PolicyConfig | None, now: datetime, actions: list[Action]
) -> list[Action]:
    """``actions`` without those the static size refuses, with a decision for the refusals.

    Refused: an action that adds a billed instance to a pool with ``static_replicas`` billed
    (rule 1), and, while the pool holds its static size, a stop or sleep that would leave fewer
    than ``static_replicas`` serving (rule 2). Several actions of one call are counted together.
    One refusal decision per pool per call, and none within ``refusal_log_s`` of the pool's last.
    """
    if config is None or not actions:
        return actions
    kept: list[Action] = []
    added: dict[int, int] = defaultdict(int)
    taken: dict[int, int] = defaultdict(int)
    refused: dict[int, list[str]] = defaultdict(list)
    figures: dict[int, dict[str, Any]] = {}
    for action in actions:
        adds, takes = _adds(snapshot, action), _takes_serving(snapshot, action)
        pool_id = adds if adds is not None else takes
        replicas, settings = replicas_of(config, pool_id) if pool_id is not None else (0, None)
        if pool_id is None or settings is None or not replicas:
            kept.append(action)
            continue
        pool = snapshot.pool(pool_id)
        if adds is not None:
            billed = billed_count(snapshot, pool_id) + added[pool_id]
            if billed + 1 > replicas:
                refused[pool_id].append(f"{action.kind} {action.action} refused, {billed} instance(s) billed")
                figures[pool_id] = {"billed": billed}
                continue
            added[pool_id] += 1
        elif pool.static_held_since is not None:
            serving = sum(1 for i in snapshot.instances_of(pool_id) if i.desired_state == RUNNING) - taken[pool_id]
            if serving - 1 < replicas:
                refused[pool_id].append(
                    f"{action.kind} {action.action} refused while held, {serving} instance(s) serving"
                )
                figures[pool_id] = {"serving": serving}
                continue
            taken[pool_id] += 1
        kept.append(action)
    for pool_id, what in refused.items():
        pool = snapshot.pool(pool_id)
        replicas, settings = replicas_of(config, pool_id)
        assert settings is not None
        last = pool.static_refused_at
        if last is not None and (now - last).total_seconds() < settings["refusal_log_s"]:
            continue
        measured = figures_of(pool, settings, now)
        inputs = {**figures[pool_id], "refused": what, **(measured.inputs() if measured else {})}
        reason = f"holding the static size {replicas} of pool {pool.name}: {'; '.join(what)}"
        if measured is not None:
            reason = f"{reason}; {measured.text()}"
        kept.append(_decision(pool, REFUSE, reason, inputs, config))
    return kept
