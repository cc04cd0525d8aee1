"""Settings learned from a pool's own traffic, from the admin: a ``TuningRun`` searches the pool's
settings (``fleet.sim.tune``) on its request log, and a person applies what it found in one click.

The run replays the pool's own requests (``trace_from_request_log``) through the simulator, starting
from the pool's settings as they stand when it begins (``pool_tuning_base``), judged by the pool's
SLA (its latency bound at its percentile) on a fleet of up to the pool's ``max_instances`` GPUs of its
model. It keeps only what the search changed; applying it goes through ``pool_settings_apply``, as
``manage.py policy_apply`` does, logged as a decision by the person who clicked, and is refused
(nothing changes) once applied or once the pool's settings are no longer those the run started from.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from datetime import timedelta
from typing import Any

from django.db import transaction
from django.utils import timezone

from fleet import selectors
from fleet.decide.services import POOL_SETTINGS_FIELDS, pool_settings_apply
from fleet.models import Decision, Gpu, Pool, RequestLog, TuningRun
from fleet.policies.settings import SCHEMAS
from fleet.sim.engine import DEFAULT_PROFILE, EngineModel, engine_model_for
from fleet.sim.traces import trace_from_request_log
from fleet.sim.tune import DEFAULT_SPACE, settings_file_values, tune

log = logging.getLogger(__name__)

TUNING_DAYS = 3
# The search's settings less the pool's latency bound: in the panel that bound is the SLA the pool
# promises and is judged by (the overview, the alerts), not a setting to trade for spend.
POOL_SPACE = tuple(dimension for dimension in DEFAULT_SPACE if dimension.name != "sla_latency_ms")
# One round of the search: the settings it starts from, then each dimension's other values once (23). A
# simulation replays about 13,000 requests a CPU-second (one day at 0.5 a second: 3.2 s), so on three days
# of such a pool the round takes minutes.
TUNING_MAX_EVALUATIONS = 1 + sum(len(dimension.choices) - 1 for dimension in POOL_SPACE)
# Fewer requests than this say too little about the pool's traffic to tune on.
TUNING_MIN_REQUESTS = 500
# The GPU simulated for a pool that names no GPU model and runs on none yet.
TUNING_DEFAULT_GPU = "H100"


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


def pool_engine(pool: Pool) -> EngineModel:
    """The engine model simulated for the pool: its GPU model, else the one most of its instances run on,
    else ``TUNING_DEFAULT_GPU``; the documented default served model (``ValueError`` for an unknown GPU)."""
    gpu = pool.gpu_model
    if not gpu:
        models = Counter(Gpu.objects.filter(instances__pool=pool).values_list("model_name", flat=True))
        gpu = models.most_common(1)[0][0] if models else TUNING_DEFAULT_GPU
    return engine_model_for(gpu, DEFAULT_PROFILE)


def tuning_run_create(
    *, pool: Pool, user: str, days: int = TUNING_DAYS, max_evaluations: int = TUNING_MAX_EVALUATIONS
) -> TuningRun:
    """A queued run over the pool's last ``days`` days of traffic; the caller queues ``fleet.tuning_run``."""
    if days < 1 or max_evaluations < 1:
        raise ValueError(f"days ({days}) and max_evaluations ({max_evaluations}) must be at least 1")
    now = timezone.now()
    return TuningRun.objects.create(
        pool=pool,
        requested_by=user,
        traffic_from=now - timedelta(days=days),
        traffic_to=now,
        max_evaluations=max_evaluations,
    )


def tuning_run_execute(run_id: int) -> TuningRun | None:
    """Run a queued run to its end: done with the settings found and the figures, or failed with the
    reason. Never raises; None where the run is gone or not queued (another worker took it)."""
    if not TuningRun.objects.filter(pk=run_id, state=TuningRun.State.QUEUED).update(state=TuningRun.State.RUNNING):
        return None
    run = TuningRun.objects.select_related("pool").get(pk=run_id)
    try:
        _execute(run)
    except Exception as exc:
        log.exception("tuning run %s failed", run.pk)
        run.state, run.error = TuningRun.State.FAILED, str(exc) or type(exc).__name__
    run.finished_at = timezone.now()
    run.save()
    return run


def _execute(run: TuningRun) -> None:
    pool = run.pool
    if pool.max_instances < 1:
        raise ValueError(f"pool {pool.name} may run no instance (max_instances 0): there is nothing to tune")
    engine = pool_engine(pool)
    run.engine = f"{engine.gpu_model}, {engine.profile}"
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
    tuned = tune(
        trace=trace,
        engine=engine,
        gpus=pool.max_instances,
        base=run.base_settings,
        space=POOL_SPACE,
        sla_ms=float(pool.sla_latency_ms),
        sla_target=pool.sla_percentile / 100,
        max_evaluations=run.max_evaluations,
    )
    run.settings = settings_changes(run.base_settings, tuned.best.values)
    run.evaluations = len(tuned.evaluated)
    run.meets_sla = tuned.meets_sla
    run.base_paid_gpu_hours = tuned.base.result.paid_gpu_hours
    run.tuned_paid_gpu_hours = tuned.best.result.paid_gpu_hours
    run.base_attainment = tuned.base.result.attainment
    run.tuned_attainment = tuned.best.result.attainment
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
        if pool_tuning_base(pool) != locked.base_settings:
            raise TuningRefused(
                f"pool {pool.name}'s settings changed since tuning run {locked.pk} read them: its result is stale; "
                "run it again"
            )
        decision = pool_settings_apply(
            pool=pool,
            values=locked.settings,
            user=user,
            reason=(
                f"tuning run {locked.pk} applied by {user}: {locked.tuned_paid_gpu_hours:.3f} paid GPU-hours at "
                f"{locked.tuned_attainment:.3%} within the SLA, against {locked.base_paid_gpu_hours:.3f} at "
                f"{locked.base_attainment:.3%} with the settings it started from"
            ),
        )
        locked.applied_decision, locked.applied_at, locked.applied_by = decision, timezone.now(), user
        locked.save(update_fields=["applied_decision", "applied_at", "applied_by"])
    run.refresh_from_db()
    return decision
