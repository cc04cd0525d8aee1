"""Settings learned from a pool's own traffic, from the admin: a ``TuningRun`` searches the pool's
settings (``fleet.sim.tune``) on its request log, and a person applies what it found in one click.

The run replays the pool's own requests (``trace_from_request_log``) through the simulator, starting
from the pool's settings as they stand when it begins (``pool_tuning_base``), on the pool as
``manage.py simulate --pool`` simulates it (``pool_sim_setup``: its SLA metric, a bound growing with the
prompt, sleep mode), judged by every term of the pool's SLA (``pool_sla``) on a fleet of up to the
pool's ``max_instances`` GPUs of its model, running its served model where the simulator has an engine
model for it (``pool_engine``). It keeps only what the search changed; applying it goes through
``pool_settings_apply``, as ``manage.py policy_apply`` does, logged as a decision by the person who
clicked, and is refused (nothing changes) once applied or once the pool's settings or SLA are no longer
those the run started from.

A run takes minutes, so the request that asks for it never waits: a Celery worker runs it, or in the
embedded default (Celery eager, no worker) the server's one tuning thread, a run at a time
(``fleet.tasks.tuning_runs_embedded``).
While it runs, a thread beats its ``heartbeat_at`` every ``TUNING_HEARTBEAT_S``; a process killed
mid-run (a worker's OOM kill, a server restart) stops the beat, and a run silent for ``TUNING_LOST_AFTER``
is failed as lost when its page or list is read (``tuning_runs_fail_lost``), never left running.
"""

from __future__ import annotations

import json
import logging
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields
from datetime import datetime, timedelta
from typing import Any

from django.db import DatabaseError, connections, transaction
from django.db.models import Q
from django.utils import timezone

from fleet import selectors
from fleet.decide.services import POOL_SETTINGS_FIELDS, pool_settings_apply
from fleet.models import Decision, Gpu, ModelProfile, Pool, RequestLog, TuningRun
from fleet.policies.settings import SCHEMAS
from fleet.sim.engine import DEFAULT_PROFILE, PROFILES, TTFT_BUCKETS, EngineModel, engine_model_for
from fleet.sim.headroom import DEFAULT_HEADROOM, headroom_refused, headroom_traffic
from fleet.sim.setup import pool_view_default, setup_build
from fleet.sim.traces import trace_from_request_log
from fleet.sim.tune import (
    DEFAULT_SPACE,
    Candidate,
    HeadroomCheck,
    settings_file_values,
    settings_patch,
    tune,
)
from fleet.sim_pool import pool_sim_setup

log = logging.getLogger(__name__)

TUNING_DAYS = 3
# The search's settings less the pool's latency bound: in the panel that bound is the SLA the pool
# promises and is judged by (the overview, the alerts), not a setting to trade for spend.
POOL_SPACE = tuple(dimension for dimension in DEFAULT_SPACE if dimension.name != "sla_latency_ms")
# One round of the search: the settings it starts from, then each dimension's other values once (34). A
# simulation replays about 13,000 requests a CPU-second (one day at 0.5 a second: 3.2 s), so on three days
# of such a pool the round takes minutes.
TUNING_MAX_EVALUATIONS = 1 + sum(len(dimension.choices) - 1 for dimension in POOL_SPACE)
# Fewer requests than this say too little about the pool's traffic to tune on.
TUNING_MIN_REQUESTS = 500
# The GPU simulated for a pool that names no GPU model and runs on none yet.
TUNING_DEFAULT_GPU = "H100"
# How often a running run shows it is alive, and how long a silence means the process running it is gone.
# The beat comes from a thread of its own, not between simulations (one may take minutes on a busy pool), so
# ten missed beats are a dead process, not a slow simulation.
TUNING_HEARTBEAT_S = 30.0
TUNING_LOST_AFTER = timedelta(minutes=5)


