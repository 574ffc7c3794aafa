"""The one place that reads the environment.

`Settings.from_env()` parses and validates every variable of the public contract once,
at start-up, and fails with a `ValueError` that names the variable and the offending
value. Everything else in the package takes plain keyword arguments, so an app can be
configured without touching `os.environ` at all (tests do exactly that).
"""

from __future__ import annotations

import itertools
import os
import re
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, fields
from importlib.metadata import entry_points
from typing import Literal

from asgi_observe.net import IPNetwork, parse_networks
from asgi_observe.pii import DEFAULT_SENSITIVE_QUERY_PARAMS, is_sensitive_key

__all__ = [
    "DEFAULT_BUCKETS",
    "DEFAULT_EXCLUDED_URLS",
    "MIN_METRICS_TOKEN_LENGTH",
    "PROBE_PATHS",
    "RESERVED_LABELS",
    "Settings",
]

DEFAULT_BUCKETS: tuple[float, ...] = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 2.5, 5.0, 10.0,
)  # fmt: skip
"""Latency buckets: Prometheus' defaults plus 2 s, the P99 alert threshold of the rules."""

PROBE_PATHS: tuple[str, ...] = (
    "/metrics",
    "/metrics/legacy",
    "/health",
    "/health/live",
    "/health/ready",
    "/health/startup",
)
"""The scrape and probe endpoints `instrument()` serves: not written to the access log by
default, since a probe every few seconds would drown the requests worth reading."""

RESERVED_LABELS = frozenset({"method", "status", "handler", "le", "quantile"})
"""Label names the HTTP metrics use themselves (or Prometheus reserves)."""

_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_METRIC_PREFIX = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_HEADER_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_METHOD_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Z]+")

DEFAULT_EXCLUDED_URLS: tuple[str, ...] = (
    "/metrics",
    "/health",
    "/health/live",
    "/health/ready",
    "/favicon.ico",
)

MIN_METRICS_TOKEN_LENGTH = 16

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})
_LOG_LEVELS = ("CRITICAL", "ERROR", "WARNING", "INFO", "DEBUG", "NOTSET")
_PROTOCOLS = ("grpc", "http/protobuf")
_COMPRESSIONS = ("gzip", "none")

DEFAULT_SAMPLER = "parentbased_traceidratio"
"""With the default ratio of 1.0 the same decisions as the spec's ``parentbased_always_on``."""

BUILTIN_SAMPLERS = frozenset(
    {
        "always_on",
        "always_off",
        "traceidratio",
        "parentbased_always_on",
        "parentbased_always_off",
        "parentbased_traceidratio",
    }
)
"""The ``OTEL_TRACES_SAMPLER`` values the OpenTelemetry specification defines and the
Python SDK implements; other names must be registered as an
``opentelemetry_traces_sampler`` entry point, as the SDK allows."""

SAMPLER_ENTRY_POINTS = "opentelemetry_traces_sampler"
_SECRET_FIELDS = frozenset({"metrics_token", "otlp_headers"})


def _invalid(name: str, value: str, why: str) -> ValueError:
    """The start-up error naming `name` and `value`, with any credential in it masked."""
    return ValueError(f"invalid {name}={_mask_credentials(value)!r}: {why}")


_MASK = "***"
_SECRET_PARAMS = frozenset(name.lower() for name in DEFAULT_SENSITIVE_QUERY_PARAMS)
# ``name=value`` in a URL query or a libpq keyword string (``host=db password='a b'``):
# the value ends at whitespace or ``&``, or is quoted.
_KEY_VALUE = re.compile(
    r"(?P<name>[A-Za-z_][\w.\-\[\]]*)(?P<eq>\s*=\s*)"
    r"(?P<value>'(?:[^'\\]|\\.)*'?|\"[^\"]*\"?|[^\s&]*)"
)
_PORT_THEN_PATH = re.compile(r"\d*(?:[/?#]|$)")
_URL_START = re.compile(r"(?<![A-Za-z0-9+.\-])(?=[A-Za-z][A-Za-z0-9+.\-]*://)")


def _masked_pair(match: re.Match[str]) -> str:
    name = match.group("name")
    if not (is_sensitive_key(name) or name.lower() in _SECRET_PARAMS):
        return match.group()
    return f"{name}{match.group('eq')}{_MASK}"


