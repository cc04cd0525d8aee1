"""Scale-out the moment the gateway sees pressure, not at the next policy evaluation.

The gateway counts each ready instance's outstanding requests (``Picker.outstanding``) and the
requests it holds. When those, spread over the pool's ready instances, reach the top of the
pool's autoscale band in sequences (``autoscale.sequence_load``: per instance, against
``max_num_seqs``), the pool needs one more instance now: the evaluation every 30 s and its
breach windows would add it a minute or more later. The scale-out itself is autoscale's
(``pool_wake_actions``: wake a sleeping instance, start a stopped one or place a new one),
logged as the gateway's, and shares autoscale's scale-out cool-down through the pool's
``last_scale_out_at``: whichever of the two acts first, the other waits out the cool-down.

Pure: the gateway (``fleet.gateway.app``) asks ``pressure_scale_out`` on every request, from
counters it keeps anyway; its database worker then plans with ``pressure_actions`` on a fresh
snapshot; the trace simulator calls both at the same moments.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from datetime import datetime
from typing import Any

from fleet.policies.actions import Action
from fleet.policies.autoscale import sequence_load
from fleet.policies.placement import PlacementRefused, pool_wake_actions
from fleet.policies.snapshot import FleetSnapshot
from fleet.states import READY, RUNNING, STOPPED

KIND = "gateway"


def pressure_scale_out(
    *,
    pool_name: str,
    max_num_seqs: int,
    util_band_high: float,
    ready: int,
    serving: int,
    active: int,
    max_instances: int,
    outstanding: int,
    held: int = 0,
) -> str | None:
    """Why the pool needs one more instance now, or None.

    ``ready``: instances the gateway routes to; ``serving``: those desired running (ready or
    on their way); ``active``: all not desired stopped (sleeping ones too); ``outstanding``: the
    requests the gateway has sent to the ready ones and not yet seen end; ``held``: requests
    waiting for the pool. Nothing without a ready instance (waking an empty pool is the
    hold's wake-up), while another instance is already on its way (``serving > ready``), or at
    ``max_instances``.
    """
    if ready <= 0 or serving > ready or active >= max_instances:
        return None
    load = sequence_load((outstanding + held) / ready, max_num_seqs)
    if load is None or load < util_band_high:
        return None
    waiting = f" and {held} held" if held else ""
    return (
        f"gateway sees {outstanding} outstanding{waiting} request(s) on {ready} ready instance(s) of pool "
        f"{pool_name}: load {load:.0%} of max_num_seqs {max_num_seqs} >= band top {util_band_high:.0%}"
    )


def pressure_actions(
    snapshot: FleetSnapshot,
    *,
    pool_id: int,
    settings: Mapping[str, Any] | None,
    now: datetime,
    reason: str,
    inputs: Mapping[str, Any] | None = None,
) -> list[Action]:
    """The scale-out the gateway asked for, as autoscale would make it, or none.

    None where autoscale is off for the pool (``settings`` None), within its scale-out
    cool-down of the last scale-out (autoscale's or the gateway's), while an instance is on
    its way (desired running, not ready) or where placement refuses; the action claims what
    it read (the pool's active count, or the sleeping instance's generation), so two
    gateways asking at once scale out once.
    """
    if settings is None or pool_id not in {pool.id for pool in snapshot.pools}:
        return []
    pool = snapshot.pool(pool_id)
    last = pool.last_scale_out_at
    if last is not None and (now - last).total_seconds() < settings["scale_out_cooldown_s"]:
        return []
    instances = snapshot.instances_of(pool_id)
    if any(i.desired_state == RUNNING and i.actual_state != READY for i in instances):
        return []
    if sum(1 for i in instances if i.desired_state != STOPPED) >= pool.max_instances:
        return []
    planned = pool_wake_actions(snapshot, pool_id=pool_id, kind=KIND, reason=reason)
    if isinstance(planned, PlacementRefused):
        return []
    return [
        replace(action, action="scale_out", inputs={**action.inputs, **(inputs or {}), "via": action.action})
        for action in planned
    ]
