"""The agent loop: sense, report, receive the desired state, reconcile.

Every interval the agent reads its GPUs and the servers it runs into one report, puts
it in a bounded buffer, and sends everything buffered, oldest first. Only a reply from
the panel makes it act on containers: while the panel is away, containers stay as
they are (fail-static) and reports wait in the buffer; when it overflows the oldest
are dropped and counted, and the count travels with the next delivered batch.
"""

from __future__ import annotations

import gzip
import ipaddress
import json
import logging
import os
import re
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

import httpx

from agents import protocol
from agents.batch import (
    BatchAction,
    DesiredJob,
    Reap,
    StartJob,
    StopJob,
    batch_observe,
    batch_reconcile,
    reap_plan,
    reap_result,
)
from agents.config import AgentConfig
from agents.nvml import GpuReading, HostReading
from agents.plan import PORT_LABEL, Refusal, instances_plan, job_plan
from agents.reconcile import ActionResult, Sleep, Wake, apply, reconcile
from agents.runtime import (
    BatchRuntime,
    ContainerGone,
    ContainerState,
    Runtime,
    RuntimeFailure,
)
from agents.scrape import ScrapeError, Snapshot, WindowStats, delta, scrape
from agents.waiter import Waiter, waiter_start

AGENT_VERSION = "0.1.0"
MAX_BACKOFF_S = 60.0
STOP_CHECK_S = 0.25
_MIG_PROFILE = re.compile(r"(\d+g\.\d+gb)")

log = logging.getLogger("gpufleet.agent")


class GpuSource(Protocol):
    def read(self) -> HostReading: ...


class AgentState:
    """What must survive a restart: the node token and the last report number, in one file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        data = json.loads(path.read_text()) if path.exists() else {}
        self.node_name: str | None = data.get("node_name")
        self.node_token: str | None = data.get("node_token")
        self.last_seq: int = int(data.get("last_seq", 0))

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        body = {"node_name": self.node_name, "node_token": self.node_token, "last_seq": self.last_seq}
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump(body, handle)
        os.replace(tmp, self.path)

    def next_seq(self) -> int:
        """Increasing across restarts even if the state file is lost: the clock is a floor."""
        self.last_seq = max(self.last_seq + 1, int(time.time() * 1000))
        return self.last_seq


class ReportBuffer:
    """Reports not yet acknowledged, oldest first, at most ``size`` of them."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._reports: deque[protocol.Report] = deque()
        self.dropped = 0

    def __len__(self) -> int:
        return len(self._reports)

    def add(self, report: protocol.Report) -> None:
        if len(self._reports) >= self.size:
            self._reports.popleft()
            self.dropped += 1
        self._reports.append(report)

    def oldest(self, limit: int) -> list[protocol.Report]:
        return [self._reports[i] for i in range(min(limit, len(self._reports)))]

    def ack(self, seq: int) -> None:
        while self._reports and self._reports[0].seq <= seq:
            self._reports.popleft()

    def discard(self, reports: Iterable[protocol.Report]) -> None:
        """Give up on reports the panel refused as invalid, counting them as dropped."""
        refused = {report.seq for report in reports}
        kept = [report for report in self._reports if report.seq not in refused]
        self.dropped += len(self._reports) - len(kept)
        self._reports = deque(kept)


class PanelRefused(Exception):
    """The panel answered with a 4xx: retrying the same request will not help."""

    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"panel refused with HTTP {status}: {body[:500]}")
        self.status = status


class HttpSleepControl:
    """vLLM sleep mode over HTTP: POST /sleep?level=N and POST /wake_up."""

    def __init__(self, client: httpx.Client, host: str, timeout_s: float = 30.0) -> None:
        self.client, self.host, self.timeout_s = client, host, timeout_s

    def _post(self, port: int, path: str) -> None:
        response = self.client.post(f"http://{url_host(self.host)}:{port}{path}", timeout=self.timeout_s)
        response.raise_for_status()

    def sleep(self, action: Sleep) -> None:
        self._post(action.port, f"/sleep?level={action.level}")

    def wake_up(self, action: Wake) -> None:
        self._post(action.port, "/wake_up")


