from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from asgi_observe import Settings
from asgi_observe.settings import DEFAULT_BUCKETS, DEFAULT_EXCLUDED_URLS


def test_defaults_match_the_contract() -> None:
    settings = Settings.from_env({})
    assert settings.environment == "development"
    assert not settings.is_production
    assert settings.log_level == "INFO"
    assert settings.enable_metrics is True
    assert settings.metrics_token is None
    assert settings.metrics_internal_port is None
    assert settings.metrics_internal_host == "127.0.0.1"
    assert settings.service_name == "asgi-service"
    assert settings.otlp_endpoint is None
    assert settings.otlp_protocol == "grpc"
    assert settings.sampler_ratio == 1.0
    assert settings.excluded_urls == DEFAULT_EXCLUDED_URLS
    assert settings.prometheus_multiproc_dir is None


def test_every_variable_is_parsed(tmp_path: Path) -> None:
    settings = Settings.from_env(
        {
            "ENVIRONMENT": "production",
            "LOG_LEVEL": "debug",
            "ENABLE_METRICS": "off",
            "METRICS_TOKEN": "s3cret-token-0123456789",
            "METRICS_ALLOW": "10.0.0.0/8, 127.0.0.1,::1",
            "METRICS_INTERNAL_PORT": "9000",
            "METRICS_INTERNAL_HOST": "0.0.0.0",
            "TRUSTED_PROXIES": "172.16.0.0/12",
            "OTEL_SERVICE_NAME": "baliblissed-backend",
            "OTEL_SERVICE_VERSION": "1.0.0",
            "OTEL_RESOURCE_ATTRIBUTES": "team=travel,region=ap%2Dsoutheast",
            "OTEL_EXPORTER_OTLP_ENDPOINT": "http://localhost:4317",
            "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
            "OTEL_EXPORTER_OTLP_HEADERS": "api-key=abc",
            "OTEL_EXPORTER_OTLP_INSECURE": "true",
            "OTEL_EXPORTER_OTLP_TIMEOUT": "2500",
            "OTEL_TRACES_SAMPLER_ARG": "0.1",
            "OTEL_PYTHON_EXCLUDED_URLS": "/metrics,/health.*",
            "PROMETHEUS_MULTIPROC_DIR": str(tmp_path),
            "DATABASE_URL": "postgresql+asyncpg://app:pw@db/app",
            "REDIS_URL": "redis://localhost:6379/0",
        }
    )
    assert settings.is_production
    assert settings.log_level == "DEBUG"
    assert settings.enable_metrics is False
    assert settings.metrics_allow == (
        ipaddress.ip_network("10.0.0.0/8"),
        ipaddress.ip_network("127.0.0.1/32"),
        ipaddress.ip_network("::1/128"),
    )
    assert settings.metrics_internal_port == 9000
    assert settings.metrics_internal_host == "0.0.0.0"
    assert settings.trusted_proxies == (ipaddress.ip_network("172.16.0.0/12"),)
    assert settings.service_name == "baliblissed-backend"
    assert settings.service_version == "1.0.0"
    assert settings.resource_attributes == (("team", "travel"), ("region", "ap-southeast"))
    assert settings.otlp_endpoint == "http://localhost:4317"
    assert settings.otlp_protocol == "http/protobuf"
    assert settings.otlp_headers == (("api-key", "abc"),)
    assert settings.otlp_insecure is True
    assert settings.otlp_timeout == 2.5
    assert settings.sampler_ratio == 0.1
    assert settings.excluded_urls == ("/metrics", "/health.*")
    assert settings.prometheus_multiproc_dir == str(tmp_path)
    assert settings.redis_url == "redis://localhost:6379/0"


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("OTEL_TRACES_SAMPLER_ARG", "2"),
        ("OTEL_TRACES_SAMPLER_ARG", "-0.1"),
        ("OTEL_TRACES_SAMPLER_ARG", "nan"),
        ("OTEL_TRACES_SAMPLER_ARG", "ten percent"),
        ("METRICS_INTERNAL_PORT", "abc"),
        ("METRICS_INTERNAL_PORT", "0"),
        ("METRICS_INTERNAL_PORT", "70000"),
        ("METRICS_ALLOW", "10.0.0.0/99"),
        ("METRICS_ALLOW", "10.0.0.1/8"),
        ("METRICS_ALLOW", "not-an-ip"),
        ("TRUSTED_PROXIES", "300.1.1.1"),
        ("ENABLE_METRICS", "maybe"),
        ("LOG_LEVEL", "LOUD"),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "ftp://collector:4317"),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://has space"),
        ("OTEL_EXPORTER_OTLP_INSECURE", "sometimes"),
        ("OTEL_EXPORTER_OTLP_TIMEOUT", "-5"),
        ("OTEL_RESOURCE_ATTRIBUTES", "novalue"),
        ("OTEL_PYTHON_EXCLUDED_URLS", "/ok,(unclosed"),
        ("PROMETHEUS_MULTIPROC_DIR", "/definitely/not/here"),
        ("METRICS_TOKEN", "short"),
        ("METRICS_NAMESPACE", "9lives"),
        ("METRICS_NAMESPACE", "my-app"),
        ("METRICS_BUCKETS", "0.1,abc"),
        ("METRICS_BUCKETS", "0.5,0.1"),
        ("METRICS_BUCKETS", "0.1,0.1"),
        ("METRICS_BUCKETS", "-1,2"),
        ("METRICS_BUCKETS", "0.1,inf"),
        ("METRICS_EXCLUDE_PATHS", "/ok,relative"),
        ("METRICS_EXCLUDE_METHODS", "GET,BAD METHOD"),
        ("METRICS_LABELS", "team"),
        ("METRICS_LABELS", "1team=x"),
        ("METRICS_LABELS", "handler=x"),
        ("METRICS_LABELS", "__name__=x"),
        ("METRICS_LABELS", "team=a,team=b"),
        ("REQUEST_ID_HEADER", "X Request Id"),
        ("ACCESS_LOG_EXCLUDE_PATHS", "metrics"),
    ],
)
def test_invalid_values_name_the_variable_and_value(variable: str, value: str) -> None:
    with pytest.raises(ValueError, match=variable) as caught:
        Settings.from_env({variable: value})
    if variable != "METRICS_TOKEN":  # a secret is never echoed, even a wrong one
        assert value in str(caught.value)
    else:
        assert value not in str(caught.value)


