"""SLA-bounded autoscaling: hold the pool's load in its band while latency meets its SLA.

The band (the pool's ``util_band_low`` .. ``util_band_high``) applies to the **load** of a
window (``window_load``): the largest share of one instance's capacity that its serving
instances use on average, of running sequences against ``max_num_seqs``, KV-cache usage,
and, where ``prefill_tokens_per_s`` says what one instance prefills a second, prompt
tokens a second against that. Not the GPU duty cycle: NVML counts a GPU busy whenever a
kernel runs, so one decoding sequence reads 100% and a band on it only ever scales out.

Only windows that began after the last scale-out or scale-in count: each decision needs its
number of windows all measured on the fleet as the last action left it, so a cool-down
shorter than the windows it reads cannot act on load measured before that action (which
made the autoscaler hunt: scale in, read the old calm windows again, scale in, then out).

Scale out by one when the last ``breach_windows`` windows were all in breach (the SLA
percentile above its bound, or, where the pool's TTFT bound grows with the prompt
(``sla_ms_per_1k_prompt_tokens``), more than ``100 - sla_percentile`` % of the window's requests
over their own bound; the end-to-end latency above the pool's end-to-end bound where it has
one, the vLLM queue above ``queue_threshold``, or the load above the band) and the last scale-out
is older than its cool-down. Scale in by one when the last
``scale_in_windows`` windows all had load under the band, latency (and end-to-end latency)
under ``scale_in_latency_ratio`` x its bound (for a growing bound: at most that ratio of the share
of requests over their bound the SLA allows) and a queue of at most ``scale_in_max_queue``, and
neither a scale-out nor a scale-in happened within the scale-in cool-down; and only where
the load spread over one instance fewer stays inside the band. That spread is a linear guess, and
sequences are not linear: each request runs longer in a bigger batch, so one instance fewer can
hold well over twice the sequences, and the gateway scales out again at once. A scale-in undone
like that (a scale-out within ``scale_in_backoff_max_s``, ``scale_in_reversals``) doubles the
cool-down before the next, each one in a row, up to that same figure (``scale_in_cooldown``): a
pool whose load sits just where the guess fails stops paying a cold start every few minutes, and a
scale-in that holds that long (traffic really fell) clears the back-off. The gap between the two
conditions is the hysteresis. Never below ``min_instances`` nor above ``max_instances``; scale-in leaves the
last one to idle reclaim, which knows when nobody asks, and stops a busy instance only
where ``scale_in_drain`` says the engine finishes what it holds (the least loaded one).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import datetime
from typing import Any

from fleet.policies.actions import Action, DesireInstance
from fleet.policies.placement import PlacementRefused, pool_wake_actions
from fleet.policies.snapshot import (
    FleetSnapshot,
    InstanceView,
    PolicyConfig,
    PoolView,
    PoolWindow,
)
from fleet.states import RUNNING, STOPPED

KIND = "autoscale"
# The scale moves a pool's view carries (``PoolView.scale_moves``), newest kept: 17 undone scale-ins in a row
# (34 moves) double even a 1 s cool-down past the longest back-off, a day.
SCALE_MOVES_KEPT = 36
# How far back the panel reads them: a pool whose newest move is older than a day is past any cool-down.
SCALE_MOVES_HORIZON_S = 2 * 86_400


def sequence_load(running: float | None, max_num_seqs: int) -> float | None:
    """Sequences running (or asked for) per instance as a share of what one instance runs at once
    (``max_num_seqs``); None where either is unknown. The sequence part of ``window_load``, and all
    of the load the gateway sees in its outstanding requests (``pressure.pressure_scale_out``)."""
    if running is None or not max_num_seqs:
        return None
    return running / max_num_seqs


def window_load(pool: PoolView, window: PoolWindow, settings: Mapping[str, Any]) -> float | None:
    """The share of an instance's capacity in use, 0..1 and above when overloaded; None unmeasured.

    The largest of the shares, because whichever resource runs out first bounds what an
    instance serves within its SLA: sequences (``max_num_seqs``), KV cache, or prefill.
    """
    shares = []
    sequences = sequence_load(window.running, pool.max_num_seqs)
    if sequences is not None:
        shares.append(sequences)
    if window.kv_cache is not None:
        shares.append(window.kv_cache)
    if window.prompt_tokens_rate is not None and settings["prefill_tokens_per_s"]:
        shares.append(window.prompt_tokens_rate / settings["prefill_tokens_per_s"])
    return max(shares) if shares else None


def bound_grows(pool: PoolView) -> bool:
    """Whether the pool's time-to-first-token bound grows with the prompt: each request is then judged
    against its own bound (``PoolWindow.over_bound_share``), not the window's percentile against one."""
    return pool.sla_ms_per_1k_prompt_tokens > 0 and pool.sla_metric == "ttft"


