"""Tuning a pool's settings from the admin: the Pool action queues a ``TuningRun`` on the pool's own request
log, the task (in a thread of the server here, as in the embedded mode) stores what the search found or why it
failed, and a done run's settings apply in one click through ``pool_settings_apply``, once, by someone who may
change the pool and its policies."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.contrib.auth.models import Permission, User
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from fleet.decide.tuning import (
    POOL_SPACE,
    TUNING_MIN_REQUESTS,
    pool_tuning_base,
    tuning_run_create,
    tuning_run_execute,
)
from fleet.models import Decision, Policy, Pool, TuningRun
from tests.factories import make_pool
from tests.support.tuning import finish_runs, log_requests, tune_action

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("eager_tasks")]


def operator(username: str = "operator", *, codenames: tuple[str, ...] = ("change_pool", "change_policy")) -> Client:
    user = User.objects.create_user(username, password="a-long-password-1", is_staff=True)
    for codename in codenames:
        user.user_permissions.add(Permission.objects.get(codename=codename, content_type__app_label="fleet"))
    client = Client()
    client.force_login(user)
    return client


@pytest.mark.django_db(transaction=True)
def test_the_action_queues_a_run_that_tunes_on_the_pools_own_answered_requests_in_the_span(
    admin_client: Client, django_capture_on_commit_callbacks: Any
) -> None:
    """600 answered requests of the pool, one a second, are the trace; what is not the pool's, failed,
    without token counts or older than the 2 days asked for is left out: 600 requests, not 600 + 50 + 20 +
    10 + 30. The pool holds 2 instances at least on its 2 GPUs, so the settings it starts from pay both for
    the trace's 600 s: 2 x 600 / 3600 = 0.333 GPU-hours, all within the SLA (a 200-token prompt takes
    milliseconds). Within the 3 simulations asked for the search (seed 0) tries only queue thresholds, none
    of which lowers that floor: it finds no change, and there is nothing to apply. With the headroom asked for
    (a quarter more traffic) the cheapest of the three, the settings it started from, is run again at 1.25
    requests a second: two instances serve that within the SLA too, and the page says so."""
    pool = make_pool(min_instances=2, max_instances=2)
    other = make_pool("other-l")
    now = timezone.now()
    log_requests(pool, 600, start=now - timedelta(hours=1))
    log_requests(other, 50, start=now - timedelta(hours=1))
    log_requests(pool, 20, start=now - timedelta(minutes=30), status=500)
    log_requests(pool, 10, start=now - timedelta(minutes=20), output_tokens=None)
    log_requests(pool, 30, start=now - timedelta(days=2, hours=1))
    asked = admin_client.post(
        reverse("admin:fleet_pool_changelist"), {"action": "tune_settings", "_selected_action": [pool.pk]}
    )
    assert asked.status_code == 200 and 'name="days"' in asked.content.decode()  # asks first; nothing queued
    assert not TuningRun.objects.exists()

    with django_capture_on_commit_callbacks(execute=True):
        text = tune_action(admin_client, pool, days=2, max_evaluations=3, headroom=0.25, tune="Tune").content.decode()
    finish_runs()

    run = TuningRun.objects.get()
    assert "queued for chat-l on its last 2 days" in text
    assert (run.state, run.error, run.requested_by, run.requests) == ("done", "", "admin", 600)
    assert run.traffic_to - run.traffic_from == timedelta(days=2)
    assert run.evaluations == 4  # the settings it starts from, queue thresholds 2 and 10, and the first again
    assert run.engine.startswith("H100")
    assert run.base_settings == pool_tuning_base(pool)
    assert run.base_settings["pool"]["min_instances"] == 2
    assert run.base_paid_gpu_hours == pytest.approx(2 * 600 / 3600, rel=0.02)
    assert run.tuned_paid_gpu_hours == run.base_paid_gpu_hours
    assert (run.base_attainment, run.tuned_attainment, run.meets_sla) == (1.0, 1.0, True)
    assert run.settings == {}
    assert (run.headroom, run.holds_headroom, run.headroom_attainment) == (0.25, True, 1.0)
    page = admin_client.get(reverse("admin:fleet_tuningrun_change", args=[run.pk])).content.decode()
    assert "0.333 → 0.333" in page and 'id="tuning-apply"' not in page
    assert "100.00% at 1.25x the traffic" in page
    listed = admin_client.get(reverse("admin:fleet_tuningrun_changelist")).content.decode()
    assert "Holds headroom" in listed and 'alt="True"' in listed  # the column, and this run holds it
    refused = admin_client.post(reverse("admin:fleet_tuningrun_apply", args=[run.pk]), follow=True)
    assert "Nothing changed" in refused.content.decode() and "found no change" in refused.content.decode()
    assert not Decision.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_too_little_traffic_fails_with_its_count_and_applies_nothing(
    admin_client: Client, django_capture_on_commit_callbacks: Any
) -> None:
    pool = make_pool()
    log_requests(pool, 100, start=timezone.now() - timedelta(hours=1))
    with django_capture_on_commit_callbacks(execute=True):
        tune_action(admin_client, pool, days=3, max_evaluations=2, tune="Tune")
    finish_runs()

    run = TuningRun.objects.get()
    assert run.state == "failed" and run.finished_at is not None
    assert "too little traffic" in run.error and "100 answered requests" in run.error
    assert f"at least {TUNING_MIN_REQUESTS}" in run.error
    assert run.settings == {} and run.evaluations is None
    text = admin_client.post(reverse("admin:fleet_tuningrun_apply", args=[run.pk]), follow=True).content.decode()
    assert "Nothing changed" in text and "is failed, not done" in text
    assert not Decision.objects.exists()
    assert tuning_run_execute(run.pk) is None  # not queued: a second delivery of the task does nothing


@pytest.mark.parametrize("headroom", ["-0.1", "3.5", "a lot"])
def test_a_headroom_outside_0_to_3_is_refused_on_the_form_and_queues_nothing(
    admin_client: Client, headroom: str, django_capture_on_commit_callbacks: Any
) -> None:
    pool = make_pool()
    with django_capture_on_commit_callbacks(execute=True):
        response = tune_action(admin_client, pool, days=3, max_evaluations=2, headroom=headroom, tune="Tune")
    assert response.status_code == 200 and 'id="tune-settings"' in response.content.decode()
    assert response.context["form"].errors["headroom"]
    assert not TuningRun.objects.exists()


@pytest.mark.parametrize("headroom", [-0.1, 3.5])
def test_a_run_asked_for_in_code_takes_the_forms_bounds_on_the_headroom(headroom: float) -> None:
    with pytest.raises(ValueError, match=r"headroom \(.*\) must lie within 0 and 3"):
        tuning_run_create(pool=make_pool(), user="admin", headroom=headroom)
    assert not TuningRun.objects.exists()


def done_run(pool: Pool) -> TuningRun:
    """A run that found min_instances 2 -> 1 and autoscale's breach_windows 1, from the pool as it stands."""
    return TuningRun.objects.create(
        pool=pool,
        requested_by="admin",
        traffic_from=timezone.now() - timedelta(days=3),
        traffic_to=timezone.now(),
        max_evaluations=3,
        state=TuningRun.State.DONE,
        base_settings=pool_tuning_base(pool),
        settings={"pool": {"min_instances": 1}, "policies": {"autoscale": {"breach_windows": 1}}},
        evaluations=3,
        meets_sla=True,
        base_paid_gpu_hours=2.0,
        tuned_paid_gpu_hours=1.0,
        base_attainment=0.99,
        tuned_attainment=0.98,
        headroom=0.25,
        holds_headroom=True,
        headroom_attainment=0.9995,
    )


