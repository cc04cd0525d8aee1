"""A decommissioned host keeps its billing history: its past spend, samples and rollups stay and still count."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from decimal import Decimal

import pytest
from django.db.models import ProtectedError
from django.utils import timezone

from fleet.costs.alerts import alerts_evaluate
from fleet.costs.money import money_cents
from fleet.costs.selectors import month_to_date, run_rate, savings_compute, spend_report
from fleet.decide.services import node_decommission
from fleet.models import Alert, AlertRule, Gpu, GpuHour, GpuMinute, GpuSample, Instance, InstanceEvent, Node
from fleet.telemetry.rollups import hours_rollup, minutes_rollup
from tests.costs.history import gpu_samples, price, states, utc
from tests.factories import make_gpu, make_instance, make_node, make_pool

pytestmark = pytest.mark.django_db

GPU = "Acme X1"  # a model no preset prices, so only this test's rates apply
DAY = (utc(2024, 3, 1), utc(2024, 3, 2))


def cents(amount: Decimal) -> str:
    return str(money_cents(amount))


def frozen(monkeypatch: pytest.MonkeyPatch, at: datetime) -> None:
    """``timezone.now()`` answers ``at``: the decommission happens at a chosen instant."""
    monkeypatch.setattr(timezone, "now", lambda: at)


@pytest.fixture
def history(settings) -> tuple[Node, Gpu]:  # type: ignore[no-untyped-def]
    """A host whose one GPU served 08:00-10:00 on 1 March 2024 and stayed up, unheld, to 11:00."""
    settings.FLEET_COST_SAMPLE_GAP_S = 900
    settings.FLEET_BILLING_TIMEZONE = "UTC"
    price(GPU, "2.0000", date(2024, 1, 1))
    node = make_node("rack1-h1")
    gpu = make_gpu(node, 0, model_name=GPU)
    instance = make_instance(make_pool(), gpu)
    states(instance, (utc(2024, 3, 1, 8), "ready"), (utc(2024, 3, 1, 10), "stopped"))
    gpu_samples(gpu, utc(2024, 3, 1, 8), utc(2024, 3, 1, 11), every_s=600, utilization=50.0)
    minutes_rollup(start=utc(2024, 3, 1, 8), end=utc(2024, 3, 1, 12))
    hours_rollup(start=utc(2024, 3, 1, 8), end=utc(2024, 3, 1, 12))
    return node, gpu


def kept(gpu: Gpu) -> tuple[int, int, int]:
    return (
        GpuSample.objects.filter(gpu=gpu).count(),
        GpuMinute.objects.filter(gpu=gpu).count(),
        GpuHour.objects.filter(gpu=gpu).count(),
    )


def test_decommissioning_keeps_the_past_spend_samples_and_rollups(history: tuple[Node, Gpu]) -> None:
    node, gpu = history
    # Held 08:00-10:00: 2 h x 2.00 = 4.00 allocated; up unheld 10:00-11:00: 1 h x 2.00 = 2.00; 6.00 in all.
    assert cents(spend_report(start=DAY[0], end=DAY[1]).total) == "6.00"
    # Samples every 10 min from 08:00 to 11:00 inclusive: 3 x 6 + 1 = 19, each in its own minute;
    # their hours are 08, 09, 10 and 11 (the 11:00 sample): 4 hour rows.
    assert kept(gpu) == (19, 19, 4)

    node_decommission(node=node)

    assert cents(spend_report(start=DAY[0], end=DAY[1]).total) == "6.00"
    assert kept(gpu) == (19, 19, 4)
    node.refresh_from_db()
    gpu.refresh_from_db()
    assert node.status == Node.Status.DECOMMISSIONED
    assert node.decommissioned_at is not None and gpu.decommissioned_at == node.decommissioned_at
    # Its month still holds it: 6.00 spent in March, nothing running now.
    march = month_to_date(now=utc(2024, 3, 15))
    assert (cents(march.spent), cents(march.run_rate.per_hour)) == ("6.00", "0.00")


def test_the_static_baseline_counts_a_decommissioned_gpu_only_until_it_left(
    history: tuple[Node, Gpu], monkeypatch: pytest.MonkeyPatch
) -> None:
    node, _gpu = history
    frozen(monkeypatch, utc(2024, 3, 1, 11))
    node_decommission(node=node)
    savings = savings_compute(start=DAY[0], end=DAY[1])
    # The GPU is new in the day: in the baseline from 08:00 until it left at 11:00, 3 h x 2.00 = 6.00,
    # not to the day's end (16 h x 2.00 = 32.00). Actual 6.00 (above), so nothing was saved.
    assert (cents(savings.baseline), cents(savings.actual), cents(savings.savings)) == ("6.00", "6.00", "0.00")


def test_deleting_a_host_with_history_is_refused_and_its_spend_stays(history: tuple[Node, Gpu]) -> None:
    node, gpu = history
    with pytest.raises(ProtectedError):
        node.delete()
    with pytest.raises(ProtectedError):
        Node.objects.filter(pk=node.pk).delete()  # as the demo reset used to
    with pytest.raises(ProtectedError):
        gpu.delete()
    # The same 6.00 as before the attempt (see the test above), and every row of its history.
    assert cents(spend_report(start=DAY[0], end=DAY[1]).total) == "6.00"
    assert kept(gpu) == (19, 19, 4)
    assert InstanceEvent.objects.filter(gpu=gpu).count() == 2


def test_no_spend_accrues_after_the_decommission(settings, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    settings.FLEET_COST_SAMPLE_GAP_S = 900
    price(GPU, "2.0000", date(2024, 1, 1))
    node = make_node("rack1-h2")
    Node.objects.filter(pk=node.pk).update(status=Node.Status.ONLINE)
    gpu = make_gpu(node, 0, model_name=GPU)
    instance = make_instance(make_pool(), gpu, actual_state="ready")
    states(instance, (utc(2024, 3, 1, 8), "ready"))
    gpu_samples(gpu, utc(2024, 3, 1, 8), utc(2024, 3, 1, 10), every_s=600)
    decommissioned = utc(2024, 3, 1, 10)
    # Before: the ready instance holds the whole GPU: 1 h x 2.00 = 2.00 an hour.
    assert cents(run_rate(now=decommissioned).per_hour) == "2.00"

    frozen(monkeypatch, decommissioned)
    node_decommission(node=node)

    # Held 08:00-10:00 = 2 h x 2.00 = 4.00, then nothing: the instance ended at 10:00, not at 14:00
    # (where it would be 6 h x 2.00 = 12.00).
    assert cents(spend_report(start=utc(2024, 3, 1, 8), end=utc(2024, 3, 1, 14)).total) == "4.00"
    assert spend_report(start=decommissioned, end=utc(2024, 3, 1, 14)).total == 0
    assert cents(run_rate(now=decommissioned).per_hour) == "0.00"
    instance.refresh_from_db()
    assert (instance.desired_state, instance.actual_state, instance.gpu_id) == ("stopped", "stopped", None)
    last = InstanceEvent.objects.filter(instance=instance).latest("at", "id")
    assert (last.state, last.at, last.gpu_id) == ("stopped", decommissioned, gpu.pk)


def test_a_decommissioned_host_raises_no_silent_node_alert_and_its_open_one_resolves() -> None:
    node = make_node("rack1-h3")
    now = timezone.now()
    Node.objects.filter(pk=node.pk).update(status=Node.Status.ONLINE, last_seen_at=now - timedelta(seconds=120))
    rule = AlertRule(
        name="silent nodes", kind="node_silent", threshold=Decimal(60), for_s=3600, email_to="ops@example.com"
    )
    rule.full_clean()
    rule.save()
    assert alerts_evaluate(now=now)["opened"] == 1  # silent 120 s > 60 s; pending for an hour before it fires

    node_decommission(node=node)

    alerts_evaluate(now=now)
    assert Alert.objects.get().state == "resolved"
    assert alerts_evaluate(now=now + timedelta(hours=2)) == {"opened": 0, "fired": 0, "resolved": 0}


def test_a_decommissioned_gpu_is_no_candidate_for_placement() -> None:
    from fleet.selectors import fleet_snapshot

    live, gone = make_node("rack1-h4"), make_node("rack1-h5")
    Node.objects.update(status=Node.Status.ONLINE)
    kept_gpu, gone_gpu = make_gpu(live, 0), make_gpu(gone, 0)
    sleeping = make_instance(make_pool(), gone_gpu, desired_state="sleeping", actual_state="sleeping")

    node_decommission(node=gone)

    assert [view.id for view in fleet_snapshot().gpus] == [kept_gpu.pk]
    # A sleeping instance there would otherwise be woken first by any request to its pool.
    assert Instance.objects.get(pk=sleeping.pk).desired_state == "stopped"
