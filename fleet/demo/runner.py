"""The one-command demo: a SIMULATED fleet served through the real panel, agents and gateway.

``python manage.py demo`` (what ``make run`` runs) prepares the database with
``demo_prepare`` and then runs a ``DemoFleet``: the panel (uvicorn serving
``fleet.project.asgi:application``, whose in-process scheduler runs the policies), one real
agent process per simulated host (``python -m agents --simulated-gpus ... --runtime
process``), and the replayer sending a real Azure trace through the panel's gateway.
The agents start simulated vLLM engines (``fleet.demo.engine_server``) as the policies
ask, so placement, autoscaling, idle reclaim, routing and accounting are the production
code paths; only the GPUs and the engines are simulated, and they are labelled so: the
nodes are marked simulated, GPU names start with "Simulated", and the engines' model
profiles carry "simulated" in their names. The pools (``demo-s``, ``-m``, ``-l``) are the
panel's own: with ``real_vllm`` the L pool is served by one real vLLM (CPU build) instead.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, replace
from decimal import Decimal
from pathlib import Path

import httpx
from django.contrib.auth import get_user_model
from django.db import transaction
from django.utils import timezone

from agents.processes import ProcessRuntime
from agents.simulated import MODELS, simulated_name
from fleet.decide.profiles import model_profile_update_or_create, pool_update_or_create
from fleet.decide.services import api_key_create, instance_desire, join_token_create, node_decommission
from fleet.models import (
    AlertRule,
    ApiKey,
    Budget,
    Instance,
    JoinToken,
    ModelProfile,
    Node,
    Policy,
    Pool,
    PriceRate,
    Team,
)
from fleet.policies.vram import vram_estimate_for
from fleet.presets import presets_install, price_presets, profile_presets

SIMULATED_IMAGE = "simulated/vllm:qwen3-4b"
SIMULATED_LAUNCHER = "simulated/vllm:*={python} -m fleet.demo.engine_server"
REAL_IMAGE = "vllm/vllm-openai:cpu"
# The panel's HTTP protocol: uvicorn's, with deadlines for receiving a request (fleet.project.http).
UVICORN_PROTOCOL = "fleet.project.http:ReadDeadlineProtocol"
REAL_VLLM_ENV = "FLEET_VLLM_PYTHON"
# A CPU server is slow: short contexts, and one instance only (each takes gigabytes of memory).
REAL_MAX_MODEL_LEN = 2048
DEMO_USER = "demo"
TEAM_SLUG = "demo-simulated-traffic"
JOIN_TOKEN_NAME = "demo fleet (simulated hosts)"
DEMO = "demo"  # who decided, in the decision log
AGENT_INTERVAL_S = 2.0
READY_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 15.0

logging.getLogger("httpx").setLevel(logging.WARNING)
# The method's idle stages (5 minutes to the first, 10 to the stop) in trace time: at a
# speed-up they pass that much faster on the wall clock, but never under the policy tick.
IDLE_MINIMIZE_S = 300
IDLE_STOP_S = 600
MIN_IDLE_S = 30


@dataclass(frozen=True)
class TierPlan:
    """One demo pool: the method's tier, its isolation, SLA and instance bounds."""

    tier: str
    isolation: str
    sla_latency_ms: int
    gpu_memory_utilization: float
    min_instances: int
    max_instances: int


# S: exclusive GPUs, P95 <= 450 ms; M: MIG slices, utilization target 55% (band 50-65%);
# L: shared GPUs, P95 <= 600 ms tolerated (METHOD.md step 3). Shared instances take 0.3 of
# a card, so three fit on one; a MIG instance takes 0.9 of its slice. On four cards or more
# (the default) S keeps two exclusive cards warm, as an operator anxious about its strict
# SLA might set it: the replayed trace's busiest hour needs one and two warm cards keep its P95
# TTFT far under 450 ms, so the recommendations page prices lowering that minimum (it asks for
# the SLA met too). On fewer, S keeps one, leaving the others their cards.
TIER_S = TierPlan("S", Pool.Isolation.EXCLUSIVE, 450, 0.90, 2, 2)
TIER_S_FEW_CARDS = replace(TIER_S, min_instances=1)
S_WARM_MIN_CARDS = 4
TIER_M_MIG = TierPlan("M", Pool.Isolation.MIG, 500, 0.90, 1, 3)
TIER_M_SHARED = TierPlan("M", Pool.Isolation.SHARED, 500, 0.30, 1, 3)
TIER_L = TierPlan("L", Pool.Isolation.SHARED, 600, 0.30, 1, 3)
# One card each for S, L and M's MIG slices; with fewer, M shares cards with L.
MIG_MIN_CARDS = 3


