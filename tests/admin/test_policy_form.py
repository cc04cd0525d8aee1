"""Policy settings are edited as typed fields of the policy's kind, saved into its JSON, and refused
field by field when a value is wrong, leaving the stored policy as it was."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client
from django.urls import reverse
from django.utils.text import capfirst

from fleet.models import Policy, Pool
from fleet.policies.settings import policy_defaults
from tests.admin.test_validation import pool_form
from tests.factories import make_pool

pytestmark = pytest.mark.django_db


def fleet_policy(kind: str) -> Policy:
    return Policy.objects.get(kind=kind, pool=None)


def change(client: Client, policy: Policy, **fields: Any) -> Any:
    """Post the change form as a browser would: the policy's kind, pool and enabled flag, and ``fields``."""
    data = {"kind": policy.kind, "pool": "", "enabled": "on", **fields}
    return client.post(reverse("admin:fleet_policy_change", args=[policy.pk]), data)


def field_errors(response: Any) -> dict[str, list[str]]:
    return {name: list(errors) for name, errors in response.context["adminform"].form.errors.items()}


def test_the_change_form_shows_a_typed_field_per_setting_with_its_unit_and_help(admin_client: Client) -> None:
    page = admin_client.get(reverse("admin:fleet_policy_change", args=[fleet_policy("idle_reclaim").pk]))
    html = page.content.decode()
    assert 'name="settings"' not in html
    assert 'type="number" name="idle_duty_cycle_pct" value="20"' in html
    assert "Idle below duty cycle (%)" in html
    assert "An instance is idle below this duty cycle with an empty queue." in html
    assert 'type="number" name="sleep_level" value="1"' in html


def test_typed_fields_are_saved_as_the_policys_json(admin_client: Client) -> None:
    policy = fleet_policy("idle_reclaim")
    response = change(admin_client, policy, idle_duty_cycle_pct="35", sleep_level="2")
    assert response.status_code == 302
    policy.refresh_from_db()
    assert policy.settings == {"idle_duty_cycle_pct": 35, "sleep_level": 2}


def test_numbers_and_switches_of_autoscale_are_saved_with_their_types(admin_client: Client) -> None:
    policy = fleet_policy("autoscale")
    fields = autoscale_fields(prefill_tokens_per_s="42613.5", scale_in_windows="5", scale_in_drain="on")
    assert change(admin_client, policy, **fields).status_code == 302
    policy.refresh_from_db()
    assert policy.settings["prefill_tokens_per_s"] == 42613.5
    assert policy.settings["scale_in_windows"] == 5 and isinstance(policy.settings["scale_in_windows"], int)
    assert policy.settings["scale_in_drain"] is True
    del fields["scale_in_drain"]  # an unticked box is left out of the post
    assert change(admin_client, policy, **fields).status_code == 302
    policy.refresh_from_db()
    assert policy.settings["scale_in_drain"] is False


def test_a_value_out_of_bounds_is_refused_under_its_field_and_nothing_is_saved(admin_client: Client) -> None:
    policy = fleet_policy("idle_reclaim")
    before = dict(policy.settings)
    response = change(admin_client, policy, idle_duty_cycle_pct="150", sleep_level="2")
    assert response.status_code == 200
    assert field_errors(response) == {"idle_duty_cycle_pct": ["150 is above the maximum 100."]}
    policy.refresh_from_db()
    assert policy.settings == before


def test_text_in_a_number_field_is_refused_and_nothing_is_saved(admin_client: Client) -> None:
    policy = fleet_policy("idle_reclaim")
    before = dict(policy.settings)
    response = change(admin_client, policy, idle_duty_cycle_pct="30", sleep_level="deep")
    assert field_errors(response) == {"sleep_level": ["Enter a whole number."]}
    policy.refresh_from_db()
    assert policy.settings == before


def autoscale_fields(**changes: str) -> dict[str, str]:
    values = {**fleet_policy("autoscale").settings, **changes}
    return {key: str(value) for key, value in values.items() if not isinstance(value, bool)}


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("scale_in_windows", "7", "7 is above the maximum 6."),
        ("scale_in_windows", "2.5", "Enter a whole number."),
        ("prefill_tokens_per_s", "-1", "-1 is below the minimum 0."),
        ("scale_in_max_queue", "none", "Enter a number."),
        ("scale_in_max_queue", "inf", "Enter a number."),
        ("scale_out_cooldown_s", "", "This field is required."),
    ],
)
def test_bad_autoscale_values_are_refused_under_their_fields(
    admin_client: Client, field: str, value: str, message: str
) -> None:
    policy = fleet_policy("autoscale")
    before = dict(policy.settings)
    response = change(admin_client, policy, **autoscale_fields(**{field: value}))
    assert field_errors(response) == {field: [message]}
    policy.refresh_from_db()
    assert policy.settings == before


