"""Who is on the other end of a request, believing proxies only when told to.

`X-Forwarded-For` is client-controlled text: anything left of the address our own
trusted proxy appended may be forged. So the chain is walked from the right, skipping
hops that are themselves trusted proxies, and the first untrusted hop is the client. The
header is believed only when the socket peer is a trusted proxy. The access log uses
`client_ip`; the metrics guard (`asgi_observe.security`) shares `parse_address` and
`in_networks` but refuses a caller behind a garbage hop instead of naming the last hop
it could verify, since an allow-list must fail closed.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from functools import lru_cache

from asgi_observe.settings import IPNetwork
from asgi_observe.types import Scope

__all__ = ["MAX_HOPS", "IPAddress", "client_ip", "in_networks", "parse_address"]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

MAX_HOPS = 32
"""At most this many right-most `X-Forwarded-For` hops are examined (bounded work)."""

_MAX_HOP_LENGTH = 64  # the longest IPv6 literal with brackets, port and zone fits


def parse_address(text: str) -> IPAddress | None:
    """An IP address from a peer or forwarded hop, or None for anything else.

    Accepts ``1.2.3.4``, ``1.2.3.4:5678``, ``::1``, ``[::1]`` and ``[::1]:443``; maps
    IPv4-mapped IPv6 addresses (``::ffff:10.0.0.1``) to IPv4 so IPv4 networks match.
    Garbage (``unknown``, obfuscated RFC 7239 identifiers, overlong text) gives None.
    """
    candidate = text.strip()
    if not candidate or len(candidate) > _MAX_HOP_LENGTH:
        return None
    if candidate.startswith("["):
        end = candidate.find("]")
        if end == -1:
            return None
        candidate = candidate[1:end]
    elif candidate.count(":") == 1:  # IPv4 with a port; IPv6 has at least two colons
        candidate = candidate.partition(":")[0]
    try:
        address = ipaddress.ip_address(candidate)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def in_networks(address: IPAddress, networks: Iterable[IPNetwork]) -> bool:
    # `in` across IP versions is simply False, so mixed lists need no special casing.
    return any(address in network for network in networks)


@lru_cache(maxsize=1024)
def _peer_is_trusted(peer: str, networks: tuple[IPNetwork, ...]) -> bool:
    address = parse_address(peer)
    return address is not None and in_networks(address, networks)


def _forwarded_for(scope: Scope) -> str | None:
    values: list[str] = []
    for name, value in scope.get("headers") or ():
        if name == b"x-forwarded-for":
            values.append(value.decode("latin-1"))
    if not values:
        return None
    return ",".join(values)  # repeated headers are one list, in order (RFC 9110 5.3)


def client_ip(scope: Scope, trusted_proxies: tuple[IPNetwork, ...] = ()) -> str | None:
    """The client's IP address as text, or None when the server did not say.

    Without trusted proxies, or when the socket peer is not one of them, this is the
    peer address as the server reported it. Otherwise `X-Forwarded-For` is walked from
    the right: trusted hops are skipped and the first untrusted one is the client. If
    every hop is trusted the left-most is returned; if a hop is not an IP address the
    walk stops at the last address that could be verified. Never raises.
    """
    try:
        return _client_ip(scope, trusted_proxies)
    except Exception:  # a malformed scope must not break the request or its log line
        return None


def _client_ip(scope: Scope, trusted_proxies: tuple[IPNetwork, ...]) -> str | None:
    client = scope.get("client")
    peer = client[0] if client else None
    if not isinstance(peer, str):
        return None
    if not trusted_proxies or not _peer_is_trusted(peer, trusted_proxies):
        return peer
    forwarded = _forwarded_for(scope)
    if forwarded is None:
        return peer
    result = peer
    hops = forwarded.rsplit(",", MAX_HOPS)
    if len(hops) > MAX_HOPS:
        hops = hops[1:]  # the left-over head holds everything beyond the bound
    for hop in reversed(hops):
        address = parse_address(hop)
        if address is None:
            return result
        result = str(address)
        if not in_networks(address, trusted_proxies):
            return result
    return result
