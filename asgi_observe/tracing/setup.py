"""The tracing pipeline built from `Settings`: resource, sampler, OTLP exporter, shutdown.

Every exporter option is taken from the `Settings` values and passed explicitly, so the
pipeline is what `Settings` says even when it was built by hand. The exporter is wrapped
in an `ExportGuard` (export-time redaction, outage reported once), and `shutdown_tracing`
bounds the final flush so a black-holed collector cannot hold up process exit.
"""

from __future__ import annotations

import atexit
import logging
import threading
import urllib.parse
import weakref
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.sampling import ParentBased, Sampler, TraceIdRatioBased
from opentelemetry.sdk.version import __version__ as sdk_version
from opentelemetry.util import types

from asgi_observe.settings import Settings
from asgi_observe.tracing.api import report_once
from asgi_observe.tracing.export import ExportGuard

__all__ = [
    "build_exporter",
    "build_resource",
    "build_sampler",
    "setup_tracing",
    "shutdown_tracing",
]

logger = logging.getLogger("asgi_observe")

DEFAULT_EXPORT_TIMEOUT = 10.0
"""Seconds; the OTLP specification's default for OTEL_EXPORTER_OTLP_TIMEOUT."""

DEFAULT_SHUTDOWN_TIMEOUT = 5.0
"""Seconds `shutdown_tracing` waits for the final flush before dropping what is left."""

_DEFAULT_SERVICE_NAME = "asgi-service"

_install_lock = threading.Lock()
_global_installed = False
_guards: weakref.WeakKeyDictionary[TracerProvider, ExportGuard] = weakref.WeakKeyDictionary()


def build_resource(settings: Settings) -> Resource:
    """Service identity for every span, from the settings only (no environment lookup).

    ``OTEL_SERVICE_NAME`` wins over a ``service.name`` in ``OTEL_RESOURCE_ATTRIBUTES``,
    as the specification says; the built-in default name does not.
    """
    attributes: dict[str, types.AttributeValue] = {
        "telemetry.sdk.language": "python",
        "telemetry.sdk.name": "opentelemetry",
        "telemetry.sdk.version": sdk_version,
    }
    attributes.update(settings.resource_attributes)
    if settings.service_name != _DEFAULT_SERVICE_NAME or "service.name" not in attributes:
        attributes["service.name"] = settings.service_name
    if settings.service_version:
        attributes["service.version"] = settings.service_version
    # Issue 4 names `deployment.environment`; current conventions renamed it to
    # `deployment.environment.name`. Both are set so old and new backends group by it.
    attributes["deployment.environment"] = settings.environment
    attributes["deployment.environment.name"] = settings.environment
    return Resource(attributes)


def build_sampler(settings: Settings) -> Sampler:
    """``ParentBased(TraceIdRatioBased(OTEL_TRACES_SAMPLER_ARG))``.

    Parent-based: a request whose caller sampled it is always recorded, so traces are
    never cut in the middle; only root decisions use the ratio.
    """
    return ParentBased(TraceIdRatioBased(settings.sampler_ratio))


def _http_traces_url(endpoint: str, insecure: bool | None) -> str:
    if "://" not in endpoint:
        endpoint = ("https://" if insecure is False else "http://") + endpoint
    # The generic OTEL_EXPORTER_OTLP_ENDPOINT is a base URL to which the signal path is
    # appended (OTLP exporter specification); an endpoint already naming it is kept.
    base = endpoint.rstrip("/")
    return base if base.endswith("/v1/traces") else f"{base}/v1/traces"


