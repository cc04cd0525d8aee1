"""In the admin a person changes an instance's desired state through the service: a decision, a generation, an event."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client
from django.urls import reverse

from fleet.decide import services
from fleet.decide.services import instance_desire
from fleet.models import BatchJob, Decision, Instance
from tests.factories import GIB, make_gpu, make_instance, make_node, make_pool

pytestmark = pytest.mark.django_db


@pytest.fixture
def published(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """The events the services publish, as they would reach the dashboard."""
    events: list[dict[str, Any]] = []
    monkeypatch.setattr(services, "event_publish", lambda **event: events.append(event))
    return events


def shown_form(client: Client, instance: Instance) -> dict[str, Any]:
    """What the instance's change page posts back if the person changes nothing."""
    form = client.get(reverse("admin:fleet_instance_change", args=[instance.pk])).context["adminform"].form
    return {name: "" if (value := form[name].value()) is None else value for name in form.fields}


def post(client: Client, instance: Instance, form: dict[str, Any], **changes: Any) -> Any:
    return client.post(reverse("admin:fleet_instance_change", args=[instance.pk]), {**form, **changes}, follow=True)


def test_a_desired_state_set_in_the_admin_is_a_decision_with_its_generation_event_and_person(
    admin_client: Client, published: list[dict[str, Any]], django_capture_on_commit_callbacks: Any
) -> None:
    instance = make_instance(make_pool(), make_gpu(make_node()), desired_state="running", actual_state="ready")
    form = shown_form(admin_client, instance)

    with django_capture_on_commit_callbacks(execute=True):
        assert post(admin_client, instance, form, desired_state="sleeping").status_code == 200

    instance.refresh_from_db()
    assert (instance.desired_state, instance.generation) == ("sleeping", 2)
    decision = Decision.objects.get(instance=instance)
    assert (decision.policy_kind, decision.action, decision.applied_at is not None) == ("manual", "sleep", True)
    assert decision.inputs == {"user": "admin", "from": "running"}
    assert "running -> sleeping" in decision.reason and "by admin in the admin" in decision.reason
    (event,) = published
    assert event["kind"] == "decision"
    assert {key: event["payload"][key] for key in ("decision", "instance", "desired_state", "generation")} == {
        "decision": decision.pk,
        "instance": instance.pk,
        "desired_state": "sleeping",
        "generation": 2,
    }


def test_a_change_made_since_the_page_loaded_wins_and_the_person_is_told(admin_client: Client) -> None:
    instance = make_instance(make_pool(), make_gpu(make_node()), desired_state="running", actual_state="ready")
    form = shown_form(admin_client, instance)
    instance_desire(instance=instance, state="stopped", action="stop", reason="idle", kind="idle_reclaim")

    response = post(admin_client, instance, form, desired_state="sleeping")

    assert "Desired state not changed: instance" in response.content.decode()
    instance.refresh_from_db()
    assert (instance.desired_state, instance.generation) == ("stopped", 2)
    assert list(Decision.objects.values_list("policy_kind", flat=True)) == ["idle_reclaim"]


def test_other_fields_save_without_a_decision(admin_client: Client) -> None:
    instance = make_instance(make_pool(), make_gpu(make_node()), desired_state="running", actual_state="ready")

    post(admin_client, instance, shown_form(admin_client, instance), last_error="seen by a person")

    instance.refresh_from_db()
    assert (instance.last_error, instance.desired_state, instance.generation) == ("seen by a person", "running", 1)
    assert not Decision.objects.exists()


def test_an_instance_added_in_the_admin_is_a_decision_by_its_person(admin_client: Client) -> None:
    pool, gpu = make_pool(), make_gpu(make_node())
    add = {"pool": pool.pk, "gpu": gpu.pk, "mig_device": "", "desired_state": "running", "last_error": ""}

    assert admin_client.post(reverse("admin:fleet_instance_add"), add).status_code == 302

    instance = Instance.objects.get()
    decision = Decision.objects.get(instance=instance)
    assert (decision.policy_kind, decision.action, decision.inputs) == ("manual", "add", {"user": "admin"})


def test_an_instance_added_to_serve_takes_back_the_memory_a_batch_job_borrowed(admin_client: Client) -> None:
    """As a launch does: placed stopped, the job on the card stays; placed to serve, it is preempted in
    the add's own change and logged before it, as the person's."""
    pool, gpu = make_pool(isolation="exclusive"), make_gpu(make_node())
    job = BatchJob.objects.create(name="embed", image="embedder:1", memory_bytes=16 * GIB, state="running", gpu=gpu)
    add = {"pool": pool.pk, "gpu": gpu.pk, "mig_device": "", "desired_state": "stopped", "last_error": ""}

    assert admin_client.post(reverse("admin:fleet_instance_add"), add).status_code == 302
    job.refresh_from_db()
    assert (job.state, job.gpu_id) == ("running", gpu.pk)

    assert (
        admin_client.post(reverse("admin:fleet_instance_add"), {**add, "desired_state": "running"}).status_code == 302
    )

    job.refresh_from_db()
    assert (job.state, job.preemptions) == ("preempted", 1)
    serving = Instance.objects.get(desired_state="running")
    preempt, added = Decision.objects.get(batch_job=job), Decision.objects.get(instance=serving)
    assert preempt.pk < added.pk
    assert (preempt.action, preempt.policy_kind, preempt.inputs["instance"]) == ("preempt", "manual", serving.pk)
    assert (preempt.inputs["for"], added.action) == ("add", "add")


def test_the_pools_page_lists_its_instances_without_editing_them(admin_client: Client) -> None:
    pool = make_pool()
    instance = make_instance(pool, make_gpu(make_node()), desired_state="running", actual_state="ready")
    page = admin_client.get(reverse("admin:fleet_pool_change", args=[pool.pk]))
    inline = page.context["inline_admin_formsets"][0]

    assert inline.has_add_permission is False
    assert "desired_state" not in inline.formset.forms[0].fields
    assert reverse("admin:fleet_instance_change", args=[instance.pk]) in page.content.decode()
