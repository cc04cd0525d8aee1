"""Record real NVML readings on a GPU host, for replay through ``convert`` in CI.

Usage::

    python -m agents.record_nvml --out DIR --label idle
    python -m agents.record_nvml --out DIR --label load --load-gpu 0 --seconds 30

Each run writes one JSON document holding the raw NVML data (``collect_raw``), the
converted reading, samples taken over ``--seconds`` (under a torch matmul load on
``--load-gpu`` when the label is ``load``), and ``read5_ms``: the mean cost of
reading five fields (utilisation, memory, power, temperature, SM clock) over
``--read5-iterations`` reads, to size the agent's polling budget. It always writes
a document, even when NVML or the load fails, so a failed run still says why.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.metadata
import json
import multiprocessing
import os
import queue
import re
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from multiprocessing.synchronize import Event
from pathlib import Path
from typing import Any

import pynvml

from agents.nvml import collect_raw, convert, error_text

FORMAT = "gpu-fleet/nvml-recording"
FORMAT_VERSION = 1
MATMUL_SIZE = 8192
LOAD_START_TIMEOUT_S = 120.0
EXIT_OK, EXIT_LOAD_FAILED, EXIT_NO_NVML = 0, 1, 2

_CALL_ERRORS = (pynvml.NVMLError, pynvml.NVMLLibraryMismatchError)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options; ``--label load`` is what switches the GPU load on."""
    parser = argparse.ArgumentParser(prog="python -m agents.record_nvml", description=__doc__)
    parser.add_argument("--out", type=Path, required=True, help="directory for the JSON file")
    parser.add_argument("--label", choices=("idle", "load"), required=True)
    parser.add_argument("--load-gpu", type=int, default=0, help="NVML index of the GPU to load and to time reads on")
    parser.add_argument("--seconds", type=float, default=20.0, help="how long to sample")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between samples")
    parser.add_argument("--read5-iterations", type=int, default=1000)
    return parser.parse_args(argv)


def _read5_calls(handle: Any) -> dict[str, Callable[[], Any]]:
    """The five queries a lean poller would make per GPU."""
    return {
        "utilization": lambda: pynvml.nvmlDeviceGetUtilizationRates(handle),
        "memory": lambda: pynvml.nvmlDeviceGetMemoryInfo(handle, version=pynvml.nvmlMemory_v2),
        "power": lambda: pynvml.nvmlDeviceGetPowerUsage(handle),
        "temperature": lambda: pynvml.nvmlDeviceGetTemperature(handle, pynvml.NVML_TEMPERATURE_GPU),
        "sm_clock": lambda: pynvml.nvmlDeviceGetClockInfo(handle, pynvml.NVML_CLOCK_SM),
    }


def time_read5(handle: Any, iterations: int) -> dict[str, Any]:
    """Time reading the five fields; a failing field is noted, not fatal, and still timed."""
    calls = _read5_calls(handle)
    failures: dict[str, str] = {}
    durations_ms = []
    for _ in range(iterations):
        start = time.perf_counter()
        for name, call in calls.items():
            try:
                call()
            except _CALL_ERRORS as exc:
                failures[name] = error_text(exc)
        durations_ms.append((time.perf_counter() - start) * 1000)
    return {
        "read5_ms": statistics.fmean(durations_ms) if durations_ms else None,
        "read5_p50_ms": statistics.median(durations_ms) if durations_ms else None,
        "read5_max_ms": max(durations_ms, default=None),
        "read5_iterations": iterations,
        "read5_failures": failures,
    }


def _sample() -> dict[str, Any]:
    raw = collect_raw()
    return {"raw": raw, "reading": dataclasses.asdict(convert(raw))}


def take_samples(seconds: float, interval: float) -> list[dict[str, Any]]:
    """At least one sample, then one per ``interval`` until ``seconds`` have passed."""
    samples = []
    deadline = time.monotonic() + seconds
    while True:
        samples.append(_sample())
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return samples
        time.sleep(min(interval, remaining))


def burn(gpu_uuid: str, max_seconds: float, ready: Event, stop: Event, results: Any) -> None:
    """Child process: bf16 matmuls on one GPU until told to stop; reports TFLOP/s.

    Runs in its own process so CUDA never shares the recorder's interpreter, and
    selects the GPU by UUID so CUDA's device order cannot pick a different one than
    NVML's index named. Any failure (no torch, no CUDA) is reported, not raised, and
    leaves ``ready`` unset so the parent does not sample a load that never ran.
    """
    os.environ["CUDA_VISIBLE_DEVICES"] = gpu_uuid
    try:
        import torch

        a = torch.randn(MATMUL_SIZE, MATMUL_SIZE, device="cuda", dtype=torch.bfloat16)
        b = torch.randn_like(a)
        c = torch.matmul(a, b)
        torch.cuda.synchronize()
        ready.set()
        iterations, start = 0, time.perf_counter()
        while not stop.is_set() and time.perf_counter() - start < max_seconds:
            for _ in range(10):
                torch.matmul(a, b, out=c)
            torch.cuda.synchronize()
            iterations += 10
        elapsed = time.perf_counter() - start
        tflops = 2 * MATMUL_SIZE**3 * iterations / elapsed / 1e12 if elapsed else None
        results.put({"iterations": iterations, "seconds": elapsed, "tflops": tflops})
    except Exception as exc:
        results.put({"error": f"{type(exc).__name__}: {exc}"})


