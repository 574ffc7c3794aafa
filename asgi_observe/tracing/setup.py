"""The tracing pipeline built from `Settings`: resource, sampler, OTLP exporter, shutdown.

Every exporter option is taken from the `Settings` values and passed explicitly, so the
pipeline is what `Settings` says even when it was built by hand. The exporter is wrapped
in an `ExportGuard` (export-time redaction, outage reported once), and `shutdown_tracing`
bounds the final flush so a black-holed collector cannot hold up process exit.
"""

from __future__ import annotations

import atexit
import inspect
import logging
import threading
import urllib.parse
import weakref
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    ParentBased,
    Sampler,
    TraceIdRatioBased,
)
from opentelemetry.util import types

from asgi_observe.settings import BUILTIN_SAMPLERS, SAMPLER_ENTRY_POINTS, Settings
from asgi_observe.tracing.api import report_once
from asgi_observe.tracing.export import ExportGuard
from asgi_observe.tracing.starter import TraceIdHandover

__all__ = [
    "build_exporter",
    "build_resource",
    "build_sampler",
    "flush_tracing",
    "setup_tracing",
    "shutdown_tracing",
    "traces_endpoint",
]

logger = logging.getLogger("asgi_observe")

DEFAULT_EXPORT_TIMEOUT = 10.0
"""Seconds; the OTLP specification's default for OTEL_EXPORTER_OTLP_TIMEOUT."""

DEFAULT_SHUTDOWN_TIMEOUT = 5.0
"""Seconds `shutdown_tracing` waits for the final flush before dropping what is left."""

_DEFAULT_SERVICE_NAME = "asgi-service"

# The SDK's tracers report their own span metrics to this provider's meter provider
# (OTEL_PYTHON_SDK_INTERNAL_METRICS_ENABLED) in recent SDKs; older ones take none.
_TAKES_METER_PROVIDER = "meter_provider" in inspect.signature(TracerProvider).parameters

_install_lock = threading.Lock()
_global_installed = False
_guards: weakref.WeakKeyDictionary[TracerProvider, ExportGuard] = weakref.WeakKeyDictionary()


def build_resource(settings: Settings) -> Resource:
    """Service identity for every span, through the SDK's `Resource.create`.

    `Resource.create` applies what the specification says of the environment:
    ``OTEL_RESOURCE_ATTRIBUTES`` and ``OTEL_SERVICE_NAME`` are merged, and the detectors
    named in ``OTEL_EXPERIMENTAL_RESOURCE_DETECTORS`` (``host``, ``os``, ``process``, ...)
    run. The values of `settings` are passed explicitly on top, so a `Settings` built by
    hand still decides: ``service.name`` (``OTEL_SERVICE_NAME`` wins over a
    ``service.name`` in ``OTEL_RESOURCE_ATTRIBUTES``, as specified; the built-in default
    name does not), ``service.version`` (``OTEL_SERVICE_VERSION``, an extra of this
    library) and the deployment environment.
    """
    attributes: dict[str, types.AttributeValue] = dict(settings.resource_attributes)
    if settings.service_name != _DEFAULT_SERVICE_NAME or "service.name" not in attributes:
        attributes["service.name"] = settings.service_name
    if settings.service_version:
        attributes["service.version"] = settings.service_version
    # Current conventions renamed `deployment.environment` to
    # `deployment.environment.name`; both are set so old and new backends group by it.
    attributes["deployment.environment"] = settings.environment
    attributes["deployment.environment.name"] = settings.environment
    return Resource.create(attributes)


