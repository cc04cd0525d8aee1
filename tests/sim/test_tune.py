"""The settings search (``fleet.sim.tune``) on cases whose best settings are known by hand, and
``policy_apply``, which writes a tuned settings file to a stored pool through the services."""

from __future__ import annotations

import json
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command

from fleet.sim.result import Decision, SimOutcome
from fleet.sim.setup import setup_build
from fleet.sim.simulate import Simulation
from fleet.sim.tune import (
    Dimension,
    forward_markdown,
    forward_rows,
    settings_file_values,
    settings_patch,
    setup_for,
    tune,
)
from tests.sim.toy import TOY, sim_result, trace_of

# Idle reclaim and pre-warm off: the cases are about autoscale and the floor of instances alone.
QUIET = {"policies": {"idle_reclaim": None, "prewarm": None}}


def steady(seconds: int, *, every_s: float = 1.0, prompt: int = 200) -> list[tuple[float, int, int]]:
    return [(i * every_s, prompt, 1) for i in range(int(seconds / every_s))]


def test_a_trace_one_instance_serves_tunes_the_floor_down_to_one() -> None:
    """One 200-token prompt a second on the toy engine: each takes 0.01 + 0.2 s to its first token alone
    (well inside 500 ms), so one instance serves all 600 of them within the SLA, and a second only doubles
    the bill: 600 s of one instance is 600 / 3600 = 0.167 GPU-hours, of two 0.333. From a floor of 2 the
    search must come down to 1. A band whose low edge is above its high one is refused by validation, not
    run; the default band written out runs what the implicit one ran, and is not simulated twice.
    """
    trace = trace_of(*steady(600))
    space = (
        Dimension("min_instances", ({"pool": {"min_instances": 1}}, {"pool": {"min_instances": 2}})),
        Dimension(
            "band",
            (
                {"pool": {"util_band_low": 0.7, "util_band_high": 0.6}},
                {"pool": {"util_band_low": 0.5, "util_band_high": 0.65}},  # the defaults: the same run
            ),
        ),
    )
    base = settings_patch(QUIET, {"pool": {"min_instances": 2}})
    tuned = tune(trace=trace, engine=TOY, gpus=2, base=base, space=space, seed=0)
    assert tuned.meets_sla
    assert tuned.best.values["pool"]["min_instances"] == 1
    assert tuned.best.result.paid_gpu_hours == pytest.approx(600 / 3600, rel=0.02)
    assert tuned.base.result.paid_gpu_hours == pytest.approx(2 * 600 / 3600, rel=0.02)
    assert len(tuned.refused) == 1 and "band" in tuned.refused[0][1]
    assert len(tuned.evaluated) == 2  # floors 2 and 1; the default band written out is not simulated again


def test_a_static_size_below_the_floor_is_refused_as_the_admin_refuses_it() -> None:
    """The static-spend guard's size is in the search; with a floor of 2, a static size of 1 is the conflict the
    admin refuses (``static_hold.minimum_conflict``), listed and never run. A size of 2 runs: the steady trace
    of one prompt a second at a floor of 2 costs what it cost without the guard."""
    trace = trace_of(*steady(600))
    space = (
        Dimension(
            "static_replicas",
            ({"static_hold": {"static_replicas": 1}}, {"static_hold": {"static_replicas": 2}}),
        ),
    )
    base = settings_patch(QUIET, {"pool": {"min_instances": 2}})
    tuned = tune(trace=trace, engine=TOY, gpus=2, base=base, space=space, seed=0)
    [(values, message)] = tuned.refused
    assert values["policies"]["static_hold"] == {"static_replicas": 1}
    assert "minimum of 2 instances, above its static size of 1" in message
    assert [c.values["policies"].get("static_hold") for c in tuned.evaluated] == [None, {"static_replicas": 2}]
    assert tuned.evaluated[1].result.paid_gpu_hours == pytest.approx(tuned.base.result.paid_gpu_hours)


