"""Writes of what instances' specs are built from, outside the admin: model profiles and pools.

A change of a profile's settings, or of a pool's profile, alters the spec of instances that
keep their generation, so their agents are told here once it is committed (the long poll),
as the admin's profile and pool pages tell them. Kept apart from ``services``: the module
that builds the reply (``fleet.telemetry.ingest``), whose ``spec_change_tell`` these use,
imports the services.
"""

from __future__ import annotations

from typing import Any

from django.db import transaction

from fleet.models import Instance, ModelProfile, Pool
from fleet.telemetry.ingest import PROFILE_SPEC_FIELDS, spec_change_tell


def model_profile_update_or_create(*, name: str, values: dict[str, Any]) -> ModelProfile:
    """Create the profile ``name`` or set its ``values``, validated (``full_clean``: a problem
    raises and changes nothing). A change of what goes into its instances' spec moves no
    generation: once committed, their agents are told (``spec_change_tell``)."""
    with transaction.atomic():
        profile = ModelProfile.objects.select_for_update().filter(name=name).first()
        before = None if profile is None else [getattr(profile, field) for field in PROFILE_SPEC_FIELDS]
        profile = profile or ModelProfile(name=name)
        for field, value in values.items():
            setattr(profile, field, value)
        profile.full_clean()
        profile.save()
        if before is not None and before != [getattr(profile, field) for field in PROFILE_SPEC_FIELDS]:
            spec_change_tell(instances=Instance.objects.filter(pool__model_profile=profile), why="profile")
    return profile


def pool_update_or_create(*, name: str, values: dict[str, Any]) -> Pool:
    """Create the pool ``name`` or set its ``values``, validated (``full_clean``: a problem raises
    and changes nothing). Another profile changes the spec of every instance of the pool: once
    committed, their agents are told (``spec_change_tell``)."""
    with transaction.atomic():
        pool = Pool.objects.select_for_update().filter(name=name).first()
        profile_before = None if pool is None else pool.model_profile_id
        pool = pool or Pool(name=name)
        for field, value in values.items():
            setattr(pool, field, value)
        pool.full_clean()
        pool.save()
        if profile_before is not None and pool.model_profile_id != profile_before:
            spec_change_tell(instances=Instance.objects.filter(pool=pool), why="pool profile")
    return pool
