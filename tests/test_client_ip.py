"""The client address: X-Forwarded-For believed only from trusted proxies."""

from __future__ import annotations

import ipaddress

import pytest

from asgi_observe._client_ip import client_ip, parse_address
from asgi_observe.settings import IPNetwork
from asgi_observe.types import Scope

PROXIES: tuple[IPNetwork, ...] = (
    ipaddress.ip_network("10.0.0.0/8"),
    ipaddress.ip_network("fd00::/8"),
)


def _scope(peer: str | None, *forwarded: bytes) -> Scope:
    return {
        "type": "http",
        "client": None if peer is None else (peer, 1234),
        "headers": [(b"x-forwarded-for", value) for value in forwarded],
    }


@pytest.mark.parametrize(
    ("peer", "forwarded", "trusted", "expected"),
    [
        ("203.0.113.7", [b"1.2.3.4"], (), "203.0.113.7"),  # nothing trusted
        ("203.0.113.7", [b"1.2.3.4"], PROXIES, "203.0.113.7"),  # peer not a proxy
        ("10.0.0.2", [b"1.2.3.4"], PROXIES, "1.2.3.4"),
        ("10.0.0.2", [b"6.6.6.6, 1.2.3.4"], PROXIES, "1.2.3.4"),  # left part is forgeable
        ("10.0.0.2", [b"1.2.3.4, 10.0.0.9"], PROXIES, "1.2.3.4"),  # skip trusted hops
        ("10.0.0.2", [b"10.0.0.8, 10.0.0.9"], PROXIES, "10.0.0.8"),  # all trusted: left-most
        ("10.0.0.2", [b"6.6.6.6", b"1.2.3.4"], PROXIES, "1.2.3.4"),  # repeated headers
        ("10.0.0.2", [], PROXIES, "10.0.0.2"),
        ("10.0.0.2", [b"1.2.3.4:5678"], PROXIES, "1.2.3.4"),
        ("10.0.0.2", [b"[2001:db8::1]:443"], PROXIES, "2001:db8::1"),
        ("10.0.0.2", [b"2001:db8::1"], PROXIES, "2001:db8::1"),
        ("fd00::1", [b"1.2.3.4"], PROXIES, "1.2.3.4"),
        ("::ffff:10.0.0.2", [b"1.2.3.4"], PROXIES, "1.2.3.4"),  # IPv4-mapped peer
        ("10.0.0.2", [b"garbage"], PROXIES, "10.0.0.2"),
        ("10.0.0.2", [b"1.2.3.4, unknown"], PROXIES, "10.0.0.2"),
        ("10.0.0.2", [b"1.2.3.4, 10.0.0.9, _hidden"], PROXIES, "10.0.0.2"),
        ("10.0.0.2", [b"1.2.3.4, garbage, 10.0.0.9"], PROXIES, "10.0.0.9"),
        ("10.0.0.2", [b",,, ,"], PROXIES, "10.0.0.2"),
        ("10.0.0.2", [b"\xff\xfe\r\n1.2.3.4"], PROXIES, "10.0.0.2"),
        ("10.0.0.2", [b"9" * 10_000], PROXIES, "10.0.0.2"),
        ("10.0.0.2", [b",".join([b"10.0.0.1"] * 5000)], PROXIES, "10.0.0.1"),
        ("testclient", [b"1.2.3.4"], PROXIES, "testclient"),
        (None, [b"1.2.3.4"], PROXIES, None),
    ],
)
def test_client_ip(
    peer: str | None, forwarded: list[bytes], trusted: tuple[IPNetwork, ...], expected: str | None
) -> None:
    assert client_ip(_scope(peer, *forwarded), trusted) == expected


@pytest.mark.parametrize(
    "scope",
    [
        {"type": "http"},
        {"type": "http", "client": 42},
        {"type": "http", "client": ("10.0.0.2", 1), "headers": [(b"x-forwarded-for", None)]},
        {"type": "http", "client": ("10.0.0.2", 1), "headers": None},
    ],
)
def test_malformed_scopes_never_raise(scope: Scope) -> None:
    assert client_ip(scope, PROXIES) in (None, "10.0.0.2")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1.2.3.4", "1.2.3.4"),
        (" 1.2.3.4 ", "1.2.3.4"),
        ("[::1]", "::1"),
        ("[::1", None),
        ("", None),
        ("1.2.3.4.5", None),
        ("x" * 100, None),
    ],
)
def test_parse_address(text: str, expected: str | None) -> None:
    parsed = parse_address(text)
    assert (None if parsed is None else str(parsed)) == expected
