"""Grafana's own dashboard model as a schema: each dashboard type-checked with tsc.

Grafana publishes the dashboard model as TypeScript types (`@grafana/schema`), not as
JSON schema. Each JSON file becomes the initializer of a `Dashboard`-typed constant and
`tsc --strict --noEmit` checks it: unknown keys, wrong types and bad enum values fail.
JSON has no enums, so the type is first mapped so that every string enum also accepts
its literal values (`ThresholdsMode` → `"absolute" | "percentage"`); numeric enums
already accept their numbers.

TypeScript and the schema are installed by scripts/install_grafana_schema.sh.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from tests.assets.promql import DASHBOARD_DIR
from tests.support import require

INSTALL_DIR = Path(
    os.environ.get("ASGI_OBSERVE_GRAFANA_SCHEMA_DIR")
    or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    / "asgi-observe"
    / "grafana-schema"
)
PRELUDE = """\
import type { Dashboard } from '@grafana/schema';

// The JSON form of a type: string enums accept their literal values.
type Json<T> = T extends string
  ? `${T}`
  : T extends number | boolean | null | undefined
    ? T
    : T extends Array<infer U>
      ? Array<Json<U>>
      : T extends object
        ? { [K in keyof T]: Json<T[K]> }
        : T;

"""


def tsc() -> Path:
    binary = INSTALL_DIR / "node_modules" / ".bin" / "tsc"
    require(
        binary.exists() and shutil.which("node") is not None,
        "TypeScript and @grafana/schema are not installed "
        "(run scripts/install_grafana_schema.sh; needs node and npm)",
    )
    return binary


def module_for(json_text: str) -> str:
    return f"{PRELUDE}const dashboard: Json<Dashboard> = {json_text};\nexport default dashboard;\n"


def test_dashboards_type_check_against_grafana_schema() -> None:
    """Every dashboard compiles; copies with one planted fault each do not, in the same
    run, so the check is proven to bite. (tsc reports an unknown key only when the rest of
    the literal is assignable, hence one fault per copy.)"""
    compiler = tsc()
    dashboards = sorted(DASHBOARD_DIR.glob("*.json"))
    assert len(dashboards) == 3
    original = dashboards[0].read_text()
    faults = {
        "broken_enum": ('"mode": "absolute"', '"mode": "absolut"', '"absolut"'),
        "broken_type": ('"refresh": 2,', '"refresh": "2",', "VariableRefresh"),
        "broken_key": ('"schemaVersion":', '"schemaVersoin": 1, "schemaVersion":', "schemaVersoin"),
        "broken_grid": ('"w": 24,', '"w": "24",', "number"),
    }
    with tempfile.TemporaryDirectory(dir=INSTALL_DIR, prefix="check-") as workdir:
        sources = []
        for path in dashboards:
            source = Path(workdir) / f"{path.stem.replace('-', '_')}.ts"
            source.write_text(module_for(path.read_text()))
            sources.append(source)
        for name, (old, new, _) in faults.items():
            assert old in original
            source = Path(workdir) / f"{name}.ts"
            source.write_text(module_for(original.replace(old, new, 1)))
            sources.append(source)
        result = subprocess.run(
            [
                str(compiler),
                "--strict",
                "--noEmit",
                "--skipLibCheck",
                "--target",
                "es2020",
                "--moduleResolution",
                "node",
                *map(str, sources),
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
            cwd=workdir,
        )
    output = result.stdout + result.stderr
    errors: dict[str, list[str]] = {}
    for file, message in re.findall(
        r"^(\S+?)\.ts\(\d+,\d+\): error TS\d+: (.*)$", output, re.MULTILINE
    ):
        errors.setdefault(file, []).append(message)
    assert set(errors) == set(faults), output
    for name, (_, _, expected) in faults.items():
        assert any(expected in message for message in errors[name]), (name, errors[name])
