"""The declared dependencies match what the package imports."""

from __future__ import annotations

import ast
import re
from importlib.metadata import distribution
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _imported_modules() -> set[str]:
    found: set[str] = set()
    for path in (ROOT / "asgi_observe").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                found.add(node.module)
    return found


def _module_paths(dist_name: str) -> set[str]:
    """Dotted names of the modules and packages a distribution installs."""
    names: set[str] = set()
    for file in distribution(dist_name).files or ():
        if file.suffix != ".py" or ".." in file.parts:
            continue
        parts = list(file.with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names.add(".".join(parts))
    return names


def _requirements(extra: str | None) -> list[str]:
    """The installed package's requirements (its metadata, built from pyproject.toml):
    the runtime ones, or those of `extra`."""
    found = []
    for requirement in distribution("asgi-observe").requires or ():
        marker = re.search(r"extra\s*==\s*['\"]([^'\"]+)['\"]", requirement)
        if (marker.group(1) if marker else None) == extra:
            found.append(requirement)
    return found


def _runtime_dependencies() -> list[str]:
    return [re.split(r"[<>=!~\[; (]", item, maxsplit=1)[0] for item in _requirements(None)]


def test_every_runtime_dependency_is_imported_by_the_package() -> None:
    imported = _imported_modules()
    unused = [
        name
        for name in _runtime_dependencies()
        if not any(
            module == provided or module.startswith(provided + ".")
            for module in imported
            for provided in _module_paths(name)
        )
    ]
    assert unused == []


def test_all_extra_holds_only_integrations() -> None:
    everything = " ".join(_requirements("all")).lower()
    assert "redis" in everything  # the extra is there...
    for framework in ("fastapi", "litestar", "uvicorn", "starlette", "django", "quart"):
        assert framework not in everything  # ...without the examples' frameworks
