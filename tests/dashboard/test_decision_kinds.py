"""The decisions page's kind filter: one row per kind from the database, not one per decision."""

from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from dashboard import selectors as pages
from fleet.models import Decision

pytestmark = pytest.mark.django_db


def test_decision_kinds_are_distinct_in_the_database() -> None:
    """Five decisions of two kinds: the query sends back two rows (no ordering column in its DISTINCT)."""
    for kind in ("manual", "autoscale", "autoscale", "manual", "autoscale"):
        Decision.objects.create(policy_kind=kind, action="settings_applied", reason="test")

    with CaptureQueriesContext(connection) as captured:
        kinds = pages.decision_kinds()

    assert kinds == ["autoscale", "manual"]
    with connection.cursor() as cursor:
        cursor.execute(captured.captured_queries[0]["sql"])
        assert len(cursor.fetchall()) == 2
