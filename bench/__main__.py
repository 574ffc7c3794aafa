"""Run every benchmark module: `python -m bench` (or `make bench`)."""

from __future__ import annotations

import importlib
import pkgutil
import sys

import bench


def main() -> None:
    wanted = set(sys.argv[1:])
    for module in sorted(pkgutil.iter_modules(bench.__path__), key=lambda m: m.name):
        if not module.name.startswith("bench_"):
            continue
        if wanted and module.name not in wanted:
            continue
        importlib.import_module(f"bench.{module.name}").main()


if __name__ == "__main__":
    main()
