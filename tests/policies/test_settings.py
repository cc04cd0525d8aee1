"""Policy settings from outside the admin (stored rows, the simulator's files): one check, two shapes of error."""

from __future__ import annotations

from typing import Any

import pytest
from django.core.exceptions import NON_FIELD_ERRORS

from fleet.policies.settings import SettingsInvalid, policy_defaults, policy_settings_clean, policy_settings_validate


@pytest.mark.parametrize(
    ("kind", "settings", "message"),
    [
        ("idle_reclaim", {"idle_duty_cycle_pct": 150}, "idle_duty_cycle_pct: 150 is above the maximum 100."),
        ("idle_reclaim", {"sleep_level": "deep"}, "sleep_level: expected a number, got 'deep'."),
        ("idle_reclaim", {"sleep_level": 1.5}, "sleep_level: expected a whole number, got 1.5."),
        ("idle_reclaim", {"nap_after_s": 5}, "nap_after_s: not a setting of idle_reclaim; known: "),
        ("idle_reclaim", ["not", "an", "object"], "Settings must be a JSON object."),
        ("autoscale", {"scale_in_drain": 1}, "scale_in_drain: expected true or false, got 1."),
        ("routing", {"cap": 2.0}, "tier_s_min: 3 is above the RCF cap (2): no request would reach the S tier."),
        ("routing", {"tier_m_min": 3.0}, "tier_m_min: 3 must be below the S tier threshold (3)."),
        ("nap", {}, "Unknown policy kind 'nap'"),
    ],
)
def test_bad_settings_are_refused_in_one_message_naming_each_key(kind: str, settings: Any, message: str) -> None:
    with pytest.raises(SettingsInvalid) as raised:
        policy_settings_validate(kind=kind, settings=settings)
    assert any(text.startswith(message) for text in raised.value.messages), raised.value.messages


def test_errors_are_keyed_by_setting_for_the_admins_fields() -> None:
    with pytest.raises(SettingsInvalid) as raised:
        policy_settings_clean(kind="autoscale", settings={"scale_in_windows": 7, "queue_threshold": -1})
    assert raised.value.message_dict == {
        "scale_in_windows": ["7 is above the maximum 6."],
        "queue_threshold": ["-1 is below the minimum 0."],
    }
    with pytest.raises(SettingsInvalid) as raised:
        policy_settings_clean(kind="reap", settings=None)
    assert raised.value.message_dict == {NON_FIELD_ERRORS: ["Settings must be a JSON object."]}


def test_settings_are_returned_whole_with_the_defaults_filled_in() -> None:
    values = policy_settings_validate(kind="routing", settings={"cap": 3.0, "tier_s_min": 3})
    assert values == {**policy_defaults("routing"), "cap": 3.0, "tier_s_min": 3.0}
    assert isinstance(values["tier_s_min"], float)
