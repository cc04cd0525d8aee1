"""The agent API: register with a join token, report in batches, get the desired state back."""

from __future__ import annotations

import gzip
import json
import time
from datetime import timedelta
from typing import Any

import pytest
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from agents import protocol
from fleet.decide.services import node_create, node_decommission, node_token_rotate
from fleet.models import Gpu, GpuSample, Instance, InstanceEvent, InstanceSample, JoinToken, Node
from fleet.tokens import token_hash
from tests.factories import make_gpu, make_instance, make_pool

pytestmark = pytest.mark.django_db

H100 = "NVIDIA H100 80GB HBM3"


def join_token(**kwargs: Any) -> str:
    token = JoinToken(name="rollout", **kwargs)
    secret = token.issue_token()
    token.save()
    return secret


def register(client: Client, token: str, name: str = "gpu-a") -> Any:
    body = {"join_token": token, "name": name, "hostname": f"{name}.local", "agent_version": "0.1.0"}
    return client.post(reverse("agent-register"), json.dumps(body), content_type="application/json")


def test_register_with_a_join_token_returns_a_node_token_stored_hashed(client: Client) -> None:
    response = register(client, join_token())
    assert response.status_code == 201
    body = response.json()
    node = Node.objects.get(name="gpu-a")
    assert node.token_hash == token_hash(body["node_token"])
    assert body["node_token"] not in str(Node.objects.filter(pk=node.pk).values().get())


def test_single_use_join_token_works_once(client: Client) -> None:
    token = join_token(max_uses=1)
    assert register(client, token, "gpu-a").status_code == 201
    second = register(client, token, "gpu-b")
    assert second.status_code == 401
    assert "used up" in second.json()["error"]["message"]
    assert not Node.objects.filter(name="gpu-b").exists()


def test_multi_use_join_token_registers_many_hosts(client: Client) -> None:
    token = join_token(max_uses=None)
    assert [register(client, token, f"gpu-{n}").status_code for n in range(3)] == [201, 201, 201]


def test_expired_or_revoked_join_tokens_are_refused(client: Client) -> None:
    assert register(client, join_token(expires_at=timezone.now() - timedelta(minutes=1))).status_code == 401
    assert register(client, join_token(revoked_at=timezone.now())).status_code == 401
    assert register(client, "gfj_not-a-token").status_code == 401
    assert not Node.objects.exists()


def test_a_taken_node_name_is_refused_and_the_use_not_spent(client: Client) -> None:
    node_create(name="gpu-a")
    token = join_token(max_uses=1)
    response = register(client, token, "gpu-a")
    assert response.status_code == 409
    assert JoinToken.objects.get().uses == 0


def gpu_reading(index: int = 0, uuid: str = "GPU-aaaa-0", util: float = 42.0) -> dict[str, Any]:
    return {
        "index": index,
        "uuid": uuid,
        "name": H100,
        "memory_total_bytes": 85_520_809_984,
        "memory_used_bytes": 1_000_000_000,
        "utilization_gpu_pct": util,
        "sm_activity_pct": util / 2,
        "power_watts": 250.5,
        "energy_joules": 1.0e9,
        "temperature_c": 45,
        "mig_enabled": False,
    }


def report(seq: int, gpus: list[dict[str, Any]] | None = None, instances: list[dict[str, Any]] | None = None) -> dict:
    return {
        "seq": seq,
        "sampled_at": time.time() - 100 + seq,
        "host": {"hostname": "gpu-a.local", "agent_version": "0.1.0", "nvml_available": True},
        "gpus": gpus if gpus is not None else [gpu_reading()],
        "instances": instances or [],
    }


def batch(node: str, *reports: dict[str, Any], dropped: int = 0) -> dict[str, Any]:
    return {"version": 1, "node": node, "reports": list(reports), "dropped": dropped}


class Agent:
    """An HTTP client holding one node's token."""

    def __init__(self, client: Client, name: str = "gpu-a") -> None:
        self.node, self.token = node_create(name=name)
        self.client = client

    def post(self, body: Any, *, token: str | None = None, gzipped: bool = False, raw: bytes | None = None) -> Any:
        data = raw if raw is not None else json.dumps(body).encode()
        headers = {"HTTP_AUTHORIZATION": f"Bearer {token or self.token}"}
        if gzipped:
            data = gzip.compress(data)
            headers["HTTP_CONTENT_ENCODING"] = "gzip"
        return self.client.post(reverse("agent-report"), data, content_type="application/json", **headers)


@pytest.fixture
def agent(client: Client) -> Agent:
    return Agent(client)


def stored() -> tuple[int, int, int]:
    return Gpu.objects.count(), GpuSample.objects.count(), InstanceSample.objects.count()


