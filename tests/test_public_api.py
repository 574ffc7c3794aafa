"""The public names of DESIGN.md's contract, importable where it says."""

from __future__ import annotations

import importlib
import inspect

import pytest

import asgi_observe

CONTRACT = {
    "asgi_observe": [
        "Settings",
        "instrument",
        "RequestIdMiddleware",
        "MetricsMiddleware",
        "TracingMiddleware",
        "AccessLogMiddleware",
        "metrics_app",
        "HealthApp",
        "checks",
        "configure_logging",
        "get_logger",
        "bind_request_id",
        "clear_context",
        "setup_tracing",
        "tracer",
        "add_span_attributes",
        "record_exception",
        "redact",
        "PII_PATTERNS",
    ],
    "asgi_observe.logging": ["configure_logging", "get_logger", "bind_request_id", "clear_context"],
    "asgi_observe.tracing": [
        "setup_tracing",
        "tracer",
        "add_span_attributes",
        "record_exception",
        "TracingMiddleware",
    ],
    "asgi_observe.checks": ["database", "redis", "disk", "http", "callable"],
    "asgi_observe.request_id": ["RequestIdMiddleware", "get_request_id"],
    "asgi_observe.pii": ["redact", "PII_PATTERNS"],
}


@pytest.mark.parametrize(("module", "names"), list(CONTRACT.items()))
def test_contract_names_are_importable(module: str, names: list[str]) -> None:
    loaded = importlib.import_module(module)
    missing = [name for name in names if not hasattr(loaded, name)]
    assert missing == []


def test_all_is_exactly_what_the_package_exports() -> None:
    assert len(asgi_observe.__all__) == len(set(asgi_observe.__all__))
    for name in asgi_observe.__all__:
        assert hasattr(asgi_observe, name), name
    public = {name for name in vars(asgi_observe) if not name.startswith("_")}
    modules = {name for name, value in vars(asgi_observe).items() if inspect.ismodule(value)}
    assert public - modules - {"annotations"} <= set(asgi_observe.__all__)


@pytest.mark.parametrize(
    ("factory", "keyword_only"),
    [
        (asgi_observe.instrument, {"health", "registry", "tracer_provider"}),
        (asgi_observe.RequestIdMiddleware, {"header_name"}),
        (asgi_observe.MetricsMiddleware, {"registry"}),
        (asgi_observe.TracingMiddleware, {"tracer_provider", "excluded_urls"}),
        (asgi_observe.AccessLogMiddleware, {"logger", "exclude_paths"}),
        (asgi_observe.metrics_app, {"token", "allow", "trusted_proxies"}),
        (asgi_observe.HealthApp, {"version", "registry"}),
    ],
)
def test_options_are_keyword_only(factory: object, keyword_only: set[str]) -> None:
    parameters = inspect.signature(factory).parameters  # type: ignore[arg-type]
    for name in keyword_only:
        assert parameters[name].kind is inspect.Parameter.KEYWORD_ONLY, name


def test_the_checks_of_the_contract_take_their_default_timeouts() -> None:
    from asgi_observe import checks

    assert inspect.signature(checks.database).parameters["timeout"].default == 2.0
    assert inspect.signature(checks.redis).parameters["timeout"].default == 1.0
    assert inspect.signature(checks.http).parameters["timeout"].default == 2.0
    assert inspect.signature(checks.callable).parameters["timeout"].default == 2.0
    assert inspect.signature(checks.disk).parameters["path"].default == "/"
