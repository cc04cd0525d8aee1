"""What the gateway decides about a request, apart from moving its bytes.

Plain functions of the request and the in-memory routing table: who is asking (the API
key), whether they may, and where the request may go (the tier from its RCF, the pools in
the tier's fallback order that can hold its context). No socket, no database, no clock
beyond the request's own timestamps: ``fleet.gateway.app.Gateway`` does the I/O (reading
the body, holding and waking, relaying, logging) around these.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterable
from dataclasses import dataclass

from fleet.gateway.counting import CHAT_MESSAGE_OVERHEAD, CHAT_REPLY_OVERHEAD
from fleet.gateway.protocol import ApiError, ParsedRequest
from fleet.gateway.table import ApiKeyRoute, PoolRoute, RoutingTable
from fleet.policies.routing import TIERS, ContextRefused, pool_groups_for, rcf_compute, text_features, tier_for

KEY_PREFIX = "gfk_"


@dataclass(slots=True)
class Routed:
    """One request on its way: what was decided and what came back, for the log record."""

    started: float
    wall: float
    key: ApiKeyRoute
    request: ParsedRequest
    rcf: float
    tier: str
    prompt_tokens: int
    groups: list[list[int]]
    cold_start: bool = False
    retried: bool = False


def authenticate(headers: Iterable[tuple[bytes, bytes]], table: RoutingTable) -> ApiKeyRoute:
    """The key the request's bearer token names, or the refusal: 401 without a known key, 429 when its
    team's budget blocks it."""
    header = b""
    for name, value in headers:
        if name == b"authorization":
            header = value
            break
    scheme, _, token = header.decode("latin-1").strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise ApiError(
            401,
            "Missing API key: send 'Authorization: Bearer gfk_...' with a key from the panel.",
            code="invalid_api_key",
        )
    route = table.keys.get(hashlib.sha256(token.encode()).hexdigest()) if token.startswith(KEY_PREFIX) else None
    if route is None:
        raise ApiError(401, "Incorrect or revoked API key.", code="invalid_api_key")
    blocked = table.blocked_teams.get(route.team_id)
    if blocked is not None:
        raise ApiError(429, blocked, code="budget_exceeded", type="insufficient_quota")
    return route


def route(request: ParsedRequest, key: ApiKeyRoute, table: RoutingTable) -> Routed:
    """Fingerprint the request and list the pools it may go to, in order, or refuse it."""
    started = time.perf_counter()
    tiers = table.models.get(request.model, {})
    if tiers and (key.models or key.pool_ids):
        tiers = {tier: tuple(pool for pool in pools if key.may_use(pool)) for tier, pools in tiers.items()}
    pools = pools_of(tiers) if tiers else []
    if not pools:
        raise ApiError(
            404,
            f"The model {request.model[:100]!r} is not served here, or not to this key.",
            code="model_not_found",
            param="model",
        )
    counter = pools[0].counter
    counts = [counter.count(text) for text in request.texts] + request.known_token_counts
    prompt_tokens = max(counts)
    if request.endpoint == "chat":
        prompt_tokens += CHAT_MESSAGE_OVERHEAD * request.messages + CHAT_REPLY_OVERHEAD
    settings = table.settings
    rcf = rcf_compute(
        prompt_tokens=prompt_tokens,
        max_tokens=request.max_tokens,
        features=text_features(request.text),
        settings=settings,
    )
    tier = tier_for(rcf, settings)
    groups = pool_groups_for(tier=tier, tiers=tiers, prompt_tokens=prompt_tokens, max_tokens=request.max_tokens)
    if isinstance(groups, ContextRefused):
        asked = f"{prompt_tokens} prompt tokens" + (
            f" + {request.max_tokens} max_tokens" if request.max_tokens else " and at least one output token"
        )
        raise ApiError(
            400,
            f"This request needs {asked} = {groups.needed} tokens, more than the longest context of any pool "
            f"serving {request.model} ({groups.longest} tokens). Shorten the prompt or lower max_tokens.",
            code="context_length_exceeded",
            param="messages" if request.endpoint == "chat" else "prompt",
        )
    return Routed(
        started=started,
        wall=time.time(),
        key=key,
        request=request,
        rcf=rcf,
        tier=tier,
        prompt_tokens=prompt_tokens,
        groups=groups,
    )


def pools_of(tiers: dict[str, tuple[PoolRoute, ...]]) -> list[PoolRoute]:
    """Every pool of a model, tier by tier."""
    return [pool for tier in TIERS for pool in tiers[tier]]


def models_visible(table: RoutingTable, key: ApiKeyRoute) -> list[str]:
    """The served models a key may use (``/v1/models``): all of them, or those with a pool it is allowed."""
    names = table.served_models()
    if key.models or key.pool_ids:
        names = [name for name in names if any(map(key.may_use, pools_of(table.models[name])))]
    return names
