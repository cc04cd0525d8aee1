"""What a host may claim about itself, checked before anything it reports is stored.

Its address and its servers' endpoints (on its own address, on a port of its registered
range), its clock (bounded against the panel's), its GPUs' memory (against the catalogue).
Each check refuses with an ``IngestError`` that says why; the report is then stored not at
all (``fleet.telemetry.ingest``). docs/security.md lists them.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from urllib.parse import urlsplit, urlunsplit

from agents import protocol
from fleet import catalog
from fleet.policies.windows import REPORT_INTERVAL_S

# How far a host's clock may run from the panel's. A reading newer than now plus this is
# refused; one older than the agent's buffer can hold (its reports times the interval,
# plus this) was not buffered by an honest agent, and is not stored.
CLOCK_SKEW_S = 120.0
OLDEST_READING_S = protocol.MAX_REPORTS_PER_BATCH * REPORT_INTERVAL_S + CLOCK_SKEW_S
# The ports an instance endpoint may use, whatever the agent registered: unprivileged ones. Within
# them, only the node's own range (the agent's --port-range as it registered, ``node_ports``).
ENDPOINT_PORTS = range(1024, 65536)
# GPUs the catalogue does not know are believed up to this much memory (eight times the
# largest card it knows): enough for cards not listed yet, not for a made-up terabyte.
UNKNOWN_GPU_MAX_BYTES = 8 * max(spec.memory_gib for spec in catalog.GPUS) * catalog.GIB


class IngestError(Exception):
    """A request the panel refuses; ``status`` is the HTTP status that says why."""

    def __init__(self, status: int, message: str, details: Iterable[str] = ()) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.details = list(details)


def loopback_from_afar(advertised: str, peer: str) -> bool:
    return protocol.address_is_loopback(advertised) and bool(peer) and not protocol.address_is_loopback(peer)


def node_address(*, advertised: str, peer: str) -> str:
    """Where the gateway reaches a node's servers: the address the agent advertises, else the
    address the panel sees its requests come from (empty if neither is known).

    A loopback address is taken only from a host the panel sees on loopback too (the demo, every
    host on the panel's machine); from anywhere else it would send the gateway to the panel's
    own machine, so the address the panel sees stands instead.
    """
    if advertised and not loopback_from_afar(advertised, peer):
        return advertised
    return peer


def endpoint_at(endpoint: str, address: str) -> str:
    """An agent's endpoint with a loopback host replaced by the node's address.

    Agents that advertise nothing report their servers at 127.0.0.1; the gateway, on another
    machine, reaches them at the address the panel sees the agent at. Left alone: endpoints
    already naming another host, and nodes whose address is loopback too (the demo).
    """
    if not endpoint or not address or protocol.address_is_loopback(address):
        return endpoint
    parts = urlsplit(endpoint)
    try:
        port = parts.port
    except ValueError:
        return endpoint
    if not parts.hostname or not protocol.address_is_loopback(parts.hostname):
        return endpoint
    host = f"[{address}]" if ":" in address else address
    return urlunsplit(parts._replace(netloc=f"{host}:{port}" if port else host))


def report_address(*, stored: str, advertised: str, peer: str) -> str:
    """The node's address after a report: where the panel sees it, or the address it was given.

    The peer is observed, not claimed, so it always counts (``node_address``). An advertised
    address counts only where it is the one the node already has, or the node has none yet:
    otherwise any host could move itself, and the endpoints the gateway connects to, to an
    address of its choosing. A host that moves is given its new address by an operator.
    """
    if advertised and stored and advertised != stored:
        return stored
    return node_address(advertised=advertised, peer=peer)


def _same_host(host: str, address: str) -> bool:
    try:
        return ipaddress.ip_address(host) == ipaddress.ip_address(address)
    except ValueError:
        return host.lower().rstrip(".") == address.lower().rstrip(".")


def node_ports(low: int, high: int) -> range:
    """The ports a node's instance endpoints may use: its registered range, unprivileged ports only."""
    return range(max(low, ENDPOINT_PORTS.start), min(high + 1, ENDPOINT_PORTS.stop))


def endpoint_problem(endpoint: str, address: str, ports: range) -> str:
    """Why an instance endpoint (already through ``endpoint_at``) is not on the node; empty if it is.

    An endpoint is plain ``http(s)://host:port`` on the node's own ``address`` (loopback
    only where the node is on loopback itself) and a port in ``ports`` (``node_ports``: the
    range the agent registered with): the gateway connects there with other teams' prompts,
    so a host cannot point it at another service of its address (a database, the panel).
    """
    if not endpoint:
        return ""
    parts = urlsplit(endpoint)
    try:
        port = parts.port
    except ValueError:
        port = None
    if parts.scheme not in ("http", "https") or parts.username is not None or parts.password is not None:
        return "not http(s)://host:port"
    if parts.path not in ("", "/") or parts.query or parts.fragment or port is None:
        return "not http(s)://host:port"
    if not ports:
        return f"port {port}: this host registered no port range from {ENDPOINT_PORTS.start} up"
    if port not in ports:
        return f"port {port} outside this host's port range {ports.start}-{ports.stop - 1}"
    host = parts.hostname or ""
    local = not address or protocol.address_is_loopback(address)
    if not (_same_host(host, address) or (local and protocol.address_is_loopback(host))):
        return f"not on this host's address {address or '(none)'}"
    return ""


def clock_check(reports: Iterable[protocol.Report], *, now: float) -> None:
    """Refuse a batch with a reading from the future: the host's clock is wrong, or it lies."""
    future = [report.seq for report in reports if report.sampled_at > now + CLOCK_SKEW_S]
    if future:
        raise IngestError(
            400,
            f"reports sampled in the future (more than {CLOCK_SKEW_S:.0f} s ahead of the panel's clock);"
            " set the host's clock right (NTP)",
            [f"seq {seq}" for seq in future[:10]],
        )


def inventory_check(reports: Iterable[protocol.Report]) -> None:
    """Refuse GPUs larger than the catalogue says their model is, and MIG devices larger than their GPU.

    Placement sizes instances by the memory a GPU reports; a card that claims more than it
    has would be given work it cannot hold. Unknown models are bounded by
    ``UNKNOWN_GPU_MAX_BYTES``.
    """
    problems: list[str] = []
    limits: dict[str, int] = {}
    for report in reports:
        for gpu in report.gpus:
            limit = limits.get(gpu.name)
            if limit is None:
                spec = catalog.gpu_spec(gpu.name)
                limit = limits[gpu.name] = spec.memory_gib * catalog.GIB if spec else UNKNOWN_GPU_MAX_BYTES
            if gpu.memory_total_bytes > limit:
                problems.append(f"{gpu.uuid}: {gpu.name} with {gpu.memory_total_bytes} bytes, at most {limit}")
            problems.extend(
                f"{device.uuid}: {device.memory_total_bytes} bytes, more than its GPU {gpu.uuid}"
                for device in gpu.mig_devices
                if device.memory_total_bytes > gpu.memory_total_bytes
            )
    if problems:
        raise IngestError(400, "GPU memory larger than the catalogue or the card allows, nothing stored", problems[:10])
