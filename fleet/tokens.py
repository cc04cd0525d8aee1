"""Secrets handed to agents and teams: shown once, stored only as a SHA-256 digest.

The secrets are 256 random bits, so a fast digest is enough (no salt or key stretching
needed) and lets the API find the owner of a token with one indexed lookup. That lookup
compares digests, never the secret: how long it takes tells an attacker about the digest
of the guess, which gives nothing toward a token's bytes. Where a secret is compared with
a known value (``token_matches``, the metrics token) the comparison is constant-time.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

PREFIX_LENGTH = 8


def token_generate(*, kind: str) -> str:
    """A new secret such as ``gfn_3kq9...``; ``kind`` is ``gfn`` for nodes, ``gfk`` for keys."""
    return f"{kind}_{secrets.token_urlsafe(32)}"


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def token_prefix(token: str) -> str:
    """The first characters after the kind: enough for people to tell keys apart."""
    return token.split("_", 1)[-1][:PREFIX_LENGTH]


def token_matches(token: str, digest: str) -> bool:
    return hmac.compare_digest(token_hash(token), digest)
