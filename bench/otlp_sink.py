"""A local OTLP/HTTP receiver that keeps nothing: the HTTP benchmark's export target.

No OpenTelemetry Collector can be installed on these machines, so the servers under test
export over the real wire (protobuf over HTTP/1.1, keep-alive) to this process, which
decodes each ``ExportTraceServiceRequest`` only to count its spans and answers 200 with an
empty ``ExportTraceServiceResponse``. The server's side of export (batching, encoding,
the POST) is therefore exactly what it would be against a collector. ``GET /stats``
returns ``{"requests": N, "spans": N}`` so the benchmark can check that spans arrived.

Run as ``python -m bench.otlp_sink``: it binds a free port on 127.0.0.1 and prints
``listening <port>`` once it accepts connections.
"""

from __future__ import annotations

import gzip
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

_lock = threading.Lock()
_stats = {"requests": 0, "spans": 0}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as a collector answers

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        if self.headers.get("Content-Encoding", "") == "gzip":
            body = gzip.decompress(body)
        request = trace_service_pb2.ExportTraceServiceRequest()
        request.ParseFromString(body)
        spans = sum(len(ss.spans) for rs in request.resource_spans for ss in rs.scope_spans)
        with _lock:
            _stats["requests"] += 1
            _stats["spans"] += spans
        self._answer(
            trace_service_pb2.ExportTraceServiceResponse().SerializeToString(),
            "application/x-protobuf",
        )

    def do_GET(self) -> None:
        with _lock:
            payload = json.dumps(_stats).encode()
        self._answer(payload, "application/json")

    def _answer(self, payload: bytes, content_type: str) -> None:
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: object) -> None:
        return  # one line per export on stderr would only add noise


def main() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    print(f"listening {server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
