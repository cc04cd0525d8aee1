"""Skip locally, fail in CI: the one rule for tests that need a real component."""

from __future__ import annotations

import os

import pytest


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def require(available: bool, reason: str) -> None:
    """Skip the calling test when a component is missing, unless running under CI=true.

    Under CI a missing component is a failure: nothing the suite needs may be skipped.
    """
    if available:
        return
    if in_ci():
        pytest.fail(f"required component missing under CI=true: {reason}", pytrace=False)
    pytest.skip(reason)