def test_headroom_chooses_the_cheapest_candidate_that_also_meets_the_sla_at_more_traffic() -> None:
    """One 200-token prompt a second, evenly spaced, is 0.21 s of work a second: one instance serves it all
    within 500 ms, so without headroom the search takes the floor of 1. At 1.5x that rate, drawn as Poisson
    arrivals, one instance queues in the bursts (about 96% within) and two do not: with headroom 0.5 the
    candidates that met the SLA are run again there cheapest first, the floor of 1 misses, the floor of 2
    meets it and is chosen, and the floor of 3 (dearer still) is never run at the headroom."""
    trace = trace_of(*steady(600))
    space = (Dimension("min_instances", tuple({"pool": {"min_instances": n}} for n in (1, 2, 3))),)
    base = settings_patch(QUIET, {"pool": {"min_instances": 2}})
    plain = tune(trace=trace, engine=TOY, gpus=4, base=base, space=space, seed=0)
    assert plain.best.values["pool"]["min_instances"] == 1
    assert plain.checks == [] and plain.holds_headroom is None

    tuned = tune(trace=trace, engine=TOY, gpus=4, base=base, space=space, seed=0, headroom=0.5)
    assert [c.result for c in tuned.evaluated] == [c.result for c in plain.evaluated]  # the same search
    assert [c.candidate.values["pool"]["min_instances"] for c in tuned.checks] == [1, 2]
    assert [c.meets_sla for c in tuned.checks] == [False, True]
    assert tuned.checks[0].result.attainment < 0.99
    assert tuned.checks[0].result.requests > 1.3 * len(trace.requests)  # the traffic at 1.5x
    assert tuned.best.values["pool"]["min_instances"] == 2
    assert tuned.meets_sla and tuned.holds_headroom is True
    assert "at 1.5x the traffic 2 candidate(s) run, 1 missed the SLA there" in tuned.summary


def test_the_search_keeps_each_runs_figures_not_its_per_request_lists() -> None:
    """Days of traffic at tens of requests a second are millions of requests: a search that kept every
    candidate's per-request lists ran out of memory. It keeps each run's ``SimOutcome``: the same figures the
    whole result gives (the same run, simulated again here), judged by the same ``meets_sla``."""
    trace = trace_of(*steady(600))
    space = (Dimension("min_instances", tuple({"pool": {"min_instances": n}} for n in (1, 2))),)
    base = settings_patch(QUIET, {"pool": {"min_instances": 2}})
    tuned = tune(trace=trace, engine=TOY, gpus=2, base=base, space=space, seed=0, workers=2, headroom=0.5)
    for kept in [*(c.result for c in tuned.evaluated), *(c.result for c in tuned.checks)]:
        assert isinstance(kept, SimOutcome) and not hasattr(kept, "ttft_s")
    whole = setup_for(tuned.base.values, engine=TOY, gpus=2, seed=0, sla_ms=500.0, sla_target=0.999)
    result = Simulation(trace=trace, setup=whole, label="tune", initial_instances=2).run()
    assert tuned.base.result == result.outcome()
    assert (result.outcome().paid_gpu_hours, result.outcome().attainment) == (result.paid_gpu_hours, result.attainment)
    for target in (0.9, 0.999, 1.0):
        assert result.outcome().meets_sla(target) == result.meets_sla(target)


def test_an_outcome_keeps_what_acted() -> None:
    """``bench/backoff.py`` prints each forward row's scale moves: the outcome counts the actions that took effect."""
    decisions = [
        Decision(30.0, "autoscale", "scale_out", ""),
        Decision(60.0, "idle_reclaim", "sleep", ""),
        Decision(90.0, "autoscale", "scale_out", ""),
    ]
    outcome = sim_result(decisions=decisions).outcome()
    assert outcome.actions == {("autoscale", "scale_out"): 2, ("idle_reclaim", "sleep"): 1}


def test_forward_rows_judge_each_settings_set_against_the_static_fleet_of_the_same_days() -> None:
    """One 200-token prompt a second for 600 s: the static search finds one always-on instance enough (599.2 s
    billed from the first arrival to the last answer, 0.166 GPU-hours). A floor of 2 pays twice that, saved
    1 - 2 = -100%; the quiet defaults hold the one instance, saved 0%. In two processes, each row keeps the
    run's figures, not its lists."""
    trace = trace_of(*steady(600))
    settings = {"floor 2": settings_patch(QUIET, {"pool": {"min_instances": 2}}), "quiet": QUIET}
    rows = forward_rows(trace=trace, engine=TOY, gpus=2, settings=settings, workers=2)
    assert [row.label for row in rows] == ["static (1 always on)", "floor 2", "quiet"]
    static, floor, quiet = (row.result for row in rows)
    assert static.paid_gpu_hours == pytest.approx(600 / 3600, rel=0.01)
    assert floor.paid_gpu_hours == pytest.approx(2 * static.paid_gpu_hours)
    assert quiet.paid_gpu_hours == pytest.approx(static.paid_gpu_hours)
    assert [row.saved for row in rows] == pytest.approx([0.0, -1.0, 0.0])
    assert all(row.meets_sla and isinstance(row.result, SimOutcome) for row in rows)
    assert "| floor 2 | 600 | 0.333 | -100.0% | 100.000% | yes | 0 |" in forward_markdown(rows, title="toy")


