"""What a sleeping GPU costs, and what its freed time was used for.

A vLLM server in sleep mode keeps little more than its CUDA context on the card, yet the card
stays paid: billed to the instance's pool where ``FLEET_COST_SLEEPING_HOLDS_GPU`` is on, left
in the unallocated line where it is off. Co-location lends a sleeping card's memory to batch
work (``fleet.policies.colocate.sleep_lent_bytes``), so that time is not always wasted. This
module is the one definition of the split: each interval an instance slept on a whole GPU, at
its share of the card (``allocation.allocations_split``, as spend shares a card), is cut where
batch jobs ran on that GPU; a piece with jobs running is *used by* them (split equally among
those running at once), the rest is *idle while asleep*. Both are in GPU-hours and priced as
any spend line (``spend.sleep_lines``). Pure functions over plain records, tested by hand.
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import localcontext
from fractions import Fraction

from fleet.costs.allocation import Allocation
from fleet.costs.money import CONTEXT, money_cents
from fleet.costs.prices import PriceBook
from fleet.costs.spend import GpuInfo, Totals, sleep_lines
from fleet.states import SLEEPING


@dataclass(frozen=True)
class JobMove:
    """A batch job put on a GPU (``gpu_id``) or taken off one (``gpu_id`` None: preempted or ended)."""

    job_id: int
    at: datetime
    gpu_id: int | None


@dataclass(frozen=True)
class BatchRun:
    job_id: int
    gpu_id: int
    start: datetime
    end: datetime


def batch_runs(moves: Iterable[JobMove], *, start: datetime, end: datetime) -> list[BatchRun]:
    """Where each job ran, clipped to [start, end): a move onto a GPU lasts until the job's next move."""
    by_job: dict[int, list[JobMove]] = defaultdict(list)
    for move in moves:
        by_job[move.job_id].append(move)
    runs: list[BatchRun] = []
    for job_id, rows in sorted(by_job.items()):
        rows.sort(key=lambda row: row.at)
        for move, following in zip(rows, [*rows[1:], None], strict=True):
            if move.gpu_id is None:
                continue
            begin, finish = max(move.at, start), min(following.at if following else end, end)
            if begin < finish:
                runs.append(BatchRun(job_id, move.gpu_id, begin, finish))
    return runs


@dataclass(frozen=True)
class SleepPiece:
    """Part of one instance's sleep on one GPU with the same batch jobs running (none: idle)."""

    instance_id: int
    gpu_id: int
    start: datetime
    end: datetime
    share: Fraction
    job_ids: tuple[int, ...]


def sleep_pieces(*, allocations: Iterable[Allocation], runs: Iterable[BatchRun]) -> list[SleepPiece]:
    """The sleeping allocations cut at the bounds of the batch runs on their GPU.

    Only whole-GPU sleep can lend memory (batch work never runs on a MIG card), so a sleeping
    MIG slice's time is idle throughout.
    """
    by_gpu: dict[int, list[BatchRun]] = defaultdict(list)
    for run in runs:
        by_gpu[run.gpu_id].append(run)
    pieces: list[SleepPiece] = []
    for row in allocations:
        if row.state != SLEEPING or row.start >= row.end:
            continue
        here = [
            r
            for r in by_gpu.get(row.gpu_id, [])
            if row.mig_device_id is None and r.start < row.end and r.end > row.start
        ]
        bounds = sorted({row.start, row.end, *(t for r in here for t in (r.start, r.end) if row.start < t < row.end)})
        for begin, finish in itertools.pairwise(bounds):
            jobs = tuple(sorted({r.job_id for r in here if r.start <= begin and finish <= r.end}))
            pieces.append(SleepPiece(row.instance_id, row.gpu_id, begin, finish, row.share, jobs))
    return pieces


@dataclass
class SleepUse:
    """One instance's sleep on one GPU over a period: GPU-hours and spend, used by each job or idle."""

    instance_id: int
    gpu_id: int
    slept: Totals = field(default_factory=Totals)
    idle: Totals = field(default_factory=Totals)
    used_by: dict[int, Totals] = field(default_factory=dict)

    @property
    def used(self) -> Totals:
        return _total(self.used_by.values())


def _total(parts: Iterable[Totals]) -> Totals:
    """Totals added up (GPU-hours, spend, unpriced hours) at the money precision."""
    totals = Totals()
    with localcontext(CONTEXT):
        for part in parts:
            totals.spend += part.spend
            totals.gpu_hours += part.gpu_hours
            totals.unpriced_gpu_hours += part.unpriced_gpu_hours
    return totals


def sleep_use(*, pieces: Iterable[SleepPiece], gpus: Mapping[int, GpuInfo], prices: PriceBook) -> list[SleepUse]:
    """Each instance's sleep priced piece by piece: a piece with n jobs running gives each job
    share / n of the card for its length, a piece without jobs is idle. Rows by instance, then GPU."""
    rows: dict[tuple[int, int], SleepUse] = {}
    for piece in pieces:
        row = rows.setdefault((piece.instance_id, piece.gpu_id), SleepUse(piece.instance_id, piece.gpu_id))
        count = len(piece.job_ids)
        split = [(job_id, piece.share / count) for job_id in piece.job_ids] if count else [(None, piece.share)]
        for job_id, share in split:
            lines = sleep_lines(
                gpu=gpus[piece.gpu_id],
                start=piece.start,
                end=piece.end,
                share=share,
                prices=prices,
                instance_id=piece.instance_id,
            )
            row.slept.add_all(lines)
            (row.idle if job_id is None else row.used_by.setdefault(job_id, Totals())).add_all(lines)
    return [rows[key] for key in sorted(rows)]


@dataclass
class SleepReport:
    """A period's sleep across the fleet; ``billed`` says where its spend sits in the spend report:
    in the pools' allocated spend (True) or in the unallocated line (False)."""

    start: datetime
    end: datetime
    currency: str
    billed: bool
    rows: list[SleepUse] = field(default_factory=list)

    @property
    def slept(self) -> Totals:
        return _total(row.slept for row in self.rows)

    @property
    def idle(self) -> Totals:
        return _total(row.idle for row in self.rows)

    @property
    def by_job(self) -> dict[int, Totals]:
        """GPU-hours and spend of sleep each batch job used, over every instance it borrowed from."""
        jobs: dict[int, list[Totals]] = defaultdict(list)
        for row in self.rows:
            for job_id, totals in row.used_by.items():
                jobs[job_id].append(totals)
        return {job_id: _total(parts) for job_id, parts in sorted(jobs.items())}

    @property
    def used(self) -> Totals:
        return _total(self.by_job.values())

    def summary(self) -> str:
        """The spend page's line: what sleeping cost and what its time was used for."""
        slept, used, idle = self.slept, self.used, self.idle
        where = "billed to their pools" if self.billed else "in the unallocated line"
        jobs = ", ".join(f"job {job_id} {totals.gpu_hours:.2f}" for job_id, totals in self.by_job.items())
        cost = f"{money_cents(slept.spend)} {self.currency}, {where}"
        return (
            f"Sleeping instances held {slept.gpu_hours:.2f} GPU-h ({cost}): "
            f"{used.gpu_hours:.2f} GPU-h used by batch jobs" + (f" ({jobs})" if jobs else "") + ", "
            f"{idle.gpu_hours:.2f} GPU-h idle while asleep ({money_cents(idle.spend)} {self.currency})"
        )
