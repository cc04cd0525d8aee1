"""Cores a fleet needs, from CPU milliseconds per unit of work that the benchmarks measured.

Reports: every host sends one report (all its GPUs) every interval, so a fleet of H hosts
offers H / interval reports a second; each part (report replicas, nginx, PostgreSQL,
Redis) needs rate x its CPU ms per report / 1000 cores when fully busy, and that over the
utilization you plan for (the headroom) when sized. The gateway likewise from its CPU ms
per request and a request rate. The CPU figures come from ``make bench-replicas``
(``bench/ingest.py --nginx``) and ``make bench-gateway`` (``bench/gateway_latency.py``);
docs/capacity.md quotes both and this script's output.

    python bench/capacity.py --server-ms 3.3 --db-ms 0.8 --redis-ms 0.1 --nginx-ms 0.1 \\
        --gateway-ms 0.36 [--hosts 10000 --gpus 8 --interval 5 --gateway-rps 1000 --utilization 0.5]
"""

from __future__ import annotations

import argparse
import math


def cores(rate: float, cpu_ms: float, utilization: float) -> float:
    """Cores that serve ``rate`` units a second costing ``cpu_ms`` CPU each, kept at most ``utilization`` busy."""
    if rate < 0 or cpu_ms < 0 or not 0 < utilization <= 1:
        raise ValueError("rate and CPU ms must be >= 0 and utilization in (0, 1]")
    return rate * cpu_ms / 1000 / utilization


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hosts", type=int, default=10_000)
    parser.add_argument("--gpus", type=int, default=8, help="GPUs per host: samples in each report")
    parser.add_argument("--interval", type=float, default=5.0, help="seconds between a host's reports")
    parser.add_argument("--server-ms", type=float, required=True, help="report replicas' CPU ms per report")
    parser.add_argument("--nginx-ms", type=float, required=True, help="nginx's CPU ms per report")
    parser.add_argument("--db-ms", type=float, required=True, help="PostgreSQL's CPU ms per report")
    parser.add_argument("--redis-ms", type=float, required=True, help="Redis's CPU ms per report")
    parser.add_argument("--gateway-ms", type=float, required=True, help="gateway CPU ms per request")
    parser.add_argument("--gateway-rps", type=float, default=1000.0, help="gateway requests a second to size for")
    parser.add_argument("--utilization", type=float, default=0.5, help="the most busy each part may be (headroom)")
    args = parser.parse_args()
    if args.hosts < 1 or args.gpus < 1 or args.interval <= 0:
        parser.error("hosts and GPUs must be at least 1 and the interval above 0")
    if not 0 < args.utilization <= 1:
        parser.error("--utilization must be in (0, 1]")

    reports = args.hosts / args.interval
    print(
        f"{args.hosts:,} hosts x {args.gpus} GPUs every {args.interval:g} s: {reports:,.0f} reports/s "
        f"({reports * args.gpus:,.0f} GPU samples/s), each part at most {args.utilization:.0%} busy"
    )
    print(f"{'part':16}{'CPU ms/unit':>12}{'units/s per core':>18}{'cores at 100%':>15}{'cores sized':>13}{'whole':>7}")
    rows = [
        ("report replicas", args.server_ms, reports),
        ("nginx", args.nginx_ms, reports),
        ("PostgreSQL", args.db_ms, reports),
        ("Redis", args.redis_ms, reports),
        ("gateway", args.gateway_ms, args.gateway_rps),
    ]
    for name, cpu_ms, rate in rows:
        per_core = 1000 / cpu_ms if cpu_ms else float("inf")
        busy = cores(rate, cpu_ms, 1.0)
        sized = cores(rate, cpu_ms, args.utilization)
        print(f"{name:16}{cpu_ms:>12.2f}{per_core:>18,.0f}{busy:>15.2f}{sized:>13.2f}{math.ceil(sized):>7}")
    total = sum(cores(rate, cpu_ms, args.utilization) for _name, cpu_ms, rate in rows[:4])
    print(f"report path in all (replicas, nginx, PostgreSQL, Redis), sized: {total:.1f} cores")
    gateway = cores(args.gateway_rps, args.gateway_ms, args.utilization)
    print(f"gateway at {args.gateway_rps:,.0f} requests/s, sized: {gateway:.2f} cores")


if __name__ == "__main__":
    main()
