"""Test-side OTLP receivers on loopback: OTLP/HTTP (protobuf) and OTLP/gRPC.

No OpenTelemetry Collector can be installed on these machines, so spans are exported
over the real wire to these small servers, which decode every
``ExportTraceServiceRequest`` with ``opentelemetry-proto`` and keep the spans.
"""

from __future__ import annotations

import contextlib
import gzip
import ssl
import threading
import zlib
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1 import common_pb2

from tests.support import wait_until

__all__ = ["DecodedSpan", "Receiver", "grpc_receiver", "http_receiver"]


def _value(any_value: common_pb2.AnyValue) -> Any:
    kind = any_value.WhichOneof("value")
    if kind == "array_value":
        return [_value(item) for item in any_value.array_value.values]
    if kind == "kvlist_value":
        return {item.key: _value(item.value) for item in any_value.kvlist_value.values}
    return None if kind is None else getattr(any_value, kind)


def _attributes(items: Any) -> dict[str, Any]:
    return {item.key: _value(item.value) for item in items}


@dataclass
class DecodedSpan:
    """One span as the receiver decoded it from the wire."""

    name: str
    kind: int  # opentelemetry.proto.trace.v1.Span.SpanKind (SERVER == 2)
    trace_id: str
    span_id: str
    parent_span_id: str
    attributes: dict[str, Any]
    resource: dict[str, Any]
    scope: str
    status_code: int  # Status.StatusCode (ERROR == 2)
    events: list[tuple[str, dict[str, Any]]]


@dataclass
class Receiver:
    """Everything one receiver got: decoded spans and the request headers/metadata."""

    endpoint: str
    spans: list[DecodedSpan] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(
        self, request: trace_service_pb2.ExportTraceServiceRequest, headers: dict[str, str]
    ) -> None:
        decoded: list[DecodedSpan] = []
        for resource_spans in request.resource_spans:
            resource = _attributes(resource_spans.resource.attributes)
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    decoded.append(
                        DecodedSpan(
                            name=span.name,
                            kind=span.kind,
                            trace_id=span.trace_id.hex(),
                            span_id=span.span_id.hex(),
                            parent_span_id=span.parent_span_id.hex(),
                            attributes=_attributes(span.attributes),
                            resource=resource,
                            scope=scope_spans.scope.name,
                            status_code=span.status.code,
                            events=[(e.name, _attributes(e.attributes)) for e in span.events],
                        )
                    )
        with self.lock:
            self.spans.extend(decoded)
            self.headers.append(headers)

    def snapshot(self) -> list[DecodedSpan]:
        with self.lock:
            return list(self.spans)

    def wait_for(self, count: int, *, timeout: float = 10) -> list[DecodedSpan]:
        """Poll until at least `count` spans arrived."""
        wait_until(lambda: len(self.snapshot()) >= count, timeout=timeout, what=f"{count} spans")
        return self.snapshot()


@contextlib.contextmanager
def http_receiver(
    path: str = "/v1/traces", tls: ssl.SSLContext | None = None
) -> Iterator[Receiver]:
    """OTLP/HTTP: ``POST <path>`` with a protobuf body, gzip or deflate accepted.

    Each request's headers are recorded, with its path under ``:path``. With `tls` (a
    server context) it serves HTTPS and its endpoint is an ``https://`` URL.
    """
    receiver = Receiver(endpoint="")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            encoding = self.headers.get("Content-Encoding", "")
            if encoding == "gzip":
                body = gzip.decompress(body)
            elif encoding == "deflate":
                body = zlib.decompress(body)
            if self.path != path:
                self.send_response(404)
                self.end_headers()
                return
            request = trace_service_pb2.ExportTraceServiceRequest()
            request.ParseFromString(body)
            headers = {k.lower(): v for k, v in self.headers.items()}
            receiver.add(request, {**headers, ":path": self.path})
            payload = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, format: str, *args: Any) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    scheme = "http"
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
        scheme = "https"
    receiver.endpoint = f"{scheme}://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@contextlib.contextmanager
def grpc_receiver(tls: tuple[bytes, bytes] | None = None) -> Iterator[Receiver]:
    """OTLP/gRPC: a ``TraceService`` on a loopback port; insecure, or TLS with
    `tls` = (private key PEM, certificate PEM), then its endpoint is ``https://``."""
    receiver = Receiver(endpoint="")

    class Servicer(trace_service_pb2_grpc.TraceServiceServicer):
        def Export(  # noqa: N802 - the gRPC method name
            self, request: trace_service_pb2.ExportTraceServiceRequest, context: Any
        ) -> trace_service_pb2.ExportTraceServiceResponse:
            receiver.add(request, dict(context.invocation_metadata()))
            return trace_service_pb2.ExportTraceServiceResponse()

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Servicer(), server)  # type: ignore[no-untyped-call]
    if tls is None:
        port = server.add_insecure_port("127.0.0.1:0")
    else:
        credentials = grpc.ssl_server_credentials([tls])
        port = server.add_secure_port("127.0.0.1:0", credentials)
    server.start()
    receiver.endpoint = f"{'http' if tls is None else 'https'}://127.0.0.1:{port}"
    try:
        yield receiver
    finally:
        server.stop(grace=None).wait(5)
