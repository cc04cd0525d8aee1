"""Run the demo: a SIMULATED GPU fleet served through the real panel, agents and gateway."""

from __future__ import annotations

import signal
import socket
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError, CommandParser

from agents.simulated import MODELS
from fleet.demo.runner import REAL_IMAGE, DemoFleet, DemoOptions, demo_prepare


class Command(BaseCommand):
    help = (
        "Migrate, create a demo login, and run the panel with simulated GPU hosts and a replayer "
        "sending a real Azure trace through the gateway. Ctrl-C stops everything. Reads FLEET_VAR_DIR "
        "(database, logs and the hosts' state; default var/) and, with --real-vllm, FLEET_VLLM_PYTHON "
        "(the Python that has vLLM)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--trace", default="conv", help="conv, code (the Azure 2023 traces) or a CSV path (default: %(default)s)"
        )
        parser.add_argument(
            "--speedup",
            type=float,
            default=1.0,
            help="replay this many times faster than recorded (default: %(default)g)",
        )
        parser.add_argument("--hosts", type=int, default=2, help="simulated GPU hosts (default: %(default)s)")
        parser.add_argument(
            "--gpus-per-host", type=int, default=2, help="simulated GPUs on each host (default: %(default)s)"
        )
        parser.add_argument(
            "--gpu", default="H100", choices=sorted(MODELS), help="simulated GPU model (default: %(default)s)"
        )
        parser.add_argument(
            "--host", default="127.0.0.1", help="address the panel listens on (default: %(default)s; make run: HOST)"
        )
        parser.add_argument(
            "--port", type=int, default=8000, help="port the panel listens on (default: %(default)s; make run: PORT)"
        )
        parser.add_argument(
            "--real-vllm",
            action="store_true",
            help="serve the L pool with one real vLLM CPU server ($FLEET_VLLM_PYTHON) instead of simulated engines",
        )
        parser.add_argument(
            "--model-path", default="", help="with --real-vllm: the model (default: the tiny test model)"
        )
        parser.add_argument(
            "--engine-cold-start",
            type=float,
            metavar="SECONDS",
            help="cold start of the simulated engines (default: the engine model's, 30 s)",
        )

    def handle(self, *args: Any, **opts: Any) -> None:
        # Ctrl-C stops the demo however it was started: a shell starts a script's background job
        # (``make run &``) with SIGINT ignored, and Python then leaves it ignored, so a later
        # ``kill -INT`` (or the Ctrl-C of a terminal it was brought to) would do nothing.
        signal.signal(signal.SIGINT, signal.default_int_handler)
        if opts["speedup"] <= 0 or opts["hosts"] < 1 or opts["gpus_per_host"] < 1:
            raise CommandError("--speedup, --hosts and --gpus-per-host must be positive")
        options = DemoOptions(
            trace=opts["trace"],
            speedup=opts["speedup"],
            hosts=opts["hosts"],
            gpus_per_host=opts["gpus_per_host"],
            gpu=opts["gpu"],
            host=opts["host"],
            port=opts["port"],
            real_vllm=opts["real_vllm"],
            model_path=opts["model_path"] or (_tiny_model() if opts["real_vllm"] else ""),
            engine_cold_start_s=opts["engine_cold_start"],
        )
        port_check(opts["host"], opts["port"])
        call_command("migrate", interactive=False, verbosity=0)
        call_command("collectstatic", interactive=False, verbosity=0)
        setup = demo_prepare(options=options)
        fleet = DemoFleet(options, setup, Path(settings.VAR_DIR))
        self._announce(options, setup, fleet)
        signal.signal(signal.SIGTERM, lambda *_: fleet.stopping.set())
        try:
            fleet.start()
            self.stdout.write(self.style.SUCCESS(f"Demo running: {options.panel_url}/  (Ctrl-C stops everything)"))
            fleet.wait()
        except KeyboardInterrupt:
            pass
        except RuntimeError as exc:
            raise CommandError(str(exc)) from exc
        finally:
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the clean-up short
            self.stdout.write("Stopping the demo: replayer, agents, engines, panel ...")
            fleet.stop()
            self.stdout.write("Demo stopped.")

    def _announce(self, options: DemoOptions, setup: Any, fleet: DemoFleet) -> None:
        gpus = options.hosts * options.gpus_per_host
        lines = [
            "GPU fleet control panel: DEMO with a SIMULATED fleet",
            f"  Dashboard:  {options.panel_url}/   (admin: {options.panel_url}/admin/)",
            f"  Login:      {setup.username} / {setup.password}",
            f"  Simulated:  {options.hosts} hosts x {options.gpus_per_host} {options.gpu} GPUs ({gpus} in all);"
            f"{' the last in MIG mode for the M pool;' if options.mig else ''}"
            " vLLM engines simulated by the engine performance model (fleet.sim.engine), no model runs",
            "  Real:       the panel, its policies and gateway, the agents, the Azure trace"
            f" ({options.trace}) replayed at {options.speedup:g}x through {options.panel_url}/v1/",
            f"  Pools:      {', '.join(setup.pools)} (S / M / L tiers) serving {options.served_name}",
            f"  Logs:       {fleet.logs}",
        ]
        if options.real_vllm:
            lines.insert(
                5, f"  REAL vLLM:  the L pool runs a real vLLM CPU server ({REAL_IMAGE}, {options.model_path})"
            )
        self.stdout.write("\n".join(lines))


def port_check(host: str, port: int) -> None:
    """Refuse a port something already listens on, before the demo touches the database or starts anything."""
    try:
        addresses = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise CommandError(f"cannot listen on {host}: {exc.strerror}") from exc
    family, kind, proto, _name, address = addresses[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server binds: TIME_WAIT is no conflict
        try:
            probe.bind(address)
        except OSError as exc:
            raise CommandError(
                f"port {port} on {host} is in use ({exc.strerror}): stop what listens there or pick another port,"
                f" e.g. make run PORT={port + 1}"
            ) from exc


def _tiny_model() -> str:
    """The tiny random-weight test model, built on first use by the vLLM virtualenv."""
    from tests.support.vllm_server import ensure_tiny_model, vllm_python

    return str(ensure_tiny_model(vllm_python()))
