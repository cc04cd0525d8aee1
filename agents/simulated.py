"""Simulated GPUs for the demo fleet: an NVML stand-in driven by the simulated engines' load.

Nothing here touches a GPU. Each simulated engine process (``fleet.sim.engine_server``)
writes a small status file saying which GPUs it was given, how much memory it holds and
its duty cycle over the last second (the share of wall time its engine spent in
scheduler steps). ``SimulatedGpus.read`` sums those per GPU, as NVML would see several
processes on one card, and derives power and temperature plainly from utilization. Every
GPU's name starts with "Simulated" and its UUID with ``GPU-simulated-``, so no reading of
a simulated card can pass for a real one.
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

from agents.nvml import GpuReading, HostReading, ProcessReading
from agents.runtime import ContainerSpec

NAME_PREFIX = "Simulated "
UUID_PREFIX = "GPU-simulated-"
DRIVER_VERSION = "simulated"
# A status older than this is a dead or hung engine: it holds nothing.
STATUS_STALE_S = 5.0

ENV_GPU_MODEL = "GPUFLEET_SIM_GPU_MODEL"
ENV_GPU_MEMORY = "GPUFLEET_SIM_GPU_MEMORY_BYTES"
ENV_STATUS_FILE = "GPUFLEET_SIM_STATUS_FILE"

MIB = 1024 * 1024


@dataclass(frozen=True)
class SimulatedModel:
    """What a card of this model reports: NVML's name, memory, power at idle and at its limit."""

    short: str
    nvml_name: str
    memory_bytes: int
    idle_watts: float
    limit_watts: float


# NVML names and memory as the real cards report them; power limits from the vendors' data sheets.
MODELS: dict[str, SimulatedModel] = {
    model.short: model
    for model in (
        SimulatedModel("H100", "NVIDIA H100 80GB HBM3", 81_559 * MIB, 70.0, 700.0),
        SimulatedModel("A100", "NVIDIA A100-SXM4-40GB", 40_960 * MIB, 50.0, 400.0),
        SimulatedModel("L40S", "NVIDIA L40S", 46_068 * MIB, 35.0, 350.0),
        SimulatedModel("L4", "NVIDIA L4", 23_034 * MIB, 16.0, 72.0),
        SimulatedModel("A10G", "NVIDIA A10G", 23_028 * MIB, 25.0, 300.0),
    )
}

_SPEC_PART = re.compile(r"^\s*([A-Za-z0-9]+?)\s*(?:x\s*(\d+))?\s*$")


def simulated_name(model: SimulatedModel) -> str:
    """The name a simulated card reports: the real card's NVML name, prefixed ``Simulated``."""
    return NAME_PREFIX + model.nvml_name


def parse_gpus(text: str) -> list[SimulatedModel]:
    """``H100x2`` or ``H100x2,L4`` -> one model per simulated card, in index order."""
    cards: list[SimulatedModel] = []
    for part in text.split(","):
        match = _SPEC_PART.match(part)
        model = MODELS.get(match.group(1).upper()) if match else None
        if match is None or model is None:
            raise ValueError(
                f"simulated GPUs {text!r}: expected e.g. H100x2 or H100x2,L4 with models {', '.join(MODELS)}"
            )
        cards.extend([model] * int(match.group(2) or 1))
    return cards


@dataclass(frozen=True)
class EngineStatus:
    """One engine's last status file."""

    pid: int
    gpu_uuids: tuple[str, ...]
    memory_bytes: int
    duty_cycle: float
    written_at: float


def status_write(path: Path, *, gpu_uuids: list[str], memory_bytes: int, duty_cycle: float) -> None:
    """Called by a simulated engine every fraction of a second; atomic, so a reader never sees half."""
    tmp = path.with_name(path.name + ".tmp")
    body = {
        "pid": os.getpid(),
        "gpu_uuids": gpu_uuids,
        "memory_bytes": int(memory_bytes),
        "duty_cycle": min(1.0, max(0.0, duty_cycle)),
        "written_at": time.time(),
    }
    tmp.write_text(json.dumps(body))
    os.replace(tmp, path)


