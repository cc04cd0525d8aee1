"""What policies return: intended changes of desired state, each with its reason and inputs.

Actions carry the generation (or count) the policy saw, so applying one is a claim: if
the fleet changed in between, the service refuses it and nothing happens twice.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


@dataclass(frozen=True, kw_only=True)
class ActionBase:
    kind: str
    action: str
    reason: str
    inputs: Mapping[str, Any] = field(default_factory=dict)
    policy_id: int | None = None


@dataclass(frozen=True, kw_only=True)
class DesireInstance(ActionBase):
    """Set an existing instance's desired state (sleep, stop, wake, start again)."""

    instance_id: int
    pool_id: int
    generation: int
    state: str


@dataclass(frozen=True, kw_only=True)
class LaunchInstance(ActionBase):
    """Create an instance on a device placement chose; ``active_seen`` is the pool's count it saw."""

    pool_id: int
    gpu_id: int
    mig_device_id: int | None
    active_seen: int
    expires_at: datetime | None = None


@dataclass(frozen=True, kw_only=True)
class StartBatchJob(ActionBase):
    job_id: int
    generation: int
    gpu_id: int


@dataclass(frozen=True, kw_only=True)
class PreemptBatchJob(ActionBase):
    job_id: int
    generation: int
    gpu_id: int


@dataclass(frozen=True, kw_only=True)
class StopOrphan(ActionBase):
    orphan_id: int
    node_id: int


@dataclass(frozen=True, kw_only=True)
class PoolDecision(ActionBase):
    """A decision about a pool that changes no desired state, only logged: the static-spend guard's
    refusals and its holds starting and ending (``fleet.policies.static_hold``)."""

    pool_id: int


Action = DesireInstance | LaunchInstance | StartBatchJob | PreemptBatchJob | StopOrphan | PoolDecision


def duration(seconds: float) -> str:
    """``612`` -> ``10 min 12 s``: how reasons state time, readable in the decision log."""
    whole = int(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes} min"
    if minutes:
        return f"{minutes} min {secs} s"
    return f"{secs} s"