@dataclass(frozen=True)
class DemoOptions:
    trace: str = "conv"
    speedup: float = 1.0
    hosts: int = 2
    gpus_per_host: int = 2
    gpu: str = "H100"
    host: str = "127.0.0.1"
    port: int = 8000
    real_vllm: bool = False
    model_path: str = ""
    engine_cold_start_s: float | None = None

    @property
    def use_case(self) -> str:
        return "code" if self.trace in ("code", "azure-code") else "chat"

    @property
    def served_name(self) -> str:
        """Neutral: with ``real_vllm`` one pool serving it is real; profiles and pools say which."""
        return f"demo-qwen3-4b-{self.use_case}"

    @property
    def panel_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def mig(self) -> bool:
        """Whether the last card runs in MIG mode for the M pool."""
        return MODELS[self.gpu].mig is not None and self.hosts * self.gpus_per_host >= MIG_MIN_CARDS

    @property
    def tiers(self) -> tuple[TierPlan, ...]:
        tier_s = TIER_S if self.hosts * self.gpus_per_host >= S_WARM_MIN_CARDS else TIER_S_FEW_CARDS
        return (tier_s, TIER_M_MIG if self.mig else TIER_M_SHARED, TIER_L)

    def host_gpus(self, index: int) -> str:
        """The ``--simulated-gpus`` of one host: the last host's last card in MIG mode when ``mig``."""
        if not self.mig or index != self.hosts - 1:
            return f"{self.gpu}x{self.gpus_per_host}"
        plain = f"{self.gpu}x{self.gpus_per_host - 1}," if self.gpus_per_host > 1 else ""
        return f"{plain}{self.gpu}-mig"


@dataclass(frozen=True)
class DemoSetup:
    username: str
    password: str
    api_key: str
    join_token: str
    pools: tuple[str, ...]


def demo_login_create(*, username: str = DEMO_USER) -> str:
    """A superuser for the demo with a fresh password, returned to be printed."""
    password = secrets.token_urlsafe(9)
    User = get_user_model()
    user, _ = User.objects.get_or_create(username=username)
    user.is_staff = user.is_superuser = True
    user.set_password(password)
    user.save()
    return password


def _memory_share(options: DemoOptions, plan: TierPlan, preset: dict) -> float:
    """A shared pool's share of the card: the plan's, or what the VRAM estimate needs on small cards.

    Placement refuses an instance whose budget (share x card) is below the estimate, so on a
    24 GB card a shared instance takes half of it, where on an 80 GB card it takes 0.3.
    """
    if plan.isolation != Pool.Isolation.SHARED:
        return plan.gpu_memory_utilization
    estimate = vram_estimate_for(ModelProfile(**preset))
    assert estimate is not None, preset["model"]
    needed = math.ceil(estimate.required_bytes * 1.02 / MODELS[options.gpu].memory_bytes * 20) / 20
    return min(0.9, max(plan.gpu_memory_utilization, needed))


def _profile(options: DemoOptions, plan: TierPlan) -> ModelProfile:
    preset = next(p for p in profile_presets() if p["use_case"] == options.use_case and p["quantization"] == "")
    real = options.real_vllm and plan.tier == "L"
    name = f"demo-qwen3-4b-{options.use_case}-{plan.tier.lower()}-{'real-vllm-cpu' if real else 'simulated'}"
    values = {
        **preset,
        "name": name,
        "image": REAL_IMAGE if real else SIMULATED_IMAGE,
        "served_name": options.served_name,
        "gpu_memory_utilization": _memory_share(options, plan, preset),
        "enable_sleep_mode": not real,
        "notes": (
            "Demo: a REAL vLLM server (CPU build, tiny random-weight model) serving the L pool."
            if real
            else "Demo: served by SIMULATED vLLM engines (fleet.demo.engine_server); no model runs."
        ),
    }
    if real:
        tokenizer = Path(options.model_path) / "tokenizer.json"
        values.update(
            model=options.model_path,
            tokenizer=str(tokenizer) if tokenizer.is_file() else "",
            dtype="float32",
            max_model_len=REAL_MAX_MODEL_LEN,
            max_num_seqs=4,
            extra_args=["--max-num-batched-tokens", str(REAL_MAX_MODEL_LEN), "--enforce-eager", "--seed", "0"],
        )
    return model_profile_update_or_create(name=name, values=values)


def _idle_s(seconds: int, speedup: float) -> int:
    return max(MIN_IDLE_S, round(seconds / speedup))


