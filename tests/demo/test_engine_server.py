"""The SIMULATED vLLM server speaks vLLM's API: read by the real agent scraper, relayed by the real gateway."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest

from agents.scrape import delta, scrape
from fleet.models import RequestLog
from fleet.sim.engine import engine_model_for
from tests.gateway import conftest as gateway_support
from tests.gateway.conftest import LiveGateway, make_profile, make_ready, make_routed_pool
from tests.support.sim_engine import SERVED, SimEngine

live_gateway = gateway_support.live_gateway
api_key = gateway_support.api_key

PROMPT = "the " * 1000  # 1,000 tokens by the gateway's estimate


@pytest.fixture
def engine(tmp_path: Path):  # type: ignore[no-untyped-def]
    with SimEngine(tmp_path) as server:
        yield server


def test_metrics_parse_with_the_agent_scraper_and_histograms_follow_the_engine_model(engine: SimEngine) -> None:
    model = engine_model_for("H100")
    http = httpx.Client(timeout=30)
    before = scrape(engine.base_url, http)
    assert before.gauges == {"kv_cache_usage": 0.0, "requests_running": 0.0, "requests_waiting": 0.0}
    assert before.model_name == SERVED

    def one(index: int) -> httpx.Response:
        body = {"model": SERVED, "prompt": PROMPT, "max_tokens": 200, "stream": index % 2 == 1}
        return http.post(f"{engine.base_url}/v1/completions", json=body)

    with ThreadPoolExecutor(4) as pool:
        responses = list(pool.map(one, range(4)))
    assert [r.status_code for r in responses] == [200] * 4
    assert responses[0].json()["usage"] == {"prompt_tokens": 1000, "completion_tokens": 200, "total_tokens": 1200}
    assert responses[1].text.rstrip().endswith("data: [DONE]")

    stats = delta(before, scrape(engine.base_url, http))
    assert stats.requests_finished == 4
    assert stats.histograms["ttft"] is not None and stats.histograms["ttft"].count == 4
    assert stats.histograms["e2e"] is not None and stats.histograms["e2e"].count == 4
    assert stats.prompt_tokens_per_s and stats.generation_tokens_per_s
    # 200 decode steps of a batch of 4 on the modelled H100, give or take the server's 20 ms tick.
    expected = 200 * model.decode_step_s(4)
    assert stats.e2e_p50_s is not None and expected * 0.8 < stats.e2e_p50_s < expected * 1.5 + 0.3
    assert stats.ttft_p50_s is not None and stats.ttft_p50_s < 0.25


def test_sleep_mode_endpoints(engine: SimEngine) -> None:
    http = httpx.Client(base_url=engine.base_url, timeout=10)
    assert http.get("/is_sleeping").json() == {"is_sleeping": False}
    assert http.post("/sleep", params={"level": 1}).status_code == 200
    assert http.get("/is_sleeping").json() == {"is_sleeping": True}
    assert http.post("/wake_up").status_code == 200
    assert http.get("/is_sleeping").json() == {"is_sleeping": False}
    assert http.get("/v1/models").json()["data"][0]["id"] == SERVED


def test_too_long_a_request_is_refused_as_vllm_does(engine: SimEngine) -> None:
    response = httpx.post(
        f"{engine.base_url}/v1/completions", json={"model": SERVED, "prompt": "the " * 8000, "max_tokens": 500}
    )
    assert response.status_code == 400
    assert "maximum context length is 8192 tokens" in response.json()["message"]


@pytest.mark.django_db(transaction=True)
def test_streaming_through_the_real_gateway_with_the_openai_client(
    engine: SimEngine, live_gateway: Callable[..., LiveGateway], api_key: str
) -> None:
    pool = make_routed_pool("sim-l", "L", make_profile(served_name=SERVED, max_model_len=8192))
    make_ready(pool, engine.base_url)
    live = live_gateway()
    client = openai.OpenAI(base_url=f"{live.base_url}/v1", api_key=api_key, max_retries=0, timeout=30)

    chunks = list(
        client.chat.completions.create(
            model=SERVED,
            messages=[{"role": "user", "content": "Which GPUs idle?"}],
            max_tokens=40,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert "simulated" in text
    assert len([c for c in chunks if c.choices]) >= 2, "the answer arrives in several events"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 40
    completion = client.completions.create(model=SERVED, prompt="GPU hours", max_tokens=5, stream=True)
    assert [c.choices[0].finish_reason for c in completion][-1] == "length"

    logs = live.logs()
    assert [(log.stream, log.status, log.output_tokens) for log in logs] == [(True, 200, 40), (True, 200, 5)]
    assert all(log.ttft_ms is not None and log.ttft_ms < log.latency_ms for log in logs)
    assert RequestLog.objects.filter(tokens_from_usage=True).count() == 2
