"""Loading request traces: the shipped Azure traces, generic CSV/JSONL, the gateway's log, bad input."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from fleet.sim.traces import TraceError, trace_from_request_log, trace_load


def test_azure_traces_load_sorted_from_zero_with_their_wall_clock_start() -> None:
    trace = trace_load("azure-code")
    assert len(trace.requests) == 8_819
    assert trace.start == datetime(2023, 11, 16, 18, 17, 3, 979960, tzinfo=UTC)
    assert trace.requests[0] == type(trace.requests[0])(0.0, 4808, 10)
    arrivals = [r.arrival_s for r in trace.requests]
    assert arrivals == sorted(arrivals)
    assert 3_400 < trace.duration_s < 3_500


def test_csv_with_seconds_and_jsonl_with_timestamps(tmp_path: Path) -> None:
    csv_file = tmp_path / "mine.csv"
    csv_file.write_text("arrival_s,prompt_tokens,output_tokens\n12.5,100,5\n10,200,0\n")
    trace = trace_load(csv_file)
    assert [(r.arrival_s, r.prompt_tokens, r.output_tokens) for r in trace.requests] == [(0.0, 200, 1), (2.5, 100, 5)]
    jsonl = tmp_path / "log.jsonl"
    rows = [
        {"at": "2026-01-05T09:00:01Z", "input_tokens": 30, "completion_tokens": 7},
        {"at": "2026-01-05T09:00:00Z", "input_tokens": 10, "completion_tokens": 3},
    ]
    jsonl.write_text("\n".join(json.dumps(row) for row in rows) + "\n\n")
    trace = trace_load(jsonl)
    assert trace.start == datetime(2026, 1, 5, 9, tzinfo=UTC)
    assert [(r.arrival_s, r.prompt_tokens) for r in trace.requests] == [(0.0, 10), (1.0, 30)]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("when,prompt_tokens,output_tokens\n1,2,3\n", "no arrival time column"),
        ("arrival_s,prompt_tokens,output_tokens\n1,2,3\n2,-4,3\n", "row 2"),
        ("arrival_s,prompt_tokens,output_tokens\n1,2.5,3\n", "row 1"),
        ("arrival_s,prompt_tokens,output_tokens\n1,2,3\n2026-01-01T00:00:00,2,3\n", "mix timestamps and seconds"),
        ("arrival_s,prompt_tokens,output_tokens\n", "no requests"),
    ],
)
def test_bad_csv_is_refused_naming_what_is_wrong(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(content)
    with pytest.raises(TraceError, match=message):
        trace_load(path)


def test_bad_jsonl_and_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"arrival_s": 1, "prompt_tokens": 2, "output_tokens": 3}\nnot json\n')
    with pytest.raises(TraceError, match="line 2: not JSON"):
        trace_load(path)
    with pytest.raises(TraceError, match="azure-code"):
        trace_load(tmp_path / "missing.csv")


def test_request_log_rows_without_token_counts_are_skipped() -> None:
    at = datetime(2026, 1, 5, 9, tzinfo=UTC)
    rows = [
        {"at": at, "prompt_tokens": 50, "output_tokens": 9},
        {"at": at, "prompt_tokens": None, "output_tokens": None},
    ]
    trace = trace_from_request_log(rows)
    assert len(trace.requests) == 1 and trace.start == at


def test_speedup_keeps_the_requests() -> None:
    """Rate scaling (new arrivals, no copies) is tested in test_arrivals.py."""
    trace = trace_load("azure-conv")
    fast = trace.sped_up(2)
    assert fast.duration_s == pytest.approx(trace.duration_s / 2)
    assert [r.prompt_tokens for r in fast.requests] == [r.prompt_tokens for r in trace.requests]