def over_bound_allowed(pool: PoolView) -> float:
    """The share of requests the SLA lets exceed their bound: 0.05 for a P95 SLA."""
    return over_bound_share_allowed(pool.sla_percentile)


def over_bound_share_allowed(sla_percentile: int) -> float:
    """The share of requests an SLA at this percentile lets exceed their bound: 0.05 for P95. At
    ``scale_in_latency_ratio`` x this share a pool whose bound grows with the prompt has the margin a
    scale-in asks (``_comfortable``; the band recommendation reads the same margin)."""
    return (100 - sla_percentile) / 100


def _breaches(pool: PoolView, window: PoolWindow, settings: Mapping[str, Any]) -> list[str]:
    found = []
    if bound_grows(pool):
        share, allowed = window.over_bound_share, over_bound_allowed(pool)
        if share is not None and share > allowed:
            found.append(
                f"{share:.1%} of requests over their TTFT bound ({pool.sla_latency_ms} ms + "
                f"{pool.sla_ms_per_1k_prompt_tokens:g} ms per 1k prompt tokens) > {allowed:.0%}"
            )
    elif window.latency_ms is not None and window.latency_ms > pool.sla_latency_ms:
        found.append(f"P{pool.sla_percentile} {pool.sla_metric} {window.latency_ms:.0f} ms > {pool.sla_latency_ms} ms")
    e2e, e2e_bound = window.e2e_latency_ms, pool.sla_e2e_latency_ms
    if e2e is not None and e2e_bound is not None and e2e > e2e_bound:
        found.append(f"P{pool.sla_percentile} e2e {e2e:.0f} ms > {e2e_bound} ms")
    if window.queue is not None and window.queue > settings["queue_threshold"]:
        found.append(f"queue {window.queue:g} > {settings['queue_threshold']}")
    load = window_load(pool, window, settings)
    if load is not None and load > pool.util_band_high:
        found.append(f"load {load:.0%} > {pool.util_band_high:.0%}")
    return found


def one_fewer_load(load: float, serving: int) -> float:
    """The scale-in's guess of the load on one of ``serving`` instances fewer: the load spread over the rest."""
    return load * serving / max(serving - 1, 1)


def _comfortable(pool: PoolView, window: PoolWindow, settings: Mapping[str, Any], serving: int) -> bool:
    """Under the band, and still inside it once one of ``serving`` instances has gone (its load
    spread over the rest, times ``scale_in_load_margin``), so that a scale-in does not call for the
    next scale-out."""
    load = window_load(pool, window, settings)
    if load is None or load >= pool.util_band_low:
        return False
    if one_fewer_load(load, serving) * settings["scale_in_load_margin"] > pool.util_band_high:
        return False
    if window.queue is not None and window.queue > settings["scale_in_max_queue"]:
        return False
    ratio = settings["scale_in_latency_ratio"]
    e2e, e2e_bound = window.e2e_latency_ms, pool.sla_e2e_latency_ms
    if e2e is not None and e2e_bound is not None and e2e > ratio * e2e_bound:
        return False
    if bound_grows(pool):
        share = window.over_bound_share
        return share is None or share <= ratio * over_bound_allowed(pool)
    return window.latency_ms is None or window.latency_ms <= ratio * pool.sla_latency_ms


