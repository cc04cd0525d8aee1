"""Simulated GPUs for the demo fleet: an NVML stand-in driven by the simulated engines' load.

Nothing here touches a GPU. Each simulated engine process (``fleet.demo.engine_server``)
writes a small status file saying which GPUs it was given, how much memory it holds and
its duty cycle over the last second (the share of wall time its engine spent in
scheduler steps). ``SimulatedGpus.read`` sums those per GPU, as NVML would see several
processes on one card, and derives power and temperature plainly from utilization. Every
GPU's name starts with "Simulated" and its UUID with ``GPU-simulated-``, so no reading of
a simulated card can pass for a real one.

A MIG-capable model can be simulated in MIG mode (``H100-mig``): the card is cut into its
model's fixed layout of slices (three ``2g.20gb`` on an H100, two ``3g.20gb`` on an A100
40GB), each a device with its own UUID (``MIG-simulated-...``) that an engine may be given.
NVML reports no utilization for a MIG-mode card; the simulated one reports the slices' duty
cycles weighted by their share of the card's compute, so the dashboard still shows how busy
the card is.
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

from agents.nvml import GpuReading, HostReading, MigReading, ProcessReading
from agents.runtime import ContainerSpec

NAME_PREFIX = "Simulated "
UUID_PREFIX = "GPU-simulated-"
DRIVER_VERSION = "simulated"
# A status older than this is a dead or hung engine: it holds nothing.
STATUS_STALE_S = 5.0

ENV_GPU_MODEL = "GPUFLEET_SIM_GPU_MODEL"
ENV_GPU_MEMORY = "GPUFLEET_SIM_GPU_MEMORY_BYTES"
ENV_STATUS_FILE = "GPUFLEET_SIM_STATUS_FILE"
ENV_MIG_SHARE = "GPUFLEET_SIM_MIG_SHARE"
ENV_MIG_MEMORY_SHARE = "GPUFLEET_SIM_MIG_MEMORY_SHARE"
MIG_COMPUTE_SLICES = 7

MIB = 1024 * 1024


@dataclass(frozen=True)
class MigLayout:
    """How a MIG-mode card is cut: ``count`` slices of ``profile``, each ``memory_bytes``."""

    profile: str
    count: int
    memory_bytes: int

    @property
    def compute_share(self) -> float:
        """A slice's share of the card's compute: ``2g`` is 2 of the 7 compute slices."""
        return int(self.profile.split("g.", 1)[0]) / MIG_COMPUTE_SLICES


@dataclass(frozen=True)
class SimulatedModel:
    """What a card of this model reports: NVML's name, memory, power at idle and at its limit."""

    short: str
    nvml_name: str
    memory_bytes: int
    idle_watts: float
    limit_watts: float
    mig: MigLayout | None = None


# NVML names and memory as the real cards report them; power limits from the vendors' data sheets.
MODELS: dict[str, SimulatedModel] = {
    model.short: model
    for model in (
        SimulatedModel(
            "H100", "NVIDIA H100 80GB HBM3", 81_559 * MIB, 70.0, 700.0, MigLayout("2g.20gb", 3, 20_096 * MIB)
        ),
        SimulatedModel(
            "A100", "NVIDIA A100-SXM4-40GB", 40_960 * MIB, 50.0, 400.0, MigLayout("3g.20gb", 2, 19_968 * MIB)
        ),
        SimulatedModel("L40S", "NVIDIA L40S", 46_068 * MIB, 35.0, 350.0),
        SimulatedModel("L4", "NVIDIA L4", 23_034 * MIB, 16.0, 72.0),
        SimulatedModel("A10G", "NVIDIA A10G", 23_028 * MIB, 25.0, 300.0),
    )
}

_SPEC_PART = re.compile(r"^\s*([A-Za-z0-9]+?)(-mig)?\s*(?:x\s*(\d+))?\s*$", re.IGNORECASE)


def simulated_name(model: SimulatedModel) -> str:
    """The name a simulated card reports: the real card's NVML name, prefixed ``Simulated``."""
    return NAME_PREFIX + model.nvml_name


@dataclass(frozen=True)
class SimulatedCard:
    model: SimulatedModel
    mig: bool = False


