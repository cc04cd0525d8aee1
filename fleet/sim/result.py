"""What a simulation returns: per-request latencies, GPU-hours held and paid, the decisions
taken, a timeline; and the figures read from them (attainment, percentiles)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

from agents.histograms import attainment, histogram_observe, requests_attainment
from fleet.sim.engine import TTFT_BUCKETS

# A request that never got an answer: its first token and its end never came.
HELD_FAILED = float("inf")


@dataclass(frozen=True)
class TimelinePoint:
    t_s: float
    arrivals_per_s: float
    serving: int
    billed: int
    gpu_hours: float
    ttft_p50_ms: float | None
    ttft_p95_ms: float | None
    ttft_p99_ms: float | None


@dataclass(frozen=True)
class Decision:
    t_s: float
    kind: str
    action: str
    reason: str


@dataclass(frozen=True)
class BatchWork:
    """What co-located batch work (``SimSetup.batch``) did in a policy run, and what sleeping cost.

    ``asleep_gpu_hours``: GPU-hours instances spent asleep on their cards (in ``gpu_hours`` where
    ``asleep_billed``: ``SimSetup.sleeping_holds_gpu``); ``used_gpu_hours``: those with batch jobs
    running on the card, the rest idle while asleep (split as the costs page splits it,
    ``fleet.costs.sleep``). A job-hour is one job's hour on a card: those of runs that finished
    (``done_hours``), of runs preempted (``lost_hours``: the work is thrown away, the job starts over)
    and of runs still going at the trace's end (``unfinished_hours``)."""

    jobs: int
    done: int
    preemptions: int
    done_hours: float
    lost_hours: float
    unfinished_hours: float
    asleep_gpu_hours: float
    used_gpu_hours: float
    asleep_billed: bool

    @property
    def run_hours(self) -> float:
        """Every job-hour run, finished, lost or still going."""
        return self.done_hours + self.lost_hours + self.unfinished_hours

    @property
    def asleep_used(self) -> float | None:
        """The share of the asleep GPU-hours batch jobs ran in (None where nothing slept)."""
        return self.used_gpu_hours / self.asleep_gpu_hours if self.asleep_gpu_hours > 0 else None


