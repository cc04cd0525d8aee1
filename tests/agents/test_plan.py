"""The agent's deciding half without Docker: which instances run, on which ports, and what is refused."""

from __future__ import annotations

from pathlib import Path

from agents import protocol
from agents.config import AgentConfig
from agents.plan import MB, PORT_LABEL, instances_plan, job_plan
from agents.runtime import ContainerState, ImageMissing
from tests.support.specs import instance_spec


def desired(instance_id: int, **overrides: object) -> protocol.DesiredInstance:
    image = str(overrides.pop("image", "vllm/vllm-openai:v0.11.0"))
    return protocol.DesiredInstance(
        instance_id=instance_id,
        generation=3,
        state="running",
        spec=instance_spec(image=image, gpu_uuids=["GPU-1"], **overrides),
    )


def config(tmp_path: Path, **fields: object) -> AgentConfig:
    return AgentConfig(panel_url="http://127.0.0.1:8000", state_dir=tmp_path, node_name="h", **fields)  # type: ignore[arg-type]


def container(instance_id: str, port: int) -> ContainerState:
    return ContainerState(
        container_id=f"c{instance_id}",
        instance_id=instance_id,
        generation=3,
        status="running",
        exit_code=None,
        started_at=None,
        labels={PORT_LABEL: str(port)},
    )


def test_ports_come_from_the_range_skipping_taken_and_busy_ones_and_a_running_container_keeps_its_own(
    tmp_path: Path,
) -> None:
    """Range 8100-8104; instance 1's container holds 8103; the host says 8100 is busy.
    Instance 1 keeps 8103; instance 2 gets 8101 (8100 busy); instance 3 gets 8102; instance 4
    gets 8104 (8103 is taken by instance 1's label); instance 5 finds none and is refused."""
    wanted, refused = instances_plan(
        [desired(i) for i in (1, 2, 3, 4, 5)],
        config=config(tmp_path, port_range=(8100, 8104)),
        containers=[container("1", 8103)],
        node_name="h",
        port_free=lambda port: port != 8100,
    )
    ports = {w.instance_id: w.spec.labels[PORT_LABEL] for w in wanted if w.spec is not None}
    assert ports == {"1": "8103", "2": "8101", "3": "8102", "4": "8104"}
    assert [(r.item_id, r.generation, r.why) for r in refused] == [(5, 3, "no free port in 8100-8104")]


def test_an_image_or_flag_the_host_does_not_allow_is_refused_and_the_rest_still_runs(tmp_path: Path) -> None:
    wanted, refused = instances_plan(
        [desired(1, image="evil/miner:latest"), desired(2, extra_args=["--trust_remote_code"]), desired(3)],
        config=config(tmp_path),
        containers=[],
        node_name="h",
        port_free=lambda port: True,
    )
    assert [w.instance_id for w in wanted] == ["3"]
    assert [r.item_id for r in refused] == [1, 2]
    assert "allowlist" in refused[0].why
    assert "trust-remote-code" in refused[1].why


def test_a_job_over_the_image_size_limit_or_on_a_runtime_without_jobs_is_stopped_with_the_reason(
    tmp_path: Path,
) -> None:
    """Limit: the smaller of the agent's 200 MB and the job's 150 MB; the image is 180 MB."""
    job = protocol.DesiredBatchJob(
        job_id=7,
        generation=1,
        state="running",
        image="batch/x:1",
        command=[],
        memory_bytes=1,
        gpu_uuids=["GPU-1"],
        max_image_bytes=150 * MB,
    )
    cfg = config(tmp_path, batch_image_allowlist=("batch/*",))
    planned, why = job_plan(job, config=cfg, node_name="h", image_size=lambda image: 180 * MB)
    assert planned.state == "stopped" and why == "image 'batch/x:1' is 180.0 MB, over the 150 MB limit for batch images"
    planned, why = job_plan(job, config=cfg, node_name="h", image_size=lambda image: 100 * MB)
    assert planned.state == "running" and why == "" and planned.spec is not None
    planned, why = job_plan(job, config=cfg, node_name="h", image_size=None)
    assert planned.state == "stopped" and "cannot run batch jobs" in why

    def missing(image: str) -> int:
        raise ImageMissing(f"image {image!r} is not on this host")

    planned, why = job_plan(job, config=cfg, node_name="h", image_size=missing)
    assert planned.state == "stopped" and why == "image 'batch/x:1' is not on this host"
