"""The settings each policy kind takes, with the method's defaults and their bounds.

The admin validates a policy's JSON settings here, so a bad value is refused with a
message naming the key instead of failing later inside a Celery task.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.core.exceptions import ValidationError


@dataclass(frozen=True)
class Setting:
    default: float | int | bool
    minimum: float | None = None
    maximum: float | None = None
    help: str = ""

    def parse(self, key: str, value: Any) -> float | int | bool:
        kind = type(self.default)
        if kind is bool:
            if not isinstance(value, bool):
                raise ValidationError(f"{key}: expected true or false, got {value!r}.")
            return value
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValidationError(f"{key}: expected a number, got {value!r}.")
        if kind is int and not float(value).is_integer():
            raise ValidationError(f"{key}: expected a whole number, got {value!r}.")
        if value != value or value in (float("inf"), float("-inf")):
            raise ValidationError(f"{key}: {value!r} is not a finite number.")
        if self.minimum is not None and value < self.minimum:
            raise ValidationError(f"{key}: {value} is below the minimum {self.minimum}.")
        if self.maximum is not None and value > self.maximum:
            raise ValidationError(f"{key}: {value} is above the maximum {self.maximum}.")
        return kind(value)


DAY = 86_400

SCHEMAS: dict[str, dict[str, Setting]] = {
    "idle_reclaim": {
        "idle_duty_cycle_pct": Setting(20, 0, 100, "An instance is idle below this duty cycle with an empty queue."),
        "sleep_level": Setting(1, 1, 2, "vLLM sleep level for the first idle stage."),
    },
    "prewarm": {
        "lookback_days": Setting(21, 1, 90, "Weeks of request log the traffic profile learns from."),
        "slot_minutes": Setting(15, 1, 60, "Width of a time-of-day slot in the profile."),
        "min_requests_per_slot": Setting(3, 1, 10_000, "A slot counts as busy from this many requests."),
    },
    "autoscale": {
        "queue_threshold": Setting(4, 0, 10_000, "Scale out when this many requests wait in vLLM's queue."),
        "breach_windows": Setting(2, 1, 60, "Consecutive evaluations in breach before scaling out."),
        "scale_in_windows": Setting(
            3, 1, 6, "Consecutive one-minute windows under the band before scaling in (the snapshot keeps six)."
        ),
        "prefill_tokens_per_s": Setting(
            0.0,
            0,
            10_000_000,
            "Prompt tokens one instance prefills a second at full load (sim_fit measures it); "
            "prompt tokens a second over this counts as load. 0 leaves prefill out of the load.",
        ),
        "scale_out_cooldown_s": Setting(60, 0, DAY),
        "scale_in_cooldown_s": Setting(300, 0, DAY),
        "scale_in_max_queue": Setting(
            0.5,
            0,
            10_000,
            "Scale in only while at most this many requests wait on average (a stray one is no backlog).",
        ),
        "scale_in_drain": Setting(
            False,
            help="Under steady traffic every instance is busy: scale in by draining the least loaded one (the "
            "gateway stops routing to it at once). Needs vLLM's --shutdown-timeout (finish in-flight requests on "
            "SIGTERM) within the agent's stop grace; off, scale-in waits for an instance with nothing in flight.",
        ),
        "scale_in_latency_ratio": Setting(0.7, 0.1, 1.0, "Scale in only while latency is below this share of the SLA."),
    },
    "colocate": {
        "min_free_memory_gib": Setting(4.0, 0.5, 1024, "Batch work needs this much free GPU memory."),
        "max_duty_cycle_pct": Setting(30, 0, 100, "Batch work runs only below this duty cycle."),
        "max_image_mb": Setting(200, 1, 100_000, "Light batch images only."),
    },
    "reap": {
        "orphan_grace_s": Setting(600, 0, 7 * DAY, "Unrequested containers are stopped after this long."),
    },
    "routing": {
        "weight_code_block": Setting(1.8, 0, 100, "Multiplier for a fenced code block."),
        "weight_code_keywords": Setting(1.5, 0, 100, "Multiplier for code keywords such as 'def ' or 'for '."),
        "weight_math": Setting(1.6, 0, 100, "Multiplier for mathematical symbols."),
        "prompt_tokens_scale": Setting(
            512, 1, 1_000_000, "RCF counts prompt tokens in units of this (the method's default prompt: 512)."
        ),
        "max_tokens_scale": Setting(256, 1, 1_000_000, "RCF is scaled by max_tokens / this."),
        "cap": Setting(5.0, 0.1, 1000, "Upper bound of the RCF."),
        "tier_s_min": Setting(3.0, 0, 1000, "RCF at or above this goes to the S pool."),
        "tier_m_min": Setting(1.2, 0, 1000, "RCF at or above this (and below S) goes to the M pool."),
    },
}


def policy_defaults(kind: str) -> dict[str, float | int | bool]:
    return {key: setting.default for key, setting in SCHEMAS[kind].items()}


def policy_settings_validate(*, kind: str, settings: Any) -> dict[str, float | int | bool]:
    """Return the settings with defaults filled in, or raise one error listing every problem."""
    if kind not in SCHEMAS:
        raise ValidationError(f"Unknown policy kind {kind!r}; known: {', '.join(sorted(SCHEMAS))}.")
    if not isinstance(settings, dict):
        raise ValidationError("Settings must be a JSON object.")
    schema = SCHEMAS[kind]
    problems: list[str] = []
    result = policy_defaults(kind)
    for key, value in settings.items():
        if key not in schema:
            problems.append(f"{key}: not a setting of {kind}; known: {', '.join(schema)}.")
            continue
        try:
            result[key] = schema[key].parse(key, value)
        except ValidationError as exc:
            problems.extend(exc.messages)
    if not problems:
        problems.extend(_cross_checks(kind, result))
    if problems:
        raise ValidationError(problems)
    return result


def _cross_checks(kind: str, values: dict[str, float | int | bool]) -> list[str]:
    if kind == "routing" and values["tier_m_min"] >= values["tier_s_min"]:
        return [f"tier_m_min ({values['tier_m_min']}) must be below tier_s_min ({values['tier_s_min']})."]
    return []
