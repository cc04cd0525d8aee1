"""Report ingest at fleet scale: the real report endpoint, over HTTP, against PostgreSQL.

Starts the panel under gunicorn (a few gthread workers, like a small production box, or
with ``--server asgi`` the ASGI application on uvicorn workers) on a scratch database
(``bench_tele``, or the name ``--db-name`` or ``BENCH_DB_NAME`` gives; created here,
dropped at the end), registers N simulated hosts, and drives the real
``/api/agent/v1/report`` from a separate load-generator process: every host sends one
report of G GPUs every interval, spread evenly, open loop (a slow reply does not slow the
offered load). Prints sustained GPU samples per second (counted in the database, not just
from replies), report latency p50/p99, and a baseline measured in the same run: the same
load against a trivial endpoint in the same server setup, which reads the body and
answers a constant (the floor of HTTP, server and load generator).
Also times one minute rollup of the stored samples.

Throughput and latency depend on what else the machine runs, so the table also gives the
CPU time each part spent per report: the server processes, the database backends serving
them (read from ``/proc`` where PostgreSQL runs on this machine) and the load generator.
Those figures hold on a busy machine too, and say how many reports a second a given
number of cores can take.

With ``--nginx`` (``make bench-replicas``) the report replicas run as deploy/ runs them: each
a ``gpufleet-reports@PORT`` unit's gunicorn command with the shipped environment file, behind
nginx rendered from ``deploy/nginx/gpufleet.conf`` (tests/support/deploy_site.py). The same
open-loop load goes through nginx to one replica and to ``--replicas`` of them, in alternating
rounds, and the table gives stored reports/s, what each replica answered (nginx's access log)
and CPU ms per report of the replicas, nginx, the database, Redis and the load generator.

    python bench/ingest.py [--hosts 1250] [--gpus 8] [--interval 5] [--seconds 60] [--workers 3]
                           [--server wsgi|asgi] [--db-name bench_tele]
                           [--nginx [--replicas 2] [--rounds 2]]

Target: >= 2,000 GPU samples/s sustained (1,250 hosts x 8 GPUs / 5 s) with p99 <= 100 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.chart_queries import admin_sql, percentile  # noqa: E402

DB_NAME = "bench_tele"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


TRIVIAL_REPLY = b'{"ack_seq": 1, "desired": [], "report_interval_s": 5.0}'
# How gunicorn runs each kind of app: the WSGI panel on threads with persistent database
# connections, the ASGI one on uvicorn workers without (Django's documentation says to
# disable them under ASGI; with them, connections pile up until PostgreSQL refuses more).
SERVERS = {
    "wsgi": (
        "fleet.project.wsgi:application",
        "ingest:trivial_app",
        ["--worker-class", "gthread", "--threads", "4"],
        "600",
    ),
    "asgi": (
        "fleet.project.asgi:application",
        "ingest:trivial_asgi",
        ["--worker-class", "uvicorn.workers.UvicornWorker"],
        "0",
    ),
}


def trivial_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """The baseline endpoint: read the body, answer a constant, touch nothing else."""
    environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
    start_response(
        "200 OK",
        [
            ("Content-Type", "application/json"),
            ("Content-Length", str(len(TRIVIAL_REPLY))),
        ],
    )
    return [TRIVIAL_REPLY]


async def trivial_asgi(scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
    """The same baseline endpoint for the ASGI server."""
    if scope["type"] == "lifespan":
        while (await receive())["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    while (await receive()).get("more_body"):
        pass
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(TRIVIAL_REPLY)).encode()),
    ]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": TRIVIAL_REPLY})


def database_url(base: str, name: str) -> str:
    return base.rsplit("/", 1)[0] + "/" + name


def prepare(url: str, hosts: int) -> list[tuple[str, str]]:
    """Migrate the scratch database and create the hosts; return (name, token) pairs."""
    os.environ["DATABASE_URL"] = url
    os.environ.pop("REDIS_URL", None)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "fleet.project.settings")
    import django

    django.setup()
    from django.core.management import call_command

    from fleet.models import Node

    call_command("migrate", verbosity=0)
    nodes, tokens = [], []
    for i in range(hosts):
        node = Node(name=f"bench-{i:05d}")
        tokens.append((node.name, node.issue_token()))
        nodes.append(node)
    Node.objects.bulk_create(nodes, batch_size=1000)
    return tokens


def cpu_seconds(pids: Iterable[int]) -> dict[int, float]:
    """User plus system CPU time of each of these processes so far; those that are gone are left out."""
    spent = {}
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        spent[pid] = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    return spent


def cpu_spent(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU seconds spent between two readings by the processes alive at the second."""
    return sum(seconds - before.get(pid, 0.0) for pid, seconds in after.items())


