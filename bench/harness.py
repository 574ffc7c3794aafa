"""A tiny in-process ASGI load driver.

Every configuration of a comparison is run in interleaved rounds (A, B, C, A, B, C, ...)
so that a background hiccup on a 2-core machine hurts all of them alike; the figure kept
is the median over rounds. No sockets are involved: this measures the per-request cost
of the middleware code itself, which is what differs between the libraries compared.
"""

from __future__ import annotations

import asyncio
import gc
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from asgi_observe.types import ASGIApp, Message, Scope

__all__ = ["Result", "compare", "make_scope", "print_table"]


def make_scope(
    path: str = "/items/42", method: str = "GET", headers: Sequence[tuple[bytes, bytes]] = ()
) -> Scope:
    """A fresh HTTP scope shaped like uvicorn's."""
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"q=1",
        "headers": [(b"host", b"bench.local"), (b"user-agent", b"bench/1.0"), *headers],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
        "state": {},
    }


async def _receive() -> Message:
    return {"type": "http.request", "body": b"", "more_body": False}


async def _send(message: Message) -> None:
    return None


async def _run(app: ASGIApp, requests: int, scope_factory: Callable[[], Scope]) -> float:
    start = time.perf_counter()
    for _ in range(requests):
        await app(scope_factory(), _receive, _send)
    return (time.perf_counter() - start) / requests * 1e6


@dataclass
class Result:
    name: str
    micros: float
    rounds: list[float]


def compare(
    apps: dict[str, ASGIApp],
    *,
    requests: int = 2000,
    rounds: int = 9,
    warmup: int = 300,
    scope_factory: Callable[[], Scope] = make_scope,
) -> list[Result]:
    """Median µs/request of each app, measured in interleaved rounds."""

    async def main() -> list[Result]:
        for app in apps.values():
            await _run(app, warmup, scope_factory)
        samples: dict[str, list[float]] = {name: [] for name in apps}
        gc.collect()
        for _ in range(rounds):
            for name, app in apps.items():
                samples[name].append(await _run(app, requests, scope_factory))
        return [Result(name, statistics.median(values), values) for name, values in samples.items()]

    return asyncio.run(main())


def print_table(title: str, results: list[Result], *, baseline: str | None = None) -> None:
    """Print a markdown table; `added` is the difference to the baseline row."""
    base = next((r.micros for r in results if r.name == baseline), None)
    print(f"\n### {title}\n")
    print("| configuration | µs/request | added vs baseline |")
    print("| --- | ---: | ---: |")
    for result in results:
        added = "" if base is None or result.name == baseline else f"{result.micros - base:+.1f}"
        print(f"| {result.name} | {result.micros:.1f} | {added} |")
