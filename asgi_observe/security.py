"""Access control for the metrics endpoints: bearer token, CIDR allow-list, trusted proxies.

`MetricsGuard` wraps any ASGI app (normally `metrics_app`) and decides, before the app
sees the request, whether the caller may read it. The seed's first rule for ``/metrics``
is that it "should never be publicly accessible"; this module is the in-process half of
that rule (the other half is the internal port, see `asgi_observe.metrics.internal`).
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
from collections.abc import Iterable

from asgi_observe.types import ASGIApp, Receive, Scope, Send

__all__ = [
    "MIN_TOKEN_LENGTH",
    "IPAddress",
    "IPNetwork",
    "MetricsGuard",
    "client_address",
    "parse_networks",
]

logger = logging.getLogger("asgi_observe")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

MIN_TOKEN_LENGTH = 16
"""Same floor as ``METRICS_TOKEN`` in `Settings`: shorter secrets are guessable."""

_MAX_HOPS = 64  # an X-Forwarded-For chain longer than this is not a real proxy chain
_REALM = b'Bearer realm="metrics"'
_INVALID_TOKEN = b'Bearer realm="metrics", error="invalid_token"'


def _is_str(value: object) -> bool:
    """Type check for untyped callers (configuration loaded from YAML, say)."""
    return isinstance(value, str)


def parse_networks(
    value: str | IPNetwork | Iterable[str | IPNetwork] | None, *, name: str
) -> tuple[IPNetwork, ...]:
    """Normalise an allow-list given as CIDR strings, network objects, or one comma list.

    Bare addresses mean a single host (``10.0.0.1`` is ``10.0.0.1/32``). Host bits set
    (``10.0.0.1/8``) are refused rather than masked: a typo must not widen an allow-list.
    Raises `ValueError` naming the option (`name`) and the offending entry.
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
        if not _is_str(item):
            msg = f"invalid {name} entry {item!r}: expected a CIDR string or an ip_network"
            raise TypeError(msg)
        text = item.strip()
        if not text:
            continue
        try:
            networks.append(ipaddress.ip_network(text, strict=True))
        except ValueError as exc:
            msg = f"invalid {name} entry {text!r}: not a CIDR or IP address ({exc})"
            raise ValueError(msg) from None
    return tuple(networks)


def _check_token(token: str | None) -> bytes | None:
    if token is None:
        return None
    if not _is_str(token):
        msg = f"invalid metrics token: expected a string, got {type(token).__name__}"
        raise TypeError(msg)
    if len(token) < MIN_TOKEN_LENGTH:
        msg = (
            f"invalid metrics token (METRICS_TOKEN): a bearer token must be at least "
            f"{MIN_TOKEN_LENGTH} characters long (got {len(token)})"
        )
        raise ValueError(msg)
    if any(ch.isspace() or not ch.isprintable() for ch in token):
        msg = (
            "invalid metrics token (METRICS_TOKEN): whitespace and control characters "
            "cannot be sent in an Authorization header"
        )
        raise ValueError(msg)
    return token.encode("utf-8")