def windows_since_last_action(pool: PoolView) -> tuple[PoolWindow, ...]:
    """The pool's windows that began at or after its last scale-out or scale-in: the only ones that
    measured the pool as that action left it (a window straddling it measured the fleet before)."""
    last = max((m for m in (pool.last_scale_out_at, pool.last_scale_in_at) if m is not None), default=None)
    return pool.windows if last is None else tuple(w for w in pool.windows if w.start >= last)


def scale_in_reversals(moves: Sequence[tuple[datetime, str]], within_s: float) -> int:
    """How many of the pool's last scale-ins in a row were undone: each followed, before any other move and
    within ``within_s``, by a scale-out. ``moves``: (when, "scale_out" or "scale_in"), oldest first. A
    scale-in not (yet) followed by a scale-out ends the count, so one that holds clears the back-off."""
    count = 0
    after: tuple[datetime, str] | None = None
    for moment, action in reversed(moves):
        if action == "scale_in":
            if after is None or after[1] != "scale_out" or (after[0] - moment).total_seconds() > within_s:
                break
            count += 1
        after = (moment, action)
    return count


def scale_in_cooldown(settings: Mapping[str, Any], reversals: int) -> float:
    """The seconds a scale-in waits after the pool's last scale-out or scale-in: ``scale_in_cooldown_s``,
    doubled for each of ``reversals`` undone scale-ins in a row, up to ``scale_in_backoff_max_s`` (0: never
    doubled; a cap under the cool-down leaves the cool-down as it is)."""
    base, cap = float(settings["scale_in_cooldown_s"]), float(settings["scale_in_backoff_max_s"])
    if reversals <= 0 or cap <= base:
        return base
    return min(base * (1 << min(reversals, 32)), cap)


def _since(now: datetime, moment: datetime | None) -> float:
    return float("inf") if moment is None else (now - moment).total_seconds()


def autoscale(snapshot: FleetSnapshot, config: PolicyConfig, now: datetime) -> list[Action]:
    actions: list[Action] = []
    for pool in snapshot.pools:
        settings = config.for_pool(pool.id)
        if settings is not None:
            actions.extend(_pool(snapshot, pool, settings, config.policy_id(pool.id), now))
    return actions


def _pool(
    snapshot: FleetSnapshot, pool: PoolView, settings: Mapping[str, Any], policy_id: int | None, now: datetime
) -> list[Action]:
    instances = snapshot.instances_of(pool.id)
    serving = [i for i in instances if i.desired_state == RUNNING]
    active = [i for i in instances if i.desired_state != STOPPED]
    if len(serving) < pool.min_instances:
        reason = f"pool {pool.name} has {len(serving)} serving instance(s), minimum {pool.min_instances}"
        return _out(snapshot, pool, reason, policy_id, (), settings)
    if len(active) > pool.max_instances:
        reason = f"pool {pool.name} has {len(active)} instances, maximum {pool.max_instances}"
        surplus = [i for i in active if i.desired_state != RUNNING or len(serving) > pool.min_instances]
        return _in(pool, surplus, reason, policy_id, (), settings)
    fresh = windows_since_last_action(pool)
    count = int(settings["breach_windows"])
    windows = fresh[-count:]
    since_out = _since(now, pool.last_scale_out_at)
    since_last = min(since_out, _since(now, pool.last_scale_in_at))
    breaches = [_breaches(pool, window, settings) for window in windows]
    if len(windows) == count and all(breaches):
        if len(active) >= pool.max_instances or since_out < settings["scale_out_cooldown_s"]:
            return []
        reason = f"pool {pool.name} in breach for {count} window(s): {'; '.join(breaches[-1])}"
        return _out(snapshot, pool, reason, policy_id, windows, settings)
    calm = int(settings["scale_in_windows"])
    windows = fresh[-calm:]
    if (
        len(windows) == calm
        and all(_comfortable(pool, window, settings, len(serving)) for window in windows)
        and len(serving) > max(pool.min_instances, 1)
    ):
        # The one cool-down check: ``scale_in_cooldown_s``, backed off after undone scale-ins.
        reversals = scale_in_reversals(pool.scale_moves, settings["scale_in_backoff_max_s"])
        cooldown = scale_in_cooldown(settings, reversals)
        if since_last < cooldown:
            return []
        last = windows[-1]
        load = window_load(pool, last, settings) or 0.0  # measured: ``_comfortable`` passed this window
        latency = "no latency measured" if last.latency_ms is None else f"latency {last.latency_ms:.0f} ms"
        reason = (
            f"pool {pool.name} under its band for {calm} window(s): load {load:.0%} "
            f"< {pool.util_band_low:.0%}, {latency}, queue {last.queue or 0:g}"
        )
        margin = settings["scale_in_load_margin"]
        if margin != 1:
            guess = one_fewer_load(load, len(serving))
            reason = (
                f"{reason}; {len(serving) - 1} instance(s) would carry {guess:.0%}, x margin {margin:g} <= "
                f"{pool.util_band_high:.0%}"
            )
        if cooldown > settings["scale_in_cooldown_s"]:
            reason = (
                f"{reason}; cool-down backed off to {cooldown:.0f} s: the last {reversals} scale-in(s) were undone "
                f"within {settings['scale_in_backoff_max_s']:g} s"
            )
        return _in(pool, serving, reason, policy_id, windows, settings)
    return []


