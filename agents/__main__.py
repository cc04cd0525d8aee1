"""Run the host agent: ``python -m agents --panel URL --join-token TOKEN``.

The first run registers the host with a join token and keeps the node token in the
state directory; later runs (a restart, a reboot) reuse it and need no join token.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import threading
import time
from pathlib import Path

import docker
import httpx

from agents.agent import AGENT_VERSION, Agent, PanelRefused, listen_host_for
from agents.config import AgentConfig, node_name_default
from agents.host_policy import ENV_PATTERNS, VLLM_FLAGS, HostPolicy, vllm_flag_name
from agents.nvml import NvmlBackend
from agents.processes import Launcher, ProcessRuntime
from agents.protocol import DEFAULT_PORT_RANGE, address_check
from agents.runtime import ContainerState, DockerRuntime, Runtime, RuntimeFailure
from agents.simulated import SimulatedGpus, gpus_parse

log = logging.getLogger("gpufleet.agent")


class UnavailableRuntime:
    """Stands in when the Docker engine cannot be reached: every call says why.

    The agent still senses and reports (the panel shows the reason) instead of dying.
    """

    def __init__(self, reason: str) -> None:
        self.reason = reason

    def list_managed(self) -> list[ContainerState]:
        raise RuntimeFailure(self.reason)

    def start(self, spec: object) -> ContainerState:
        raise RuntimeFailure(self.reason)

    def stop(self, instance_id: str, timeout_s: int, generation: int | None = None) -> None:
        raise RuntimeFailure(self.reason)

    def remove(self, instance_id: str, generation: int | None = None) -> None:
        raise RuntimeFailure(self.reason)

    def logs_tail(self, instance_id: str, lines: int = 100, generation: int | None = None) -> str:
        raise RuntimeFailure(self.reason)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    env = os.environ.get
    parser = argparse.ArgumentParser(prog="python -m agents", description=__doc__)
    parser.add_argument("--panel", default=env("GPUFLEET_PANEL"), help="panel base URL (env GPUFLEET_PANEL)")
    parser.add_argument(
        "--join-token",
        default=env("GPUFLEET_JOIN_TOKEN"),
        help="needed on the first run only (env GPUFLEET_JOIN_TOKEN)",
    )
    parser.add_argument(
        "--join-token-file",
        type=Path,
        default=env("GPUFLEET_JOIN_TOKEN_FILE"),
        help="a file holding the join token, deleted once registered (env GPUFLEET_JOIN_TOKEN_FILE)",
    )
    parser.add_argument(
        "--name",
        default=env("GPUFLEET_NODE_NAME") or node_name_default(),
        help="node name in the panel (env GPUFLEET_NODE_NAME; default: this host's name, %(default)s)",
    )
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=Path(env("GPUFLEET_STATE_DIR", "/var/lib/gpufleet-agent")),
        help="where the node token and buffered reports are kept (env GPUFLEET_STATE_DIR; default: %(default)s)",
    )
    parser.add_argument("--config", type=Path, help="JSON file with any of the options below, by their long names")
    parser.add_argument("--interval", type=float, default=5.0, help="seconds between reports (default: %(default)g)")
    parser.add_argument(
        "--allow-image",
        action="append",
        dest="allow_images",
        metavar="PATTERN",
        help="image pattern this host may run (repeatable; default vllm/vllm-openai:*)",
    )
    parser.add_argument(
        "--allow-batch-image",
        action="append",
        dest="allow_batch_images",
        metavar="PATTERN",
        help="image pattern co-located batch jobs may use (repeatable; default none: no batch jobs)",
    )
    parser.add_argument(
        "--batch-max-image-mb", type=int, default=200, help="largest batch image this host runs (default: %(default)s)"
    )
    parser.add_argument(
        "--batch-stop-timeout",
        type=int,
        default=10,
        help="seconds a stopped batch job gets to exit (default: %(default)s)",
    )
    parser.add_argument(
        "--port-range",
        default="{}-{}".format(*DEFAULT_PORT_RANGE),
        help="ports for the servers this host runs (default: %(default)s)",
    )
    parser.add_argument(
        "--buffer-size", type=int, default=720, help="reports kept while the panel is away (default: %(default)s)"
    )
    parser.add_argument(
        "--advertise-address",
        default=env("GPUFLEET_ADVERTISE_ADDRESS", ""),
        metavar="ADDRESS",
        help="IP address or host name other hosts reach this one's servers at (env GPUFLEET_ADVERTISE_ADDRESS;"
        " default: the address the panel sees this host at)",
    )
    parser.add_argument("--no-gpu-devices", action="store_true", help="start containers without GPU devices")
    parser.add_argument(
        "--runtime",
        choices=("docker", "process"),
        default="docker",
        help="run servers as Docker containers (default) or as local processes started by --launcher",
    )
    parser.add_argument(
        "--launcher",
        action="append",
        dest="launchers",
        metavar="IMAGE_PATTERN=COMMAND",
        help="with --runtime process: the command that serves images matching the pattern (repeatable);"
        " {python} is this interpreter",
    )
    parser.add_argument(
        "--simulated-gpus",
        metavar="SPEC",
        help="simulate this host's GPUs instead of reading NVML, e.g. H100x2 (the demo); the node registers"
        " as simulated",
    )
    parser.add_argument(
        "--allow-volume",
        action="append",
        dest="allow_volumes",
        metavar="HOST_PATH",
        help="host path under which a profile may bind-mount (read-only; repeatable; default none)."
        " Never /, the Docker socket or the system's own directories",
    )
    parser.add_argument(
        "--allow-env",
        action="append",
        dest="allow_env",
        metavar="PATTERN",
        help=f"environment variable names a profile may set, besides {', '.join(ENV_PATTERNS)} (repeatable)",
    )
    parser.add_argument(
        "--allow-vllm-flag",
        action="append",
        dest="allow_vllm_flags",
        metavar="FLAG",
        help="a vLLM flag a profile may add, besides the default set (repeatable; as vLLM spells it, e.g. --max-loras)",
    )
    parser.add_argument(
        "--allow-host-ipc",
        action="store_true",
        help="let servers share the host's IPC namespace (default: their own /dev/shm of --shm-size)",
    )
    parser.add_argument("--shm-size", default="8g", help="/dev/shm of a server without host IPC (default: %(default)s)")
    parser.add_argument("--once", action="store_true", help="one report, then exit")
    parser.add_argument("--version", action="version", version=AGENT_VERSION)
    args = parser.parse_args(argv)
    if args.config:
        for key, value in json.loads(args.config.read_text()).items():
            setattr(args, key.replace("-", "_"), value)
    if not args.panel:
        parser.error("--panel (or GPUFLEET_PANEL) is required")
    try:
        args.advertise_address = address_check(args.advertise_address) if args.advertise_address else ""
        args.launchers = [Launcher.parse(text) for text in args.launchers or ()]
        args.simulated_gpus = gpus_parse(args.simulated_gpus) if args.simulated_gpus else None
    except ValueError as exc:
        parser.error(str(exc))
    if args.runtime == "process" and not args.launchers:
        parser.error("--runtime process needs at least one --launcher")
    return args


def config_from(args: argparse.Namespace) -> AgentConfig:
    low, _, high = str(args.port_range).partition("-")
    return AgentConfig(
        panel_url=str(args.panel).rstrip("/"),
        state_dir=Path(args.state_dir),
        node_name=args.name,
        interval_s=float(args.interval),
        image_allowlist=tuple(args.allow_images or ("vllm/vllm-openai:*",)),
        batch_image_allowlist=tuple(args.allow_batch_images or ()),
        batch_max_image_mb=int(args.batch_max_image_mb),
        batch_stop_timeout_s=int(args.batch_stop_timeout),
        port_range=(int(low), int(high or low)),
        buffer_size=int(args.buffer_size),
        advertise_address=args.advertise_address,
        listen_host=listen_host_for(advertise_address=args.advertise_address, panel_url=str(args.panel)),
        attach_gpus=not args.no_gpu_devices,
        simulated=bool(args.simulated_gpus),
        host_policy=HostPolicy(
            volume_prefixes=tuple(args.allow_volumes or ()),
            env_patterns=ENV_PATTERNS + tuple(args.allow_env or ()),
            vllm_flags=VLLM_FLAGS | {vllm_flag_name(flag) for flag in args.allow_vllm_flags or ()},
            host_ipc=bool(args.allow_host_ipc),
            shm_size=str(args.shm_size),
        ),
    )


def docker_runtime(node_name: str) -> DockerRuntime | UnavailableRuntime:
    try:
        client = docker.from_env()
        client.ping()
    except docker.errors.DockerException as exc:
        log.error("Docker engine unreachable: %s", exc)
        return UnavailableRuntime(f"Docker engine unreachable: {exc}")
    return DockerRuntime(client, node_name)


def backends(args: argparse.Namespace, config: AgentConfig) -> tuple[NvmlBackend | SimulatedGpus, Runtime]:
    """The GPU source and the runtime the options ask for; simulated engines learn their GPUs from the former."""
    gpus = (
        SimulatedGpus(args.simulated_gpus, node_name=config.node_name, state_dir=config.state_dir)
        if args.simulated_gpus
        else NvmlBackend()
    )
    if args.runtime == "docker":
        return gpus, docker_runtime(config.node_name)
    env_for = gpus.engine_env if isinstance(gpus, SimulatedGpus) else None
    return gpus, ProcessRuntime(config.state_dir, config.node_name, args.launchers, env_for=env_for)


def register_until_done(agent: Agent, join_token: str | None, stop: threading.Event) -> bool:
    """Register, retrying while the panel is unreachable; False if refused or stopped."""
    if agent.registered:
        return True
    if not join_token:
        log.error("not registered yet: pass --join-token (from the panel's 'Add a host' page)")
        return False
    delay = 1.0
    while not stop.is_set():
        try:
            agent.register(join_token)
            return True
        except PanelRefused as exc:
            log.error("registration refused: %s", exc)
            return False
        except httpx.HTTPError as exc:
            log.warning("panel unreachable (%s); retrying in %.0f s", exc, delay)
            stop.wait(delay)
            delay = min(delay * 2, 60.0)
    return False


def join_token(args: argparse.Namespace) -> str | None:
    """From ``--join-token``, else from the join token file while it is there."""
    if args.join_token:
        return str(args.join_token)
    if args.join_token_file is not None and args.join_token_file.is_file():
        return args.join_token_file.read_text().strip() or None
    return None


def forget_join_token(path: Path | None) -> None:
    """Registered: the join token, which may admit other hosts, is no longer kept on this one."""
    if path is not None and path.exists():
        path.unlink()
        log.info("registered; deleted the join token file %s", path)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=os.environ.get("LOG_LEVEL", "INFO"), format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    args = parse_args(argv)
    config = config_from(args)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    with httpx.Client() as http:
        gpus, runtime = backends(args, config)
        agent = Agent(config, gpus=gpus, runtime=runtime, http=http, wait_http=httpx.Client())
        if not register_until_done(agent, join_token(args), stop):
            return 2
        forget_join_token(args.join_token_file)
        log.info("agent %s reporting to %s every %.0f s", AGENT_VERSION, config.panel_url, config.interval_s)
        if args.once:
            started = time.monotonic()
            agent.tick()
            log.info("one report in %.2f s; %d left buffered", time.monotonic() - started, len(agent.buffer))
            return 0 if len(agent.buffer) == 0 else 1
        agent.run(stop)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