def _mask_userinfo(token: str) -> str:
    """``scheme://user:password@host...`` with the password masked, read leniently.

    The password runs to the last ``@``: an unencoded ``/``, ``#``, ``?`` or ``@`` in
    it (``postgresql://u:pa/ss#w@h/db``) does not end it early, as it would for a URL
    parser. A ``host:port/path`` whose ``@`` sits in the query is not userinfo.
    """
    scheme_end = token.find("://")
    if scheme_end < 0:
        return token
    start = scheme_end + 3
    at = token.rfind("@", start)
    colon = token.find(":", start, at)
    if at < 0 or colon < 0 or any(ch in token[start:colon] for ch in "/?#"):
        return token
    question = token.find("?", start)
    if _PORT_THEN_PATH.match(token, colon + 1) and 0 <= question < at:
        return token  # host:port/path?x=a@b: the "@" belongs to the query
    return f"{token[: colon + 1]}{_MASK}{token[at:]}"


def _mask_credentials(value: str) -> str:
    """`value` with every password-like part replaced by ``***``, for messages and repr.

    Covers userinfo in URLs (``postgresql://u:***@h/db``, also when the password holds
    ``/`` or ``#``), secret query parameters (``?password=***``, ``?sslpassword=``,
    ``?api_key=``, the signed-URL parameters of `asgi_observe.pii.redact_query`) and
    libpq keyword strings (``host=db password=***``). The rest stays readable.
    """
    if "=" in value:
        value = _KEY_VALUE.sub(_masked_pair, value)
    if "://" in value and "@" in value:
        # one URL per part; a password may even hold a space (a typo that is refused)
        value = "".join(_mask_userinfo(part) for part in _URL_START.split(value))
    return value


