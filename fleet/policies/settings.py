"""The settings each policy kind takes, with the method's defaults, their bounds, labels and units.

The admin builds a typed field for each setting from here and validates with
``policy_settings_clean``, so a bad value is refused under its field instead of failing later
inside a Celery task; logs and the simulator get the same checks through
``policy_settings_validate``, as one flat message naming each key. A stored row whose
settings no longer validate means what ``policy_settings_stored`` says, wherever it is read.
Errors are ``SettingsInvalid``, a plain ``ValueError``, so the simulator needs no Django.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

# The key of a problem with the settings as a whole: Django's NON_FIELD_ERRORS, so the admin
# shows it above the fields.
WHOLE = "__all__"


class SettingsInvalid(ValueError):
    """Settings that do not fit their kind: the messages under each setting (``WHOLE`` for all of them).

    The ``Policy`` model raises them as the admin's ``ValidationError`` (``message_dict`` is its shape).
    """

    def __init__(self, problems: Mapping[str, list[str]]) -> None:
        self.message_dict = {key: list(messages) for key, messages in problems.items()}
        super().__init__("; ".join(self.messages))

    @property
    def messages(self) -> list[str]:
        return [message for messages in self.message_dict.values() for message in messages]


def number_text(value: float) -> str:
    """A number as people write it: 3 rather than 3.0, 10000000 rather than 1e+07."""
    return f"{value:.15g}"


@dataclass(frozen=True)
class Setting:
    default: float | int | bool
    minimum: float | None = None
    maximum: float | None = None
    help: str = ""
    label: str = field(kw_only=True)
    unit: str = field(default="", kw_only=True)

    @property
    def title(self) -> str:
        """The label with its unit, as a form shows it: "Scale-out cooldown (s)"."""
        return f"{self.label} ({self.unit})" if self.unit else self.label

    def parse(self, value: Any) -> float | int | bool:
        kind = type(self.default)
        if kind is bool:
            if not isinstance(value, bool):
                raise ValueError(f"expected true or false, got {value!r}.")
            return value
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"expected a number, got {value!r}.")
        if kind is int and not float(value).is_integer():
            raise ValueError(f"expected a whole number, got {value!r}.")
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError(f"{value!r} is not a finite number.")
        if self.minimum is not None and value < self.minimum:
            raise ValueError(f"{number_text(value)} is below the minimum {number_text(self.minimum)}.")
        if self.maximum is not None and value > self.maximum:
            raise ValueError(f"{number_text(value)} is above the maximum {number_text(self.maximum)}.")
        return kind(value)


DAY = 86_400

SCHEMAS: dict[str, dict[str, Setting]] = {
    "idle_reclaim": {
        "idle_duty_cycle_pct": Setting(
            20,
            0,
            100,
            "An instance is idle below this duty cycle with an empty queue.",
            label="Idle below duty cycle",
            unit="%",
        ),
        "sleep_level": Setting(1, 1, 2, "vLLM sleep level for the first idle stage.", label="vLLM sleep level"),
    },
    "prewarm": {
        "lookback_days": Setting(
            21, 1, 90, "Days of request log the traffic profile learns from.", label="Look back", unit="days"
        ),
        "slot_minutes": Setting(
            15, 1, 60, "Width of a time-of-day slot in the profile.", label="Time-of-day slot", unit="minutes"
        ),
        "min_requests_per_slot": Setting(
            3, 1, 10_000, "A slot counts as busy from this many requests.", label="Busy slot from", unit="requests"
        ),
    },
    "autoscale": {
        "queue_threshold": Setting(
            4,
            0,
            10_000,
            "Scale out when this many requests wait in vLLM's queue.",
            label="Scale out at queue length",
            unit="requests",
        ),
        "breach_windows": Setting(
            2, 1, 60, "Consecutive evaluations in breach before scaling out.", label="Breaches before scaling out"
        ),
        "scale_in_windows": Setting(
            3,
            1,
            6,
            "Consecutive one-minute windows under the band before scaling in (the snapshot keeps six).",
            label="Calm windows before scaling in",
            unit="minutes",
        ),
        "prefill_tokens_per_s": Setting(
            0.0,
            0,
            10_000_000,
            "Prompt tokens one instance prefills a second at full load (sim_fit measures it); "
            "prompt tokens a second over this counts as load. 0 leaves prefill out of the load.",
            label="Prefill capacity",
            unit="tokens/s",
        ),
        "scale_out_cooldown_s": Setting(
            60, 0, DAY, "No scale-out within this long of the last one.", label="Scale-out cooldown", unit="s"
        ),
        "scale_in_cooldown_s": Setting(
            300,
            0,
            DAY,
            "No scale-in within this long of the last scale-out or scale-in.",
            label="Scale-in cooldown",
            unit="s",
        ),
        "scale_in_backoff_max_s": Setting(
            14_400,
            0,
            DAY,
            "A scale-in undone by a scale-out within this long was premature: each one in a row doubles the "
            "scale-in cooldown before the next, up to this long. 0: no back-off.",
            label="Scale-in back-off up to",
            unit="s",
        ),
        "scale_in_max_queue": Setting(
            0.5,
            0,
            10_000,
            "Scale in only while at most this many requests wait on average (a stray one is no backlog).",
            label="Scale in at queue up to",
            unit="requests",
        ),
        "scale_in_drain": Setting(
            False,
            help="Under steady traffic every instance is busy: scale in by draining the least loaded one (the "
            "gateway stops routing to it at once). Needs vLLM's --shutdown-timeout (finish in-flight requests on "
            "SIGTERM) within the agent's stop grace; off, scale-in waits for an instance with nothing in flight.",
            label="Scale in by draining a busy instance",
        ),
        "scale_in_load_margin": Setting(
            1.0,
            1.0,
            4.0,
            "A scale-in guesses the load on one instance fewer as the pool's load spread over the rest, and goes "
            "only while that guess times this stays within the band's top. The guess is a one-minute mean; the "
            "gateway scales out on the requests outstanding at any moment, so above 1 leaves room for the peaks.",
            label="Scale-in load margin",
            unit="×",
        ),
        "scale_in_latency_ratio": Setting(
            0.7,
            0.1,
            1.0,
            "Scale in only while latency is below this share of the SLA.",
            label="Scale in below latency",
            unit="× SLA",
        ),
    },
    "static_hold": {
        "static_replicas": Setting(
            0,
            0,
            10_000,
            "The always-on fleet the policies must not cost more than: scale-outs past this many billed "
            "instances are refused, and once the pool paid at least this x the window it holds this size. "
            "0: no guard.",
            label="Static fleet size",
            unit="instances",
        ),
        "window_hours": Setting(
            24.0,
            0.25,
            168,
            "The trailing window over which the pool's billed GPU-hours are compared with the static fleet's.",
            label="Trailing window",
            unit="h",
        ),
        "release_ratio": Setting(
            0.9,
            0.1,
            0.99,
            "A hold ends once the trailing spend falls under this share of the static fleet's (or after a whole "
            "window held).",
            label="Release the hold under",
            unit="× static",
        ),
        "refusal_log_s": Setting(
            600,
            0,
            DAY,
            "A refused scale-out or reclaim is logged at most once per this long per pool (it is refused every time).",
            label="Log refusals at most every",
            unit="s",
        ),
    },
    "colocate": {
        "min_free_memory_gib": Setting(
            4.0, 0.5, 1024, "Batch work needs this much free GPU memory.", label="Free GPU memory needed", unit="GiB"
        ),
        "max_duty_cycle_pct": Setting(
            30, 0, 100, "Batch work runs only below this duty cycle.", label="Batch below duty cycle", unit="%"
        ),
        "max_image_mb": Setting(200, 1, 100_000, "Light batch images only.", label="Largest batch image", unit="MB"),
    },
    "reap": {
        "orphan_grace_s": Setting(
            600,
            0,
            7 * DAY,
            "Unrequested containers are stopped after this long.",
            label="Grace before stopping an orphan",
            unit="s",
        ),
    },
    "routing": {
        "weight_code_block": Setting(
            1.8, 0, 100, "Multiplier for a fenced code block.", label="Code block weight", unit="×"
        ),
        "weight_code_keywords": Setting(
            1.5, 0, 100, "Multiplier for code keywords such as 'def ' or 'for '.", label="Code keyword weight", unit="×"
        ),
        "weight_math": Setting(1.6, 0, 100, "Multiplier for mathematical symbols.", label="Maths weight", unit="×"),
        "prompt_tokens_scale": Setting(
            512,
            1,
            1_000_000,
            "RCF counts prompt tokens in units of this (the method's default prompt: 512).",
            label="Prompt tokens per RCF unit",
            unit="tokens",
        ),
        "max_tokens_scale": Setting(
            256,
            1,
            1_000_000,
            "RCF is scaled by max_tokens / this.",
            label="Requested output tokens per RCF unit",
            unit="tokens",
        ),
        "cap": Setting(5.0, 0.1, 1000, "Upper bound of the RCF.", label="RCF cap"),
        "tier_s_min": Setting(
            3.0, 0, 1000, "RCF at or above this goes to the S pool; at most the RCF cap.", label="S tier from RCF"
        ),
        "tier_m_min": Setting(
            1.2, 0, 1000, "RCF at or above this (and below S) goes to the M pool.", label="M tier from RCF"
        ),
    },
}


def policy_defaults(kind: str) -> dict[str, float | int | bool]:
    return {key: setting.default for key, setting in SCHEMAS[kind].items()}


def policy_settings_clean(*, kind: str, settings: Any) -> dict[str, float | int | bool]:
    """Return the settings with defaults filled in, or raise one error keyed by setting.

    Messages do not repeat the key: the admin shows each under the field of its setting.
    """
    if kind not in SCHEMAS:
        raise SettingsInvalid({WHOLE: [f"Unknown policy kind {kind!r}; known: {', '.join(sorted(SCHEMAS))}."]})
    if not isinstance(settings, dict):
        raise SettingsInvalid({WHOLE: ["Settings must be a JSON object."]})
    schema = SCHEMAS[kind]
    problems: dict[str, list[str]] = {}
    result = policy_defaults(kind)
    for key, value in settings.items():
        if key not in schema:
            problems[key] = [f"not a setting of {kind}; known: {', '.join(schema)}."]
            continue
        try:
            result[key] = schema[key].parse(value)
        except ValueError as exc:
            problems[key] = [str(exc)]
    if not problems:
        problems.update(_cross_checks(kind, result))
    if problems:
        raise SettingsInvalid(problems)
    return result


def policy_settings_validate(*, kind: str, settings: Any) -> dict[str, float | int | bool]:
    """``policy_settings_clean`` with one flat error, each message naming its key, for logs and commands."""
    try:
        return policy_settings_clean(kind=kind, settings=settings)
    except SettingsInvalid as exc:
        raise SettingsInvalid(
            {
                WHOLE: [
                    message if key == WHOLE else f"{key}: {message}"
                    for key, messages in exc.message_dict.items()
                    for message in messages
                ]
            }
        ) from exc


# Each row's problem as last logged, so a row read every few seconds is reported once per problem.
_REPORTED: dict[str, str] = {}


def policy_settings_stored(*, kind: str, settings: Any, row: str) -> dict[str, float | int | bool]:
    """What a stored policy row's settings mean, for every reader: the evaluate loop, the
    gateway's routing, the agents' batch-job bound and the simulator run on a stored pool.

    The admin refuses invalid settings, so a row that fails validation was edited outside it
    or predates a change of the schema. One bad edit must not stop the policies, the gateway
    or the agents' replies, and the policy stays as enabled as its row says: the kind's
    defaults apply, and the problem is logged once (``row`` names the row) until it changes.
    """
    try:
        values = policy_settings_validate(kind=kind, settings=settings)
    except SettingsInvalid as exc:
        problem = "; ".join(exc.messages)
    else:
        _REPORTED.pop(row, None)
        return values
    if _REPORTED.get(row) != problem:
        _REPORTED[row] = problem
        log.warning("%s: stored settings are invalid (%s); the defaults of %s apply", row, problem, kind)
    return policy_defaults(kind)


def _cross_checks(kind: str, values: dict[str, float | int | bool]) -> dict[str, list[str]]:
    if kind != "routing":
        return {}
    cap, s_min, m_min = values["cap"], values["tier_s_min"], values["tier_m_min"]
    if s_min > cap:
        return {
            "tier_s_min": [
                f"{number_text(s_min)} is above the RCF cap ({number_text(cap)}): no request would reach the S tier."
            ]
        }
    if m_min >= s_min:
        return {"tier_m_min": [f"{number_text(m_min)} must be below the S tier threshold ({number_text(s_min)})."]}
    return {}
