"""What taking back batch memory adds to a wake on the panel: ``instance_desire`` timed on PostgreSQL.

Every waker (the gateway holding a request, pre-warm, autoscale, a person) wakes an instance through
``fleet.decide.services.instance_desire``. Where batch jobs borrowed the card's memory it preempts
them in the same transaction (``batch_jobs_vacate``: the card's lock, the instances that hold or will
hold its memory, its latest sample for foreign memory, the rule, one decision per job preempted).
This wakes sleeping instances, each on a card of its own, as the panel's process does (ORM and all),
in three rows:

* baseline, measured in the same run: a wake with no job on its card;
* an exclusive instance's card with one job (every job there goes);
* a shared card with two jobs and foreign memory, where one job must go (21.6 GiB budget + 0.5 GiB
  foreign + 1 + 1 GiB of jobs = 24.1 GiB > 24 GiB; without the newest, 23.1 GiB fits).

Median and p95 of wall and CPU milliseconds over ``--wakes`` wakes a row (after a few unmeasured), and
each row's median wall time against the baseline's. The agents are not reached (the wake's
notification of them is timed as it is, with no one listening). It builds a scratch database
``bench_wake`` (created here, dropped at the end).

    python bench/wake_cost.py [--wakes 200] [--db-name bench_wake]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.chart_queries import admin_sql, percentile, setup_django  # noqa: E402

GIB = 1024**3
WARMUP = 5
CARD_BYTES = 24 * GIB  # an L4
FOREIGN_GIB = 0.5


def fleet() -> Callable[[str, int], Any]:
    """A card maker: ``card(kind, index)`` a sleeping instance of the kind's pool on a fresh card with
    its jobs, its reading ``FOREIGN_GIB`` foreign beside them, returned ready to wake."""
    from django.utils import timezone

    from fleet.decide.services import node_create
    from fleet.models import BatchJob, Gpu, GpuSample, Instance, ModelProfile, Pool

    profile = ModelProfile.objects.get(name="qwen3-4b-chat-bf16")  # installed by the presets migration
    pools = {
        isolation: Pool.objects.create(name=f"wake-{isolation}", tier="L", isolation=isolation, model_profile=profile)
        for isolation in ("shared", "exclusive")
    }
    jobs_of: dict[str, list[int]] = {"baseline": [], "exclusive": [16], "shared": [1, 1]}

    def card(kind: str, index: int) -> Instance:
        node, _token = node_create(name=f"wake-{kind}-{index}")
        gpu = Gpu.objects.create(
            node=node, index=0, uuid=f"GPU-{node.name}", model_name="NVIDIA L4", memory_total_bytes=CARD_BYTES
        )
        jobs = jobs_of[kind]
        for gib in jobs:
            BatchJob.objects.create(name="embed", image="embedder:1", memory_bytes=gib * GIB, state="running", gpu=gpu)
        GpuSample.objects.create(
            gpu=gpu,
            at=timezone.now() - timedelta(seconds=5),  # fresh when its wake reads it
            utilization_gpu_pct=0,
            memory_used_bytes=int((sum(jobs) + FOREIGN_GIB) * GIB),
        )
        return Instance.objects.create(
            pool=pools["exclusive" if kind == "exclusive" else "shared"],
            gpu=gpu,
            desired_state="sleeping",
            actual_state="sleeping",
        )

    return card


def timed(card: Callable[[str, int], Any], kind: str, wakes: int) -> tuple[list[float], list[float], float]:
    """Wall and CPU milliseconds of each measured wake, and the jobs preempted a wake."""
    from fleet.decide.services import instance_desire
    from fleet.models import Decision

    walls: list[float] = []
    cpus: list[float] = []
    before = Decision.objects.filter(action="preempt").count()
    for index in range(WARMUP + wakes):
        instance = card(kind, index)
        wall, cpu = time.perf_counter(), time.process_time()
        instance_desire(instance=instance, state="running", reason="bench", action="wake", kind="manual")
        if index >= WARMUP:
            walls.append((time.perf_counter() - wall) * 1000)
            cpus.append((time.process_time() - cpu) * 1000)
    return walls, cpus, (Decision.objects.filter(action="preempt").count() - before) / (WARMUP + wakes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wakes", type=int, default=200, help="measured wakes a row")
    parser.add_argument("--db-name", default="bench_wake", help="the scratch database, created and dropped here")
    parser.add_argument(
        "--database-url",
        default=os.environ.get("BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"),
        help="a PostgreSQL the bench may create and drop the scratch database on",
    )
    args = parser.parse_args()
    if args.wakes < 2:
        parser.error("--wakes must be at least 2 (a p95 needs two)")
    url = args.database_url.rsplit("/", 1)[0] + "/" + args.db_name
    admin_sql(args.database_url, f"DROP DATABASE IF EXISTS {args.db_name} WITH (FORCE)")
    admin_sql(args.database_url, f"CREATE DATABASE {args.db_name}")
    try:
        setup_django(url)
        from django.core.management import call_command

        call_command("migrate", verbosity=0)
        card = fleet()
        rows = [
            ("baseline: no job on the card", "baseline"),
            ("exclusive card, 1 job (16 GiB)", "exclusive"),
            ("shared card, 2 jobs and 0.5 GiB foreign, 1 goes", "shared"),
        ]
        print(f"{args.wakes} wakes a row through instance_desire, PostgreSQL ({args.db_name})\n")
        print("| wake | jobs preempted a wake | wall p50 ms | wall p95 ms | CPU p50 ms | CPU p95 ms | p50 / baseline |")
        print("|---|---|---|---|---|---|---|")
        baseline = 0.0
        for label, kind in rows:
            walls, cpus, preempted = timed(card, kind, args.wakes)
            median = statistics.median(walls)
            baseline = baseline or median
            print(
                f"| {label} | {preempted:.1f} | {median:.2f} | {percentile(walls, 95):.2f} "
                f"| {statistics.median(cpus):.2f} | {percentile(cpus, 95):.2f} | {median / baseline:.2f}x |"
            )
    finally:
        from django.db import connections

        connections.close_all()
        admin_sql(args.database_url, f"DROP DATABASE IF EXISTS {args.db_name} WITH (FORCE)")


if __name__ == "__main__":
    main()