def apply(client: Client, run: TuningRun) -> Any:
    return client.post(reverse("admin:fleet_tuningrun_apply", args=[run.pk]), follow=True)


def test_apply_writes_the_settings_through_the_services_once_as_one_decision_by_that_person() -> None:
    pool = make_pool(min_instances=2, max_instances=4)
    run = done_run(pool)
    client = operator()
    page = client.get(reverse("admin:fleet_tuningrun_change", args=[run.pk])).content.decode()
    assert 'id="tuning-apply"' in page and "2.000 → 1.000" in page

    text = apply(client, run).content.decode()

    pool.refresh_from_db()
    decision = Decision.objects.get()
    assert pool.min_instances == 1
    assert Policy.objects.get(kind="autoscale", pool=pool).settings["breach_windows"] == 1
    assert (decision.action, decision.pool_id, decision.inputs["user"]) == ("settings_applied", pool.pk, "operator")
    assert decision.inputs["before"]["pool"] == {"min_instances": 2}
    assert f"tuning run {run.pk} applied by operator" in decision.reason
    assert "at 1.25x the traffic 99.950% within (meets the SLA)" in decision.reason
    assert f"Decision {decision.pk}" in text
    run.refresh_from_db()
    assert (run.applied_decision, run.applied_by, run.applied_at is not None) == (decision, "operator", True)

    again = apply(client, run).content.decode()  # the same click twice: refused, nothing more written
    assert "Nothing changed" in again and "applied already, by operator" in again
    assert 'id="tuning-apply"' not in again
    assert Decision.objects.count() == 1


def pool_actions(client: Client) -> set[str]:
    """The actions the pool list offers (none at all: no action form)."""
    form = client.get(reverse("admin:fleet_pool_changelist")).context["action_form"]
    return set() if form is None else set(dict(form.fields["action"].choices))


def test_no_action_and_403_without_permission_to_change_the_policies_and_a_stale_run_changes_nothing(
    django_capture_on_commit_callbacks: Any,
) -> None:
    pool = make_pool(min_instances=2, max_instances=4)
    run = done_run(pool)
    pool_only = operator("pools-only", codenames=("change_pool",))
    assert "tune_settings" not in pool_actions(pool_only)
    with django_capture_on_commit_callbacks(execute=True):
        tune_action(pool_only, pool, days=3, max_evaluations=2, tune="Tune")
    assert TuningRun.objects.count() == 1
    assert apply(pool_only, run).status_code == 403

    allowed = operator()
    assert "tune_settings" in pool_actions(allowed)
    Pool.objects.filter(pk=pool.pk).update(util_band_high=0.7)  # changed since the run read the pool
    text = apply(allowed, run).content.decode()
    assert "Nothing changed" in text and "stale" in text

    pool.refresh_from_db()
    run.refresh_from_db()
    assert (pool.min_instances, run.applied_at) == (2, None)
    assert not Policy.objects.filter(pool=pool).exists() and not Decision.objects.exists()


def test_a_pools_sla_bound_is_not_among_what_the_admin_tunes() -> None:
    """The pool's latency bound is the SLA it promises and is judged by: a run from the admin may move
    the band, the floor and autoscale's triggers, never the bound itself."""
    moved = {
        field
        for dimension in POOL_SPACE
        for patch in dimension.choices
        for fields in patch.values()
        for field in fields
    }
    assert "sla_latency_ms" not in moved
    assert {"min_instances", "util_band_high", "queue_threshold"} <= moved
