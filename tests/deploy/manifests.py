"""Helpers for the deployment tests: the manifests of deploy/kubernetes/, parsed.

Every test of tests/deploy/ reads the committed files, never a second copy of their
content, so a change to a manifest is checked by all of them at once.
"""

from __future__ import annotations

import importlib.util
import shlex
from pathlib import Path
from types import ModuleType
from typing import Any

import yaml

from tests.assets.promql import REPO

K8S_DIR = REPO / "deploy" / "kubernetes"
GENERATED_DIR = K8S_DIR / "generated"
KUSTOMIZATION = K8S_DIR / "kustomization.yaml"
COLLECTOR_CONFIG = REPO / "compose" / "otel-collector" / "config.yaml"
GEN_SCRIPT = REPO / "scripts" / "gen_k8s.py"

Manifest = dict[str, Any]


def manifest_files() -> list[Path]:
    """Every manifest the kustomization applies, in its order."""
    document = yaml.safe_load(KUSTOMIZATION.read_text())
    return [K8S_DIR / name for name in document["resources"]]


def manifests() -> list[tuple[Path, Manifest]]:
    """(file, object) for every object of every applied manifest."""
    found: list[tuple[Path, Manifest]] = []
    for path in manifest_files():
        found.extend((path, doc) for doc in yaml.safe_load_all(path.read_text()) if doc)
    return found


def find(kind: str, name: str) -> Manifest:
    """The one object of `kind` named `name`."""
    matches = [doc for _, doc in manifests() if doc["kind"] == kind]
    named = [doc for doc in matches if doc["metadata"]["name"] == name]
    assert len(named) == 1, f"expected one {kind}/{name}, found {len(named)}"
    return named[0]


def container(deployment: Manifest, name: str | None = None) -> dict[str, Any]:
    """The (named, or only) container of a Deployment's pod template."""
    containers: list[dict[str, Any]] = deployment["spec"]["template"]["spec"]["containers"]
    if name is None:
        assert len(containers) == 1
        return containers[0]
    return next(c for c in containers if c["name"] == name)


def literal_env(spec: dict[str, Any]) -> dict[str, str]:
    """The container's environment variables that have a literal value."""
    return {item["name"]: item["value"] for item in spec.get("env", []) if "value" in item}


def uvicorn_argv(spec: dict[str, Any]) -> list[str]:
    """The uvicorn command line the container runs (after its `sh -c` preamble, if any)."""
    argv = [*spec.get("command", []), *spec.get("args", [])]
    if argv[:2] == ["/bin/sh", "-c"]:
        script = " ".join(argv[2:])
        last = script.split("&&")[-1]
        argv = shlex.split(last)
        if argv[0] == "exec":
            argv = argv[1:]
    assert argv[0] == "uvicorn", argv
    return argv


def option(argv: list[str], flag: str) -> str | None:
    """The value of `--flag value` in argv, or None."""
    return argv[argv.index(flag) + 1] if flag in argv else None


def port_number(spec: dict[str, Any], name: str) -> int:
    """The containerPort named `name`."""
    ports = {port["name"]: port["containerPort"] for port in spec.get("ports", [])}
    value: int = ports[name]
    return value


def gen_k8s() -> ModuleType:
    """scripts/gen_k8s.py, imported by path (scripts/ is not a package)."""
    spec = importlib.util.spec_from_file_location("gen_k8s", GEN_SCRIPT)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def uvicorn_script(spec: dict[str, Any]) -> str:
    """The `sh -c` script of a container (its args joined), whitespace normalised."""
    assert spec["command"] == ["/bin/sh", "-c"]
    return " ".join(" ".join(spec["args"]).split())