def build_exporter(settings: Settings) -> SpanExporter | None:
    """The OTLP span exporter the settings ask for, or None without an endpoint."""
    endpoint = settings.otlp_endpoint
    if not endpoint:
        return None
    timeout = settings.otlp_timeout or DEFAULT_EXPORT_TIMEOUT
    if settings.otlp_protocol == "http/protobuf":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
            OTLPSpanExporter as HTTPSpanExporter,
        )

        return HTTPSpanExporter(
            endpoint=_http_traces_url(endpoint, settings.otlp_insecure),
            headers=dict(settings.otlp_headers) or None,
            timeout=timeout,
        )
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
        OTLPSpanExporter as GRPCSpanExporter,
    )

    insecure = settings.otlp_insecure
    if insecure is None:
        # What the exporter would infer from the scheme, decided here so the
        # environment is not consulted a second time.
        insecure = urllib.parse.urlsplit(endpoint).scheme == "http"
    # gRPC metadata keys must be lowercase; a mixed-case key fails every export.
    headers = tuple((key.lower(), value) for key, value in settings.otlp_headers)
    return GRPCSpanExporter(
        endpoint=endpoint, insecure=insecure, headers=headers or None, timeout=timeout
    )


def _describe(settings: Settings) -> str:
    return f"{settings.otlp_endpoint} ({settings.otlp_protocol})"


def setup_tracing(settings: Settings | None = None, *, set_global: bool = True) -> TracerProvider:
    """Build a `TracerProvider` from `settings` (default: `Settings.from_env()`).

    Resource from the service name, version, environment and resource attributes;
    parent-based ratio sampling; an OTLP exporter (gRPC or HTTP/protobuf) behind a batch
    processor when an endpoint is configured. Without an endpoint nothing is exported,
    but spans are still created, so log lines carry trace and span ids.

    The first call installs its provider as the global one (OpenTelemetry allows one);
    later calls, and calls with ``set_global=False``, only return a new provider. Flush
    and stop it with `shutdown_tracing` (``instrument()`` does so on lifespan shutdown).
    """
    global _global_installed  # noqa: PLW0603 - process-wide, as OpenTelemetry's own global
    settings = Settings.from_env() if settings is None else settings
    # The SDK's own exit hook can wait 30 s per processor on a black-holed collector;
    # ours is bounded (see shutdown_tracing).
    provider = TracerProvider(
        sampler=build_sampler(settings),
        resource=build_resource(settings),
        shutdown_on_exit=False,
    )
    try:
        exporter = build_exporter(settings)
    except Exception:
        logger.warning(
            "asgi_observe: could not create the OTLP exporter for %s; spans are not exported",
            _describe(settings),
            exc_info=True,
        )
        exporter = None
    if exporter is not None:
        guard = ExportGuard(exporter, target=_describe(settings))
        _guards[provider] = guard
        provider.add_span_processor(BatchSpanProcessor(guard))
    atexit.register(_shutdown_at_exit, weakref.ref(provider))
    if set_global:
        with _install_lock:
            if not _global_installed:
                _global_installed = True
                if isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
                    trace.set_tracer_provider(provider)
                else:
                    logger.info(
                        "asgi_observe: another global tracer provider is already installed; "
                        "keeping it, so the one setup_tracing returned serves only where it "
                        "is passed explicitly"
                    )
    return provider


def shutdown_tracing(provider: Any, *, timeout: float = DEFAULT_SHUTDOWN_TIMEOUT) -> bool:
    """Flush and shut down `provider`, waiting at most `timeout` seconds.

    Returns True when everything was flushed in time. Past the timeout the export in
    flight is interrupted and the spans still queued are dropped (with one warning), so
    a collector that black-holes connections cannot hang process shutdown. Accepts any
    provider; objects without ``shutdown`` (the API's no-op provider) are ignored.
    """
    shutdown = getattr(provider, "shutdown", None)
    if not callable(shutdown):
        return True
    done = threading.Event()

    def run() -> None:
        try:
            shutdown()
        except Exception:
            report_once(
                "provider-shutdown", "asgi_observe: the tracer provider failed to shut down"
            )
        finally:
            done.set()

    threading.Thread(target=run, name="asgi-observe-tracing-shutdown", daemon=True).start()
    if done.wait(timeout):
        return True
    guard = _guards.get(provider) if isinstance(provider, TracerProvider) else None
    if guard is not None:
        guard.abandon()
    logger.warning(
        "asgi_observe: tracing shutdown did not finish within %.1f s; unexported spans were "
        "dropped",
        timeout,
    )
    return False


def _shutdown_at_exit(ref: weakref.ref[TracerProvider]) -> None:
    provider = ref()
    if provider is not None:
        shutdown_tracing(provider)
