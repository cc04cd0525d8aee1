"""vLLM /metrics scraping: the real 0.32 capture, the older metric generation, window
deltas with hand-computed answers, garbage input, and a fetch over loopback HTTP."""

from __future__ import annotations

import contextlib
import math
import socket
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import agents.scrape
from agents.scrape import (
    Histogram,
    ScrapeError,
    Snapshot,
    delta,
    metrics_url,
    parse,
    scrape,
)

CAPTURE = Path(__file__).resolve().parent.parent / "fixtures" / "vllm" / "vllm-0.32-cpu-metrics.txt"
INF = math.inf


@pytest.fixture(scope="module")
def capture_text() -> str:
    return CAPTURE.read_text()


def test_real_vllm_032_capture(capture_text: str) -> None:
    """Numbers as they stand in the capture, taken after four completions."""
    snap = parse(capture_text, timestamp=1000.0)
    assert snap.model_name == "tiny"
    assert snap.timestamp == 1000.0
    assert snap.gauges == {"kv_cache_usage": 0.0, "requests_running": 0.0, "requests_waiting": 0.0}
    assert snap.counters == {
        "prompt_tokens": 33.0,
        "generation_tokens": 80.0,
        "requests_success": 4.0,
        "preemptions": 0.0,
    }
    ttft = snap.histograms["ttft"]
    assert ttft is not None
    assert ttft.bounds[:5] == (0.001, 0.005, 0.01, 0.02, 0.04)
    assert ttft.bounds[-2:] == (2560.0, INF)
    assert ttft.counts[:5] == (0.0, 0.0, 3.0, 3.0, 4.0)
    assert ttft.count == 4.0
    assert ttft.sum == pytest.approx(0.04913043975830078)
    # rank 2 of 4 lands in (0.005, 0.01] holding 3: 0.005 + 0.005 * 2/3
    assert ttft.quantile(0.5) == pytest.approx(0.0083333333)
    # rank 3.8 lands in (0.02, 0.04] holding 1 (3 below): 0.02 + 0.02 * 0.8
    assert ttft.quantile(0.95) == pytest.approx(0.036)
    e2e = snap.histograms["e2e"]
    assert e2e is not None and e2e.bounds[0] == 0.3 and e2e.count == 4.0
    assert e2e.sum == pytest.approx(0.2918543815612793)
    inter_token = snap.histograms["inter_token"]
    assert inter_token is not None and inter_token.count == 76.0 and inter_token.counts[0] == 75.0
    queue = snap.histograms["queue_time"]
    assert queue is not None and queue.count == 4.0


OLDER_GENERATION = """\
# TYPE vllm:gpu_cache_usage_perc gauge
vllm:gpu_cache_usage_perc{model_name="llama-7b"} 0.42
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{model_name="llama-7b"} 3.0
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{model_name="llama-7b"} 1.0
# TYPE vllm:prompt_tokens_total counter
vllm:prompt_tokens_total{model_name="llama-7b"} 1200.0
# TYPE vllm:generation_tokens_total counter
vllm:generation_tokens_total{model_name="llama-7b"} 3400.0
# TYPE vllm:request_success_total counter
vllm:request_success_total{finished_reason="stop",model_name="llama-7b"} 9.0
vllm:request_success_total{finished_reason="length",model_name="llama-7b"} 1.0
# TYPE vllm:time_per_output_token_seconds histogram
vllm:time_per_output_token_seconds_bucket{le="0.01",model_name="llama-7b"} 100.0
vllm:time_per_output_token_seconds_bucket{le="0.05",model_name="llama-7b"} 300.0
vllm:time_per_output_token_seconds_bucket{le="+Inf",model_name="llama-7b"} 340.0
vllm:time_per_output_token_seconds_count{model_name="llama-7b"} 340.0
vllm:time_per_output_token_seconds_sum{model_name="llama-7b"} 8.5
"""