def test_stored_keys_the_kind_no_longer_takes_are_dropped_on_save(admin_client: Client) -> None:
    policy = fleet_policy("reap")
    Policy.objects.filter(pk=policy.pk).update(settings={"orphan_grace_s": 60, "retired_key": 1})
    page = admin_client.get(reverse("admin:fleet_policy_change", args=[policy.pk]))
    assert 'name="orphan_grace_s" value="60"' in page.content.decode()
    assert change(admin_client, policy, orphan_grace_s="90").status_code == 302
    policy.refresh_from_db()
    assert policy.settings == {"orphan_grace_s": 90}


def test_the_kind_of_a_saved_policy_stays_what_it_was(admin_client: Client) -> None:
    policy = fleet_policy("reap")
    response = admin_client.post(
        reverse("admin:fleet_policy_change", args=[policy.pk]),
        {"kind": "routing", "pool": "", "enabled": "on", "orphan_grace_s": "90"},
    )
    assert response.status_code == 302
    policy.refresh_from_db()
    assert (policy.kind, policy.settings) == ("reap", {"orphan_grace_s": 90})


def test_adding_a_policy_asks_for_its_kind_first(admin_client: Client) -> None:
    html = admin_client.get(reverse("admin:fleet_policy_add")).content.decode()
    for kind, label in Policy.Kind.choices:
        assert f'value="{kind}"' in html and capfirst(label) in html
    assert 'name="orphan_grace_s"' not in html and 'name="_save"' not in html


def test_an_unknown_kind_is_refused_at_the_first_step(admin_client: Client) -> None:
    html = admin_client.get(reverse("admin:fleet_policy_add") + "?kind=nap").content.decode()
    assert "Select a valid choice. nap is not one of the available choices." in html
    assert 'name="_save"' not in html


def test_the_second_step_shows_the_fields_of_the_kind_chosen_with_their_defaults(admin_client: Client) -> None:
    html = admin_client.get(reverse("admin:fleet_policy_add") + "?kind=reap").content.decode()
    assert 'name="orphan_grace_s" value="600"' in html
    assert "Grace before stopping an orphan (s)" in html
    assert 'name="idle_duty_cycle_pct"' not in html


def test_a_policy_is_added_from_the_typed_fields_of_its_kind(admin_client: Client) -> None:
    Policy.objects.filter(kind="reap").delete()
    response = admin_client.post(
        reverse("admin:fleet_policy_add") + "?kind=reap",
        {"kind": "routing", "pool": "", "enabled": "on", "orphan_grace_s": "120"},
    )
    assert response.status_code == 302
    policy = Policy.objects.get(kind="reap")
    assert policy.settings == {"orphan_grace_s": 120}
    assert not Policy.objects.filter(kind="routing").exclude(pk=fleet_policy("routing").pk).exists()


def test_a_bad_value_on_the_add_form_adds_nothing(admin_client: Client) -> None:
    Policy.objects.filter(kind="reap").delete()
    response = admin_client.post(
        reverse("admin:fleet_policy_add") + "?kind=reap", {"pool": "", "enabled": "on", "orphan_grace_s": "-5"}
    )
    assert field_errors(response) == {"orphan_grace_s": ["-5 is below the minimum 0."]}
    assert not Policy.objects.filter(kind="reap").exists()


def routing_fields(**changes: str) -> dict[str, str]:
    return {key: str(value) for key, value in {**fleet_policy("routing").settings, **changes}.items()}


def test_routing_thresholds_above_the_rcf_cap_are_refused(admin_client: Client) -> None:
    policy = fleet_policy("routing")
    before = dict(policy.settings)
    response = change(admin_client, policy, **routing_fields(cap="4", tier_s_min="4.5"))
    assert field_errors(response) == {
        "tier_s_min": ["4.5 is above the RCF cap (4): no request would reach the S tier."]
    }
    policy.refresh_from_db()
    assert policy.settings == before


def test_routing_thresholds_at_the_cap_are_accepted(admin_client: Client) -> None:
    policy = fleet_policy("routing")
    assert change(admin_client, policy, **routing_fields(cap="4", tier_s_min="4")).status_code == 302
    policy.refresh_from_db()
    assert (policy.settings["cap"], policy.settings["tier_s_min"]) == (4.0, 4.0)


def test_routing_thresholds_out_of_order_are_refused(admin_client: Client) -> None:
    policy = fleet_policy("routing")
    response = change(admin_client, policy, **routing_fields(tier_s_min="1", tier_m_min="2"))
    assert field_errors(response) == {"tier_m_min": ["2 must be below the S tier threshold (1)."]}
    policy.refresh_from_db()
    assert policy.settings["tier_s_min"] == 3.0


# -- a pool's minimum against its static size: refused from either policy's side ----------


def static_fields(**changes: str) -> dict[str, str]:
    values = {**policy_defaults("static_hold"), **changes}
    return {key: str(value) for key, value in values.items()}


def post(client: Client, policy: Policy, **fields: str) -> Any:
    """Post a pool's own policy: its pool's id, and ``enabled`` only where asked (an unticked box is left out)."""
    data = {"kind": policy.kind, "pool": str(policy.pool_id), **fields}
    return client.post(reverse("admin:fleet_policy_change", args=[policy.pk]), data)


