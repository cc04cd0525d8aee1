"""What the agent costs its host: CPU and memory at its reporting interval, and NVML read cost.

Runs the real agent loop (real NVML where a driver is present, real HTTP to a panel stub
on loopback, no containers) for a number of ticks, and a baseline in the same run: a
process that imports the same modules and sleeps on the same schedule. Prints a table
and the ratios agent/baseline.

    python bench/agent_overhead.py [--ticks 12] [--interval 5]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import resource
import statistics
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from tempfile import TemporaryDirectory

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import gzip

import httpx

from agents.agent import Agent, AgentConfig, AgentState
from agents.nvml import NvmlBackend
from agents.runtime import ContainerState


class NoContainers:
    """A host running no managed containers: the agent's cost is sensing and reporting."""

    def list_managed(self) -> list[ContainerState]:
        return []


class PanelStub(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if self.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        batch = json.loads(body)
        reply = {"ack_seq": batch["reports"][-1]["seq"], "desired": [], "report_interval_s": 5.0}
        data = json.dumps(reply).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        return


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run_agent(ticks: int, interval: float, out: multiprocessing.Queue) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), PanelStub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    backend = NvmlBackend()
    with TemporaryDirectory() as state_dir:
        config = AgentConfig(
            panel_url=f"http://127.0.0.1:{server.server_port}",
            state_dir=Path(state_dir),
            node_name="bench",
            interval_s=interval,
        )
        state = AgentState(Path(state_dir) / "state.json")
        state.node_name, state.node_token = "bench", "gfn_bench"
        agent = Agent(config, gpus=backend, runtime=NoContainers(), http=httpx.Client(), state=state)
        reading = backend.read()
        read_ms = []
        for _ in range(20):
            started = time.perf_counter()
            backend.read()
            read_ms.append((time.perf_counter() - started) * 1000)
        cpu0, wall0 = cpu_s(), time.monotonic()
        tick_ms = []
        for _ in range(ticks):
            started = time.perf_counter()
            agent.tick()
            tick_ms.append((time.perf_counter() - started) * 1000)
            time.sleep(max(0.0, interval - tick_ms[-1] / 1000))
        cpu, wall = cpu_s() - cpu0, time.monotonic() - wall0
    server.shutdown()
    out.put(
        dict(
            gpus=len(reading.gpus),
            nvml=reading.available,
            nvml_reason=reading.unavailable_reason,
            read_ms=statistics.median(read_ms),
            tick_ms=statistics.median(tick_ms),
            cpu_pct=100 * cpu / wall,
            rss_mib=rss_mib(),
            buffered=len(agent.buffer),
        )
    )


def run_baseline(ticks: int, interval: float, out: multiprocessing.Queue) -> None:
    cpu0, wall0 = cpu_s(), time.monotonic()
    for _ in range(ticks):
        time.sleep(interval)
    cpu, wall = cpu_s() - cpu0, time.monotonic() - wall0
    out.put(dict(cpu_pct=100 * cpu / wall, rss_mib=rss_mib()))


def measure(target, ticks: int, interval: float) -> dict:  # type: ignore[no-untyped-def]
    out: multiprocessing.Queue = multiprocessing.Queue()
    process = multiprocessing.get_context("fork").Process(target=target, args=(ticks, interval, out))
    process.start()
    result = out.get(timeout=ticks * interval + 120)
    process.join()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ticks", type=int, default=12)
    parser.add_argument("--interval", type=float, default=5.0)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    baseline = measure(run_baseline, args.ticks, args.interval)
    agent = measure(run_agent, args.ticks, args.interval)
    gpus = max(agent["gpus"], 1)
    print(
        f"agent overhead, {args.ticks} ticks at {args.interval:g} s; NVML: "
        f"{str(agent['gpus']) + ' GPU(s)' if agent['nvml'] else 'unavailable (' + str(agent['nvml_reason']) + ')'}"
    )
    print(f"{'':28}{'agent':>12}{'baseline':>12}{'ratio':>10}")
    print(
        f"{'CPU (% of one core)':28}{agent['cpu_pct']:>12.3f}{baseline['cpu_pct']:>12.3f}"
        f"{agent['cpu_pct'] / max(baseline['cpu_pct'], 1e-6):>10.1f}"
    )
    print(
        f"{'peak RSS (MiB)':28}{agent['rss_mib']:>12.1f}{baseline['rss_mib']:>12.1f}"
        f"{agent['rss_mib'] / baseline['rss_mib']:>10.2f}"
    )
    print(f"{'tick, median (ms)':28}{agent['tick_ms']:>12.2f}")
    print(f"{'NVML full read, median (ms)':28}{agent['read_ms']:>12.2f}")
    print(f"{'NVML full read per GPU (ms)':28}{agent['read_ms'] / gpus:>12.2f}")
    print(f"{'reports left unacknowledged':28}{agent['buffered']:>12d}")
    if args.json:
        args.json.write_text(
            json.dumps({"agent": agent, "baseline": baseline, **vars(args)} | {"json": None}, default=str)
        )


if __name__ == "__main__":
    main()
