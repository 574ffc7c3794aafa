"""The generated manifests are what scripts/gen_k8s.py writes now, and say what their
sources say: the alert groups of alerts.yml, the dashboards of grafana/dashboards/, the
one collector config. A hand edit to either side without `make k8s` fails here.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml

from tests.assets.promql import DASHBOARD_DIR, PROMETHEUS_DIR, REPO
from tests.deploy.manifests import (
    COLLECTOR_CONFIG,
    GEN_SCRIPT,
    GENERATED_DIR,
    K8S_DIR,
    KUSTOMIZATION,
    find,
    gen_k8s,
    manifest_files,
    manifests,
)


def test_committed_generated_files_equal_what_the_script_writes() -> None:
    rendered: dict[Path, str] = gen_k8s().render()
    assert set(rendered) == set(GENERATED_DIR.glob("*.yaml"))
    for path, content in rendered.items():
        assert path.read_text() == content, f"{path.relative_to(REPO)} is stale: run `make k8s`"


def test_check_mode_fails_on_a_stale_file(tmp_path: Path) -> None:
    """`gen_k8s.py --check` exits 0 now and 1 once a generated file is edited by hand."""
    ok = subprocess.run(
        [sys.executable, str(GEN_SCRIPT), "--check"], capture_output=True, text=True, check=False
    )
    assert ok.returncode == 0, ok.stderr
    main = gen_k8s().main
    out = ["--output-dir", str(tmp_path)]
    assert main(["--check", *out]) == 1  # nothing written there yet
    assert main(out) == 0
    assert main(["--check", *out]) == 0
    edited = tmp_path / "prometheusrule.yaml"
    edited.write_text(edited.read_text().replace("> 0.05", "> 0.5"))
    assert main(["--check", *out]) == 1
    assert main(out) == 0  # rewrites it
    assert main(["--check", *out]) == 0


def test_prometheus_rule_carries_exactly_the_alert_groups() -> None:
    rule = find("PrometheusRule", "baliblissed-backend")
    source = yaml.safe_load((PROMETHEUS_DIR / "alerts.yml").read_text())
    assert rule["spec"]["groups"] == source["groups"]
    assert [group["name"] for group in rule["spec"]["groups"]] == [
        "asgi-observe-http",
        "asgi-observe-availability",
        "asgi-observe-resources",
    ]


def test_every_dashboard_is_a_configmap_for_the_grafana_sidecar() -> None:
    configmaps = [
        doc
        for _, doc in manifests()
        if doc["kind"] == "ConfigMap" and "grafana_dashboard" in doc["metadata"].get("labels", {})
    ]
    sources = sorted(DASHBOARD_DIR.glob("*.json"))
    assert len(configmaps) == len(sources) == 3
    by_file = {name: doc for doc in configmaps for name in doc["data"]}
    for source in sources:
        configmap = by_file[source.name]
        assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
        assert configmap["metadata"]["namespace"] == "monitoring"
        assert json.loads(configmap["data"][source.name]) == json.loads(source.read_text())
        # kubectl's client-side apply stores the object in a 256 KiB annotation.
        assert len(yaml.safe_dump(configmap).encode()) < 256 * 1024


def test_collector_configmap_is_the_compose_collector_config() -> None:
    configmap = find("ConfigMap", "otel-collector-config")
    assert configmap["data"]["config.yaml"] == COLLECTOR_CONFIG.read_text()
    collector = find("Deployment", "otel-collector")
    volumes = collector["spec"]["template"]["spec"]["volumes"]
    assert {"name": "config", "configMap": {"name": "otel-collector-config"}} in volumes


def test_kustomization_lists_every_manifest_and_nothing_else() -> None:
    listed = set(manifest_files())
    on_disk = {path for path in K8S_DIR.rglob("*.yaml") if path != KUSTOMIZATION and path.is_file()}
    assert listed == on_disk
    document = yaml.safe_load(KUSTOMIZATION.read_text())
    assert document["apiVersion"] == "kustomize.config.k8s.io/v1beta1"
    assert document["kind"] == "Kustomization"
    # Plain manifests only: nothing kustomize would have to compute.
    assert set(document) == {"apiVersion", "kind", "resources"}


def test_every_object_is_namespaced_explicitly() -> None:
    """Without kustomize, `kubectl apply -f` must put every object where it belongs."""
    for path, doc in manifests():
        if doc["kind"] == "Namespace":
            continue
        assert doc["metadata"].get("namespace") in {"baliblissed", "monitoring"}, path
