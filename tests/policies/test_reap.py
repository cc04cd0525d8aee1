"""The reaper: time-to-live expiry and orphan containers after their grace period."""

from __future__ import annotations

from fleet.policies.actions import StopOrphan
from fleet.policies.reap import reap
from fleet.policies.snapshot import OrphanView
from tests.policies.builders import NOW, ago, config, instance, pool, snapshot


def test_instances_stop_at_their_expiry_not_before_and_not_while_busy() -> None:
    instances = [
        instance(1, expires_at=NOW),
        instance(2, expires_at=ago(-1)),
        instance(3, expires_at=ago(10), requests_running=1),
        instance(4, expires_at=ago(10), desired_state="stopped"),
        instance(5),
    ]
    actions = reap(snapshot(pools=[pool()], instances=instances), config("reap"), NOW)
    assert [(a.instance_id, a.state) for a in actions] == [(1, "stopped")]


def test_orphans_are_reaped_after_the_grace_period_once() -> None:
    orphans = [
        OrphanView(id=1, node_id=1, container_id="a" * 64, first_seen_at=ago(600), name="gpufleet-7", instance_id=7),
        OrphanView(id=2, node_id=1, container_id="b" * 64, first_seen_at=ago(599)),
        OrphanView(id=3, node_id=1, container_id="c" * 64, first_seen_at=ago(9000), stop_requested_at=ago(10)),
    ]
    actions = reap(snapshot(orphans=orphans), config("reap"), NOW)
    assert actions == [
        StopOrphan(
            kind="reap",
            action="reap",
            reason="container gpufleet-7 (labelled instance 7) unwanted for 10 min 0 s (grace 10 min 0 s); "
            "asking its node to stop it",
            inputs={"container_id": "a" * 64, "first_seen_at": ago(600).isoformat()},
            policy_id=99,
            orphan_id=1,
            node_id=1,
        )
    ]
    assert reap(snapshot(orphans=orphans), config("reap", orphan_grace_s=0), NOW)[-1].orphan_id == 2
