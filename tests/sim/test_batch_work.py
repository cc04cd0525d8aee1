"""Batch work in the simulator: the production co-location policy places queued jobs on the memory a
sleeping instance lends, a wake takes it back, and the result says what sleeping cost and what the
freed card time ran. Every time below is worked out by hand from the toy engine and the 30 s tick."""

from __future__ import annotations

from dataclasses import replace

import pytest

from fleet.sim.report import batch_summary
from fleet.sim.result import SimResult
from fleet.sim.setup import BatchLoad, setup_build
from fleet.sim.simulate import Simulation
from tests.sim.toy import TOY, toy_setup, trace_of

# Sleep in 2 s, wake in 0.5 s; a 100-token prompt's first token 0.01 + 0.1 s after it starts.
ENGINE = replace(TOY, sleep_s=2.0, wake_s=0.5)
ONLY_IDLE_AND_COLOCATE = {"autoscale": None, "prewarm": None, "reap": None, "static_hold": None}


def sleepy(*, stop_after_s: int = 100_000, batch: BatchLoad | None) -> tuple[Simulation, SimResult]:
    """One H100 serving a request at 0 s and one at 500 s; idle reclaim sleeps it after 60 s idle.

    The request at 0 s makes the instance idle from 0 s: the tick at 60 s tells it to sleep, it is asleep
    at 62 s, and the tick at 90 s is the first to find its card asleep. There co-location lends the card's
    80 GiB less what the instance keeps asleep (10% of its 72 GiB budget: 7.2 GiB), 72.8 GiB, with a
    4 GiB margin: 20 GiB jobs fit three times (72.8, 52.8, 32.8 >= 24; 12.8 is not)."""
    setup = replace(
        toy_setup(
            gpus=1,
            values={
                "pool": {"enable_sleep_mode": True, "idle_minimize_after_s": 60, "idle_stop_after_s": stop_after_s},
                "policies": ONLY_IDLE_AND_COLOCATE,
            },
        ),
        engine=ENGINE,
        batch=batch,
    )
    simulation = Simulation(trace=trace_of((0.0, 100, 1), (500.0, 100, 1)), setup=setup, label="policy")
    return simulation, simulation.run()


FOUR_JOBS = BatchLoad(jobs=4, memory_gib=20, run_s=300, evict_s=1.5)


def test_jobs_run_on_the_sleeping_card_and_the_wake_takes_it_back() -> None:
    simulation, result = sleepy(batch=FOUR_JOBS)
    starts = [(d.t_s, d.reason.split(":")[0]) for d in simulation.decisions if d.action == "colocate"]
    # Jobs 1-3 at the tick at 90 s; they finish at 390 s, where the tick starts job 4 (the job's end was
    # pushed first, so it comes before the tick at the same time).
    assert starts == [
        (90.0, "batch job 1 on simulated-1/NVIDIA H100 80GB HBM3"),
        (90.0, "batch job 2 on simulated-1/NVIDIA H100 80GB HBM3"),
        (90.0, "batch job 3 on simulated-1/NVIDIA H100 80GB HBM3"),
        (390.0, "batch job 4 on simulated-1/NVIDIA H100 80GB HBM3"),
    ]
    # The request at 500 s wakes the instance: job 4 goes first (110 s of it thrown away), the wake
    # waits 1.5 s for it to leave and 0.5 s to reload: first token at 500 + 1.5 + 0.5 + 0.11 s.
    preempts = [(d.t_s, d.kind) for d in simulation.decisions if d.action == "preempt"]
    assert preempts == [(500.0, "gateway")]
    assert result.ttft_s[1] == pytest.approx(2.11)
    work = result.batch
    assert work is not None
    assert (work.jobs, work.done, work.preemptions) == (4, 3, 1)
    assert work.done_hours == pytest.approx(3 * 300 / 3600)
    assert work.lost_hours == pytest.approx(110 / 3600)
    assert work.unfinished_hours == 0
    # The instance slept from 62 s to 500 s, billed; jobs ran on its card from 90 s on (the costs page's
    # split: the sleep cut where jobs ran, 28 s idle while asleep and 410 s used).
    assert work.used_gpu_hours == pytest.approx(410 / 3600)
    assert work.asleep_gpu_hours == pytest.approx(438 / 3600)
    assert work.asleep_billed
    assert work.asleep_used == pytest.approx(410 / 438)


