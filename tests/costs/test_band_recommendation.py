"""The band-top recommendation: instance-hours a higher autoscale band top would have saved while
the SLA had headroom, priced per month, and its one-click apply, on hand-built hour rollups."""

from __future__ import annotations

from datetime import date, timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.urls import reverse
from django.utils import timezone

from fleet.costs.money import money_cents
from fleet.costs.recommendations import BAND_TOP, band_hour_saving, band_proposed, recommendations
from fleet.decide.services import StaleGeneration, pool_setting_claim
from fleet.models import Decision, Node, Policy, Pool, PoolHour
from tests.costs.history import price
from tests.dashboard.test_recommendations import client_for, post
from tests.factories import make_gpu, make_instance, make_node, make_pool

pytestmark = pytest.mark.django_db

H100 = "NVIDIA H100 80GB HBM3"
PRICED_FROM = date(2026, 11, 1)  # later than the presets' rates, so this one replaces them

# P95 TTFT of 175 ms: 90 of 100 requests within 0.1 s, all within 0.25 s -> 0.1 + 5/10 x 0.15 s.
# Within 0.7 x the 500 ms SLA (350 ms): headroom.
ROOMY = {"bounds": [0.1, 0.25, 0.5, 1.0], "counts": [90, 100, 100, 100], "count": 100}
# P95 TTFT of 475 ms: 50 within 0.25 s, all within 0.5 s -> 0.25 + 45/50 x 0.25 s. The SLA is met
# (<= 500 ms) but without the margin autoscale asks before a scale-in: no headroom.
TIGHT = {"bounds": [0.1, 0.25, 0.5, 1.0], "counts": [10, 50, 100, 100], "count": 100}


def test_an_hour_saves_what_the_current_top_needed_over_what_a_higher_one_needs() -> None:
    """64 seqs an instance, top 0.50 -> 0.60 (32 -> 38.4 sequences an instance):

    - 4 x 28 = 112 running: 112 / 32 = 3.5 -> 4 now, 112 / 38.4 = 2.9 -> 3 then: 1;
    - 12 x 30 = 360: 11.25 -> 12 now, 9.4 -> 10 then: 2;
    - 3 x 30 = 90: 2.8 -> 3, 2.3 -> 3: 0;
    - 3 x 40 = 120 (the pool ran fewer than the band asked): min(3, 3.75 -> 4) = 3 now, 3.1 -> 4 then: 0;
    - 12 x 30 with a minimum of 11: 12 now, max(10, 11) = 11 then: 1."""
    common: dict[str, Any] = dict(max_num_seqs=64, band_high=0.5, proposed_high=0.6)
    assert band_hour_saving(running_mean=28, instances=4, min_instances=1, **common) == 1
    assert band_hour_saving(running_mean=30, instances=12, min_instances=1, **common) == 2
    assert band_hour_saving(running_mean=30, instances=3, min_instances=1, **common) == 0
    assert band_hour_saving(running_mean=40, instances=3, min_instances=1, **common) == 0
    assert band_hour_saving(running_mean=30, instances=12, min_instances=11, **common) == 1
    assert band_hour_saving(running_mean=None, instances=12, min_instances=0, **common) == 0
    assert (band_proposed(0.5), band_proposed(0.8), band_proposed(0.65)) == (0.6, 0.85, 0.75)


def hour(pool: Pool, hours_ago: int, *, instances: int, running: float, ttft: dict[str, Any] | None) -> None:
    PoolHour.objects.create(
        pool=pool,
        bucket=timezone.now() - timedelta(hours=hours_ago),
        samples=12,
        instances=instances,
        requests_running_mean=running,
        requests=100,
        prompt_tokens=0,
        generation_tokens=0,
        ttft_histogram=ttft,
    )


def band_pool() -> Pool:
    """An autoscaled shared-GPU pool (P95 TTFT <= 500 ms, band 0.40-0.50, minimum 1, chat profile of
    64 seqs), two instances ready on H100s at 2.00 USD/h, and this week of hour rollups:

    - 5 roomy hours of 4 x 28 running: 1 instance-hour each (see above) = 5;
    - 2 roomy hours of 12 x 30: 2 each = 4;
    - a roomy hour of 3 x 30 and one of 3 x 40: 0;
    - a tight hour of 12 x 30 (would save 2) and an hour without a latency: not counted;
    - a roomy 12 x 30 hour 8 days old: outside the window.

    9 instance-hours in the 9 of 11 hours with headroom: 9 x 2.00 / 168 h = 0.107142.../h, x 730 h =
    78.214... = 78.21 a month."""
    price(H100, "2.00", PRICED_FROM)
    Policy.objects.update_or_create(kind="autoscale", pool=None, defaults={"enabled": True, "settings": {}})
    node = make_node("rack1")
    Node.objects.filter(pk=node.pk).update(status=Node.Status.ONLINE)
    pool = make_pool("chat-l", min_instances=1, util_band_low=0.4, util_band_high=0.5)
    for index in range(2):
        make_instance(pool, make_gpu(node, index, H100), actual_state="ready")
    for hours_ago in (2, 3, 4, 5, 6):
        hour(pool, hours_ago, instances=4, running=28.0, ttft=ROOMY)
    for hours_ago in (10, 11):
        hour(pool, hours_ago, instances=12, running=30.0, ttft=ROOMY)
    hour(pool, 20, instances=3, running=30.0, ttft=ROOMY)
    hour(pool, 21, instances=3, running=40.0, ttft=ROOMY)
    hour(pool, 30, instances=12, running=30.0, ttft=TIGHT)
    hour(pool, 31, instances=12, running=30.0, ttft=None)
    hour(pool, 24 * 8, instances=12, running=30.0, ttft=ROOMY)
    return pool


