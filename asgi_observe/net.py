"""Addresses, networks, and the one rule for "who is the client behind the proxies".

`X-Forwarded-For` is client-controlled text: anything left of the address our own
trusted proxy appended may be forged. The rule, used by the metrics guard, the access
log (``client_ip``) and tracing (``client.address``) alike:

1. The socket peer (``scope["client"]``) is the client unless it is a trusted proxy.
2. Behind a trusted peer, the ``X-Forwarded-For`` hops (repeated headers joined in
   order) are walked from the right; trusted hops are skipped and the first untrusted
   hop is the client. Hops left of it were written by the client itself and prove
   nothing.
3. A hop that is not an IP address (``unknown``, an RFC 7239 obfuscated identifier,
   text over 64 characters) makes the client unknown (None): the chain can no longer
   be verified, and an allow-list must fail closed.
4. At most `MAX_HOPS` hops are examined. If all of them are trusted and the chain is
   longer, the client is unknown; if all of a shorter chain are trusted, the left-most
   hop is the client.
5. Addresses are normalised: ports and brackets are dropped and IPv4-mapped IPv6
   addresses (``::ffff:10.0.0.1``) become IPv4, so IPv4 networks match them. A peer
   that is not an IP address (a Unix socket path) gives None.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from functools import lru_cache
from typing import cast

from asgi_observe.types import Scope

__all__ = [
    "MAX_HOPS",
    "IPAddress",
    "IPNetwork",
    "client_address",
    "client_ip",
    "in_networks",
    "parse_address",
    "parse_networks",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

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


def parse_networks(
    value: str | IPNetwork | Iterable[str | IPNetwork] | None, *, name: str
) -> tuple[IPNetwork, ...]:
    """Parse an allow-list: CIDR strings (one comma-separated string or several), or networks.

    Bare addresses mean a single host (``10.0.0.1`` is ``10.0.0.1/32``). Host bits set
    (``10.0.0.1/8``) are refused rather than silently masked: a typo in an allow-list
    must not widen it. Raises `ValueError` naming `name` and the offending entry, and
    `TypeError` for entries that are neither strings nor networks.
    """
    if value is None:
        return ()
    items: Iterable[str | IPNetwork]
    if isinstance(value, str):
        items = value.split(",")
    elif isinstance(value, ipaddress.IPv4Network | ipaddress.IPv6Network):
        items = (value,)
    else:
        items = value
    networks: list[IPNetwork] = []
    for item in items:
        if isinstance(item, ipaddress.IPv4Network | ipaddress.IPv6Network):
            networks.append(item)
            continue
        if not isinstance(cast(object, item), str):  # untyped callers (YAML configs)
            msg = f"invalid {name} entry {item!r}: expected a CIDR string or an ip_network"
            raise TypeError(msg)
        text = item.strip()
        if not text:
            continue
        try:
            networks.append(ipaddress.ip_network(text, strict=True))
        except ValueError as exc:
            shown = value if isinstance(value, str) else text
            msg = f"invalid {name}={shown!r}: {text!r} is not a CIDR or IP address ({exc})"
            raise ValueError(msg) from None
    return tuple(networks)


def in_networks(address: IPAddress, networks: Iterable[IPNetwork]) -> bool:
    """Whether `address` is in any of `networks` (across IP versions simply False)."""
    return any(address in network for network in networks)


def _peer(text: str) -> IPAddress | None:
    # Checked before the cache: only short texts are kept, so it is bounded in bytes.
    return _cached_peer(text) if len(text) <= _MAX_HOP_LENGTH else None


@lru_cache(maxsize=1024)
def _cached_peer(text: str) -> IPAddress | None:
    # Peers repeat: a few proxies or clients send most requests.
    return parse_address(text)


def _forwarded_hops(scope: Scope) -> list[str]:
    """The right-most `MAX_HOPS` + 1 hops of every ``X-Forwarded-For`` header, in order."""
    values = [
        bytes(value).decode("latin-1")
        for key, value in scope.get("headers") or ()
        if bytes(key).lower() == b"x-forwarded-for"
    ]
    if not values:
        return []
    # Repeated headers are one list, in order (RFC 9110 section 5.3); rsplit bounds the
    # work on a huge header to the hops that can matter.
    hops = ",".join(values).rsplit(",", MAX_HOPS)
    return [hop for hop in hops if hop.strip()]


def client_address(scope: Scope, trusted_proxies: tuple[IPNetwork, ...] = ()) -> IPAddress | None:
    """The address of the client by the rule in this module's docstring, or None.

    Never raises for a malformed scope or header: the answer is then None.
    """
    try:
        return _walk(scope, trusted_proxies)
    except Exception:  # a malformed scope must not break the request or its caller
        return None


def _walk(scope: Scope, trusted_proxies: tuple[IPNetwork, ...]) -> IPAddress | None:
    client = scope.get("client")
    if not isinstance(client, list | tuple) or not client or not isinstance(client[0], str):
        return None
    peer = _peer(client[0])
    if peer is None or not trusted_proxies or not in_networks(peer, trusted_proxies):
        return peer
    hops = _forwarded_hops(scope)
    if not hops:
        return peer
    caller: IPAddress | None = peer
    for hop in reversed(hops[-MAX_HOPS:]):
        caller = parse_address(hop)
        if caller is None or not in_networks(caller, trusted_proxies):
            return caller
    if len(hops) > MAX_HOPS:
        return None  # every examined hop was a proxy and the chain goes on: unverifiable
    return caller


def client_ip(scope: Scope, trusted_proxies: tuple[IPNetwork, ...] = ()) -> str | None:
    """`client_address` as text (for log lines and span attributes), or None."""
    address = client_address(scope, trusted_proxies)
    return None if address is None else str(address)