def test_metric_request_id_and_access_log_options() -> None:
    settings = Settings.from_env(
        {
            "METRICS_NAMESPACE": "baliblissed",
            "METRICS_BUCKETS": "0.05, 0.1,0.5,1,2.5",
            "METRICS_EXCLUDE_PATHS": "/internal/ping, /robots.txt",
            "METRICS_EXCLUDE_METHODS": "options,head",
            "METRICS_LABELS": "team=payments, region=eu",
            "REQUEST_ID_HEADER": "X-Correlation-ID",
            "ACCESS_LOG_EXCLUDE_PATHS": "/metrics,/health/live",
        }
    )
    assert settings.metrics_namespace == "baliblissed"
    assert settings.metrics_buckets == (0.05, 0.1, 0.5, 1.0, 2.5)
    assert settings.metrics_exclude_paths == ("/internal/ping", "/robots.txt")
    assert settings.metrics_exclude_methods == ("OPTIONS", "HEAD")
    assert settings.metrics_labels == (("team", "payments"), ("region", "eu"))
    assert settings.request_id_header == "X-Correlation-ID"
    assert settings.access_log_exclude_paths == ("/metrics", "/health/live")


def test_metric_option_defaults() -> None:
    settings = Settings.from_env({})
    assert settings.metrics_namespace == ""
    assert settings.metrics_buckets == DEFAULT_BUCKETS
    assert settings.metrics_exclude_paths == settings.metrics_exclude_methods == ()
    assert settings.metrics_labels == ()
    assert settings.request_id_header == "X-Request-ID"
    # The scrape and every probe endpoint, /health/startup and /metrics/legacy included.
    assert set(settings.access_log_exclude_paths) == {
        "/metrics",
        "/metrics/legacy",
        "/health",
        "/health/live",
        "/health/ready",
        "/health/startup",
    }
    # Set but empty: every request is logged.
    assert Settings.from_env({"ACCESS_LOG_EXCLUDE_PATHS": ""}).access_log_exclude_paths == ()


