"""The savings page, the decisions page's effects and filters, one decision's audit view, an undeletable log."""

from __future__ import annotations

import re
from datetime import date, datetime
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.test import Client
from django.urls import reverse

from fleet.models import Decision, Instance, Policy, RollupWatermark
from tests.costs.history import price, states, utc
from tests.dashboard.history import gpu_rollups
from tests.factories import make_gpu, make_instance, make_node, make_pool

pytestmark = pytest.mark.django_db

GPU = "Acme X1"
RANGE = {"range": "custom", "start": "2024-03-01T09:00:00+00:00", "end": "2024-03-01T14:00:00+00:00"}


def decide(instance: Instance | None, action: str, at: datetime, kind: str = "idle_reclaim", **extra: Any) -> Decision:
    decision = Decision.objects.create(
        policy_kind=kind,
        pool=instance.pool if instance else extra.pop("pool", None),
        instance=instance,
        action=action,
        reason=f"{action} by {kind}",
        applied_at=at,
        **extra,
    )
    Decision.objects.filter(pk=decision.pk).update(created_at=at)
    return decision


@pytest.fixture
def history(settings) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    """A 2.00/GPU-hour card whose instance idle reclaim stopped at 10:00 and pre-warm started at 13:00;
    the card reported (hour rollups) 08:00-10:00 and 13:00-14:00 only, rolled up to 14:00."""
    settings.FLEET_BILLING_TIMEZONE = "UTC"
    settings.FLEET_COST_SLEEPING_HOLDS_GPU = True
    price(GPU, "2.0000", date(2024, 1, 1))
    gpu = make_gpu(make_node(), model_name=GPU)
    pool = make_pool("chat-l")
    instance = make_instance(pool, gpu)
    states(instance, (utc(2024, 3, 1, 8), "ready"), (utc(2024, 3, 1, 10), "stopped"), (utc(2024, 3, 1, 13), "ready"))
    gpu_rollups(gpu, utc(2024, 3, 1, 8), 2, hourly=True)
    gpu_rollups(gpu, utc(2024, 3, 1, 13), 1, hourly=True)
    RollupWatermark.objects.create(name="minute", done_until=utc(2024, 3, 1, 14))
    stop = decide(instance, "stop", utc(2024, 3, 1, 10))
    start = decide(instance, "start", utc(2024, 3, 1, 13), kind="prewarm")
    return {"pool": pool, "instance": instance, "stop": stop, "start": start}


def text(response: Any) -> str:
    assert response.status_code == 200
    return re.sub(r"\s+", " ", response.content.decode())


def rows(response: Any) -> list[int]:
    return [int(pk) for pk in re.findall(r'data-decision="(\d+)"', response.content.decode())]


def test_the_savings_page_agrees_with_the_headline_to_the_cent(admin_client: Client, history) -> None:  # type: ignore[no-untyped-def]
    """Range 09:00-14:00. Headline: baseline 5 h x 2.00 = 10.00, paid 09-10 and 13-14 = 4.00, saved 6.00.
    Attributed: the 10:00 stop until the 13:00 start, 3 h x 2.00 = 6.00, all idle_reclaim's, in chat-l, on
    1 March. The start costs 2.00/h: 13:00-14:00 = 2.00. Nothing reclaimable, nothing outside decisions."""
    page = text(admin_client.get(reverse("dashboard:savings"), RANGE))
    assert 'id="attributed">6.00 USD' in page
    assert 'id="headline">6.00 USD' in page
    assert "Attributed 6.00, headline 6.00 USD: headline = attributed − 0.00 still paid" in page
    assert "+ 0.00 from capacity changed outside decisions" in page
    assert "3.00 GPU-hours released" in page
    assert '?kind=idle_reclaim&range=custom">idle_reclaim</a></td><td>6.00</td>' in page
    assert "<td>chat-l</td><td>6.00</td>" in page
    assert "<td>2024-03-01</td><td>6.00</td>" in page
    assert '>2.00 USD</div><div class="muted">starts, wakes' in page


def test_the_savings_page_reads_in_a_fixed_number_of_queries(
    admin_client: Client, history, django_assert_num_queries
) -> None:  # type: ignore[no-untyped-def]
    """Ten more stops of the same instance (repeats, no effect) add no query and change no figure."""
    url = reverse("dashboard:savings")
    with django_assert_num_queries(SAVINGS_QUERIES):
        admin_client.get(url, RANGE)
    for minute in range(10):
        decide(history["instance"], "stop", utc(2024, 3, 1, 11, minute))
    with django_assert_num_queries(SAVINGS_QUERIES):
        page = text(admin_client.get(url, RANGE))
    assert 'id="attributed">6.00 USD' in page


# Session and user (2); the headline: events (2), watermarks, GPU rollups, GPUs, MIG devices, instances' pools,
# prices, GPUs seen before, GPUs that left, prices (11); the effects: instances with their devices, each
# instance's last decision before the range, those and the range's decisions, prices (4); pool names and the
# demo banner (2).
SAVINGS_QUERIES = 19


def test_the_decisions_page_shows_each_effect_in_a_fixed_number_of_queries(
    admin_client: Client, history, django_assert_num_queries
) -> None:  # type: ignore[no-untyped-def]
    """The stop saves 2.00/h and 6.00 (3 h) so far; the start costs 2.00/h, 13:00 until now. Ten more
    decisions of the same instance (repeats: no effect) cost no query more."""
    url = reverse("dashboard:decisions")
    with django_assert_num_queries(QUERIES):
        page = text(admin_client.get(url, RANGE))
    assert "saves 2.00/h, 6.00 so far" in page
    assert "costs 2.00/h" in page
    for minute in range(10):
        decide(history["instance"], "stop", utc(2024, 3, 1, 11, minute))
    with django_assert_num_queries(QUERIES):
        response = admin_client.get(url, RANGE)
    assert len(rows(response)) == 12