def server_pids(master: int) -> list[int]:
    """A server process and the processes it started (gunicorn's workers, the gateway's database worker)."""
    children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
    return [master, *map(int, children)]


def database_pids(url: str, name: str) -> list[int]:
    """The PostgreSQL backends connected to the scratch database (local server only)."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute("SELECT pid FROM pg_stat_activity WHERE datname = %s", (name,)).fetchall()
    return [pid for (pid,) in rows if Path(f"/proc/{pid}").exists()]


def stop(server: subprocess.Popen[bytes]) -> None:
    """Stop a server; one still busy with a backlog after its grace period is killed."""
    server.terminate()
    try:
        server.wait(timeout=15)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(
    app: str, port: int, workers: int, url: str, worker_args: list[str], conn_max_age: str, redis_url: str = ""
) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "DATABASE_URL": url,
        "DEBUG": "0",
        "LOG_LEVEL": "WARNING",
        "DB_CONN_MAX_AGE": conn_max_age,
        "FLEET_INPROCESS_SCHEDULER": "0",
    }
    env.pop("REDIS_URL", None)
    if redis_url:
        env["REDIS_URL"] = redis_url
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gunicorn",
            app,
            "--workers",
            str(workers),
            *worker_args,
            "--bind",
            f"127.0.0.1:{port}",
            "--backlog",
            "2048",
            "--log-level",
            "warning",
            "--pythonpath",
            f"{ROOT},{ROOT / 'bench'}",
        ],
        cwd=ROOT,
        env=env,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return process
        except OSError:
            time.sleep(0.2)
    process.kill()
    raise RuntimeError(f"{app} did not start")


def body(name: str, seq: int, gpus: int, tick: int) -> bytes:
    """One report, as the agent sends it: G GPUs with readings that move a little each tick."""
    readings = [
        {
            "index": g,
            "uuid": f"GPU-{name}-{g}",
            "name": "NVIDIA H100 80GB HBM3",
            "memory_total_bytes": 85_520_809_984,
            "memory_used_bytes": 20_000_000_000 + 1_000_000 * ((tick + g) % 97),
            "utilization_gpu_pct": float((tick * 7 + g * 13) % 100),
            "sm_activity_pct": float((tick * 5 + g * 11) % 100),
            "power_watts": 300.0 + (tick + g) % 50,
            "power_limit_watts": 700.0,
            "energy_joules": 1.0e9 + tick * 1500.0,
            "temperature_c": 55.0,
            "sm_clock_mhz": 1980,
            "mem_clock_mhz": 2619,
            "pstate": 0,
            "mig_enabled": False,
        }
        for g in range(gpus)
    ]
    report = {
        "seq": seq,
        "sampled_at": time.time(),
        "host": {
            "hostname": f"{name}.bench",
            "agent_version": "bench",
            "nvml_available": True,
        },
        "gpus": readings,
    }
    return json.dumps({"version": 1, "node": name, "reports": [report], "dropped": 0}).encode()


async def post(port: int, path: str, token: str, data: bytes) -> int:
    """One HTTP/1.1 POST on a fresh loopback connection; the status code.

    A few lines of asyncio streams instead of an HTTP client library, so the load
    generator spends its CPU on the load, not on itself.
    """
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(
            (
                f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\nConnection: close\r\n\r\n"
            ).encode()
            + data
        )
        await writer.drain()
        status = int((await reader.readline()).split()[1])
        await reader.read()
        return status
    finally:
        writer.close()


async def drive(
    port: int,
    path: str,
    tokens: list[tuple[str, str]],
    gpus: int,
    interval: float,
    seconds: float,
    first_seq: int,
) -> dict[str, Any]:
    """Every host posts once per interval, spread evenly over it; latencies of the replies."""
    latencies: list[float] = []
    errors: dict[str, int] = {}
    late = 0
    start = time.monotonic() + 0.5

    async def host(i: int, name: str, token: str) -> None:
        nonlocal late
        tick = 0
        while True:
            due = start + i * interval / len(tokens) + tick * interval
            if due - start >= seconds:
                return
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            elif delay < -interval / 10:
                late += 1
            data = body(name, first_seq + tick, gpus, tick)
            sent = time.perf_counter()
            try:
                status = await asyncio.wait_for(post(port, path, token, data), timeout=30)
                if status == 200:
                    latencies.append(time.perf_counter() - sent)
                else:
                    errors[str(status)] = errors.get(str(status), 0) + 1
            except (OSError, ValueError, IndexError, TimeoutError) as exc:
                errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
            tick += 1

    cpu = time.process_time()
    await asyncio.gather(*(host(i, name, token) for i, (name, token) in enumerate(tokens)))
    return {
        "latencies": latencies,
        "errors": errors,
        "late": late,
        # From the first scheduled send (the schedule starts half a second after the tasks)
        # to the last reply: the span the offered load covers.
        "elapsed": time.monotonic() - start,
        "load_cpu_s": time.process_time() - cpu,
    }


def load_process(args: tuple[Any, ...], out: multiprocessing.Queue) -> None:
    out.put(asyncio.run(drive(*args)))


def load(*args: Any) -> dict[str, Any]:
    """Run the load generator in its own process, so it does not share a GIL with anything."""
    context = multiprocessing.get_context("spawn")
    out = context.Queue()
    process = context.Process(target=load_process, args=(args, out))
    process.start()
    result = out.get()
    process.join()
    return result


def redis_cpu_seconds(url: str) -> float | None:
    """CPU seconds the Redis server has spent so far (its own INFO), or None without Redis."""
    if not url:
        return None
    import redis

    info = redis.Redis.from_url(url).info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def redis_reachable(url: str) -> bool:
    import redis

    try:
        return bool(redis.Redis.from_url(url, socket_timeout=1).ping())
    except redis.RedisError:
        return False


def measured(
    server: subprocess.Popen[bytes],
    admin_url: str,
    db_name: str,
    args: tuple[Any, ...],
    redis_url: str = "",
    parts: dict[str, subprocess.Popen[bytes]] | None = None,
) -> dict[str, Any]:
    """One load run, with the CPU time the server and its database backends spent during it.

    Backends are read before and after the run; the WSGI server keeps its connections open
    (``DB_CONN_MAX_AGE``), so those are the backends that served it. One that closed during
    the run (under ASGI, every one) is not counted: the number of those is reported.
    ``parts`` are further processes (with their children) whose CPU time is read the same
    way, by label, into ``parts_cpu_s``: the other replicas and nginx.
    """
    parts = parts or {}
    parts_before = {label: cpu_seconds(server_pids(process.pid)) for label, process in parts.items()}
    server_before = cpu_seconds(server_pids(server.pid))
    db_before = cpu_seconds(database_pids(admin_url, db_name))
    redis_before = redis_cpu_seconds(redis_url)
    run = load(*args)
    redis_after = redis_cpu_seconds(redis_url)
    server_after = cpu_seconds(server_pids(server.pid))
    db_after = cpu_seconds(database_pids(admin_url, db_name))
    run["parts_cpu_s"] = {
        label: cpu_spent(parts_before[label], cpu_seconds(server_pids(process.pid))) for label, process in parts.items()
    }
    run["server_cpu_s"] = cpu_spent(server_before, server_after)
    run["db_cpu_s"] = cpu_spent(db_before, db_after) if db_after else None
    run["db_backends_closed"] = len(db_before.keys() - db_after.keys())
    run["redis_cpu_s"] = redis_after - redis_before if redis_before is not None and redis_after is not None else None
    return run


def pct(values: list[float], q: int) -> float:
    """The q-th percentile (``chart_queries.percentile``) of seconds, in milliseconds."""
    return percentile(values, q) * 1000


def per_report(run: dict[str, Any], key: str) -> str:
    """CPU milliseconds per report handled, formatted; '-' where it could not be measured.

    Reports handled are those stored where the database counted them (a report whose
    client gave up waiting may still have been stored), else the replies received.
    """
    handled = run.get("stored_reports") or len(run["latencies"]) + sum(run["errors"].values())
    if run.get(key) is None or not handled:
        return "-"
    return f"{run[key] / handled * 1000:.2f}"


REPORT_PATH = "/api/agent/v1/report"
REPORT_UNIT = "gpufleet-reports@.service"


def port_wait(port: int, process: subprocess.Popen[bytes], log: Path, timeout_s: float = 60) -> None:
    """Until something accepts connections on ``port``; the log's tail if the process exits first."""
    deadline = time.monotonic() + timeout_s
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args!r} exited: {log.read_text()[-3000:]}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"nothing listens on {port}: {log.read_text()[-3000:]}") from None
            time.sleep(0.2)


