"""The one rule for the client behind the proxies, and the address and CIDR parsers.

The guard, the access log and tracing all ask `asgi_observe.net`; the last test checks
that, for the same request, the three name the same caller.
"""

from __future__ import annotations

import ipaddress
from typing import Any

import httpx
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from asgi_observe import AccessLogMiddleware, TracingMiddleware
from asgi_observe.net import (
    MAX_HOPS,
    IPNetwork,
    client_address,
    client_ip,
    parse_address,
    parse_networks,
)
from asgi_observe.security import MetricsGuard
from asgi_observe.types import Receive, Scope, Send

PROXIES: tuple[IPNetwork, ...] = parse_networks(
    ["10.0.0.0/8", "fd00::/8", "2001:db8:ffff::/48"], name="trusted_proxies"
)


def _scope(peer: str | None, *forwarded: bytes) -> Scope:
    return {
        "type": "http",
        "client": None if peer is None else (peer, 1234),
        "headers": [(b"x-forwarded-for", value) for value in forwarded],
    }


CASES = [
    ("203.0.113.7", [b"1.2.3.4"], (), "203.0.113.7"),  # nothing trusted
    ("203.0.113.7", [b"1.2.3.4"], PROXIES, "203.0.113.7"),  # peer not a proxy
    ("10.0.0.2", [b"1.2.3.4"], PROXIES, "1.2.3.4"),
    ("10.0.0.2", [b"6.6.6.6, 1.2.3.4"], PROXIES, "1.2.3.4"),  # left part is forgeable
    ("10.0.0.2", [b"1.2.3.4, 10.0.0.9"], PROXIES, "1.2.3.4"),  # skip trusted hops
    ("10.0.0.2", [b"10.0.0.8, 10.0.0.9"], PROXIES, "10.0.0.8"),  # all trusted: left-most
    ("10.0.0.2", [b"6.6.6.6", b"1.2.3.4, 10.0.0.7"], PROXIES, "1.2.3.4"),  # repeated headers
    ("10.0.0.2", [], PROXIES, "10.0.0.2"),
    ("10.0.0.2", [b""], PROXIES, "10.0.0.2"),
    ("10.0.0.2", [b",,, ,"], PROXIES, "10.0.0.2"),
    # IPv6, ports, brackets and IPv4-mapped addresses are normalised.
    ("10.0.0.2", [b"1.2.3.4:5678"], PROXIES, "1.2.3.4"),
    ("10.0.0.2", [b"[2001:db8::1]:443"], PROXIES, "2001:db8::1"),
    ("10.0.0.2", [b"2001:db8::1"], PROXIES, "2001:db8::1"),
    ("10.0.0.2", [b"::ffff:1.2.3.4"], PROXIES, "1.2.3.4"),
    ("fd00::1", [b"1.2.3.4"], PROXIES, "1.2.3.4"),  # IPv6 proxy
    ("2001:db8:ffff::1", [b"[::ffff:10.0.0.3]:80, 1.2.3.4"], PROXIES, "1.2.3.4"),
    ("::ffff:10.0.0.2", [b"1.2.3.4"], PROXIES, "1.2.3.4"),  # IPv4-mapped peer is a proxy
    ("::ffff:203.0.113.7", [], (), "203.0.113.7"),
    # A malformed hop where the walk needs it makes the client unknown (fail closed).
    ("10.0.0.2", [b"garbage"], PROXIES, None),
    ("10.0.0.2", [b"1.2.3.4, unknown"], PROXIES, None),
    ("10.0.0.2", [b"1.2.3.4, 10.0.0.9, _hidden"], PROXIES, None),
    ("10.0.0.2", [b"1.2.3.4, garbage, 10.0.0.9"], PROXIES, None),
    ("10.0.0.2", [b"[2001:db8::5"], PROXIES, None),
    ("10.0.0.2", [b"\xff\xfe\r\n1.2.3.4"], PROXIES, None),
    ("10.0.0.2", [b"9" * 10_000], PROXIES, None),
    # ...but one left of the client does not matter: the walk stops before it.
    ("10.0.0.2", [b"\xff\xfe, 1.2.3.4"], PROXIES, "1.2.3.4"),
    ("10.0.0.2", [b"garbage, 1.2.3.4, 10.0.0.7"], PROXIES, "1.2.3.4"),
    # Too many hops: all examined ones trusted and more beyond is unverifiable.
    ("10.0.0.2", [b",".join([b"10.0.0.1"] * 5000)], PROXIES, None),
    ("10.0.0.2", [b"1.2.3.4" + b", 10.0.0.1" * MAX_HOPS], PROXIES, None),
    ("10.0.0.2", [b"1.2.3.4" + b", 10.0.0.1" * (MAX_HOPS - 1)], PROXIES, "1.2.3.4"),
    ("10.0.0.2", [b"6.6.6.6, " * 5000 + b"1.2.3.4"], PROXIES, "1.2.3.4"),
    # Peers that are not addresses.
    ("testclient", [b"1.2.3.4"], PROXIES, None),
    ("/run/app.sock", [], (), None),
    (None, [b"1.2.3.4"], PROXIES, None),
]


