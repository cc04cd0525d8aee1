"""A wake on a card a batch job borrowed: the agent stops the job's container before it wakes the server."""

from __future__ import annotations

from pathlib import Path

import httpx

from agents import protocol
from agents.agent import Agent, AgentConfig
from tests.agents.test_batch import IMAGE, NODE, FakeEngine, NoGpus, desired_job
from tests.support.specs import instance_spec


class OrderedEngine(FakeEngine):
    """Records batch stops and starts in the same list the wake requests go to."""

    def __init__(self, log: list[str]) -> None:
        super().__init__()
        self.log = log

    def stop_managed(self, container_id: str, timeout_s: int) -> int | None:
        self.log.append(f"stop {container_id}")
        return super().stop_managed(container_id, timeout_s)

    def batch_start(self, spec):  # type: ignore[no-untyped-def]
        self.log.append(f"start job {spec.job_id}")
        return super().batch_start(spec)

    def start(self, spec):  # type: ignore[no-untyped-def]
        self.log.append(f"start instance {spec.instance_id}")
        return super().start(spec)


def agent_with(tmp_path: Path, log: list[str]) -> tuple[Agent, OrderedEngine]:
    engine = OrderedEngine(log)

    def vllm(request: httpx.Request) -> httpx.Response:
        log.append(f"POST {request.url.path}")
        return httpx.Response(200)

    config = AgentConfig(
        panel_url="http://127.0.0.1:1",
        state_dir=tmp_path,
        node_name=NODE,
        attach_gpus=True,
        batch_image_allowlist=("batch/*",),
    )
    agent = Agent(config, gpus=NoGpus(), runtime=engine, http=httpx.Client(transport=httpx.MockTransport(vllm)))  # type: ignore[arg-type]
    return agent, engine


def serve_and_preempt(*, instance_id: int, generation: int) -> protocol.Reply:
    """The panel's one change: the instance told to serve (a wake or a launch), batch job 1 preempted on its card."""
    return protocol.Reply(
        ack_seq=0,
        desired=[
            protocol.DesiredInstance(
                instance_id=instance_id, generation=generation, state="running", spec=instance_spec()
            )
        ],
        batch_jobs=[desired_job(1, 2, "stopped", image=IMAGE)],
        report_interval_s=5.0,
    )


def test_the_preempted_job_leaves_the_card_before_the_instance_wakes(tmp_path: Path) -> None:
    log: list[str] = []
    agent, engine = agent_with(tmp_path, log)
    engine.add("5", 2)  # the instance's server, asleep
    agent.asleep.add("5")
    job = engine.add_job(1, 1)  # the batch job on the memory its sleep freed

    agent.act(serve_and_preempt(instance_id=5, generation=2))

    assert log == [f"stop {job}", "POST /wake_up"]
    [sample] = agent.sense().batch_jobs
    assert (sample.state, sample.exit_code) == ("stopped", 143)


def test_the_preempted_job_leaves_the_card_before_a_new_instance_starts_there(tmp_path: Path) -> None:
    """A launch on a card a job borrowed (no instance held it) preempts the job in the same change."""
    log: list[str] = []
    agent, engine = agent_with(tmp_path, log)
    job = engine.add_job(1, 1)

    agent.act(serve_and_preempt(instance_id=6, generation=1))

    assert log == [f"stop {job}", "start instance 6"]


def test_a_job_starts_after_its_card_was_put_to_sleep(tmp_path: Path) -> None:
    log: list[str] = []
    agent, engine = agent_with(tmp_path, log)
    engine.add("5", 2)
    reply = protocol.Reply(
        ack_seq=0,
        desired=[protocol.DesiredInstance(instance_id=5, generation=2, state="sleeping", spec=instance_spec())],
        batch_jobs=[desired_job(1)],
        report_interval_s=5.0,
    )

    agent.act(reply)

    assert log == ["POST /sleep", "start job 1"]
