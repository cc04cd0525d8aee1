"""The address a request comes from, as far as the panel can know it, behind a reverse proxy or not.

A client can write anything in ``X-Forwarded-For``; only the entries that trusted proxies
appended can be believed. So the header counts only when the connection's peer is a
proxy in ``TRUSTED_PROXIES``, and then it is read from the right: each trusted proxy's
entry is skipped, and the first address that is not one is the client. Used by the
``/metrics`` allowlist and by login throttling, so a client behind a proxy is neither
let in as the proxy nor locked out together with everyone else behind it.
"""

from __future__ import annotations

import ipaddress

from django.conf import settings
from django.http import HttpRequest

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def _trusted(address: Address) -> bool:
    return any(address in ipaddress.ip_network(proxy, strict=False) for proxy in settings.TRUSTED_PROXIES)


def _parsed(text: str) -> Address | None:
    try:
        return ipaddress.ip_address(text.strip())
    except ValueError:
        return None


def client_address(request: HttpRequest) -> Address | None:
    """The client's address: the peer's, or through trusted proxies the last untrusted hop; None if unreadable."""
    address = _parsed(request.META.get("REMOTE_ADDR", ""))
    if address is None or not _trusted(address):
        return address
    for hop in reversed(request.META.get("HTTP_X_FORWARDED_FOR", "").split(",")):
        if not hop.strip():
            continue
        address = _parsed(hop)
        if address is None or not _trusted(address):
            return address
    return address


def client_address_text(request: HttpRequest) -> str | None:
    """``client_address`` as text, for django-axes (``AXES_CLIENT_IP_CALLABLE``)."""
    address = client_address(request)
    return str(address) if address is not None else None
