"""HTTP endpoints the agents call: register with a join token, then report every interval.

Bodies are JSON, optionally gzip-compressed; both the wire size and the decompressed size
are capped before parsing, each node's report requests are bounded per minute
(``report_rate_wait``), and every error is a JSON body with a message that says what
is wrong.
"""

from __future__ import annotations

import gzip
import ipaddress
import json
import logging
import math
import re
import time
import zlib
from collections.abc import Callable
from typing import Any, TypeVar

from django.conf import settings
from django.core.cache import cache
from django.db import InternalError, OperationalError
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST
from pydantic import BaseModel, ValidationError
from redis.exceptions import RedisError

from agents import protocol
from fleet.models import Node
from fleet.telemetry.claims import IngestError
from fleet.telemetry.ingest import report_ingest
from fleet.telemetry.registration import node_authenticate, node_register

logger = logging.getLogger(__name__)

View = Callable[[HttpRequest], HttpResponse]
M = TypeVar("M", bound=BaseModel)


def error_response(status: int, message: str, details: list[str] | None = None) -> JsonResponse:
    body: dict[str, Any] = {"error": {"message": message}}
    if details:
        body["error"]["details"] = details
    return JsonResponse(body, status=status)


def _read_body(request: HttpRequest) -> bytes:
    """The request body, decompressed, refused early when it is too large either way."""
    limit = protocol.MAX_BODY_BYTES
    declared = request.META.get("CONTENT_LENGTH") or "0"
    if not declared.isdigit() or int(declared) > limit:
        raise IngestError(413, f"body larger than {limit} bytes")
    raw = request.read(limit + 1)
    if len(raw) > limit:
        raise IngestError(413, f"body larger than {limit} bytes")
    encoding = request.META.get("HTTP_CONTENT_ENCODING", "identity").lower()
    if encoding == "identity":
        return raw
    if encoding != "gzip":
        raise IngestError(415, f"unsupported Content-Encoding {encoding!r}; use gzip or none")
    decompressor = zlib.decompressobj(wbits=zlib.MAX_WBITS | 16)
    try:
        body = decompressor.decompress(raw, limit + 1)
    except (zlib.error, gzip.BadGzipFile) as exc:
        raise IngestError(400, f"body is not valid gzip: {exc}") from exc
    if len(body) > limit or decompressor.unconsumed_tail:
        raise IngestError(413, f"decompressed body larger than {limit} bytes")
    return body


def _unstorable_text(data: Any) -> str | None:
    """Where the JSON holds text no database column can store (NUL, lone surrogates), or None.

    JSON escapes can carry both; PostgreSQL refuses them at INSERT, which would turn a bad
    report into a server error halfway through storing it.
    """
    stack: list[tuple[str, Any]] = [("", data)]
    while stack:
        path, value = stack.pop()
        if isinstance(value, dict):
            for key, child in value.items():
                stack.append((f"{path}.{key}" if path else str(key), key))
                stack.append((f"{path}.{key}" if path else str(key), child))
        elif isinstance(value, list):
            stack.extend((f"{path}.{index}", child) for index, child in enumerate(value))
        elif isinstance(value, str) and ("\x00" in value or _has_surrogate(value)):
            return path or "(body)"
    return None


