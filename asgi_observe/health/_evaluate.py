"""One evaluation of a set of checks, shared by every probe that asks for it.

Kubernetes, a load balancer and a curious operator may all probe at once; without care
each probe would open a database connection. `Evaluator` runs all checks concurrently,
keeps the report for ``cache_ttl`` seconds, and lets probes that arrive while an
evaluation is running wait for that evaluation instead of starting their own
(single-flight). The shared evaluation is shielded, so a probe whose client goes away
does not cancel it for the others.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

from asgi_observe.health._check import Check, CheckResult, iso_utc, run_check
from asgi_observe.health._metrics import HealthMetrics

__all__ = ["Evaluator", "Report"]

logger = logging.getLogger("asgi_observe")


@dataclass(frozen=True)
class Report:
    """The results of one evaluation, in the order the checks were given."""

    results: tuple[CheckResult, ...]
    time: str
    checked_at: float  # time.monotonic() when the evaluation finished

    @property
    def ok(self) -> bool:
        """No check failed (non-critical failures are already ``warn``)."""
        return all(result.status != "fail" for result in self.results)

    @property
    def status(self) -> str:
        """The health+json status: ``fail`` beats ``warn`` beats ``pass``."""
        statuses = {result.status for result in self.results}
        if "fail" in statuses:
            return "fail"
        return "warn" if "warn" in statuses else "pass"


class Evaluator:
    """Run `checks` concurrently with caching and single-flight; see the module docstring."""

    def __init__(
        self,
        checks: Sequence[Check],
        *,
        cache_ttl: float,
        metrics: HealthMetrics | None = None,
    ) -> None:
        self.checks = tuple(checks)
        self._ttl = cache_ttl
        self._metrics = metrics
        self._cached: Report | None = None
        # The in-flight evaluation and the loop it runs on: a future belongs to one loop,
        # and one app object may serve from several (tests, servers in threads).
        self._inflight: tuple[asyncio.AbstractEventLoop, asyncio.Future[Report]] | None = None
        self._last_status: dict[str, str] = {}

    async def evaluate(self) -> Report:
        """The current report: cached, joined in flight, or freshly evaluated."""
        cached = self._cached
        if cached is not None and time.monotonic() - cached.checked_at < self._ttl:
            return cached
        loop = asyncio.get_running_loop()
        inflight = self._inflight
        if inflight is not None and inflight[0] is loop and not inflight[1].done():
            future = inflight[1]
        else:
            future = loop.create_task(self._run())
            self._inflight = (loop, future)
        return await asyncio.shield(future)

    async def _run(self) -> Report:
        results = await asyncio.gather(*(run_check(check) for check in self.checks))
        report = Report(tuple(results), iso_utc(), time.monotonic())
        if self._ttl > 0:
            self._cached = report
        if self._metrics is not None:
            self._metrics.record(report.results)
        self._log_transitions(report)
        return report

    def _log_transitions(self, report: Report) -> None:
        """Log when a check changes state, not on every probe of a long outage."""
        for result in report.results:
            previous = self._last_status.get(result.name)
            self._last_status[result.name] = result.status
            if previous == result.status or (previous is None and result.status == "pass"):
                continue
            if result.status == "pass":
                logger.info("asgi_observe: health check %r passes again", result.name)
            else:
                logger.warning(
                    "asgi_observe: health check %r is %s: %s",
                    result.name,
                    result.status,
                    result.message,
                )