def gpu_sample(reading: GpuReading) -> protocol.GpuSample | None:
    """The report's view of one NVML reading; None for a GPU NVML could not identify."""
    if reading.uuid is None or reading.memory_total_bytes is None:
        return None
    mig_devices = [
        protocol.MigDevice(
            uuid=mig.uuid,
            profile=(match.group(1) if (match := _MIG_PROFILE.search(mig.name or "")) else ""),
            gpu_instance_id=mig.gpu_instance_id or 0,
            memory_total_bytes=mig.memory_total_bytes or 0,
            memory_used_bytes=mig.memory_used_bytes,
        )
        for mig in reading.mig_devices
        if mig.uuid
    ]
    return protocol.GpuSample(
        index=reading.index,
        uuid=reading.uuid,
        name=reading.name or "unknown",
        memory_total_bytes=reading.memory_total_bytes,
        memory_used_bytes=reading.memory_used_bytes,
        memory_reserved_bytes=reading.memory_reserved_bytes,
        utilization_gpu_pct=reading.utilization_gpu_pct,
        utilization_memory_pct=reading.utilization_memory_pct,
        sm_activity_pct=reading.sm_activity_pct,
        power_watts=reading.power_watts,
        power_limit_watts=reading.power_limit_watts,
        energy_joules=reading.energy_joules,
        temperature_c=reading.temperature_c,
        sm_clock_mhz=reading.sm_clock_mhz,
        mem_clock_mhz=reading.mem_clock_mhz,
        pstate=reading.pstate,
        throttle_reasons=reading.throttle_reasons or [],
        ecc_uncorrected_volatile=reading.ecc_uncorrected_volatile,
        mig_enabled=reading.mig_mode_current,
        mig_devices=mig_devices,
        processes=[
            protocol.GpuProcess(pid=process.pid, used_memory_bytes=process.used_memory_bytes)
            for process in reading.processes or []
        ],
    )


def _histogram(stats: WindowStats | None, key: str) -> protocol.Histogram | None:
    histogram = stats.histograms.get(key) if stats else None
    if histogram is None:
        return None
    finite = [
        (bound, count) for bound, count in zip(histogram.bounds, histogram.counts, strict=True) if bound != float("inf")
    ]
    return protocol.Histogram(
        bounds=[bound for bound, _ in finite], counts=[count for _, count in finite], count=histogram.count
    )


