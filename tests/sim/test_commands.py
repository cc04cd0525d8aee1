"""The simulate command end to end on a small trace file."""

from __future__ import annotations

import html
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


@pytest.mark.django_db
def test_simulate_a_pool_of_the_panel_with_its_stored_policies(tmp_path: Path) -> None:
    from fleet.models import Policy
    from fleet.policies.settings import SCHEMAS
    from tests.factories import make_pool

    pool = make_pool(name="chat-sim", min_instances=0, max_instances=3, sla_latency_ms=300)
    for kind in SCHEMAS:
        Policy.objects.create(kind=kind, pool=pool, enabled=False, settings={})
    trace = small_trace(tmp_path / "trace.csv")
    out = StringIO()
    call_command(
        "simulate",
        f"--trace={trace}",
        f"--pool={pool.pk}",
        "--gpus=3",
        f"--report={tmp_path / 'report.html'}",
        "--quiet",
        stdout=out,
        stderr=StringIO(),
    )
    page = html.unescape((tmp_path / "report.html").read_text())
    assert '"name": "chat-sim"' in page and '"sla_latency_ms": 300' in page
    # Every policy is switched off for this pool: the policy run keeps the static fleet.
    policy_row = next(line for line in out.getvalue().splitlines() if line.startswith("| policy |"))
    assert "| 0.0% |" in policy_row
    with pytest.raises(CommandError, match="no such pool"):
        call_command("simulate", f"--trace={trace}", "--pool=999999", "--quiet", stdout=StringIO())


@pytest.mark.django_db
def test_simulate_replays_the_gateways_request_log() -> None:
    from datetime import timedelta

    from django.utils import timezone

    from fleet.models import RequestLog

    start = timezone.now() - timedelta(hours=1)
    RequestLog.objects.bulk_create(
        RequestLog(
            at=start + timedelta(seconds=2 * i),
            endpoint="chat",
            model="m",
            rcf=1.0,
            tier="L",
            status=200,
            prompt_tokens=300 + i,
            output_tokens=8,
            latency_ms=200.0,
        )
        for i in range(60)
    )
    out = StringIO()
    call_command("simulate", "--trace=request-log", "--gpus=2", "--quiet", stdout=out, stderr=StringIO())
    assert "Trace request log, 60 requests" in out.getvalue()


@pytest.mark.django_db
def test_simulate_runs_the_batch_work_its_settings_queue(tmp_path: Path) -> None:
    """Requests for 10 s, then one at 400 s: the instance sleeps after 60 s idle (the tick at 90 s), the
    next tick lends its card to both jobs, which finish a minute later, well before the wake."""
    trace = tmp_path / "trace.csv"
    trace.write_text("arrival_s,prompt_tokens,output_tokens\n" + "".join(f"{t},200,5\n" for t in [*range(11), 400]))
    settings = tmp_path / "settings.json"
    pool = {"enable_sleep_mode": True, "idle_minimize_after_s": 60, "idle_stop_after_s": 3600}
    batch = {"jobs": 2, "memory_gib": 10, "run_s": 60}
    settings.write_text(json.dumps({"pool": pool, "policies": {"autoscale": None}, "batch": batch}))
    out = StringIO()
    call_command("simulate", f"--trace={trace}", "--gpus=1", f"--policy-settings={settings}", "--quiet", stdout=out)
    assert "Sleeping and batch work (policy fleet)" in out.getvalue()
    assert "ran on their cards for 0.017 of them (" in out.getvalue()  # both jobs on the card from 120 s to 180 s
    assert "0.033 in the 2 job(s) of 2 that finished, 0.000 thrown away by 0 preemption(s)" in out.getvalue()
    settings.write_text(json.dumps({"batch": {"jobs": 2, "memory_gib": 10}}))
    with pytest.raises(CommandError, match=r"^settings: the batch section needs run_s$"):
        call_command("simulate", f"--trace={trace}", f"--policy-settings={settings}", "--quiet", stdout=StringIO())
