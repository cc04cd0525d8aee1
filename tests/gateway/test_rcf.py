"""RCF arithmetic against hand-computed values, and tiers from the routing policy's settings."""

from __future__ import annotations

import pytest

from fleet.gateway.counting import ESTIMATE, TokenizerCounter, counter_for
from fleet.gateway.table import routing_table_load
from fleet.models import Policy
from fleet.policies.routing import Features, RoutingSettings, rcf_compute, text_features, tier_for

DEFAULTS = RoutingSettings.defaults()
PLAIN = Features(code_block=False, code_keywords=False, math=False)


@pytest.mark.parametrize(
    ("prompt_tokens", "max_tokens", "features", "expected"),
    [
        # 512/512 x 1 x 256/256
        (512, 256, PLAIN, 1.0),
        # 512/512 x 1.8 x 256/256
        (512, 256, Features(True, False, False), 1.8),
        # 256/512 x 1.5 x 512/256 = 0.5 x 1.5 x 2
        (256, 512, Features(False, True, False), 1.5),
        # 1024/512 x 1.8 x 1.6 x 128/256 = 2 x 2.88 x 0.5
        (1024, 128, Features(True, False, True), 2.88),
        # 100/512 x 1.8 x 1.5 x 1.6 x 64/256 = 0.1953125 x 4.32 x 0.25
        (100, 64, Features(True, True, True), 0.2109375),
        # 4096/512 x 1 x 256/256 = 8, capped at 5
        (4096, 256, PLAIN, 5.0),
        # no max_tokens counts as max_tokens_scale: 768/512
        (768, None, PLAIN, 1.5),
    ],
)
def test_rcf_matches_hand_computed_values(
    prompt_tokens: int, max_tokens: int | None, features: Features, expected: float
) -> None:
    value = rcf_compute(prompt_tokens=prompt_tokens, max_tokens=max_tokens, features=features, settings=DEFAULTS)
    assert value == pytest.approx(expected)


def test_features_need_a_closed_fence_keywords_with_a_space_and_math_symbols() -> None:
    assert text_features("```python\nx = 1\n```") == Features(code_block=True, code_keywords=False, math=False)
    assert text_features("an open ``` fence only") == PLAIN
    assert text_features("def f(x): return x") == Features(code_block=False, code_keywords=True, math=False)
    assert text_features("define the defaults") == PLAIN
    assert text_features("∫ f(x) dx with α and β") == Features(code_block=False, code_keywords=False, math=True)


def test_tier_boundaries_follow_the_method_defaults() -> None:
    assert [tier_for(value, DEFAULTS) for value in (5.0, 3.0, 2.99, 1.2, 1.19, 0.0)] == ["S", "S", "M", "M", "L", "L"]


def test_a_disabled_routing_policy_sends_everything_to_the_light_tier() -> None:
    settings = RoutingSettings.from_settings({}, enabled=False)
    assert tier_for(5.0, settings) == "L"


@pytest.mark.django_db
def test_tiers_and_weights_come_from_the_routing_policy() -> None:
    policy = Policy.objects.get(kind="routing", pool=None)
    policy.settings = {**policy.settings, "tier_s_min": 2.0, "tier_m_min": 0.5, "weight_math": 3.0}
    policy.save()

    settings = routing_table_load().settings

    assert (settings.tier_s_min, settings.tier_m_min, settings.weight_math) == (2.0, 0.5, 3.0)
    # 512/512 x 1 x 256/256 = 1.0: L under the defaults, M under these thresholds.
    assert tier_for(1.0, DEFAULTS) == "L"
    assert tier_for(1.0, settings) == "M"
    # 512/512 x 3.0 = 3.0 with math: S here (>= 2.0).
    math = rcf_compute(prompt_tokens=512, max_tokens=256, features=text_features("∑"), settings=settings)
    assert (math, tier_for(math, settings)) == (3.0, "S")


@pytest.mark.django_db
def test_invalid_stored_routing_settings_fall_back_to_the_defaults() -> None:
    Policy.objects.filter(kind="routing", pool=None).update(settings={"tier_s_min": 1.0, "tier_m_min": 2.0})
    assert routing_table_load().settings == DEFAULTS


def test_estimate_is_characters_over_four_rounded_up() -> None:
    assert [ESTIMATE.count(text) for text in ("", "abc", "abcd", "abcde")] == [0, 1, 1, 2]
    assert counter_for("") is ESTIMATE


def test_a_tokenizer_file_counts_exactly(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"[UNK]": 0, "gpu": 1, "fleet": 2, "cost": 3}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    path = tmp_path / "tokenizer.json"
    tokenizer.save(str(path))

    counter = counter_for(str(path))

    assert isinstance(counter, TokenizerCounter)
    assert counter.count("gpu fleet cost unknown words") == 5
    assert counter.count("lone \ud800 surrogate") == 3


def test_an_unreadable_tokenizer_file_falls_back_to_the_estimate(tmp_path) -> None:  # type: ignore[no-untyped-def]
    assert counter_for(str(tmp_path / "missing.json")) is ESTIMATE
