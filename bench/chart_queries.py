"""Chart queries over a week of a thousand GPUs: the selectors the dashboard uses, timed.

Builds a scratch PostgreSQL database ``bench_tele`` (created here, dropped at the end),
generates the history inside PostgreSQL with ``generate_series`` (no rows cross the
wire): GPUs on 125 hosts, a week of minute and hour rollups for every GPU and pool, and
the last few hours of raw 5 s samples. It then times each chart query through
``fleet.selectors`` (ORM and all, as the dashboard calls it), warm, several times, and
prints the median and worst against a baseline measured in the same run: the round trip
of ``SELECT 1`` through the same connection. A second comparison row shows what the
24 h heatmap would cost read from minute rollups instead of hour rollups. The last rows
time the dashboard's pages as they build their Plotly figures on the server: selector
and figure builder together (the month to date holds the ``--days`` generated). A second
table times whole pages as a signed-in operator gets them (``django.test.Client``: URL
resolution, middleware, selectors, figures and template; a CSV export read to its end),
median and p95 over ``--repeat`` runs, with the queries each page ran; the history adds the
gateway's request log (``--requests`` rows over the days), a decision log and an alert
history, so the request, decision, alert and export pages have a week to read.

    python bench/chart_queries.py [--gpus 1000] [--days 7] [--raw-hours 6] [--repeat 7] [--db-name bench_tele]
                                  [--requests 2000000] [--flap N] [--keep] [--reuse] [--only TEXT] [--profile N]

``--keep`` leaves the database for a later ``--reuse`` (no generation but new migrations and
the usage rollup where it is missing; "now" is the newest raw sample); ``--only`` times the
queries whose label contains TEXT; ``--profile N`` prints the N costliest functions of those
(cProfile); ``--flap N`` gives N instances a state change every 20 minutes over the days, the
long history the cost pages rebuild allocations from.

Target: every query and every page <= 300 ms.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
GPUS_PER_HOST = 8
POOLS = 4


def percentile(values: list[float], q: int) -> float:
    """The q-th percentile (1-99) as every bench reads it: ``statistics.quantiles``, inclusive, so never past
    the worst; one value is its own percentile, none gives NaN."""
    if len(values) < 2:
        return values[0] if values else math.nan
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def admin_sql(base: str, sql: str) -> None:
    import psycopg

    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(sql)


def setup_django(url: str) -> None:
    os.environ["DATABASE_URL"] = url
    os.environ.pop("REDIS_URL", None)
    os.environ["DEBUG"] = "0"
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "fleet.project.settings")
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()
    from fleet.project.serving import loaded_app_freeze

    loaded_app_freeze()  # as the servers do (``asgi.py``, ``wsgi.py``): pages are timed as served


def generate(gpus: int, days: int, raw_hours: int, now: datetime, requests: int, flap: int = 0) -> dict[str, float]:
    """Fleet rows through the ORM, history through generate_series; returns seconds per step."""
    from django.core.management import call_command
    from django.db import connection

    from fleet.models import Gpu, Instance, InstanceEvent, ModelProfile, Node, Pool, RollupWatermark
    from fleet.telemetry.rollups import days_rollup, floor_day

    took: dict[str, float] = {}
    started = time.perf_counter()
    call_command("migrate", verbosity=0)
    hosts = []
    for i in range(gpus // GPUS_PER_HOST):
        node = Node(name=f"bench-{i:04d}", status="online", last_seen_at=now)
        node.issue_token()
        hosts.append(node)
    Node.objects.bulk_create(hosts)
    Gpu.objects.bulk_create(
        Gpu(
            node=node,
            index=g,
            uuid=f"GPU-{node.name}-{g}",
            model_name="NVIDIA H100 80GB HBM3",
            memory_total_bytes=85_520_809_984,
        )
        for node in Node.objects.all()
        for g in range(GPUS_PER_HOST)
    )
    profile = ModelProfile.objects.get(name="qwen3-4b-chat-bf16")  # installed by the presets migration
    pools = Pool.objects.bulk_create(
        Pool(name=f"pool-{p}", tier="L", isolation="shared", model_profile=profile) for p in range(POOLS)
    )
    Instance.objects.bulk_create(
        Instance(pool=pools[i % POOLS], gpu=gpu, actual_state="ready")
        for i, gpu in enumerate(Gpu.objects.order_by("pk")[: gpus // 4])
    )
    start = (now - timedelta(days=days)).replace(minute=0, second=0, microsecond=0)
    InstanceEvent.objects.bulk_create(
        InstanceEvent(instance=instance, at=start, state="ready", gpu_id=instance.gpu_id)
        for instance in Instance.objects.all()
    )
    with connection.cursor() as cursor:  # --flap: a long state history for the cost pages to rebuild
        cursor.execute(
            "INSERT INTO fleet_instanceevent (instance_id, at, state, gpu_id, mig_device_id) "
            "SELECT i.id, t, CASE WHEN n %% 2 = 1 THEN 'stopped' ELSE 'ready' END, i.gpu_id, NULL "
            "FROM (SELECT * FROM fleet_instance ORDER BY id LIMIT %s) i "
            "CROSS JOIN LATERAL generate_series(1, %s) n "
            "CROSS JOIN LATERAL (SELECT %s::timestamptz + n * interval '20 minutes' t) x",
            [flap, int((now - start) / timedelta(minutes=20)) - 1, start],
        )
    took["fleet rows"] = time.perf_counter() - started
    util = "(50 + 30 * sin(extract(epoch from t) / 3600.0 + g.id) + 10 * random())"
    gpu_columns = (
        "gpu_id, bucket, samples, utilization_mean, utilization_max, sm_activity_mean, sm_activity_max, "
        "memory_used_mean, memory_used_max, memory_total, power_mean, power_max, temperature_max, energy_joules"
    )
    histogram = (
        """'{"bounds": [0.1, 0.25, 0.5, 1.0, 2.5], "counts": [100, 400, 800, 950, 990], "count": 1000}'::jsonb"""
    )
    pool_columns = (
        "pool_id, bucket, samples, instances, requests_waiting_mean, requests_waiting_max, requests_running_mean, "
        "requests_running_max, kv_cache_usage_mean, requests, prompt_tokens, generation_tokens, ttft_histogram, "
        "e2e_histogram, ttft_p50_s, ttft_p95_s, ttft_p99_s, e2e_p50_s, e2e_p95_s, e2e_p99_s"
    )
    with connection.cursor() as cursor:
        for table, step, samples, energy in (
            ("fleet_gpuminute", "1 minute", 12, 18_000),
            ("fleet_gpuhour", "1 hour", 720, 1_080_000),
        ):
            started = time.perf_counter()
            day = start
            while day < now:  # a day per statement keeps rows in time order, as the rollup task writes them
                until = min(day + timedelta(days=1), now)
                cursor.execute(
                    f"INSERT INTO {table} ({gpu_columns}) "
                    f"SELECT g.id, t, {samples}, u, least(u + 10, 100), u * 0.8, least(u * 0.8 + 10, 100), "
                    "2e10 + u * 1e8, 2e10 + u * 1e8 + 1e9, 85520809984, 200 + 4 * u, 260 + 4 * u, 60 + u / 5, "
                    f"{energy} "
                    f"FROM generate_series(%s::timestamptz, %s::timestamptz - interval '{step}', interval '{step}') t "
                    f"CROSS JOIN fleet_gpu g CROSS JOIN LATERAL (SELECT {util} AS u) x",
                    [day, until],
                )
                day = until
            took[table] = time.perf_counter() - started
        started = time.perf_counter()
        for table, step in (("fleet_poolminute", "1 minute"), ("fleet_poolhour", "1 hour")):
            cursor.execute(
                f"INSERT INTO {table} ({pool_columns}) "
                f"SELECT p.id, t, 600, 60, 2, 8, 30, 60, 0.5, 1000, 4e5, 2e5, {histogram}, {histogram}, "
                f"0.2, 0.8, 1.5, 0.3, 1.1, 2.2 "
                f"FROM generate_series(%s::timestamptz, %s::timestamptz - interval '{step}', interval '{step}') t "
                f"CROSS JOIN fleet_pool p",
                [start, now],
            )
        took["pool rollups"] = time.perf_counter() - started
        started = time.perf_counter()
        raw_start = now - timedelta(hours=raw_hours)
        hour = raw_start
        while hour < now:
            until = min(hour + timedelta(hours=1), now)
            cursor.execute(
                "INSERT INTO fleet_gpusample (gpu_id, at, utilization_gpu_pct, sm_activity_pct, memory_used_bytes, "
                "memory_total_bytes, power_watts, power_limit_watts, energy_joules, temperature_c, sm_clock_mhz, "
                "mem_clock_mhz, pstate, throttle_reasons, ecc_uncorrected) "
                f"SELECT g.id, t, {util}, 40, 2e10, 85520809984, 300, 700, 1e9 + extract(epoch from t) * 300, 60, "
                "1980, 2619, 0, '[]'::jsonb, 0 "
                "FROM generate_series(%s::timestamptz, %s::timestamptz - interval '5 seconds', interval '5 seconds') t "
                "CROSS JOIN fleet_gpu g",
                [hour, until],
            )
            hour = until
        took["fleet_gpusample"] = time.perf_counter() - started
        started = time.perf_counter()
        # Day rollups of the complete days, by the rollup task's own function, and its watermark.
        days_rollup(start=floor_day(start), end=floor_day(now))
        RollupWatermark.objects.update_or_create(name="day", defaults={"done_until": floor_day(now)})
        took["fleet_gpuday"] = time.perf_counter() - started
        took.update(logs_generate(cursor=cursor, start=start, now=now, requests=requests))
        took["fleet_usagehour"] = usage_rollup(now=now)
        started = time.perf_counter()
        for table in (
            "fleet_requestlog",
            "fleet_decision",
            "fleet_alert",
            "fleet_gpusample",
            "fleet_gpuminute",
            "fleet_gpuhour",
            "fleet_gpuday",
            "fleet_poolminute",
            "fleet_poolhour",
        ):
            cursor.execute(f"VACUUM ANALYZE {table}")
        took["vacuum analyze"] = time.perf_counter() - started
    return took


def usage_rollup(*, now: datetime) -> float:
    """The request log's usage hours up to ``now``, by the hour task's own rollup; returns its seconds.

    A first run rolls every complete hour of the log up; on a database that has them it finds
    nothing to do.
    """
    from django.db import connection

    from fleet.telemetry.rollups import usage_rollup_run

    started = time.perf_counter()
    usage_rollup_run(now=now)
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE fleet_usagehour")
    return time.perf_counter() - started


def decisions_generate(*, cursor: Any, start: datetime, now: datetime) -> None:
    """A decision a pool a minute on one of its instances in turn (autoscale scaling out and in, idle
    reclaim starting and stopping, pre-warm starting), and a person's settings change every tenth."""
    cursor.execute(
        "INSERT INTO fleet_decision (created_at, policy_kind, pool_id, instance_id, action, reason, inputs, "
        "applied_at) "
        "SELECT t, k.kind, p.id, i.id, CASE WHEN k.kind = 'manual' THEN 'settings_applied' "
        "WHEN k.kind = 'autoscale' THEN (ARRAY['scale_out', 'scale_in'])[1 + k.m %% 2] "
        "WHEN k.kind = 'idle_reclaim' THEN (ARRAY['start', 'stop'])[1 + k.m %% 2] ELSE 'start' END, "
        "k.kind || ' decided for pool ' || p.name, "
        "CASE WHEN k.kind = 'manual' THEN jsonb_build_object('user', 'operator-' || (p.id %% 3)) ELSE '{}'::jsonb END, "
        "t FROM generate_series(%s::timestamptz, %s::timestamptz - interval '1 minute', interval '1 minute') t "
        "CROSS JOIN fleet_pool p "
        "CROSS JOIN LATERAL (SELECT extract(epoch from t)::bigint / 60 AS m) minute "
        "CROSS JOIN LATERAL (SELECT minute.m, (ARRAY['autoscale', 'idle_reclaim', 'prewarm', 'autoscale', "
        "'idle_reclaim', 'prewarm', 'autoscale', 'idle_reclaim', 'prewarm', 'manual'])[1 + (minute.m + p.id) %% 10] "
        "AS kind) k "
        "LEFT JOIN LATERAL (SELECT f.id FROM fleet_instance f WHERE f.pool_id = p.id ORDER BY f.id "
        "OFFSET (k.m / 2) %% greatest((SELECT count(*) FROM fleet_instance c WHERE c.pool_id = p.id), 1) LIMIT 1) i "
        "ON k.kind <> 'manual'",
        [start, now],
    )


