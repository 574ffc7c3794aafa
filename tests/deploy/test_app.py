"""The Deployment agrees with the application it runs.

Probe paths and ports, the metrics port and its name, the multiprocess directory, the
shutdown budget and the sampler are read from the manifests and checked against the
library's own settings (`Settings.from_env` on the Deployment's environment), the health
app's timeouts and cache, and finally against the container's real command, run here.
"""

from __future__ import annotations

import inspect
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace.sampling import Decision
from prometheus_client import CollectorRegistry
from sqlalchemy.ext.asyncio import create_async_engine

from asgi_observe import HealthApp, Settings, setup_tracing, shutdown_tracing
from examples.baliblissed import build_health
from tests.assets.promql import REPO
from tests.deploy.manifests import (
    Manifest,
    container,
    find,
    literal_env,
    option,
    port_number,
    uvicorn_argv,
    uvicorn_script,
)
from tests.support import free_port, http_get, wait_until

PROBES = {"startupProbe": "/health/startup", "readinessProbe": "/health/ready"}


@pytest.fixture(scope="module")
def deployment() -> Manifest:
    return find("Deployment", "baliblissed-backend")


@pytest.fixture(scope="module")
def app_container(deployment: Manifest) -> dict[str, Any]:
    return container(deployment, "backend")


def settings_of(spec: dict[str, Any], multiproc_dir: Path) -> Settings:
    """Settings.from_env on the container's literal environment (the multiprocess
    directory, an emptyDir in the pod, replaced by one that exists here)."""
    env = literal_env(spec)
    assert env["PROMETHEUS_MULTIPROC_DIR"]
    return Settings.from_env({**env, "PROMETHEUS_MULTIPROC_DIR": str(multiproc_dir)})