def test_hand_built_metric_options_are_validated() -> None:
    with pytest.raises(ValueError, match="METRICS_LABELS"):
        Settings(metrics_labels=(("status", "x"),))
    with pytest.raises(ValueError, match="REQUEST_ID_HEADER"):
        Settings(request_id_header="bad header")


def test_specific_excluded_urls_win_over_the_generic_variable() -> None:
    settings = Settings.from_env(
        {
            "OTEL_PYTHON_EXCLUDED_URLS": "/a",
            "OTEL_PYTHON_ASGI_EXCLUDED_URLS": "/b",
            "OTEL_PYTHON_FASTAPI_EXCLUDED_URLS": "/c",
        }
    )
    assert settings.excluded_urls == ("/c",)
    assert Settings.from_env({"OTEL_PYTHON_ASGI_EXCLUDED_URLS": "/b,/d"}).excluded_urls == (
        "/b",
        "/d",
    )
    assert Settings.from_env({"OTEL_PYTHON_EXCLUDED_URLS": ""}).excluded_urls == ()


def test_secrets_never_appear_in_repr() -> None:
    settings = Settings.from_env(
        {
            "METRICS_TOKEN": "super-secret-token-value",
            "OTEL_EXPORTER_OTLP_HEADERS": "authorization=Bearer%20hunter2",
            "DATABASE_URL": "postgresql://app:hunter3@db:5432/app",
            "REDIS_URL": "redis://:hunter4@cache:6379/0",
        }
    )
    for text in (repr(settings), str(settings)):
        assert "super-secret-token-value" not in text
        assert "hunter2" not in text
        assert "hunter3" not in text
        assert "hunter4" not in text
        assert "db:5432" in text  # the non-secret parts stay readable


def test_settings_are_frozen_and_validated_when_built_directly() -> None:
    settings = Settings()
    with pytest.raises(AttributeError):
        settings.environment = "production"  # type: ignore[misc]
    with pytest.raises(ValueError, match="METRICS_TOKEN"):
        Settings(metrics_token="short")
    with pytest.raises(ValueError, match="OTEL_TRACES_SAMPLER_ARG"):
        Settings(sampler_ratio=1.5)


def test_blank_values_mean_unset() -> None:
    settings = Settings.from_env({"METRICS_INTERNAL_PORT": "  ", "OTEL_EXPORTER_OTLP_ENDPOINT": ""})
    assert settings.metrics_internal_port is None
    assert settings.otlp_endpoint is None


def test_reads_os_environ_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_SERVICE_NAME", "from-os-environ")
    assert Settings.from_env().service_name == "from-os-environ"


@pytest.mark.parametrize(
    ("url", "secret", "shown"),
    [
        ("postgresql://u:p4ss@h/db", "p4ss", "postgresql://u:***@h/db"),
        ("postgresql://u:pa/ss#w0rd@h/db", "ss#w0rd", "postgresql://u:***@h/db"),
        (
            "postgresql+asyncpg://app:p@ssw0rd@db/app",
            "ssw0rd",
            "postgresql+asyncpg://app:***@db/app",
        ),
        (
            "postgresql://h/db?sslmode=require&password=qu3ry",
            "qu3ry",
            "postgresql://h/db?sslmode=require&password=***",
        ),
        (
            "host=db port=5432 password=l1bpq dbname=app",
            "l1bpq",
            "host=db port=5432 password=*** dbname=app",
        ),
        ("host=db password='with sp4ce' user=app", "sp4ce", "host=db password=*** user=app"),
        ("redis://:r3dis@cache:6379/0", "r3dis", "redis://:***@cache:6379/0"),
        (
            "rediss://default:r3dis@cache:6380/0?ssl_cert_reqs=none",
            "r3dis",
            "rediss://default:***@cache:6380/0?ssl_cert_reqs=none",
        ),
    ],
)
def test_repr_masks_every_form_of_database_password(url: str, secret: str, shown: str) -> None:
    settings = Settings(database_url=url, redis_url=url)
    for text in (repr(settings), str(settings)):
        assert secret not in text
        assert f"database_url={shown!r}" in text
        assert f"redis_url={shown!r}" in text