def test_report_creates_gpus_stores_samples_and_marks_the_node_online(agent: Agent) -> None:
    response = agent.post(batch("gpu-a", report(1), report(2, [gpu_reading(util=55)]), dropped=3))
    assert response.status_code == 200, response.content
    assert response.json()["ack_seq"] == 2
    gpu = Gpu.objects.get(node=agent.node)
    assert (gpu.model_name, gpu.mig_mode, gpu.mig_capable) == (H100, "disabled", True)
    assert list(GpuSample.objects.order_by("at").values_list("utilization_gpu_pct", flat=True)) == [42.0, 55.0]
    agent.node.refresh_from_db()
    assert (agent.node.status, agent.node.last_seq, agent.node.reports_dropped) == ("online", 2, 3)
    assert agent.node.nvml_available is True


def test_gzip_reports_are_accepted(agent: Agent) -> None:
    assert agent.post(batch("gpu-a", report(1)), gzipped=True).status_code == 200
    assert GpuSample.objects.count() == 1


def test_a_report_sent_twice_is_stored_once(agent: Agent) -> None:
    first = agent.post(batch("gpu-a", report(1), report(2)))
    again = agent.post(batch("gpu-a", report(2), report(3)))
    assert (first.json()["ack_seq"], again.json()["ack_seq"]) == (2, 3)
    assert GpuSample.objects.count() == 3


def test_reports_out_of_order_are_refused(agent: Agent) -> None:
    response = agent.post(batch("gpu-a", report(2), report(1)))
    assert response.status_code == 400
    assert stored() == (0, 0, 0)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda b: b["reports"][0]["gpus"][0].update(utilization_gpu_pct=150), "less than or equal to 100"),
        (lambda b: b["reports"][0]["gpus"][0].update(power_watts=float("nan")), "finite number"),
        (lambda b: b["reports"][0].update(surprise=1), "Extra inputs are not permitted"),
        (lambda b: b["reports"][0].pop("host"), "reports.0.host: Field required"),
        (lambda b: b.update(reports=[]), "at least 1 item"),
        (lambda b: b.update(version=2), "unsupported protocol version 2"),
        (
            lambda b: b["reports"][0].update(
                instances=[
                    {
                        "instance_id": 1,
                        "generation": 1,
                        "state": "ready",
                        "ttft_histogram": {"bounds": [1, 2], "counts": [5, 3], "count": 5},
                    }
                ]
            ),
            "cumulative counts must not decrease",
        ),
        (lambda b: b["reports"][0].update(gpus=[gpu_reading(index=i, uuid=f"G{i}") for i in range(65)]), "at most 64"),
        (
            lambda b: b["reports"][1].update(gpus=[gpu_reading(0, "GPU-x"), gpu_reading(0, "GPU-y")]),
            "GPU index reported more than once: 0",
        ),
        (
            lambda b: b["reports"][1].update(gpus=[gpu_reading(0, "GPU-x"), gpu_reading(1, "GPU-x")]),
            "GPU uuid reported more than once: GPU-x",
        ),
    ],
)
def test_malformed_reports_are_refused_whole_with_a_reason(agent: Agent, mutate: Any, message: str) -> None:
    body = batch("gpu-a", report(1), report(2))
    mutate(body)
    response = agent.post(body)
    assert response.status_code == 400
    error = response.json()["error"]
    assert message in error["message"] + " ".join(error.get("details", []))
    assert stored() == (0, 0, 0)
    agent.node.refresh_from_db()
    assert agent.node.last_seq == 0


def test_non_json_and_bad_gzip_are_refused(agent: Agent) -> None:
    assert agent.post(None, raw=b"\xff\xfe not json").status_code == 400
    bad_gzip = agent.client.post(
        reverse("agent-report"),
        b"not gzip at all",
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {agent.token}",
        HTTP_CONTENT_ENCODING="gzip",
    )
    assert bad_gzip.status_code == 400
    assert "not valid gzip" in bad_gzip.json()["error"]["message"]