def logs_generate(*, cursor: Any, start: datetime, now: datetime, requests: int) -> dict[str, float]:
    """What the request, decision and alert pages read: ``requests`` gateway requests spread evenly
    over the days (a tenth streamed with a TTFT, one in fifty failed, one in a hundred a cold start)
    from 8 teams' 16 keys to the instances in turn; the decisions of ``decisions_generate``; an alert
    rule of each kind firing and resolving every ten minutes on one of a hundred subjects."""
    from fleet.models import AlertRule, ApiKey, Team

    took: dict[str, float] = {}
    started = time.perf_counter()
    teams = Team.objects.bulk_create(Team(name=f"team-{t}", slug=f"team-{t}") for t in range(8))
    ApiKey.objects.bulk_create(
        ApiKey(team=team, name=f"key-{k}", prefix=f"gf_{team.pk}_{k}", key_hash=f"{team.pk:032d}{k:032d}")
        for team in teams
        for k in range(2)
    )
    seconds = (now - start).total_seconds()
    cursor.execute(
        "INSERT INTO fleet_requestlog (at, team_id, pool_id, instance_id, api_key_id, endpoint, model, rcf, tier, "
        "stream, prompt_tokens, output_tokens, tokens_from_usage, ttft_ms, latency_ms, status, cold_start, retried, "
        "error) "
        "SELECT %s::timestamptz + (n * %s / %s) * interval '1 second', k.team_id, i.pool_id, i.id, k.id, "
        "'chat', 'qwen3-4b', 0.3, 'L', n %% 10 = 0, 200 + n %% 800, 50 + n %% 300, true, "
        "CASE WHEN n %% 10 = 0 THEN 80 + n %% 400 END, 300 + n %% 2000, CASE WHEN n %% 50 = 0 THEN 503 ELSE 200 END, "
        "n %% 100 = 0, false, '' "
        "FROM generate_series(0, %s - 1) n "
        "JOIN (SELECT id, team_id, row_number() OVER (ORDER BY id) - 1 AS r FROM fleet_apikey) k ON k.r = n %% 16 "
        "JOIN (SELECT id, pool_id, row_number() OVER (ORDER BY id) - 1 AS r, count(*) OVER () AS c "
        "FROM fleet_instance) i ON i.r = n %% i.c",
        [start, seconds, requests, requests],
    )
    took["fleet_requestlog"] = time.perf_counter() - started
    started = time.perf_counter()
    decisions_generate(cursor=cursor, start=start, now=now)
    took["fleet_decision"] = time.perf_counter() - started
    started = time.perf_counter()
    rules = AlertRule.objects.bulk_create(
        AlertRule(name=f"bench-{kind}", kind=kind, threshold=1 if kind in ("idle_waste", "node_silent") else None)
        for kind in AlertRule.Kind.values
    )
    cursor.execute(
        "INSERT INTO fleet_alert (rule_id, key, state, message, value, started_at, fired_at, resolved_at) "
        "SELECT r.id, 'node:bench-' || lpad((n %% 100)::text, 4, '0'), 'resolved', 'bench alert', '1', "
        "%s::timestamptz + n * interval '10 minutes', %s::timestamptz + n * interval '10 minutes' + "
        "interval '1 minute', %s::timestamptz + n * interval '10 minutes' + interval '5 minutes' "
        "FROM generate_series(0, (%s / 600)::int - 1) n CROSS JOIN fleet_alertrule r WHERE r.id = ANY(%s)",
        [start, start, start, seconds, [rule.pk for rule in rules]],
    )
    took["fleet_alert"] = time.perf_counter() - started
    return took


