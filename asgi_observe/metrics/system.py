"""System and process gauges read with psutil when Prometheus scrapes, container-aware.

| metric | meaning |
| --- | --- |
| ``<ns>_system_cpu_percent`` | CPU busy over the last minute, % of the cgroup CPU limit if any |
| ``<ns>_system_memory_percent`` | memory in use, % of the cgroup memory limit if any |
| ``<ns>_system_disk_percent`` | used space of the filesystem holding ``disk_path`` |
| ``<ns>_system_process_resident_memory_bytes`` | resident set size of the scraped process |
| ``<ns>_system_process_open_fds`` | open file descriptors of the scraped process |
| ``<ns>_system_process_threads`` | threads of the scraped process |

Nothing runs between scrapes: no thread, no timer. The CPU figure covers a fixed trailing
window (60 s by default, measured from the newest reading at least that old), not "since
the previous scrape": two Prometheus replicas scraping the same target, or a person
curling it, get the same figure and do not shorten each other's interval. The standard
``process_*`` collectors of prometheus-client stay registered, so the same figures can
be computed in PromQL (``rate(process_cpu_seconds_total[1m])``). Under a cgroup v2 limit (a container
with ``--memory``/``--cpus``, a Kubernetes pod with limits) the percentages are of the
limit, which is what will throttle or kill the service; the host's figure is reported
only when there is no limit. The ``system_process_`` names avoid prometheus-client's own
``process_*`` collector, which is registered in the default registry.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from asgi_observe.metrics._per_registry import PerRegistry

if TYPE_CHECKING:
    import psutil

__all__ = [
    "DEFAULT_CPU_WINDOW",
    "CPUWindow",
    "SystemCollector",
    "register_system_metrics",
    "system_collectors_for",
]

logger = logging.getLogger("asgi_observe")

DEFAULT_CGROUP_ROOT = "/sys/fs/cgroup"

_MIN_INTERVAL = 0.05  # scrapes closer than this reuse the previous CPU figure

DEFAULT_CPU_WINDOW = 60.0
"""Seconds of CPU history the percentage covers."""

_SAMPLE_SPACING = 1.0  # readings closer than this to the previous one are not kept


class CPUWindow:
    """CPU busy share over a fixed trailing window, from cumulative readings.

    Each reading is ``(time, busy, available)`` with cumulative busy and available
    CPU-seconds. The share is measured against the newest kept reading that is at least
    `window` seconds old (the oldest one until the window has filled), so how often it
    is read does not change what it reports. Readings are kept at least one second
    apart and pruned once older than the baseline: memory is bounded by the window.
    """

    def __init__(self, window: float = DEFAULT_CPU_WINDOW) -> None:
        self.window = window
        self._readings: deque[tuple[float, float, float]] = deque(
            maxlen=int(window / _SAMPLE_SPACING) + 2
        )
        self._last_percent = 0.0

    def add(self, now: float, busy: float, available: float) -> float:
        """Record a reading and return the share (0-100); 0 until an interval has passed."""
        readings = self._readings
        if readings and now - readings[-1][0] < _MIN_INTERVAL:
            return self._last_percent
        if not readings or now - readings[-1][0] >= _SAMPLE_SPACING:
            readings.append((now, busy, available))
        while len(readings) > 1 and readings[1][0] <= now - self.window:
            readings.popleft()
        base_time, base_busy, base_available = readings[0]
        if now - base_time < _MIN_INTERVAL or available - base_available <= 0:
            return self._last_percent
        percent = (busy - base_busy) / (available - base_available) * 100.0
        self._last_percent = max(0.0, min(100.0, percent))
        return self._last_percent


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text(encoding="ascii", errors="replace")
    except (OSError, ValueError):
        return None


def _read_int(path: Path) -> int | None:
    text = _read_text(path)
    if text is None:
        return None
    try:
        return int(text.strip())
    except ValueError:
        return None  # "max" (no limit) or garbage


def _read_keyed(path: Path, key: str) -> int | None:
    """One value of a flat-keyed cgroup file (``memory.stat``, ``cpu.stat``)."""
    text = _read_text(path)
    if text is None:
        return None
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name == key:
            try:
                return int(value.strip())
            except ValueError:
                return None
    return None


def _read_cpu_max(path: Path) -> float | None:
    """``cpu.max`` is ``"<quota> <period>"`` in microseconds, or ``"max <period>"``."""
    text = _read_text(path)
    if text is None:
        return None
    parts = text.split()
    try:
        quota = int(parts[0])
        period = int(parts[1]) if len(parts) > 1 else 100_000
    except (ValueError, IndexError):
        return None
    if quota <= 0 or period <= 0:
        return None
    return quota / period


def _own_cgroup(root: Path, proc_cgroup: Path) -> Path:
    """This process' cgroup v2 directory under `root`, or `root` itself.

    ``/proc/self/cgroup`` has a ``0::<path>`` line under cgroup v2. Inside a container with
    its own cgroup namespace the path is ``/`` and the container's files are at the root.
    """
    text = _read_text(proc_cgroup) or ""
    for line in text.splitlines():
        if line.startswith("0::"):
            relative = line[3:].strip().lstrip("/")
            candidate = root / relative
            try:
                if relative and candidate.is_dir():
                    return candidate
            except OSError:
                pass
            break
    return root


def _cpu_busy_and_total() -> tuple[float, float]:
    import psutil

    times = psutil.cpu_times()
    total = sum(times)
    # guest time is already counted in user/nice on Linux (as psutil.cpu_percent does).
    total -= getattr(times, "guest", 0.0) + getattr(times, "guest_nice", 0.0)
    idle = times.idle + getattr(times, "iowait", 0.0)
    return total - idle, total


class SystemCollector(Collector):
    """Scrape-time system and process gauges; see the module docstring for the names.

    Args:
        namespace: metric name prefix (``baliblissed`` → ``baliblissed_system_cpu_percent``).
        disk_path: a path on the filesystem whose usage is reported.
        cgroup_root: where cgroup v2 is mounted. This process' own cgroup is found below it
            through ``/proc/self/cgroup``; limits are the smallest found from that cgroup up
            to the root. Unreadable or missing files mean "no limit" (cgroup v1 hosts and
            macOS get the host's figures), never an error.
        proc_cgroup: the file naming this process' cgroup (a parameter for tests).
        clock: monotonic clock in seconds for the CPU windows (a parameter for tests).
        cpu_window: seconds of history the CPU percentage covers (see `CPUWindow`).

    CPU is non-blocking: each scrape reports the busy share over the trailing window (from
    construction until the window has filled). Every reading is independent: one that fails is
    left out of that scrape and logged at debug level, and the others are still reported.
    """

    def __init__(
        self,
        *,
        namespace: str = "",
        disk_path: str | os.PathLike[str] = "/",
        cgroup_root: str | os.PathLike[str] = DEFAULT_CGROUP_ROOT,
        proc_cgroup: str | os.PathLike[str] = "/proc/self/cgroup",
        clock: Callable[[], float] = time.monotonic,
        cpu_window: float = DEFAULT_CPU_WINDOW,
    ) -> None:
        self.namespace = namespace
        self.disk_path = os.fspath(disk_path)
        self.cgroup_root = Path(cgroup_root)
        self._prefix = f"{namespace}_" if namespace else ""
        self._clock = clock
        self._cgroup = _own_cgroup(self.cgroup_root, Path(proc_cgroup))
        self._own_process: psutil.Process | None = None
        self._lock = threading.Lock()
        self._host_cpu = CPUWindow(cpu_window)
        self._cgroup_cpu = CPUWindow(cpu_window)
        self._record_host_cpu()
        self._record_cgroup_cpu(self.cpu_limit())

    # -- cgroup ----------------------------------------------------------------------

    def _cgroup_chain(self) -> Iterator[Path]:
        """This process' cgroup, then its parents up to the mount point."""
        current = self._cgroup
        yield current
        while current != self.cgroup_root and self.cgroup_root in current.parents:
            current = current.parent
            yield current

    def cpu_limit(self) -> float | None:
        """The cgroup CPU limit in cores (``cpu.max``), None when there is none."""
        limits = [
            limit
            for directory in self._cgroup_chain()
            if (limit := _read_cpu_max(directory / "cpu.max")) is not None
        ]
        if not limits:
            return None
        import psutil

        return min(*limits, float(psutil.cpu_count() or 1))

    def memory_limit(self) -> int | None:
        """The cgroup memory limit in bytes (``memory.max``), None when there is none."""
        limits = [
            limit
            for directory in self._cgroup_chain()
            if (limit := _read_int(directory / "memory.max")) is not None and limit > 0
        ]
        return min(limits) if limits else None

    # -- CPU -------------------------------------------------------------------------

    def _record_host_cpu(self) -> float | None:
        try:
            busy, total = _cpu_busy_and_total()
        except Exception:
            logger.debug("asgi_observe: cannot read host CPU times", exc_info=True)
            return None
        return self._host_cpu.add(self._clock(), busy, total)

    def _record_cgroup_cpu(self, limit: float | None) -> float | None:
        """The cgroup's share of `limit` cores; None without a limit or a usage figure."""
        if limit is None:
            return None
        usage = _read_keyed(self._cgroup / "cpu.stat", "usage_usec")
        if usage is None:
            return None
        now = self._clock()
        # Available CPU-seconds accumulate at `limit` per wall second.
        return self._cgroup_cpu.add(now, usage / 1_000_000, now * limit)

    def _process(self) -> psutil.Process:
        if self._own_process is None:
            import psutil

            self._own_process = psutil.Process()
        return self._own_process

    def cpu_percent(self) -> float | None:
        """CPU busy over the trailing window, as a percentage of the limit or of the host.

        Both figures are recorded on every call so that the window of each stays filled,
        whichever is reported.
        """
        with self._lock:
            host = self._record_host_cpu()
            limited = self._record_cgroup_cpu(self.cpu_limit())
            return limited if limited is not None else host

    # -- memory ----------------------------------------------------------------------

    def memory_percent(self) -> float | None:
        """Memory in use as a percentage of the cgroup limit, or of the host without one.

        Under a limit, usage is ``memory.current`` minus reclaimable inactive page cache
        (``inactive_file`` of ``memory.stat``), as ``docker stats`` and the kubelet count it.
        """
        import psutil

        limit = self.memory_limit()
        host = psutil.virtual_memory()
        if limit is not None and limit < host.total:
            current = _read_int(self._cgroup / "memory.current")
            if current is not None:
                inactive = _read_keyed(self._cgroup / "memory.stat", "inactive_file") or 0
                used = max(0, current - inactive)
                return max(0.0, min(100.0, used / limit * 100.0))
        return float(host.percent)

    # -- collection ------------------------------------------------------------------

    def _gauge(self, name: str, documentation: str, reader: str) -> GaugeMetricFamily:
        family = GaugeMetricFamily(self._prefix + name, documentation)
        try:
            value = getattr(self, reader)()
        except Exception:
            logger.debug("asgi_observe: cannot read %s", name, exc_info=True)
            return family
        if value is not None:
            family.add_metric((), float(value))
        return family

    def disk_percent(self) -> float:
        """Used space of the filesystem holding `disk_path`, in percent."""
        import psutil

        return float(psutil.disk_usage(self.disk_path).percent)

    def process_rss(self) -> int:
        """Resident set size of this process in bytes."""
        return int(self._process().memory_info().rss)

    def process_open_fds(self) -> int | None:
        """Open file descriptors of this process (None where the OS has no such notion)."""
        num_fds = getattr(self._process(), "num_fds", None)
        return None if num_fds is None else int(num_fds())

    def process_threads(self) -> int:
        """Threads of this process."""
        return int(self._process().num_threads())

    def collect(self) -> Iterator[GaugeMetricFamily]:
        yield self._gauge(
            "system_cpu_percent",
            "CPU busy since the previous scrape, percent of the container limit or the host",
            "cpu_percent",
        )
        yield self._gauge(
            "system_memory_percent",
            "Memory in use, percent of the container limit or the host",
            "memory_percent",
        )
        yield self._gauge(
            "system_disk_percent",
            f"Used space of the filesystem holding {self.disk_path}, percent",
            "disk_percent",
        )
        yield self._gauge(
            "system_process_resident_memory_bytes",
            "Resident memory of the process that answered the scrape, bytes",
            "process_rss",
        )
        yield self._gauge(
            "system_process_open_fds",
            "Open file descriptors of the process that answered the scrape",
            "process_open_fds",
        )
        yield self._gauge(
            "system_process_threads",
            "Threads of the process that answered the scrape",
            "process_threads",
        )

    def describe(self) -> Iterator[GaugeMetricFamily]:
        # Names only: registration must not read /proc or the cgroup files.
        for name in (
            "system_cpu_percent",
            "system_memory_percent",
            "system_disk_percent",
            "system_process_resident_memory_bytes",
            "system_process_open_fds",
            "system_process_threads",
        ):
            yield GaugeMetricFamily(self._prefix + name, "")


_collectors: PerRegistry[SystemCollector] = PerRegistry()


def register_system_metrics(
    registry: CollectorRegistry | None = None,
    *,
    namespace: str = "",
    disk_path: str | os.PathLike[str] = "/",
    cgroup_root: str | os.PathLike[str] = DEFAULT_CGROUP_ROOT,
) -> SystemCollector:
    """Get or create the `SystemCollector` of `registry` for `namespace`.

    Calling it again (an app factory run twice, tests) returns the same collector instead
    of raising "Duplicated timeseries"; asking for the same names with another
    `disk_path` or `cgroup_root` is refused with `ValueError`.

    Multiprocess deployments: call it the same way. `metrics_app` with a
    ``multiprocess_dir`` serves the aggregated worker files plus the system collectors
    registered here for its registry, computed once in the process that answers the
    scrape: one value per scrape, not one per worker.
    """
    target = REGISTRY if registry is None else registry
    wanted = (os.fspath(disk_path), Path(cgroup_root))

    def create() -> SystemCollector:
        collector = SystemCollector(
            namespace=namespace, disk_path=disk_path, cgroup_root=cgroup_root
        )
        target.register(collector)
        return collector

    def conflict(existing: Hashable) -> str:
        return (
            f"system metrics for namespace {namespace!r} already exist in this registry "
            f"with (disk_path, cgroup_root)={existing!r}"
        )

    return _collectors.get_or_create(target, namespace, wanted, create, conflict)


def system_collectors_for(registry: CollectorRegistry) -> list[SystemCollector]:
    """The collectors `register_system_metrics` added to `registry` (for multiprocess scrapes)."""
    return _collectors.all(registry)