# Session and user (2), the decisions, their pools (read once each, not joined per row), kinds, pools, people
# and policies (6), the effects: the rows' instances, those and their card mates with their devices, each one's
# last decision before the range, those and the range's decisions, prices (5), the demo banner (1).
QUERIES = 14


def effects(response: Any) -> dict[int, str]:
    """Each decision row's effect cell, by decision id."""
    found = re.findall(r'data-decision="(\d+)".*?<td class="effect"[^>]*>(.*?)</td>', text(response))
    return {int(pk): cell for pk, cell in found}


def test_the_pool_page_prices_its_decisions_as_the_decisions_page_does(admin_client: Client, history) -> None:  # type: ignore[no-untyped-def]
    """The stop saves 2.00/h, 6.00 (10:00-13:00) so far; the start costs 2.00/h: the pool's latest
    decisions show the same effects, not "–"."""
    pool = history["pool"]
    on_pool_page = effects(admin_client.get(reverse("dashboard:pool", args=[pool.pk]), RANGE))
    on_decisions_page = effects(admin_client.get(reverse("dashboard:decisions"), {**RANGE, "pool": str(pool.pk)}))
    stop, start = history["stop"].pk, history["start"].pk
    assert on_pool_page[stop] == "saves 2.00/h, 6.00 so far"
    assert on_pool_page[start].startswith("costs 2.00/h, ")
    assert on_pool_page == on_decisions_page


def test_decisions_filter_by_kind_pool_person_policy_and_range(admin_client: Client, history) -> None:  # type: ignore[no-untyped-def]
    other = make_pool("summary-l")
    policy = Policy.objects.create(kind="autoscale", pool=other)
    by_alice = decide(history["instance"], "stop", utc(2024, 3, 1, 11), kind="manual", inputs={"user": "alice"})
    by_bob = decide(history["instance"], "start", utc(2024, 3, 1, 12), kind="manual", inputs={"user": "bob"})
    scaled = decide(None, "scale_out", utc(2024, 3, 1, 12, 30), kind="autoscale", pool=other, policy=policy)
    decide(history["instance"], "stop", utc(2024, 3, 1, 15))  # after the range
    url = reverse("dashboard:decisions")
    stop, start = history["stop"].pk, history["start"].pk
    assert rows(admin_client.get(url, RANGE)) == [start, scaled.pk, by_bob.pk, by_alice.pk, stop]
    assert rows(admin_client.get(url, {**RANGE, "kind": "manual"})) == [by_bob.pk, by_alice.pk]
    assert rows(admin_client.get(url, {**RANGE, "person": "alice"})) == [by_alice.pk]
    assert rows(admin_client.get(url, {**RANGE, "pool": str(other.pk)})) == [scaled.pk]
    assert rows(admin_client.get(url, {**RANGE, "policy": str(policy.pk)})) == [scaled.pk]
    assert rows(admin_client.get(url, {**RANGE, "end": "2024-03-01T11:30:00+00:00"})) == [by_alice.pk, stop]
    page = text(admin_client.get(url, RANGE))
    assert '<option value="alice">alice</option>' in page


def test_one_decision_shows_its_inputs_effect_and_arithmetic(admin_client: Client, history) -> None:  # type: ignore[no-untyped-def]
    """The stop: 1 GPU x 2.0000/GPU-h = 2.00/h, 10:00-13:00 = 3 GPU-h x 2.0000 = 6.0000, ended by the start."""
    stop = history["stop"]
    Decision.objects.filter(pk=stop.pk).update(inputs={"idle_s": 900, "window": {"requests": 0}})
    page = text(admin_client.get(reverse("dashboard:decision", args=[stop.pk])))
    assert "saves 2.00 USD/h; 6.00 USD and 3.00 GPU-hours so far" in page
    assert f'until 2024-03-01 13:00:00 (<a href="/decisions/{history["start"].pk}/">' in page
    assert "saves 1 GPU x 2.0000/GPU-h = 2.0000/h; 3 GPU-h x 2.0000/GPU-h = 6.0000" in page
    assert "{ &quot;idle_s&quot;: 900, &quot;window&quot;: { &quot;requests&quot;: 0 } }" in page
    assert admin_client.get(reverse("dashboard:decision", args=[999_999])).status_code == 404


def test_no_one_deletes_a_decision_in_the_admin_not_even_a_superuser(admin_client: Client, history) -> None:  # type: ignore[no-untyped-def]
    stop = history["stop"]
    assert get_user_model().objects.get(username="admin").is_superuser
    assert admin_client.get(reverse("admin:fleet_decision_delete", args=[stop.pk])).status_code == 403
    assert admin_client.post(reverse("admin:fleet_decision_delete", args=[stop.pk]), {"post": "yes"}).status_code == 403
    changelist = reverse("admin:fleet_decision_changelist")
    assert "delete_selected" not in admin_client.get(changelist).content.decode()
    admin_client.post(changelist, {"action": "delete_selected", "_selected_action": [stop.pk], "post": "yes"})
    assert Decision.objects.filter(pk=stop.pk).exists()
    assert Decision.objects.count() == 2
