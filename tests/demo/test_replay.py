"""The replayer turns trace rows into requests the gateway counts and fingerprints as the trace says."""

from __future__ import annotations

from pathlib import Path

from fleet.gateway.counting import CHAT_MESSAGE_OVERHEAD, CHAT_REPLY_OVERHEAD, ESTIMATE
from fleet.policies.routing import text_features
from fleet.sim.replay import TRACES, prompt_text, trace_read


def test_prompts_count_as_the_rows_prompt_tokens_and_code_rows_look_like_code() -> None:
    for tokens in (64, 374, 1155, 7436):
        for code in (False, True):
            text = prompt_text(tokens, code=code)
            assert ESTIMATE.count(text) + CHAT_MESSAGE_OVERHEAD + CHAT_REPLY_OVERHEAD == tokens
            features = text_features(text)
            assert (features.code_block, features.code_keywords) == (code, code)


def test_trace_rows_are_offsets_from_the_first_request(tmp_path: Path) -> None:
    trace = tmp_path / "t.csv"
    trace.write_text(
        "TIMESTAMP,ContextTokens,GeneratedTokens\n"
        "2023-11-16 18:15:50.9951690,396,109\n"
        "2023-11-16 18:15:46.6805900,374,44\n"
        "2023-11-16 18:16:46.6805900,0,0\n"
    )
    rows = trace_read(trace)
    assert [(round(r.offset_s, 6), r.prompt_tokens, r.output_tokens) for r in rows] == [
        (0.0, 374, 44),
        (4.314579, 396, 109),
        (60.0, 1, 1),
    ]
    assert len(trace_read(TRACES["conv"])) == 19_366
