"""What the gateway adds to a request, against going direct and against the LiteLLM proxy.

Open-loop load: requests leave on a fixed schedule whatever the server does, and each
latency is measured from its scheduled send time, so a stalled server shows up as
latency instead of quietly slowing the load down (no coordinated omission). The
upstream is a stub (tests/support/openai_stub.py) that answers in microseconds, so the
figures are the proxies' own cost. Everything runs on loopback in one go:

1. direct to the stub, through the gateway, and through LiteLLM at 50 req/s;
2. direct and through the gateway at 500 req/s;
3. the highest rate each sustains with p99 < 50 ms and no errors (rising steps).

Added latency = the proxy's percentile minus the direct percentile at the same rate in
the same run. Server CPU = CPU time the server's processes used (the gateway's with its
database worker, the stub's alone when direct) over the requests sent, which holds on a
busy machine where latencies do not. LiteLLM runs only inside a network namespace that
has nothing but loopback (``make bench-gateway`` makes one), because it reaches for the
internet.

    python bench/gateway_latency.py [--seconds 8] [--no-litellm]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

sys.path.insert(0, str(Path(__file__).resolve().parent))

from ingest import cpu_seconds, cpu_spent, server_pids  # noqa: E402

from tests.support.vllm_server import free_port  # noqa: E402

MODEL = "stub-model"
PR_SET_TIMERSLACK = 29
# Port -> process id of the server behind it, for the CPU each request costs it.
SERVERS: dict[int, int] = {}
SLO_P99_MS = 50.0
LITELLM_ENV = {
    "LITELLM_OFFLINE_MODE": "true",
    "LITELLM_LOCAL_MODEL_COST_MAP": "True",
    "LITELLM_TELEMETRY_DISABLED": "true",
    "LITELLM_LOG": "ERROR",
}
# No database: the master key is the proxy's only credential.
LITELLM_KEY = f"sk-bench-{secrets.token_hex(24)}"
BODY = json.dumps(
    {"model": MODEL, "messages": [{"role": "user", "content": "How many GPUs idle tonight?"}], "max_tokens": 16}
).encode()


T = TypeVar("T")


@dataclass
class Result:
    target: str
    rate: float
    sent: int
    errors: int
    p50_ms: float
    p99_ms: float
    achieved: float
    late_p99_ms: float = 0.0
    cpu_ms: float | None = None

    @property
    def ok(self) -> bool:
        return self.errors == 0 and self.p99_ms < SLO_P99_MS and self.achieved >= 0.95 * self.rate


Measured = tuple[dict[str, Result], dict[str, Result], dict[str, Result]]


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


class Client:
    """Keep-alive HTTP/1.1 connections, one request per connection at a time: a lean load generator."""

    def __init__(self, port: int, path: bytes, token: str) -> None:
        self.port = port
        self.request = (
            b"POST " + path + b" HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n"
            b"authorization: Bearer " + token.encode() + b"\r\ncontent-length: " + str(len(BODY)).encode() + b"\r\n\r\n"
        ) + BODY
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    async def send(self) -> bool:
        while self.idle:
            reader, writer = self.idle.pop()
            if not reader.at_eof() and not writer.is_closing():
                break
            # The server closed it while idle (its keep-alive timeout), as any client sees happen.
            writer.close()
        else:
            reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        try:
            writer.write(self.request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            chunked = False
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                name = name.strip().lower()
                if name == b"content-length":
                    length = int(value)
                elif name == b"transfer-encoding" and b"chunked" in value.lower():
                    chunked = True
            if chunked:
                while True:
                    size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
                    await reader.readexactly(size + 2)
                    if size == 0:
                        break
            else:
                await reader.readexactly(length)
        except (OSError, asyncio.IncompleteReadError):
            writer.close()
            return False
        self.idle.append((reader, writer))
        return head.startswith(b"HTTP/1.1 200")

    def close(self) -> None:
        for _reader, writer in self.idle:
            writer.close()
        self.idle.clear()


def _fine_timer_slack() -> None:
    """Let this thread's sleeps end within microseconds of their deadline (Linux allows 50 us late by default)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_TIMERSLACK, 1, 0, 0, 0)