@transaction.atomic
def demo_prepare(*, options: DemoOptions) -> DemoSetup:
    """Reset the previous demo fleet and create its pools, prices, team key, join token and login.

    Only demo objects are touched: simulated nodes, the demo pools' instances, demo
    profiles, pools, team and token. A user's own fleet in the same database is left alone.
    The previous run's hosts are decommissioned, not deleted: what they cost stays in the
    periods it was spent in, and this run's hosts join again under the same names.
    """
    presets_install(ModelProfile=ModelProfile, PriceRate=PriceRate, Policy=Policy)  # the method's default policies
    pool_names = tuple(f"demo-{plan.tier.lower()}" for plan in options.tiers)
    for node in Node.objects.filter(simulated=True, decommissioned_at__isnull=True):
        node_decommission(node=node, reason=f"demo reset: {node.name} was an earlier run's host", kind=DEMO)
    # Any demo instance still wanted (one never placed) would keep its pool from waking.
    for instance in Instance.objects.filter(pool__name__in=pool_names).exclude(desired_state=Instance.Desired.STOPPED):
        instance_desire(
            instance=instance, state=Instance.Desired.STOPPED, reason="demo reset", action="stop", kind=DEMO
        )
    JoinToken.objects.filter(name=JOIN_TOKEN_NAME, revoked_at__isnull=True).update(revoked_at=timezone.now())
    card = simulated_name(MODELS[options.gpu])
    layout = MODELS[options.gpu].mig
    for plan, name in zip(options.tiers, pool_names, strict=True):
        pool_update_or_create(
            name=name,
            values=dict(
                tier=plan.tier,
                isolation=plan.isolation,
                model_profile=_profile(options, plan),
                gpu_model=card,
                mig_profile=layout.profile if plan.isolation == Pool.Isolation.MIG and layout else "",
                sla_latency_ms=plan.sla_latency_ms,
                min_instances=plan.min_instances,
                max_instances=1 if options.real_vllm and plan.tier == "L" else plan.max_instances,
                idle_minimize_after_s=_idle_s(IDLE_MINIMIZE_S, options.speedup),
                idle_stop_after_s=_idle_s(IDLE_STOP_S, options.speedup),
                enabled=True,
            ),
        )
    for rate in price_presets():
        if rate["gpu_model"] == MODELS[options.gpu].nvml_name:
            PriceRate.objects.update_or_create(
                gpu_model=card,
                node=None,
                currency=rate["currency"],
                effective_from=rate["effective_from"],
                defaults={**rate, "gpu_model": card, "source": f"{rate['source']} (applied to the simulated card)"},
            )
    team, _ = Team.objects.get_or_create(slug=TEAM_SLUG, defaults={"name": "Demo traffic (simulated fleet)"})
    ApiKey.objects.filter(team=team, revoked_at__isnull=True).update(revoked_at=timezone.now())
    _key, api_key = api_key_create(team=team, name="demo replayer")
    _token, join_token = join_token_create(name=JOIN_TOKEN_NAME, max_uses=options.hosts)
    _seed_budget_and_alerts(team=team)
    return DemoSetup(DEMO_USER, demo_login_create(), api_key, join_token, pool_names)


# The demo's budget and alert rules, so the costs and alerts pages have something to show. The
# budget has no hard stop: reaching it warns, and never blocks the replayer's traffic.
DEMO_BUDGET = "demo: daily budget of the demo team"
# Notices go to the panel's mail backend: with the default console backend they are printed in its log.
DEMO_ALERT_EMAIL = "demo@localhost"
DEMO_ALERT_RULES: tuple[tuple[str, str, Decimal | None], ...] = (
    ("demo: budget threshold", AlertRule.Kind.BUDGET, None),
    ("demo: SLA breach", AlertRule.Kind.SLA_BREACH, None),
    ("demo: idle waste over 1/h", AlertRule.Kind.IDLE_WASTE, Decimal("1")),
    ("demo: node silent for 60 s", AlertRule.Kind.NODE_SILENT, Decimal("60")),
)


def _seed_budget_and_alerts(*, team: Team) -> None:
    """One daily team budget and a few fleet-wide alert rules, created once and reset on each run."""
    budget, _ = Budget.objects.update_or_create(
        name=DEMO_BUDGET,
        team=team,
        defaults=dict(
            period=Budget.Period.DAY,
            amount=Decimal("25.00"),
            soft_threshold_pct=80,
            hard_threshold_pct=None,
            enabled=True,
        ),
    )
    budget.full_clean()
    for name, kind, threshold in DEMO_ALERT_RULES:
        rule, _ = AlertRule.objects.update_or_create(
            name=name,
            defaults=dict(
                kind=kind,
                pool=None,
                threshold=threshold,
                window_s=300,
                for_s=0,
                email_to=DEMO_ALERT_EMAIL,
                enabled=True,
            ),
        )
        rule.full_clean()


# -- the processes ------------------------------------------------------------------------


def _host_name(index: int) -> str:
    return f"simulated-host-{index + 1}"