def _has_surrogate(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


# Where a body can hold NUL or a lone surrogate: only as a ``\\u`` escape (raw NUL is not
# valid JSON, raw surrogates are not valid UTF-8). Bodies without one skip the walk.
_ESCAPE = re.compile(rb"\\u")


def _parse(request: HttpRequest, model: type[M]) -> M:
    """The body as ``model``; refused with a 4xx that says what is wrong, nothing stored.

    A body without escapes is parsed and validated in one step (pydantic's own JSON
    parser); anything it refuses, or any body with escapes, takes the careful path, which
    says exactly what is wrong.
    """
    body = _read_body(request)
    if _ESCAPE.search(body) is None:
        try:
            return model.model_validate_json(body)
        except ValidationError:
            pass
    too_deep = f"body is nested more than {protocol.MAX_JSON_DEPTH} deep"
    try:
        data = json.loads(body)
    except RecursionError as exc:
        raise IngestError(400, too_deep) from exc
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise IngestError(400, f"body is not JSON: {exc}") from exc
    if protocol.nested_deeper_than(data, protocol.MAX_JSON_DEPTH):
        raise IngestError(400, too_deep)
    where = _unstorable_text(data)
    if where is not None:
        raise IngestError(400, "report refused, nothing stored", [f"{where[:200]}: NUL character or invalid UTF-8"])
    if isinstance(data, dict) and model is protocol.Batch and data.get("version") != protocol.PROTOCOL_VERSION:
        raise IngestError(400, f"unsupported protocol version {data.get('version')!r}; this panel speaks 1")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise IngestError(400, "report refused, nothing stored", protocol.error_summary(exc.errors())) from exc


def _ip(text: str) -> str:
    """``text`` as a normalised IP address (IPv4-mapped IPv6 as IPv4), or empty if it is none."""
    try:
        address = ipaddress.ip_address(text.strip())
    except ValueError:
        return ""
    mapped = getattr(address, "ipv4_mapped", None)
    return str(mapped or address)


def agent_peer(request: HttpRequest) -> str:
    """The address the agent's request came from, as the panel sees it; empty if unknown.

    The connection's peer (REMOTE_ADDR, which the ASGI handler fills from the client of
    the connection). Behind a reverse proxy that is the proxy, so ``AGENT_ADDRESS_HEADER``
    names the header the proxy writes the agent's address into; its last entry is the one
    the proxy itself added. The header counts only when configured: any client can send it.
    """
    if settings.AGENT_ADDRESS_HEADER:
        forwarded = _ip(request.headers.get(settings.AGENT_ADDRESS_HEADER, "").rsplit(",", 1)[-1])
        if forwarded:
            return forwarded
    return _ip(request.META.get("REMOTE_ADDR", ""))


def _bearer(request: HttpRequest) -> str:
    header = request.META.get("HTTP_AUTHORIZATION", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise IngestError(401, "missing 'Authorization: Bearer <node token>'")
    return token.strip()


DATABASE_RETRY_AFTER_S = 5


def _refusals(view: View) -> View:
    """Turn refusals into their status; a database that cannot write (down, read-only, disk
    full) into 503, so agents keep the report and send it again instead of dropping it."""

    def wrapped(request: HttpRequest) -> HttpResponse:
        try:
            return view(request)
        except IngestError as exc:
            return error_response(exc.status, exc.message, exc.details)
        except (OperationalError, InternalError) as exc:
            logger.warning("agent API: database unavailable, %s refused: %s", request.path, exc)
            response = error_response(503, f"database unavailable, nothing stored; send again later ({exc})"[:500])
            response["Retry-After"] = str(DATABASE_RETRY_AFTER_S)
            return response

    return wrapped


@csrf_exempt
@require_POST
@_refusals
def register(request: HttpRequest) -> JsonResponse:
    registration = _parse(request, protocol.Registration)
    node, token = node_register(registration=registration, peer=agent_peer(request))
    reply = protocol.Registered(node=node.name, node_token=token, report_interval_s=5.0)
    return JsonResponse(reply.model_dump(), status=201)


REPORT_WINDOW_S = 60


_redis_client: Any = None


def _count(key: str) -> int:
    """Count one more under ``key``, which lives two windows: in Redis where the panel has it (one
    round trip: INCR and EXPIRE NX pipelined), else in this process's cache."""
    global _redis_client
    if settings.REDIS_URL:
        if _redis_client is None:
            import redis

            _redis_client = redis.Redis.from_url(settings.REDIS_URL)
        pipe = _redis_client.pipeline(transaction=False)
        pipe.incr(f"gpufleet:{key}")
        pipe.expire(f"gpufleet:{key}", int(2 * REPORT_WINDOW_S), nx=True)
        count, _ = pipe.execute()
        return int(count)
    if cache.add(key, 1, timeout=2 * REPORT_WINDOW_S):
        return 1
    try:
        return int(cache.incr(key))
    except ValueError:  # expired since the add refused: this request starts it again
        cache.add(key, 1, timeout=2 * REPORT_WINDOW_S)
        return 1


def report_rate_wait(node: Node, *, now: float | None = None) -> int:
    """Count one report request of ``node``; the seconds until it may report again, 0 if within the bound.

    A node's token makes at most ``AGENT_REPORTS_PER_MINUTE`` report requests per minute of
    the clock. The count is kept where every panel process sees it (Redis where the panel
    has it, ``_count``), one counter per node and minute, incremented atomically, so several
    workers together allow the bound once, not once each. A counter lives two minutes, so it
    never expires in the minute it counts. Without Redis the bound is not enforced (logged):
    reports keep flowing while it is down.
    """
    now = time.time() if now is None else now
    window = int(now // REPORT_WINDOW_S)
    key = f"agent-reports:{node.pk}:{node.token_hash[:16]}:{window}"
    try:
        count = _count(key)
    except (RedisError, OSError) as exc:
        logger.warning("agent API: cache unavailable, report rate of node %s not bounded: %s", node.name, exc)
        return 0
    if count <= settings.AGENT_REPORTS_PER_MINUTE:
        return 0
    return max(1, math.ceil((window + 1) * REPORT_WINDOW_S - now))


@csrf_exempt
@require_POST
@_refusals
def report(request: HttpRequest) -> HttpResponse:
    node = node_authenticate(token=_bearer(request))
    wait = report_rate_wait(node)
    if wait:
        limit = settings.AGENT_REPORTS_PER_MINUTE
        response = error_response(
            429, f"node {node.name} sent more than {limit} reports this minute; nothing stored, send again in {wait} s"
        )
        response["Retry-After"] = str(wait)
        return response
    batch = _parse(request, protocol.Batch)
    reply = report_ingest(node=node, batch=batch, peer=agent_peer(request))
    return HttpResponse(reply.model_dump_json(exclude_defaults=True), content_type="application/json")
