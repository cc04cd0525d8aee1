"""CPU cost of one report on the real report view, measured in one process, no HTTP, no load.

Complements ``bench/ingest.py``: that one measures throughput and latency, which depend on
how busy the machine is; this one measures the CPU the panel process spends per report
(``time.process_time``), which does not. It builds a scratch database on PostgreSQL, one
host with G GPUs and a few instances placed on it, and calls the WSGI application with
the body the agent sends (8 GPU readings and one sample per instance), as gunicorn would.

    python bench/ingest_profile.py [--reports 500] [--gpus 8] [--instances 3] [--profile 25]

``--profile N`` also prints the N most expensive functions by cumulative CPU time (cProfile
with a CPU clock, so that waiting on the database or on other processes does not count).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from ingest import admin_sql, body, cpu_seconds, database_url, prepare


def instance_readings(instance_ids: list[int], tick: int) -> list[dict[str, Any]]:
    """One vLLM sample per instance, with latency histograms as the agent scrapes them."""
    bounds = [0.1, 0.25, 0.5, 1.0, 2.5, 5.0]
    return [
        {
            "instance_id": pk,
            "generation": 1,
            "state": "ready",
            "container_id": f"c{pk}",
            "endpoint": f"http://127.0.0.1:{8100 + pk % 100}",  # in the agent's default --port-range
            "requests_waiting": float(tick % 3),
            "requests_running": 4.0,
            "kv_cache_usage": 0.3,
            "request_rate": 2.0,
            "prompt_tokens_rate": 800.0,
            "generation_tokens_rate": 200.0,
            "ttft_histogram": {"bounds": bounds, "counts": [1, 3, 5, 8, 9, 10], "count": 10},
            "e2e_histogram": {"bounds": bounds, "counts": [0, 0, 1, 4, 8, 10], "count": 10},
        }
        for pk in instance_ids
    ]


def place_instances(node_name: str, gpus: int, count: int) -> list[int]:
    """Register the host's GPUs and place ``count`` ready instances of the chat preset on them."""
    from fleet.models import Gpu, Instance, ModelProfile, Node, Pool

    node = Node.objects.get(name=node_name)
    rows = [
        Gpu.objects.create(
            node=node,
            index=g,
            uuid=f"GPU-{node_name}-{g}",
            model_name="NVIDIA H100 80GB HBM3",
            memory_total_bytes=85_520_809_984,
            mig_capable=True,
            mig_mode=Gpu.MigMode.DISABLED,
        )
        for g in range(gpus)
    ]
    pool = Pool.objects.create(
        name="bench-chat", tier="L", isolation="shared", model_profile=ModelProfile.objects.order_by("pk").first()
    )
    return [
        Instance.objects.create(
            pool=pool, gpu=rows[i % gpus], actual_state=Instance.Actual.READY, actual_generation=1, container_id=f"c{i}"
        ).pk
        for i in range(count)
    ]


def environ(token: str, data: bytes) -> dict[str, Any]:
    return {
        "REQUEST_METHOD": "POST",
        "PATH_INFO": "/api/agent/v1/report",
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "8000",
        "HTTP_HOST": "127.0.0.1",
        "wsgi.url_scheme": "http",
        "CONTENT_TYPE": "application/json",
        "CONTENT_LENGTH": str(len(data)),
        "HTTP_AUTHORIZATION": f"Bearer {token}",
        "wsgi.input": io.BytesIO(data),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reports", type=int, default=500)
    parser.add_argument("--gpus", type=int, default=8)
    parser.add_argument("--instances", type=int, default=3)
    parser.add_argument("--hosts", type=int, default=1, help="hosts reporting in turn (the first has the instances)")
    parser.add_argument("--profile", type=int, default=0, help="print the N costliest functions")
    parser.add_argument("--profile-file", help="also write the cProfile data here, for pstats or snakeviz")
    parser.add_argument(
        "--database-url",
        default=os.environ.get("BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"),
        help="a PostgreSQL the profile may create and drop its scratch database on",
    )
    parser.add_argument("--db-name", default=os.environ.get("BENCH_DB_NAME", "bench_tele_profile"))
    parser.add_argument("--statements", action="store_true", help="print the SQL statements of one steady report")
    args = parser.parse_args()
    url = database_url(args.database_url, args.db_name)
    admin_sql(args.database_url, f"DROP DATABASE IF EXISTS {args.db_name} WITH (FORCE)")
    admin_sql(args.database_url, f"CREATE DATABASE {args.db_name}")
    os.environ.setdefault("DEBUG", "0")
    # One host posts hundreds of reports a second here: the per-node rate bound is still
    # counted on every report, but set past this run's count so that none is refused.
    os.environ.setdefault("AGENT_REPORTS_PER_MINUTE", str(10**9))
    try:
        hosts = prepare(url, args.hosts)
        name = hosts[0][0]
        from django.core.wsgi import get_wsgi_application
        from django.db import connection

        instance_ids = place_instances(name, args.gpus, args.instances)
        app = get_wsgi_application()
        statuses: list[str] = []

        def start_response(status: str, _headers: list[tuple[str, str]]) -> None:
            statuses.append(status)

        def one(seq: int) -> None:
            host, host_token = hosts[seq % len(hosts)]
            report = json.loads(body(host, seq, args.gpus, seq))
            if host == name:
                report["reports"][0]["instances"] = instance_readings(instance_ids, seq)
            b"".join(app(environ(host_token, json.dumps(report).encode()), start_response))

        for seq in range(1, 21 + len(hosts)):  # warm up: imports, connection, caches, every host's GPUs
            one(seq)
        with connection.cursor() as cursor:  # the statistics autovacuum keeps on a fleet in steady state
            cursor.execute("ANALYZE")
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_backend_pid()")
            [(backend,)] = cursor.fetchall()
        db_cpu = cpu_seconds([backend]).get(backend)
        profiler = cProfile.Profile(time.process_time) if args.profile else None
        cpu, wall = time.process_time(), time.perf_counter()
        if profiler:
            profiler.enable()
        for seq in range(21 + len(hosts), 21 + len(hosts) + args.reports):
            one(seq)
        if profiler:
            profiler.disable()
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        db_after = cpu_seconds([backend]).get(backend)
        db_cpu = db_after - db_cpu if db_cpu is not None and db_after is not None else None
        if args.statements:
            from django.test.utils import CaptureQueriesContext

            with CaptureQueriesContext(connection) as captured:
                one(21 + len(hosts) + args.reports)
            for query in captured.captured_queries:
                print(f"{query['time']:>7} s  {query['sql'][:160]}")
        refused = [s for s in statuses if not s.startswith("200")]
        connection.close()
    finally:
        admin_sql(args.database_url, f"DROP DATABASE IF EXISTS {args.db_name} WITH (FORCE)")
    if refused:
        raise SystemExit(f"refused reports: {refused[:3]}")
    print(
        f"{args.reports} reports of {args.gpus} GPUs and {args.instances} instances on the real view: "
        f"{cpu / args.reports * 1000:.2f} ms panel CPU per report, "
        + (f"{db_cpu / args.reports * 1000:.2f} ms database CPU, " if db_cpu is not None else "")
        + f"{wall / args.reports * 1000:.2f} ms wall"
    )
    if profiler:
        pstats.Stats(profiler).sort_stats("cumulative").print_stats(args.profile)
        if args.profile_file:
            profiler.dump_stats(args.profile_file)


if __name__ == "__main__":
    main()
