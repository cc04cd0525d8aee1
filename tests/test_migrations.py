"""Migrations are complete and apply both ways on the database under test."""

from __future__ import annotations

from io import StringIO

import pytest
from django.core.management import call_command

from fleet.models import ModelProfile, Policy, PriceRate


def test_no_model_change_lacks_a_migration(db: None) -> None:
    out = StringIO()
    call_command("makemigrations", "--check", "--dry-run", stdout=out)
    assert "No changes detected" in out.getvalue()


@pytest.mark.django_db(transaction=True)
def test_fleet_migrations_unapply_and_reapply_cleanly() -> None:
    call_command("migrate", "fleet", "zero", verbosity=0)
    call_command("migrate", "fleet", verbosity=0)
    assert ModelProfile.objects.count() == 6
    assert PriceRate.objects.count() == 5
    assert Policy.objects.filter(pool=None).count() == len(Policy.Kind)  # one fleet-wide default a kind
