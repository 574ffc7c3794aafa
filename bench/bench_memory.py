"""Memory and route count: does the full stack stay bounded, and does its cost grow with routes?

1. Memory. 1,000,000 requests (``--requests``) over 100,000 distinct raw paths
   (``--paths``; 90 % ``/items/{n}``, matched by the route template, 10 % unmatched
   ``/missing/{n}``) go through the full `instrument()` stack around a Starlette app:
   100 % sampling into a batch processor with a discarding exporter, the JSON access log
   written to /dev/null. The ASGI app is called directly with minimal scope, receive and
   send callables (an HTTP client would be the bottleneck at this count). Printed: the
   process's resident memory after a warm-up, after the first pass over every distinct
   path and at the end (growth after the first pass is what a leak would show), and the
   number of series in the registry, which must not depend on the number of paths.
2. Routes. The stack's added cost (stack minus bare app, µs per request, in-process,
   interleaved rounds) on an app with 1 route and on one with 31 routes, the request's
   route last; the ratio should be close to 1, as the template is read from what the
   router left in the scope instead of matching again.

Run ``make bench-memory`` or ``python -m bench.bench_memory --requests 200000``.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import random
import time
from collections.abc import Sequence

import psutil
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.sampling import ALWAYS_ON
from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from asgi_observe import Settings, instrument
from asgi_observe.logs.config import configure_logging
from asgi_observe.types import ASGIApp, Message, Scope
from bench.harness import compare, make_scope, print_table

__all__ = ["DiscardExporter", "main", "series_count", "starlette_app"]

SETTINGS = Settings(environment="production")


class DiscardExporter(SpanExporter):
    """Accepts every batch and keeps nothing."""

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


def starlette_app(extra_routes: int = 0) -> Starlette:
    """``/items/{item_id}`` after `extra_routes` other templated routes."""

    async def read_item(request: Request) -> JSONResponse:
        return JSONResponse({"item_id": request.path_params["item_id"]})

    async def other(request: Request) -> JSONResponse:
        return JSONResponse({})

    routes = [Route(f"/section{i}/{{thing_id}}", other) for i in range(extra_routes)]
    return Starlette(routes=[*routes, Route("/items/{item_id}", read_item)])


def series_count(registry: CollectorRegistry) -> int:
    """Samples the registry exposes: one per series (each bucket, sum and count included)."""
    return sum(len(metric.samples) for metric in registry.collect())


def _rss_mib() -> float:
    gc.collect()
    return psutil.Process().memory_info().rss / 2**20


def _path(i: int, paths: int) -> str:
    n = i % paths
    return f"/missing/{n}" if n % 10 == 9 else f"/items/{n}"


async def _drive(app: ASGIApp, start: int, count: int, paths: int) -> None:
    body: Message = {"type": "http.request", "body": b"", "more_body": False}

    async def receive() -> Message:
        return body

    async def send(message: Message) -> None:
        return None

    for i in range(start, start + count):
        scope: Scope = {**make_scope(_path(i, paths)), "query_string": b""}  # paths vary alone
        await app(scope, receive, send)


def bench_memory(requests: int, paths: int, provider: TracerProvider) -> None:
    registry = CollectorRegistry()
    app = instrument(starlette_app(), SETTINGS, registry=registry, tracer_provider=provider)
    warmup = min(10_000, requests)
    asyncio.run(_drive(app, 0, warmup, paths))
    rows: list[tuple[str, int, float]] = [("after warm-up", warmup, _rss_mib())]
    done = warmup
    checkpoints = sorted({min(paths, requests), *range(0, requests + 1, requests // 5 or 1)})
    started = time.perf_counter()
    for target in checkpoints:
        if target <= done:
            continue
        asyncio.run(_drive(app, done, target - done, paths))
        done = target
        label = "every path seen once" if done == min(paths, requests) else ""
        rows.append((label, done, _rss_mib()))
    elapsed = time.perf_counter() - started
    print(f"\n### Memory: {requests:,} requests over {paths:,} distinct paths\n")
    print("| requests so far | RSS MiB | |")
    print("| ---: | ---: | --- |")
    for label, count, rss in rows:
        print(f"| {count:,} | {rss:.1f} | {label} |")
    first_pass = next((rss for label, _, rss in rows if label.startswith("every")), rows[0][2])
    print(
        f"\nRSS growth: {rows[-1][2] - rows[0][2]:+.1f} MiB after warm-up, "
        f"{rows[-1][2] - first_pass:+.1f} MiB after the first pass over every path; "
        f"{series_count(registry)} series in the registry; "
        f"{(elapsed / max(done - warmup, 1)) * 1e6:.0f} µs/request in-process."
    )


def bench_routes(provider: TracerProvider) -> None:
    apps: dict[str, ASGIApp] = {}
    for extra in (0, 30):
        routes = extra + 1
        apps[f"bare, {routes} route(s)"] = starlette_app(extra)
        apps[f"instrument(), {routes} route(s)"] = instrument(
            starlette_app(extra), SETTINGS, registry=CollectorRegistry(), tracer_provider=provider
        )
    results = compare(
        apps,
        requests=2000,
        rounds=9,
        scope_factory=lambda: make_scope(f"/items/{random.randrange(10**8)}"),
    )
    by_name = {result.name: result.micros for result in results}
    print_table("Route count (in-process, 100% sampling)", results)
    one = by_name["instrument(), 1 route(s)"] - by_name["bare, 1 route(s)"]
    many = by_name["instrument(), 31 route(s)"] - by_name["bare, 31 route(s)"]
    print(
        f"\nAdded by the stack: {one:.1f} µs with 1 route, {many:.1f} µs with 31 routes, "
        f"ratio {many / one:.2f}."
    )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_memory", description=__doc__)
    parser.add_argument("--requests", type=int, default=1_000_000, help="(1,000,000)")
    parser.add_argument("--paths", type=int, default=100_000, help="distinct paths (100,000)")
    parser.add_argument("--skip-routes", action="store_true", help="only the memory part")
    args = parser.parse_args(argv)
    if args.requests < 1 or args.paths < 1:
        parser.error("--requests and --paths must be at least 1")
    provider = TracerProvider(sampler=ALWAYS_ON, shutdown_on_exit=False)
    provider.add_span_processor(BatchSpanProcessor(DiscardExporter()))
    with open(os.devnull, "w") as sink:
        configure_logging(SETTINGS, stream=sink)
        try:
            bench_memory(args.requests, args.paths, provider)
            if not args.skip_routes:
                bench_routes(provider)
        finally:
            provider.shutdown()


if __name__ == "__main__":
    main()
