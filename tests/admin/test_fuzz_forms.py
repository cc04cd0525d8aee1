"""Whatever an operator types into the admin's Pool, Model profile and Policy forms: a saved row or
the form back with errors (or a 4xx), never a server error, and a refused form writes nothing."""

from __future__ import annotations

import itertools
import json
from typing import Any
from urllib.parse import urlencode

import pytest
from django.test import Client
from django.urls import reverse
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fleet.models import Instance, ModelProfile, Policy, Pool
from fleet.policies.settings import SCHEMAS
from tests.admin.test_validation import pool_form, profile_form
from tests.factories import make_pool

pytestmark = pytest.mark.django_db

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=20),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=10), children, max_size=3),
    max_leaves=8,
)
typed = (
    st.text(max_size=80)
    | st.sampled_from(["", "\x00", "-1", "0", "1e309", "NaN", "inf", "-inf", str(2**63), "9" * 40, "0.5", "[]", "{}"])
    | st.integers(-(2**70), 2**70).map(str)
    | st.floats().map(str)
    | json_values.map(json.dumps)
)
names = (f"fuzz-{n}" for n in itertools.count())


@st.composite
def edited(draw: st.DrawFn, base: dict[str, Any]) -> dict[str, Any]:
    """``base`` with one to three fields given a typed-in value or left out."""
    data = dict(base)
    for field in draw(st.lists(st.sampled_from(sorted(base)), min_size=1, max_size=3, unique=True)):
        if draw(st.integers(0, 5)) == 0:
            del data[field]
        else:
            data[field] = draw(typed)
    return data


def rows() -> tuple[int, ...]:
    return tuple(model.objects.count() for model in (Pool, ModelProfile, Policy, Instance))


def submit(client: Client, url: str, data: dict[str, Any]) -> int:
    before = rows()
    response = client.post(url, data)
    assert response.status_code in {200, 302, 400, 403}, response.status_code
    if response.status_code != 302:
        assert rows() == before, "a refused form wrote rows"
    return response.status_code


def test_fuzzed_pool_forms_are_saved_or_refused_cleanly(admin_client: Client) -> None:
    statuses: list[int] = []

    @FUZZ
    @given(st.data())
    def run(data: st.DataObject) -> None:
        form = data.draw(edited(pool_form(name=next(names))))
        statuses.append(submit(admin_client, reverse("admin:fleet_pool_add"), form))

    run()
    assert {200, 302} <= set(statuses)


def test_fuzzed_model_profile_forms_are_saved_or_refused_cleanly(admin_client: Client) -> None:
    statuses: list[int] = []

    @FUZZ
    @given(st.data())
    def run(data: st.DataObject) -> None:
        name = next(names)
        form = data.draw(edited(profile_form(name=name, served_name=name)))
        statuses.append(submit(admin_client, reverse("admin:fleet_modelprofile_add"), form))

    run()
    assert {200, 302} <= set(statuses)


def test_fuzzed_policy_settings_are_saved_or_refused_cleanly(admin_client: Client) -> None:
    statuses: list[int] = []
    pool = str(make_pool().pk)

    @FUZZ
    @given(kind=st.sampled_from(sorted(SCHEMAS)) | st.text(max_size=12), values=st.data())
    def run(kind: str, values: st.DataObject) -> None:
        base = {key: str(setting.default) for key, setting in SCHEMAS.get(kind, {}).items()}
        form = values.draw(edited({**base, "kind": kind, "enabled": "on"}))
        form["pool"] = values.draw(st.sampled_from([pool, pool, "", "-1", "999999", "x"]))
        existing = list(Policy.objects.values_list("pk", flat=True))
        statuses.append(submit(admin_client, f"{reverse('admin:fleet_policy_add')}?{urlencode({'kind': kind})}", form))
        Policy.objects.exclude(pk__in=existing).delete()  # so the next example may add the same kind

    run()
    assert {200, 302} <= set(statuses)