def pool_with_minimum(minimum: int, static: int) -> tuple[Pool, Policy]:
    """A pool that keeps ``minimum`` instances, under the fleet's autoscale, with its own static size."""
    pool = make_pool(min_instances=minimum, max_instances=4)
    guard = Policy.objects.create(kind="static_hold", pool=pool, settings={"static_replicas": static})
    assert fleet_policy("autoscale").enabled
    return pool, guard


def conflict(minimum: int, static: int, autoscale: str, guard: str) -> str:
    return (
        f"Pool chat-l keeps a minimum of {minimum} instances, above its static size of {static}: "
        f"the policy {autoscale} would launch up to the minimum and the policy {guard} refuse every launch "
        f"past the static size. Lower the pool's minimum to {static}, raise the static size to {minimum}, "
        "or turn one of the two policies off for the pool."
    )


def test_a_static_size_under_the_pools_minimum_is_refused_and_nothing_changes(admin_client: Client) -> None:
    _pool, guard = pool_with_minimum(3, 4)
    response = post(admin_client, guard, enabled="on", **static_fields(static_replicas="2"))
    assert response.status_code == 200
    expected = conflict(3, 2, "SLA-bounded autoscaling (fleet)", "static-spend guard (chat-l)")
    assert field_errors(response) == {"static_replicas": [expected]}
    guard.refresh_from_db()
    assert guard.settings == {"static_replicas": 4}


def test_turning_autoscale_on_over_a_minimum_above_the_static_size_is_refused(admin_client: Client) -> None:
    pool, _guard = pool_with_minimum(3, 2)
    autoscale = fleet_policy("autoscale")
    Policy.objects.filter(pk=autoscale.pk).update(enabled=False)
    response = change(admin_client, autoscale, **autoscale_fields())
    assert response.status_code == 200
    expected = conflict(3, 2, "SLA-bounded autoscaling (fleet)", "static-spend guard (chat-l)")
    assert field_errors(response) == {"__all__": [expected]}
    autoscale.refresh_from_db()
    assert autoscale.enabled is False
    # The pool's own autoscale policy, added on, is refused the same way and not added.
    response = admin_client.post(
        reverse("admin:fleet_policy_add") + "?kind=autoscale",
        {"pool": str(pool.pk), "enabled": "on", **autoscale_fields()},
    )
    assert field_errors(response) == {
        "__all__": [conflict(3, 2, "SLA-bounded autoscaling (chat-l)", "static-spend guard (chat-l)")]
    }
    assert not Policy.objects.filter(kind="autoscale", pool=pool).exists()


def test_a_static_size_at_the_minimum_or_none_saves(admin_client: Client) -> None:
    _pool, guard = pool_with_minimum(3, 4)
    assert post(admin_client, guard, enabled="on", **static_fields(static_replicas="3")).status_code == 302
    guard.refresh_from_db()
    assert guard.settings["static_replicas"] == 3
    assert post(admin_client, guard, enabled="on", **static_fields(static_replicas="0")).status_code == 302
    guard.refresh_from_db()
    assert guard.settings["static_replicas"] == 0
    # Autoscale, edited while the pool's minimum fits its static size, saves.
    autoscale = fleet_policy("autoscale")
    assert change(admin_client, autoscale, **autoscale_fields(queue_threshold="6")).status_code == 302


def test_with_autoscale_or_the_guard_off_for_the_pool_a_static_size_under_the_minimum_saves(
    admin_client: Client,
) -> None:
    pool, guard = pool_with_minimum(3, 4)
    # Disabled, the guard refuses nothing: its static size is free.
    assert post(admin_client, guard, **static_fields(static_replicas="2")).status_code == 302
    guard.refresh_from_db()
    assert (guard.enabled, guard.settings["static_replicas"]) == (False, 2)
    # The pool's own autoscale row, off, wins over the fleet's: the guard may be turned on.
    Policy.objects.create(kind="autoscale", pool=pool, enabled=False)
    assert post(admin_client, guard, enabled="on", **static_fields(static_replicas="2")).status_code == 302
    guard.refresh_from_db()
    assert guard.enabled is True


def test_a_pools_minimum_raised_above_its_static_size_is_refused_and_nothing_changes(admin_client: Client) -> None:
    pool, _guard = pool_with_minimum(2, 2)
    url = reverse("admin:fleet_pool_change", args=[pool.pk])
    response = admin_client.post(url, pool_form(name="chat-l", tier="L", min_instances="3"))
    assert response.status_code == 200
    expected = conflict(3, 2, "SLA-bounded autoscaling (fleet)", "static-spend guard (chat-l)")
    assert field_errors(response) == {"min_instances": [expected]}
    pool.refresh_from_db()
    assert pool.min_instances == 2
    assert admin_client.post(url, pool_form(name="chat-l", tier="L", min_instances="2")).status_code == 302