def timed(call: Callable[[], Any], repeat: int) -> tuple[float, float, int]:
    """Median and worst milliseconds over ``repeat`` warm calls, and the rows the result holds."""
    result = call()
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        result = call()
        times.append((time.perf_counter() - started) * 1000)
    size = len(result) if isinstance(result, list) else len(result.get("at") or result.get("utilization") or [])
    return statistics.median(times), max(times), size


def dashboard_figures(*, now: datetime, gpu: int, pool: int, figures: Any, pages: Any) -> list[tuple[str, Any]]:
    """The dashboard's server-side figure building, selector and Plotly builder together; each
    returns the figure's traces (the rows column counts traces)."""
    from fleet.models import Gpu, Node, Pool

    def span(key: str) -> Any:
        return pages.time_range_parse(params={"range": key}, now=now)

    def heatmap(key: str) -> list[Any]:
        grid = pages.gpu_utilization_grid(time_range=span(key))
        return figures.utilization_heatmap(grid=grid, span=span(key).span)["data"]

    def node_charts(key: str) -> list[Any]:
        node = Node.objects.get(gpus=gpu)
        time_range = span(key)
        series = pages.gpu_series_by_gpu(gpus=Gpu.objects.filter(node=node), time_range=time_range)
        charts = [
            figures.gpu_lines(series=series, field=field, title=field, unit=field, span=time_range.span)
            for field in ("utilization", "memory_used", "power", "temperature")
        ]
        return [trace for chart in charts for trace in chart["data"]]

    def pool_charts(key: str) -> list[Any]:
        item = Pool.objects.get(pk=pool)
        history = pages.pool_history(pool=item, time_range=span(key))
        within = span(key).span
        latency = figures.pool_latency(
            history=history, sla_ms=item.sla_latency_ms, sla_label="SLA", metric="TTFT", span=within
        )
        return latency["data"] + figures.pool_queue(history=history, span=within)["data"]

    def costs(key: str) -> list[Any]:
        cost = pages.cost_page(time_range=span(key))
        return (
            figures.spend_over_time(buckets=cost.over_time, currency=cost.currency, span=span(key).span)["data"]
            + figures.spend_by_pool(rows=cost.by_pool, currency=cost.currency)["data"]
        )

    return [
        ("dashboard: heatmap 1 h (minutes)", lambda: heatmap("1h")),
        ("dashboard: heatmap 24 h (hours)", lambda: heatmap("24h")),
        ("dashboard: heatmap 7 d (hours)", lambda: heatmap("7d")),
        ("dashboard: node, 8 GPUs x 4, 24 h", lambda: node_charts("24h")),
        ("dashboard: pool latency+queue, 7 d", lambda: pool_charts("7d")),
        (
            "dashboard: SLA attainment, 24 h",
            lambda: figures.sla_attainment(rows=pages.sla_attainment(time_range=span("24h")))["data"],
        ),
        ("dashboard: costs, 24 h", lambda: costs("24h")),
        ("dashboard: costs, 7 d", lambda: costs("7d")),
        ("dashboard: spend month to date", lambda: [pages.spend_summary(now=now)]),
    ]


