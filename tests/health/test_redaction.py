"""Fields a check reports beside status and message are redacted like messages, in every format."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry

from asgi_observe.health import Check, HealthApp
from tests.health.test_app import client

SECRETS = ("s3cret", "hunter2", "t0k3n", "c00kie", "bob@example.com", "4111 1111")


async def _reporting() -> dict[str, object]:
    return {
        "status": "pass",
        "dsn": "postgresql://app:s3cret@db:5432/app",
        "password": "hunter2",
        "db_password": 12345,  # a sensitive key hides any value, numbers too
        "pool": {"token": "t0k3n", "headers": [("cookie", "sid=c00kie")], "size": 5},
        "owner": "bob@example.com",
        "note": "card 4111 1111 1111 1111 on file",
        "connections": 7,
        "ratio": 0.5,
    }


def _app(registry: CollectorRegistry, *, observed_key: str = "dsn") -> HealthApp:
    check = Check(name="db", run=_reporting, observed_key=observed_key, observed_unit="dsn")
    return HealthApp({"db": check}, registry=registry)


@pytest.mark.parametrize("path", ["/ready", "/startup"])
async def test_plain_json_extras_are_redacted(registry: CollectorRegistry, path: str) -> None:
    async with client(_app(registry)) as http:
        response = await http.get(path)
    assert response.status_code == 200
    for secret in SECRETS:
        assert secret not in response.text
    db = response.json()["checks"]["db"]
    assert db["dsn"] == "postgresql://[REDACTED]@db:5432/app"
    assert db["password"] == "[REDACTED]"
    assert db["db_password"] == "[REDACTED]"
    assert db["owner"] == "[REDACTED_EMAIL]"
    assert db["note"] == "card [REDACTED_CC] on file"
    assert (db["connections"], db["ratio"]) == (7, 0.5)  # numbers stay numbers
    assert "size': 5" in db["pool"]  # containers are still reported, as strings


@pytest.mark.parametrize("path", ["/ready", "/startup"])
async def test_health_json_observed_values_are_redacted(
    registry: CollectorRegistry, path: str
) -> None:
    async with client(_app(registry)) as http:
        response = await http.get(path, headers={"accept": "application/health+json"})
    assert response.headers["content-type"] == "application/health+json"
    for secret in SECRETS:
        assert secret not in response.text
    [observation] = response.json()["checks"]["db:responseTime"]
    assert observation["observedValue"] == "postgresql://[REDACTED]@db:5432/app"


async def test_health_json_observed_sensitive_key_is_redacted(registry: CollectorRegistry) -> None:
    async with client(_app(registry, observed_key="password")) as http:
        response = await http.get("/ready", headers={"accept": "application/health+json"})
    [observation] = response.json()["checks"]["db:responseTime"]
    assert observation["observedValue"] == "[REDACTED]"
    assert "hunter2" not in response.text


async def test_a_failing_check_reports_redacted_extras_too(registry: CollectorRegistry) -> None:
    async def failing() -> dict[str, object]:
        return {"status": "fail", "message": "down", "url": "redis://:s3cret@cache:6379/0"}

    async with client(HealthApp({"cache": failing}, registry=registry)) as http:
        response = await http.get("/ready")
    assert response.status_code == 503
    assert response.json()["checks"]["cache"]["url"] == "redis://[REDACTED]@cache:6379/0"
    assert "s3cret" not in response.text
