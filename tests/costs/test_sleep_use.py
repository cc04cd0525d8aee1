"""What a sleeping GPU cost and what its freed time was used for, by hand."""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal
from fractions import Fraction
from zoneinfo import ZoneInfo

from fleet.costs.allocation import Allocation
from fleet.costs.prices import PriceBook, RateRow
from fleet.costs.sleep import JobMove, SleepReport, batch_runs, sleep_pieces, sleep_use
from fleet.costs.spend import GpuInfo

MODEL = "NVIDIA H100 80GB HBM3"
GPUS = {1: GpuInfo(1, 1, MODEL), 2: GpuInfo(2, 1, MODEL)}
PRICES = PriceBook([RateRow(1, MODEL, None, date(2026, 1, 1), Decimal("2.00"))], tz=ZoneInfo("UTC"))


def at(hour: int, minute: int = 0) -> datetime:
    return datetime(2026, 3, 2, hour, minute, tzinfo=UTC)


def asleep(instance_id: int, start: datetime, end: datetime, share: Fraction = Fraction(1), **kw: int) -> Allocation:
    return Allocation(instance_id, kw.get("gpu_id", 1), kw.get("mig_device_id"), start, end, share, "sleeping")


def test_runs_last_from_a_move_onto_a_gpu_to_the_jobs_next_move_clipped_to_the_window() -> None:
    moves = [
        JobMove(7, at(11), 1),
        JobMove(7, at(12, 30), None),  # preempted
        JobMove(7, at(13), 2),
        JobMove(7, at(13, 30), None),  # finished
        JobMove(8, at(13, 45), 1),  # still running at the window's end
    ]
    runs = batch_runs(moves, start=at(12), end=at(14))
    assert [(r.job_id, r.gpu_id, r.start, r.end) for r in runs] == [
        (7, 1, at(12), at(12, 30)),
        (7, 2, at(13), at(13, 30)),
        (8, 1, at(13, 45), at(14)),
    ]


def test_four_hours_asleep_split_into_what_two_jobs_used_and_what_stood_idle() -> None:
    # Instance 10 sleeps 10:00-14:00 on GPU 1 at 2.00/GPU-h. Job 7 runs there 11:00-12:30, job 8
    # 12:00-13:00, job 9 on another card. Job 7: 1 h alone + 0.5 h x 1/2 = 1.25 GPU-h (2.50); job 8:
    # 0.5 h x 1/2 + 0.5 h = 0.75 GPU-h (1.50); idle 10-11 and 13-14: 2 GPU-h (4.00); 4 GPU-h slept (8.00).
    runs = batch_runs(
        [
            JobMove(7, at(11), 1),
            JobMove(7, at(12, 30), None),
            JobMove(8, at(12), 1),
            JobMove(8, at(13), None),
            JobMove(9, at(12), 2),
        ],
        start=at(10),
        end=at(14),
    )
    pieces = sleep_pieces(allocations=[asleep(10, at(10), at(14))], runs=runs)
    assert [(p.start.hour, p.start.minute, p.job_ids) for p in pieces] == [
        (10, 0, ()),
        (11, 0, (7,)),
        (12, 0, (7, 8)),
        (12, 30, (8,)),
        (13, 0, ()),
    ]
    [use] = sleep_use(pieces=pieces, gpus=GPUS, prices=PRICES)
    assert {job: (t.gpu_hours, t.spend) for job, t in use.used_by.items()} == {
        7: (Decimal("1.25"), Decimal("2.50")),
        8: (Decimal("0.75"), Decimal("1.50")),
    }
    assert (use.idle.gpu_hours, use.idle.spend) == (Decimal(2), Decimal("4.00"))
    assert (use.slept.gpu_hours, use.slept.spend) == (Decimal(4), Decimal("8.00"))
    assert use.used.gpu_hours == Decimal(2)

    report = SleepReport(start=at(10), end=at(14), currency="USD", billed=True, rows=[use])
    assert report.summary() == (
        "Sleeping instances held 4.00 GPU-h (8.00 USD, billed to their pools): 2.00 GPU-h used by batch jobs "
        "(job 7 1.25, job 8 0.75), 2.00 GPU-h idle while asleep (4.00 USD)"
    )


def test_two_instances_asleep_on_one_card_each_lend_their_half() -> None:
    # Both sleep 10:00-12:00 on GPU 1 (half the card each); job 7 runs 10:30-11:30: each instance
    # lent it 1 h x 1/2 = 0.5 GPU-h and stood idle 0.5 GPU-h; the job used 1 GPU-h in all.
    runs = batch_runs([JobMove(7, at(10, 30), 1), JobMove(7, at(11, 30), None)], start=at(10), end=at(12))
    half = Fraction(1, 2)
    allocations = [asleep(10, at(10), at(12), half), asleep(11, at(10), at(12), half)]
    rows = sleep_use(pieces=sleep_pieces(allocations=allocations, runs=runs), gpus=GPUS, prices=PRICES)
    assert [(r.instance_id, r.used_by[7].gpu_hours, r.idle.gpu_hours) for r in rows] == [
        (10, Decimal("0.5"), Decimal("0.5")),
        (11, Decimal("0.5"), Decimal("0.5")),
    ]
    report = SleepReport(start=at(10), end=at(12), currency="USD", billed=False, rows=rows)
    assert (report.by_job[7].gpu_hours, report.idle.gpu_hours, report.slept.spend) == (
        Decimal(1),
        Decimal(1),
        Decimal("4.00"),
    )
    assert "in the unallocated line" in report.summary()


def test_awake_time_and_sleep_on_a_mig_slice_lend_nothing() -> None:
    runs = batch_runs([JobMove(7, at(10), 1)], start=at(10), end=at(12))
    awake = Allocation(10, 1, None, at(10), at(11), Fraction(1), "ready")
    on_slice = asleep(11, at(10), at(12), Fraction(3, 7), mig_device_id=4)
    pieces = sleep_pieces(allocations=[awake, on_slice], runs=runs)
    assert [(p.instance_id, p.job_ids) for p in pieces] == [(11, ())]
    [use] = sleep_use(pieces=pieces, gpus=GPUS, prices=PRICES)
    # 2 h x 3/7 of the card = 6/7 GPU-h = 0.857143 GPU-h, all idle.
    assert use.idle.gpu_hours == use.slept.gpu_hours
    assert use.slept.gpu_hours.quantize(Decimal("0.000001")) == Decimal("0.857143")
    assert use.used_by == {}