def _load_info(gpu: int) -> dict[str, Any]:
    return {"gpu": gpu, "matmul_size": MATMUL_SIZE, "dtype": "bfloat16"}


def _gpu_uuid(gpu: int) -> str:
    uuid: str = pynvml.nvmlDeviceGetUUID(pynvml.nvmlDeviceGetHandleByIndex(gpu))
    return uuid


def _wait_ready(ready: Event, child: multiprocessing.process.BaseProcess) -> bool:
    """Wait for the load to start, giving up early if the child has already died."""
    deadline = time.monotonic() + LOAD_START_TIMEOUT_S
    while child.is_alive() and time.monotonic() < deadline:
        if ready.wait(0.2):
            return True
    return False


def record_under_load(args: argparse.Namespace, doc: dict[str, Any]) -> bool:
    """Sample while ``burn`` loads the GPU; fills ``doc`` and says whether the load ran."""
    doc["load"] = _load_info(args.load_gpu)
    try:
        uuid = _gpu_uuid(args.load_gpu)
    except _CALL_ERRORS as exc:
        doc["load"]["error"] = f"GPU {args.load_gpu} not usable: {error_text(exc)}"
        return False
    context = multiprocessing.get_context("spawn")
    ready, stop, results = context.Event(), context.Event(), context.Queue()
    max_seconds = args.seconds + LOAD_START_TIMEOUT_S
    child = context.Process(target=burn, args=(uuid, max_seconds, ready, stop, results))
    child.start()
    try:
        if _wait_ready(ready, child):
            doc["samples"] = take_samples(args.seconds, args.interval)
            doc.update(time_read5(pynvml.nvmlDeviceGetHandleByIndex(args.load_gpu), args.read5_iterations))
    finally:
        stop.set()
        child.join(LOAD_START_TIMEOUT_S)
        if child.is_alive():
            child.terminate()
    try:
        outcome = results.get(timeout=5)
    except queue.Empty:
        outcome = {"error": f"load process ended with code {child.exitcode} and no report"}
    doc["load"].update(outcome)
    return "error" not in outcome


def record_idle(args: argparse.Namespace, doc: dict[str, Any]) -> bool:
    """Sample the host as it is and time the five-field read on ``--load-gpu``."""
    doc["samples"] = take_samples(args.seconds, args.interval)
    doc.update(time_read5(pynvml.nvmlDeviceGetHandleByIndex(args.load_gpu), args.read5_iterations))
    return True


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "unknown"


def output_path(out_dir: Path, label: str, doc: dict[str, Any]) -> Path:
    """``nvml-<gpu name>-<label>-<UTC time>.json``, e.g. ``nvml-nvidia-h100-80gb-hbm3-load-…``."""
    devices = (doc.get("raw") or {}).get("devices") or [{}]
    name = _slug(devices[0].get("name") or "no-gpu")
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(doc["recorded_at"]))
    return out_dir / f"nvml-{name}-{label}-{stamp}.json"


def _new_doc(label: str) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "label": label,
        "recorded_at": time.time(),
        "pynvml_version": importlib.metadata.version("nvidia-ml-py"),
        "python": sys.version.split()[0],
        "available": False,
        "unavailable_reason": None,
        "raw": None,
        "reading": None,
        "samples": [],
    }


def _record(args: argparse.Namespace, doc: dict[str, Any]) -> int:
    """Fill ``doc`` from NVML; the exit code says how far it got."""
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        doc["unavailable_reason"] = f"nvmlInit failed: {error_text(exc)}"
        return EXIT_NO_NVML
    try:
        doc.update(_sample(), available=True)
        run = record_under_load if args.label == "load" else record_idle
        return EXIT_OK if run(args, doc) else EXIT_LOAD_FAILED
    except _CALL_ERRORS as exc:
        doc.update(available=False, unavailable_reason=f"NVML failed while recording: {error_text(exc)}")
        return EXIT_NO_NVML
    finally:
        _shutdown()


def _shutdown() -> None:
    try:
        pynvml.nvmlShutdown()
    except pynvml.NVMLError:
        return


def main(argv: Sequence[str] | None = None) -> int:
    """Record, write the document whatever happened, print its path; exit 0 when complete."""
    args = parse_args(argv)
    doc = _new_doc(args.label)
    code = _record(args, doc)
    args.out.mkdir(parents=True, exist_ok=True)
    path = output_path(args.out, args.label, doc)
    path.write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")
    print(path)
    if code != EXIT_OK:
        print(doc["unavailable_reason"] or doc.get("load", {}).get("error"), file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
