"""What the agent will run, decided from the panel's reply and the host's own rules.

The deciding half of the agent: plain functions from the reply, the host's configuration
and what the container engine lists to the containers wanted, or a refusal saying why.
Nothing here opens a socket or calls the engine; what it needs to know about the host (is
a port free, how large is an image) it is handed as a function, so the same decision is
tested without Docker and made by the agent with it (``agents.agent.Agent`` does the I/O).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from agents import protocol
from agents.batch import DesiredJob
from agents.config import AgentConfig
from agents.reconcile import DesiredInstance
from agents.runtime import BatchSpec, ContainerState, ImageMissing, RuntimeFailure, vllm_container_spec

PORT_LABEL = "gpufleet.port"
# Image sizes as Docker shows them: MB of 10^6 bytes.
MB = 1_000_000


@dataclass(frozen=True)
class Refusal:
    """An item of the reply this host will not run, and why (reported back to the panel)."""

    item_id: int
    generation: int
    why: str


def labelled_port(container: ContainerState) -> int | None:
    """The port the agent gave a container when it created it (its label), if any."""
    value = container.labels.get(PORT_LABEL, "")
    return int(value) if value.isdigit() else None


def port_for(
    instance_id: str,
    containers: Iterable[ContainerState],
    taken: set[int],
    *,
    port_range: tuple[int, int],
    port_free: Callable[[int], bool],
) -> int:
    """The instance's own port if its container has one, else the first free port of the range."""
    for container in containers:
        port = labelled_port(container)
        if container.instance_id == instance_id and port is not None:
            return port
    low, high = port_range
    for port in range(low, high + 1):
        if port not in taken and port_free(port):
            return port
    raise RuntimeFailure(f"no free port in {low}-{high}")


def instances_plan(
    desired: Iterable[protocol.DesiredInstance],
    *,
    config: AgentConfig,
    containers: list[ContainerState],
    node_name: str,
    port_free: Callable[[int], bool],
) -> tuple[list[DesiredInstance], list[Refusal]]:
    """The instances wanted on this host, each with its container spec, and the items refused.

    An item is refused when its image is not in the agent's allowlist, when the host policy
    (volumes, environment, vLLM flags, IPC) does not allow its spec, or when no port of the
    agent's range is free; the rest of the reply still runs.
    """
    taken = {port for c in containers if (port := labelled_port(c)) is not None}
    wanted: list[DesiredInstance] = []
    refused: list[Refusal] = []
    for item in desired:
        instance_id = str(item.instance_id)
        if item.state == "stopped":
            wanted.append(DesiredInstance(instance_id, item.generation, "stopped"))
            continue
        if not config.image_allowed(item.spec.image):
            why = f"image {item.spec.image!r} is not in this agent's allowlist"
            refused.append(Refusal(item.instance_id, item.generation, why))
            continue
        policy = config.host_policy
        try:
            policy.check(args=item.spec.extra_args, env=item.spec.env, volumes=item.spec.volumes)
            port = port_for(instance_id, containers, taken, port_range=config.port_range, port_free=port_free)
            taken.add(port)
            spec = vllm_container_spec(
                instance_id=instance_id,
                generation=item.generation,
                profile=item.spec.model_dump(),
                port=port,
                node_name=node_name,
                gpu_uuids=item.spec.gpu_uuids if config.attach_gpus else (),
                mig_uuids=item.spec.mig_uuids if config.attach_gpus else (),
                labels={PORT_LABEL: str(port)},
                listen_host=config.listen_host,
                ipc_host=policy.host_ipc,
                shm_size=None if policy.host_ipc else policy.shm_size,
            )
        except (ValueError, RuntimeFailure) as exc:
            refused.append(Refusal(item.instance_id, item.generation, str(exc)))
            continue
        wanted.append(DesiredInstance(instance_id, item.generation, item.state, spec))
    return wanted, refused


def job_refusal(job: protocol.DesiredBatchJob, *, config: AgentConfig, image_size: Callable[[str], int] | None) -> str:
    """Why this agent will not run the job; empty if it will. Decided before anything is created.

    ``image_size`` reads an image's size from the engine; ``None`` where the runtime cannot run jobs.
    """
    if image_size is None:
        return "this node's container runtime cannot run batch jobs"
    if not config.batch_image_allowed(job.image):
        return f"image {job.image!r} is not in this agent's batch image allowlist"
    limits = [config.batch_max_image_mb * MB]
    if job.max_image_bytes is not None:
        limits.append(job.max_image_bytes)
    try:
        size = image_size(job.image)
    except ImageMissing as exc:
        return str(exc)
    if size > min(limits):
        return f"image {job.image!r} is {size / MB:.1f} MB, over the {min(limits) / MB:.0f} MB limit for batch images"
    return ""


def job_plan(
    job: protocol.DesiredBatchJob,
    *,
    config: AgentConfig,
    node_name: str,
    image_size: Callable[[str], int] | None,
) -> tuple[DesiredJob, str]:
    """The job as this host will run it, and why it will not (empty when it will): a refused job is stopped."""
    if job.state == "stopped":
        return DesiredJob(job.job_id, job.generation, "stopped"), ""
    why = job_refusal(job, config=config, image_size=image_size)
    if not why:
        try:
            spec = BatchSpec(
                job_id=job.job_id,
                generation=job.generation,
                image=job.image,
                node_name=node_name,
                command=job.command,
                gpu_uuids=job.gpu_uuids if config.attach_gpus else (),
                gpu_memory_bytes=job.memory_bytes,
                host_memory_bytes=config.batch_host_memory_bytes,
            )
        except ValueError as exc:
            why = str(exc)
        else:
            return DesiredJob(job.job_id, job.generation, "running", spec), ""
    return DesiredJob(job.job_id, job.generation, "stopped"), why
