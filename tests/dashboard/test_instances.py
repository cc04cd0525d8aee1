"""The instances page: figures per instance, and the actions a permitted user takes from it."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest
from django.conf import settings
from django.contrib.auth.models import Permission, User
from django.http import HttpResponse
from django.test import Client, override_settings
from django.urls import reverse
from django.utils.crypto import get_random_string

from dashboard.selectors import instances_page
from fleet.decide.services import instance_manual
from fleet.models import Decision, Instance, Node, Pool
from tests.costs.history import price, states
from tests.dashboard.history import request
from tests.factories import make_gpu, make_instance, make_node, make_pool

pytestmark = pytest.mark.django_db

H100 = "NVIDIA H100 80GB HBM3"
NOW = datetime(2026, 6, 10, 15, 0, tzinfo=UTC)


def held_since(instance: Instance, at: datetime, **fields: object) -> Instance:
    """Date the instance's creation and last order back to ``at``, as if it had run since."""
    Instance.objects.filter(pk=instance.pk).update(created_at=at, desired_changed_at=at, **fields)
    instance.refresh_from_db()
    return instance


@pytest.fixture
def pool() -> Pool:
    """An exclusive H100 pool whose profile has sleep mode: idle 5 min sleeps, idle 15 min stops."""
    item = make_pool("chat-s", tier="S", isolation="exclusive", idle_minimize_after_s=300, idle_stop_after_s=900)
    item.model_profile.enable_sleep_mode = True
    item.model_profile.save(update_fields=["enable_sleep_mode"])
    return item


@override_settings(FLEET_BILLING_TIMEZONE="UTC", FLEET_BILLING_CURRENCY="USD", FLEET_COST_SAMPLE_GAP_S=120)
def test_each_row_has_its_cost_its_traffic_and_its_idle_clock(pool: Pool) -> None:
    """An instance ready on a whole H100 at 2.40 USD/GPU-h since 12:00, page read at 15:00:

    - cost per hour: 1 GPU x 2.40 = 2.40; today: 3 h x 2.40 = 7.20 (the day began at 00:00 UTC).
    - requests in the last hour: those at 14:58, 14:30 and 14:01 = 3; 13:59 is older, the other
      instance's is not its own.
    - idle clock: last request 14:58, so idle 120 s; sleeps at 300 s, in 300 - 120 = 180 s
      (3 min 0 s); stops at 900 s, in 900 - 120 = 780 s (13 min 0 s).
    - a stopped instance beside it costs 0 and has no clock.
    """
    node = make_node("rack1")
    gpu, other_gpu = make_gpu(node, 0, H100), make_gpu(node, 1, H100)
    price(H100, "2.40", date(2026, 6, 1))
    instance = held_since(
        make_instance(pool, gpu, actual_state="ready"),
        NOW - timedelta(hours=3),
        ready_at=NOW - timedelta(hours=3),
        last_request_at=NOW - timedelta(seconds=120),
    )
    states(instance, (NOW - timedelta(hours=3), "ready"))
    stopped = held_since(
        make_instance(pool, other_gpu, desired_state="stopped", actual_state="stopped"), NOW - timedelta(hours=1)
    )
    for minutes_ago in (2, 30, 59, 61):
        request(pool, NOW - timedelta(minutes=minutes_ago), instance=instance)
    request(pool, NOW - timedelta(minutes=5), instance=stopped)

    rows = {row.instance.pk: row for row in instances_page(now=NOW).rows}

    row = rows[instance.pk]
    assert row.cost_per_hour == Decimal("2.40")
    assert row.cost_today == Decimal("7.20")
    assert row.requests_last_hour == 3
    assert row.age == timedelta(hours=3)
    assert row.idle is not None and row.idle_note == ""
    assert (row.idle.idle_s, row.idle.sleeps_in_s, row.idle.stops_in_s) == (120, 180, 780)
    off = rows[stopped.pk]
    assert (off.cost_per_hour, off.cost_today, off.requests_last_hour) == (0, 0, 1)
    assert off.idle is None and off.idle_note == "stopped"


