"""The client's address: the peer's own, or the one a trusted proxy forwarded.

``X-Forwarded-For`` is believed only when the peer is a proxy named in ``GRACE_TRUSTED_PROXIES``
(none by default), so a client cannot choose the address the sign-in limit counts it under. The
header is read from the nearest hop back: each trusted proxy vouches for the address before it,
and the first address that is not a trusted proxy is the client.
"""

from __future__ import annotations

from collections.abc import Sequence
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address

from starlette.requests import Request

__all__ = ["client_address"]

Network = IPv4Network | IPv6Network


def client_address(request: Request, trusted: Sequence[Network]) -> str:
    """Return the address ``request`` came from, for limits and logs."""
    peer = request.client.host if request.client else "unknown"
    if not trusted or not _is_trusted(peer, trusted):
        return peer
    hops = [hop.strip() for line in request.headers.getlist("x-forwarded-for") for hop in line.split(",")]
    nearest = peer
    for hop in reversed([h for h in hops if h]):
        if not _is_trusted(hop, trusted):
            return hop if _parse(hop) is not None else nearest
        nearest = hop
    return nearest


def _parse(text: str) -> IPv4Address | IPv6Address | None:
    try:
        return ip_address(text)
    except ValueError:
        return None


def _is_trusted(text: str, trusted: Sequence[Network]) -> bool:
    address = _parse(text)
    return address is not None and any(address in network for network in trusted)