def test_older_metric_generation() -> None:
    snap = parse(OLDER_GENERATION, timestamp=5.0)
    assert snap.model_name == "llama-7b"
    assert snap.gauges == {"kv_cache_usage": 0.42, "requests_running": 3.0, "requests_waiting": 1.0}
    assert snap.counters == {
        "prompt_tokens": 1200.0,
        "generation_tokens": 3400.0,
        "requests_success": 10.0,
        "preemptions": None,
    }
    assert snap.histograms["inter_token"] == Histogram(bounds=(0.01, 0.05, INF), counts=(100.0, 300.0, 340.0), sum=8.5)
    assert snap.histograms["ttft"] is None and snap.histograms["e2e"] is None


def test_newest_name_wins_when_both_generations_are_exported() -> None:
    text = (
        OLDER_GENERATION
        + '# TYPE vllm:kv_cache_usage_perc gauge\nvllm:kv_cache_usage_perc{model_name="llama-7b"} 0.9\n'
    )
    assert parse(text, 0.0).gauges["kv_cache_usage"] == 0.9


TWO_ENGINES = """\
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.5
vllm:kv_cache_usage_perc{engine="1",model_name="m"} 0.3
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="m"} 7.0
vllm:num_requests_running{engine="1",model_name="m"} 5.0
# TYPE vllm:request_success_total counter
vllm:request_success_total{engine="0",finished_reason="stop",model_name="m"} 50.0
vllm:request_success_total{engine="0",finished_reason="length",model_name="m"} 10.0
vllm:request_success_total{engine="1",finished_reason="stop",model_name="m"} 40.0
vllm:request_success_total{engine="1",finished_reason="abort",model_name="m"} 5.0
# TYPE vllm:e2e_request_latency_seconds histogram
vllm:e2e_request_latency_seconds_bucket{engine="0",le="1.0",model_name="m"} 10.0
vllm:e2e_request_latency_seconds_bucket{engine="0",le="5.0",model_name="m"} 40.0
vllm:e2e_request_latency_seconds_bucket{engine="0",le="+Inf",model_name="m"} 50.0
vllm:e2e_request_latency_seconds_sum{engine="0",model_name="m"} 120.0
vllm:e2e_request_latency_seconds_count{engine="0",model_name="m"} 50.0
vllm:e2e_request_latency_seconds_bucket{engine="1",le="1.0",model_name="m"} 0.0
vllm:e2e_request_latency_seconds_bucket{engine="1",le="5.0",model_name="m"} 20.0
vllm:e2e_request_latency_seconds_bucket{engine="1",le="+Inf",model_name="m"} 50.0
vllm:e2e_request_latency_seconds_sum{engine="1",model_name="m"} 300.0
vllm:e2e_request_latency_seconds_count{engine="1",model_name="m"} 50.0
"""


def test_engines_of_one_server_are_combined() -> None:
    snap = parse(TWO_ENGINES, 0.0)
    assert snap.model_name == "m"
    assert snap.gauges["kv_cache_usage"] == pytest.approx(0.4)  # mean of 0.5 and 0.3
    assert snap.gauges["requests_running"] == 12.0
    assert snap.counters["requests_success"] == 105.0  # 50 + 10 + 40 + 5
    assert snap.histograms["e2e"] == Histogram(bounds=(1.0, 5.0, INF), counts=(10.0, 60.0, 100.0), sum=420.0)


def snapshot(timestamp: float, counters: dict[str, float | None], histograms: dict[str, Histogram | None]) -> Snapshot:
    return Snapshot(timestamp=timestamp, model_name="m", gauges={}, counters=counters, histograms=histograms)


TTFT_BOUNDS = (0.1, 0.5, 1.0, 2.0, INF)
E2E_BOUNDS = (1.0, 5.0, 10.0, INF)
PREV = snapshot(
    1000.0,
    {"prompt_tokens": 1500.0, "generation_tokens": 300.0, "requests_success": 5.0, "preemptions": 0.0},
    {
        "ttft": Histogram(TTFT_BOUNDS, (5.0, 5.0, 5.0, 5.0, 5.0), 0.25),
        "e2e": Histogram(E2E_BOUNDS, (0.0, 0.0, 5.0, 5.0), 40.0),
    },
)
CUR = snapshot(
    1010.0,
    {"prompt_tokens": 10500.0, "generation_tokens": 2800.0, "requests_success": 105.0, "preemptions": 3.0},
    {
        "ttft": Histogram(TTFT_BOUNDS, (25.0, 75.0, 95.0, 105.0, 105.0), 35.25),
        "e2e": Histogram(E2E_BOUNDS, (10.0, 60.0, 95.0, 105.0), 440.0),
    },
)