def test_the_page_shows_the_clock_in_words(pool: Pool) -> None:
    """Told to run 120 s before the page is read: "idle for 2 min 0 s, sleeps in 3 min 0 s, stops in
    13 min 0 s", give or take the second the request takes (idle + sleeps in = 300 s, idle + stops
    in = 900 s, each shown in whole seconds, so a sum may read one short)."""
    node = make_node("rack1")
    instance = make_instance(pool, make_gpu(node, 0, H100), actual_state="ready")
    held_since(instance, instance.created_at - timedelta(seconds=120))
    user = User.objects.create_user("viewer", password="a-long-password-1")
    client = Client()
    client.force_login(user)
    text = client.get(reverse("dashboard:instances")).content.decode()
    found = re.search(r"idle for (\d+) min (\d+) s, sleeps in (\d+) min (\d+) s, stops in (\d+) min (\d+) s", text)
    assert found, text
    idle, sleeps, stops = (int(found[i]) * 60 + int(found[i + 1]) for i in (1, 3, 5))
    assert 120 <= idle <= 125 and idle + sleeps in (299, 300) and idle + stops in (899, 900)


@pytest.fixture
def serving(pool: Pool) -> Instance:
    """A ready instance on the one H100 of an online host (so placement may put one there again)."""
    node = make_node("rack1")
    Node.objects.filter(pk=node.pk).update(status=Node.Status.ONLINE)
    return make_instance(pool, make_gpu(node, 0, H100), actual_state="ready")


def client_for(*, allowed: bool) -> Client:
    user = User.objects.create_user("operator" if allowed else "viewer", password="a-long-password-1")
    if allowed:
        user.user_permissions.add(Permission.objects.get(codename="change_instance", content_type__app_label="fleet"))
    client = Client(enforce_csrf_checks=True)
    client.force_login(user)
    return client


def post(client: Client, url: str, data: dict[str, object]) -> HttpResponse:
    """POST as a browser does: with a CSRF token matching its cookie (a read-only user's page
    has no form, so the token is made here: a refusal must be the permission's, not CSRF's)."""
    token = get_random_string(32)
    client.cookies[settings.CSRF_COOKIE_NAME] = token
    return client.post(url, {**data, "csrfmiddlewaretoken": token}, follow=True)


def test_a_user_without_the_permission_sees_no_buttons_and_is_refused(serving: Instance) -> None:
    """Anonymous visitors are sent to sign in, page and POST alike. A viewer sees the row but no
    form; a POST from them (even with a valid token) is 403 and changes nothing. An operator with
    ``fleet.change_instance`` sees the stop and sleep buttons."""
    anonymous = Client(enforce_csrf_checks=True)
    assert "/admin/login/" in anonymous.get(reverse("dashboard:instances"))["Location"]
    stop = post(anonymous, reverse("dashboard:instance-action", args=[serving.pk]), {"action": "stop", "generation": 1})
    assert "/admin/login/" in stop.redirect_chain[0][0]  # type: ignore[attr-defined]
    viewer = client_for(allowed=False)
    page = viewer.get(reverse("dashboard:instances")).content.decode()
    assert f'data-instance="{serving.pk}"' in page and 'method="post"' not in page
    url = reverse("dashboard:instance-action", args=[serving.pk])
    assert post(viewer, url, {"action": "stop", "generation": 1}).status_code == 403
    scale = reverse("dashboard:pool-scale", args=[serving.pool_id])
    assert post(viewer, scale, {"delta": 1, "active": 1}).status_code == 403
    serving.refresh_from_db()
    assert (serving.desired_state, serving.generation, Decision.objects.count()) == ("running", 1, 0)

    operator_page = client_for(allowed=True).get(reverse("dashboard:instances")).content.decode()
    assert 'name="action" value="stop"' in operator_page and 'name="action" value="sleep"' in operator_page


def test_a_stale_form_changes_nothing_and_says_so(serving: Instance) -> None:
    """The page showed generation 1; a policy then slept the instance (generation 2). Stop from the
    old page is refused with a message, the instance stays desired sleeping at generation 2."""
    operator = client_for(allowed=True)
    serving.desired_state = "sleeping"
    Instance.objects.filter(pk=serving.pk).update(desired_state="sleeping", generation=2)
    response = post(
        operator, reverse("dashboard:instance-action", args=[serving.pk]), {"action": "stop", "generation": 1}
    )
    text = response.content.decode()
    assert "not changed: it changed since the page was loaded" in text
    serving.refresh_from_db()
    assert (serving.desired_state, serving.generation) == ("sleeping", 2)
    assert not Decision.objects.exists()

    stale_scale = post(operator, reverse("dashboard:pool-scale", args=[serving.pool_id]), {"delta": -1, "active": 2})
    assert "not scaled: it changed since the page was loaded" in stale_scale.content.decode()
    assert not Decision.objects.exists()


