"""The bodies of the health answers, in the seed's JSON and in ``application/health+json``.

The plain shapes are the seed's, key for key (``status``, ``timestamp``, ``version``,
``checks: {name: {status, response_ms, message?, ...}}``). The health+json shapes follow
the IETF draft "Health Check Response Format for HTTP APIs"
(draft-inadarei-api-health-check-06): a ``status`` of ``pass``/``warn``/``fail`` and a
``checks`` map keyed ``component:measurement`` whose values are arrays of observations.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from asgi_observe.health._check import Check, CheckResult
from asgi_observe.health._evaluate import Report

__all__ = ["ServiceInfo", "dumps", "plain_checks", "render_health_json"]


class ServiceInfo:
    """What the answers say about the service itself; fixed at construction."""

    def __init__(self, *, version: str, environment: str, service_name: str, instance: str) -> None:
        self.version = version
        self.environment = environment
        self.service_name = service_name
        self.instance = instance


def dumps(body: Mapping[str, Any]) -> bytes:
    """Compact JSON; a value json cannot encode is written as its string."""
    return json.dumps(body, separators=(",", ":"), default=str).encode()


def plain_checks(report: Report) -> dict[str, Any]:
    """The seed's ``checks`` map."""
    return {result.name: result.as_json() for result in report.results}


def _observation(check: Check, result: CheckResult) -> dict[str, Any]:
    item: dict[str, Any] = {"componentType": check.component_type}
    if check.observed_key == "response_ms":
        item["observedValue"] = result.response_ms
    else:
        item["observedValue"] = result.extra.get(check.observed_key)
    item["observedUnit"] = check.observed_unit
    item["status"] = result.status
    item["time"] = result.time
    if result.message is not None:  # the draft: output SHOULD be omitted for "pass"
        item["output"] = result.message
    return item


def render_health_json(
    info: ServiceInfo,
    *,
    status: str,
    description: str,
    report: Report | None = None,
    checks: Mapping[str, Check] | None = None,
    extra_checks: Mapping[str, list[dict[str, Any]]] | None = None,
) -> dict[str, Any]:
    """A draft-conformant body; `report` results are keyed ``name:measurement``."""
    body: dict[str, Any] = {
        "status": status,
        "version": info.version,
        "releaseId": info.version,
        "serviceId": info.service_name,
        "description": description,
    }
    observations: dict[str, list[dict[str, Any]]] = dict(extra_checks or {})
    if report is not None and checks is not None:
        for result in report.results:
            check = checks[result.name]
            key = f"{result.name}:{check.measurement}"
            observations.setdefault(key, []).append(_observation(check, result))
        failing = [r.name for r in report.results if r.status != "pass"]
        if failing:
            body["output"] = "not passing: " + ", ".join(failing)
    if observations:
        body["checks"] = observations
    return body
