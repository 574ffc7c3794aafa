"""The OpenTelemetry Collector gateway config, for compose and Kubernetes alike.

No collector binary can run here, so the config is parsed and checked for what the
collector would refuse or silently get wrong: components a pipeline names but nobody
defines, an environment variable nobody sets, the tail-sampling policies (every error
trace, every trace slower than the P99 alert threshold, a share of the rest), and a
memory limit the container's limit can hold.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
import yaml

from tests.assets.promql import alert_rules
from tests.deploy.manifests import COLLECTOR_CONFIG, container, find, literal_env

COMPOSE_FILE = COLLECTOR_CONFIG.parents[1] / "docker-compose.yaml"
CONTRIB_IMAGE = "otel/opentelemetry-collector-contrib:"
_ENV_REFERENCE = re.compile(r"\$\{env:(\w+)\}")


def compose_collector() -> dict[str, Any]:
    service: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text())["services"]["otel-collector"]
    return service


def compose_environment() -> dict[str, str]:
    env = compose_collector()["environment"]
    # `${VAR:-default}` resolved as compose does with an empty environment.
    return {key: re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", str(value)) for key, value in env.items()}


def k8s_environment() -> dict[str, str]:
    return literal_env(container(find("Deployment", "otel-collector")))


def copies() -> list[tuple[str, str]]:
    return [
        ("compose", COLLECTOR_CONFIG.read_text()),
        ("kubernetes", find("ConfigMap", "otel-collector-config")["data"]["config.yaml"]),
    ]


def resolve(text: str, environ: dict[str, str]) -> dict[str, Any]:
    """The config as the collector sees it: `${env:NAME}` replaced, then parsed."""

    def value(match: re.Match[str]) -> str:
        assert match.group(1) in environ, f"${{env:{match.group(1)}}} is not set"
        return environ[match.group(1)]

    document: dict[str, Any] = yaml.safe_load(_ENV_REFERENCE.sub(value, text))
    return document


def p99_threshold_seconds() -> float:
    rules = {rule["alert"]: rule for rule in alert_rules()}
    found = re.search(r">\s*([0-9.]+)\s*$", str(rules["HighP99Latency"]["expr"]).strip())
    assert found
    return float(found.group(1))


@pytest.mark.parametrize(("where", "text"), copies(), ids=["compose", "kubernetes"])
def test_pipelines_reference_defined_components(where: str, text: str) -> None:
    environ = compose_environment() if where == "compose" else k8s_environment()
    config = resolve(text, environ)
    service = config["service"]
    for extension in service.get("extensions", []):
        assert extension in config["extensions"], f"undefined extension {extension}"
    pipelines = service["pipelines"]
    assert set(pipelines) == {"traces"}
    for kind in ("receivers", "processors", "exporters"):
        used = {name for pipeline in pipelines.values() for name in pipeline[kind]}
        assert used, f"no {kind}"
        assert used == set(config[kind]), f"{kind}: used {used}, defined {set(config[kind])}"
    processors = pipelines["traces"]["processors"]
    # memory_limiter refuses data before anything holds it; tail_sampling must see whole
    # traces before batch splits them up.
    assert processors == ["memory_limiter", "tail_sampling", "batch"]


@pytest.mark.parametrize(("where", "text"), copies(), ids=["compose", "kubernetes"])
def test_tail_sampling_keeps_errors_slow_traces_and_a_share(where: str, text: str) -> None:
    environ = compose_environment() if where == "compose" else k8s_environment()
    sampling = resolve(text, environ)["processors"]["tail_sampling"]
    policies = {policy["type"]: policy for policy in sampling["policies"]}
    assert set(policies) == {"status_code", "latency", "probabilistic"}
    assert policies["status_code"]["status_code"]["status_codes"] == ["ERROR"]
    # Slow means slower than the P99 latency alert threshold of alerts.yml.
    threshold_ms = policies["latency"]["latency"]["threshold_ms"]
    assert threshold_ms == p99_threshold_seconds() * 1000 == 2000
    share = policies["probabilistic"]["probabilistic"]["sampling_percentage"]
    assert isinstance(share, int | float)
    assert 0 < share < 100
    assert text.count("${env:TAIL_SAMPLING_PERCENTAGE}") == 1  # configurable, not fixed


def test_every_referenced_variable_is_set_by_compose_and_kubernetes() -> None:
    referenced = set(_ENV_REFERENCE.findall(COLLECTOR_CONFIG.read_text()))
    assert referenced == {"TRACES_BACKEND_ENDPOINT", "TAIL_SAMPLING_PERCENTAGE"}
    assert referenced <= compose_environment().keys()
    assert referenced <= k8s_environment().keys()
    assert compose_environment()["TRACES_BACKEND_ENDPOINT"] == "jaeger:4317"


def test_both_run_the_contrib_distribution_of_one_version() -> None:
    """tail_sampling exists only in the contrib build; compose and the cluster agree."""
    compose_image = compose_collector()["image"]
    k8s_image = container(find("Deployment", "otel-collector"))["image"]
    assert compose_image.startswith(CONTRIB_IMAGE)
    assert k8s_image == compose_image


def test_memory_limiter_fits_the_container_limit() -> None:
    config = resolve(COLLECTOR_CONFIG.read_text(), k8s_environment())
    limiter = config["processors"]["memory_limiter"]
    limit = container(find("Deployment", "otel-collector"))["resources"]["limits"]["memory"]
    assert limit.endswith("Mi")
    assert limiter["limit_mib"] + limiter["spike_limit_mib"] <= int(limit.removesuffix("Mi"))


def test_collector_ports_match_the_receivers_and_the_app_endpoint() -> None:
    config = resolve(COLLECTOR_CONFIG.read_text(), k8s_environment())
    protocols = config["receivers"]["otlp"]["protocols"]
    listening = {int(p["endpoint"].rsplit(":", 1)[1]) for p in protocols.values()}
    spec = container(find("Deployment", "otel-collector"))
    assert {p["containerPort"] for p in spec["ports"] if p["name"].startswith("otlp")} == listening
    health = int(config["extensions"]["health_check"]["endpoint"].rsplit(":", 1)[1])
    assert {p["name"]: p["containerPort"] for p in spec["ports"]}["health"] == health
    service = find("Service", "otel-collector")
    app_env = literal_env(container(find("Deployment", "baliblissed-backend")))
    host, port = app_env["OTEL_EXPORTER_OTLP_ENDPOINT"].removeprefix("http://").split(":")
    assert host == service["metadata"]["name"]
    assert int(port) in {p["port"] for p in service["spec"]["ports"]}
    assert int(port) == int(protocols["grpc"]["endpoint"].rsplit(":", 1)[1])
    assert app_env["OTEL_EXPORTER_OTLP_PROTOCOL"] == "grpc"