def test_delta_rates_and_quantiles() -> None:
    """Hand-checked: a 10 s window in which 100 requests finished.

    TTFT bucket deltas (0.1, 0.5, 1, 2, +Inf]: 20, 70, 90, 100, 100 (cumulative).
      p50: rank 50 in (0.1, 0.5] (20 below, 50 inside) → 0.1 + 0.4 * 30/50 = 0.34
      p95: rank 95 in (1, 2] (90 below, 10 inside)      → 1 + 1 * 5/10     = 1.5
      p99: rank 99 in (1, 2]                             → 1 + 1 * 9/10     = 1.9
    E2E bucket deltas (1, 5, 10, +Inf]: 10, 60, 90, 100.
      p50: rank 50 in (1, 5] (10 below, 50 inside) → 1 + 4 * 40/50 = 4.2
      p95, p99: ranks 95 and 99 fall in +Inf        → highest finite bound, 10
    """
    stats = delta(PREV, CUR)
    assert stats.seconds == 10.0
    assert stats.model_name == "m"
    assert stats.requests_finished == 100.0
    assert stats.requests_per_s == 10.0
    assert stats.prompt_tokens_per_s == 900.0  # (10500 - 1500) / 10
    assert stats.generation_tokens_per_s == 250.0  # (2800 - 300) / 10
    assert stats.preemptions_per_s == pytest.approx(0.3)
    assert (stats.ttft_p50_s, stats.ttft_p95_s, stats.ttft_p99_s) == pytest.approx((0.34, 1.5, 1.9))
    assert (stats.e2e_p50_s, stats.e2e_p95_s, stats.e2e_p99_s) == pytest.approx((4.2, 10.0, 10.0))
    assert stats.counter_reset is False
    assert stats.histograms["ttft"] == Histogram(TTFT_BOUNDS, (20.0, 70.0, 90.0, 100.0, 100.0), 35.0)
    assert stats.histograms["inter_token"] is None


def test_quiet_window_has_no_quantiles() -> None:
    stats = delta(CUR, snapshot(1070.0, CUR.counters, CUR.histograms))
    assert stats.requests_per_s == 0.0
    assert stats.ttft_p50_s is None and stats.e2e_p99_s is None


def test_counter_reset_counts_from_zero() -> None:
    """The server restarted between scrapes: what it reports now all happened since."""
    restarted = snapshot(
        1010.0,
        {"prompt_tokens": 300.0, "generation_tokens": 2800.0, "requests_success": 2.0, "preemptions": 0.0},
        {"ttft": Histogram(TTFT_BOUNDS, (1.0, 2.0, 2.0, 2.0, 2.0), 0.3), "e2e": None},
    )
    stats = delta(PREV, restarted)
    assert stats.counter_reset is True
    assert stats.prompt_tokens_per_s == 30.0  # 300 since the restart, over 10 s
    assert stats.generation_tokens_per_s == 250.0  # this counter did not fall
    assert stats.requests_finished == 2.0
    # both requests since the restart: rank 1 → (0, 0.1] → 0.1; rank 1.9 → (0.1, 0.5] → 0.1 + 0.4 * 0.9
    assert stats.ttft_p50_s == pytest.approx(0.1)
    assert stats.ttft_p95_s == pytest.approx(0.46)
    assert stats.e2e_p50_s is None


def test_delta_needs_time_to_pass() -> None:
    with pytest.raises(ValueError, match="after prev"):
        delta(CUR, PREV)


