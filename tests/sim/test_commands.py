"""The simulate command end to end on a small trace file."""

from __future__ import annotations

import json
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command


def small_trace(path: Path) -> Path:
    rows = ["arrival_s,prompt_tokens,output_tokens"]
    rows += [f"{t * 0.5},{200 + 50 * (t % 7)},{5 + t % 9}" for t in range(240)]
    path.write_text("\n".join(rows) + "\n")
    return path


@pytest.mark.django_db
def test_simulate_writes_the_markdown_table_and_the_html_report(tmp_path: Path) -> None:
    trace = small_trace(tmp_path / "trace.csv")
    settings = tmp_path / "settings.json"
    settings.write_text(
        json.dumps({"pool": {"util_band_low": 0.9, "util_band_high": 1.0}, "policies": {"prewarm": None}})
    )
    out, err = StringIO(), StringIO()
    call_command(
        "simulate",
        f"--trace={trace}",
        "--gpu=L4",
        "--gpus=3",
        "--price=0.80",
        f"--policy-settings={settings}",
        f"--report={tmp_path / 'report.html'}",
        f"--markdown={tmp_path / 'table.md'}",
        stdout=out,
        stderr=err,
    )
    table = (tmp_path / "table.md").read_text()
    assert table == out.getvalue()
    assert "| policy |" in table and "| oracle |" in table and "always on" in table
    assert "simulated L4" in table
    page = (tmp_path / "report.html").read_text()
    assert "Everything on this page is simulated" in page and "Plotly.newPlot" in page
    assert "static" in err.getvalue()


@pytest.mark.django_db
def test_simulate_refuses_bad_input_with_a_message(tmp_path: Path) -> None:
    trace = small_trace(tmp_path / "trace.csv")
    with pytest.raises(CommandError, match="no engine model for GPU"):
        call_command("simulate", f"--trace={trace}", "--gpu=TPU", "--quiet", stdout=StringIO())
    settings = tmp_path / "settings.json"
    settings.write_text(json.dumps({"policies": {"autoscale": {"breach_windows": 0}}}))
    with pytest.raises(CommandError, match="breach_windows"):
        call_command("simulate", f"--trace={trace}", f"--policy-settings={settings}", "--quiet", stdout=StringIO())
    with pytest.raises(CommandError, match="no such file"):
        call_command("simulate", f"--trace={tmp_path / 'nope.csv'}", "--quiet", stdout=StringIO())
