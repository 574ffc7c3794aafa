"""Multiprocess: uvicorn --workers with PROMETHEUS_MULTIPROC_DIR, dead-worker cleanup, hooks."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

from asgi_observe.metrics.multiprocess import (
    child_exit,
    clear_multiprocess_dir,
    on_starting,
    sweep_dead_workers,
)
from tests.support import free_port, http_get, stop_process, wait_until

REPO = Path(__file__).resolve().parents[2]


def dead_pid() -> int:
    """The id of a process that has exited and been reaped."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_sweep_marks_only_dead_workers(tmp_path: Path) -> None:
    gone = dead_pid()
    alive = os.getppid()
    for pid in (gone, alive):
        (tmp_path / f"gauge_livesum_{pid}.db").write_bytes(b"")
        (tmp_path / f"gauge_liveall_{pid}.db").write_bytes(b"")
        (tmp_path / f"counter_{pid}.db").write_bytes(b"")
    (tmp_path / "gauge_livesum_notapid.db").write_bytes(b"")
    assert sweep_dead_workers(tmp_path) == [gone]
    names = {p.name for p in tmp_path.iterdir()}
    assert f"gauge_livesum_{gone}.db" not in names
    assert f"gauge_liveall_{gone}.db" not in names
    assert f"counter_{gone}.db" in names  # totals of a dead worker are kept
    assert f"gauge_livesum_{alive}.db" in names
    assert sweep_dead_workers(tmp_path) == []


def test_sweep_of_a_missing_directory_does_not_raise(tmp_path: Path) -> None:
    assert sweep_dead_workers(tmp_path / "missing") == []


def test_gunicorn_hooks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    (tmp_path / "counter_1.db").write_bytes(b"")
    (tmp_path / "gauge_livesum_77.db").write_bytes(b"")
    (tmp_path / "keep.txt").write_text("not ours")
    child_exit(None, SimpleNamespace(pid=77))
    assert not (tmp_path / "gauge_livesum_77.db").exists()
    assert (tmp_path / "counter_1.db").exists()
    on_starting(None)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]
    assert clear_multiprocess_dir(tmp_path) == 0


def test_hooks_do_nothing_without_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    monkeypatch.delenv("prometheus_multiproc_dir", raising=False)
    on_starting(None)
    child_exit(None, SimpleNamespace(pid=1))


@contextlib.contextmanager
def uvicorn_workers(
    directory: Path, workers: int = 2
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    port = free_port()
    log = directory.parent / f"{directory.name}-uvicorn.log"
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(directory), "PYTHONPATH": str(REPO)}
    with log.open("wb") as stderr:
        process = subprocess.Popen(
            [
            sys.executable, "-m", "uvicorn", "--factory", "tests.metrics.mp_app:create_app",
            "--workers", str(workers), "--host", "127.0.0.1", "--port", str(port),
            "--log-level", "warning",
            ],
            cwd=REPO,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:

        def answering() -> bool:
            if process.poll() is not None:
                pytest.fail(f"uvicorn exited: {log.read_text(errors='replace')}")
            try:
                return http_get(f"{url}/ping", timeout=1)[0] == 200
            except OSError:
                return False

        wait_until(answering, timeout=30, what="uvicorn workers", interval=0.1)
        yield url, process
    finally:
        stop_process(process, timeout=15)


def scrape(url: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    status, _, body = http_get(f"{url}/metrics")
    assert status == 200
    found: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            found.setdefault(sample.name, []).append((sample.labels, sample.value))
    return found


def hello_total(samples: dict[str, list[tuple[dict[str, str], float]]]) -> float:
    return sum(v for labels, v in samples["http_requests_total"] if labels["handler"] == "/hello")


def get_pid(url: str) -> int:
    # A fresh connection per request, so the kernel spreads them over the workers.
    status, _, body = http_get(url, headers={"Connection": "close"})
    assert status == 200
    return int(body)


@pytest.mark.slow
def test_uvicorn_workers_aggregate_and_dead_workers_are_swept(tmp_path: Path) -> None:
    with uvicorn_workers(tmp_path) as (url, _):
        # The kernel decides which worker accepts a connection; on a loaded machine one
        # worker can take long runs of them. Send batches until both have answered
        # (bounded), then check the aggregate against the exact number sent.
        pids: list[int] = []
        with ThreadPoolExecutor(max_workers=8) as pool:
            while len(set(pids)) < 2 and len(pids) < 3000:
                pids.extend(pool.map(get_pid, [f"{url}/hello"] * 100))
        served_by = set(pids)
        assert len(served_by) >= 2, f"all {len(pids)} requests went to one worker: {served_by}"
        sent = len(pids)

        # A worker records a request just after handing over its last body byte, so a
        # scrape can overtake the final few; poll for the scrape that sees them all.
        samples: dict[str, list[tuple[dict[str, str], float]]] = {}

        def scrape_sees_all() -> bool:
            nonlocal samples
            samples = scrape(url)
            total = hello_total(samples)
            assert total <= sent, total
            observed = sum(
                v for labels, v in samples["http_request_duration_seconds_count"]
                if labels["handler"] == "/hello"
            )  # fmt: skip
            in_progress = sum(
                v for labels, v in samples["http_requests_in_progress"]
                if labels["handler"] == "/hello"
            )  # fmt: skip
            return total == observed == sent and in_progress == 0

        wait_until(scrape_sees_all, timeout=10, what="one scrape counting every request sent")
        assert sum(v for _, v in samples["mp_cache_hits_total"]) == sent
        # System gauges are computed once by the process answering, not once per worker.
        assert len(samples["mp_system_cpu_percent"]) == 1
        assert len(samples["mp_system_memory_percent"]) == 1
        # livesum: one series per label set, summed over live workers.
        progress = [
            v for labels, v in samples["http_requests_in_progress"] if labels["handler"] == "/hello"
        ]  # fmt: skip
        assert progress == [0.0]
        breakers = samples["mp_circuit_breaker_state"]
        assert [(labels["breaker_name"], v) for labels, v in breakers] == [("upstream", 1.0)]

        status, _, body = http_get(f"{url}/metrics/legacy")
        assert status == 200
        assert b'"requests": ' in body

        # Kill one worker outright (no clean exit): its live gauges must be swept.
        victim = pids[0]
        assert (tmp_path / f"gauge_livesum_{victim}.db").exists()
        os.kill(victim, signal.SIGKILL)

        def victim_gone() -> bool:
            try:
                return psutil.Process(victim).status() == psutil.STATUS_ZOMBIE
            except psutil.NoSuchProcess:
                return True

        wait_until(victim_gone, timeout=10, what="the killed worker to exit")
        wait_until(
            lambda: http_get(f"{url}/ping", timeout=2)[0] == 200,
            timeout=20,
            what="a worker answering after the kill",
            interval=0.1,
        )
        samples = scrape(url)
        assert not (tmp_path / f"gauge_livesum_{victim}.db").exists()
        assert hello_total(samples) == sent  # the dead worker's requests still count