def test_engines_with_other_bucket_bounds_give_no_histogram() -> None:
    """Engines of one server share their bounds; where they differ the server's histogram is not trusted."""
    text = """\
vllm:e2e_request_latency_seconds_bucket{engine="0",le="1.0",model_name="m"} 10.0
vllm:e2e_request_latency_seconds_bucket{engine="0",le="+Inf",model_name="m"} 10.0
vllm:e2e_request_latency_seconds_sum{engine="0",model_name="m"} 5.0
vllm:e2e_request_latency_seconds_bucket{engine="1",le="2.0",model_name="m"} 10.0
vllm:e2e_request_latency_seconds_bucket{engine="1",le="+Inf",model_name="m"} 10.0
vllm:e2e_request_latency_seconds_sum{engine="1",model_name="m"} 5.0
"""
    assert parse(text, 0.0).histograms["e2e"] is None


@pytest.mark.parametrize(
    "text",
    [
        "hello world",
        "<html><body>404 Not Found</body></html>",
        "\x00\x01\x02",
        'vllm:num_requests_running{model_name="m" 1',
        "",
        "process_cpu_seconds_total 7.9\n",  # metrics, but not vLLM's: the wrong endpoint
        'vllm:num_requests_running{model_name="a"} 1\nvllm:num_requests_running{model_name="b"} 2\n',
    ],
)
def test_garbage_raises_scrape_error(text: str) -> None:
    with pytest.raises(ScrapeError):
        parse(text, 0.0)


def test_non_finite_values_become_none() -> None:
    text = """\
vllm:kv_cache_usage_perc{model_name="m"} NaN
vllm:num_requests_running{model_name="m"} +Inf
vllm:num_requests_waiting{model_name="m"} 2
vllm:prompt_tokens_total{model_name="m"} NaN
vllm:generation_tokens_total{model_name="m"} -5
vllm:time_to_first_token_seconds_bucket{le="0.1",model_name="m"} NaN
vllm:time_to_first_token_seconds_bucket{le="+Inf",model_name="m"} 3
vllm:time_to_first_token_seconds_sum{model_name="m"} 0.2
vllm:e2e_request_latency_seconds_bucket{le="1",model_name="m"} 1
vllm:e2e_request_latency_seconds_sum{model_name="m"} 0.2
vllm:request_queue_time_seconds_bucket{le="oops",model_name="m"} 1
vllm:request_queue_time_seconds_bucket{le="+Inf",model_name="m"} 1
vllm:inter_token_latency_seconds_bucket{le="NaN",model_name="m"} 1
vllm:inter_token_latency_seconds_bucket{le="+Inf",model_name="m"} 1
vllm:inter_token_latency_seconds_sum{model_name="m"} 0.1
"""
    snap = parse(text, 0.0)
    assert snap.gauges == {"kv_cache_usage": None, "requests_running": None, "requests_waiting": 2.0}
    assert snap.counters["prompt_tokens"] is None
    assert snap.counters["generation_tokens"] is None  # a counter cannot be negative
    assert snap.histograms["ttft"] is None  # NaN bucket
    assert snap.histograms["e2e"] is None  # no +Inf bucket
    assert snap.histograms["queue_time"] is None  # unreadable bound
    assert snap.histograms["inter_token"] is None  # NaN bound


def test_huge_label_sets_do_not_crash() -> None:
    labels = ",".join(f'l{i}="{"v" * 50}"' for i in range(1000))
    text = f'vllm:num_requests_running{{model_name="m",{labels}}} 4\n' * 20
    assert parse(text, 0.0).gauges["requests_running"] == 80.0


def test_oversized_text_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(agents.scrape, "MAX_TEXT_BYTES", 100)
    with pytest.raises(ScrapeError, match="too large"):
        parse('vllm:num_requests_running{model_name="m"} 4\n' * 10, 0.0)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=400))
def test_any_text_parses_or_raises_scrape_error(text: str) -> None:
    try:
        parse(text, 0.0)
    except ScrapeError:
        return


