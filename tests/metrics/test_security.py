"""MetricsGuard and metrics_app guards: token, allow-list, trusted proxies, bad input."""

from __future__ import annotations

import asyncio
import ipaddress

import httpx
import pytest
from prometheus_client import CollectorRegistry, Counter

from asgi_observe.metrics.exposition import metrics_app
from asgi_observe.net import parse_networks
from asgi_observe.security import MetricsGuard
from asgi_observe.types import Message, Receive, Scope, Send
from tests.support import http_get, run_uvicorn

TOKEN = "s3cret-token-0123456789"


def registry_with_sample() -> CollectorRegistry:
    registry = CollectorRegistry()
    Counter("orders", "Orders placed", registry=registry).inc(7)
    return registry


async def call(
    app: object,
    *,
    client: tuple[str, int] = ("127.0.0.1", 5000),
    headers: list[tuple[str, str]] | None = None,
) -> httpx.Response:
    transport = httpx.ASGITransport(app=app, client=client)  # type: ignore[arg-type]
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        # Values as raw bytes: the point is to send what a broken or hostile client would.
        raw = [(name.encode("ascii"), value.encode("utf-8")) for name, value in headers or []]
        return await http.get("/metrics", headers=raw)


# --- token ----------------------------------------------------------------------------


async def test_token_accepts_the_right_bearer() -> None:
    app = metrics_app(registry_with_sample(), token=TOKEN)
    response = await call(app, headers=[("authorization", f"Bearer {TOKEN}")])
    assert response.status_code == 200
    assert "orders_total 7.0" in response.text


async def test_token_scheme_is_case_insensitive() -> None:
    app = metrics_app(registry_with_sample(), token=TOKEN)
    response = await call(app, headers=[("authorization", f"bEaReR {TOKEN}")])
    assert response.status_code == 200


@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "",
        "Bearer",
        "Bearer ",
        "Bearer    ",
        f"Basic {TOKEN}",
        f"Bearer {TOKEN}x",
        f"Bearer {TOKEN[:-1]}",
        f"Bearer {TOKEN} extra",
        f"{TOKEN}",
        "Bearer \u00e9\u00e9\u00e9\u00e9\u00e9\u00e9\u00e9\u00e9\u00e9\u00e9\u00e9\u00e9\u00e9\u00e9\u00e9\u00e9\u00e9",
        "Bearer " + "A" * 10_000,
        "\x00\x01garbage",
    ],
)
async def test_token_refusals_are_401_with_a_challenge(authorization: str | None) -> None:
    app = metrics_app(registry_with_sample(), token=TOKEN)
    headers = [] if authorization is None else [("authorization", authorization)]
    response = await call(app, headers=headers)
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith('Bearer realm="metrics"')
    assert "orders_total" not in response.text


async def test_a_wrong_token_is_reported_as_invalid_token() -> None:
    app = metrics_app(registry_with_sample(), token=TOKEN)
    response = await call(app, headers=[("authorization", "Bearer wrong-wrong-wrong-wrong")])
    assert 'error="invalid_token"' in response.headers["www-authenticate"]


@pytest.mark.parametrize(
    "token", ["short", "", "a" * 15, "sixteen chars ok", "tab\tinside-0123456"]
)
def test_bad_tokens_fail_at_construction(token: str) -> None:
    with pytest.raises(ValueError, match="METRICS_TOKEN"):
        metrics_app(CollectorRegistry(), token=token)


def test_a_non_string_token_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="metrics token"):
        MetricsGuard(metrics_app(CollectorRegistry()), token=1234567890123456789)  # type: ignore[arg-type]


# --- allow-list -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("allow", "client", "status"),
    [
        (["10.0.0.0/8"], "10.1.2.3", 200),
        (["10.0.0.0/8"], "11.1.2.3", 403),
        ("10.0.0.0/8, 192.168.0.0/16", "192.168.9.9", 200),
        (["127.0.0.1"], "127.0.0.1", 200),
        (["127.0.0.1"], "127.0.0.2", 403),
        (["2001:db8::/32"], "2001:db8::1", 200),
        (["2001:db8::/32"], "2001:db9::1", 403),
        (["10.0.0.0/8"], "::ffff:10.9.8.7", 200),  # dual-stack socket reporting an IPv4 peer
        (["10.0.0.0/8"], "2001:db8::1", 403),
        (["::1/128"], "::1", 200),
        (["fe80::/10"], "fe80::1%eth0", 200),
        ([ipaddress.ip_network("172.16.0.0/12")], "172.20.0.5", 200),
        (["10.0.0.0/8"], "not-an-ip", 403),
        (["10.0.0.0/8"], "", 403),
    ],
)
async def test_allow_list(allow: object, client: str, status: int) -> None:
    app = metrics_app(registry_with_sample(), allow=allow)  # type: ignore[arg-type]
    response = await call(app, client=(client, 1234))
    assert response.status_code == status
    if status == 403:
        assert "www-authenticate" not in response.headers
        assert "orders_total" not in response.text