def band_found() -> list[Any]:
    return [item for item in recommendations() if item.kind == BAND_TOP]


def test_a_band_top_held_low_with_sla_headroom_is_priced_per_month() -> None:
    pool = band_pool()
    found = band_found()
    assert [(item.key, item.setting, item.current, item.proposed) for item in found] == [
        (f"{BAND_TOP}:{pool.pk}", "util_band_high", 0.5, 0.6)
    ]
    item = found[0]
    assert item.saving_per_hour.quantize(Decimal("0.000001")) == Decimal("0.107143")  # 18.00 / 168
    assert money_cents(item.saving_per_month) == Decimal("78.21")
    assert item.arithmetic.startswith("9 instance-hours fewer in the 9 of 11 hours")
    assert item.applicable


def test_no_recommendation_without_sla_headroom_or_autoscale() -> None:
    """Every hour tight (the SLA met, but above 0.7 of it): nothing, though the band alone would save.
    Roomy again but autoscale off for the pool: the band decides nothing, so nothing either."""
    pool = band_pool()
    PoolHour.objects.filter(pool=pool).update(ttft_histogram=TIGHT)
    assert band_found() == []
    PoolHour.objects.filter(pool=pool).update(ttft_histogram=ROOMY)
    assert band_found()
    Policy.objects.create(kind="autoscale", pool=pool, enabled=False, settings={})
    assert band_found() == []


def test_applying_raises_the_band_top_and_logs_one_decision() -> None:
    """The page shows the saving, its inputs and a button 0.5 -> 0.6; the operator's click sets the
    pool's band top to 0.6 with one ``settings_applied`` decision naming them and the value before."""
    pool = band_pool()
    operator = client_for(allowed=True)
    key = f"{BAND_TOP}:{pool.pk}"
    page = operator.get(reverse("dashboard:recommendations")).content.decode()
    assert f'value="{key}"' in page and 'name="current" value="0.5"' in page and "78.21" in page
    assert "How a band top is judged" in page and "10 points, at most 85%" in page

    text = post(operator, {"key": key, "current": "0.5"}).content.decode()

    pool.refresh_from_db()
    decision = Decision.objects.get()
    assert pool.util_band_high == 0.6
    assert (decision.action, decision.pool_id, decision.policy_kind) == ("settings_applied", pool.pk, "manual")
    assert decision.inputs["user"] == "operator"
    assert decision.inputs["before"]["pool"] == {"util_band_high": 0.5}
    assert decision.inputs["after"]["pool"] == {"util_band_high": 0.6}
    assert f"Decision {decision.pk}" in text


def test_a_stale_apply_changes_nothing_and_says_why() -> None:
    """The band top moved to 0.55 since the page showed 0.5: the view refuses, naming both values; the
    service refuses the same claim on its own (the race after the view's look); a value that is no
    finite number is refused too; nothing is logged."""
    pool = band_pool()
    operator = client_for(allowed=True)
    Pool.objects.filter(pk=pool.pk).update(util_band_high=0.55)

    text = post(operator, {"key": f"{BAND_TOP}:{pool.pk}", "current": "0.5"}).content.decode()

    assert "util_band_high is 0.55 now, not 0.5 as the page showed" in text
    refused = post(operator, {"key": f"{BAND_TOP}:{pool.pk}", "current": "nan"}).content.decode()
    assert "not None as the page showed" in refused  # not a finite number: no value was shown
    with pytest.raises(StaleGeneration):
        pool_setting_claim(pool=pool, name="util_band_high", seen=0.5, value=0.6, user="operator", reason="test")
    pool.refresh_from_db()
    assert pool.util_band_high == 0.55 and not Decision.objects.exists()


def test_a_user_without_permission_gets_403() -> None:
    pool = band_pool()
    viewer = client_for(allowed=False)
    assert 'method="post"' not in viewer.get(reverse("dashboard:recommendations")).content.decode()
    assert post(viewer, {"key": f"{BAND_TOP}:{pool.pk}", "current": "0.5"}).status_code == 403
    pool.refresh_from_db()
    assert pool.util_band_high == 0.5 and not Decision.objects.exists()