@pytest.mark.parametrize(("peer", "forwarded", "trusted", "expected"), CASES)
def test_the_client_rule(
    peer: str | None, forwarded: list[bytes], trusted: tuple[IPNetwork, ...], expected: str | None
) -> None:
    scope = _scope(peer, *forwarded)
    assert client_ip(scope, trusted) == expected
    address = client_address(scope, trusted)
    assert address == (None if expected is None else ipaddress.ip_address(expected))


@pytest.mark.parametrize(
    "scope",
    [
        {"type": "http"},
        {"type": "http", "client": 42},
        {"type": "http", "client": ()},
        {"type": "http", "client": ("10.0.0.2", 1), "headers": [(b"x-forwarded-for", None)]},
        {"type": "http", "client": ("10.0.0.2", 1), "headers": None},
        {"type": "http", "client": ("10.0.0.2", 1), "headers": [(b"x-forwarded-for",)]},
    ],
)
def test_malformed_scopes_never_raise(scope: Scope) -> None:
    assert client_ip(scope, PROXIES) in (None, "10.0.0.2")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1.2.3.4", "1.2.3.4"),
        (" 1.2.3.4 ", "1.2.3.4"),
        ("1.2.3.4:80", "1.2.3.4"),
        ("[::1]", "::1"),
        ("[::1]:8443", "::1"),
        ("::ffff:192.0.2.1", "192.0.2.1"),
        ("[::1", None),
        ("", None),
        ("unknown", None),
        ("1.2.3.4.5", None),
        ("x" * 100, None),
    ],
)
def test_parse_address(text: str, expected: str | None) -> None:
    parsed = parse_address(text)
    assert (None if parsed is None else str(parsed)) == expected


def test_parse_networks_accepts_hosts_and_refuses_typos() -> None:
    assert parse_networks("10.0.0.1, 2001:db8::/32", name="X") == (
        ipaddress.ip_network("10.0.0.1/32"),
        ipaddress.ip_network("2001:db8::/32"),
    )
    assert parse_networks(None, name="X") == ()
    with pytest.raises(ValueError, match=r"invalid TRUSTED_PROXIES='10.0.0.1/8'"):
        parse_networks("10.0.0.1/8", name="TRUSTED_PROXIES")  # host bits would widen it
    with pytest.raises(TypeError, match="expected a CIDR string"):
        parse_networks([42], name="X")  # type: ignore[list-item]


@pytest.mark.parametrize(
    ("forwarded", "expected"),
    [
        (b"6.6.6.6, 192.0.2.10", "192.0.2.10"),
        (b"192.0.2.10, unknown", None),
        (b"192.0.2.11", "192.0.2.11"),
        (b"::ffff:192.0.2.10", "192.0.2.10"),
    ],
)
async def test_guard_access_log_and_tracing_name_the_same_client(
    forwarded: bytes, expected: str | None
) -> None:
    """One request through all three consumers of the rule: the same caller each time."""
    seen: dict[str, Any] = {}

    async def endpoint(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    class Capture:
        def info(self, event: str, **fields: Any) -> None:
            seen["access"] = fields["client_ip"]

        warning = error = info

    exporter = InMemorySpanExporter()
    provider = TracerProvider(shutdown_on_exit=False)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    proxies = "10.0.0.0/8"
    app = TracingMiddleware(
        AccessLogMiddleware(
            endpoint, logger=Capture(), trusted_proxies=parse_networks(proxies, name="x")
        ),
        tracer_provider=provider,
        trusted_proxies=proxies,
    )
    guarded = MetricsGuard(app, allow="192.0.2.10", trusted_proxies=proxies)
    headers = {"x-forwarded-for": forwarded.decode()}
    statuses = []
    for target in (app, guarded):
        transport = httpx.ASGITransport(app=target, client=("10.0.0.2", 1234))
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            statuses.append((await client.get("/x", headers=headers)).status_code)
    provider.shutdown()
    spans = exporter.get_finished_spans()
    assert spans[0].attributes is not None
    assert seen["access"] == expected
    assert spans[0].attributes.get("client.address") == expected
    # The guard lets the caller in exactly when it is the allowed address; an unknown
    # caller is refused (fail closed).
    assert statuses == [200, 200 if expected == "192.0.2.10" else 403]
