"""A simulated host's backends: the process runtime under real reconcile, simulated GPUs under real engine load."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx
import pytest

from agents import __main__ as agent_cli
from agents.processes import Launcher, ProcessRuntime
from agents.reconcile import DesiredInstance, Restart, Start, Stop, apply, reconcile
from agents.runtime import ContainerSpec, ImageMissing
from agents.simulated import SimulatedGpus, gpus_parse
from fleet.demo.engine_server import device_model
from fleet.sim.engine import engine_model_for
from tests.support.sim_engine import SERVED, SimEngine, process_running

SLEEPER = Launcher.parse("test/sleeper:*={python} -c 'import time, sys; time.sleep(600)'")
CRASHER = Launcher.parse("test/crasher:*={python} -c 'import sys; sys.exit(3)'")


def spec(generation: int = 1, image: str = "test/sleeper:1", node: str = "node-a") -> ContainerSpec:
    return ContainerSpec(
        instance_id="7", generation=generation, image=image, node_name=node, port=18123, command=("--port", "18123")
    )


def converge(runtime: ProcessRuntime, *wanted: DesiredInstance) -> list[object]:
    actions = reconcile(list(wanted), runtime.list_managed(), stop_timeout_s=5)
    results = apply(actions, runtime)
    assert all(result.ok for result in results), results
    return actions


def test_process_runtime_starts_adopts_after_an_agent_restart_and_stops(tmp_path: Path) -> None:
    running = DesiredInstance("7", 1, "running", spec())
    runtime = ProcessRuntime(tmp_path, "node-a", [SLEEPER])
    assert [type(a) for a in converge(runtime, running)] == [Start]
    [state] = runtime.list_managed()
    pid = int(state.container_id.removeprefix("pid-"))
    assert (state.instance_id, state.generation, state.status, state.name) == ("7", 1, "running", "gpufleet-7-g1")
    assert process_running(pid)

    restarted = ProcessRuntime(tmp_path, "node-a", [SLEEPER])  # a new agent process reads the records
    assert converge(restarted, running) == []
    assert restarted.start(spec()).container_id == f"pid-{pid}", "a repeated start adopts"
    assert [s.container_id for s in restarted.list_managed()] == [f"pid-{pid}"]
    assert ProcessRuntime(tmp_path, "node-b", [SLEEPER]).list_managed() == [], "another node's processes are unseen"

    assert [type(a) for a in converge(restarted, DesiredInstance("7", 1, "stopped"))] == [Stop]
    assert not process_running(pid)
    assert restarted.list_managed() == []


def test_a_crashed_process_is_reported_with_its_exit_code_and_restarted(tmp_path: Path) -> None:
    runtime = ProcessRuntime(tmp_path, "node-a", [CRASHER, SLEEPER])
    runtime.start(spec(image="test/crasher:1"))
    deadline = time.monotonic() + 10
    while runtime.list_managed()[0].status == "running":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    [state] = runtime.list_managed()
    assert (state.status, state.exit_code, state.error) == ("exited", 3, "exit code 3")
    wanted = DesiredInstance("7", 1, "running", spec(image="test/crasher:1"))
    assert [type(a) for a in reconcile([wanted], [state])] == [Restart]


def test_an_image_without_a_launcher_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ImageMissing, match="no launcher"):
        ProcessRuntime(tmp_path, "node-a", [SLEEPER]).start(spec(image="vllm/vllm-openai:v0.11.0"))


def test_simulated_gpu_utilization_and_memory_follow_the_engine_on_it(tmp_path: Path) -> None:
    gpus = SimulatedGpus(gpus_parse("H100x2"), node_name="sim-a", state_dir=tmp_path)
    engine_spec = ContainerSpec(
        instance_id="1", generation=1, image="simulated/vllm:x", node_name="sim-a", port=1, gpu_uuids=[gpus.uuids[1]]
    )
    idle = gpus.read()
    assert [g.name for g in idle.gpus] == ["Simulated NVIDIA H100 80GB HBM3"] * 2
    assert all(g.uuid and g.uuid.startswith("GPU-simulated-") for g in idle.gpus)
    assert [g.memory_used_bytes for g in idle.gpus] == [0, 0]

    with SimEngine(tmp_path, env=gpus.engine_env(engine_spec)) as engine:
        time.sleep(0.5)
        quiet = gpus.read().gpus
        card = quiet[1].memory_total_bytes
        assert card is not None and quiet[1].memory_used_bytes == int(card * 0.9), "vLLM takes 0.9 of the card"
        assert (quiet[0].memory_used_bytes, quiet[1].utilization_gpu_pct) == (0, 0)

        loaded: list[int | None] = []
        body = {"model": SERVED, "prompt": "the " * 2000, "max_tokens": 600}
        http = httpx.Client(timeout=60)
        url = f"{engine.base_url}/v1/completions"
        senders = [threading.Thread(target=http.post, args=(url,), kwargs={"json": body}) for _ in range(8)]
        for sender in senders:
            sender.start()
        time.sleep(1.5)
        busy = gpus.read().gpus
        loaded.append(busy[1].utilization_gpu_pct)
        for sender in senders:
            sender.join()
        assert loaded[0] is not None and loaded[0] >= 60, loaded
        assert busy[0].utilization_gpu_pct == 0, "the other card carries nothing"
        assert busy[1].power_watts is not None and quiet[1].power_watts is not None
        assert busy[1].power_watts > quiet[1].power_watts
        assert [p.pid for p in busy[1].processes or []] == [engine.process.pid if engine.process else -1]
        time.sleep(1.6)
        assert gpus.read().gpus[1].utilization_gpu_pct == 0, "idle again once the requests are done"


def test_the_agent_command_line_selects_the_simulated_backends(tmp_path: Path) -> None:
    common = ["--panel", "http://127.0.0.1:8000", "--state-dir", str(tmp_path), "--name", "sim-a"]
    args = agent_cli.parse_args(
        [*common, "--simulated-gpus", "H100,H100-mig", "--runtime", "process", "--launcher", "simulated/*=x"]
    )
    config = agent_cli.config_from(args)
    gpus, runtime = agent_cli.backends(args, config)
    assert config.simulated
    assert isinstance(gpus, SimulatedGpus) and [c.mig for c in gpus.cards] == [False, True]
    assert isinstance(runtime, ProcessRuntime) and runtime.env_for == gpus.engine_env
    assert not agent_cli.config_from(agent_cli.parse_args(common)).simulated
    for wrong in (["--runtime", "process"], ["--simulated-gpus", "L4-mig"], ["--launcher", "no-equals-sign"]):
        with pytest.raises(SystemExit):
            agent_cli.parse_args([*common, *wrong])


def test_an_engine_on_a_mig_slice_gets_the_slices_memory_and_share_of_the_card(tmp_path: Path) -> None:
    gpus = SimulatedGpus(gpus_parse("H100-mig"), node_name="sim-a", state_dir=tmp_path)
    slice_uuid = gpus.mig_uuids[0][1]
    env = gpus.engine_env(
        ContainerSpec(
            instance_id="1", generation=1, image="simulated/x", node_name="sim-a", port=1, mig_uuids=[slice_uuid]
        )
    )
    assert env["CUDA_VISIBLE_DEVICES"] == slice_uuid
    assert int(env["GPUFLEET_SIM_GPU_MEMORY_BYTES"]) == 20_096 * 2**20
    whole = engine_model_for("H100")
    sliced = device_model(
        whole,
        compute_share=float(env["GPUFLEET_SIM_MIG_SHARE"]),
        bandwidth_share=float(env["GPUFLEET_SIM_MIG_MEMORY_SHARE"]),
    )
    assert sliced.prefill_tokens_per_s == pytest.approx(whole.prefill_tokens_per_s * 2 / 7)
    assert sliced.decode_step_base_s == pytest.approx(whole.decode_step_base_s * 81_559 / 20_096, rel=1e-5)
    assert device_model(whole, compute_share=1.0, bandwidth_share=1.0) == whole