PAGE_TARGET_MS = 300.0


def pages_list(*, pool: int, team: int, key: int) -> list[tuple[str, str]]:
    """The pages timed whole, with the filters an operator uses: label and URL."""
    return [
        ("page: /instances/", "/instances/"),
        ("page: /savings/", "/savings/"),
        ("page: /recommendations/", "/recommendations/"),
        ("page: /alerts/", "/alerts/"),
        ("page: /requests/", "/requests/"),
        ("page: /requests/ 7 d, one pool, errors", f"/requests/?range=7d&pool={pool}&status=error"),
        ("page: /requests/ 7 d, one team, cold", f"/requests/?range=7d&team={team}&cold=yes"),
        ("page: /requests/ 7 d, one key, 200 rows", f"/requests/?range=7d&key={key}&per=200"),
        ("page: /decisions/", "/decisions/"),
        ("page: /decisions/ 7 d, autoscale", "/decisions/?range=7d&kind=autoscale"),
        ("page: /decisions/ 7 d, one pool, person", f"/decisions/?range=7d&pool={pool}&person=operator-{pool % 3}"),
        ("page: /costs/spend.csv 7 d by pool", "/costs/spend.csv?range=7d&group=pool"),
        ("page: /costs/spend.csv 7 d by team", "/costs/spend.csv?range=7d&group=team"),
        ("page: /costs/spend.csv 7 d by key", "/costs/spend.csv?range=7d&group=key"),
    ]


