"""`metrics_app`: the ASGI app that serves a registry to Prometheus.

Content negotiation follows the ``Accept`` header: Prometheus asks for OpenMetrics, the
only format that carries exemplars; a browser or curl gets the classic text format. The
body is gzipped when the client accepts it. Access is guarded by `MetricsGuard` when a
token or an allow-list is given.
"""

from __future__ import annotations

import gzip
import logging
import os
from collections.abc import Callable, Iterable, Iterator

from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.exposition import choose_encoder, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from asgi_observe._asgi import Rendered, header_value, read_only_endpoint
from asgi_observe.metrics.multiprocess import sweep_dead_workers
from asgi_observe.metrics.system import system_collectors_for
from asgi_observe.net import IPNetwork
from asgi_observe.security import MetricsGuard
from asgi_observe.types import ASGIApp, Scope

__all__ = ["PLAIN_TEXT", "ScrapeSource", "guarded", "metrics_app"]

logger = logging.getLogger("asgi_observe")

PLAIN_TEXT = "text/plain; version=0.0.4; charset=utf-8"

_Encoder = Callable[[Collector], bytes]


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


class ScrapeSource(Collector):
    """What one scrape reads: a registry, or the merged worker files, plus extra collectors.

    In multiprocess mode the registry's own samples are per-process (and already in the
    files), so only the files are merged; scrape-time collectors that are not file-backed
    (the `register_system_metrics` collectors of the registry, and `collectors`) are
    computed once, in the process answering, so they report one value and not one per
    worker. Dead workers' live gauges are swept before each multiprocess scrape.
    """

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        *,
        multiprocess_dir: str | os.PathLike[str] | None = None,
        collectors: Iterable[Collector] = (),
    ) -> None:
        self.registry = REGISTRY if registry is None else registry
        self.multiprocess_dir = None if multiprocess_dir is None else os.fspath(multiprocess_dir)
        self._extra = tuple(collectors)
        self._files: Collector | None = None
        if self.multiprocess_dir is not None:
            if not os.path.isdir(self.multiprocess_dir):
                msg = (
                    f"invalid multiprocess_dir (PROMETHEUS_MULTIPROC_DIR) "
                    f"{self.multiprocess_dir!r}: the directory does not exist"
                )
                raise ValueError(msg)
            from prometheus_client import multiprocess

            self._files = multiprocess.MultiProcessCollector(None, path=self.multiprocess_dir)  # type: ignore[no-untyped-call]

    def collect(self) -> Iterator[Metric]:
        if self._files is None or self.multiprocess_dir is None:
            yield from self.registry.collect()
        else:
            sweep_dead_workers(self.multiprocess_dir)
            yield from self._files.collect()
            for system in system_collectors_for(self.registry):
                yield from system.collect()
        for collector in self._extra:
            yield from collector.collect()


def guarded(
    app: ASGIApp,
    *,
    token: str | None = None,
    allow: str | IPNetwork | Iterable[str | IPNetwork] | None = None,
    trusted_proxies: str | IPNetwork | Iterable[str | IPNetwork] | None = None,
) -> ASGIApp:
    """`app` behind a `MetricsGuard` when a token or an allow-list is configured."""
    guard = MetricsGuard(app, token=token, allow=allow, trusted_proxies=trusted_proxies)
    return guard if guard.active else app


def metrics_app(
    registry: CollectorRegistry | None = None,
    *,
    token: str | None = None,
    allow: str | IPNetwork | Iterable[str | IPNetwork] | None = None,
    trusted_proxies: str | IPNetwork | Iterable[str | IPNetwork] | None = None,
    multiprocess_dir: str | os.PathLike[str] | None = None,
    collectors: Iterable[Collector] = (),
) -> ASGIApp:
    """An ASGI app serving `registry` in the Prometheus exposition formats.

    Args:
        registry: what to expose (default: prometheus-client's global registry).
        token: bearer token required in ``Authorization`` (401 otherwise); at least 16
            characters, compared in constant time.
        allow: CIDRs (strings, `ipaddress` networks, or one comma-separated string) allowed
            to scrape (403 otherwise); IPv4 and IPv6.
        trusted_proxies: CIDRs of proxies whose ``X-Forwarded-For`` is believed when
            checking `allow`.
        multiprocess_dir: the ``PROMETHEUS_MULTIPROC_DIR`` of a multi-worker deployment;
            each scrape then aggregates the files of every worker, as prometheus-client
            documents, instead of this process' registry (see `ScrapeSource`).
        collectors: extra scrape-time collectors served with the registry.

    Raises:
        ValueError: on a short token, a malformed CIDR or a missing multiprocess directory,
            at construction, so a misconfiguration stops start-up.

    GET and HEAD only (405 otherwise). Lifespan events are completed.
    """
    source = ScrapeSource(registry, multiprocess_dir=multiprocess_dir, collectors=collectors)

    async def render_metrics(scope: Scope) -> Rendered:
        encoder, content_type = _encoder_for(header_value(scope, b"accept"))
        body = encoder(source)
        extra = [(b"vary", b"Accept, Accept-Encoding")]
        if _accepts_gzip(header_value(scope, b"accept-encoding")):
            body = gzip.compress(body, compresslevel=6)
            extra.append((b"content-encoding", b"gzip"))
        return 200, body, content_type, extra

    serve_metrics = read_only_endpoint(render_metrics)
    return guarded(serve_metrics, token=token, allow=allow, trusted_proxies=trusted_proxies)