def mounts(deployment: Manifest, spec: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """mountPath -> the pod volume mounted there."""
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    return {m["mountPath"]: volumes[m["name"]] for m in spec["volumeMounts"]}


def test_ports_are_the_ones_the_app_listens_on(
    app_container: dict[str, Any], tmp_path: Path
) -> None:
    settings = settings_of(app_container, tmp_path)
    argv = uvicorn_argv(app_container)
    assert argv[1:3] == ["--factory", "examples.baliblissed:create_app"]
    assert option(argv, "--port") == str(port_number(app_container, "http"))
    assert option(argv, "--host") == "0.0.0.0"
    # Metrics live on their own, named port, reachable from other pods.
    assert settings.metrics_internal_port == port_number(app_container, "metrics")
    assert settings.metrics_internal_host == "0.0.0.0"
    assert settings.enable_metrics
    assert settings.metrics_token is None  # the NetworkPolicy guards the port
    for probe in (*PROBES, "livenessProbe"):
        assert app_container[probe]["httpGet"]["port"] == "http", probe


def test_probe_paths_are_the_health_app_endpoints(app_container: dict[str, Any]) -> None:
    assert app_container["livenessProbe"]["httpGet"]["path"] == "/health/live"
    for probe, path in PROBES.items():
        assert app_container[probe]["httpGet"]["path"] == path


def health_of(settings: Settings) -> HealthApp:
    """The example's readiness checks with both dependencies configured (the worst case)."""
    import redis.asyncio

    engine = create_async_engine("sqlite+aiosqlite://")
    client = redis.asyncio.from_url("redis://127.0.0.1:1/0")
    return build_health(settings, engine, client, CollectorRegistry())


def test_probe_thresholds_fit_the_check_timeouts_and_cache(
    app_container: dict[str, Any], tmp_path: Path
) -> None:
    health = health_of(settings_of(app_container, tmp_path))
    slowest = max(check.timeout for check in health.checks)
    assert {check.name for check in health.checks} >= {"database", "redis"}
    assert slowest == 2.0  # the database check
    cache_ttl = inspect.signature(HealthApp).parameters["cache_ttl"].default
    for probe in PROBES:
        spec = app_container[probe]
        # A probe that gives up before the slowest check does would see a hung
        # dependency as a timeout instead of the check's `fail` and its message.
        assert spec["timeoutSeconds"] > slowest, probe
        # Each probe gets a fresh evaluation, so failureThreshold counts real failures.
        assert spec["periodSeconds"] > cache_ttl, probe
    ready = app_container["readinessProbe"]
    assert ready["failureThreshold"] * ready["periodSeconds"] >= 20  # no flapping on a blip
    startup = app_container["startupProbe"]
    assert startup["failureThreshold"] * startup["periodSeconds"] >= 60
    live = app_container["livenessProbe"]
    assert "startupProbe" in app_container  # liveness only starts once started
    assert live["failureThreshold"] >= 3


def test_shutdown_grace_covers_drain_and_span_flush(
    deployment: Manifest, app_container: dict[str, Any], tmp_path: Path
) -> None:
    grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    pre_stop = app_container["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    drain = option(uvicorn_argv(app_container), "--timeout-graceful-shutdown")
    assert drain is not None
    flush = inspect.signature(shutdown_tracing).parameters["timeout"].default
    settings = settings_of(app_container, tmp_path)
    assert settings.otlp_timeout is not None
    assert settings.otlp_timeout <= flush  # one export attempt fits in the final flush
    assert grace >= int(pre_stop[1]) + int(drain) + flush + 5


def test_workers_share_a_multiprocess_dir_on_an_empty_dir(
    deployment: Manifest, app_container: dict[str, Any]
) -> None:
    workers = int(option(uvicorn_argv(app_container), "--workers") or "1")
    assert workers > 1
    directory = literal_env(app_container)["PROMETHEUS_MULTIPROC_DIR"]
    volume = mounts(deployment, app_container)[directory]
    assert "emptyDir" in volume
    # Emptied before the workers start, also when only the container restarts.
    assert uvicorn_script(app_container).startswith('rm -rf "${PROMETHEUS_MULTIPROC_DIR:?}"/*')


def test_container_is_locked_down(deployment: Manifest, app_container: dict[str, Any]) -> None:
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert pod["automountServiceAccountToken"] is False
    security = app_container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    # The only writable paths: temp files (the default SQLite database) and the
    # multiprocess files.
    assert set(mounts(deployment, app_container)) == {"/tmp", "/var/run/prometheus-multiproc"}
    resources = app_container["resources"]
    assert {"cpu", "memory"} <= resources["requests"].keys()
    assert "memory" in resources["limits"]


def sampled_share(settings: Settings) -> float:
    provider = setup_tracing(settings, set_global=False)
    try:
        decisions = [
            provider.sampler.should_sample(None, trace_id, "GET /").decision
            for trace_id in range(1, 2**64, 2**64 // 400)
        ]
    finally:
        shutdown_tracing(provider)
    return sum(d is Decision.RECORD_AND_SAMPLE for d in decisions) / len(decisions)


def test_the_app_samples_every_trace_for_the_gateway(
    app_container: dict[str, Any], tmp_path: Path
) -> None:
    env = {k: v for k, v in literal_env(app_container).items() if "EXPORTER" not in k}
    env["PROMETHEUS_MULTIPROC_DIR"] = str(tmp_path)
    assert env["OTEL_TRACES_SAMPLER"] == "parentbased_always_on"
    assert sampled_share(Settings.from_env(env)) == 1.0
    # The check can fail: at the old production ratio most roots are dropped.
    ratio = {"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.1"}
    assert sampled_share(Settings.from_env({**env, **ratio})) < 0.2


def test_the_container_command_serves_probes_and_metrics_where_the_manifest_says(
    app_container: dict[str, Any], tmp_path: Path
) -> None:
    """Run the container's own shell command (ports moved to free loopback ones) with its
    environment, and probe it the way the kubelet and Prometheus would."""
    http_port, metrics_port = free_port(), free_port()
    script = uvicorn_script(app_container)
    replacements = {
        "exec uvicorn": f"exec {sys.executable} -m uvicorn",
        "--host 0.0.0.0": "--host 127.0.0.1",
        f"--port {port_number(app_container, 'http')}": f"--port {http_port}",
    }
    for old, new in replacements.items():
        assert old in script
        script = script.replace(old, new)
    multiproc = tmp_path / "multiproc"
    multiproc.mkdir()
    (multiproc / "counter_999999.db").write_bytes(b"left over from a previous run")
    env = {
        **os.environ,
        **literal_env(app_container),
        "PYTHONPATH": str(REPO),
        "TMPDIR": str(tmp_path),
        "PROMETHEUS_MULTIPROC_DIR": str(multiproc),
        "METRICS_INTERNAL_PORT": str(metrics_port),
        "METRICS_INTERNAL_HOST": "127.0.0.1",
        "OTEL_RESOURCE_ATTRIBUTES": "k8s.pod.name=test",
    }
    for name in ("OTEL_EXPORTER_OTLP_ENDPOINT", "DATABASE_URL", "REDIS_URL"):
        env.pop(name, None)
    log = tmp_path / "app.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            ["/bin/sh", "-c", script], cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT
        )
    base = f"http://127.0.0.1:{http_port}"
    try:
        startup = app_container["startupProbe"]
        budget = startup["periodSeconds"] * startup["failureThreshold"]

        def started() -> bool:
            assert process.poll() is None, log.read_text()
            try:
                return http_get(base + "/health/startup", timeout=1)[0] == 200
            except OSError:
                return False

        wait_until(started, timeout=min(budget, 60), what="/health/startup 200", interval=0.2)
        assert not (multiproc / "counter_999999.db").exists()
        for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
            path = app_container[probe]["httpGet"]["path"]
            status, _, body = http_get(base + path, timeout=app_container[probe]["timeoutSeconds"])
            assert status == 200, (path, body)
        assert http_get(base + "/destinations")[0] == 200
        assert http_get(base + "/metrics")[0] == 404  # never on the public port

        def scraped() -> bool:
            try:
                status, _, body = http_get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=2)
            except OSError:
                return False
            return status == 200 and b'handler="/destinations"' in body

        wait_until(scraped, timeout=15, what="metrics on the metrics port", interval=0.2)
        assert any(multiproc.iterdir())  # the workers write their samples there
        # SIGTERM (what the kubelet sends after preStop) ends it within the grace period.
        stopped_at = time.monotonic()
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
        assert time.monotonic() - stopped_at < 30
        assert process.returncode == 0, log.read_text()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)