async def test_missing_client_is_refused_when_an_allow_list_is_set() -> None:
    inner = metrics_app(registry_with_sample(), allow=["0.0.0.0/0", "::/0"])
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    scope: Scope = {
        "type": "http",
        "method": "GET",
        "path": "/metrics",
        "headers": [],
        "client": None,
    }
    await inner(scope, receive, send)
    assert sent[0]["status"] == 403


@pytest.mark.parametrize("bad", ["10.0.0.1/8", "10.0.0.0/33", "nope", "2001:db8::/129"])
def test_bad_cidrs_fail_at_construction_naming_the_option(bad: str) -> None:
    with pytest.raises(ValueError, match="METRICS_ALLOW") as info:
        metrics_app(CollectorRegistry(), allow=["10.0.0.0/8", bad])
    assert repr(bad) in str(info.value)
    with pytest.raises(ValueError, match="TRUSTED_PROXIES"):
        metrics_app(CollectorRegistry(), allow="10.0.0.0/8", trusted_proxies=bad)


def test_non_string_entries_are_a_type_error() -> None:
    with pytest.raises(TypeError, match="allow"):
        parse_networks([10], name="allow")  # type: ignore[list-item]


def test_empty_allow_list_means_no_restriction() -> None:
    guard = MetricsGuard(metrics_app(CollectorRegistry()), allow=[])
    assert not guard.active
    assert parse_networks(" , ", name="allow") == ()


# --- combined -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("client", "authorization", "status"),
    [
        ("10.0.0.1", f"Bearer {TOKEN}", 200),
        ("10.0.0.1", None, 401),
        ("8.8.8.8", f"Bearer {TOKEN}", 403),  # the address is checked before the token
        ("8.8.8.8", None, 403),
    ],
)
async def test_guards_combine(client: str, authorization: str | None, status: int) -> None:
    app = metrics_app(registry_with_sample(), token=TOKEN, allow=["10.0.0.0/8"])
    headers = [] if authorization is None else [("authorization", authorization)]
    response = await call(app, client=(client, 1), headers=headers)
    assert response.status_code == status


# --- trusted proxies ------------------------------------------------------------------

PROXIES = parse_networks(["10.0.0.0/8", "2001:db8:ffff::/48"], name="trusted_proxies")


@pytest.mark.parametrize(
    ("peer", "forwarded", "status"),
    [
        ("10.0.0.2", "192.168.1.5", 200),  # trusted proxy forwarding an allowed client
        ("10.0.0.2", "8.8.8.8", 403),
        ("10.0.0.2", "192.168.1.5, 8.8.8.8", 403),  # spoofed left part does not help
        ("8.8.8.8", "192.168.1.5", 403),  # untrusted peer cannot claim an address
        ("10.0.0.2", "\x00\x01\x02", 403),
        ("10.0.0.2", "192.168.1.5:99999", 200),
    ],
)
async def test_forwarded_clients_against_the_allow_list(
    peer: str, forwarded: str, status: int
) -> None:
    app = metrics_app(
        registry_with_sample(), allow=["192.168.0.0/16"], trusted_proxies=["10.0.0.0/8"]
    )
    response = await call(app, client=(peer, 1), headers=[("x-forwarded-for", forwarded)])
    assert response.status_code == status


# --- ASGI behaviour -------------------------------------------------------------------


async def test_lifespan_passes_through_the_guard() -> None:
    seen: list[str] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(scope["type"])

    guard = MetricsGuard(app, token=TOKEN, allow=["10.0.0.0/8"])
    await guard({"type": "lifespan"}, _never_receive, _ignore)
    assert seen == ["lifespan"]