def _window_inputs(
    pool: PoolView, windows: tuple[PoolWindow, ...], settings: Mapping[str, Any]
) -> list[dict[str, Any]]:
    return [
        {
            "end": w.end.isoformat(),
            "load": window_load(pool, w, settings),
            "utilization": w.utilization,
            "running": w.running,
            "kv_cache": w.kv_cache,
            "prompt_tokens_rate": w.prompt_tokens_rate,
            "queue": w.queue,
            "latency_ms": w.latency_ms,
            "e2e_latency_ms": w.e2e_latency_ms,
            "over_bound_share": w.over_bound_share,
        }
        for w in windows
    ]


def _out(
    snapshot: FleetSnapshot,
    pool: PoolView,
    reason: str,
    policy_id: int | None,
    windows: tuple[PoolWindow, ...],
    settings: Mapping[str, Any],
) -> list[Action]:
    """One more serving instance; nothing where placement refuses (the refusal is the gateway's to show)."""
    planned = pool_wake_actions(snapshot, pool_id=pool.id, kind=KIND, reason=reason, policy_id=policy_id)
    if isinstance(planned, PlacementRefused):
        return []
    return [
        replace(
            action,
            action="scale_out",
            inputs={**action.inputs, "via": action.action, "windows": _window_inputs(pool, windows, settings)},
        )
        for action in planned
    ]


def _in(
    pool: PoolView,
    candidates: list[InstanceView],
    reason: str,
    policy_id: int | None,
    windows: tuple[PoolWindow, ...],
    settings: Mapping[str, Any],
) -> list[Action]:
    """Stop the least recently used instance that is not busy; if all are, drain the least loaded
    one where the settings allow it, else none."""
    quiet = [i for i in candidates if not i.busy]
    if quiet:
        chosen = min(quiet, key=lambda i: (i.idle_since, i.id))
    elif candidates and settings["scale_in_drain"]:
        chosen = min(candidates, key=lambda i: (i.in_flight, i.idle_since, i.id))
        reason = f"{reason}; draining {chosen.in_flight:g} request(s) in flight"
    else:
        return []
    return [
        DesireInstance(
            kind=KIND,
            action="scale_in",
            reason=f"{reason}; stopping instance {chosen.id}",
            inputs={
                "pool": pool.name,
                "windows": _window_inputs(pool, windows, settings),
                "idle_since": chosen.idle_since.isoformat(),
            },
            policy_id=policy_id,
            instance_id=chosen.id,
            pool_id=pool.id,
            generation=chosen.generation,
            state=STOPPED,
        )
    ]
