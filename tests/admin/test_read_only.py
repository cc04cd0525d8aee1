"""Records the panel writes itself are read-only in the admin, superusers included (``ReadOnlyAdmin``)."""

from __future__ import annotations

import pytest
from django.contrib import admin
from django.contrib.auth.models import User
from django.test import Client, RequestFactory
from django.urls import reverse

from fleet.admin import ReadOnlyAdmin
from fleet.models import Instance
from tests.admin.test_validation import pool_form
from tests.factories import make_instance, make_pool

pytestmark = pytest.mark.django_db

READ_ONLY = {
    model.__name__: model_admin
    for model, model_admin in admin.site._registry.items()
    if isinstance(model_admin, ReadOnlyAdmin)
}
# Deleting these clears history an operator may prune; every other read-only record stays, whoever asks.
DELETABLE = {"Alert", "AlertDelivery"}


def test_the_records_the_panel_writes_are_the_read_only_ones() -> None:
    assert set(READ_ONLY) == {"TuningRun", "Decision", "RequestLog", "InstanceEvent", "Alert", "AlertDelivery"}


@pytest.mark.parametrize("name", sorted(READ_ONLY))
def test_a_superuser_may_not_add_or_change_and_deletes_only_the_deletable(name: str) -> None:
    superuser = User.objects.create_superuser("root", "root@example.com", "pw")
    request = RequestFactory().get("/")
    request.user = superuser
    model_admin = READ_ONLY[name]
    assert model_admin.has_view_permission(request)
    assert not model_admin.has_add_permission(request)
    assert not model_admin.has_change_permission(request)
    assert model_admin.has_delete_permission(request) is (name in DELETABLE)


@pytest.mark.parametrize("name", sorted(READ_ONLY))
def test_the_add_page_refuses_a_superuser(admin_client: Client, name: str) -> None:
    opts = READ_ONLY[name].model._meta
    url = reverse(f"admin:{opts.app_label}_{opts.model_name}_add")
    assert admin_client.get(url).status_code == 403
    assert admin_client.post(url, {}).status_code == 403


def test_a_pools_page_deletes_none_of_its_instances_and_their_history(admin_client: Client) -> None:
    """The pool page lists its instances; a delete posted there (the box Django would draw) deletes nothing:
    the instance's state events, which its spend is computed from, would go with it."""
    pool = make_pool("chat-m", tier="M")
    instance = make_instance(pool)
    instance.events.create(at=instance.created_at, state="running", generation=1)
    url = reverse("admin:fleet_pool_change", args=[pool.pk])
    assert "instances-0-DELETE" not in admin_client.get(url).content.decode()
    form = pool_form(
        **{
            "instances-TOTAL_FORMS": "1",
            "instances-INITIAL_FORMS": "1",
            "instances-0-id": str(instance.pk),
            "instances-0-pool": str(pool.pk),
            "instances-0-DELETE": "on",
        }
    )
    assert admin_client.post(url, form).status_code == 302
    assert Instance.objects.filter(pk=instance.pk).exists() and instance.events.count() == 1
