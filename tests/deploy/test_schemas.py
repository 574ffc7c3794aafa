"""Every manifest against the schema of its kind, offline.

Core kinds: kubernetes-validate (PyPI), which bundles the Kubernetes OpenAPI schemas;
the strict variant refuses unknown fields. Prometheus Operator kinds: the pydantic
models of cloudcoil-models-prometheus-operator (PyPI), generated from the operator's
CRDs; pydantic ignores unknown fields, so the round trip must give back the input.
"""

from __future__ import annotations

import copy
from typing import Any

import kubernetes_validate
import pydantic
import pytest
from cloudcoil.models.prometheus_operator import v1 as monitoring_v1

from tests.deploy.manifests import Manifest, find, manifests

# The oldest Kubernetes release the manifests target, and the newest bundled.
KUBERNETES_VERSIONS = ("1.29", kubernetes_validate.latest_version())
CRD_MODELS: dict[str, type[pydantic.BaseModel]] = {
    "ServiceMonitor": monitoring_v1.ServiceMonitor,
    "PrometheusRule": monitoring_v1.PrometheusRule,
}
CORE = [
    (f"{path.name}:{doc['kind']}/{doc['metadata']['name']}", doc)
    for path, doc in manifests()
    if doc["kind"] not in CRD_MODELS
]
CRDS = [
    (f"{path.name}:{doc['kind']}/{doc['metadata']['name']}", doc)
    for path, doc in manifests()
    if doc["kind"] in CRD_MODELS
]


def validate_crd(doc: Manifest) -> None:
    """Validate against the operator's CRD model; unknown fields are an error too."""
    model = CRD_MODELS[doc["kind"]].model_validate(doc)
    again = model.model_dump(by_alias=True, exclude_unset=True, mode="json")
    assert again == doc, "fields unknown to the CRD were dropped"


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize(("where", "doc"), CORE, ids=[where for where, _ in CORE])
def test_core_manifest_matches_the_kubernetes_schema(
    where: str, doc: Manifest, version: str
) -> None:
    kubernetes_validate.validate(doc, version, strict=True)


def test_every_core_kind_is_covered() -> None:
    kinds = {doc["kind"] for _, doc in CORE}
    assert kinds == {"Namespace", "Deployment", "Service", "NetworkPolicy", "ConfigMap"}


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("spec", "template", "spec", "containers", 0, "readinessProbe", "timeoutSecond"), 3),
        (("spec", "template", "spec", "containers", 0, "ports", 1, "containerPort"), "9000"),
        (("spec", "replicas"), "two"),
    ],
)
def test_kubernetes_schema_check_has_teeth(path: tuple[str | int, ...], value: Any) -> None:
    broken = copy.deepcopy(find("Deployment", "baliblissed-backend"))
    target: Any = broken
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSIONS[0], strict=True)


@pytest.mark.parametrize(("where", "doc"), CRDS, ids=[where for where, _ in CRDS])
def test_prometheus_operator_object_matches_its_crd(where: str, doc: Manifest) -> None:
    validate_crd(doc)


def test_both_operator_kinds_are_present() -> None:
    assert sorted(doc["kind"] for _, doc in CRDS) == ["PrometheusRule", "ServiceMonitor"]


def test_crd_check_rejects_wrong_values_and_unknown_fields() -> None:
    monitor = find("ServiceMonitor", "baliblissed-backend")
    bad_interval = copy.deepcopy(monitor)
    bad_interval["spec"]["endpoints"][0]["interval"] = "15 seconds"
    with pytest.raises(pydantic.ValidationError):
        validate_crd(bad_interval)
    misspelt = copy.deepcopy(monitor)
    misspelt["spec"]["endpoints"][0]["scrapeIntervall"] = "15s"
    with pytest.raises(AssertionError, match="unknown to the CRD"):
        validate_crd(misspelt)
    rule = copy.deepcopy(find("PrometheusRule", "baliblissed-backend"))
    rule["spec"]["groups"][0]["rules"][0]["for"] = "five minutes"
    with pytest.raises(pydantic.ValidationError):
        validate_crd(rule)