class TuningRefused(ValueError):
    """A run that cannot be applied (not done, applied already, found nothing, or stale); nothing changed."""


def _json(values: Any) -> Any:
    """As the run's JSON fields store it, so settings read now compare equal to settings stored."""
    return json.loads(json.dumps(values))


def pool_tuning_base(pool: Pool) -> dict[str, Any]:
    """The pool's settings as they stand, in the shape ``setup_build`` and ``pool_settings_apply`` read:
    its own fields the services write, and every policy kind's settings as they govern it (its own row,
    else the fleet's; None where disabled)."""
    configs = selectors.policy_configs()
    return _json(
        {
            "pool": {name: getattr(pool, name) for name in POOL_SETTINGS_FIELDS},
            "policies": {kind: configs[kind].for_pool(pool.pk) for kind in SCHEMAS},
        }
    )


def settings_changes(base: dict[str, Any], found: dict[str, Any]) -> dict[str, Any]:
    """What ``found`` changes of ``base``: the pool fields that differ, and each policy kind whose settings
    differ, in full (``settings_file_values``); empty sections left out."""
    before, after = settings_file_values(base), _json(settings_file_values(found))
    pool = {name: value for name, value in after["pool"].items() if before["pool"].get(name) != value}
    policies = {
        kind: value for kind, value in after["policies"].items() if _json(before["policies"].get(kind)) != value
    }
    return {key: value for key, value in (("pool", pool), ("policies", policies)) if value}


def engine_profile_for(profile: ModelProfile) -> str | None:
    """The simulator's engine profile (``fleet.sim.engine.PROFILES``) serving the same model with the same
    quantization as the pool's model profile; None where it has none."""
    return next(
        (
            name
            for name, facts in PROFILES.items()
            if facts.model.lower() == profile.model.lower() and facts.quantization == profile.quantization
        ),
        None,
    )


def pool_engine(pool: Pool) -> tuple[EngineModel, str]:
    """The engine model simulated for the pool, and how the run names it: its GPU model, else the one most of
    its instances run on, else ``TUNING_DEFAULT_GPU``; its own served model where the simulator has an engine
    model for it (``engine_profile_for``), else the documented default, named a stand-in so nobody reads the
    figures as measured on the pool's model (``ValueError`` for an unknown GPU)."""
    gpu = pool.gpu_model
    if not gpu:
        models = Counter(Gpu.objects.filter(instances__pool=pool).values_list("model_name", flat=True))
        gpu = models.most_common(1)[0][0] if models else TUNING_DEFAULT_GPU
    profile = engine_profile_for(pool.model_profile)
    engine = engine_model_for(gpu, profile or DEFAULT_PROFILE)
    label = f"{engine.gpu_model}, {engine.profile}"
    if profile is None:
        label = f"{label} (a stand-in: the simulator has no engine model for {pool.model_profile.model})"
    return engine, label


@dataclass(frozen=True)
class PoolSla:
    """A pool's SLA as the simulator judges a request by it (``SimSetup``'s terms)."""

    sla_ms: float
    sla_target: float
    e2e_sla_ms: float | None
    sla_ms_per_1k_prompt_tokens: float


def pool_sla(pool: Pool) -> PoolSla:
    """Every term of the pool's SLA, as the simulator takes them: a first-token pool's bound (growing with
    the prompt where it says so) and its end-to-end bound where it has one; an end-to-end pool's bound (the
    tighter of its two) on the whole answer. The first token comes before the end, so an end-to-end pool's
    first-token bound is the TTFT bucket bound at or above its end-to-end one: it never binds, and a bucket
    bound keeps the simulator's reading exact."""
    target = pool.sla_percentile / 100
    if pool.sla_metric == Pool.SlaMetric.E2E:
        e2e = min(pool.sla_latency_ms, pool.sla_e2e_latency_ms or pool.sla_latency_ms)
        first = next((bound for bound in TTFT_BUCKETS if bound * 1000 >= e2e), TTFT_BUCKETS[-1])
        return PoolSla(sla_ms=first * 1000, sla_target=target, e2e_sla_ms=float(e2e), sla_ms_per_1k_prompt_tokens=0.0)
    return PoolSla(
        sla_ms=float(pool.sla_latency_ms),
        sla_target=target,
        e2e_sla_ms=None if pool.sla_e2e_latency_ms is None else float(pool.sla_e2e_latency_ms),
        sla_ms_per_1k_prompt_tokens=pool.sla_ms_per_1k_prompt_tokens,
    )


