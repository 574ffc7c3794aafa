"""`metrics_app`: the ASGI app that serves a registry to Prometheus.

Content negotiation follows the ``Accept`` header: Prometheus asks for OpenMetrics, the
only format that carries exemplars; a browser or curl gets the classic text format. The
body is gzipped when the client accepts it.
"""

from __future__ import annotations

import gzip
import logging
from collections.abc import Callable

from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.exposition import choose_encoder, generate_latest
from prometheus_client.registry import Collector

from asgi_observe.types import ASGIApp, Receive, Scope, Send

__all__ = ["PLAIN_TEXT", "metrics_app"]

logger = logging.getLogger("asgi_observe")

PLAIN_TEXT = "text/plain; version=0.0.4; charset=utf-8"

_Encoder = Callable[[Collector], bytes]


def _header(scope: Scope, name: bytes) -> str:
    for key, value in scope.get("headers") or ():
        if key.lower() == name:
            return bytes(value).decode("latin-1")
    return ""


def _encoder_for(accept: str) -> tuple[_Encoder, str]:
    try:
        return choose_encoder(accept)
    except Exception:  # a malformed Accept header must not turn a scrape into a 500
        return generate_latest, PLAIN_TEXT


def _accepts_gzip(accept_encoding: str) -> bool:
    for item in accept_encoding.split(","):
        coding, _, params = item.strip().partition(";")
        if coding.strip().lower() == "gzip":
            return params.replace(" ", "") not in ("q=0", "q=0.0", "q=0.00", "q=0.000")
    return False


async def respond(
    send: Send, status: int, body: bytes, content_type: str, *extra: tuple[bytes, bytes]
) -> None:
    """Send a complete, small response in two messages."""
    headers = [
        (b"content-type", content_type.encode("latin-1")),
        (b"content-length", str(len(body)).encode("latin-1")),
        *extra,
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def complete_lifespan(receive: Receive, send: Send) -> None:
    """Answer lifespan events so the app can be served on its own (``uvicorn metrics_app``)."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


def metrics_app(
    registry: CollectorRegistry | None = None,
    *,
    multiprocess_dir: str | None = None,
) -> ASGIApp:
    """An ASGI app serving `registry` in the Prometheus exposition formats.

    Args:
        registry: what to expose (default: prometheus-client's global registry).
        multiprocess_dir: the ``PROMETHEUS_MULTIPROC_DIR`` of a multi-worker deployment;
            each scrape then aggregates the files of every worker, as prometheus-client
            documents, instead of this process' registry.

    GET and HEAD only (405 otherwise). Lifespan events are completed.
    """
    source: Collector = REGISTRY if registry is None else registry

    def collect_source() -> Collector:
        if multiprocess_dir is None:
            return source
        from prometheus_client import multiprocess

        aggregate = CollectorRegistry()
        multiprocess.MultiProcessCollector(aggregate, path=multiprocess_dir)  # type: ignore[no-untyped-call]
        return aggregate

    async def serve_metrics(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await complete_lifespan(receive, send)
            return
        if scope["type"] != "http":
            return  # websockets: closing without accepting is a polite refusal
        method = scope.get("method")
        if method not in ("GET", "HEAD"):
            await respond(
                send,
                405,
                b"Method Not Allowed\n",
                "text/plain; charset=utf-8",
                (b"allow", b"GET, HEAD"),
            )
            return
        encoder, content_type = _encoder_for(_header(scope, b"accept"))
        body = encoder(collect_source())
        extra: list[tuple[bytes, bytes]] = [(b"vary", b"Accept, Accept-Encoding")]
        if _accepts_gzip(_header(scope, b"accept-encoding")):
            body = gzip.compress(body, compresslevel=6)
            extra.append((b"content-encoding", b"gzip"))
        if method == "HEAD":
            headers = [
                (b"content-type", content_type.encode("latin-1")),
                (b"content-length", str(len(body)).encode("latin-1")),
                *extra,
            ]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": b""})
            return
        await respond(send, 200, body, content_type, *extra)

    return serve_metrics