def replica_start(port: int, env: dict[str, str], root: Path) -> subprocess.Popen[bytes]:
    """One report replica, as systemd runs ``gpufleet-reports@PORT`` (its ``ExecStart``, the environment file)."""
    from tests.support.deploy_site import unit_command

    command, environment = unit_command(REPORT_UNIT, port, env, root / "var")
    log = root / f"reports-{port}.log"
    with log.open("ab") as output:
        process = subprocess.Popen(
            command, cwd=ROOT, env=environment, stdout=output, stderr=output, start_new_session=True
        )
    port_wait(port, process, log)
    return process


def nginx_start(root: Path, listen: int, replicas: list[int]) -> subprocess.Popen[bytes]:
    """nginx from the shipped site, its report pool on ``replicas``; the config checked by ``nginx -t`` first."""
    from tests.support.deploy_site import GATEWAY_PORTS, PANEL_PORTS, nginx_binary, nginx_conf, site_render

    nginx = nginx_binary()
    if nginx is None:
        raise SystemExit("--nginx needs nginx (apt-get install nginx)")
    root.mkdir(parents=True, exist_ok=True)
    # The panel and gateway pools are not used here: ports where nothing listens.
    unused = {shipped: free_port() for shipped in (*PANEL_PORTS, *GATEWAY_PORTS)}
    site = root / "gpufleet.conf"
    site.write_text(site_render(unused, listen, reports=replicas))
    conf = root / "nginx.conf"
    conf.write_text(nginx_conf(root, site, connections=8192))
    checked = subprocess.run([nginx, "-t", "-c", str(conf)], capture_output=True, text=True)
    if checked.returncode:
        raise RuntimeError(checked.stderr)
    log = root / "nginx.out"
    with log.open("wb") as output:
        process = subprocess.Popen([nginx, "-c", str(conf), "-g", "daemon off;"], stdout=output, stderr=output)
    port_wait(listen, process, log)
    return process


