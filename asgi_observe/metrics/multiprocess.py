"""Multi-worker deployments: the bookkeeping prometheus-client leaves to the user.

With ``PROMETHEUS_MULTIPROC_DIR`` set, every worker writes its samples to files in that
directory and the process answering a scrape merges them (`metrics_app` with
``multiprocess_dir``). Counters and histograms of a dead worker must stay (totals never
go backwards), but its *live* gauges (``http_requests_in_progress``, circuit breaker
states) must go, or a crashed worker's in-flight requests would be reported forever.

- gunicorn: use `child_exit` (and `on_starting`, which empties the directory) in
  ``gunicorn.conf.py``.
- ``uvicorn --workers N`` has no such hook: `sweep_dead_workers` finds the files of
  processes that no longer run, and `metrics_app` calls it before every multiprocess
  scrape. This relies on process ids, so the directory must not be shared by processes
  in different PID namespaces (one directory per container).
- Empty the directory before the workers start (``rm -rf "$PROMETHEUS_MULTIPROC_DIR"/*``
  in the entrypoint, or `on_starting`); stale files from a previous run would otherwise
  be summed in.

See docs/multiprocess.md.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any

from prometheus_client import multiprocess

from asgi_observe.settings import Settings

__all__ = [
    "child_exit",
    "clear_multiprocess_dir",
    "mark_process_dead",
    "on_starting",
    "sweep_dead_workers",
]

logger = logging.getLogger("asgi_observe")

_LIVE_FILE = re.compile(r"^gauge_live[a-z]+_(\d+)\.db$")


def mark_process_dead(pid: int, path: str | os.PathLike[str]) -> None:
    """Drop the live gauges of worker `pid` (its counters and histograms are kept)."""
    multiprocess.mark_process_dead(pid, os.fspath(path))  # type: ignore[no-untyped-call]


def _running(pid: int) -> bool:
    import psutil  # only multiprocess set-ups pay for the import

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
    except psutil.Error:
        return True  # exists but not inspectable (another user): assume alive


def sweep_dead_workers(path: str | os.PathLike[str]) -> list[int]:
    """Mark dead every worker whose live-gauge files remain but whose process is gone.

    Returns the process ids marked dead. Never raises: an unreadable directory is logged
    and the scrape goes on with what it can read.
    """
    try:
        names = os.listdir(path)
    except OSError:
        logger.warning("asgi_observe: cannot list PROMETHEUS_MULTIPROC_DIR %s", path)
        return []
    me = os.getpid()
    dead: list[int] = []
    for pid in sorted({int(m.group(1)) for name in names if (m := _LIVE_FILE.match(name))}):
        if pid == me or _running(pid):
            continue
        try:
            mark_process_dead(pid, path)
        except OSError:
            logger.warning("asgi_observe: cannot remove the live gauges of dead worker %d", pid)
            continue
        dead.append(pid)
    return dead


def clear_multiprocess_dir(path: str | os.PathLike[str]) -> int:
    """Remove the ``*.db`` files of a previous run; returns how many were removed.

    Call it once, before any worker starts: removing files under running workers loses
    their samples.
    """
    removed = 0
    for file in Path(path).glob("*.db"):
        try:
            file.unlink()
        except FileNotFoundError:
            continue
        removed += 1
    return removed


def _configured_dir() -> str | None:
    return Settings.from_env().prometheus_multiproc_dir


def on_starting(server: Any) -> None:
    """gunicorn ``on_starting`` hook: empty ``PROMETHEUS_MULTIPROC_DIR`` before workers fork.

    ``gunicorn.conf.py``: ``from asgi_observe.metrics.multiprocess import on_starting``.
    """
    path = _configured_dir()
    if path is not None:
        clear_multiprocess_dir(path)


def child_exit(server: Any, worker: Any) -> None:
    """gunicorn ``child_exit`` hook: drop the live gauges of the worker that exited.

    ``gunicorn.conf.py``: ``from asgi_observe.metrics.multiprocess import child_exit``.
    """
    path = _configured_dir()
    if path is not None:
        mark_process_dead(int(worker.pid), path)