def test_repr_masks_otlp_endpoints_and_headers() -> None:
    settings = Settings.from_env(
        {
            "OTEL_EXPORTER_OTLP_ENDPOINT": "https://user:0tlpPass@collector:4318?api_key=0tlpK3y",
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "https://u:tr4ces@collector:4318/v1/traces",
            "OTEL_EXPORTER_OTLP_HEADERS": "authorization=Basic%20aGVsbG8=,x-tenant=acme",
        }
    )
    text = repr(settings)
    for secret in ("0tlpPass", "0tlpK3y", "tr4ces", "aGVsbG8", "Basic"):
        assert secret not in text
    assert "otlp_endpoint='https://user:***@collector:4318?api_key=***'" in text
    assert "otlp_traces_endpoint='https://u:***@collector:4318/v1/traces'" in text
    assert "otlp_headers='***'" in text
    # a URL without credentials is shown as it is
    plain = Settings(otlp_endpoint="http://collector:4318/v1?owner=ops@example.com")
    assert "otlp_endpoint='http://collector:4318/v1?owner=ops@example.com'" in repr(plain)


@pytest.mark.parametrize(
    "headers",
    ["Authorization=Bearer abc,broken", "broken-s3cr3t", "x=1,=s3cr3t", "x=1, ,Bearer abc"],
)
def test_a_malformed_otlp_header_is_named_but_not_shown(headers: str) -> None:
    for variable in ("OTEL_EXPORTER_OTLP_HEADERS", "OTEL_EXPORTER_OTLP_TRACES_HEADERS"):
        with pytest.raises(ValueError, match=f"invalid {variable}: item \\d+ ") as caught:
            Settings.from_env({variable: headers})
        message = str(caught.value)
        for secret in ("abc", "s3cr3t", "broken", "Bearer"):
            assert secret not in message


def test_the_position_of_the_bad_header_is_given() -> None:
    with pytest.raises(ValueError, match="item 2 is not of the form key=value"):
        Settings.from_env({"OTEL_EXPORTER_OTLP_HEADERS": "Authorization=Bearer abc,broken"})


def test_a_rejected_endpoint_never_echoes_its_password() -> None:
    for variable in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        with pytest.raises(ValueError, match=variable) as caught:
            Settings.from_env({variable: "ftp://user:3ndp0int@collector:4317"})
        assert "3ndp0int" not in str(caught.value)
        assert "ftp://user:***@collector:4317" in str(caught.value)
        with pytest.raises(ValueError, match=variable) as caught:
            Settings.from_env({variable: "http://user:sp4ce d@collector"})
        assert "sp4ce" not in str(caught.value)


def test_a_short_metrics_token_is_refused_without_echoing_it() -> None:
    with pytest.raises(ValueError, match="METRICS_TOKEN") as caught:
        Settings.from_env({"METRICS_TOKEN": "sh0rt-t0k"})
    assert "sh0rt-t0k" not in str(caught.value)
    with pytest.raises(ValueError, match="METRICS_TOKEN") as caught:
        Settings(metrics_token="sh0rt-t0k")
    assert "sh0rt-t0k" not in str(caught.value)


def test_header_capture_variables_of_the_instrumentation_conventions() -> None:
    settings = Settings.from_env(
        {
            "OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_REQUEST": "X-Tenant, x-api-.*",
            "OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_RESPONSE": "content-type",
            "OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SANITIZE_FIELDS": "x-api-key,.*session.*",
        }
    )
    assert settings.http_capture_headers_server_request == ("X-Tenant", "x-api-.*")
    assert settings.http_capture_headers_server_response == ("content-type",)
    assert settings.http_capture_headers_sanitize_fields == ("x-api-key", ".*session.*")
    with pytest.raises(
        ValueError, match="OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_REQUEST"
    ):
        Settings.from_env({"OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_REQUEST": "(x"})