def _status_read(path: Path) -> EngineStatus | None:
    try:
        raw = json.loads(path.read_text())
        return EngineStatus(
            pid=int(raw["pid"]),
            gpu_uuids=tuple(raw["gpu_uuids"]),
            memory_bytes=int(raw["memory_bytes"]),
            duty_cycle=float(raw["duty_cycle"]),
            written_at=float(raw["written_at"]),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


class SimulatedGpus:
    """A ``GpuSource`` of simulated cards whose load is what the simulated engines on them report."""

    def __init__(self, cards: list[SimulatedModel], *, node_name: str, state_dir: Path) -> None:
        if not cards:
            raise ValueError("a simulated host needs at least one GPU")
        self.cards = cards
        self.uuids = [f"{UUID_PREFIX}{node_name}-{index}" for index in range(len(cards))]
        self.status_dir = Path(state_dir) / "simulated-gpus"
        self.status_dir.mkdir(parents=True, exist_ok=True)

    def engine_env(self, spec: ContainerSpec) -> dict[str, str]:
        """What an engine started for ``spec`` needs to act as a load on its simulated GPUs."""
        uuids = list(spec.gpu_uuids) or self.uuids[:1]
        card = self.cards[self.uuids.index(uuids[0])] if uuids[0] in self.uuids else self.cards[0]
        return {
            "CUDA_VISIBLE_DEVICES": ",".join(uuids),
            ENV_GPU_MODEL: card.short,
            ENV_GPU_MEMORY: str(card.memory_bytes),
            ENV_STATUS_FILE: str(self.status_dir / f"{spec.container_name}.json"),
        }

    def _live_statuses(self, now: float) -> list[EngineStatus]:
        statuses = []
        for path in self.status_dir.glob("*.json"):
            status = _status_read(path)
            if status is not None and now - status.written_at <= STATUS_STALE_S:
                statuses.append(status)
        return statuses

    def read(self) -> HostReading:
        now = time.time()
        statuses = self._live_statuses(now)
        gpus = []
        for index, (card, uuid) in enumerate(zip(self.cards, self.uuids, strict=True)):
            on_card = [status for status in statuses if uuid in status.gpu_uuids]
            used = min(card.memory_bytes, sum(status.memory_bytes for status in on_card))
            utilization = min(1.0, sum(status.duty_cycle for status in on_card))
            gpus.append(_reading(index, uuid, card, utilization, used, on_card))
        return HostReading(
            available=True,
            unavailable_reason=None,
            sampled_at=now,
            driver_version=DRIVER_VERSION,
            nvml_version=DRIVER_VERSION,
            cuda_driver_version=None,
            gpus=gpus,
        )


def _reading(
    index: int, uuid: str, card: SimulatedModel, utilization: float, used: int, on_card: list[EngineStatus]
) -> GpuReading:
    """Power rises linearly from idle to the limit with utilization; temperature from 30 to 75 C."""
    busy = utilization > 0
    return GpuReading(
        index=index,
        uuid=uuid,
        name=simulated_name(card),
        pci_bus_id=f"00000000:{index + 1:02X}:00.0",
        utilization_gpu_pct=round(utilization * 100),
        utilization_memory_pct=round(utilization * 60),
        sm_activity_pct=None,
        memory_total_bytes=card.memory_bytes,
        memory_used_bytes=used,
        memory_reserved_bytes=0,
        memory_free_bytes=card.memory_bytes - used,
        power_watts=round(card.idle_watts + (card.limit_watts - card.idle_watts) * utilization, 1),
        power_limit_watts=card.limit_watts,
        energy_joules=None,
        temperature_c=round(30 + 45 * utilization),
        sm_clock_mhz=1980 if busy else 345,
        mem_clock_mhz=2619,
        pstate=0 if busy else 8,
        throttle_reasons=[] if busy else ["gpu_idle"],
        ecc_uncorrected_volatile=0,
        mig_mode_current=None,
        mig_mode_pending=None,
        mig_devices=[],
        processes=[ProcessReading(pid=status.pid, used_memory_bytes=status.memory_bytes) for status in on_card],
        field_errors={"sm_activity_pct": "simulated GPU: no GPM"},
    )
