"""The reaper: instances past their time to live, and containers nobody asked for.

An instance with ``expires_at`` (a developer's test instance) is stopped once that time
passes, but not while requests are in flight: it is stopped at the first evaluation that
finds it quiet. A managed container an agent reports that no desired instance accounts
for is recorded at ingest; once it has been seen for ``orphan_grace_s`` the reaper asks
its node to stop it, through the ``stop_containers`` list of the node's next reply.
"""

from __future__ import annotations

from datetime import datetime

from fleet.policies.actions import Action, DesireInstance, StopOrphan, duration
from fleet.policies.snapshot import FleetSnapshot, PolicyConfig
from fleet.states import STOPPED

KIND = "reap"


def reap(snapshot: FleetSnapshot, config: PolicyConfig, now: datetime) -> list[Action]:
    actions: list[Action] = []
    for instance in snapshot.instances:
        if instance.expires_at is None or instance.desired_state == STOPPED or now < instance.expires_at:
            continue
        if config.for_pool(instance.pool_id) is None or instance.busy:
            continue
        pool = snapshot.pool(instance.pool_id)
        actions.append(
            DesireInstance(
                kind=KIND,
                action="expire",
                reason=f"instance {instance.id} of pool {pool.name} reached its time to live "
                f"({duration((now - instance.expires_at).total_seconds())} ago); stopping it",
                inputs={"expires_at": instance.expires_at.isoformat()},
                policy_id=config.policy_id(instance.pool_id),
                instance_id=instance.id,
                pool_id=instance.pool_id,
                generation=instance.generation,
                state=STOPPED,
            )
        )
    settings = config.fleet
    if settings is None:
        return actions
    grace = settings["orphan_grace_s"]
    for orphan in snapshot.orphans:
        seen_s = (now - orphan.first_seen_at).total_seconds()
        if orphan.stop_requested_at is not None or seen_s < grace:
            continue
        label = f" (labelled instance {orphan.instance_id})" if orphan.instance_id else ""
        actions.append(
            StopOrphan(
                kind=KIND,
                action="reap",
                reason=f"container {orphan.name or orphan.container_id[:12]}{label} unwanted for "
                f"{duration(seen_s)} (grace {duration(grace)}); asking its node to stop it",
                inputs={"container_id": orphan.container_id, "first_seen_at": orphan.first_seen_at.isoformat()},
                policy_id=config.policy_id(None),
                orphan_id=orphan.id,
                node_id=orphan.node_id,
            )
        )
    return actions