def test_without_batch_work_the_same_run_wakes_at_once_and_reports_none() -> None:
    with_jobs = sleepy(batch=FOUR_JOBS)[1]
    result = sleepy(batch=None)[1]
    assert result.ttft_s[1] == pytest.approx(0.61)
    assert result.batch is None
    assert batch_summary(result) == ""
    # The jobs used memory the fleet paid for anyway: the GPU-hours are the same.
    assert with_jobs.gpu_hours == pytest.approx(result.gpu_hours + 1.5 / 3600)


def test_a_card_handed_back_takes_its_jobs_with_it() -> None:
    """Idle reclaim stops the sleeping instance at the tick at 210 s (idle 210 >= 200 s): the simulated
    fleet rents a card only while an instance holds it, so jobs 1-3, running since 90 s, lose 120 s each."""
    simulation, result = sleepy(stop_after_s=200, batch=FOUR_JOBS)
    work = result.batch
    assert work is not None
    handed = [(d.t_s, d.reason) for d in simulation.decisions if d.action == "preempt"]
    assert [t for t, _ in handed] == [210.0, 210.0, 210.0]
    assert all("its card is handed back" in reason for _, reason in handed)
    assert (work.done, work.preemptions) == (0, 3)
    assert work.lost_hours == pytest.approx(3 * 120 / 3600)
    assert work.used_gpu_hours == pytest.approx(120 / 3600)
    assert work.asleep_gpu_hours == pytest.approx(148 / 3600)


def test_the_report_states_the_figures() -> None:
    result = sleepy(batch=FOUR_JOBS)[1]
    assert batch_summary(result) == (
        "Sleeping and batch work (policy fleet): instances spent 0.122 GPU-hours asleep, billed; batch jobs ran on "
        "their cards for 0.114 of them (93.6%): 0.281 job-hours, of which 0.250 in the 3 job(s) of 4 that "
        "finished, 0.031 thrown away by 1 preemption(s) and 0.000 still running at the end."
    )


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"jobs": 0, "memory_gib": 20, "run_s": 60}, "batch jobs must be a whole number of at least 1, got 0"),
        ({"jobs": 2.5, "memory_gib": 20, "run_s": 60}, "batch jobs must be a whole number of at least 1, got 2.5"),
        ({"jobs": 2, "memory_gib": 0, "run_s": 60}, "batch memory_gib and run_s must be above 0, got 0 GiB and 60 s"),
        ({"jobs": 2, "memory_gib": "big", "run_s": 60}, "batch memory_gib must be a number, got 'big'"),
        ({"jobs": 2, "memory_gib": 20, "run_s": 60, "evict_s": -1}, "batch evict_s must be 0 or more, got -1"),
        ({"jobs": 2, "memory_gib": 20}, "the batch section needs run_s"),
        ({"jobs": 2, "memory_gib": 20, "run_s": 60, "gpus": 3}, "unknown batch settings gpus; expected"),
        ([1, 2], "the batch section must be an object with evict_s, jobs, memory_gib, run_s"),
    ],
)
def test_a_bad_batch_section_is_refused_with_what_is_wrong(section: object, message: str) -> None:
    with pytest.raises(ValueError, match="^" + message.replace("(", r"\(").replace(")", r"\)")):
        setup_build(engine=TOY, gpus=1, values={"batch": section})


def test_the_settings_file_section_builds_the_load() -> None:
    setup = setup_build(engine=TOY, gpus=1, values={"batch": {"jobs": 3, "memory_gib": 12.5, "run_s": 600}})
    assert setup.batch == BatchLoad(jobs=3, memory_gib=12.5, run_s=600, evict_s=0.0)
    assert setup.batch.memory_bytes == int(12.5 * 2**30)
    assert setup_build(engine=TOY, gpus=1).batch is None
