"""The replayer turns trace rows into requests the gateway counts and fingerprints as the trace says."""

from __future__ import annotations

from fleet.gateway.counting import CHAT_MESSAGE_OVERHEAD, CHAT_REPLY_OVERHEAD, ESTIMATE
from fleet.policies.routing import text_features
from fleet.sim.replay import prompt_text, trace_for


def test_prompts_count_as_the_rows_prompt_tokens_and_code_rows_look_like_code() -> None:
    for tokens in (64, 374, 1155, 7436):
        for code in (False, True):
            text = prompt_text(tokens, code=code)
            assert ESTIMATE.count(text) + CHAT_MESSAGE_OVERHEAD + CHAT_REPLY_OVERHEAD == tokens
            features = text_features(text)
            assert (features.code_block, features.code_keywords) == (code, code)


def test_the_demos_trace_names_are_the_azure_traces() -> None:
    conv, code = trace_for("conv"), trace_for("code")
    assert (conv.name, len(conv.requests)) == ("azure-conv", 19_366)
    assert (code.name, len(code.requests)) == ("azure-code", 8_819)
    assert conv.requests[0].arrival_s == 0.0
