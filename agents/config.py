"""The agent's own configuration: what this host lets the panel do, and how it reports.

Set from the command line and environment (``agents.__main__``); every decision the agent
makes on its own behalf (``agents.plan``) reads it.
"""

from __future__ import annotations

import fnmatch
import re
import socket
from dataclasses import dataclass, field
from pathlib import Path

from agents.batch import DEFAULT_BATCH_STOP_TIMEOUT_S
from agents.host_policy import HostPolicy
from agents.protocol import DEFAULT_PORT_RANGE

GIB = 1024**3


def node_name_default() -> str:
    """The host name, lower-cased and reduced to what the panel accepts as a node name."""
    name = re.sub(r"[^a-z0-9-]+", "-", socket.gethostname().lower()).strip("-")
    return name or "gpu-host"


@dataclass(frozen=True)
class AgentConfig:
    panel_url: str
    state_dir: Path
    node_name: str = field(default_factory=node_name_default)
    interval_s: float = 5.0
    image_allowlist: tuple[str, ...] = ("vllm/vllm-openai:*",)
    port_range: tuple[int, int] = DEFAULT_PORT_RANGE
    buffer_size: int = 720
    # Where other hosts reach this host's servers, told to the panel; empty: the panel takes
    # the address it sees the agent at.
    advertise_address: str = ""
    # Where the servers listen (``listen_host_for``): loopback unless the gateway is elsewhere.
    listen_host: str = "127.0.0.1"
    probe_timeout_s: float = 2.0
    panel_timeout_s: float = 15.0
    attach_gpus: bool = True
    batch_image_allowlist: tuple[str, ...] = ()
    batch_max_image_mb: int = 200
    batch_stop_timeout_s: int = DEFAULT_BATCH_STOP_TIMEOUT_S
    batch_host_memory_bytes: int | None = 8 * GIB
    simulated: bool = False
    # What this host lets a server do, whatever the panel asks (agents/host_policy.py).
    host_policy: HostPolicy = field(default_factory=HostPolicy)

    @property
    def local_host(self) -> str:
        """Where the agent itself reaches its servers: health, metrics, sleep and wake."""
        return "127.0.0.1" if self.listen_host == "0.0.0.0" else self.listen_host

    @property
    def endpoint_host(self) -> str:
        """The host of the endpoints the agent reports: the advertised address, else its own
        loopback one, which the panel replaces with the address it sees the agent at."""
        return self.advertise_address or self.local_host

    def image_allowed(self, image: str) -> bool:
        return any(fnmatch.fnmatchcase(image, pattern) for pattern in self.image_allowlist)

    def batch_image_allowed(self, image: str) -> bool:
        """Batch images have their own allowlist, empty by default: a host runs no batch work unless told."""
        return any(fnmatch.fnmatchcase(image, pattern) for pattern in self.batch_image_allowlist)
