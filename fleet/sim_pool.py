"""The panel's pools as the trace simulator runs them: one definition for ``manage.py simulate --pool``
and the admin's tuning runs, so a run tunes the pool the command simulates."""

from __future__ import annotations

from dataclasses import replace

from fleet.models import Pool
from fleet.policies.routing import RoutingSettings
from fleet.selectors import policy_configs, pool_view, routing_policy_settings
from fleet.sim.engine import EngineModel
from fleet.sim.setup import SimPool, SimSetup, pool_view_default

# What a simulated pool takes of the panel's pool as the panel reads it (``fleet.selectors.pool_view``):
# its SLA and its policies' settings. Its cards, engine and memory are the simulated GPUs'.
POLICY_SETTINGS = (
    "sla_metric",
    "sla_percentile",
    "sla_latency_ms",
    "sla_e2e_latency_ms",
    "sla_ms_per_1k_prompt_tokens",
    "util_band_low",
    "util_band_high",
    "idle_minimize_after_s",
    "idle_stop_after_s",
    "prewarm_margin_s",
    "enable_sleep_mode",
)


def pool_sim_setup(*, pool_id: int, engine: EngineModel, gpus: int, base: SimSetup) -> SimSetup:
    """One of the panel's pools with the policy and routing settings stored for it.

    The pool keeps its id, so per-pool policy overrides apply. Simulated GPUs hold one
    instance each, so the pool runs exclusive, with at most ``gpus`` instances. Read alike by
    ``manage.py simulate --pool`` and the admin's tuning runs. Raises ``Pool.DoesNotExist``.
    """
    pool = Pool.objects.select_related("model_profile").get(pk=pool_id)
    panel = pool_view(pool)
    view = pool_view_default(
        engine=engine,
        gpus=gpus,
        id=panel.id,
        name=panel.name,
        min_instances=min(panel.min_instances, gpus),
        max_instances=min(panel.max_instances, gpus),
        **{name: getattr(panel, name) for name in POLICY_SETTINGS},
    )
    values, enabled = routing_policy_settings()
    return replace(
        base,
        pools=(SimPool(view, tier=pool.tier),),
        policies=policy_configs(),
        routing=RoutingSettings.from_settings(values, enabled=enabled),
    )
