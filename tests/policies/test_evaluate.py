"""The database side: the snapshot selector, applying actions through services, the schedule."""

from __future__ import annotations

from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import call_command
from django.utils import timezone
from django_celery_beat.models import PeriodicTask

from fleet import selectors
from fleet.decide.evaluate import Evaluation, action_record, policies_evaluate, pool_wake
from fleet.decide.services import StaleGeneration, batch_job_preempt, batch_job_start, instance_launch
from fleet.models import BatchJob, Decision, GpuSample, Instance, InstanceEvent, InstanceSample, Node, Policy
from fleet.policies.autoscale import SCALE_MOVES_HORIZON_S, SCALE_MOVES_KEPT
from fleet.policies.idle import idle_reclaim
from fleet.policies.placement import PlacementRefused
from fleet.schedules import EVALUATE_TASK
from tests.factories import GIB, make_gpu, make_instance, make_node, make_pool

pytestmark = pytest.mark.django_db


@pytest.fixture
def fleet():  # type: ignore[no-untyped-def]
    node = make_node()
    Node.objects.filter(pk=node.pk).update(status=Node.Status.ONLINE)
    gpu = make_gpu(node)
    pool = make_pool()
    return node, gpu, pool


def idle_instance(pool, gpu, idle_s: float = 660):  # type: ignore[no-untyped-def]
    now = timezone.now()
    instance = make_instance(pool, gpu, actual_state="ready")
    Instance.objects.filter(pk=instance.pk).update(
        ready_at=now - timedelta(hours=1),
        desired_changed_at=now - timedelta(hours=1),
        last_request_at=now - timedelta(seconds=idle_s),
    )
    GpuSample.objects.create(gpu=gpu, at=now - timedelta(seconds=5), utilization_gpu_pct=3, memory_used_bytes=22 * GIB)
    InstanceSample.objects.create(
        instance=instance, at=now - timedelta(seconds=5), state="ready", requests_running=0, requests_waiting=0
    )
    return Instance.objects.get(pk=instance.pk)


def test_the_snapshot_reads_latest_telemetry_foreign_memory_latency_and_history(fleet) -> None:  # type: ignore[no-untyped-def]
    _node, gpu, pool = fleet
    now = timezone.now()
    instance = make_instance(pool, gpu, actual_state="ready")
    GpuSample.objects.create(gpu=gpu, at=now - timedelta(seconds=70), utilization_gpu_pct=90, memory_used_bytes=GIB)
    GpuSample.objects.create(
        gpu=gpu, at=now - timedelta(seconds=10), utilization_gpu_pct=40, memory_used_bytes=23 * GIB
    )
    histogram = {"bounds": [0.1, 0.5, 1.0], "counts": [50, 90, 100], "count": 100}
    InstanceSample.objects.create(
        instance=instance,
        at=now - timedelta(seconds=10),
        state="ready",
        requests_running=2,
        requests_waiting=1,
        ttft_histogram=histogram,
    )
    start = now - timedelta(days=1)
    for offset, took in ((0, 40), (600, 60)):
        InstanceEvent.objects.create(instance=instance, at=start + timedelta(seconds=offset), state="starting")
        InstanceEvent.objects.create(instance=instance, at=start + timedelta(seconds=offset + took), state="ready")
    Decision.objects.create(policy_kind="autoscale", pool=pool, action="scale_out", reason="r")

    snapshot = selectors.fleet_snapshot(now=now)

    [view] = snapshot.gpus
    assert (view.utilization_pct, view.memory_used_bytes, view.node_online) == (40, 23 * GIB, True)
    assert view.foreign_memory_bytes == 23 * GIB - int(24 * GIB * 0.9)  # NVML's figure beyond our budget
    [seen] = snapshot.instances
    assert (seen.requests_running, seen.requests_waiting, seen.busy) == (2, 1, True)
    [pool_view] = snapshot.pools
    assert pool_view.windows[-1].latency_ms == pytest.approx(750)
    assert pool_view.windows[-1].utilization == pytest.approx(0.40)
    assert pool_view.windows[-2].utilization == pytest.approx(0.90)
    assert pool_view.windows[-1].queue == 1
    assert pool_view.cold_start_s == 50
    assert pool_view.last_scale_out_at is not None and pool_view.last_scale_in_at is None
    assert pool_view.estimate is not None and pool_view.estimate.kv_tokens == 8192


