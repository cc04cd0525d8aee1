"""Hosts joining the fleet (a join token spent on a node and its own token) and proving who
they are on every report (the node token)."""

from __future__ import annotations

from django.db import IntegrityError, transaction
from django.db.models import F, Q
from django.utils import timezone

from agents import protocol
from fleet.events import event_publish
from fleet.models import (
    JoinToken,
    Node,
)
from fleet.telemetry.claims import IngestError, loopback_from_afar, node_address
from fleet.tokens import token_hash


def node_register(*, registration: protocol.Registration, peer: str = "") -> tuple[Node, str]:
    """Spend one use of a join token on a new node; return the node and its token (shown once).

    ``peer`` is the address the request came from; with the advertised address it makes the
    node's address (``node_address``). A host that advertises a loopback address from another
    machine is refused, and the token keeps its use: the fleet could never reach its servers.
    """
    now = timezone.now()
    usable = JoinToken.objects.filter(
        Q(max_uses__isnull=True) | Q(uses__lt=F("max_uses")),
        Q(expires_at__isnull=True) | Q(expires_at__gt=now),
        token_hash=token_hash(registration.join_token),
        revoked_at__isnull=True,
    )
    with transaction.atomic():
        if usable.update(uses=F("uses") + 1) != 1:
            raise IngestError(401, "join token unknown, expired, revoked or used up")
        advertised = registration.advertise_address
        if loopback_from_afar(advertised, peer):
            raise IngestError(
                400,
                f"this host advertises {advertised}, a loopback address, but the panel sees it at {peer}:"
                f" other hosts cannot reach its servers at {advertised}. Run the agent (or install.sh) with"
                f" --advertise-address set to an address they reach, or without it to use {peer}.",
            )
        node = Node(
            join_token=JoinToken.objects.get(token_hash=token_hash(registration.join_token)),
            name=registration.name,
            address=node_address(advertised=advertised, peer=peer) or registration.hostname,
            agent_version=registration.agent_version,
            labels=registration.labels,
            simulated=registration.simulated,
            port_low=registration.port_range[0],
            port_high=registration.port_range[1],
        )
        token = node.issue_token()
        try:
            with transaction.atomic():
                node.save()
        except IntegrityError as exc:
            raise IngestError(409, f"a node named {registration.name!r} exists; rotate its token in the admin") from exc
    event_publish(kind="node", payload={"node": node.name, "status": node.status, "join_token": node.join_token_id})
    return node, token


# Token hashes this process has accepted, with their node's id and name. Only a shortcut
# past one lookup per report: the report's node lock checks the token again.
_known_tokens: dict[str, tuple[int, str]] = {}
KNOWN_TOKENS_MAX = 50_000


def node_authenticate(*, token: str) -> Node:
    """The node a token belongs to (id, name and token hash loaded), refused with 401 if none.

    A token already accepted here is answered from memory. That is safe because
    ``report_ingest`` locks the node's row by id *and* token hash, in the statement it
    runs anyway, so a rotated token or a deleted node is refused before anything is stored.
    """
    digest = token_hash(token)
    known = _known_tokens.get(digest)
    if known is not None:
        return Node(pk=known[0], name=known[1], token_hash=digest)
    node = Node.objects.filter(token_hash=digest).only("pk", "name", "token_hash").first()
    if node is None:
        raise IngestError(401, "unknown node token")
    token_remember(digest, node.pk, node.name)
    return node


def token_remember(digest: str, node_id: int, name: str) -> None:
    """Answer this token from memory from now on (the report's node lock has just checked it)."""
    if len(_known_tokens) >= KNOWN_TOKENS_MAX:
        _known_tokens.clear()
    _known_tokens[digest] = (node_id, name)


def token_forget(digest: str) -> None:
    """Stop answering this token from memory (its node is gone or its token rotated)."""
    _known_tokens.pop(digest, None)