@dataclass
class SimResult:
    label: str
    requests: int
    sla_ms: float
    gpu_hours: float
    ttft_s: list[float]
    e2e_s: list[float]
    cold_waited: int
    cold_starts: int
    wakes: int
    failed: int
    utilization: list[float]
    timeline: list[TimelinePoint]
    decisions: list[Decision]
    instances_peak: int
    duration_s: float
    # What the fleet paid, billed by the node (``fleet.sim.billing``), and what its starts did.
    node_hours: float = 0.0
    gpus_per_node: int = 1
    start_failures: int = 0
    starts_uncached: int = 0
    image_pulls: int = 0
    node_provisions: int = 0
    # The end-to-end bound of the SLA, beside the first-token one (``SimSetup.e2e_sla_ms``); None: TTFT only.
    e2e_sla_ms: float | None = None
    # Requests the gateway refuses at once (400 context_length_exceeded: more tokens than any pool's
    # ``max_model_len``, ``routing.pool_groups_for``). Counted in ``requests``, never served, and outside
    # ``ttft_s``/``e2e_s`` and so the SLA: an immediate answer, not a miss nor a failure of the fleet.
    refused: int = 0
    # A first-token bound that grows with the prompt (``SimSetup.sla_ms_per_1k_prompt_tokens``), and the
    # prompt tokens of the requests in ``ttft_s``, in the same order, to judge each against its own bound.
    sla_ms_per_1k_prompt_tokens: float = 0.0
    prompt_tokens: list[int] = field(default_factory=list)
    # What co-located batch work did (``SimSetup.batch``, policy runs only); None: no batch work was queued.
    batch: BatchWork | None = None

    @property
    def paid_gpu_hours(self) -> float:
        """The GPU-hours paid for: every GPU of a node while the node is billed."""
        return self.node_hours * self.gpus_per_node

    @property
    def idle_paid_gpu_hours(self) -> float:
        """Paid GPU-hours no instance held: cards on a billed node left free (or an instance
        waiting to be restarted after a failed start)."""
        return self.paid_gpu_hours - self.gpu_hours

    @property
    def attainment(self) -> float:
        """Share of requests within the SLA: first token within ``sla_ms`` and, where ``e2e_sla_ms`` is set,
        the whole answer within it too. Read from vLLM's TTFT buckets as the dashboard reads a pool's (exact
        where the SLA is a bucket bound, as 500 ms is); a request over the end-to-end bound is observed
        there as never having had its first token, so it counts outside whatever its TTFT.

        Where the first-token bound grows with the prompt (``sla_ms_per_1k_prompt_tokens``), each request is
        judged against its own bound (``requests_attainment``), as the dashboard judges such a pool from the
        gateway's request log: histograms hold no prompt lengths."""
        bound = float("inf") if self.e2e_sla_ms is None else self.e2e_sla_ms / 1000
        ttfts = [ttft if e2e <= bound else HELD_FAILED for ttft, e2e in zip(self.ttft_s, self.e2e_s, strict=True)]
        if self.sla_ms_per_1k_prompt_tokens > 0:
            judged = zip((ttft * 1000 for ttft in ttfts), self.prompt_tokens, strict=True)
            share = requests_attainment(judged, self.sla_ms, self.sla_ms_per_1k_prompt_tokens)
        else:
            share = attainment([histogram_observe(ttfts, TTFT_BUCKETS)], self.sla_ms / 1000)
        return 1.0 if share is None else share

    @property
    def actions(self) -> dict[tuple[str, str], int]:
        """How many actions of each (kind, action) took effect, counted over ``decisions``."""
        counts: dict[tuple[str, str], int] = defaultdict(int)
        for decision in self.decisions:
            counts[(decision.kind, decision.action)] += 1
        return dict(counts)

    def ttft_ms(self, percentile: float) -> float:
        return percentile_of(self.ttft_s, percentile) * 1000

    def e2e_ms(self, percentile: float) -> float:
        return percentile_of(self.e2e_s, percentile) * 1000

    def meets_sla(self, target: float) -> bool:
        """At least ``target`` of requests within the SLA and none failed."""
        return sla_met(failed=self.failed, attainment=self.attainment, target=target)

    def outcome(self) -> SimOutcome:
        """What the run comes to, without its per-request lists."""
        return SimOutcome(
            label=self.label,
            requests=self.requests,
            paid_gpu_hours=self.paid_gpu_hours,
            attainment=self.attainment,
            failed=self.failed,
            cold_starts=self.cold_starts,
            actions=self.actions,
        )


def sla_met(*, failed: int, attainment: float, target: float) -> bool:
    """A run meets its SLA: at least ``target`` of its requests within it and none failed."""
    return failed == 0 and attainment >= target


@dataclass(frozen=True)
class SimOutcome:
    """What a run comes to (``SimResult.outcome``), without the per-request lists: what a settings search keeps
    of each candidate it ran. The lists hold a few numbers a request, gigabytes for days of traffic at tens of
    requests a second; a search holding every candidate's ran out of memory."""

    label: str
    requests: int
    paid_gpu_hours: float
    attainment: float
    failed: int
    cold_starts: int
    # How many actions of each (kind, action) took effect (``SimResult.actions``): a few dozen counts.
    actions: dict[tuple[str, str], int] = field(default_factory=dict)

    def meets_sla(self, target: float) -> bool:
        return sla_met(failed=self.failed, attainment=self.attainment, target=target)


def percentile_of(values: Sequence[float], percentile: float) -> float:
    """Nearest-rank percentile (no interpolation: every figure is a request that happened)."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * percentile // 100))
    return ordered[int(rank) - 1]