class Agent:
    def __init__(
        self,
        config: AgentConfig,
        *,
        gpus: GpuSource,
        runtime: Runtime,
        http: httpx.Client,
        wait_http: httpx.Client | None = None,
        state: AgentState | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.gpus = gpus
        self.runtime = runtime
        # Batch jobs and reaping need a runtime that can also stop containers by id.
        self.jobs_runtime = runtime if isinstance(runtime, BatchRuntime) else None
        self.http = http
        self.state = state or AgentState(config.state_dir / "state.json")
        self.clock = clock
        self.buffer = ReportBuffer(config.buffer_size)
        self.desired: dict[int, protocol.DesiredInstance] = {}
        self.asleep: set[str] = set()
        self.failures = 0
        self.next_delivery = 0.0
        self.report_again_s: float | None = None
        # Set by the waiter when the panel says the desired state changed: report now.
        self.nudge = threading.Event()
        self.waiter: Waiter | None = None
        # The long poll's own client (a held wait must never delay a report), built with the same
        # trust as ``http`` by whoever built that one: a client of defaults would not verify a
        # panel behind a private CA that ``http`` was given.
        self.wait_http = wait_http
        self._snapshots: dict[tuple[str, int], Snapshot] = {}
        self._results: list[protocol.ActionResult] = []
        self._dropped_reported = 0
        self.jobs: list[DesiredJob] = []
        self._job_refused: dict[int, str] = {}
        self._job_errors: dict[int, str] = {}
        self._job_stopped_with: dict[tuple[int, int], int | None] = {}
        self._reaped: list[protocol.ReapResult] = []
        self._reap_settled: set[str] = set()

    # -- registration -------------------------------------------------------------------

    @property
    def node_name(self) -> str:
        """The name the panel knows this host by (its own after registering)."""
        return self.state.node_name or self.config.node_name

    @property
    def registered(self) -> bool:
        return bool(self.state.node_token)

    def register(self, join_token: str, labels: dict[str, str] | None = None) -> None:
        body = protocol.Registration(
            join_token=join_token,
            name=self.config.node_name,
            hostname=socket.gethostname(),
            agent_version=AGENT_VERSION,
            labels=labels or {},
            simulated=self.config.simulated,
            advertise_address=self.config.advertise_address,
            port_range=self.config.port_range,
        )
        response = self.http.post(
            f"{self.config.panel_url}/api/agent/v1/register",
            json=body.model_dump(),
            timeout=self.config.panel_timeout_s,
        )
        if response.status_code >= 400:
            raise PanelRefused(response.status_code, response.text)
        registered = protocol.Registered.model_validate(response.json())
        self.state.node_name, self.state.node_token = registered.node, registered.node_token
        self.state.save()
        log.info("registered as node %s", registered.node)

    # -- sensing ------------------------------------------------------------------------

    def _probe(self, port: int, path: str) -> httpx.Response | None:
        try:
            return self.http.get(
                f"http://{url_host(self.config.local_host)}:{port}{path}", timeout=self.config.probe_timeout_s
            )
        except httpx.HTTPError:
            return None

    def _instance_sample(self, container: ContainerState) -> protocol.InstanceSample | None:
        instance_id = protocol.id_or_none(container.instance_id)
        if instance_id is None:
            return None
        port = int(container.labels.get(PORT_LABEL, "0"))
        endpoint = f"http://{url_host(self.config.endpoint_host)}:{port}" if port else ""
        common: dict[str, Any] = dict(
            instance_id=instance_id,
            generation=max(container.generation, 1),
            container_id=container.container_id[:80],
            endpoint=endpoint,
        )
        if not container.running:
            return protocol.InstanceSample(
                state="failed" if container.status in {"exited", "dead"} else "starting",
                error=container.error
                or (f"exit code {container.exit_code}" if container.exit_code is not None else ""),
                **common,
            )
        health = self._probe(port, "/health") if port else None
        if health is None or health.status_code != 200:
            return protocol.InstanceSample(state="starting", **common)
        state: protocol.InstanceState = "sleeping" if container.instance_id in self.asleep else "ready"
        stats, gauges = self._window(container, f"http://{url_host(self.config.local_host)}:{port}")
        return protocol.InstanceSample(
            state=state,
            requests_waiting=gauges.get("requests_waiting"),
            requests_running=gauges.get("requests_running"),
            kv_cache_usage=gauges.get("kv_cache_usage"),
            request_rate=stats.requests_per_s if stats else None,
            prompt_tokens_rate=stats.prompt_tokens_per_s if stats else None,
            generation_tokens_rate=stats.generation_tokens_per_s if stats else None,
            ttft_p50_s=stats.ttft_p50_s if stats else None,
            ttft_p95_s=stats.ttft_p95_s if stats else None,
            e2e_p50_s=stats.e2e_p50_s if stats else None,
            e2e_p95_s=stats.e2e_p95_s if stats else None,
            ttft_histogram=_histogram(stats, "ttft"),
            e2e_histogram=_histogram(stats, "e2e"),
            **common,
        )

    def _window(self, container: ContainerState, endpoint: str) -> tuple[WindowStats | None, dict[str, float | None]]:
        """Stats since the previous scrape of the same container generation."""
        key = (container.instance_id, container.generation)
        try:
            snapshot = scrape(endpoint, self.http, timeout=self.config.probe_timeout_s)
        except ScrapeError as exc:
            log.warning("scrape of instance %s failed: %s", container.instance_id, exc)
            return None, {}
        previous = self._snapshots.get(key)
        self._snapshots[key] = snapshot
        stats = delta(previous, snapshot) if previous and snapshot.timestamp > previous.timestamp else None
        return stats, snapshot.gauges

    def sense(self) -> protocol.Report:
        reading = self.gpus.read()
        try:
            containers = self.runtime.list_managed()
            runtime_error = ""
        except RuntimeFailure as exc:
            containers, runtime_error = [], str(exc)
        # Only instances the panel placed here: a container left from an instance deleted in the
        # panel (an orphan, reported below) would otherwise get every report refused.
        instances = [
            sample
            for c in containers
            if c.instance_id.isdigit()
            and int(c.instance_id) in self.desired
            and (sample := self._instance_sample(c)) is not None
        ]
        present = {sample.instance_id for sample in instances}
        for wanted in self.desired.values():
            if wanted.state == "stopped" and wanted.instance_id not in present:
                instances.append(
                    protocol.InstanceSample(
                        instance_id=wanted.instance_id, generation=wanted.generation, state="stopped"
                    )
                )
        orphans = [
            protocol.ForeignContainer(
                container_id=c.container_id[:80],
                name=c.name or "",
                managed=True,
                instance_id=protocol.id_or_none(c.instance_id),
            )
            for c in containers
            if protocol.id_or_none(c.instance_id) not in self.desired
        ]
        orphans.extend(self._foreign_gpu_users())
        results, self._results = self._results, []
        reaped, self._reaped = self._reaped, []
        try:
            jobs = batch_observe(
                self.jobs,
                self._batch_list(),
                refused=self._job_refused,
                stopped_with=self._job_stopped_with,
                errors=self._job_errors,
            )
        except RuntimeFailure as exc:  # no job news rather than a false "stopped"
            jobs, runtime_error = [], runtime_error or str(exc)
        host = protocol.HostInfo(
            hostname=socket.gethostname()[:255],
            agent_version=AGENT_VERSION,
            advertise_address=self.config.advertise_address,
            nvml_available=reading.available,
            nvml_reason=(reading.unavailable_reason or "")[:1000],
            runtime_reason=runtime_error[:1000],
            driver_version=reading.driver_version or "",
        )
        return protocol.Report(
            seq=self.state.next_seq(),
            sampled_at=self.clock(),
            host=host,
            gpus=[reported for gpu in reading.gpus if (reported := gpu_sample(gpu)) is not None],
            instances=instances,
            containers=orphans,
            action_results=results,
            batch_jobs=jobs,
            reaped=reaped,
        )

    def _foreign_gpu_users(self) -> list[protocol.ForeignContainer]:
        lister = getattr(self.runtime, "list_foreign_gpu_users", None)
        if lister is None:
            return []
        try:
            users = lister()
        except RuntimeFailure as exc:
            log.warning("could not list foreign containers: %s", exc)
            return []
        return [
            protocol.ForeignContainer(
                container_id=user.container_id[:80],
                name=user.name[:255],
                image=user.image[:255],
                managed=False,
                gpu_uuids=[gpu[:255] for gpu in user.gpus[:64]],
            )
            for user in users
        ]

    # -- delivery -----------------------------------------------------------------------

    def deliver(self) -> protocol.Reply | None:
        """Send the buffer, oldest first; the reply acknowledges what the panel committed."""
        reports = self.buffer.oldest(protocol.MAX_REPORTS_PER_BATCH)
        if not reports:
            return None
        dropped = self.buffer.dropped - self._dropped_reported
        batch = protocol.Batch(version=1, node=self.node_name, reports=reports, dropped=dropped)
        body = gzip.compress(batch.model_dump_json().encode(), compresslevel=5)
        headers = {
            "Authorization": f"Bearer {self.state.node_token}",
            "Content-Type": "application/json",
            "Content-Encoding": "gzip",
        }
        response = self.http.post(
            f"{self.config.panel_url}/api/agent/v1/report",
            content=body,
            headers=headers,
            timeout=self.config.panel_timeout_s,
        )
        if 400 <= response.status_code < 500 and response.status_code not in {401, 408, 429}:
            self.buffer.discard(reports)
            raise PanelRefused(response.status_code, response.text)
        response.raise_for_status()
        reply = protocol.Reply.model_validate(response.json())
        self._dropped_reported += dropped
        self.buffer.ack(reply.ack_seq)
        self.state.save()
        return reply

    # -- acting -------------------------------------------------------------------------

    def act(self, reply: protocol.Reply) -> list[ActionResult]:
        """Make the containers match the desired state in the reply.

        Batch job containers the reply no longer wants are stopped first, then the instances
        are reconciled, then jobs start: memory is freed before it is claimed, across jobs and
        instances as ``reconcile`` orders it among instances. The panel preempts the jobs on a
        sleeping card in the same change that wakes its instance, so the wake finds the job's
        memory back; the wake waits for the job to exit (at most ``batch_stop_timeout_s``).
        """
        self.desired = {item.instance_id: item for item in reply.desired}
        containers = self.runtime.list_managed()
        wanted, refused = instances_plan(
            reply.desired,
            config=self.config,
            containers=containers,
            node_name=self.node_name,
            port_free=lambda port: _port_free(self.config.listen_host, port),
        )
        for refusal in refused:
            self._refuse(refusal)
        jobs = self.batch_plan(reply.batch_jobs)
        self.batch_apply([action for action in jobs if isinstance(action, StopJob)])
        actions = reconcile(wanted, containers, asleep=frozenset(self.asleep))
        results = apply(actions, self.runtime, sleep_control=HttpSleepControl(self.http, self.config.local_host))
        for result in results:
            self._record(result)
        self.batch_apply([action for action in jobs if isinstance(action, StartJob)])
        self.act_reap(reply.stop_containers, wanted_instances={w.instance_id for w in wanted if w.state != "stopped"})
        return results

    # -- batch jobs and orphans ---------------------------------------------------------

    def _batch_list(self) -> list[ContainerState]:
        return self.jobs_runtime.batch_list() if self.jobs_runtime is not None else []

    def _desired_job(self, job: protocol.DesiredBatchJob) -> DesiredJob:
        runtime = self.jobs_runtime
        desired, why = job_plan(
            job,
            config=self.config,
            node_name=self.node_name,
            image_size=runtime.image_size if runtime is not None else None,
        )
        if why:
            log.error("batch job %s refused: %s", job.job_id, why)
            self._job_refused[job.job_id] = why
        return desired

    def act_batch(self, jobs: list[protocol.DesiredBatchJob]) -> None:
        """Run, keep or stop the node's batch job containers as the reply says; failures wait for the next pass."""
        self.batch_apply(self.batch_plan(jobs))

    def batch_plan(self, jobs: list[protocol.DesiredBatchJob]) -> list[BatchAction]:
        """The stops and starts that bring the job containers to the reply; none while the engine is unwell."""
        self._job_refused, self._job_errors = {}, {}
        try:
            self.jobs = [self._desired_job(job) for job in jobs]
            containers = self._batch_list()
        except RuntimeFailure as exc:  # the engine is unwell: leave job containers as they are
            log.warning("could not check batch jobs against the engine: %s", exc)
            return []
        wanted_ids = {job.job_id for job in self.jobs}
        self._job_stopped_with = {key: code for key, code in self._job_stopped_with.items() if key[0] in wanted_ids}
        if self.jobs_runtime is None:
            return []
        return batch_reconcile(self.jobs, containers, stop_timeout_s=self.config.batch_stop_timeout_s)

    def batch_apply(self, actions: list[BatchAction]) -> None:
        """Carry out ``batch_plan``'s actions in order; a failure is logged and kept for the report."""
        runtime = self.jobs_runtime
        if runtime is None:
            return
        for action in actions:
            try:
                if isinstance(action, StartJob):
                    runtime.batch_start(action.spec)
                    log.info("batch job %s started: %s", action.spec.job_id, action.reason)
                    continue
                try:
                    code = runtime.stop_managed(action.container.container_id, action.timeout_s)
                except ContainerGone:  # removed meanwhile: what the stop was for
                    code = action.container.exit_code
                if action.container.job_id is not None:
                    self._job_stopped_with[(action.container.job_id, action.container.generation)] = code
                log.info("batch job container stopped (exit code %s): %s", code, action.reason)
            except RuntimeFailure as exc:
                job_id = action.spec.job_id if isinstance(action, StartJob) else action.container.job_id
                log.error("batch job %s: %s", job_id, exc)
                if job_id is not None:
                    self._job_errors[job_id] = str(exc)

    def act_reap(self, requested: list[str], *, wanted_instances: set[str]) -> None:
        """Stop the orphans the panel names, once each, if they are still this node's unwanted containers."""
        self._reap_settled &= set(requested)
        pending = [container_id for container_id in requested if container_id not in self._reap_settled]
        runtime = self.jobs_runtime
        if not pending or runtime is None:
            return
        try:
            managed = self.runtime.list_managed() + runtime.batch_list()
        except RuntimeFailure as exc:
            log.warning("could not list containers to reap: %s", exc)
            return
        wanted_jobs = {job.job_id for job in self.jobs if job.state == "running"}
        plan = reap_plan(
            pending,
            managed,
            wanted_instances=wanted_instances,
            wanted_jobs=wanted_jobs,
            stop_timeout_s=self.config.batch_stop_timeout_s,
        )
        for action in plan:
            if isinstance(action, Reap):
                try:
                    code = runtime.stop_managed(action.container_id, action.timeout_s)
                    result = reap_result(action, exit_code=code)
                except RuntimeFailure as exc:
                    result = reap_result(action, error=exc)
            else:
                result = reap_result(action)
            log.info("orphan %s: %s (%s)", result.container_id[:12], result.outcome, result.detail)
            self._reaped.append(result)
            if result.outcome != "failed":
                self._reap_settled.add(result.container_id)

    def _refuse(self, refusal: Refusal) -> None:
        log.error("instance %s refused: %s", refusal.item_id, refusal.why)
        self._results.append(
            protocol.ActionResult(
                instance_id=refusal.item_id, generation=refusal.generation, action="refuse", ok=False, error=refusal.why
            )
        )

    def _record(self, result: ActionResult) -> None:
        action = result.action
        spec = getattr(action, "spec", None)
        instance_id = spec.instance_id if spec else getattr(action, "instance_id", None)
        if instance_id is None:
            return
        if result.ok and isinstance(action, Sleep):
            self.asleep.add(instance_id)
        elif (result.ok and isinstance(action, Wake)) or spec is not None:
            self.asleep.discard(instance_id)
        reported_id = protocol.id_or_none(instance_id)
        if reported_id is None:
            return
        generation = spec.generation if spec else getattr(action, "generation", 1)
        self._results.append(
            protocol.ActionResult(
                instance_id=reported_id,
                generation=max(generation, 1),
                action=type(action).__name__.lower(),
                ok=result.ok,
                error=(result.error or "")[:2000],
            )
        )

    # -- the loop -----------------------------------------------------------------------

    def tick(self) -> protocol.Reply | None:
        """One interval: sense, buffer, and (unless backing off) deliver and act."""
        self.buffer.add(self.sense())
        if self.clock() < self.next_delivery:
            return None
        try:
            reply = self.deliver()
        except (httpx.HTTPError, PanelRefused) as exc:
            self.failures += 1
            backoff = min(MAX_BACKOFF_S, self.config.interval_s * 2 ** min(self.failures, 6))
            self.next_delivery = self.clock() + backoff
            log.warning(
                "panel unreachable or refused (%s); %d reports buffered; retry in %.0f s",
                exc,
                len(self.buffer),
                backoff,
            )
            return None
        self.failures, self.next_delivery = 0, 0.0
        self.report_again_s = reply.report_again_s if reply is not None else None
        if reply is not None:
            self.act(reply)
            if self.waiter is not None and self.state.node_token:
                generation = protocol.desired_generation(reply.desired, reply.batch_jobs, reply.stop_containers)
                self.waiter.applied(token=self.state.node_token, generation=generation)
        return reply

    def run(self, stop: threading.Event, *, wait: bool = True) -> None:
        """Tick every interval (sooner when the panel asks), and at once when the waiter is told
        of a change (``wait``: hold a long poll at the panel, ``agents.waiter``)."""
        if wait and self.waiter is None:
            self.waiter = waiter_start(
                panel_url=self.config.panel_url, http=self.wait_http or httpx.Client(), nudge=self.nudge, stop=stop
            )
        while not stop.is_set():
            started = self.clock()
            self.nudge.clear()
            try:
                self.tick()
            except Exception:  # the loop must outlive any one bad interval
                log.exception("agent tick failed")
            interval = min(self.config.interval_s, self.report_again_s or self.config.interval_s)
            self._pause(stop, max(0.0, interval - (self.clock() - started)))

    def _pause(self, stop: threading.Event, seconds: float) -> None:
        """Until ``seconds`` pass, the waiter nudges, or ``stop`` is set (looked at every quarter second)."""
        deadline = time.monotonic() + seconds
        while not stop.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self.nudge.wait(min(remaining, STOP_CHECK_S)):
                return


def url_host(host: str) -> str:
    """``host`` as it goes into a URL: an IPv6 address in brackets."""
    return f"[{host}]" if ":" in host else host


def _bindable(address: str) -> bool:
    """Whether ``address`` is an IP address of this host, one a server can listen on."""
    try:
        family = socket.AF_INET6 if ipaddress.ip_address(address).version == 6 else socket.AF_INET
    except ValueError:
        return False
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((address, 0))
        except OSError:
            return False
    return True


def listen_host_for(*, advertise_address: str, panel_url: str) -> str:
    """Where this host's servers listen so that the panel's gateway reaches them.

    Loopback when a loopback address is advertised, or when nothing is and the panel is on
    this machine (the demo); the advertised address itself when it is one of this host's;
    else every interface, as the gateway comes to the address the panel sees this host at
    (or to an advertised name, or an address a NAT forwards).
    """
    if advertise_address:
        if protocol.address_is_loopback(advertise_address):
            return "127.0.0.1"
        return advertise_address if _bindable(advertise_address) else "0.0.0.0"
    return "127.0.0.1" if protocol.address_is_loopback(urlsplit(panel_url).hostname or "") else "0.0.0.0"


def _port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True
