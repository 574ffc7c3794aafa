"""SystemCollector: scrape-time psutil gauges, cgroup v2 limits, unreadable files."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import httpx
import psutil
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from asgi_observe.metrics.exposition import metrics_app
from asgi_observe.metrics.system import CPUWindow, SystemCollector, register_system_metrics

MiB = 1024 * 1024


def fake_cgroup(
    root: Path, *, leaf: str = "", proc_line: str | None = None, **files: str
) -> tuple[Path, Path]:
    """Write cgroup files (``memory_max="..."`` → ``memory.max``) under `root`/`leaf`."""
    directory = root / leaf if leaf else root
    directory.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        (directory / name.replace("_", ".", 1)).write_text(content)
    proc = root.parent / f"{root.name}-proc-cgroup"
    proc.write_text(proc_line if proc_line is not None else f"0::/{leaf}\n")
    return root, proc


def collector(
    root: Path,
    proc: Path,
    *,
    clock: Callable[[], float] = time.monotonic,
    namespace: str = "",
    disk_path: str = "/",
) -> SystemCollector:
    return SystemCollector(
        cgroup_root=root, proc_cgroup=proc, clock=clock, namespace=namespace, disk_path=disk_path
    )


def samples(source: SystemCollector) -> dict[str, float]:
    return {s.name: s.value for family in source.collect() for s in family.samples}


class Clock:
    def __init__(self, now: float = 100.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_memory_percent_is_of_the_cgroup_limit(tmp_path: Path) -> None:
    root, proc = fake_cgroup(
        tmp_path / "cg",
        memory_max=f"{100 * MiB}\n",
        memory_current=f"{50 * MiB}\n",
        memory_stat=f"anon 1\ninactive_file {10 * MiB}\nactive_file 5\n",
    )
    assert samples(collector(root, proc))["system_memory_percent"] == pytest.approx(40.0)


def test_memory_limit_is_inherited_from_a_parent_cgroup(tmp_path: Path) -> None:
    root = tmp_path / "cg"
    fake_cgroup(root, memory_max=f"{200 * MiB}\n")
    root, proc = fake_cgroup(
        root, leaf="kubepods/pod1", memory_max="max\n", memory_current=f"{50 * MiB}\n"
    )
    source = collector(root, proc)
    assert source.memory_limit() == 200 * MiB
    assert samples(source)["system_memory_percent"] == pytest.approx(25.0)


@pytest.mark.parametrize("limit", ["max\n", "garbage\n", "", "-5\n"])
def test_no_memory_limit_reports_the_host(tmp_path: Path, limit: str) -> None:
    root, proc = fake_cgroup(tmp_path / "cg", memory_max=limit, memory_current="1\n")
    value = samples(collector(root, proc))["system_memory_percent"]
    assert value == pytest.approx(psutil.virtual_memory().percent, abs=5.0)
    assert value > 0.0  # not the 1-byte cgroup usage


def test_a_limit_larger_than_the_host_reports_the_host(tmp_path: Path) -> None:
    host = psutil.virtual_memory().total
    root, proc = fake_cgroup(tmp_path / "cg", memory_max=f"{host * 4}\n", memory_current="1\n")
    value = samples(collector(root, proc))["system_memory_percent"]
    assert value == pytest.approx(psutil.virtual_memory().percent, abs=5.0)


def test_cpu_percent_is_of_the_cgroup_quota(tmp_path: Path) -> None:
    root, proc = fake_cgroup(
        tmp_path / "cg", cpu_max="50000 100000\n", cpu_stat="usage_usec 1000000\nuser_usec 1\n"
    )
    clock = Clock(100.0)
    source = collector(root, proc, clock=clock)
    assert source.cpu_limit() == pytest.approx(0.5)
    # 0.5 s of CPU over 2 s of wall time with half a core allowed: 50 % of the limit.
    (root / "cpu.stat").write_text("usage_usec 1500000\n")
    clock.now = 102.0
    assert samples(source)["system_cpu_percent"] == pytest.approx(50.0)
    # Busier than the quota allows (bursting) is capped at 100.
    (root / "cpu.stat").write_text("usage_usec 4500000\n")
    clock.now = 104.0
    assert samples(source)["system_cpu_percent"] == 100.0


def test_cpu_scrapes_too_close_together_repeat_the_last_figure(tmp_path: Path) -> None:
    root, proc = fake_cgroup(tmp_path / "cg", cpu_max="100000 100000\n", cpu_stat="usage_usec 0\n")
    clock = Clock(10.0)
    source = collector(root, proc, clock=clock)
    (root / "cpu.stat").write_text("usage_usec 250000\n")
    clock.now = 11.0
    assert source.cpu_percent() == pytest.approx(25.0)
    (root / "cpu.stat").write_text("usage_usec 999999999\n")
    clock.now = 11.001
    assert source.cpu_percent() == pytest.approx(25.0)


def test_cpu_max_without_quota_uses_the_host(tmp_path: Path) -> None:
    root, proc = fake_cgroup(tmp_path / "cg", cpu_max="max 100000\n", cpu_stat="usage_usec 5\n")
    source = collector(root, proc)
    assert source.cpu_limit() is None
    start = time.perf_counter()
    value = source.cpu_percent()
    assert time.perf_counter() - start < 0.5  # non-blocking, unlike cpu_percent(interval=1)
    assert value is not None
    assert 0.0 <= value <= 100.0


def test_host_cpu_is_measured_between_scrapes(tmp_path: Path) -> None:
    source = SystemCollector(cgroup_root=tmp_path / "missing")
    deadline = time.monotonic() + 0.3
    while time.monotonic() < deadline:  # keep a core busy so the figure is not 0
        sum(range(1000))
    value = source.cpu_percent()
    assert value is not None
    assert 0.0 < value <= 100.0


@pytest.mark.parametrize(
    "broken", ["memory.max", "memory.current", "cpu.max", "cpu.stat", "memory.stat"]
)
def test_unreadable_cgroup_files_never_raise(tmp_path: Path, broken: str) -> None:
    root, proc = fake_cgroup(
        tmp_path / "cg",
        memory_max=f"{100 * MiB}\n",
        memory_current=f"{50 * MiB}\n",
        memory_stat="inactive_file 0\n",
        cpu_max="50000 100000\n",
        cpu_stat="usage_usec 100\n",
    )
    (root / broken).unlink()
    (root / broken).mkdir()  # reading a directory raises IsADirectoryError, even as root
    found = samples(collector(root, proc))
    assert 0.0 <= found["system_memory_percent"] <= 100.0
    assert 0.0 <= found["system_cpu_percent"] <= 100.0


def test_binary_garbage_in_cgroup_files_never_raises(tmp_path: Path) -> None:
    root, proc = fake_cgroup(tmp_path / "cg", proc_line="\xff\x00garbage")
    for name in ("memory.max", "memory.current", "memory.stat", "cpu.max", "cpu.stat"):
        (root / name).write_bytes(b"\xff\xfe\x00\x01 \n\n")
    found = samples(collector(root, proc))
    assert {"system_cpu_percent", "system_memory_percent"} <= found.keys()


def test_proc_cgroup_pointing_nowhere_falls_back_to_the_root(tmp_path: Path) -> None:
    root, proc = fake_cgroup(
        tmp_path / "cg",
        proc_line="0::/does/not/exist\n",
        memory_max=f"{100 * MiB}\n",
        memory_current=f"{30 * MiB}\n",
    )
    assert samples(collector(root, proc))["system_memory_percent"] == pytest.approx(30.0)


def test_process_and_disk_figures(tmp_path: Path) -> None:
    found = samples(SystemCollector(namespace="shop", disk_path=tmp_path, cgroup_root=tmp_path))
    assert found["shop_system_process_resident_memory_bytes"] > 1 * MiB
    assert found["shop_system_process_open_fds"] >= 3
    assert found["shop_system_process_threads"] >= 1
    assert found["shop_system_disk_percent"] == pytest.approx(
        psutil.disk_usage(str(tmp_path)).percent, abs=1.0
    )


def test_a_failing_reading_is_left_out_and_the_rest_reported(tmp_path: Path) -> None:
    found = samples(SystemCollector(disk_path=tmp_path / "nope", cgroup_root=tmp_path))
    assert "system_disk_percent" not in found
    assert "system_memory_percent" in found
    assert "system_cpu_percent" in found


def test_register_is_get_or_create_per_registry(tmp_path: Path) -> None:
    registry = CollectorRegistry()
    first = register_system_metrics(registry, namespace="baliblissed")
    assert register_system_metrics(registry, namespace="baliblissed") is first
    assert register_system_metrics(CollectorRegistry(), namespace="baliblissed") is not first
    other = register_system_metrics(registry, namespace="other")
    assert other is not first
    with pytest.raises(ValueError, match="disk_path"):
        register_system_metrics(registry, namespace="baliblissed", disk_path=tmp_path)
    text = generate_latest(registry).decode()
    for name in ("cpu", "memory", "disk"):
        assert f"# TYPE baliblissed_system_{name}_percent gauge" in text
        assert f"# TYPE other_system_{name}_percent gauge" in text


async def test_served_by_metrics_app_at_scrape_time() -> None:
    registry = CollectorRegistry()
    register_system_metrics(registry, namespace="baliblissed")
    transport = httpx.ASGITransport(app=metrics_app(registry))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        first = await client.get("/metrics")
        second = await client.get("/metrics")
    assert first.status_code == second.status_code == 200
    threads = [
        line
        for line in second.text.splitlines()
        if line.startswith("baliblissed_system_process_threads ")
    ]
    assert len(threads) == 1
    assert float(threads[0].split()[1]) >= 1


def test_cpu_percent_covers_a_fixed_window_whoever_scrapes(tmp_path: Path) -> None:
    """Two Prometheus replicas scraping one target at different rates see one figure."""
    root, proc = fake_cgroup(tmp_path / "cg", cpu_max="100000 100000\n", cpu_stat="usage_usec 0\n")
    clock = Clock(0.0)
    often = collector(root, proc, clock=clock)  # scraped every 10 s
    seldom = collector(root, proc, clock=clock)  # scraped every 30 s

    def usage_at(t: float) -> int:
        return int((t * t / 200) * 1_000_000)  # a load that grows: the window matters

    figures: dict[float, tuple[float | None, float | None]] = {}
    for second in range(10, 100, 10):
        clock.now = float(second)
        (root / "cpu.stat").write_text(f"usage_usec {usage_at(second)}\n")
        first = often.cpu_percent()
        second_figure = seldom.cpu_percent() if second % 30 == 0 else None
        figures[second] = (first, second_figure)
    # At 90 s both measure from the reading at 30 s: (90²-30²)/200 s of CPU in 60 s.
    expected = ((90 * 90 - 30 * 30) / 200) / 60 * 100
    assert figures[90][0] == pytest.approx(min(expected, 100.0))
    assert figures[90][1] == pytest.approx(figures[90][0])
    # ...and a scrape one second later does not shrink the interval to one second.
    clock.now = 91.0
    (root / "cpu.stat").write_text(f"usage_usec {usage_at(91)}\n")
    assert often.cpu_percent() == pytest.approx(((91 * 91 - 30 * 30) / 200) / 61 * 100)


def test_cpu_window_memory_is_bounded() -> None:
    window = CPUWindow(window=60.0)
    for second in range(10_000):
        window.add(float(second), second * 0.5, float(second))
    assert window.add(10_000.0, 5_000.0, 10_000.0) == pytest.approx(50.0)
    assert len(window._readings) <= 62