def build_sampler(settings: Settings) -> Sampler:
    """The sampler ``OTEL_TRACES_SAMPLER`` names, with ``OTEL_TRACES_SAMPLER_ARG``.

    The six samplers of the specification are built from the SDK's public classes;
    any other name is an ``opentelemetry_traces_sampler`` entry point, called with the
    argument as text, as the SDK does. The default, ``parentbased_traceidratio`` with
    ratio 1.0: a request whose caller sampled it is always recorded, so traces are never
    cut in the middle; root decisions use the ratio.
    """
    if settings.sdk_disabled:
        return ALWAYS_OFF  # OTEL_SDK_DISABLED: no span is recorded
    name = settings.sampler
    ratio = settings.sampler_ratio
    builtin: dict[str, Callable[[], Sampler]] = {
        "always_on": lambda: ALWAYS_ON,
        "always_off": lambda: ALWAYS_OFF,
        "traceidratio": lambda: TraceIdRatioBased(ratio),
        "parentbased_always_on": lambda: ParentBased(ALWAYS_ON),
        "parentbased_always_off": lambda: ParentBased(ALWAYS_OFF),
        "parentbased_traceidratio": lambda: ParentBased(TraceIdRatioBased(ratio)),
    }
    make = builtin.get(name)
    if make is not None:
        return make()
    (entry_point,) = entry_points(group=SAMPLER_ENTRY_POINTS, name=name)
    factory = entry_point.load()
    sampler = factory(str(ratio))
    if not isinstance(sampler, Sampler):
        msg = f"invalid OTEL_TRACES_SAMPLER={name!r}: its entry point did not return a Sampler"
        raise TypeError(msg)
    return sampler


def traces_endpoint(settings: Settings) -> str | None:
    """The URL spans are sent to, as the OTLP exporter specification derives it.

    ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` is used exactly as given. The generic
    ``OTEL_EXPORTER_OTLP_ENDPOINT`` is a base URL: over OTLP/HTTP ``v1/traces`` is
    appended to its path; over gRPC it is used as it is.
    """
    if settings.otlp_traces_endpoint:
        return settings.otlp_traces_endpoint
    endpoint = settings.otlp_endpoint
    if not endpoint or settings.otlp_protocol != "http/protobuf":
        return endpoint
    if "://" not in endpoint:
        endpoint = "http://" + endpoint
    return endpoint.rstrip("/") + "/v1/traces"


def _session_pinned_to_its_ca() -> Any:
    """A requests session whose ``verify`` (the certificate file the exporter sets on it)
    wins over ``REQUESTS_CA_BUNDLE``/``CURL_CA_BUNDLE``.

    requests lets those variables override a session's CA file on every request
    (psf/requests#3829), so with either set, as many base images do,
    ``OTEL_EXPORTER_OTLP_CERTIFICATE`` would be silently ignored and every export fail
    verification. Proxies and the rest of the environment still apply.
    """
    import requests

    class PinnedCASession(requests.Session):
        def merge_environment_settings(
            self,
            url: str | bytes | None,
            proxies: Any,
            stream: bool | None,
            verify: bool | str | None,
            cert: Any,
        ) -> Any:
            merged = super().merge_environment_settings(url, proxies, stream, verify, cert)
            if verify is None:
                merged["verify"] = self.verify
            return merged

    return PinnedCASession()


def build_exporter(settings: Settings) -> SpanExporter | None:
    """The OTLP span exporter the settings ask for; None without an endpoint, or when
    ``OTEL_SDK_DISABLED`` is true.

    Every value the settings hold is passed explicitly; what they leave unset (client
    certificates, for one) the exporter reads from its ``OTEL_EXPORTER_OTLP_*``
    variables itself, as specified.
    """
    endpoint = traces_endpoint(settings)
    if not endpoint or settings.sdk_disabled:
        return None
    timeout = settings.otlp_timeout or DEFAULT_EXPORT_TIMEOUT
    if settings.otlp_protocol == "http/protobuf":
        from opentelemetry.exporter.otlp.proto.http import Compression as HTTPCompression
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
            OTLPSpanExporter as HTTPSpanExporter,
        )

        return HTTPSpanExporter(
            endpoint=endpoint,
            certificate_file=settings.otlp_certificate,
            session=None if settings.otlp_certificate is None else _session_pinned_to_its_ca(),
            headers=dict(settings.otlp_headers) or None,
            timeout=timeout,
            compression=None
            if settings.otlp_compression is None
            else HTTPCompression(settings.otlp_compression),
        )
    import grpc
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
        OTLPSpanExporter as GRPCSpanExporter,
    )

    insecure = settings.otlp_insecure
    if insecure is None:
        # What the exporter would infer from the scheme, decided here so the
        # environment is not consulted a second time.
        insecure = urllib.parse.urlsplit(endpoint).scheme == "http"
    credentials = None
    if not insecure and settings.otlp_certificate:
        with open(settings.otlp_certificate, "rb") as certificate:
            credentials = grpc.ssl_channel_credentials(root_certificates=certificate.read())
    compression = {"gzip": grpc.Compression.Gzip, "none": grpc.Compression.NoCompression}
    # gRPC metadata keys must be lowercase; a mixed-case key fails every export.
    headers = tuple((key.lower(), value) for key, value in settings.otlp_headers)
    return GRPCSpanExporter(
        endpoint=endpoint,
        insecure=insecure,
        credentials=credentials,
        headers=headers or None,
        timeout=timeout,
        compression=None
        if settings.otlp_compression is None
        else compression[settings.otlp_compression],
    )


