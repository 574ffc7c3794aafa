"""The local stack in compose/: docker-compose.yaml, the Dockerfile, the OTel Collector.

No Docker engine runs here, so the compose file is checked against the compose
specification with check-jsonschema, and what the schema cannot see is checked by hand:
`depends_on` names real services (with a healthcheck when waiting for `service_healthy`),
every published port binds 127.0.0.1, every mounted file exists, and the service's
environment is one `Settings.from_env()` accepts and that points at the other services.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from asgi_observe import Settings
from tests.assets.promql import COMPOSE_DIR, PROMETHEUS_DIR, REPO
from tests.support import require

COMPOSE_FILE = COMPOSE_DIR / "docker-compose.yaml"
DOCKERFILE = COMPOSE_DIR / "Dockerfile"
COLLECTOR_CONFIG = COMPOSE_DIR / "otel-collector" / "config.yaml"
APP_COMMAND = [
    "uvicorn",
    "--factory",
    "examples.baliblissed:create_app",
    "--host",
    "0.0.0.0",
    "--port",
    "8000",
    # The library's access log replaces uvicorn's (README: logging).
    "--no-access-log",
]
_INTERPOLATION = re.compile(r"\$\{(\w+)(?::?-([^}]*))?\}")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text())
    return document


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = compose["services"]
    return found


def interpolate(value: str) -> str:
    """Resolve `${VAR:-default}` as compose does with an empty environment."""
    return _INTERPOLATION.sub(lambda m: m.group(2) or "", value)


def check_jsonschema() -> str:
    """The check-jsonschema of this interpreter's environment (a dev dependency)."""
    beside = Path(sys.executable).parent / "check-jsonschema"
    path = str(beside) if beside.exists() else shutil.which("check-jsonschema")
    require(path is not None, "check-jsonschema is not installed (pip install -e '.[dev]')")
    assert path is not None
    return path