def test_where_no_candidate_meets_the_sla_at_the_headroom_the_best_attainment_there_is_chosen_and_said() -> None:
    """At 4x the traffic neither a floor of 1 nor of 2 meets 99.9% on a fleet of two cards: the one with the
    better attainment there, 2, is chosen and the summary says no candidate holds. Negative headroom is refused
    before anything runs."""
    trace = trace_of(*steady(600))
    space = (Dimension("min_instances", tuple({"pool": {"min_instances": n}} for n in (1, 2))),)
    base = settings_patch(QUIET, {"pool": {"min_instances": 1}})
    tuned = tune(trace=trace, engine=TOY, gpus=2, base=base, space=space, seed=0, headroom=3.0)
    assert [c.meets_sla for c in tuned.checks] == [False, False]
    low, high = (c.result.attainment for c in tuned.checks)
    assert low < high
    assert tuned.best.values["pool"]["min_instances"] == 2
    assert tuned.meets_sla and tuned.holds_headroom is False
    assert "NO candidate meets the SLA at that headroom" in tuned.summary
    for wrong in (-0.1, 3.5, float("nan")):
        with pytest.raises(ValueError, match=rf"^headroom \({wrong:g}\) must lie within 0 and 3$"):
            tune(trace=trace, engine=TOY, gpus=2, base=base, space=space, headroom=wrong)


def test_a_burst_tunes_the_scale_out_trigger_to_fewer_breaches() -> None:
    """Five minutes at one 200-token prompt a second (0.21 s of work each, one instance keeps up), then five
    minutes at five a second: 5 x 0.21 = 1.05 s of prefill a second, more than one instance has, so its queue
    grows until a second instance is ready. Autoscale starts it once ``breach_windows`` evaluations in a row
    (30 s apart) saw the breach, plus a 30 s cold start: three breaches keep the queue growing 60 s longer than
    one, and every request queued meanwhile waits longer. The search from 3 must choose 1, with a higher share
    of requests within the SLA (neither need meet the 99.9% target: the best attainment then wins).
    """
    trace = trace_of(*steady(300), *[(300 + i * 0.2, 200, 1) for i in range(1500)])
    space = (Dimension("breach_windows", tuple({"autoscale": {"breach_windows": n}} for n in (1, 3))),)
    base = settings_patch(QUIET, {"pool": {"min_instances": 1}, "autoscale": {"breach_windows": 3}})
    tuned = tune(trace=trace, engine=TOY, gpus=4, base=base, space=space, seed=0)
    assert tuned.best.values["policies"]["autoscale"]["breach_windows"] == 1
    assert tuned.best.result.attainment > tuned.base.result.attainment


def test_the_tuned_file_round_trips_through_setup_build() -> None:
    """What the tuner writes is what ``setup_build`` (``simulate --policy-settings``) reads: the pool's
    fields on the pool, each policy kind's settings in full, None disabling a kind."""
    values = settings_patch(QUIET, {"pool": {"min_instances": 1, "util_band_low": 0.3, "util_band_high": 0.45}})
    values = settings_patch(values, {"autoscale": {"breach_windows": 1}})
    written = json.loads(json.dumps(settings_file_values(values)))
    assert written["policies"]["autoscale"]["breach_windows"] == 1
    assert written["policies"]["autoscale"]["scale_in_cooldown_s"] == 300  # the default, written out
    setup = setup_build(engine=TOY, gpus=2, values=written)
    view = setup.pools[0].view
    assert (view.min_instances, view.util_band_low, view.util_band_high) == (1, 0.3, 0.45)
    assert setup.policies["autoscale"].fleet == written["policies"]["autoscale"]
    assert setup.policies["prewarm"].fleet is None