def test_bad_input_is_refused_with_a_reason(serving: Instance) -> None:
    """An unknown action, a wake of a running instance and a -1 below the pool's minimum of 1
    (one active instance) each leave a message and no decision."""
    Pool.objects.filter(pk=serving.pool_id).update(min_instances=1)
    operator = client_for(allowed=True)
    url = reverse("dashboard:instance-action", args=[serving.pk])
    for action, expected in (("explode", "unknown action &#x27;explode&#x27;"), ("wake", "wake applies to sleeping")):
        text = post(operator, url, {"action": action, "generation": 1}).content.decode()
        assert expected in text
    scale = reverse("dashboard:pool-scale", args=[serving.pool_id])
    text = post(operator, scale, {"delta": -1, "active": 1}).content.decode()
    assert "at its minimum of 1" in text
    serving.refresh_from_db()
    assert (serving.desired_state, serving.generation, Decision.objects.count()) == ("running", 1, 0)


def test_each_action_logs_a_manual_decision_naming_the_user(serving: Instance) -> None:
    """sleep (gen 1 -> 2), wake (2 -> 3), stop (3 -> 4), start (4 -> 5), then -1 stops it again
    (5 -> 6) and +1 starts it again: five instance decisions and two scale decisions, each
    ``manual`` with the operator's name, each named in the flash message."""
    operator = client_for(allowed=True)
    url = reverse("dashboard:instance-action", args=[serving.pk])
    expected = [("sleep", "sleeping"), ("wake", "running"), ("stop", "stopped"), ("start", "running")]
    for generation, (action, state) in enumerate(expected, start=1):
        text = post(operator, url, {"action": action, "generation": generation}).content.decode()
        decision = Decision.objects.latest("pk")
        assert f"Decision {decision.pk}: {action}" in text
        assert (decision.action, decision.policy_kind, decision.inputs["user"]) == (action, "manual", "operator")
        serving.refresh_from_db()
        assert (serving.desired_state, serving.generation) == (state, generation + 1)
    scale = reverse("dashboard:pool-scale", args=[serving.pool_id])
    for delta, active, state in ((-1, 1, "stopped"), (1, 0, "running")):
        Instance.objects.filter(pk=serving.pk).update(actual_state="stopped")  # what its agent reports
        text = post(operator, scale, {"delta": delta, "active": active}).content.decode()
        decision = Decision.objects.latest("pk")
        assert f"Decision {decision.pk}: {'scale_in' if delta < 0 else 'scale_out'}" in text, text
        assert (decision.policy_kind, decision.inputs["user"], decision.instance_id) == (
            "manual",
            "operator",
            serving.pk,
        )
        serving.refresh_from_db()
        assert serving.desired_state == state
    assert Decision.objects.filter(policy_kind="manual").count() == 6


def test_the_age_counts_from_the_last_start_not_from_creation(serving: Instance) -> None:
    """Created three days ago, stopped and started again by an operator, the page read 2 h after that
    start: 2 h, not three days and 2 h. One slept beside it has no such time ("–"), and the column
    says what it counts."""
    Instance.objects.filter(pk=serving.pk).update(created_at=serving.created_at - timedelta(days=3))
    for action in ("stop", "start"):
        serving.refresh_from_db()
        instance_manual(instance=serving, action=action, generation=serving.generation, user="operator")
    asleep = make_instance(serving.pool, make_gpu(make_node("rack2"), 0, H100), actual_state="ready")
    instance_manual(instance=asleep, action="sleep", generation=asleep.generation, user="operator")
    serving.refresh_from_db()

    rows = {row.instance.pk: row for row in instances_page(now=serving.desired_changed_at + timedelta(hours=2)).rows}
    assert rows[serving.pk].age == timedelta(hours=2)
    assert rows[asleep.pk].age is None

    page = re.sub(r"\s+", " ", client_for(allowed=False).get(reverse("dashboard:instances")).content.decode())
    assert 'title="Time since the instance was last launched, started or woken' in page
    assert ">Since last start</th>" in page
    assert re.search(rf'data-instance="{asleep.pk}">.*?<td class="num nowrap">–</td>', page)