def _parse_bool(name: str, value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise _invalid(name, value, "expected one of true/false, 1/0, yes/no, on/off")


def _parse_port(name: str, value: str) -> int:
    try:
        port = int(value.strip())
    except ValueError:
        raise _invalid(name, value, "expected a TCP port number 1-65535") from None
    if not 1 <= port <= 65535:
        raise _invalid(name, value, "expected a TCP port number 1-65535")
    return port


def _parse_ratio(name: str, value: str) -> float:
    try:
        ratio = float(value.strip())
    except ValueError:
        raise _invalid(name, value, "expected a number between 0.0 and 1.0") from None
    if not 0.0 <= ratio <= 1.0:  # also rejects nan
        raise _invalid(name, value, "expected a number between 0.0 and 1.0")
    return ratio


def _parse_key_values(
    name: str, value: str, *, secret: bool = False
) -> tuple[tuple[str, str], ...]:
    """Parse the W3C-baggage-like ``k=v,k2=v2`` lists of the OpenTelemetry spec.

    With `secret` (OTLP headers carry credentials) an error names the variable and the
    position of the bad item, and the key where there is one, never a value.
    """
    pairs: list[tuple[str, str]] = []
    for position, raw in enumerate(value.split(","), start=1):
        item = raw.strip()
        if not item:
            continue
        key, sep, val = item.partition("=")
        if (not sep or not key.strip()) and secret:
            msg = (
                f"invalid {name}: item {position} is not of the form key=value "
                "(values are not shown: they may be credentials)"
            )
            raise ValueError(msg)
        if not sep or not key.strip():
            raise _invalid(name, value, f"{item!r} is not of the form key=value")
        pairs.append((urllib.parse.unquote(key.strip()), urllib.parse.unquote(val.strip())))
    return tuple(pairs)


def _parse_regexes(name: str, value: str) -> tuple[str, ...]:
    """Comma-separated regular expressions, as opentelemetry-util-http splits them."""
    return _parse_excluded(name, value)


def _parse_excluded(name: str, value: str) -> tuple[str, ...]:
    patterns = tuple(item.strip() for item in value.split(",") if item.strip())
    for pattern in patterns:
        try:
            re.compile(pattern)
        except re.error as exc:
            raise _invalid(
                name, value, f"{pattern!r} is not a regular expression ({exc})"
            ) from None
    return patterns


def _parse_list(value: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in value.split(",") if item.strip())


def _parse_buckets(name: str, value: str) -> tuple[float, ...]:
    buckets: list[float] = []
    for item in _parse_list(value):
        try:
            bucket = float(item)
        except ValueError:
            raise _invalid(name, value, f"{item!r} is not a number of seconds") from None
        if not 0 < bucket < float("inf"):
            raise _invalid(name, value, f"{item!r} is not a positive, finite number of seconds")
        buckets.append(bucket)
    if not buckets:
        raise _invalid(name, value, "expected comma-separated bucket bounds in seconds")
    if any(later <= earlier for earlier, later in itertools.pairwise(buckets)):
        raise _invalid(name, value, "bucket bounds must be strictly increasing")
    return tuple(buckets)


def _parse_paths(name: str, value: str) -> tuple[str, ...]:
    paths = _parse_list(value)
    for path in paths:
        if not path.startswith("/"):
            raise _invalid(name, value, f"{path!r} is not a path (it must start with /)")
    return paths


def _parse_methods(name: str, value: str) -> tuple[str, ...]:
    methods = tuple(method.upper() for method in _parse_list(value))
    for method in methods:
        if not _METHOD_TOKEN.fullmatch(method):
            raise _invalid(name, value, f"{method!r} is not an HTTP method")
    return methods


def _check_metric_options(settings: Settings) -> None:
    """The checks of the metric and request-id options, also for hand-built settings."""
    if settings.metrics_namespace and not _METRIC_PREFIX.fullmatch(settings.metrics_namespace):
        raise _invalid(
            "METRICS_NAMESPACE",
            settings.metrics_namespace,
            "expected a Prometheus name prefix: letters, digits, _ and :, not starting with a digit",
        )
    seen: set[str] = set()
    shown = ",".join(f"{label}={value}" for label, value in settings.metrics_labels)
    for label, _ in settings.metrics_labels:
        if not _LABEL_NAME.fullmatch(label) or label.startswith("__"):
            raise _invalid("METRICS_LABELS", shown, f"{label!r} is not a Prometheus label name")
        if label in RESERVED_LABELS:
            raise _invalid("METRICS_LABELS", shown, f"the HTTP metrics already use {label!r}")
        if label in seen:
            raise _invalid("METRICS_LABELS", shown, f"{label!r} is given twice")
        seen.add(label)
    if not _HEADER_TOKEN.fullmatch(settings.request_id_header):
        raise _invalid("REQUEST_ID_HEADER", settings.request_id_header, "not an HTTP header name")


def _parse_otel_bool(name: str, value: str) -> bool:
    """The specification's booleans: ``true`` or ``false``, in any letter case.

    The spec reads anything else as false with a warning; a value such as ``1`` or
    ``yes`` is refused here instead, since it reads as true to the person who wrote it.
    """
    lowered = value.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    raise _invalid(name, value, "expected true or false (OpenTelemetry booleans)")


def _check_sampler(name: str, value: str) -> None:
    if value in BUILTIN_SAMPLERS or entry_points(group=SAMPLER_ENTRY_POINTS, name=value):
        return
    raise _invalid(
        name,
        value,
        f"expected one of {', '.join(sorted(BUILTIN_SAMPLERS))} or the name of an installed "
        f"{SAMPLER_ENTRY_POINTS} entry point",
    )


def _parse_compression(name: str, value: str) -> Literal["gzip", "none"]:
    lowered = value.strip().lower()
    if lowered == "gzip":
        return "gzip"
    if lowered == "none":
        return "none"
    raise _invalid(name, value, f"expected one of {', '.join(_COMPRESSIONS)}")


def _parse_certificate(name: str, value: str) -> str:
    path = value.strip()
    if not os.path.isfile(path):
        raise _invalid(name, value, "the certificate file does not exist")
    return path


def _parse_endpoint(name: str, value: str) -> str:
    endpoint = value.strip()
    if not endpoint or any(ch.isspace() for ch in endpoint):
        raise _invalid(name, value, "expected a URL such as http://localhost:4317")
    if "://" in endpoint:
        parsed = urllib.parse.urlsplit(endpoint)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise _invalid(name, value, "expected an http:// or https:// URL")
    return endpoint


def _parse_timeout(name: str, value: str) -> float:
    """OTLP timeouts are milliseconds in the spec; values here are kept in seconds."""
    try:
        millis = float(value.strip())
    except ValueError:
        raise _invalid(name, value, "expected a timeout in milliseconds") from None
    if not millis > 0:
        raise _invalid(name, value, "expected a positive timeout in milliseconds")
    return millis / 1000.0


def _shown(value: object) -> str:
    """`repr` of a field value with its credentials masked (see `_mask_credentials`)."""
    if isinstance(value, str):
        return repr(_mask_credentials(value))
    if isinstance(value, tuple) and value and all(isinstance(item, str) for item in value):
        return repr(tuple(_mask_credentials(item) for item in value))
    if isinstance(value, tuple) and value and all(_is_str_pair(item) for item in value):
        return repr(
            tuple(
                (key, _MASK if is_sensitive_key(key) else _mask_credentials(item))
                for key, item in value
            )
        )
    return repr(value)


def _is_str_pair(item: object) -> bool:
    return (
        isinstance(item, tuple)
        and len(item) == 2
        and isinstance(item[0], str)
        and isinstance(item[1], str)
    )


@dataclass(frozen=True)
class Settings:
    """All configuration of the stack, validated once.

    Build it with `Settings.from_env()` in production, or directly with keyword arguments
    in tests and in code that has its own configuration system. Secrets never appear in
    `repr()` or `str()`: the metrics token and OTLP headers are shown as ``***``, and in
    every other value (DATABASE_URL, REDIS_URL, the OTLP endpoints) passwords in URLs,
    secret query parameters and libpq ``password=`` keywords are masked.
    """

    environment: str = "development"
    log_level: str = "INFO"
    enable_metrics: bool = True
    metrics_token: str | None = None
    metrics_allow: tuple[IPNetwork, ...] = ()
    metrics_internal_port: int | None = None
    metrics_internal_host: str = "127.0.0.1"
    trusted_proxies: tuple[IPNetwork, ...] = ()
    service_name: str = "asgi-service"
    service_version: str | None = None
    resource_attributes: tuple[tuple[str, str], ...] = ()
    otlp_endpoint: str | None = None
    otlp_protocol: Literal["grpc", "http/protobuf"] = "grpc"
    otlp_headers: tuple[tuple[str, str], ...] = ()
    otlp_insecure: bool | None = None
    otlp_timeout: float | None = None
    otlp_traces_endpoint: str | None = None
    otlp_compression: Literal["gzip", "none"] | None = None
    otlp_certificate: str | None = None
    sampler: str = DEFAULT_SAMPLER
    sampler_ratio: float = 1.0
    sdk_disabled: bool = False
    excluded_urls: tuple[str, ...] = DEFAULT_EXCLUDED_URLS
    prometheus_multiproc_dir: str | None = None
    database_url: str | None = None
    redis_url: str | None = None
    metrics_namespace: str = ""
    metrics_buckets: tuple[float, ...] = DEFAULT_BUCKETS
    metrics_exclude_paths: tuple[str, ...] = ()
    metrics_exclude_methods: tuple[str, ...] = ()
    metrics_labels: tuple[tuple[str, str], ...] = ()
    request_id_header: str = "X-Request-ID"
    access_log_exclude_paths: tuple[str, ...] = PROBE_PATHS
    metrics_instrumentator_compat: bool = False
    http_capture_headers_server_request: tuple[str, ...] = ()
    http_capture_headers_server_response: tuple[str, ...] = ()
    http_capture_headers_sanitize_fields: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.metrics_token is not None and len(self.metrics_token) < MIN_METRICS_TOKEN_LENGTH:
            msg = (
                f"invalid METRICS_TOKEN: a bearer token must be at least "
                f"{MIN_METRICS_TOKEN_LENGTH} characters long (got {len(self.metrics_token)})"
            )
            raise ValueError(msg)
        if self.log_level not in _LOG_LEVELS:
            raise _invalid("LOG_LEVEL", self.log_level, f"expected one of {', '.join(_LOG_LEVELS)}")
        if self.otlp_protocol not in _PROTOCOLS:
            raise _invalid(
                "OTEL_EXPORTER_OTLP_PROTOCOL", self.otlp_protocol, f"expected one of {_PROTOCOLS}"
            )
        if not 0.0 <= self.sampler_ratio <= 1.0:
            raise _invalid("OTEL_TRACES_SAMPLER_ARG", str(self.sampler_ratio), "expected 0.0-1.0")
        if self.otlp_compression not in (None, *_COMPRESSIONS):
            raise _invalid(
                "OTEL_EXPORTER_OTLP_COMPRESSION",
                str(self.otlp_compression),
                f"expected one of {', '.join(_COMPRESSIONS)}",
            )
        _check_sampler("OTEL_TRACES_SAMPLER", self.sampler)
        _check_metric_options(self)

    @property
    def is_production(self) -> bool:
        """Production selects JSON logs; every other environment gets console logs."""
        return self.environment.strip().lower() == "production"

    def __repr__(self) -> str:
        shown: list[str] = []
        for item in fields(self):
            value = getattr(self, item.name)
            if item.name in _SECRET_FIELDS and value:
                shown.append(f"{item.name}='***'")
            else:  # every URL-like value (DATABASE_URL, OTLP endpoints, ...) is masked
                shown.append(f"{item.name}={_shown(value)}")
        return f"Settings({', '.join(shown)})"

    __str__ = __repr__

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:  # noqa: PLR0915 - one read per variable reads best flat
        """Read and validate every variable of the contract from `environ` (default `os.environ`).

        Raises `ValueError` naming the variable and the value on the first invalid one, so a
        misconfigured deployment stops at start-up instead of misbehaving at 3 a.m.
        """
        env = os.environ if environ is None else environ

        def get(name: str) -> str | None:
            value = env.get(name)
            if value is None or not value.strip():
                return None
            return value

        level = (get("LOG_LEVEL") or "INFO").strip().upper()
        if level == "WARN":
            level = "WARNING"
        if level not in _LOG_LEVELS:
            raise _invalid(
                "LOG_LEVEL", env.get("LOG_LEVEL", ""), f"expected one of {', '.join(_LOG_LEVELS)}"
            )

        def otlp(option: str) -> tuple[str, str | None]:
            """(variable, value) of an exporter option: the signal-specific
            ``OTEL_EXPORTER_OTLP_TRACES_<option>`` wins over the generic one."""
            specific = f"OTEL_EXPORTER_OTLP_TRACES_{option}"
            name = specific if get(specific) else f"OTEL_EXPORTER_OTLP_{option}"
            return name, get(name)

        protocol_var, protocol_value = otlp("PROTOCOL")
        protocol = (protocol_value or "grpc").strip()
        if protocol not in _PROTOCOLS:
            raise _invalid(protocol_var, protocol, f"expected one of {', '.join(_PROTOCOLS)}")

        # The instrumentation-specific variables win over the generic one, as in
        # opentelemetry-python-contrib's util.http.get_excluded_urls.
        excluded: tuple[str, ...] = DEFAULT_EXCLUDED_URLS
        for name in (
            "OTEL_PYTHON_FASTAPI_EXCLUDED_URLS",
            "OTEL_PYTHON_ASGI_EXCLUDED_URLS",
            "OTEL_PYTHON_EXCLUDED_URLS",
        ):
            raw = env.get(name)
            if raw is not None:
                excluded = _parse_excluded(name, raw)
                break

        token = get("METRICS_TOKEN")
        if token is not None:
            token = token.strip()
            if len(token) < MIN_METRICS_TOKEN_LENGTH:
                msg = (
                    f"invalid METRICS_TOKEN: a bearer token must be at least "
                    f"{MIN_METRICS_TOKEN_LENGTH} characters long (got {len(token)})"
                )
                raise ValueError(msg)

        multiproc = get("PROMETHEUS_MULTIPROC_DIR") or get("prometheus_multiproc_dir")
        if multiproc is not None and not os.path.isdir(multiproc):
            raise _invalid("PROMETHEUS_MULTIPROC_DIR", multiproc, "the directory does not exist")

        # The generic endpoint is a base URL (OTLP/HTTP appends /v1/traces); the
        # signal-specific one is used exactly as given (OTLP exporter specification).
        endpoint = get("OTEL_EXPORTER_OTLP_ENDPOINT")
        traces_endpoint = get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        compression_var, compression = otlp("COMPRESSION")
        certificate_var, certificate = otlp("CERTIFICATE")
        insecure_var, insecure = otlp("INSECURE")
        timeout_var, timeout = otlp("TIMEOUT")
        headers_var, headers = otlp("HEADERS")
        sampler = (get("OTEL_TRACES_SAMPLER") or DEFAULT_SAMPLER).strip().lower()
        _check_sampler("OTEL_TRACES_SAMPLER", sampler)
        disabled = get("OTEL_SDK_DISABLED")

        buckets = get("METRICS_BUCKETS")
        metric_labels = get("METRICS_LABELS")
        metric_paths = get("METRICS_EXCLUDE_PATHS")
        metric_methods = get("METRICS_EXCLUDE_METHODS")
        access_paths = env.get("ACCESS_LOG_EXCLUDE_PATHS")  # set but empty: log everything
        capture = "OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_"
        enable = get("ENABLE_METRICS")
        port = get("METRICS_INTERNAL_PORT")
        allow = get("METRICS_ALLOW")
        proxies = get("TRUSTED_PROXIES")
        ratio = get("OTEL_TRACES_SAMPLER_ARG")
        attributes = get("OTEL_RESOURCE_ATTRIBUTES")
        return cls(
            environment=(get("ENVIRONMENT") or "development").strip(),
            log_level=level,
            enable_metrics=True if enable is None else _parse_bool("ENABLE_METRICS", enable),
            metrics_token=token,
            metrics_allow=() if allow is None else parse_networks(allow, name="METRICS_ALLOW"),
            metrics_internal_port=None
            if port is None
            else _parse_port("METRICS_INTERNAL_PORT", port),
            metrics_internal_host=(get("METRICS_INTERNAL_HOST") or "127.0.0.1").strip(),
            trusted_proxies=()
            if proxies is None
            else parse_networks(proxies, name="TRUSTED_PROXIES"),
            service_name=(get("OTEL_SERVICE_NAME") or "asgi-service").strip(),
            service_version=(get("OTEL_SERVICE_VERSION") or "").strip() or None,
            resource_attributes=()
            if attributes is None
            else _parse_key_values("OTEL_RESOURCE_ATTRIBUTES", attributes),
            otlp_endpoint=None
            if endpoint is None
            else _parse_endpoint("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint),
            otlp_traces_endpoint=None
            if traces_endpoint is None
            else _parse_endpoint("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", traces_endpoint),
            otlp_compression=None
            if compression is None
            else _parse_compression(compression_var, compression),
            otlp_certificate=None
            if certificate is None
            else _parse_certificate(certificate_var, certificate),
            sampler=sampler,
            sdk_disabled=False
            if disabled is None
            else _parse_otel_bool("OTEL_SDK_DISABLED", disabled),
            otlp_protocol="grpc" if protocol == "grpc" else "http/protobuf",
            otlp_headers=()
            if headers is None
            else _parse_key_values(headers_var, headers, secret=True),
            otlp_insecure=None if insecure is None else _parse_otel_bool(insecure_var, insecure),
            otlp_timeout=None if timeout is None else _parse_timeout(timeout_var, timeout),
            sampler_ratio=1.0 if ratio is None else _parse_ratio("OTEL_TRACES_SAMPLER_ARG", ratio),
            excluded_urls=excluded,
            prometheus_multiproc_dir=multiproc,
            database_url=get("DATABASE_URL"),
            redis_url=get("REDIS_URL"),
            metrics_namespace=(get("METRICS_NAMESPACE") or "").strip(),
            metrics_buckets=DEFAULT_BUCKETS
            if buckets is None
            else _parse_buckets("METRICS_BUCKETS", buckets),
            metrics_exclude_paths=()
            if metric_paths is None
            else _parse_paths("METRICS_EXCLUDE_PATHS", metric_paths),
            metrics_exclude_methods=()
            if metric_methods is None
            else _parse_methods("METRICS_EXCLUDE_METHODS", metric_methods),
            metrics_labels=()
            if metric_labels is None
            else _parse_key_values("METRICS_LABELS", metric_labels),
            request_id_header=(get("REQUEST_ID_HEADER") or "X-Request-ID").strip(),
            metrics_instrumentator_compat=_parse_bool(
                "METRICS_INSTRUMENTATOR_COMPAT", get("METRICS_INSTRUMENTATOR_COMPAT") or "false"
            ),
            access_log_exclude_paths=PROBE_PATHS
            if access_paths is None
            else _parse_paths("ACCESS_LOG_EXCLUDE_PATHS", access_paths),
            http_capture_headers_server_request=_parse_regexes(
                capture + "SERVER_REQUEST", get(capture + "SERVER_REQUEST") or ""
            ),
            http_capture_headers_server_response=_parse_regexes(
                capture + "SERVER_RESPONSE", get(capture + "SERVER_RESPONSE") or ""
            ),
            http_capture_headers_sanitize_fields=_parse_regexes(
                capture + "SANITIZE_FIELDS", get(capture + "SANITIZE_FIELDS") or ""
            ),
        )
