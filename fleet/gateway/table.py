"""The routing table: everything a request needs, in memory, rebuilt in the background.

The hot path reads one immutable ``RoutingTable`` and never the database; the gateway
swaps in a new table every refresh (default 1 s). An instance counts as routable when
the agent reports it ready with an endpoint, so a wake-up completes when a refresh sees
the instance turn ready.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from fleet import selectors
from fleet.costs.selectors import teams_blocked
from fleet.gateway.counting import TokenCounter, counter_for
from fleet.gateway.upstream import Target
from fleet.policies.routing import TIERS, RoutingSettings

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Upstream:
    """One ready vLLM instance."""

    instance_id: int
    pool_id: int
    target: Target


@dataclass(frozen=True, slots=True)
class PoolRoute:
    pool_id: int
    name: str
    tier: str
    served_name: str
    max_model_len: int
    counter: TokenCounter
    upstreams: tuple[Upstream, ...]
    # What scale-out under pressure reads (``policies.pressure``): the profile's max_num_seqs, the
    # top of the pool's band, its instance counts, autoscale's scale-out cool-down for it (None:
    # autoscale is off for the pool) and its last scale-out (wall-clock seconds, None: none).
    max_num_seqs: int = 0
    util_band_high: float = 1.0
    max_instances: int = 0
    serving: int = 0
    active: int = 0
    scale_out_cooldown_s: float | None = None
    last_scale_out_at: float | None = None


@dataclass(frozen=True, slots=True)
class ApiKeyRoute:
    """A usable key and what it may reach: empty ``models`` or ``pool_ids`` and None rates mean no limit."""

    key_id: int
    team_id: int
    models: frozenset[str] = frozenset()
    pool_ids: frozenset[int] = frozenset()
    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None

    def may_use(self, pool: PoolRoute) -> bool:
        return (not self.models or pool.served_name in self.models) and (
            not self.pool_ids or pool.pool_id in self.pool_ids
        )


@dataclass(frozen=True)
class RoutingTable:
    keys: dict[str, ApiKeyRoute]
    pools: dict[int, PoolRoute]
    models: dict[str, dict[str, tuple[PoolRoute, ...]]] = field(default_factory=dict)
    settings: RoutingSettings = field(default_factory=RoutingSettings.defaults)
    blocked_teams: dict[int, str] = field(default_factory=dict)
    loaded_at: float = 0.0

    def served_models(self) -> list[str]:
        return sorted(self.models)


EMPTY_TABLE = RoutingTable(keys={}, pools={})


def routing_table_load() -> RoutingTable:
    """Read keys, pools, ready instances and routing settings; a few queries, once a refresh."""
    key_pools: dict[int, set[int]] = {}
    for key_id, pool_id in selectors.gateway_api_key_pools():
        key_pools.setdefault(key_id, set()).add(pool_id)
    keys = {
        digest: ApiKeyRoute(
            key_id,
            team_id,
            models=frozenset(name.strip() for name in models.split(",") if name.strip()),
            pool_ids=frozenset(key_pools.get(key_id, ())),
            requests_per_minute=rpm,
            tokens_per_minute=tpm,
        )
        for key_id, team_id, digest, models, rpm, tpm in selectors.gateway_api_keys()
    }
    ready: dict[int, list[Upstream]] = {}
    for instance_id, pool_id, endpoint in selectors.gateway_ready_instances():
        try:
            target = Target.parse(endpoint)
        except ValueError:
            logger.warning("instance %s has an unusable endpoint %r; not routing to it", instance_id, endpoint)
            continue
        ready.setdefault(pool_id, []).append(Upstream(instance_id, pool_id, target))
    pools: dict[int, PoolRoute] = {}
    models: dict[str, dict[str, list[PoolRoute]]] = {}
    counts = selectors.gateway_pool_counts()
    autoscale = selectors.policy_configs()["autoscale"]
    for pool in selectors.gateway_pools():
        profile = pool.model_profile
        serving, active, last_out = counts.get(pool.pk, (0, 0, None))
        scaling = autoscale.for_pool(pool.pk)
        route = PoolRoute(
            pool_id=pool.pk,
            name=pool.name,
            tier=pool.tier,
            served_name=profile.served_name,
            max_model_len=profile.max_model_len,
            counter=counter_for(profile.tokenizer),
            upstreams=tuple(ready.get(pool.pk, ())),
            max_num_seqs=profile.max_num_seqs,
            util_band_high=pool.util_band_high,
            max_instances=pool.max_instances,
            serving=serving,
            active=active,
            scale_out_cooldown_s=None if scaling is None else float(scaling["scale_out_cooldown_s"]),
            last_scale_out_at=None if last_out is None else last_out.timestamp(),
        )
        pools[pool.pk] = route
        models.setdefault(route.served_name, {tier: [] for tier in TIERS})[route.tier].append(route)
    values, enabled = selectors.routing_policy_settings()
    return RoutingTable(
        keys=keys,
        pools=pools,
        models={name: {tier: tuple(routes) for tier, routes in tiers.items()} for name, tiers in models.items()},
        settings=RoutingSettings.from_settings(values, enabled=enabled),
        blocked_teams=teams_blocked(),
        loaded_at=time.monotonic(),
    )