async def open_loop(client: Client, rate: float, seconds: float) -> tuple[list[float], int, float, float]:
    """Send ``rate`` requests a second for ``seconds``; latency counts from each scheduled time.

    The schedule is kept by a thread sleeping with the kernel's nanosecond clock, which hands
    each request to the event loop at its time. The event loop's own timers cannot do it:
    uvloop's tick in whole milliseconds and fire up to a millisecond early, which sent
    requests before their scheduled time and took up to a millisecond off their measured
    latency, a different amount in every run. Returns the latencies (ms), the errors, the
    achieved rate and the 99th percentile of how late a request left (ms), the generator's
    own error, which is in every latency of both paths alike.
    """
    clock = time.perf_counter
    loop = asyncio.get_running_loop()
    latencies: list[float] = []
    late: list[float] = []
    errors = 0
    count = int(rate * seconds)
    tasks: list[asyncio.Future[None]] = []

    async def one(scheduled: float) -> None:
        nonlocal errors
        late.append((clock() - scheduled) * 1000)
        try:
            ok = await asyncio.wait_for(client.send(), 10)
        except (TimeoutError, OSError):
            ok = False
        if ok:
            latencies.append((clock() - scheduled) * 1000)
        else:
            errors += 1

    def launch(scheduled: float) -> None:
        tasks.append(asyncio.ensure_future(one(scheduled)))

    def pace(start: float) -> None:
        _fine_timer_slack()
        for index in range(count):
            scheduled = start + index / rate
            delay = scheduled - clock()
            if delay > 0:
                time.sleep(delay)
            loop.call_soon_threadsafe(launch, scheduled)

    start = clock() + 0.05
    pacer = threading.Thread(target=pace, args=(start,), name="pacer", daemon=True)
    pacer.start()
    await asyncio.to_thread(pacer.join)
    await asyncio.sleep(0)
    await asyncio.gather(*tasks)
    elapsed = clock() - start
    return latencies, errors, len(latencies) / elapsed if elapsed > 0 else 0.0, percentile(late, 0.99) if late else 0.0


async def measure(target: str, port: int, path: bytes, token: str, rate: float, seconds: float) -> Result:
    client = Client(port, path, token)
    await open_loop(client, min(rate, 200), 1.0)  # warm connections and caches
    server = SERVERS.get(port)
    cpu_before = cpu_seconds(server_pids(server)) if server else {}
    latencies, errors, achieved, late_p99 = await open_loop(client, rate, seconds)
    cpu_ms = None
    if server:
        spent = cpu_spent(cpu_before, cpu_seconds(server_pids(server)))
        cpu_ms = spent * 1000 / max(1, len(latencies) + errors)
    client.close()
    if not latencies:
        return Result(target, rate, errors, errors, float("inf"), float("inf"), 0.0)
    return Result(
        target,
        rate,
        len(latencies) + errors,
        errors,
        percentile(latencies, 0.50),
        percentile(latencies, 0.99),
        achieved,
        late_p99,
        cpu_ms,
    )


def wait_http(url: str, timeout: float, headers: dict[str, str] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=2):
                return
        except OSError:
            time.sleep(0.3)
    raise RuntimeError(f"{url} did not answer within {timeout:.0f} s")