def test_oversized_bodies_are_refused_before_parsing(agent: Agent) -> None:
    huge = b"[" + b"0," * (protocol.MAX_BODY_BYTES // 2) + b"0]"
    assert agent.post(None, raw=huge).status_code == 413


def test_a_gzip_bomb_is_refused(agent: Agent) -> None:
    bomb = b'{"version": 1, "pad": "' + b"a" * (protocol.MAX_BODY_BYTES + 10) + b'"}'
    response = agent.post(None, raw=bomb, gzipped=True)
    assert response.status_code == 413
    assert "decompressed" in response.json()["error"]["message"]


def test_unknown_or_missing_tokens_get_401(agent: Agent) -> None:
    assert agent.post(batch("gpu-a", report(1)), token="gfn_unknown").status_code == 401
    missing = agent.client.post(reverse("agent-report"), "{}", content_type="application/json")
    assert missing.status_code == 401
    assert stored() == (0, 0, 0)


def test_a_token_accepted_before_is_refused_once_rotated_or_its_node_decommissioned(
    agent: Agent, client: Client
) -> None:
    assert agent.post(batch("gpu-a", report(1))).status_code == 200
    node_token_rotate(node=agent.node)
    response = agent.post(batch("gpu-a", report(2)))
    assert response.status_code == 401
    assert GpuSample.objects.count() == 1
    other = Agent(client, "gpu-b")
    assert other.post(batch("gpu-b", report(1, [gpu_reading(uuid="GPU-bbbb-0")]))).status_code == 200
    node_decommission(node=other.node)
    assert other.post(batch("gpu-b", report(2, [gpu_reading(uuid="GPU-bbbb-0")]))).status_code == 401
    assert GpuSample.objects.count() == 2, "one sample of each host, none after"


def test_a_renamed_node_reports_under_its_new_name_only(agent: Agent) -> None:
    assert agent.post(batch("gpu-a", report(1))).status_code == 200
    Node.objects.filter(pk=agent.node.pk).update(name="gpu-renamed")
    refused = agent.post(batch("gpu-a", report(2)))
    assert refused.status_code == 403
    assert "belongs to node 'gpu-renamed'" in refused.json()["error"]["message"]
    assert agent.post(batch("gpu-renamed", report(2))).status_code == 200


def test_a_node_token_cannot_report_for_another_node(agent: Agent, client: Client) -> None:
    Agent(client, "gpu-b")
    response = agent.post(batch("gpu-b", report(1)))
    assert response.status_code == 403
    assert "belongs to node 'gpu-a'" in response.json()["error"]["message"]
    assert stored() == (0, 0, 0)


def test_a_node_cannot_claim_another_nodes_gpu(agent: Agent, client: Client) -> None:
    other = Agent(client, "gpu-b")
    make_gpu(other.node, 0, H100)
    response = agent.post(batch("gpu-a", report(1, [gpu_reading(uuid="GPU-gpu-b-0")])))
    assert response.status_code == 403
    assert GpuSample.objects.count() == 0


def instance_sample(instance: Instance, state: str = "ready", **extra: Any) -> dict[str, Any]:
    return {
        "instance_id": instance.pk,
        "generation": instance.generation,
        "state": state,
        "container_id": "abc123",
        "endpoint": "http://127.0.0.1:8100",
        **extra,
    }


def test_instance_states_and_samples_are_recorded_with_history(agent: Agent) -> None:
    agent.post(batch("gpu-a", report(1)))
    instance = make_instance(make_pool(), Gpu.objects.get(node=agent.node))
    histogram = {"bounds": [0.1, 0.5], "counts": [3, 9], "count": 10}
    response = agent.post(
        batch(
            "gpu-a",
            report(2, instances=[instance_sample(instance, "starting")]),
            report(3, instances=[instance_sample(instance, "ready", ttft_p95_s=0.41, ttft_histogram=histogram)]),
        )
    )
    assert response.status_code == 200, response.content
    instance.refresh_from_db()
    assert (instance.actual_state, instance.actual_generation, instance.endpoint) == (
        "ready",
        1,
        "http://127.0.0.1:8100",
    )
    assert instance.ready_at is not None
    assert list(InstanceEvent.objects.values_list("state", flat=True)) == ["ready"]
    samples = list(InstanceSample.objects.order_by("at"))
    assert [sample.state for sample in samples] == ["starting", "ready"]
    assert samples[1].ttft_histogram == histogram


def test_a_node_cannot_report_instances_placed_elsewhere(agent: Agent, client: Client) -> None:
    other = Agent(client, "gpu-b")
    elsewhere = make_instance(make_pool(), make_gpu(other.node, 0, H100))
    response = agent.post(batch("gpu-a", report(1, instances=[instance_sample(elsewhere)])))
    assert response.status_code == 403
    assert stored() == (1, 0, 0)  # only gpu-b's own GPU
    elsewhere.refresh_from_db()
    assert elsewhere.actual_state == "pending"


def test_a_swapped_card_drops_the_placements_on_the_old_one_and_stores_the_report(agent: Agent) -> None:
    agent.post(batch("gpu-a", report(1)))
    old = Gpu.objects.get(node=agent.node)
    instance = make_instance(make_pool(), old)
    # The card at index 0 was replaced (new UUID) while the agent still reports the instance.
    response = agent.post(batch("gpu-a", report(2, [gpu_reading(0, "GPU-new-0")], [instance_sample(instance)])))
    assert response.status_code == 200, response.content
    live = Gpu.objects.filter(node=agent.node, decommissioned_at__isnull=True)
    assert list(live.values_list("uuid", flat=True)) == ["GPU-new-0"]
    instance.refresh_from_db()
    assert (instance.gpu_id, instance.actual_state) == (None, "ready")
    assert list(InstanceEvent.objects.values_list("instance_id", "gpu_id")) == [(instance.pk, None)]
    [desired] = response.json()["desired"]
    assert desired["spec"].get("gpu_uuids", []) == []


def test_the_reply_carries_the_desired_state_with_generations(agent: Agent) -> None:
    agent.post(batch("gpu-a", report(1)))
    gpu = Gpu.objects.get(node=agent.node)
    running = make_instance(make_pool(), gpu)
    gone = make_instance(make_pool("chat-l2"), gpu, desired_state="stopped", actual_state="stopped")
    reply = protocol.Reply.model_validate(agent.post(batch("gpu-a", report(2))).json())
    assert [(d.instance_id, d.generation, d.state) for d in reply.desired] == [(running.pk, 1, "running")]
    spec = reply.desired[0].spec
    assert (spec.model, spec.max_model_len, spec.gpu_uuids) == ("Qwen/Qwen3-4B-Instruct-2507", 8192, [gpu.uuid])
    assert gone.pk not in [d.instance_id for d in reply.desired]


def test_a_host_without_nvml_reports_the_reason_and_no_gpus(agent: Agent) -> None:
    body = batch("gpu-a", report(1, gpus=[]))
    body["reports"][0]["host"].update(nvml_available=False, nvml_reason="NVMLError_LibraryNotFound")
    assert agent.post(body).status_code == 200
    agent.node.refresh_from_db()
    assert (agent.node.nvml_available, agent.node.nvml_reason) == (False, "NVMLError_LibraryNotFound")
    assert not Gpu.objects.exists()


def test_get_is_not_allowed(agent: Agent) -> None:
    assert agent.client.get(reverse("agent-report")).status_code == 405


def test_reported_orphan_and_foreign_containers_are_kept_on_the_node(agent: Agent) -> None:
    body = batch("gpu-a", report(1))
    body["reports"][0]["containers"] = [
        {"container_id": "f00", "name": "someones-notebook", "image": "jupyter:1", "gpu_uuids": ["GPU-aaaa-0"]},
        {"container_id": "0rph", "name": "gpufleet-77-g1", "managed": True, "instance_id": 77},
    ]
    assert agent.post(body).status_code == 200
    agent.node.refresh_from_db()
    assert [(c["name"], c["managed"]) for c in agent.node.containers] == [
        ("someones-notebook", False),
        ("gpufleet-77-g1", True),
    ]


def test_the_reply_asks_for_the_next_report_soon_while_an_instance_is_on_its_way(agent: Agent) -> None:
    """Told to serve and not ready: report again in 0.5 s (``SETTLING_REPORT_S``), so the gateway routes
    to it half a second after it is ready, not up to an interval later. Ready, failed, or told to serve
    more than ``SETTLING_FOR_S`` (180 s) ago: the agent's own interval (the field left out)."""
    agent.post(batch("gpu-a", report(1)))
    instance = make_instance(make_pool(), Gpu.objects.get(node=agent.node))

    def again(seq: int, state: str) -> Any:
        body = agent.post(batch("gpu-a", report(seq, instances=[instance_sample(instance, state)]))).json()
        return body.get("report_again_s")

    assert again(2, "starting") == 0.5
    assert again(3, "sleeping") == 0.5  # a wake decided, the engine still asleep
    assert again(4, "ready") is None
    assert again(5, "failed") is None
    Instance.objects.filter(pk=instance.pk).update(desired_changed_at=timezone.now() - timedelta(seconds=181))
    assert again(6, "starting") is None
    Instance.objects.filter(pk=instance.pk).update(desired_state="sleeping", desired_changed_at=timezone.now())
    assert again(7, "ready") is None  # going to sleep: nothing waits on it


def test_a_settling_node_is_never_asked_for_more_reports_than_its_token_may_make(agent: Agent, settings: Any) -> None:
    """With the bound at 60 a minute, 0.5 s would ask for 120: the reply asks for one every 2 s
    (half the bound), leaving the rest to the agent's interval and its long poll."""
    settings.AGENT_REPORTS_PER_MINUTE = 60
    agent.post(batch("gpu-a", report(1)))
    instance = make_instance(make_pool(), Gpu.objects.get(node=agent.node))
    body = agent.post(batch("gpu-a", report(2, instances=[instance_sample(instance, "starting")]))).json()
    assert body["report_again_s"] == 2.0