def gpus_parse(text: str) -> list[SimulatedCard]:
    """``H100x2``, ``H100x2,L4`` or ``H100,H100-mig`` -> one card per simulated GPU, in index order."""
    cards: list[SimulatedCard] = []
    for part in text.split(","):
        match = _SPEC_PART.match(part)
        model = MODELS.get(match.group(1).upper()) if match else None
        if match is None or model is None:
            raise ValueError(
                f"simulated GPUs {text!r}: expected e.g. H100x2 or H100,H100-mig with models {', '.join(MODELS)}"
            )
        mig = bool(match.group(2))
        if mig and model.mig is None:
            raise ValueError(f"simulated GPUs {text!r}: {model.short} has no MIG")
        cards.extend([SimulatedCard(model, mig)] * int(match.group(3) or 1))
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

    def __init__(self, cards: list[SimulatedCard], *, node_name: str, state_dir: Path) -> None:
        if not cards:
            raise ValueError("a simulated host needs at least one GPU")
        self.cards = cards
        self.uuids = [f"{UUID_PREFIX}{node_name}-{index}" for index in range(len(cards))]
        self.mig_uuids = [
            [f"MIG-simulated-{node_name}-{index}-{slot}" for slot in range(card.model.mig.count)]
            if card.mig and card.model.mig
            else []
            for index, card in enumerate(cards)
        ]
        self.status_dir = Path(state_dir) / "simulated-gpus"
        self.status_dir.mkdir(parents=True, exist_ok=True)

    def engine_env(self, spec: ContainerSpec) -> dict[str, str]:
        """What an engine started for ``spec`` needs to act as a load on its simulated GPU or MIG slice."""
        device = (list(spec.mig_uuids) or list(spec.gpu_uuids) or self.uuids[:1])[0]
        model, memory, share = self.cards[0].model, self.cards[0].model.memory_bytes, 1.0
        for index, card in enumerate(self.cards):
            if device == self.uuids[index]:
                model, memory = card.model, card.model.memory_bytes
            elif device in self.mig_uuids[index] and card.model.mig:
                model, memory, share = card.model, card.model.mig.memory_bytes, card.model.mig.compute_share
        return {
            "CUDA_VISIBLE_DEVICES": device,
            ENV_GPU_MODEL: model.short,
            ENV_GPU_MEMORY: str(memory),
            ENV_MIG_SHARE: f"{share:.6f}",
            ENV_MIG_MEMORY_SHARE: f"{memory / model.memory_bytes:.6f}",
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
        gpus = [
            _reading(index, self.uuids[index], card, self.mig_uuids[index], statuses)
            for index, card in enumerate(self.cards)
        ]
        return HostReading(
            available=True,
            unavailable_reason=None,
            sampled_at=now,
            driver_version=DRIVER_VERSION,
            nvml_version=DRIVER_VERSION,
            cuda_driver_version=None,
            gpus=gpus,
        )


def _on(device: str, statuses: list[EngineStatus]) -> list[EngineStatus]:
    return [status for status in statuses if device in status.gpu_uuids]


def _mig_readings(card: SimulatedCard, uuids: list[str], statuses: list[EngineStatus]) -> list[MigReading]:
    layout = card.model.mig
    assert layout is not None
    return [
        MigReading(
            index=slot,
            uuid=uuid,
            name=f"{simulated_name(card.model)} MIG {layout.profile}",
            memory_total_bytes=layout.memory_bytes,
            memory_used_bytes=min(layout.memory_bytes, sum(s.memory_bytes for s in _on(uuid, statuses))),
            gpu_instance_id=slot + 1,
            gpu_instance_slice_count=int(layout.profile.split("g.", 1)[0]),
        )
        for slot, uuid in enumerate(uuids)
    ]


def _reading(
    index: int, uuid: str, card: SimulatedCard, mig_uuids: list[str], statuses: list[EngineStatus]
) -> GpuReading:
    """Power rises linearly from idle to the limit with utilization; temperature from 30 to 75 C."""
    model = card.model
    share = model.mig.compute_share if card.mig and model.mig else 1.0
    devices = mig_uuids or [uuid]
    on_card = [status for device in devices for status in _on(device, statuses)]
    utilization = min(1.0, sum(share * status.duty_cycle for status in on_card))
    used = min(model.memory_bytes, sum(status.memory_bytes for status in on_card))
    busy = utilization > 0
    return GpuReading(
        index=index,
        uuid=uuid,
        name=simulated_name(model),
        pci_bus_id=f"00000000:{index + 1:02X}:00.0",
        utilization_gpu_pct=round(utilization * 100),
        utilization_memory_pct=round(utilization * 60),
        sm_activity_pct=None,
        memory_total_bytes=model.memory_bytes,
        memory_used_bytes=used,
        memory_reserved_bytes=0,
        memory_free_bytes=model.memory_bytes - used,
        power_watts=round(model.idle_watts + (model.limit_watts - model.idle_watts) * utilization, 1),
        power_limit_watts=model.limit_watts,
        energy_joules=None,
        temperature_c=round(30 + 45 * utilization),
        sm_clock_mhz=1980 if busy else 345,
        mem_clock_mhz=2619,
        pstate=0 if busy else 8,
        throttle_reasons=[] if busy else ["gpu_idle"],
        ecc_uncorrected_volatile=0,
        mig_mode_current=card.mig if model.mig else None,
        mig_mode_pending=card.mig if model.mig else None,
        mig_devices=_mig_readings(card, mig_uuids, statuses) if mig_uuids else [],
        processes=[ProcessReading(pid=status.pid, used_memory_bytes=status.memory_bytes) for status in on_card],
        field_errors={"sm_activity_pct": "simulated GPU: no GPM"},
    )