def wait_port(port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listens on port {port} after {timeout:.0f} s")


@contextmanager
def process(command: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        proc = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield proc
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def prepare_database(env: dict[str, str], stub_port: int) -> str:
    """Migrate a fresh SQLite panel database and add a team key, a pool and a ready stub instance."""
    subprocess.run([sys.executable, "manage.py", "migrate", "--noinput", "-v", "0"], cwd=REPO, env=env, check=True)
    script = f"""
from fleet.models import Instance, ModelProfile, Pool, Team
from fleet.decide.services import api_key_create
profile = ModelProfile.objects.create(name="bench", model="bench/stub", served_name="{MODEL}", max_model_len=4096)
pool = Pool.objects.create(name="bench-l", tier="L", isolation="shared", model_profile=profile)
Instance.objects.create(pool=pool, actual_state="ready", endpoint="http://127.0.0.1:{stub_port}")
print(api_key_create(team=Team.objects.create(name="bench", slug="bench"), name="bench")[1])
"""
    done = subprocess.run(
        [sys.executable, "manage.py", "shell", "-c", script], cwd=REPO, env=env, check=True, capture_output=True
    )
    return done.stdout.decode().strip().splitlines()[-1]


def loopback_only() -> bool:
    return [name for _index, name in socket.if_nameindex()] == ["lo"]


def litellm_config(path: Path, stub_port: int) -> None:
    path.write_text(
        "model_list:\n"
        f"  - model_name: {MODEL}\n"
        "    litellm_params:\n"
        f"      model: openai/{MODEL}\n"
        f"      api_base: http://127.0.0.1:{stub_port}/v1\n"
        "      api_key: unused\n"
        "litellm_settings:\n"
        "  telemetry: false\n"
    )


async def sustained(target: str, port: int, path: bytes, token: str, rates: list[float], seconds: float) -> Result:
    """The last of the rising ``rates`` that met the SLO; stops at the first that does not."""
    best = Result(target, 0, 0, 0, 0, 0, 0)
    for rate in rates:
        result = await measure(target, port, path, token, rate, seconds)
        print(
            f"  {target:8} {rate:6.0f}/s  p50 {result.p50_ms:7.2f} ms  p99 {result.p99_ms:7.2f} ms  "
            f"errors {result.errors}  CPU {result.cpu_ms or 0:.3f} ms/request  {'ok' if result.ok else 'over'}",
            flush=True,
        )
        if not result.ok:
            break
        best = result
    return best


def row(name: str, result: Result, base: Result) -> str:
    return (
        f"| {name} | {result.rate:.0f} | {result.p50_ms:.2f} | {result.p99_ms:.2f} | "
        f"{result.p50_ms - base.p50_ms:+.2f} | {result.p99_ms - base.p99_ms:+.2f} | {result.errors} | "
        f"{result.late_p99_ms:.3f} | {'' if result.cpu_ms is None else f'{result.cpu_ms:.3f}'} |"
    )


CHAT = b"/v1/chat/completions"


async def measure_gateway(args: argparse.Namespace, ports: dict[str, int], token: str) -> Measured:
    """Direct and gateway, while LiteLLM is not running (its idle work would tax both)."""
    seconds, steps = args.seconds, args.step_seconds
    targets = [("direct", ports["stub"]), ("gateway", ports["gateway"])]
    at50 = {name: await measure(name, port, CHAT, token, 50, seconds) for name, port in targets}
    at500 = {name: await measure(name, port, CHAT, token, 500, seconds) for name, port in targets}
    print("Highest rate with p99 < 50 ms and no errors (rising steps):", flush=True)
    best = {
        "direct": await sustained(
            "direct", ports["stub"], CHAT, token, [500, 1000, 1500, 2000, 3000, 4000, 6000], steps
        ),
        "gateway": await sustained(
            "gateway", ports["gateway"], CHAT, token, [250, 500, 750, 1000, 1500, 2000, 2500, 3000, 4000], steps
        ),
    }
    return at50, at500, best


async def measure_litellm(args: argparse.Namespace, ports: dict[str, int], token: str, measured: Measured) -> None:
    """LiteLLM at 50 req/s against a direct baseline taken again now, then its own rate search."""
    at50, _at500, best = measured
    at50["direct (LiteLLM phase)"] = await measure("direct", ports["stub"], CHAT, token, 50, args.seconds)
    at50["litellm"] = await measure("litellm", ports["litellm"], CHAT, LITELLM_KEY, 50, args.seconds)
    rates = [10, 25, 50, 75, 100, 125, 150, 200]
    best["litellm"] = await sustained("litellm", ports["litellm"], CHAT, LITELLM_KEY, rates, args.step_seconds)


def report(measured: Measured, litellm: bool) -> None:
    at50, at500, best = measured
    print(
        "\n| path | rate (req/s) | p50 ms | p99 ms | added p50 ms | added p99 ms | errors | sent late, p99 ms "
        "| server CPU ms/request |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, result in at50.items():
        base = at50["direct (LiteLLM phase)"] if name == "litellm" else at50["direct"]
        print(row(name, result, base))
    for name, result in at500.items():
        print(row(name, result, at500["direct"]))
    print("\n| path | highest rate with p99 < 50 ms (req/s) |")
    print("| --- | --- |")
    for name, result in best.items():
        print(f"| {name} | {result.rate:.0f} |")
    if litellm and best["litellm"].rate:
        print(f"\ngateway / LiteLLM sustainable rate: {best['gateway'].rate / best['litellm'].rate:.1f}x")
        added_gw = at50["gateway"].p50_ms - at50["direct"].p50_ms
        added_ll = at50["litellm"].p50_ms - at50["direct (LiteLLM phase)"].p50_ms
        if added_gw > 0:
            print(f"LiteLLM / gateway added p50 latency at 50 req/s: {added_ll / added_gw:.0f}x")
    elif not litellm:
        print("\nLiteLLM not measured (see above for why).")


def run_loop(main: Coroutine[Any, Any, T]) -> T:
    """uvloop where installed: the load generator must not be the bottleneck it measures."""
    try:
        from uvloop import run as runner
    except ImportError:
        runner = asyncio.run
    return runner(main)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8.0, help="measurement length at 50 and 500 req/s")
    parser.add_argument("--step-seconds", type=float, default=4.0, help="length of each step of the rate search")
    parser.add_argument("--no-litellm", action="store_true")
    parser.add_argument(
        "--litellm-python", default=os.environ.get("LITELLM_PYTHON", str(REPO / ".venv-litellm" / "bin" / "python"))
    )
    args = parser.parse_args()
    # The pacing thread must get the interpreter at once when a request is due, not after
    # the event loop's thread has held it for Python's default 5 ms.
    sys.setswitchinterval(0.0001)

    litellm = not args.no_litellm
    if litellm and not Path(args.litellm_python).exists():
        print(f"LiteLLM skipped: no {args.litellm_python} (make bench-litellm-venv)")
        litellm = False
    if litellm and not loopback_only():
        print("LiteLLM skipped: it must run in a network namespace with only loopback (make bench-gateway)")
        litellm = False

    ports = {"stub": free_port(), "gateway": free_port(), "litellm": free_port()}
    with tempfile.TemporaryDirectory(prefix="gateway-bench-") as tmp:
        work = Path(tmp)
        env = {key: value for key, value in os.environ.items() if key not in {"DATABASE_URL", "REDIS_URL"}}
        env.update(
            {
                "FLEET_VAR_DIR": str(work),
                "DJANGO_SETTINGS_MODULE": "fleet.project.settings",
                "LOG_LEVEL": "WARNING",
                "DEBUG": "0",
            }
        )
        stub_cmd = [sys.executable, str(REPO / "tests" / "support" / "openai_stub.py"), "--port", str(ports["stub"])]
        with process(stub_cmd, env, work / "stub.log") as stub:
            SERVERS[ports["stub"]] = stub.pid
            wait_port(ports["stub"], 10)
            token = prepare_database(env, ports["stub"])
            gateway_cmd = [sys.executable, "-m", "fleet.gateway", "--port", str(ports["gateway"])]
            with process(gateway_cmd, {**env, "PYTHONPATH": str(REPO)}, work / "gateway.log") as gateway:
                SERVERS[ports["gateway"]] = gateway.pid
                wait_http(f"http://127.0.0.1:{ports['gateway']}/v1/models", 30, {"authorization": f"Bearer {token}"})
                measured = run_loop(measure_gateway(args, ports, token))
                if litellm:
                    litellm_config(work / "litellm.yaml", ports["stub"])
                    command = [
                        args.litellm_python,
                        "-m",
                        "litellm.proxy.proxy_cli",
                        "--config",
                        str(work / "litellm.yaml"),
                        "--host",
                        "127.0.0.1",
                        "--port",
                        str(ports["litellm"]),
                    ]
                    litellm_env = {**env, **LITELLM_ENV, "LITELLM_MASTER_KEY": LITELLM_KEY}
                    with process(command, litellm_env, work / "litellm.log") as proxy:
                        SERVERS[ports["litellm"]] = proxy.pid
                        try:
                            wait_http(f"http://127.0.0.1:{ports['litellm']}/health/liveliness", 180)
                        except RuntimeError:
                            print((work / "litellm.log").read_text()[-3000:])
                            raise
                        run_loop(measure_litellm(args, ports, token, measured))
        report(measured, litellm)


if __name__ == "__main__":
    main()