def pool_view_fixed(*, pool: Pool, engine: EngineModel, gpus: int) -> dict[str, Any]:
    """What the simulated pool takes from the panel's pool besides the settings the search may move (its SLA
    metric, bound per 1k prompt tokens, sleep mode): its id and name, and the other fields of its view as
    ``manage.py simulate --pool`` builds it (``pool_sim_setup``) that differ from a default simulated pool's."""
    view = pool_sim_setup(pool_id=pool.pk, engine=engine, gpus=gpus, base=setup_build(engine=engine, gpus=gpus))
    own, default = view.pools[0].view, pool_view_default(engine=engine, gpus=gpus)
    return {
        field.name: getattr(own, field.name)
        for field in fields(default)
        if field.name not in POOL_SETTINGS_FIELDS
        and (field.name in ("id", "name") or getattr(own, field.name) != getattr(default, field.name))
    }


def tuning_run_create(
    *,
    pool: Pool,
    user: str,
    days: int = TUNING_DAYS,
    max_evaluations: int = TUNING_MAX_EVALUATIONS,
    headroom: float = DEFAULT_HEADROOM,
) -> TuningRun:
    """A queued run over the pool's last ``days`` days of traffic; the caller queues ``fleet.tuning_run``."""
    if days < 1 or max_evaluations < 1:
        raise ValueError(f"days ({days}) and max_evaluations ({max_evaluations}) must be at least 1")
    if (why := headroom_refused(headroom)) is not None:
        raise ValueError(why)
    now = timezone.now()
    return TuningRun.objects.create(
        pool=pool,
        requested_by=user,
        traffic_from=now - timedelta(days=days),
        traffic_to=now,
        max_evaluations=max_evaluations,
        headroom=headroom,
    )


def tuning_run_oldest_queued() -> int | None:
    """The id of the run queued first and not yet taken, if any: the next the embedded default runs."""
    return (
        TuningRun.objects.filter(state=TuningRun.State.QUEUED)
        .order_by("created_at", "pk")
        .values_list("pk", flat=True)
        .first()
    )


def tuning_run_execute(run_id: int) -> TuningRun | None:
    """Run a queued run to its end: done with the settings found and the figures, or failed with the
    reason. Never raises; None where the run is gone or not queued (another worker took it, or a second
    delivery of the task came after the first began: it never runs twice)."""
    taken = TuningRun.objects.filter(pk=run_id, state=TuningRun.State.QUEUED).update(
        state=TuningRun.State.RUNNING, heartbeat_at=timezone.now()
    )
    if not taken:
        return None
    run = TuningRun.objects.select_related("pool__model_profile").get(pk=run_id)
    try:
        with tuning_heartbeat(run_id=run.pk):
            _execute(run)
    except Exception as exc:
        log.exception("tuning run %s failed", run.pk)
        run.state, run.error = TuningRun.State.FAILED, str(exc) or type(exc).__name__
    return _finish(run)


def _finish(run: TuningRun) -> TuningRun | None:
    """Store the run's end, only while it is still running: one failed as lost meanwhile
    (``tuning_runs_fail_lost``) stays failed, so what its page said last is what it is."""
    with transaction.atomic():
        state = TuningRun.objects.select_for_update().filter(pk=run.pk).values_list("state", flat=True).first()
        if state != TuningRun.State.RUNNING:
            log.warning("tuning run %s ended %s but is %s: its end is not stored", run.pk, run.state, state)
            return None if state is None else TuningRun.objects.get(pk=run.pk)
        run.finished_at = run.heartbeat_at = timezone.now()
        run.save()
    return run