def test_the_snapshot_carries_each_pools_scale_moves_from_its_decisions(fleet) -> None:  # type: ignore[no-untyped-def]
    """Autoscale's scale-in back-off reads a pool's newest scale-outs and scale-ins, autoscale's and the
    gateway's, oldest first: not other actions, other pools' moves, moves from the future, nor those older
    than the horizon; at most ``SCALE_MOVES_KEPT`` of them."""
    _node, _gpu, pool = fleet
    other = make_pool(name="other")
    now = timezone.now()

    def logged(seconds_ago: float, action: str, kind: str = "autoscale", of=pool) -> None:  # type: ignore[no-untyped-def]
        decision = Decision.objects.create(policy_kind=kind, pool=of, action=action, reason="r")
        Decision.objects.filter(pk=decision.pk).update(created_at=now - timedelta(seconds=seconds_ago))

    logged(SCALE_MOVES_HORIZON_S + 60, "scale_in")  # past the horizon
    logged(900, "scale_in")
    logged(890, "scale_out", kind="gateway")
    logged(800, "stop", kind="idle_reclaim")
    logged(700, "scale_in", of=other)
    logged(600, "scale_in")
    logged(-60, "scale_out")  # a minute ahead of the snapshot's now

    view = selectors.fleet_snapshot(now=now).pool(pool.pk)
    assert view.scale_moves == (
        (now - timedelta(seconds=900), "scale_in"),
        (now - timedelta(seconds=890), "scale_out"),
        (now - timedelta(seconds=600), "scale_in"),
    )
    for back in range(SCALE_MOVES_KEPT + 5):
        logged(500 - back, "scale_out")
    kept = selectors.fleet_snapshot(now=now).pool(pool.pk).scale_moves
    assert len(kept) == SCALE_MOVES_KEPT and kept[-1] == (
        now - timedelta(seconds=500 - SCALE_MOVES_KEPT - 4),
        "scale_out",
    )


def test_the_snapshot_windows_carry_vllm_load_figures_as_means_per_instance(fleet) -> None:  # type: ignore[no-untyped-def]
    _node, gpu, pool = fleet
    now = timezone.now()
    first, second = make_instance(pool, gpu, actual_state="ready"), make_instance(pool, gpu, actual_state="ready")
    for instance, figures in (
        (first, [(10, 0.2, 1000.0), (30, 0.4, 3000.0)]),
        (second, [(4, 0.1, 6000.0)]),
    ):
        for back, (running, kv, prompt_rate) in enumerate(figures):
            InstanceSample.objects.create(
                instance=instance,
                at=now - timedelta(seconds=10 + 5 * back),
                state="ready",
                requests_running=running,
                requests_waiting=back,
                kv_cache_usage=kv,
                prompt_tokens_rate=prompt_rate,
            )

    [pool_view] = selectors.fleet_snapshot(now=now).pools

    last = pool_view.windows[-1]
    assert last.running == pytest.approx((20 + 4) / 2)  # each instance's mean, averaged
    assert last.kv_cache == pytest.approx((0.3 + 0.1) / 2)
    assert last.prompt_tokens_rate == pytest.approx((2000 + 6000) / 2)
    assert last.queue == pytest.approx(0.5 + 0)  # the queue is the pool's: summed
    assert pool_view.max_num_seqs == pool.model_profile.max_num_seqs
    assert pool_view.windows[-2].running is None


def test_an_evaluation_stops_an_idle_instance_once_with_its_decision(fleet, in_memory_channel_layer) -> None:  # type: ignore[no-untyped-def]
    _node, gpu, pool = fleet
    instance = idle_instance(pool, gpu)

    first = policies_evaluate(kinds=["idle_reclaim"])
    second = policies_evaluate(kinds=["idle_reclaim"])

    instance.refresh_from_db()
    assert (instance.desired_state, instance.generation) == ("stopped", 2)
    [decision] = first.applied
    assert second.applied == []
    assert decision.policy == Policy.objects.get(kind="idle_reclaim", pool=None)
    assert decision.reason == f"pool chat-l idle for 11 min 0 s; stopping instance {instance.pk}"
    assert decision.inputs["duty_cycle_pct"] == 3


def test_two_workers_with_the_same_snapshot_apply_the_action_once(fleet) -> None:  # type: ignore[no-untyped-def]
    _node, gpu, pool = fleet
    instance = idle_instance(pool, gpu)
    snapshot = selectors.fleet_snapshot()
    configs = selectors.policy_configs()
    actions = idle_reclaim(snapshot, configs["idle_reclaim"], snapshot.at)
    worker_a, worker_b = Evaluation(), Evaluation()
    for worker in (worker_a, worker_b):
        for action in actions:
            action_record(action=action, policies={}, into=worker)
    assert (len(worker_a.applied), len(worker_b.applied), len(worker_b.stale)) == (1, 0, 1)
    assert Decision.objects.filter(instance=instance).count() == 1


def test_a_launch_claims_the_pools_count(fleet) -> None:  # type: ignore[no-untyped-def]
    _node, gpu, pool = fleet
    instance_launch(pool=pool, gpu=gpu, mig_device=None, active_seen=0, reason="r", action="launch", kind="autoscale")
    with pytest.raises(StaleGeneration):
        instance_launch(
            pool=pool, gpu=gpu, mig_device=None, active_seen=0, reason="r", action="launch", kind="autoscale"
        )
    assert Instance.objects.filter(pool=pool).count() == 1


