"""The objects point at each other: selectors match labels, named ports exist, and the
NetworkPolicy admits the metrics port from the monitoring namespace only.

The NetworkPolicy is evaluated with the semantics of the Kubernetes API (a pod selected
by a policy accepts a connection when any ingress rule matches both its `from` and its
`ports`; an empty or missing list matches everything), for a table of callers.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.deploy.manifests import Manifest, container, find

APP = "baliblissed-backend"


def matches(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """A label selector (matchLabels only, as in these manifests) against labels."""
    assert set(selector) <= {"matchLabels"}, "matchExpressions are not evaluated here"
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


def admitted(
    policy: Manifest,
    pod: dict[str, Any],
    *,
    namespace: str,
    namespace_labels: dict[str, str],
    port: int,
) -> bool:
    """Whether `policy` lets a pod of `namespace` connect to `port` of `pod`."""
    spec = policy["spec"]
    assert "Ingress" in spec["policyTypes"]
    named = {
        p["name"]: p["containerPort"]
        for p in container({"spec": {"template": {"spec": pod}}})["ports"]
    }
    for rule in spec.get("ingress", []):
        ports = rule.get("ports") or [{}]
        port_ok = any("port" not in p or named.get(p["port"], p["port"]) == port for p in ports)
        peers = rule.get("from") or [{}]
        peer_ok = any(
            ("namespaceSelector" not in peer and namespace == policy["metadata"]["namespace"])
            or (
                "namespaceSelector" in peer and matches(peer["namespaceSelector"], namespace_labels)
            )
            or peer == {}
            for peer in peers
        )
        if port_ok and peer_ok:
            return True
    return False


def ns(name: str) -> dict[str, Any]:
    return {"namespace": name, "namespace_labels": {"kubernetes.io/metadata.name": name}}


@pytest.mark.parametrize(
    ("caller", "port_name", "expected"),
    [
        ("monitoring", "metrics", True),
        ("baliblissed", "metrics", False),
        ("default", "metrics", False),
        ("ingress-nginx", "metrics", False),
        ("monitoring", "http", True),
        ("ingress-nginx", "http", True),
        ("default", "http", True),
    ],
)
def test_metrics_port_only_from_the_monitoring_namespace(
    caller: str, port_name: str, expected: bool
) -> None:
    policy = find("NetworkPolicy", APP)
    deployment = find("Deployment", APP)
    pod = deployment["spec"]["template"]["spec"]
    assert matches(
        policy["spec"]["podSelector"], deployment["spec"]["template"]["metadata"]["labels"]
    )
    port = {p["name"]: p["containerPort"] for p in container(deployment)["ports"]}[port_name]
    assert admitted(policy, pod, port=port, **ns(caller)) is expected


def test_policy_evaluation_has_teeth() -> None:
    """The same evaluation on a policy that forgot the namespace selector lets anyone in."""
    policy = find("NetworkPolicy", APP)
    open_rule = {
        **policy,
        "spec": {**policy["spec"], "ingress": [{"ports": [{"port": "metrics"}]}]},
    }
    pod = find("Deployment", APP)["spec"]["template"]["spec"]
    assert admitted(open_rule, pod, port=9000, **ns("default"))


def test_service_selects_the_pods_and_names_their_ports() -> None:
    deployment = find("Deployment", APP)
    service = find("Service", APP)
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert matches({"matchLabels": service["spec"]["selector"]}, labels)
    assert matches(deployment["spec"]["selector"], labels)
    names = {p["name"] for p in container(deployment)["ports"]}
    assert {p["targetPort"] for p in service["spec"]["ports"]} == names == {"http", "metrics"}


def test_service_monitor_scrapes_the_metrics_port_of_the_service() -> None:
    monitor = find("ServiceMonitor", APP)
    service = find("Service", APP)
    assert matches(monitor["spec"]["selector"], service["metadata"]["labels"])
    assert monitor["spec"]["namespaceSelector"]["matchNames"] == [service["metadata"]["namespace"]]
    (endpoint,) = monitor["spec"]["endpoints"]
    by_name = {p["name"]: p for p in service["spec"]["ports"]}
    assert by_name[endpoint["port"]]["targetPort"] == "metrics"
    assert endpoint["path"] == "/metrics"
    # job label = the Service's app name, as the compose job, so dashboards and alerts match.
    assert service["metadata"]["labels"][monitor["spec"]["jobLabel"]] == APP


def test_prometheus_rule_and_monitor_carry_the_same_selector_label() -> None:
    monitor = find("ServiceMonitor", APP)
    rule = find("PrometheusRule", APP)
    assert monitor["metadata"]["labels"]["release"] == rule["metadata"]["labels"]["release"]


def test_collector_service_selects_the_collector() -> None:
    deployment = find("Deployment", "otel-collector")
    service = find("Service", "otel-collector")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert matches({"matchLabels": service["spec"]["selector"]}, labels)
    names = {p["name"] for p in container(deployment)["ports"]}
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= names
    # Tail sampling needs every span of a trace in one instance.
    assert deployment["spec"]["replicas"] == 1
