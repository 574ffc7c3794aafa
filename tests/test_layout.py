"""The package's layout rules, checked on its source: no private names across modules,
no import cycles between modules."""

from __future__ import annotations

import ast
import itertools
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "asgi_observe"


def _modules() -> dict[str, ast.Module]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = ast.parse(path.read_text(encoding="utf-8"))
    return found


def _module_level_imports(tree: ast.Module) -> list[ast.ImportFrom | ast.Import]:
    """Imports at module level, those under ``if TYPE_CHECKING:`` included (a cycle
    hidden from the interpreter is still two modules that need each other); imports
    inside functions are left out."""
    imports: list[ast.ImportFrom | ast.Import] = []
    pending: list[ast.stmt] = list(tree.body)
    while pending:
        node = pending.pop()
        if isinstance(node, ast.Import | ast.ImportFrom):
            imports.append(node)
        elif isinstance(node, ast.If | ast.Try):
            pending.extend(node.body)
            pending.extend(node.orelse)
    return imports


def test_no_module_imports_an_underscore_name_of_another() -> None:
    offenders = []
    for name, tree in _modules().items():
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module != "__future__":
                for alias in node.names:
                    if alias.name.startswith("_") and not alias.name.startswith("__"):
                        offenders.append(f"{name}: from {node.module} import {alias.name}")
    assert offenders == []


def test_no_private_module_of_another_package_is_imported() -> None:
    """Only documented roads into other libraries: no ``x._y`` module paths (our own
    private modules, such as ``asgi_observe._asgi``, are ours to use)."""
    offenders = []
    for name, tree in _modules().items():
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module:
                modules = [node.module]
            elif isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            else:
                continue
            for module in modules:
                if module.split(".")[0] in ("asgi_observe", "__future__"):
                    continue
                if any(part.startswith("_") for part in module.split(".")):
                    offenders.append(f"{name}: {module}")
    assert offenders == []


def test_no_import_cycles_between_modules() -> None:
    modules = _modules()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, tree in modules.items():
        for node in _module_level_imports(tree):
            targets = (
                [alias.name for alias in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""] + [f"{node.module}.{alias.name}" for alias in node.names]
            )
            for target in targets:
                if target in modules and target != name and not name.startswith(target + "."):
                    graph[name].add(target)
    cycles = []
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join([*path[path.index(nxt) :], nxt]))
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for start in sorted(graph):
        if start not in state:
            visit(start, [start])
    # A package's __init__ importing its own submodules is how it exports names; what
    # must not happen is two modules that each need the other.
    real = [cycle for cycle in cycles if not _through_own_package(cycle)]
    assert real == []


def _through_own_package(cycle: str) -> bool:
    nodes = cycle.split(" -> ")
    return any(
        later.startswith(earlier + ".") or earlier.startswith(later + ".")
        for earlier, later in itertools.pairwise(nodes)
    )


def test_psutil_is_imported_only_where_it_is_used() -> None:
    """System metrics, dead-worker sweeps and worker detection import it when they run;
    `asgi_observe.metrics.workers` imports it at module level, and is itself imported
    only by the internal-port start-up hook."""
    modules = _modules()
    at_module_level = {
        name
        for name, tree in modules.items()
        for node in _module_level_imports(tree)
        if isinstance(node, ast.Import)
        and any(alias.name == "psutil" for alias in node.names)
        and not _under_type_checking(tree, node)
    }
    assert at_module_level == {"asgi_observe.metrics.workers"}
    importers = {
        name
        for name, tree in modules.items()
        for node in _module_level_imports(tree)
        if isinstance(node, ast.ImportFrom) and node.module == "asgi_observe.metrics.workers"
    }
    assert importers == set()


def _under_type_checking(tree: ast.Module, target: ast.stmt) -> bool:
    for node in tree.body:
        if (
            isinstance(node, ast.If)
            and isinstance(node.test, ast.Name)
            and node.test.id == "TYPE_CHECKING"
            and target in node.body
        ):
            return True
    return False