def test_a_pool_woken_from_zero_gets_a_placed_instance_or_the_reason_why_not(fleet) -> None:  # type: ignore[no-untyped-def]
    _node, gpu, pool = fleet
    decision = pool_wake(pool=pool, reason="request for qwen3-4b-chat")
    assert not isinstance(decision, PlacementRefused)
    assert (decision.action, decision.policy_kind, decision.instance.gpu) == ("launch", "gateway", gpu)
    other = make_pool("chat-l2")
    refused = pool_wake(pool=other, reason="request")
    assert isinstance(refused, PlacementRefused)
    assert "promised" in refused.message and "needs 10.1 GiB" in refused.message


def test_batch_jobs_start_and_preempt_by_claim(fleet) -> None:  # type: ignore[no-untyped-def]
    _node, gpu, _pool = fleet
    job = BatchJob.objects.create(name="clean", image="cleaner:1", memory_bytes=GIB)
    stale = BatchJob.objects.get(pk=job.pk)
    batch_job_start(job=job, gpu=gpu, reason="room", kind="colocate")
    with pytest.raises(StaleGeneration):
        batch_job_start(job=stale, gpu=gpu, reason="room", kind="colocate")
    job.refresh_from_db()
    batch_job_preempt(job=job, reason="load", kind="colocate")
    job.refresh_from_db()
    assert (job.state, job.preemptions, job.generation) == ("preempted", 1, 3)
    assert list(Decision.objects.filter(batch_job=job).values_list("action", flat=True)) == ["preempt", "colocate"]


def test_ended_jobs_are_out_of_the_policies_snapshot() -> None:
    for state in ("done", "failed", "queued"):
        BatchJob.objects.create(name=state, image="cleaner:1", memory_bytes=GIB, state=state)
    assert [job.state for job in selectors.fleet_snapshot().batch_jobs] == ["queued"]


def test_policy_configs_take_pool_overrides_and_give_invalid_settings_the_defaults(fleet) -> None:  # type: ignore[no-untyped-def]
    _node, _gpu, pool = fleet
    other = make_pool("chat-l2")
    Policy.objects.create(kind="idle_reclaim", pool=pool, settings={"sleep_level": 2})
    Policy.objects.create(kind="idle_reclaim", pool=other, enabled=False)
    Policy.objects.filter(kind="autoscale", pool=None).update(settings={"breach_windows": "many"})
    configs = selectors.policy_configs()
    assert configs["idle_reclaim"].for_pool(pool.pk)["sleep_level"] == 2
    assert configs["idle_reclaim"].for_pool(other.pk) is None
    assert configs["idle_reclaim"].for_pool(None)["sleep_level"] == 1
    assert configs["autoscale"].for_pool(pool.pk)["breach_windows"] == 2  # the default


def test_prewarm_reads_request_times_from_an_injected_source(fleet) -> None:  # type: ignore[no-untyped-def]
    _node, gpu, pool = fleet
    now = timezone.now().replace(second=0, microsecond=0)
    slot = now.replace(minute=now.minute - now.minute % 15) + timedelta(minutes=15)
    evaluate_at = slot - timedelta(seconds=100)  # default cold start 120 s + margin 30 s covers it
    history = [slot - timedelta(days=d) + timedelta(seconds=s) for d in range(1, 22) for s in range(0, 50, 5)]
    seen: list[list[int]] = []

    def source(pool_ids, since, until):  # type: ignore[no-untyped-def]
        seen.append(pool_ids)
        return {pool.pk: history}

    evaluation = policies_evaluate(now=evaluate_at, kinds=["prewarm"], request_times=source)
    [decision] = evaluation.applied
    assert seen == [[pool.pk]]
    assert decision.action == "launch" and f"traffic predicted from {slot:%H:%M}" in decision.reason
    assert Instance.objects.get(pool=pool).gpu == gpu


def test_the_schedule_is_in_the_database_and_runs_in_process_without_a_broker(fleet) -> None:  # type: ignore[no-untyped-def]
    task = PeriodicTask.objects.get(name=EVALUATE_TASK)
    assert (task.task, task.interval.every, task.interval.period) == (EVALUATE_TASK, 30, "seconds")
    out = StringIO()
    call_command("fleet_schedule", stdout=out)
    assert "0 periodic task(s) created" in out.getvalue()
    assert PeriodicTask.objects.filter(name=EVALUATE_TASK).count() == 1
    _node, gpu, pool = fleet
    instance = idle_instance(pool, gpu)
    call_command("fleet_schedule", "--loop", "--once", stdout=out)
    instance.refresh_from_db()
    assert instance.desired_state == "stopped"
    assert PeriodicTask.objects.get(name=EVALUATE_TASK).total_run_count == 1
