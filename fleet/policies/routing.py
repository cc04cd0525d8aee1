"""Request complexity fingerprint (RCF) and the tier it sends a request to.

Pure functions of the request's text and numbers and the fleet-wide ``routing`` policy
settings, so the gateway, the trace simulator and the tests compute the same figure.

The method defines RCF as prompt tokens x feature weights x max_tokens / 256, capped at
5.0. Read literally, any prompt of five tokens already hits the cap and every request
lands in the S tier, so prompt tokens are counted in units of ``prompt_tokens_scale``
(default 512, the method's default prompt length): a plain 512-token prompt asking for
256 tokens scores exactly 1.0. Setting ``prompt_tokens_scale`` to 1 gives the literal
formula. Feature weights multiply when several features are present: a prompt with a
fenced code block and maths is both harder to read and to answer.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from fleet.policies.settings import policy_defaults

TIERS = ("S", "M", "L")

# Where a request goes when its own tier has no ready capacity: the nearest tier first,
# then the stronger one. A light request may borrow a bigger pool rather than wait; a
# heavy one degrades to weaker pools rather than wait for a cold start.
FALLBACK: dict[str, tuple[str, ...]] = {
    "S": ("S", "M", "L"),
    "M": ("M", "S", "L"),
    "L": ("L", "M", "S"),
}

CODE_FENCE = "```"
CODE_KEYWORDS = re.compile(r"\b(?:def|for|while|class|import|return|lambda|function)\s")
MATH_SYMBOLS = frozenset("∫∬∮∑∏√∂∇∞≤≥≠≈±×÷∈∉⊂⊆∪∩αβγδεζηθλμπρστφχψω")


@dataclass(frozen=True, slots=True)
class RoutingSettings:
    """The ``routing`` policy's settings, typed; built once per routing-table refresh."""

    weight_code_block: float
    weight_code_keywords: float
    weight_math: float
    prompt_tokens_scale: float
    max_tokens_scale: float
    cap: float
    tier_s_min: float
    tier_m_min: float
    enabled: bool = True

    @classmethod
    def from_settings(cls, values: Mapping[str, float | int | bool], *, enabled: bool = True) -> RoutingSettings:
        """``values`` must already be validated (``policy_settings_validate``) or be the defaults."""
        merged = {**policy_defaults("routing"), **values}
        return cls(
            weight_code_block=float(merged["weight_code_block"]),
            weight_code_keywords=float(merged["weight_code_keywords"]),
            weight_math=float(merged["weight_math"]),
            prompt_tokens_scale=float(merged["prompt_tokens_scale"]),
            max_tokens_scale=float(merged["max_tokens_scale"]),
            cap=float(merged["cap"]),
            tier_s_min=float(merged["tier_s_min"]),
            tier_m_min=float(merged["tier_m_min"]),
            enabled=enabled,
        )

    @classmethod
    def defaults(cls) -> RoutingSettings:
        return cls.from_settings({})


@dataclass(frozen=True, slots=True)
class Features:
    """What in a prompt makes it harder than its length says."""

    code_block: bool
    code_keywords: bool
    math: bool


def text_features(text: str) -> Features:
    """A fenced block needs an opening and a closing fence; keywords need their trailing space."""
    return Features(
        code_block=text.count(CODE_FENCE) >= 2,
        code_keywords=CODE_KEYWORDS.search(text) is not None,
        math=not MATH_SYMBOLS.isdisjoint(text),
    )


def feature_weight(features: Features, settings: RoutingSettings) -> float:
    weight = 1.0
    if features.code_block:
        weight *= settings.weight_code_block
    if features.code_keywords:
        weight *= settings.weight_code_keywords
    if features.math:
        weight *= settings.weight_math
    return weight


def rcf_compute(*, prompt_tokens: int, max_tokens: int | None, features: Features, settings: RoutingSettings) -> float:
    """RCF = prompt_tokens / prompt_tokens_scale x weights x max_tokens / max_tokens_scale, capped.

    A request without ``max_tokens`` counts as asking for ``max_tokens_scale`` tokens
    (a factor of 1): the server decides its length, so it says nothing about complexity.
    """
    requested = settings.max_tokens_scale if max_tokens is None else max_tokens
    value = (
        prompt_tokens
        / settings.prompt_tokens_scale
        * feature_weight(features, settings)
        * requested
        / settings.max_tokens_scale
    )
    return min(value, settings.cap)


def tier_for(rcf: float, settings: RoutingSettings) -> str:
    """S at or above ``tier_s_min``, M at or above ``tier_m_min``, else L; all L when routing is off."""
    if not settings.enabled:
        return "L"
    if rcf >= settings.tier_s_min:
        return "S"
    if rcf >= settings.tier_m_min:
        return "M"
    return "L"


class ContextPool(Protocol):
    """A pool as the context check sees it: the gateway's ``PoolRoute``, or ``PoolContext``."""

    @property
    def pool_id(self) -> int: ...

    @property
    def max_model_len(self) -> int: ...


@dataclass(frozen=True, slots=True)
class PoolContext:
    pool_id: int
    max_model_len: int


@dataclass(frozen=True, slots=True)
class ContextRefused:
    """No pool serving the model takes ``needed`` tokens: the gateway answers 400 context_length_exceeded."""

    needed: int
    longest: int


def context_needed(*, prompt_tokens: int, max_tokens: int | None) -> int:
    """The context a request needs: its prompt and what it may generate (at least one token)."""
    return prompt_tokens + (max_tokens or 1)


def pool_groups_for(
    *, tier: str, tiers: Mapping[str, Sequence[ContextPool]], prompt_tokens: int, max_tokens: int | None
) -> list[list[int]] | ContextRefused:
    """The pool ids to try, one group per tier in ``FALLBACK[tier]`` order, without the pools whose
    ``max_model_len`` the request exceeds and without empty groups; a refusal where none is left.

    The gateway routes by it and the simulator counts its refusals, so a request the gateway
    would refuse is never served in a simulation.
    """
    needed = context_needed(prompt_tokens=prompt_tokens, max_tokens=max_tokens)
    groups = [[pool.pool_id for pool in tiers.get(t, ()) if needed <= pool.max_model_len] for t in FALLBACK[tier]]
    groups = [group for group in groups if group]
    if groups:
        return groups
    longest = max((pool.max_model_len for pools in tiers.values() for pool in pools), default=0)
    return ContextRefused(needed=needed, longest=longest)
