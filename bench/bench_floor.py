"""The whole stack against the work floor: how much of `instrument()`'s cost is the work.

`bench.work_floor.WorkFloor` does the stack's essential per-request work (request id,
span context, sampled span, counter and histogram, one JSON line) with none of its care.
Both run on the same Starlette app, in the same rounds, at 10 % and at 100 % sampling,
their spans going into a batch processor with a discarding exporter and their lines to
/dev/null; `instrument()` gets the provider `setup_tracing` builds, as its users do.
What the floor adds is what no library doing this work in Python can go below; what
`instrument()` adds on top of it is the price of its care (redaction, validation, error
handling, options) and of its design.
"""

from __future__ import annotations

import os
from typing import IO

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import ALWAYS_ON
from prometheus_client import CollectorRegistry

from asgi_observe import Settings, instrument
from asgi_observe.logs.config import configure_logging
from asgi_observe.tracing import setup_tracing
from asgi_observe.types import ASGIApp
from bench.bench_tracing import NoOpExporter
from bench.harness import compare, print_table
from bench.http_apps import bare_app
from bench.work_floor import WorkFloor

# The in-process targets of the whole stack, in µs added per request, by sampling ratio.
TARGETS = {0.1: 45.0, 1.0: 90.0}


def _ours(settings: Settings, ratio: float) -> tuple[ASGIApp, TracerProvider]:
    provider = setup_tracing(Settings(sampler_ratio=ratio), set_global=False)
    provider.add_span_processor(BatchSpanProcessor(NoOpExporter()))
    app = instrument(bare_app(), settings, registry=CollectorRegistry(), tracer_provider=provider)
    return app, provider


def _floor(ratio: float, stream: IO[str]) -> tuple[ASGIApp, TracerProvider]:
    provider = TracerProvider(sampler=ALWAYS_ON, shutdown_on_exit=False)
    provider.add_span_processor(BatchSpanProcessor(NoOpExporter()))
    tracer = provider.get_tracer("work-floor")
    return WorkFloor(bare_app(), tracer=tracer, ratio=ratio, stream=stream), provider


def main() -> None:
    with open(os.devnull, "w") as sink:
        settings = Settings(environment="production")
        configure_logging(settings, stream=sink)
        providers: list[TracerProvider] = []
        apps: dict[str, ASGIApp] = {"bare Starlette": bare_app()}
        for ratio in TARGETS:
            floor, floor_provider = _floor(ratio, sink)
            ours, our_provider = _ours(settings, ratio)
            apps[f"work floor, {ratio:.0%}"] = floor
            apps[f"instrument(), {ratio:.0%}"] = ours
            providers += [floor_provider, our_provider]
        try:
            results = compare(apps, rounds=9)
        finally:
            for provider in providers:
                provider.shutdown()
    targets = ", ".join(f"≤ {limit:.0f} µs at {ratio:.0%}" for ratio, limit in TARGETS.items())
    print_table(
        f"instrument() against the work floor (Starlette GET /items/42; targets: {targets})",
        results,
        baseline="bare Starlette",
    )


if __name__ == "__main__":
    main()