def answered(access_log: Path, skip: int) -> tuple[dict[str, int], int]:
    """Reports answered 200 by each replica in nginx's access log past its first ``skip`` lines; the line count."""
    lines = access_log.read_text().splitlines()
    counts: dict[str, int] = {}
    for line in lines[skip:]:
        _method, path, status, tried = line.split(" ", 3)
        if path == REPORT_PATH and status == "200":
            replica = tried.split(", ")[-1]
            counts[replica] = counts.get(replica, 0) + 1
    return counts, len(lines)


def replicas_run(args: argparse.Namespace, url: str, tokens: list[tuple[str, str]], redis_url: str) -> None:
    """The same open-loop load through nginx onto 1, then ``args.replicas`` report replicas; one table."""
    import tempfile

    from django.db import connection

    from fleet.models import GpuSample
    from tests.support.deploy_site import DEPLOY, env_file

    if not redis_url:
        raise SystemExit("--nginx runs the replicas as deployed, with Redis: give a reachable --redis-url")
    ticks = int(args.seconds // args.interval) + 2
    results: list[tuple[int, dict[str, Any]]] = []
    with tempfile.TemporaryDirectory(prefix="bench-replicas-") as tmp:
        root = Path(tmp)
        (root / "var").mkdir()
        listen = free_port()
        env = {key: value for key, value in os.environ.items() if key not in {"DATABASE_URL", "REDIS_URL"}}
        env.update(env_file(DEPLOY / "gpufleet.env.example"))
        env.update(
            {
                "DATABASE_URL": url,
                "REDIS_URL": redis_url,
                "SECRET_KEY": "bench-replicas-" + "x" * 32,
                "ALLOWED_HOSTS": "127.0.0.1",
                "CSRF_TRUSTED_ORIGINS": f"http://127.0.0.1:{listen}",
                "PANEL_URL": f"http://127.0.0.1:{listen}",
                "STATIC_ROOT": str(root / "static"),
                "FLEET_VAR_DIR": str(root / "var"),
                "AGENT_WHEELHOUSE": str(root / "var" / "wheelhouse"),
                "GPUFLEET_REPORT_WORKERS": str(args.workers),
                "FLEET_INPROCESS_SCHEDULER": "0",
            }
        )
        ports = [free_port() for _ in range(args.replicas)]
        counts = sorted({1, args.replicas})
        # One nginx per layout, each on its own port: a round sends the load to one of them.
        listens = {count: listen if count == 1 else free_port() for count in counts}
        replicas: list[subprocess.Popen[bytes]] = []
        nginxes: dict[int, subprocess.Popen[bytes]] = {}
        seq = 1
        try:
            replicas = [replica_start(port, env, root) for port in ports]
            for count in counts:
                nginxes[count] = nginx_start(root / f"nginx-{count}", listens[count], ports[:count])
                # One interval of warm-up through this layout: GPUs registered, connections opened.
                load(listens[count], REPORT_PATH, tokens, args.gpus, args.interval, args.interval, seq)
                seq += 3
            with connection.cursor() as cursor:  # the statistics autovacuum keeps on a fleet in steady state
                cursor.execute("ANALYZE")
            connection.close()
            # Rounds alternate the layouts (1, N, 1, N, ...), so the machine's other load falls on both alike.
            for _round in range(args.rounds):
                for count in counts:
                    access_log = root / f"nginx-{count}" / "access.log"
                    _, skip = answered(access_log, 0)
                    before = GpuSample.objects.count()
                    others = zip(ports[1:count], replicas[1:count], strict=True)
                    parts = {f"127.0.0.1:{port}": replica for port, replica in others}
                    run = measured(
                        replicas[0],
                        args.database_url,
                        args.db_name,
                        (listens[count], REPORT_PATH, tokens, args.gpus, args.interval, args.seconds, seq),
                        redis_url=redis_url,
                        parts={**parts, "nginx": nginxes[count]},
                    )
                    seq += ticks
                    run["stored_reports"] = (GpuSample.objects.count() - before) / args.gpus
                    connection.close()
                    run["answered"], _ = answered(access_log, skip)
                    run["replica_cpu_s"] = {f"127.0.0.1:{ports[0]}": run["server_cpu_s"]} | {
                        label: run["parts_cpu_s"][label] for label in parts
                    }
                    run["server_cpu_s"] = sum(run["replica_cpu_s"].values())
                    run["nginx_cpu_s"] = run["parts_cpu_s"]["nginx"]
                    results.append((count, run))
        finally:
            for nginx in nginxes.values():
                stop(nginx)
            for replica in replicas:
                stop(replica)
    replicas_print(args, results)


def replicas_print(args: argparse.Namespace, results: list[tuple[int, dict[str, Any]]]) -> None:
    offered = args.hosts / args.interval
    print(
        f"report replicas behind nginx: {args.hosts} hosts x {args.gpus} GPUs every {args.interval:g} s "
        f"(offered {offered:,.1f} reports/s, {args.seconds:g} s), each replica {REPORT_UNIT} as shipped "
        f"(gunicorn {args.workers} gthread workers), nginx from the shipped site, PostgreSQL, Redis; "
        f"{os.cpu_count()} CPU cores shared by all of them and the load generator"
    )
    print(
        f"{'':36}{'reports/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}{'late':>6}"
        f"{'CPU ms/report: server':>23}{'nginx':>7}{'db':>6}{'redis':>6}{'load':>6}"
    )
    for count, run in results:
        rate = run["stored_reports"] / run["elapsed"]
        print(
            f"{f'{count} replica(s), stored':36}{rate:>10,.1f}{pct(run['latencies'], 50):>9.1f}"
            f"{pct(run['latencies'], 99):>9.1f}{sum(run['errors'].values()):>8}{run['late']:>6}"
            f"{per_report(run, 'server_cpu_s'):>23}{per_report(run, 'nginx_cpu_s'):>7}{per_report(run, 'db_cpu_s'):>6}"
            f"{per_report(run, 'redis_cpu_s'):>6}{per_report(run, 'load_cpu_s'):>6}"
        )
        for replica, cpu_s in run["replica_cpu_s"].items():
            handled = run["answered"].get(replica, 0)
            per = f"{cpu_s / handled * 1000:.2f}" if handled else "-"
            print(f"{f'  replica {replica}, answered':36}{handled / run['elapsed']:>10,.1f}{'':41}{per:>23}")
        if run["errors"]:
            print(f"  errors: {run['errors']}")
    for count, run in results:
        if count > 1:
            parts = [handled / run["elapsed"] for handled in run["answered"].values()]
            print(
                f"sum of parts, {count} replicas: answered {' + '.join(f'{rate:,.1f}' for rate in parts)} = "
                f"{sum(parts):,.1f} reports/s (stored {run['stored_reports'] / run['elapsed']:,.1f}, "
                f"offered {offered:,.1f})"
            )
    print("all rounds of a layout together (CPU ms over all its reports stored):")
    for count in sorted({count for count, _ in results}):
        runs = [run for each, run in results if each == count]
        stored = sum(run["stored_reports"] for run in runs)
        spent = {
            key: sum(run[key] for run in runs) if all(run[key] is not None for run in runs) else None
            for key in ("server_cpu_s", "nginx_cpu_s", "db_cpu_s", "redis_cpu_s", "load_cpu_s")
        }
        shown = ", ".join(
            f"{key.removesuffix('_cpu_s')} {value / stored * 1000:.2f}" for key, value in spent.items() if value
        )
        server = spent["server_cpu_s"] or 0.0
        print(
            f"  {count} replica(s), {len(runs)} round(s), {stored:,.0f} reports: CPU ms/report {shown}; "
            f"{stored / server if server else float('nan'):,.0f} reports/s per core of report-server CPU"
        )
    print(
        "CPU ms/report: CPU time in the window of the replicas (gunicorn arbiter and workers), nginx (master and "
        "worker), the database backends, the Redis server (its INFO) and the load generator, divided by the reports "
        "stored; a replica's: its CPU over the reports it answered 200 (nginx's access log)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hosts", type=int, default=1250)
    parser.add_argument("--gpus", type=int, default=8)
    parser.add_argument("--interval", type=float, default=5.0)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument(
        "--server",
        choices=sorted(SERVERS),
        default="wsgi",
        help="wsgi: gunicorn gthread workers x 4 threads; asgi: gunicorn with uvicorn workers",
    )
    parser.add_argument(
        "--database-url",
        default=os.environ.get("BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"),
        help="a PostgreSQL the bench may create and drop its scratch database on",
    )
    parser.add_argument(
        "--db-name",
        default=os.environ.get("BENCH_DB_NAME", DB_NAME),
        help="the scratch database's name, where several people bench on one server",
    )
    parser.add_argument(
        "--redis-url",
        default=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/15"),
        help="the Redis the panel's channel layer uses, as in production ('' for the in-process layer)",
    )
    parser.add_argument(
        "--replicas",
        type=int,
        default=2,
        help="with --nginx: report replicas measured after one, under the same load",
    )
    parser.add_argument(
        "--nginx",
        action="store_true",
        help="report replicas as deploy/ runs them (gpufleet-reports@ units) behind nginx from deploy/nginx, "
        "measured with one replica and then with --replicas",
    )
    parser.add_argument("--rounds", type=int, default=2, help="with --nginx: measurements of each layout, alternating")
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    if args.replicas < 1:
        parser.error("--replicas must be at least 1")
    redis_url = args.redis_url
    if redis_url and not redis_reachable(redis_url):
        print(f"Redis at {redis_url} not reachable: the panel runs with the in-process channel layer")
        redis_url = ""
    db_name = args.db_name
    url = database_url(args.database_url, db_name)
    admin_sql(args.database_url, f"DROP DATABASE IF EXISTS {db_name} WITH (FORCE)")
    admin_sql(args.database_url, f"CREATE DATABASE {db_name}")
    if args.nginx:
        try:
            replicas_run(args, url, prepare(url, args.hosts), redis_url)
        finally:
            admin_sql(args.database_url, f"DROP DATABASE IF EXISTS {db_name} WITH (FORCE)")
        return
    servers: list[subprocess.Popen[bytes]] = []
    try:
        tokens = prepare(url, args.hosts)
        from django.db import connection

        from fleet.models import GpuSample
        from fleet.telemetry.rollups import minutes_rollup

        port = free_port()
        panel_app, trivial, worker_args, conn_max_age = SERVERS[args.server]
        servers.append(serve(trivial, port, args.workers, url, worker_args, conn_max_age))
        baseline = measured(
            servers[-1],
            args.database_url,
            db_name,
            (port, "/", tokens, args.gpus, args.interval, args.seconds / 2, 1),
        )
        stop(servers.pop())

        port = free_port()
        servers.append(serve(panel_app, port, args.workers, url, worker_args, conn_max_age, redis_url))
        load(
            port,
            "/api/agent/v1/report",
            tokens,
            args.gpus,
            args.interval,
            args.interval,
            1,
        )  # GPUs registered
        with connection.cursor() as cursor:  # the statistics autovacuum keeps on a fleet in steady state
            cursor.execute("ANALYZE")
        before = GpuSample.objects.count()
        began = time.time()
        panel = measured(
            servers[-1],
            args.database_url,
            db_name,
            redis_url=redis_url,
            args=(
                port,
                "/api/agent/v1/report",
                tokens,
                args.gpus,
                args.interval,
                args.seconds,
                1000,
            ),
        )
        stored = GpuSample.objects.count() - before
        panel["stored_reports"] = stored / args.gpus
        connection.close()

        from datetime import UTC, datetime, timedelta

        minute = datetime.fromtimestamp(began, tz=UTC).replace(second=0, microsecond=0) + timedelta(minutes=1)
        rollup_started = time.perf_counter()
        minutes_rollup(start=minute, end=minute + timedelta(minutes=1))
        rollup_s = time.perf_counter() - rollup_started
        rollup_rows = GpuSample.objects.filter(at__gte=minute, at__lt=minute + timedelta(minutes=1)).count()
        connection.close()
    finally:
        for server in servers:
            stop(server)
        admin_sql(args.database_url, f"DROP DATABASE IF EXISTS {db_name} WITH (FORCE)")

    offered = args.hosts * args.gpus / args.interval
    print(
        f"ingest: {args.hosts} hosts x {args.gpus} GPUs every {args.interval:g} s "
        f"(offered {offered:,.0f} GPU samples/s), gunicorn {args.workers} {args.server} workers, PostgreSQL, "
        f"{'Redis channel layer' if redis_url else 'in-process channel layer'}, "
        f"{os.cpu_count()} CPU cores shared by server, database and load generator"
    )
    print(
        f"{'':34}{'reports/s':>10}{'GPU samples/s':>15}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}{'late':>6}"
        f"{'CPU ms/report: server':>23}{'db':>6}{'redis':>6}{'load':>6}"
    )
    for label, run, samples in (
        ("baseline (trivial endpoint)", baseline, None),
        ("panel /api/agent/v1/report", panel, stored),
    ):
        rate = len(run["latencies"]) / run["elapsed"]
        shown = f"{samples / run['elapsed']:>15,.0f}" if samples is not None else f"{'-':>15}"
        print(
            f"{label:34}{rate:>10,.1f}{shown}{pct(run['latencies'], 50):>9.1f}{pct(run['latencies'], 99):>9.1f}"
            f"{sum(run['errors'].values()):>8}{run['late']:>6}{per_report(run, 'server_cpu_s'):>23}"
            f"{per_report(run, 'db_cpu_s'):>6}{per_report(run, 'redis_cpu_s'):>6}{per_report(run, 'load_cpu_s'):>6}"
        )
    print(
        f"{'ratio panel/baseline':34}{'':>10}{'':>15}"
        f"{pct(panel['latencies'], 50) / pct(baseline['latencies'], 50):>9.2f}"
        f"{pct(panel['latencies'], 99) / pct(baseline['latencies'], 99):>9.2f}"
    )
    if panel["db_backends_closed"]:
        print(f"database backends closed during the run, not counted: {panel['db_backends_closed']}")
    if panel["errors"] or baseline["errors"]:
        print(f"errors: panel {panel['errors']}, baseline {baseline['errors']}")
    print(f"GPU samples stored in the database during the window: {stored:,}")
    print(
        "CPU ms/report: CPU time of the server processes, of the database backends serving them, of the Redis "
        "server (its INFO) and of the load generator in the window, divided by the reports stored (panel) or "
        "answered (baseline)"
    )
    print(f"minute rollup of {rollup_rows:,} samples: {rollup_s * 1000:.0f} ms")


if __name__ == "__main__":
    main()