@pytest.mark.django_db
def test_policy_apply_writes_through_the_services_and_logs_a_decision(tmp_path: Path) -> None:
    from fleet.models import Decision, Policy, Pool
    from tests.factories import make_pool

    pool = make_pool("chat-l", min_instances=0, max_instances=4)
    path = tmp_path / "tuned.json"
    path.write_text(
        json.dumps(
            {
                "pool": {"min_instances": 1, "util_band_low": 0.3, "util_band_high": 0.45},
                "policies": {"autoscale": {"breach_windows": 1}, "prewarm": None},
            }
        )
    )
    out = StringIO()
    call_command("policy_apply", str(path), "--pool=chat-l", stdout=out)
    pool = Pool.objects.get(pk=pool.pk)
    assert (pool.min_instances, pool.util_band_low, pool.util_band_high) == (1, 0.3, 0.45)
    autoscale = Policy.objects.get(kind="autoscale", pool=pool)
    assert autoscale.enabled and autoscale.settings["breach_windows"] == 1
    assert autoscale.settings["scale_in_windows"] == 3  # defaults filled in as the admin fills them
    assert not Policy.objects.get(kind="prewarm", pool=pool).enabled
    decision = Decision.objects.get(pool=pool, action="settings_applied")
    assert decision.policy_kind == "manual" and decision.applied_at is not None
    assert decision.inputs["before"]["pool"]["min_instances"] == 0
    assert decision.inputs["after"]["pool"]["min_instances"] == 1
    assert f"decision {decision.pk}" in out.getvalue()


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"policies": {"autoscale": {"breach_windows": 0}}}, "breach_windows"),
        ({"pool": {"util_band_low": 0.7, "util_band_high": 0.6}, "policies": {}}, "util_band_low"),
        ({"pool": {"min_instances": 9}}, "min_instances"),
        ({"pool": {"name": "other"}}, "not a pool setting"),
        ({"pool": {"min_instances": 2}, "policies": {"autoscale": {"no_such": 1}}}, "no_such"),
        (
            {"pool": {"min_instances": 3}, "policies": {"static_hold": {"static_replicas": 2}}},
            "Pool chat-l keeps a minimum of 3 instances, above its static size of 2",
        ),
    ],
)
def test_policy_apply_refuses_invalid_settings_and_changes_nothing(
    tmp_path: Path, values: dict[str, object], message: str
) -> None:
    from fleet.models import Decision, Policy, Pool
    from tests.factories import make_pool

    pool = make_pool("chat-l", min_instances=0, max_instances=4)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(values))
    with pytest.raises(CommandError, match=message):
        call_command("policy_apply", str(path), "--pool=chat-l", stdout=StringIO())
    pool = Pool.objects.get(pk=pool.pk)
    assert (pool.min_instances, pool.util_band_low, pool.util_band_high) == (0, 0.5, 0.65)
    assert not Policy.objects.filter(pool=pool).exists()
    assert not Decision.objects.filter(pool=pool).exists()
    with pytest.raises(CommandError, match="no such pool"):
        call_command("policy_apply", str(path), "--pool=nope", stdout=StringIO())


@pytest.mark.django_db
def test_policy_apply_checks_the_minimum_against_the_static_size_once_both_are_written(tmp_path: Path) -> None:
    """Raised together, a minimum and a static size are checked against each other's new value:
    each against the other's old one would refuse a pair that fits."""
    from fleet.models import Policy, Pool
    from tests.factories import make_pool

    pool = make_pool("chat-l", min_instances=2, max_instances=4)
    Policy.objects.create(kind="static_hold", pool=pool, settings={"static_replicas": 2})
    path = tmp_path / "tuned.json"
    path.write_text(json.dumps({"pool": {"min_instances": 3}, "policies": {"static_hold": {"static_replicas": 3}}}))
    call_command("policy_apply", str(path), "--pool=chat-l", stdout=StringIO())
    assert Pool.objects.get(pk=pool.pk).min_instances == 3
    assert Policy.objects.get(kind="static_hold", pool=pool).settings["static_replicas"] == 3


def simulate_tune(trace: Path, output: Path, *options: str) -> str:
    """``simulate_tune`` on a trace file over the floor only, 2 GPUs, 3 simulations at most; what it printed."""
    out = StringIO()
    call_command(
        "simulate_tune",
        f"--trace={trace}",
        "--gpus=2",
        "--space=min_instances",
        "--max-evaluations=3",
        f"--output={output}",
        *options,
        stdout=out,
        stderr=StringIO(),
    )
    return out.getvalue()


@pytest.mark.django_db
def test_simulate_tune_writes_a_file_setup_build_reads(tmp_path: Path) -> None:
    """Two minutes at two requests a second, searched over the floor only from the defaults (floor 0):
    what it writes is a settings file, and ``setup_build`` takes it as the simulator's settings. By default
    the choice is run again at 1.25x the traffic; a headroom of 0 runs nothing more, one below 0 is refused
    before anything runs or is written, one of 0.5 runs the choice at 1.5x."""
    trace = tmp_path / "trace.csv"
    trace.write_text("arrival_s,prompt_tokens,output_tokens\n" + "".join(f"{t * 0.5},300,5\n" for t in range(240)))
    output = tmp_path / "tuned.json"
    printed = simulate_tune(trace, output)
    written = json.loads(output.read_text())
    assert set(written) == {"pool", "policies"}
    assert "candidates simulated" in printed and "at 1.25x the traffic" in printed
    assert "the traffic" not in simulate_tune(trace, output, "--headroom=0")
    setup_build(engine=TOY, gpus=2, values=written)
    with pytest.raises(CommandError, match="unknown dimensions"):
        simulate_tune(trace, output, "--space=nope")
    output.unlink()
    with pytest.raises(CommandError, match=r"^--headroom: headroom \(-0\.5\) must lie within 0 and 3$"):
        simulate_tune(trace, output, "--headroom=-0.5")
    with pytest.raises(CommandError, match=r"^--headroom: headroom \(5\) must lie within 0 and 3$"):
        simulate_tune(trace, output, "--headroom=5")
    assert not output.exists()
    assert "at 1.5x the traffic" in simulate_tune(trace, output, "--headroom=0.5") and output.exists()