def page_timed(client: Any, url: str, repeat: int) -> tuple[float, float, int, int]:
    """Median and p95 milliseconds over ``repeat`` warm GETs of ``url`` as the server builds it (a
    streamed export read to its end), the queries one GET ran, and its bytes."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    def get() -> tuple[int, int]:
        with CaptureQueriesContext(connection) as captured:
            response = client.get(url)
            body = b"".join(response.streaming_content) if response.streaming else response.content
        if response.status_code != 200:
            raise SystemExit(f"{url}: HTTP {response.status_code}: {body[:500]!r}")
        return len(captured), len(body)

    get()
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        queries, size = get()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times), percentile(times, 95), queries, size


def pages_timed(*, pool: int, team: int, key: int, repeat: int, only: str) -> list[tuple[str, float, float, int, int]]:
    """Each page of ``pages_list`` timed as a signed-in superuser gets it."""
    from django.contrib.auth.models import User
    from django.test import Client
    from django.test.utils import setup_test_environment

    setup_test_environment()  # lets the test client's host in, as the test suite does
    user = User.objects.filter(username="bench").first() or User.objects.create_superuser("bench", "", None)
    client = Client()
    client.force_login(user)
    return [
        (label, *page_timed(client, url, repeat))
        for label, url in pages_list(pool=pool, team=team, key=key)
        if only in label
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gpus", type=int, default=1000)
    parser.add_argument("--days", type=int, default=7)
    parser.add_argument("--requests", type=int, default=2_000_000, help="gateway requests over the days")
    parser.add_argument("--raw-hours", type=int, default=6)
    parser.add_argument(
        "--flap", type=int, default=0, help="instances whose state flips between ready and stopped every 20 min"
    )
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--db-name", default="bench_tele", help="the scratch database, created and dropped here")
    parser.add_argument(
        "--database-url",
        default=os.environ.get("BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"),
        help="a PostgreSQL the bench may create and drop the database bench_tele on",
    )
    parser.add_argument("--keep", action="store_true", help="leave the database for --reuse")
    parser.add_argument("--reuse", action="store_true", help="time the database a --keep run left, as it is")
    parser.add_argument("--only", default="", help="time only the queries whose label contains this")
    parser.add_argument("--profile", type=int, default=0, help="print the N costliest functions (cProfile)")
    args = parser.parse_args()
    db_name = args.db_name
    url = args.database_url.rsplit("/", 1)[0] + "/" + db_name
    if not args.reuse:
        admin_sql(args.database_url, f"DROP DATABASE IF EXISTS {db_name} WITH (FORCE)")
        admin_sql(args.database_url, f"CREATE DATABASE {db_name}")
    try:
        setup_django(url)
        from django.db import connection

        from dashboard import figures
        from dashboard import selectors as pages
        from fleet import selectors
        from fleet.models import ApiKey, Gpu, GpuMinute, GpuSample, Pool, RequestLog, Team

        if args.reuse:
            from django.core.management import call_command
            from django.db.models import Max

            # A database a --keep run left before the usage rollup existed gets its table and rows.
            call_command("migrate", verbosity=0)
            now = GpuSample.objects.aggregate(newest=Max("at"))["newest"] + timedelta(seconds=1)
            took = {"fleet_usagehour": usage_rollup(now=now)}
        else:
            now = datetime.now(tz=UTC).replace(microsecond=0)
            took = generate(args.gpus, args.days, args.raw_hours, now, args.requests, args.flap)
        gpu = Gpu.objects.order_by("pk")[args.gpus // 2].pk
        pool = Pool.objects.order_by("pk").first().pk
        counts = {
            "raw samples": GpuSample.objects.count(),
            "minute rollups": GpuMinute.objects.count(),
            "requests": RequestLog.objects.count(),
        }

        def select_one() -> list[Any]:
            with connection.cursor() as cursor:
                cursor.execute("SELECT 1")
                return cursor.fetchall()

        def heatmap_from_minutes() -> list[Any]:
            return list(
                GpuMinute.objects.filter(bucket__gte=now - timedelta(hours=24)).values_list(
                    "gpu_id", "bucket", "utilization_mean"
                )
            )

        queries: list[tuple[str, Callable[[], Any]]] = [
            ("baseline: SELECT 1 round trip", select_one),
            (
                "one GPU, 1 h (raw samples)",
                lambda: selectors.gpu_series(gpu_id=gpu, start=now - timedelta(hours=1), end=now),
            ),
            (
                "one GPU, 24 h (minute rollups)",
                lambda: selectors.gpu_series(gpu_id=gpu, start=now - timedelta(hours=24), end=now),
            ),
            (
                "one GPU, 7 d (hour rollups)",
                lambda: selectors.gpu_series(gpu_id=gpu, start=now - timedelta(days=7), end=now),
            ),
            (
                "one pool, 7 d (hour rollups)",
                lambda: selectors.pool_series(pool_id=pool, start=now - timedelta(days=7), end=now),
            ),
            (
                "fleet heatmap, 24 h (hour rollups)",
                lambda: selectors.fleet_heatmap(start=now - timedelta(hours=24), end=now),
            ),
            ("latest per GPU, all GPUs", lambda: selectors.gpus_latest(fresh_for=None)),
            ("compare: heatmap 24 h from minutes", heatmap_from_minutes),
            *dashboard_figures(now=now, gpu=gpu, pool=pool, figures=figures, pages=pages),
        ]
        queries = [query for query in queries if query is queries[0] or args.only in query[0]]
        results = [(label, *timed(call, args.repeat)) for label, call in queries]
        if args.profile:
            import cProfile
            import pstats

            profiler = cProfile.Profile()
            for _label, call in queries[1:]:
                profiler.runcall(call)
            pstats.Stats(profiler).sort_stats("cumulative").print_stats(args.profile)
        page_results = pages_timed(
            pool=pool,
            team=Team.objects.order_by("pk").values_list("pk", flat=True)[0],
            key=ApiKey.objects.order_by("pk").values_list("pk", flat=True)[0],
            repeat=args.repeat,
            only=args.only,
        )
        connection.close()
    finally:
        if not args.keep:
            admin_sql(args.database_url, f"DROP DATABASE IF EXISTS {db_name} WITH (FORCE)")

    print(
        f"chart queries: {args.gpus} GPUs, {args.days} d of minute and hour rollups, {args.raw_hours} h of raw 5 s "
        f"samples ({counts['raw samples']:,} raw rows, {counts['minute rollups']:,} minute rows), PostgreSQL, "
        f"{os.cpu_count()} CPU cores"
    )
    print("generation: " + ", ".join(f"{name} {seconds:.0f} s" for name, seconds in took.items()))
    baseline = results[0][1]
    print(f"{'query (through fleet.selectors)':38}{'rows':>9}{'median ms':>11}{'worst ms':>10}{'x SELECT 1':>12}")
    for label, median, worst, rows in results:
        print(f"{label:38}{rows:>9,}{median:>11.1f}{worst:>10.1f}{median / baseline:>12.0f}")
    if page_results:
        print(
            f"pages as served ({counts['requests']:,} logged requests; median and p95 of {args.repeat} warm GETs, "
            f"target {PAGE_TARGET_MS:.0f} ms)"
        )
        print(f"{'page':44}{'median ms':>10}{'p95 ms':>9}{'queries':>9}{'kB':>8}  target")
        for label, median, p95, ran, size in page_results:
            verdict = "ok" if p95 <= PAGE_TARGET_MS else "OVER"
            print(f"{label:44}{median:>10.1f}{p95:>9.1f}{ran:>9}{size / 1000:>8.0f}  {verdict}")


if __name__ == "__main__":
    main()
