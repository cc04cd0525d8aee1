"""Records the panel writes itself are read-only in the admin, superusers included (``ReadOnlyAdmin``)."""

from __future__ import annotations

import pytest
from django.contrib import admin
from django.contrib.auth.models import User
from django.test import Client, RequestFactory
from django.urls import reverse

from fleet.admin import ReadOnlyAdmin

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
