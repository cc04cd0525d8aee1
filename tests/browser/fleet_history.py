"""A small constructed history for the dashboard's browser tests and screenshots.

Its nodes are marked simulated: the numbers are made up by this module, and the pages
must say so wherever they show them.
"""

from __future__ import annotations

import math
from datetime import date, datetime, timedelta

from django.utils import timezone

from fleet.models import Alert, AlertRule, BatchJob, Budget, Decision, Pool, Team
from tests.costs.history import price, states
from tests.dashboard.history import gpu_rollups, pool_rollup, request
from tests.factories import make_gpu, make_instance, make_node, make_pool


def _load(gpu_number: int, at: datetime) -> float:
    """A daily wave, a different phase per GPU, between 5 and 95 %."""
    hours = at.hour + at.minute / 60
    return round(50 + 45 * math.sin((hours + 3 * gpu_number) / 24 * 2 * math.pi), 1)


def history_build() -> dict[str, Pool]:
    now = timezone.now().replace(second=0, microsecond=0)
    price("NVIDIA H100 80GB HBM3", "2.50", date(2026, 1, 1))
    price("NVIDIA L4", "0.80", date(2026, 1, 1))
    gpus = []
    for name, model in (("sim-h100-a", "NVIDIA H100 80GB HBM3"), ("sim-l4-b", "NVIDIA L4")):
        node = make_node(name, simulated=True)
        gpus += [make_gpu(node, index, model) for index in range(2)]
    for number, gpu in enumerate(gpus):
        day_ago = now.replace(minute=0) - timedelta(hours=24)
        gpu_rollups(gpu, day_ago, 24, hourly=True, utilization=lambda at, n=number: _load(n, at))
        gpu_rollups(gpu, now - timedelta(hours=24), 24 * 60, utilization=lambda at, n=number: _load(n, at))
    team = Team.objects.create(name="search", slug="search")
    pools = {
        "chat-s": make_pool("chat-s", tier="S"),
        "chat-m": make_pool("chat-m", tier="M"),
        "chat-l": make_pool("chat-l", tier="L"),
    }
    for gpu, pool in zip(gpus, pools.values(), strict=False):
        instance = make_instance(pool, gpu, actual_state="ready")
        states(
            instance,
            (now - timedelta(hours=20), "starting"),
            (now - timedelta(hours=20) + timedelta(seconds=40), "ready"),
        )
    for number, pool in enumerate(pools.values()):
        for minute in range(60, 0, -1):
            pool_rollup(
                pool, now - timedelta(minutes=minute), requests=20 + 5 * number, fast=(minute + number) % 9 != 0
            )
        for hour in range(24, 1, -1):
            pool_rollup(
                pool, now.replace(minute=0) - timedelta(hours=hour), requests=900, fast=hour % 7 != 0, hourly=True
            )
        for i in range(6):
            request(
                pool,
                now - timedelta(minutes=3 * i + number),
                tier="SML"[(i + number) % 3],
                cold_start=i == 5 and number == 2,
                latency_ms=7400 if i == 5 and number == 2 else 90 + 40 * i + 15 * number,
                ttft_ms=None if i % 2 else 35 + 10 * i,
                stream=not i % 2,
                team=team,
                prompt_tokens=420 + 60 * i,
                output_tokens=96 + 8 * number,
            )
    Decision.objects.create(
        policy_kind="autoscale",
        pool=pools["chat-s"],
        action="scale_out",
        reason="pool chat-s P95 TTFT 640 ms over the 500 ms SLA for 2 windows; one more instance",
    )
    Decision.objects.create(
        policy_kind="idle_reclaim",
        pool=pools["chat-l"],
        action="sleep",
        reason="pool chat-l instance idle for 12 min; vLLM sleep level 1",
    )
    BatchJob.objects.create(
        name="nightly-embeddings", image="batch:1", memory_bytes=6 * 1024**3, gpu=gpus[3], state="running"
    )
    Budget.objects.create(name="search monthly", team=team, amount=500, spent=410)
    Budget.objects.create(name="chat-l monthly", pool=pools["chat-l"], amount=2000, spent=1200)
    rule = AlertRule.objects.create(name="idle waste", kind="idle_waste")
    Alert.objects.create(
        rule=rule,
        key="pool:chat-l",
        state="firing",
        message="chat-l idle 80 % of the last hour",
        started_at=now,
        fired_at=now,
    )
    return pools