async def test_refused_websocket_is_closed_with_policy_violation() -> None:
    sent: list[Message] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:  # pragma: no cover
        raise AssertionError("must not be reached")

    async def send(message: Message) -> None:
        sent.append(message)

    guard = MetricsGuard(app, token=TOKEN)
    await guard(
        {"type": "websocket", "headers": [], "client": ("1.2.3.4", 1)}, _never_receive, send
    )
    assert sent == [{"type": "websocket.close", "code": 1008}]


async def test_a_failing_decision_refuses_and_logs(caplog: pytest.LogCaptureFixture) -> None:
    guard = MetricsGuard(metrics_app(CollectorRegistry()), token=TOKEN)
    # Headers that are not pairs of bytes: a broken server or middleware upstream.
    response_messages: list[Message] = []

    async def send(message: Message) -> None:
        response_messages.append(message)

    scope: Scope = {
        "type": "http",
        "method": "GET",
        "path": "/metrics",
        "headers": [(b"authorization",)],
    }
    await guard(scope, _never_receive, send)
    assert response_messages[0]["status"] == 403
    assert "metrics guard failed" in caplog.text


async def test_concurrent_requests_are_decided_independently() -> None:
    app = metrics_app(registry_with_sample(), token=TOKEN, allow=["10.0.0.0/8"])
    transport_ok = httpx.ASGITransport(app=app, client=("10.0.0.5", 1))
    transport_far = httpx.ASGITransport(app=app, client=("8.8.8.8", 1))
    async with (
        httpx.AsyncClient(transport=transport_ok, base_url="http://test") as near,
        httpx.AsyncClient(transport=transport_far, base_url="http://test") as far,
    ):
        requests = []
        for i in range(50):
            client = near if i % 2 else far
            headers = {"authorization": f"Bearer {TOKEN}"} if i % 3 else {}
            requests.append(client.get("/metrics", headers=headers))
        responses = await asyncio.gather(*requests)
    for i, response in enumerate(responses):
        expected = 403 if i % 2 == 0 else (200 if i % 3 else 401)
        assert response.status_code == expected, i


async def _never_receive() -> Message:  # pragma: no cover - the guard answers first
    await asyncio.Event().wait()
    return {}


async def _ignore(message: Message) -> None:  # pragma: no cover
    return None


# --- over a real server ---------------------------------------------------------------


def test_guards_over_a_real_uvicorn_use_the_socket_peer() -> None:
    app = metrics_app(registry_with_sample(), token=TOKEN, allow=["127.0.0.0/8"])
    # proxy_headers=False: uvicorn would otherwise rewrite the client from X-Forwarded-For
    # for its default forwarded_allow_ips (127.0.0.1) before the guard sees the scope.
    with run_uvicorn(app, proxy_headers=False) as server:
        url = f"{server.url}/metrics"
        status, headers, body = http_get(url, headers={"Authorization": f"Bearer {TOKEN}"})
        assert status == 200
        assert b"orders_total 7.0" in body
        status, headers, _ = http_get(url, headers={"Authorization": "Bearer"})
        assert status == 401
        assert headers["www-authenticate"] == 'Bearer realm="metrics"'
        # Without trusted proxies a forwarded header cannot move the caller.
        status, _, _ = http_get(
            url, headers={"X-Forwarded-For": "8.8.8.8"} | {"Authorization": f"Bearer {TOKEN}"}
        )
        assert status == 200


def test_a_disallowed_socket_peer_is_refused_over_a_real_uvicorn() -> None:
    app = metrics_app(registry_with_sample(), allow=["10.0.0.0/8", "::1/128"])
    with run_uvicorn(app, proxy_headers=False) as server:
        status, _, body = http_get(f"{server.url}/metrics", headers={"X-Forwarded-For": "10.0.0.1"})
    assert status == 403
    assert b"orders_total" not in body


def test_trusted_loopback_proxy_over_a_real_uvicorn() -> None:
    app = metrics_app(
        registry_with_sample(), allow=["192.168.0.0/16"], trusted_proxies=["127.0.0.1"]
    )
    with run_uvicorn(app, proxy_headers=False) as server:
        url = f"{server.url}/metrics"
        assert http_get(url, headers={"X-Forwarded-For": "192.168.3.4"})[0] == 200
        assert http_get(url, headers={"X-Forwarded-For": "192.168.3.4, 8.8.8.8"})[0] == 403
        assert http_get(url, headers={"X-Forwarded-For": "]]garbage[["})[0] == 403
        assert http_get(url)[0] == 403  # the proxy itself is not in the allow-list
