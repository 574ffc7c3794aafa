"""Run every in-process benchmark module: `python -m bench` (or `make bench`).

`bench_http` (real servers under wrk, minutes) and `bench_memory` (a million requests)
run only when named, with their defaults: `python -m bench bench_http`, or directly with
options, `python -m bench.bench_http --help` (`make bench-http`, `make bench-memory`).
"""

from __future__ import annotations

import importlib
import pkgutil
import sys

import bench

STANDALONE = frozenset({"bench_http", "bench_memory"})


def main() -> None:
    wanted = set(sys.argv[1:])
    for module in sorted(pkgutil.iter_modules(bench.__path__), key=lambda m: m.name):
        if not module.name.startswith("bench_"):
            continue
        if module.name not in wanted and (wanted or module.name in STANDALONE):
            continue
        loaded = importlib.import_module(f"bench.{module.name}")
        if module.name in STANDALONE:
            loaded.main([])  # their own options; none given here
        else:
            loaded.main()


if __name__ == "__main__":
    main()