def _parse_ip(text: str) -> IPAddress | None:
    """An address from a socket peer or an X-Forwarded-For hop; None for anything else.

    Hops may carry a port (``1.2.3.4:5678``, ``[2001:db8::1]:443``) as some proxies write
    them. IPv4-mapped IPv6 addresses (``::ffff:10.0.0.1``, what a dual-stack socket
    reports for an IPv4 peer) are unwrapped so IPv4 allow-lists match them.
    """
    text = text.strip()
    if not text or len(text) > 64:
        return None
    if text.startswith("["):
        end = text.find("]")
        if end == -1:
            return None
        text = text[1:end]
    elif text.count(":") == 1:
        text = text.partition(":")[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _in_any(address: IPAddress, networks: tuple[IPNetwork, ...]) -> bool:
    # `in` across IP versions is simply False, so mixed lists need no special casing.
    return any(address in network for network in networks)


def client_address(scope: Scope, trusted_proxies: tuple[IPNetwork, ...] = ()) -> IPAddress | None:
    """The address of the caller, or None when it cannot be known.

    The socket peer (``scope["client"]``) is the caller unless it is a trusted proxy; then
    ``X-Forwarded-For`` is read from the right, skipping trusted hops, and the right-most
    untrusted hop is the caller: every hop left of it was written by the client itself
    and proves nothing. A hop that is not an address makes the caller unknown. When
    every hop is trusted the left-most one is the caller.
    """
    client = scope.get("client")
    peer: IPAddress | None = None
    if isinstance(client, list | tuple) and client and isinstance(client[0], str):
        peer = _parse_ip(client[0])
    if peer is None or not trusted_proxies or not _in_any(peer, trusted_proxies):
        return peer
    values = [
        bytes(value).decode("latin-1")
        for key, value in scope.get("headers") or ()
        if bytes(key).lower() == b"x-forwarded-for"
    ]
    hops = [hop for hop in ",".join(values).split(",") if hop.strip()]
    if not hops:
        return peer
    caller: IPAddress | None = peer
    for hop in reversed(hops[-_MAX_HOPS:]):
        caller = _parse_ip(hop)
        if caller is None or not _in_any(caller, trusted_proxies):
            return caller
    if len(hops) > _MAX_HOPS:
        return None
    return caller


def _bearer_token(scope: Scope) -> bytes | None:
    """The credentials of the first ``Authorization: Bearer`` header; None when absent.

    The scheme is case-insensitive (RFC 7235 section 2.1); anything else (another scheme,
    no token, embedded spaces) yields None rather than an error.
    """
    for key, value in scope.get("headers") or ():
        if bytes(key).lower() != b"authorization":
            continue
        scheme, _, credentials = bytes(value).strip().partition(b" ")
        credentials = credentials.strip()
        if scheme.lower() != b"bearer" or not credentials or b" " in credentials:
            return None
        return credentials
    return None


class MetricsGuard:
    """Refuse callers outside the allow-list (403) or without the bearer token (401).

    Args:
        app: the ASGI app to protect.
        token: the shared secret expected in ``Authorization: Bearer <token>``; compared
            in constant time. At least 16 characters.
        allow: CIDRs (strings or `ipaddress` networks, or one comma-separated string)
            that may call the app. None or empty means no address restriction.
        trusted_proxies: CIDRs of reverse proxies whose ``X-Forwarded-For`` is believed.
            Without it the socket peer is the caller, whatever the headers say.

    The allow-list is checked first, so a caller from a refused address learns nothing
    about the token. HTTP and websocket scopes are guarded (a refused websocket is closed
    with code 1008 before it is accepted); lifespan passes through. Malformed headers are
    simply a refusal; a failure of the guard itself is logged and refuses (fail closed).
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        token: str | None = None,
        allow: str | IPNetwork | Iterable[str | IPNetwork] | None = None,
        trusted_proxies: str | IPNetwork | Iterable[str | IPNetwork] | None = None,
    ) -> None:
        self.app = app
        self._token = _check_token(token)
        self._allow = parse_networks(allow, name="allow (METRICS_ALLOW)")
        self._proxies = parse_networks(trusted_proxies, name="trusted_proxies (TRUSTED_PROXIES)")

    @property
    def active(self) -> bool:
        """Whether any check is configured (an inactive guard lets everything through)."""
        return self._token is not None or bool(self._allow)

    def _decide(self, scope: Scope) -> tuple[int, bytes]:
        """(status, WWW-Authenticate value): 0 means allowed."""
        if self._allow:
            caller = client_address(scope, self._proxies)
            if caller is None or not _in_any(caller, self._allow):
                return 403, b""
        if self._token is not None:
            presented = _bearer_token(scope)
            if presented is None:
                return 401, _REALM
            if not hmac.compare_digest(presented, self._token):
                return 401, _INVALID_TOKEN
        return 0, b""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        try:
            status, challenge = self._decide(scope)
        except Exception:
            logger.exception("asgi_observe: the metrics guard failed; refusing the request")
            status, challenge = 403, b""
        if not status:
            await self.app(scope, receive, send)
            return
        if kind == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        body = b"Unauthorized\n" if status == 401 else b"Forbidden\n"
        headers = [
            (b"content-type", b"text/plain; charset=utf-8"),
            (b"content-length", str(len(body)).encode("ascii")),
            (b"cache-control", b"no-store"),
        ]
        if challenge:
            headers.append((b"www-authenticate", challenge))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