METRIC_NAMES = [
    "vllm:kv_cache_usage_perc",
    "vllm:num_requests_running",
    "vllm:prompt_tokens_total",
    "vllm:request_success_total",
    "vllm:time_to_first_token_seconds_bucket",
    "vllm:time_to_first_token_seconds_sum",
    "vllm:e2e_request_latency_seconds_bucket",
]
VALUES = st.sampled_from(["0", "1", "-1", "NaN", "+Inf", "-Inf", "1e308", "3.5", "x"])
LINE = st.builds(
    '{}{{model_name="m",engine="{}",le="{}"}} {}'.format,
    st.sampled_from(METRIC_NAMES),
    st.sampled_from(["0", "1"]),
    st.sampled_from(["0.1", "1", "+Inf", "NaN", "-1", "abc"]),
    VALUES,
)


@settings(max_examples=300, deadline=None)
@given(st.lists(LINE, max_size=30))
def test_any_vllm_like_text_parses_or_raises_scrape_error(lines: list[str]) -> None:
    """Near-valid vLLM text with hostile values: a Snapshot or a ScrapeError, nothing else."""
    try:
        snap = parse("\n".join(lines) + "\n", 0.0)
    except ScrapeError:
        return
    for histogram in snap.histograms.values():
        if histogram is not None:
            assert histogram.bounds[-1] == INF
            histogram.quantile(0.5)


class MetricsHandler(BaseHTTPRequestHandler):
    """Serves the capture at /metrics and 404 elsewhere, like a vLLM server would."""

    body = b""

    def do_GET(self) -> None:
        if self.path != "/metrics":
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, format: str, *args: object) -> None:
        return


@pytest.fixture
def metrics_server(capture_text: str) -> Iterator[str]:
    handler = type("CaptureHandler", (MetricsHandler,), {"body": capture_text.encode()})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_scrape_over_loopback(metrics_server: str) -> None:
    with httpx.Client() as client:
        snap = scrape(metrics_server, client, timeout=5.0)
        again = scrape(metrics_server + "/metrics", client, timeout=5.0)
    assert snap.model_name == "tiny"
    assert snap.counters["generation_tokens"] == 80.0
    assert again.counters == snap.counters


def test_scrape_http_error_is_scrape_error(metrics_server: str) -> None:
    with httpx.Client() as client, pytest.raises(ScrapeError, match="HTTP 404"):
        scrape(metrics_server + "/v1/metrics-elsewhere/", client)


def test_scrape_unreachable_server_is_scrape_error() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), MetricsHandler)
    port = server.server_address[1]
    server.server_close()  # nothing listens on this port any more
    with httpx.Client() as client, pytest.raises(ScrapeError, match="ConnectError"):
        scrape(f"http://127.0.0.1:{port}", client, timeout=2.0)


def test_metrics_url() -> None:
    assert metrics_url("http://h:8000") == "http://h:8000/metrics"
    assert metrics_url("http://h:8000/") == "http://h:8000/metrics"
    assert metrics_url("http://h:8000/metrics") == "http://h:8000/metrics"


def _misbehaving_server(send_body: Callable[[socket.socket], None]) -> Iterator[str]:
    """A /metrics server that answers 200 and then sends its body however ``send_body`` likes."""
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            with conn:
                conn.recv(65536)
                conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ntransfer-encoding: chunked\r\n\r\n")
                with contextlib.suppress(OSError):
                    send_body(conn)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        thread.join(5)
        listener.close()


def _endless(conn: socket.socket) -> None:
    line = b'vllm:num_requests_running{engine="0"} 1\n' * 1000
    while True:
        conn.sendall(b"%x\r\n%s\r\n" % (len(line), line))


def _trickle(conn: socket.socket) -> None:
    for _ in range(200):
        conn.sendall(b"1\r\n#\r\n")
        time.sleep(0.1)


@pytest.mark.parametrize("send_body", [_endless, _trickle], ids=["endless", "trickle"])
def test_a_server_that_never_finishes_its_metrics_costs_a_bounded_scrape(
    send_body: Callable[[socket.socket], None],
) -> None:
    """An enormous body stops at MAX_TEXT_BYTES, a trickling one at the scrape's timeout."""
    server = _misbehaving_server(send_body)
    url = next(server)
    started = time.monotonic()
    try:
        with httpx.Client() as client, pytest.raises(ScrapeError, match=r"more than|time ran out"):
            scrape(url, client, timeout=2.0)
    finally:
        server.close()
    assert time.monotonic() - started < 10