def _describe(settings: Settings) -> str:
    return f"{traces_endpoint(settings)} ({settings.otlp_protocol})"


def setup_tracing(settings: Settings | None = None, *, set_global: bool = True) -> TracerProvider:
    """Build a `TracerProvider` from `settings` (default: `Settings.from_env()`).

    Resource from the service name, version, environment and resource attributes;
    parent-based ratio sampling; an OTLP exporter (gRPC or HTTP/protobuf) behind a batch
    processor when an endpoint is configured. Without an endpoint nothing is exported,
    but spans are still created, so log lines carry trace and span ids.

    The first call installs its provider as the global one (OpenTelemetry allows one);
    later calls, and calls with ``set_global=False``, only return a new provider. It is
    shut down once, at process exit (bounded, see `shutdown_tracing`); `flush_tracing`
    exports what it holds without stopping it (``instrument()`` does so at each lifespan
    shutdown, so a later start-up still exports).
    """
    global _global_installed  # noqa: PLW0603 - process-wide, as OpenTelemetry's own global
    settings = Settings.from_env() if settings is None else settings
    sampler = build_sampler(settings)
    # Lets TracingMiddleware start unsampled request spans without the SDK's general
    # path (see asgi_observe.tracing.starter); an entry-point sampler keeps that path.
    builtin = settings.sdk_disabled or settings.sampler in BUILTIN_SAMPLERS
    id_generator = TraceIdHandover(sampler if builtin else None)
    watch: dict[str, Any] = (
        {"meter_provider": id_generator.metrics_watch} if _TAKES_METER_PROVIDER else {}
    )
    # The SDK's own exit hook can wait 30 s per processor on a black-holed collector;
    # ours is bounded (see shutdown_tracing).
    provider = TracerProvider(
        sampler=sampler,
        resource=build_resource(settings),
        shutdown_on_exit=False,
        id_generator=id_generator,
        **watch,
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


def flush_tracing(provider: Any, *, timeout: float = DEFAULT_SHUTDOWN_TIMEOUT) -> bool:
    """Export what `provider` holds, waiting at most `timeout` seconds; keep it running.

    This is what ``instrument()`` does at each lifespan shutdown. A test suite runs
    several start/stop cycles in one process (Starlette's ``TestClient`` entered twice,
    asgi-lifespan), so the provider must still export after the next start-up: it is
    shut down once, at process exit (see `setup_tracing`) or by `shutdown_tracing`.
    Returns True when everything was flushed in time; past the timeout it logs one
    warning and returns, and the export in flight finishes (or times out) on its own.
    Objects without ``force_flush`` (the API's no-op provider) are ignored.
    """
    force_flush = getattr(provider, "force_flush", None)
    if not callable(force_flush):
        return True
    done = threading.Event()
    flushed: list[bool] = []

    def run() -> None:
        try:
            flushed.append(bool(force_flush(int(timeout * 1000))))
        except Exception:
            report_once("provider-flush", "asgi_observe: the tracer provider failed to flush")
        finally:
            done.set()

    threading.Thread(target=run, name="asgi-observe-tracing-flush", daemon=True).start()
    if done.wait(timeout) and all(flushed):
        return True
    logger.warning(
        "asgi_observe: tracing flush did not finish within %.1f s; spans still queued are "
        "exported later or dropped",
        timeout,
    )
    return False


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