class DemoFleet:
    """Starts the panel, the agents and the replayer; stops all of them, engines included."""

    def __init__(self, options: DemoOptions, setup: DemoSetup, var_dir: Path) -> None:
        self.options, self.setup = options, setup
        self.dir = var_dir / "demo"
        self.logs = self.dir / "logs"
        self.processes: list[tuple[str, subprocess.Popen[bytes]]] = []
        self.stopping = threading.Event()

    def _spawn(self, name: str, argv: list[str], *, env: dict[str, str] | None = None, log: bool = True) -> None:
        output = (self.logs / f"{name}.log").open("ab") if log else None
        process = subprocess.Popen(
            argv,
            stdout=output,
            stderr=subprocess.STDOUT if log else None,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})},
            start_new_session=True,
        )
        self.processes.append((name, process))

    def _wait_for_panel(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            self._check_alive()
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.options.panel_url}/admin/login/", timeout=2.0).status_code == 200:
                    return
            time.sleep(0.3)
        raise RuntimeError(f"the panel did not answer within {READY_TIMEOUT_S:.0f} s; see {self.logs}/panel.log")

    def _check_alive(self) -> None:
        for name, process in self.processes:
            if process.poll() is not None:
                raise RuntimeError(f"{name} exited with code {process.returncode}; see {self.logs}/{name}.log")

    def _agent_argv(self, index: int) -> list[str]:
        low = 20000 + 100 * index
        argv = [
            sys.executable, "-m", "agents",
            "--panel", self.options.panel_url,
            "--name", _host_name(index),
            "--state-dir", str(self.dir / "hosts" / _host_name(index)),
            "--interval", str(AGENT_INTERVAL_S),
            "--port-range", f"{low}-{low + 99}",
            "--simulated-gpus", self.options.host_gpus(index),
            "--runtime", "process",
            "--launcher", self._simulated_launcher(),
            "--allow-image", SIMULATED_IMAGE,
        ]  # fmt: skip
        if self.options.real_vllm:
            python = os.environ.get(REAL_VLLM_ENV) or "python"
            argv += [
                "--launcher", f"{REAL_IMAGE}={shlex.quote(python)} -m vllm.entrypoints.openai.api_server",
                "--allow-image", REAL_IMAGE,
            ]  # fmt: skip
        return argv

    def _simulated_launcher(self) -> str:
        cold = self.options.engine_cold_start_s
        return SIMULATED_LAUNCHER if cold is None else f"{SIMULATED_LAUNCHER} --cold-start-s {cold:g}"

    def _engines_stop(self) -> None:
        """Stop every engine a host of this or an earlier demo run left, by the agents' records."""
        hosts = self.dir / "hosts"
        for state_dir in sorted(hosts.iterdir()) if hosts.is_dir() else []:
            ProcessRuntime(state_dir, state_dir.name, ()).stop_all(STOP_TIMEOUT_S)

    def start(self) -> None:
        """Start from fresh hosts: the database's simulated nodes are gone, so are their tokens."""
        self._engines_stop()
        shutil.rmtree(self.dir / "hosts", ignore_errors=True)
        self.logs.mkdir(parents=True, exist_ok=True)
        options = self.options
        self._spawn(
            "panel",
            [sys.executable, "-m", "uvicorn", "fleet.project.asgi:application", "--host", options.host,
             "--port", str(options.port), "--http", UVICORN_PROTOCOL, "--log-level", "warning"],
        )  # fmt: skip
        self._wait_for_panel()
        agent_env = {"GPUFLEET_JOIN_TOKEN": self.setup.join_token}
        if options.real_vllm:
            agent_env.update({"HF_HUB_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1", "VLLM_CPU_KVCACHE_SPACE": "1"})
        for index in range(options.hosts):
            self._spawn(f"agent-{_host_name(index)}", self._agent_argv(index), env=agent_env)
        self._spawn(
            "replay",
            [sys.executable, "-m", "fleet.sim.replay", "--base-url", f"{options.panel_url}/v1",
             "--model", options.served_name, "--trace", options.trace, "--speedup", str(options.speedup)],
            env={"GPUFLEET_API_KEY": self.setup.api_key},
            log=False,
        )  # fmt: skip

    def wait(self) -> None:
        """Until asked to stop; a child that dies on its own stops the demo with its name."""
        while not self.stopping.wait(1.0):
            self._check_alive()

    def stop(self) -> None:
        """The replayer and the agents, then the engines they left (by their records), then the panel."""
        self.stopping.set()
        _terminate([process for name, process in self.processes if name != "panel"])
        self._engines_stop()
        _terminate([process for name, process in self.processes if name == "panel"])


def _terminate(processes: list[subprocess.Popen[bytes]]) -> None:
    """SIGTERM to every one at once, then wait for them together, killing what still runs after
    ``STOP_TIMEOUT_S``: their stops overlap, so Ctrl-C takes the slowest one's time, not the sum of
    them all (an agent finishing its report, each of several hosts)."""
    running = [process for process in processes if process.poll() is None]
    for process in running:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT_S
    for process in running:
        try:
            process.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
