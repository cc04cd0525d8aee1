"""A batch job on a sleeping card, against the database: started and logged, then preempted first by the wake."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from fleet.decide.evaluate import policies_evaluate, pool_wake
from fleet.decide.services import StaleGeneration, batch_job_start, instance_desire
from fleet.models import BatchJob, Decision, GpuSample, Instance, Node
from fleet.selectors import fleet_snapshot, gpu_foreign_bytes
from tests.factories import GIB, make_gpu, make_instance, make_node, make_pool

pytestmark = pytest.mark.django_db

# The L4 of the factories: 24 GiB; the chat preset's budget is 0.9 of it.
BUDGET = int(24 * GIB * 0.9)


@pytest.fixture
def card():  # type: ignore[no-untyped-def]
    node = make_node()
    Node.objects.filter(pk=node.pk).update(status=Node.Status.ONLINE)
    gpu = make_gpu(node)
    GpuSample.objects.create(
        gpu=gpu, at=timezone.now() - timedelta(seconds=5), utilization_gpu_pct=0, memory_used_bytes=GIB
    )
    return gpu


def sleeping(pool, gpu):  # type: ignore[no-untyped-def]
    return make_instance(pool, gpu, desired_state="sleeping", actual_state="sleeping")


def test_an_evaluation_starts_a_job_on_a_sleeping_exclusive_card_and_logs_the_loan(card) -> None:  # type: ignore[no-untyped-def]
    instance = sleeping(make_pool(isolation="exclusive"), card)
    job = BatchJob.objects.create(name="embed", image="embedder:1", memory_bytes=16 * GIB)

    evaluation = policies_evaluate(kinds=["colocate"])

    [decision] = evaluation.applied
    job.refresh_from_db()
    assert (job.state, job.gpu_id) == ("running", card.pk)
    # Free: 24 - max(1 used, 21.6 promised - 21.6 lent + 1 foreign) = 23 GiB >= 16 + 4 margin.
    assert decision.inputs["free_bytes"] == 23 * GIB
    assert decision.inputs["lent_bytes"] == BUDGET
    assert decision.inputs["sleeping_instances"] == [instance.pk]
    assert f"its instances sleep ({instance.pk})" in decision.reason


def test_the_gateways_wake_preempts_the_job_first_in_the_same_change(card) -> None:  # type: ignore[no-untyped-def]
    pool = make_pool(isolation="exclusive")
    instance = sleeping(pool, card)
    job = BatchJob.objects.create(name="embed", image="embedder:1", memory_bytes=16 * GIB)
    policies_evaluate(kinds=["colocate"])

    wake = pool_wake(pool=pool, reason="a request for chat-l is held")
    assert isinstance(wake, Decision)

    job.refresh_from_db()
    instance.refresh_from_db()
    assert (job.state, job.preemptions, instance.desired_state) == ("preempted", 1, "running")
    preempt = Decision.objects.get(batch_job=job, action="preempt")
    assert preempt.pk < wake.pk  # logged before the wake, in its transaction
    assert (preempt.policy_kind, preempt.inputs["instance"], preempt.inputs["for"]) == ("gateway", instance.pk, "wake")
    assert preempt.reason.startswith(f"batch job {job.pk} preempted and requeued: instance {instance.pk}")
    # The card is no longer asleep: the requeued job does not go back on it.
    assert policies_evaluate(kinds=["colocate"]).applied == []


def test_a_wake_on_a_shared_card_preempts_only_what_no_longer_fits(card) -> None:  # type: ignore[no-untyped-def]
    instance = sleeping(make_pool(), card)
    small = BatchJob.objects.create(name="small", image="j:1", memory_bytes=2 * GIB, state="running", gpu=card)
    instance_desire(instance=instance, state="running", reason="wake", action="wake", kind="manual")
    small.refresh_from_db()
    assert small.state == "running"  # 21.6 budget + 2 GiB <= 24 GiB

    instance.refresh_from_db()
    instance_desire(instance=instance, state="sleeping", reason="sleep", action="sleep", kind="manual")
    Instance.objects.filter(pk=instance.pk).update(actual_state="sleeping")
    instance.refresh_from_db()
    big = BatchJob.objects.create(name="big", image="j:1", memory_bytes=GIB, state="running", gpu=card)
    instance_desire(instance=instance, state="running", reason="wake", action="wake", kind="manual")
    # 21.6 + 2 + 1 = 24.6 GiB > 24: the newest (big, same priority) goes, the small one fits again and stays.
    assert list(BatchJob.objects.order_by("pk").values_list("state", flat=True)) == ["running", "preempted"]
    assert big.pk == Decision.objects.get(action="preempt").batch_job_id


def test_a_sleep_or_a_stop_preempts_nothing(card) -> None:  # type: ignore[no-untyped-def]
    instance = make_instance(make_pool(isolation="exclusive"), card, actual_state="ready")
    BatchJob.objects.create(name="j", image="j:1", memory_bytes=GIB, state="running", gpu=card)
    instance_desire(instance=instance, state="sleeping", reason="idle", action="sleep", kind="idle_reclaim")
    instance.refresh_from_db()
    instance_desire(instance=instance, state="stopped", reason="idle", action="stop", kind="idle_reclaim")
    assert not Decision.objects.filter(action="preempt").exists()


def test_a_job_on_an_empty_card_gives_it_back_to_an_exclusive_launch(card) -> None:  # type: ignore[no-untyped-def]
    """Co-location puts work on a card no instance holds; an exclusive pool that needs the card
    launches there anyway, preempting the job in the launch's own change (it was refused: the
    job's 16 GiB left 8 of the card's 24 GiB free, under the 21.6 GiB budget)."""
    job = BatchJob.objects.create(name="embed", image="embedder:1", memory_bytes=16 * GIB)
    policies_evaluate(kinds=["colocate"])
    job.refresh_from_db()
    assert (job.state, job.gpu_id) == ("running", card.pk)
    pool = make_pool(isolation="exclusive")

    launch = pool_wake(pool=pool, reason="a request for chat-l is held")

    assert isinstance(launch, Decision), launch
    assert (launch.action, launch.instance.gpu_id) == ("launch", card.pk)
    assert "taking back memory lent to batch jobs (16.0 GiB running)" in launch.reason
    job.refresh_from_db()
    assert (job.state, job.preemptions) == ("preempted", 1)
    preempt = Decision.objects.get(batch_job=job, action="preempt")
    assert preempt.pk < launch.pk  # in the launch's transaction, before it
    assert (preempt.policy_kind, preempt.inputs["instance"], preempt.inputs["for"]) == (
        "gateway",
        launch.instance_id,
        "launch",
    )
    # The card now holds an exclusive instance: the requeued job does not go back on it.
    assert policies_evaluate(kinds=["colocate"]).applied == []


def test_a_job_start_decided_before_a_launch_on_its_card_finds_it_taken(card) -> None:  # type: ignore[no-untyped-def]
    """Co-location read the card empty and decided to start a job there, but the gateway launched an exclusive
    instance on it first: the start, applied after, reads the card again under its lock and is refused; the job
    stays queued and nothing is logged. Once that instance sleeps, the card lends again."""
    job = BatchJob.objects.create(name="embed", image="embedder:1", memory_bytes=16 * GIB)
    launch = pool_wake(pool=make_pool(isolation="exclusive"), reason="a request for chat-l is held")
    assert isinstance(launch, Decision)

    with pytest.raises(StaleGeneration, match=f"not started on GPU {card.pk}: exclusive instance {launch.instance_id}"):
        batch_job_start(job=job, gpu=card, reason="decided on the card empty", kind="colocate")

    job.refresh_from_db()
    assert (job.state, job.gpu_id, job.generation) == ("queued", None, 1)
    assert not Decision.objects.filter(batch_job=job).exists()
    Instance.objects.filter(pk=launch.instance_id).update(desired_state="sleeping", actual_state="sleeping")
    batch_job_start(job=job, gpu=card, reason="its instance sleeps", kind="colocate")
    job.refresh_from_db()
    assert (job.state, job.gpu_id) == ("running", card.pk)


def used(gpu, gib: float) -> None:  # type: ignore[no-untyped-def]
    """A fresh NVML reading of the card: ``gib`` GiB in use."""
    GpuSample.objects.create(gpu=gpu, at=timezone.now(), utilization_gpu_pct=0, memory_used_bytes=int(gib * GIB))


def test_a_launch_on_a_shared_card_counts_foreign_memory_as_its_placement_did(card) -> None:  # type: ignore[no-untyped-def]
    """A 2 GiB job and 1 GiB held by a process the fleet does not know on a 24 GiB card: a shared pool's
    21.6 GiB budget fits the card (23 GiB free) but not beside both, 21.6 + 1 + 2 = 24.6 > 24. Placement
    says the launch takes the memory back; the launch's own change preempts the job by the same count."""
    job = BatchJob.objects.create(name="small", image="j:1", memory_bytes=2 * GIB, state="running", gpu=card)
    used(card, 3)

    launch = pool_wake(pool=make_pool(), reason="a request for chat-l is held")

    assert isinstance(launch, Decision), launch
    assert "taking back memory lent to batch jobs (2.0 GiB running)" in launch.reason
    job.refresh_from_db()
    assert job.state == "preempted"
    preempt = Decision.objects.get(batch_job=job, action="preempt")
    assert (preempt.inputs["foreign_bytes"], preempt.inputs["budgets_bytes"]) == (GIB, BUDGET)
    assert "(1.0 GiB foreign) > 24.0 GiB on the card" in preempt.reason


def test_a_wakes_read_of_foreign_memory_is_the_snapshots(card) -> None:  # type: ignore[no-untyped-def]
    """One definition, two reads: the snapshot's, and a wake's from the rows it holds under the card's
    lock. 23 GiB used on the 24 GiB card, where a ready instance holds its 21.6 GiB budget, a sleeping
    one nothing and a running job 1 GiB: 23 - 21.6 - 1 = 0.4 GiB foreign. A ready instance of a
    disabled pool is not the fleet's to count: its memory is part of the foreign."""
    pool = make_pool()
    make_instance(pool, card, actual_state="ready")
    sleeping(pool, card)
    make_instance(make_pool("retired", enabled=False), card, actual_state="ready")
    BatchJob.objects.create(name="j", image="j:1", memory_bytes=GIB, state="running", gpu=card)
    used(card, 23)

    [view] = fleet_snapshot().gpus
    read = gpu_foreign_bytes(card, instances=Instance.objects.all(), jobs=BatchJob.objects.all())
    assert read == view.foreign_memory_bytes == 23 * GIB - BUDGET - GIB
