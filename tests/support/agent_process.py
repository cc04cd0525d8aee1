"""Run the real agent loop in its own process for end-to-end tests.

It is the agent of ``python -m agents`` with two test-host settings: GPU readings are
real H100 readings recorded by ``agents.record_nvml`` and replayed in turn (this machine
has no GPU), and containers get no GPU devices. Everything else is real: the Docker
engine, the HTTP reports to the panel, the vLLM servers it starts.

    python -m tests.support.agent_process --panel URL --state-dir DIR --name NODE [--join-token T]
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import threading
from pathlib import Path

import docker
import httpx

from agents.agent import Agent, AgentConfig
from agents.host_policy import ENV_PATTERNS, HostPolicy
from agents.nvml import HostReading, convert
from agents.runtime import DockerRuntime

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "nvml"


class RecordedGpus:
    """Replays the samples of a recorded H100 run, one per read, round and round."""

    def __init__(self, pattern: str = "*-load-*.json") -> None:
        document = json.loads(sorted(FIXTURES.glob(pattern))[0].read_text())
        self.readings = [convert(sample["raw"]) for sample in document["samples"]]
        self.reads = 0

    def read(self) -> HostReading:
        reading = self.readings[self.reads % len(self.readings)]
        self.reads += 1
        return reading


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--panel", required=True)
    parser.add_argument("--state-dir", type=Path, required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--join-token")
    parser.add_argument("--interval", type=float, default=1.0)
    parser.add_argument("--port-range", default="18100-18199")
    parser.add_argument("--allow-image", action="append", default=[])
    parser.add_argument("--allow-batch-image", action="append", default=[])
    parser.add_argument("--allow-volume", action="append", default=[])
    parser.add_argument("--allow-env", action="append", default=[])
    parser.add_argument("--nvml", default="*-load-*.json", help="which recording to replay (idle or load)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s agent %(levelname)s %(message)s")
    low, high = (int(part) for part in args.port_range.split("-"))
    config = AgentConfig(
        panel_url=args.panel,
        state_dir=args.state_dir,
        node_name=args.name,
        interval_s=args.interval,
        image_allowlist=tuple(args.allow_image),
        batch_image_allowlist=tuple(args.allow_batch_image),
        batch_stop_timeout_s=2,
        port_range=(low, high),
        attach_gpus=False,
        host_policy=HostPolicy(
            volume_prefixes=tuple(args.allow_volume), env_patterns=ENV_PATTERNS + tuple(args.allow_env)
        ),
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with httpx.Client() as http:
        agent = Agent(
            config, gpus=RecordedGpus(args.nvml), runtime=DockerRuntime(docker.from_env(), args.name), http=http
        )
        if not agent.registered:
            agent.register(args.join_token)
        agent.run(stop)


if __name__ == "__main__":
    main()