def run_check_jsonschema(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [check_jsonschema(), "--builtin-schema", "vendor.compose-spec", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {key: interpolate(str(value)) for key, value in env.items()}


def published_ports(service: dict[str, Any]) -> list[tuple[str | None, str]]:
    """(host_ip, published) for every port mapping, short or long syntax."""
    found: list[tuple[str | None, str]] = []
    for port in service.get("ports", []):
        if isinstance(port, dict):
            found.append((port.get("host_ip"), str(port.get("published", ""))))
            continue
        parts = str(port).split(":")
        if len(parts) == 3:
            found.append((parts[0], parts[1]))
        elif len(parts) == 2:
            found.append((None, parts[0]))
        else:
            found.append((None, parts[0]))  # container port only: published on all interfaces
    return found


def bind_mounts(service: dict[str, Any]) -> list[tuple[Path, str]]:
    """(host path, container path) of every bind mount, resolved like compose does."""
    mounts: list[tuple[Path, str]] = []
    for volume in service.get("volumes", []):
        if isinstance(volume, dict):
            if volume.get("type") == "bind":
                mounts.append(((COMPOSE_DIR / volume["source"]).resolve(), volume["target"]))
            continue
        source, target = str(volume).split(":")[:2]
        if source.startswith((".", "/", "~")):
            mounts.append(((COMPOSE_DIR / source).resolve(), target))
    return mounts


def test_compose_file_matches_the_compose_spec() -> None:
    result = run_check_jsonschema(COMPOSE_FILE)
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_spec_check_rejects_a_broken_file(tmp_path: Path) -> None:
    """The schema check has teeth: a misspelt key fails it."""
    broken = tmp_path / "docker-compose.yaml"
    broken.write_text(COMPOSE_FILE.read_text().replace("    healthcheck:", "    healthchek:", 1))
    result = run_check_jsonschema(broken)
    assert result.returncode != 0
    assert "healthchek" in result.stdout + result.stderr


def test_the_stack_has_its_services(services: dict[str, dict[str, Any]]) -> None:
    assert set(services) == {
        "backend",
        "postgres",
        "redis",
        "prometheus",
        "grafana",
        "jaeger",
        "otel-collector",
    }
    assert services["otel-collector"]["profiles"] == ["otel"]
    for name, service in services.items():
        if name != "otel-collector":
            assert "profiles" not in service, f"{name} must start without a profile"
    jaeger = services["jaeger"]
    assert jaeger["image"].startswith("jaegertracing/all-in-one:")
    assert environment(jaeger)["COLLECTOR_OTLP_ENABLED"] == "true"


def test_depends_on_names_existing_services(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        depends = service.get("depends_on", [])
        conditions = (
            {dep: spec.get("condition", "service_started") for dep, spec in depends.items()}
            if isinstance(depends, dict)
            else dict.fromkeys(depends, "service_started")
        )
        for dependency, condition in conditions.items():
            assert dependency in services, f"{name} depends on unknown service {dependency}"
            assert dependency != name
            # A service outside any profile cannot wait for one that may not be started.
            if "profiles" not in service:
                assert "profiles" not in services[dependency], f"{name} -> {dependency}"
            if condition == "service_healthy":
                assert "healthcheck" in services[dependency], (
                    f"{name} waits for {dependency} to be healthy, but it has no healthcheck"
                )


def test_every_published_port_binds_localhost_only(services: dict[str, dict[str, Any]]) -> None:
    published = {
        name: published_ports(service) for name, service in services.items() if "ports" in service
    }
    assert {"grafana", "prometheus", "jaeger"} <= published.keys()
    for name, ports in published.items():
        for host_ip, port in ports:
            assert host_ip == "127.0.0.1", f"{name} publishes {port} on every interface"
    assert ("127.0.0.1", "3000") in published["grafana"]
    assert ("127.0.0.1", "9090") in published["prometheus"]
    assert ("127.0.0.1", "16686") in published["jaeger"]


def test_every_mounted_file_exists(services: dict[str, dict[str, Any]]) -> None:
    mounted = 0
    for name, service in services.items():
        for source, target in bind_mounts(service):
            assert source.exists(), f"{name} mounts missing {source} at {target}"
            assert REPO in source.parents, f"{name} mounts {source} from outside the repository"
            mounted += 1
    assert mounted >= 4  # prometheus dir, grafana provisioning + dashboards, collector config
    build = services["backend"]["build"]
    context = (COMPOSE_DIR / build["context"]).resolve()
    assert context == REPO
    assert (context / build["dockerfile"]).resolve() == DOCKERFILE


def test_prometheus_mount_carries_the_rule_files(services: dict[str, dict[str, Any]]) -> None:
    mounts = {target: source for source, target in bind_mounts(services["prometheus"])}
    assert mounts["/etc/prometheus"] == PROMETHEUS_DIR
    command = services["prometheus"]["command"]
    assert "--config.file=/etc/prometheus/prometheus.yml" in command
    assert "--enable-feature=exemplar-storage" in command


def test_interpolated_variables_all_have_defaults() -> None:
    """`docker compose up` must work without a .env file."""
    text = COMPOSE_FILE.read_text()
    for match in _INTERPOLATION.finditer(text):
        assert match.group(2) is not None, f"${{{match.group(1)}}} has no default"
    assert "${GRAFANA_ADMIN_PASSWORD:-admin}" in text


def test_backend_environment_is_valid_settings(services: dict[str, dict[str, Any]]) -> None:
    env = environment(services["backend"])
    settings = Settings.from_env(env)
    assert settings.service_name == "baliblissed-backend"
    assert settings.otlp_endpoint == "http://otel-collector:4317"
    assert settings.environment == "development"
    for key in ("ENVIRONMENT", "DATABASE_URL", "REDIS_URL", "OTEL_SERVICE_NAME"):
        assert key in env

    database = urlsplit(env["DATABASE_URL"])
    assert database.scheme == "postgresql+asyncpg"
    assert database.hostname in services
    postgres = environment(services[database.hostname])
    assert database.username == postgres["POSTGRES_USER"]
    assert database.password == postgres["POSTGRES_PASSWORD"]
    assert database.path == f"/{postgres['POSTGRES_DB']}"

    redis = urlsplit(env["REDIS_URL"])
    assert redis.scheme == "redis"
    assert redis.hostname in services
    assert urlsplit(env["OTEL_EXPORTER_OTLP_ENDPOINT"]).hostname in services


def test_backend_runs_the_example_and_probes_readiness(
    services: dict[str, dict[str, Any]],
) -> None:
    backend = services["backend"]
    assert backend["command"] == APP_COMMAND
    probe = " ".join(backend["healthcheck"]["test"])
    assert "http://127.0.0.1:8000/health/ready" in probe
    assert backend["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert backend["depends_on"]["redis"]["condition"] == "service_healthy"


def test_dockerfile_runs_the_example_and_probes_liveness() -> None:
    text = DOCKERFILE.read_text()
    commands = re.findall(r"^CMD (.+)$", text, re.MULTILINE)
    assert [json.loads(cmd) for cmd in commands] == [APP_COMMAND]
    assert re.search(r"HEALTHCHECK .*\\\n.*/health/live", text)
    for line in re.findall(r"^COPY (.+)$", text, re.MULTILINE):
        *sources, _destination = line.split()
        for source in sources:
            assert (REPO / source).exists(), f"COPY {source}: not in the repository"
    # The build context is the repository root: the Dockerfile-specific ignore file keeps
    # .venv and caches out of it, but must let every copied path through.
    ignore = (COMPOSE_DIR / "Dockerfile.dockerignore").read_text().splitlines()
    assert ignore.index("*") < ignore.index("!asgi_observe/")  # exclude all, then allow
    for path in ("pyproject.toml", "README.md", "asgi_observe/", "examples/"):
        assert f"!{path}" in ignore


def test_example_factory_named_by_the_command_exists() -> None:
    module_name, _, attribute = APP_COMMAND[2].partition(":")
    module = __import__(module_name, fromlist=[attribute])
    assert callable(getattr(module, attribute))


def test_collector_pipelines_reference_defined_components(
    services: dict[str, dict[str, Any]],
) -> None:
    config = yaml.safe_load(COLLECTOR_CONFIG.read_text())
    pipelines = config["service"]["pipelines"]
    assert "traces" in pipelines
    used: dict[str, set[str]] = {"receivers": set(), "processors": set(), "exporters": set()}
    for name, pipeline in pipelines.items():
        for kind in ("receivers", "exporters"):
            assert pipeline.get(kind), f"pipeline {name} has no {kind}"
        for kind, components in used.items():
            for component in pipeline.get(kind, []):
                assert component in config.get(kind, {}), f"{name}: undefined {kind} {component}"
                components.add(component)
        # memory_limiter must see data before anything buffers it.
        assert pipeline["processors"][0] == "memory_limiter"
        assert "batch" in pipeline["processors"]
    for kind, components in used.items():
        assert set(config[kind]) == components, f"unused {kind}: {set(config[kind]) - components}"

    protocols = config["receivers"]["otlp"]["protocols"]
    assert protocols["grpc"]["endpoint"] == "0.0.0.0:4317"
    assert protocols["http"]["endpoint"] == "0.0.0.0:4318"
    jaeger = config["exporters"]["otlp/jaeger"]
    # The same file serves Kubernetes (tests/deploy), so the backend comes from the
    # environment; compose points it at its Jaeger.
    assert jaeger["endpoint"] == "${env:TRACES_BACKEND_ENDPOINT}"
    assert environment(services["otel-collector"])["TRACES_BACKEND_ENDPOINT"] == "jaeger:4317"
    assert jaeger["tls"]["insecure"] is True
    assert "debug" in config["exporters"]

    collector = services["otel-collector"]
    mounts = {target: source for source, target in bind_mounts(collector)}
    config_flag = next(arg for arg in collector["command"] if arg.startswith("--config="))
    assert mounts[config_flag.removeprefix("--config=")] == COLLECTOR_CONFIG
    assert {port for _, port in published_ports(collector)} == {"4317", "4318"}