@contextmanager
def tuning_heartbeat(*, run_id: int) -> Iterator[None]:
    """Beat the running run's ``heartbeat_at`` every ``TUNING_HEARTBEAT_S`` from a thread of its own while
    the block runs: it beats while a long simulation holds the run's thread, and stops with the process."""
    every_s, stop = TUNING_HEARTBEAT_S, threading.Event()

    def beat() -> None:
        try:
            while not stop.wait(every_s):
                try:
                    TuningRun.objects.filter(pk=run_id, state=TuningRun.State.RUNNING).update(
                        heartbeat_at=timezone.now()
                    )
                except DatabaseError:
                    log.warning("tuning run %s: heartbeat not stored", run_id, exc_info=True)
        finally:
            connections.close_all()

    thread = threading.Thread(target=beat, name=f"fleet-tuning-heartbeat-{run_id}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=every_s)


def tuning_runs_fail_lost(*, now: datetime | None = None) -> int:
    """Fail every running run silent for over ``TUNING_LOST_AFTER`` (no heartbeat since; a run from before
    heartbeats, none since it was created): the process running it is gone, and nothing else would ever end
    it. Returns how many. Celery does not run it again (``fleet.tasks.tuning_run``): a person starts a new one."""
    now = now or timezone.now()
    cutoff = now - TUNING_LOST_AFTER
    silent = Q(heartbeat_at__lt=cutoff) | Q(heartbeat_at__isnull=True, created_at__lt=cutoff)
    minutes = TUNING_LOST_AFTER.total_seconds() / 60
    lost = TuningRun.objects.filter(silent, state=TuningRun.State.RUNNING).update(
        state=TuningRun.State.FAILED,
        finished_at=now,
        error=(
            f"worker lost: no heartbeat for over {minutes:g} minutes while running (the process running it "
            "stopped: killed, restarted or out of memory). Nothing was applied; start the run again."
        ),
    )
    if lost:
        log.warning("%s tuning run(s) failed as lost: no heartbeat since %s", lost, cutoff)
    return lost


def _execute(run: TuningRun) -> None:
    pool = run.pool
    if pool.max_instances < 1:
        raise ValueError(f"pool {pool.name} may run no instance (max_instances 0): there is nothing to tune")
    engine, run.engine = pool_engine(pool)
    sla, run.sla = pool_sla(pool), pool.sla_label
    run.base_settings = pool_tuning_base(pool)
    rows = (
        RequestLog.objects.filter(pool=pool, status=200, at__gte=run.traffic_from, at__lt=run.traffic_to)
        .order_by("at")
        .values("at", "prompt_tokens", "output_tokens")
    )
    span = f"{run.traffic_from:%Y-%m-%d %H:%M} to {run.traffic_to:%Y-%m-%d %H:%M}"
    trace = trace_from_request_log(rows, name=f"{pool.name} request log {span}") if rows.exists() else None
    run.requests = 0 if trace is None else len(trace.requests)
    if run.requests < TUNING_MIN_REQUESTS:
        raise ValueError(
            f"too little traffic to tune on: {run.requests} answered requests with token counts in pool "
            f"{pool.name} from {span}; at least {TUNING_MIN_REQUESTS} are needed. Nothing was applied."
        )
    assert trace is not None
    # What the run read shows on its page while the search runs.
    TuningRun.objects.filter(pk=run.pk, state=TuningRun.State.RUNNING).update(
        engine=run.engine, sla=run.sla, base_settings=run.base_settings, requests=run.requests
    )
    fixed = pool_view_fixed(pool=pool, engine=engine, gpus=pool.max_instances)
    base = settings_patch(run.base_settings, {"pool": fixed})
    simulated = 0

    def progress(_done: Candidate | HeadroomCheck) -> None:
        """Each simulation done (a candidate, or one run again at the headroom) shows on the run's page while it
        runs."""
        nonlocal simulated
        simulated += 1
        TuningRun.objects.filter(pk=run.pk, state=TuningRun.State.RUNNING).update(
            evaluations=simulated, heartbeat_at=timezone.now()
        )

    tuned = tune(
        trace=trace,
        engine=engine,
        gpus=pool.max_instances,
        base=base,
        space=POOL_SPACE,
        sla_ms=sla.sla_ms,
        sla_target=sla.sla_target,
        e2e_sla_ms=sla.e2e_sla_ms,
        sla_ms_per_1k_prompt_tokens=sla.sla_ms_per_1k_prompt_tokens,
        max_evaluations=run.max_evaluations,
        headroom=run.headroom,
        progress=progress,
        checked=progress,
    )
    run.settings = settings_changes(base, tuned.best.values)
    run.evaluations = len(tuned.evaluated) + len(tuned.checks)
    run.meets_sla = tuned.meets_sla
    run.base_paid_gpu_hours = tuned.base.result.paid_gpu_hours
    run.tuned_paid_gpu_hours = tuned.best.result.paid_gpu_hours
    run.base_attainment = tuned.base.result.attainment
    run.tuned_attainment = tuned.best.result.attainment
    run.holds_headroom = tuned.holds_headroom
    run.headroom_attainment = None if tuned.best_at_headroom is None else tuned.best_at_headroom.attainment
    run.state, run.error = TuningRun.State.DONE, ""


def tuning_run_apply(*, run: TuningRun, user: str) -> Decision:
    """Apply a done run's settings to its pool through ``pool_settings_apply`` (validated, one decision
    logged as ``user``'s). ``TuningRefused`` (``SettingsRefused`` from the services) changes nothing: a run
    not done, applied already, that found no change, or whose pool's settings changed since it read them."""
    with transaction.atomic():
        locked = TuningRun.objects.select_for_update().select_related("pool").get(pk=run.pk)
        if locked.state != TuningRun.State.DONE:
            raise TuningRefused(f"tuning run {locked.pk} is {locked.state}, not done: it has no settings to apply")
        if locked.applied_at is not None:
            raise TuningRefused(
                f"tuning run {locked.pk} was applied already, by {locked.applied_by} "
                f"at {locked.applied_at:%Y-%m-%d %H:%M} UTC"
            )
        if not locked.settings:
            raise TuningRefused(f"tuning run {locked.pk} found no change to the pool's settings")
        pool = Pool.objects.select_for_update().get(pk=locked.pool_id)
        if pool_tuning_base(pool) != locked.base_settings or (locked.sla and pool.sla_label != locked.sla):
            raise TuningRefused(
                f"pool {pool.name}'s settings or SLA changed since tuning run {locked.pk} read them: its result is "
                "stale; run it again"
            )
        growth = ""
        if locked.headroom_attainment is not None:
            growth = (
                f"; at {headroom_traffic(locked.headroom)} {locked.headroom_attainment:.3%} within "
                f"({'meets' if locked.holds_headroom else 'misses'} the SLA)"
            )
        decision = pool_settings_apply(
            pool=pool,
            values=locked.settings,
            user=user,
            reason=(
                f"tuning run {locked.pk} applied by {user}: {locked.tuned_paid_gpu_hours:.3f} paid GPU-hours at "
                f"{locked.tuned_attainment:.3%} within the SLA, against {locked.base_paid_gpu_hours:.3f} at "
                f"{locked.base_attainment:.3%} with the settings it started from{growth}"
            ),
        )
        locked.applied_decision, locked.applied_at, locked.applied_by = decision, timezone.now(), user
        locked.save(update_fields=["applied_decision", "applied_at", "applied_by"])
    run.refresh_from_db()
    return decision
