"""What users feel: each configuration under a real uvicorn, loaded by wrk over loopback.

The in-process benchmarks (`python -m bench`) measure the middleware code alone; this one
measures what is left of a real server's throughput, and the server CPU each request
costs, once a configuration is installed. For every configuration:

- two uvicorn processes with one worker are started from `bench.http_apps` factories on
  free 127.0.0.1 ports: a fresh *bare* server (the same Starlette app, no middleware) and
  the configured one, each with its stdout and stderr on pipes this process drains (the
  access log is written there, as to a log shipper);
- both are warmed up, then loaded in turn, bare, configured, bare, configured, ... for
  `--rounds` rounds, each by ``wrk -t1 -c32 -d<duration>s`` with `random_items.lua`
  (random ``/items/{n}``, so the route template is resolved for ever new paths);
- per run: requests per second from wrk, and the server's CPU time (user + system, all
  its threads, span export included) read before and after the run, divided by the
  requests completed.

Reported, as medians over rounds: throughput kept = rps(configured) / rps(bare) (the
median of each round's ratio), CPU µs per request of each and the CPU added (the median
of each round's difference). On 2 cores wrk competes with the server, so absolute
figures move with the machine's load; the ratios of interleaved runs are what to
compare. Spans are exported over OTLP/HTTP to a local receiver process
(`bench.otlp_sink`), which decodes and counts them and keeps nothing.

Run ``make bench-http`` or ``python -m bench.bench_http --duration 3 --rounds 1
--only instrument_10 --mode plain``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import http.client
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import psutil

from bench.http_apps import CONFIGS, Config

__all__ = [
    "MODES",
    "TARGETS",
    "PairResult",
    "Run",
    "main",
    "render",
    "run_benchmark",
]

ROOT = Path(__file__).resolve().parent.parent
LUA_SCRIPT = Path(__file__).resolve().parent / "random_items.lua"
CONNECTIONS = 32

# mode -> (label, uvicorn --http, uvicorn --loop)
MODES: dict[str, tuple[str, str, str]] = {
    "plain": ("uvicorn (h11, asyncio)", "h11", "asyncio"),
    "standard": ("uvicorn[standard] (httptools, uvloop)", "httptools", "uvloop"),
}

# (configuration, mode) -> the throughput that must be kept, relative to the bare server.
TARGETS: dict[tuple[str, str], float] = {
    ("instrument_10", "plain"): 0.80,
    ("instrument_10", "standard"): 0.65,
    ("instrument_100", "plain"): 0.60,
    ("instrument_100", "standard"): 0.45,
}

STARTUP_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class _Drain:
    """Reads a pipe to its end on a thread, counting bytes and lines, keeping the tail."""

    def __init__(self, pipe: IO[bytes]) -> None:
        self.lines = 0
        self.tail = b""
        self._fd = pipe.fileno()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while chunk := os.read(self._fd, 1 << 16):
            self.lines += chunk.count(b"\n")
            self.tail = (self.tail + chunk)[-4000:]

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)


@dataclass
class _Server:
    """One uvicorn process serving a `bench.http_apps` factory."""

    name: str
    port: int
    process: subprocess.Popen[bytes]
    stdout: _Drain
    stderr: _Drain
    served: int = 0  # requests wrk completed against it, warm-up included

    def cpu_seconds(self) -> float:
        times = psutil.Process(self.process.pid).cpu_times()
        return float(times.user + times.system)


def _answers(port: int) -> bool:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        connection.request("GET", "/items/0")
        return connection.getresponse().status == 200
    except OSError:
        return False
    finally:
        connection.close()


@contextlib.contextmanager
def _serve(factory: str, mode: str, env: dict[str, str]) -> Iterator[_Server]:
    """Start ``uvicorn --factory bench.http_apps:create_<factory>``; poll until it answers."""
    _, http_impl, loop = MODES[mode]
    port = _free_port()
    command = [
        sys.executable, "-m", "uvicorn", "--factory", f"bench.http_apps:create_{factory}",
        "--host", "127.0.0.1", "--port", str(port), "--http", http_impl, "--loop", loop,
        "--lifespan", "on", "--no-access-log", "--log-level", "warning",
    ]  # fmt: skip
    process = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    assert process.stdout is not None
    assert process.stderr is not None
    server = _Server(factory, port, process, _Drain(process.stdout), _Drain(process.stderr))
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while not _answers(port):
            if process.poll() is not None or time.monotonic() > deadline:
                server.stderr.join(2)
                detail = server.stderr.tail.decode(errors="replace")
                msg = f"uvicorn serving create_{factory} did not start ({mode}):\n{detail}"
                raise RuntimeError(msg)
            time.sleep(0.05)
        yield server
    finally:
        # SIGTERM: uvicorn shuts down gracefully, running lifespan shutdown (span flush).
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        try:
            process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(STOP_TIMEOUT)
        server.stdout.join(STOP_TIMEOUT)
        server.stderr.join(STOP_TIMEOUT)
        process.stdout.close()
        process.stderr.close()


@dataclass
class _Sink:
    port: int

    def stats(self) -> dict[str, int]:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        try:
            connection.request("GET", "/stats")
            stats: dict[str, int] = json.loads(connection.getresponse().read())
            return stats
        finally:
            connection.close()


@contextlib.contextmanager
def _otlp_sink() -> Iterator[_Sink]:
    """Start `bench.otlp_sink`; it prints its port once it listens."""
    process = subprocess.Popen(
        [sys.executable, "-m", "bench.otlp_sink"], cwd=ROOT, stdout=subprocess.PIPE,
        stdin=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        assert process.stdout is not None
        line = process.stdout.readline().decode()  # bounded: the process prints or exits
        if not line.startswith("listening "):
            msg = f"the OTLP sink did not start (said {line!r})"
            raise RuntimeError(msg)
        yield _Sink(int(line.split()[1]))
    finally:
        process.terminate()
        try:
            process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(STOP_TIMEOUT)
        if process.stdout is not None:
            process.stdout.close()


@dataclass
class Run:
    """One wrk run against one server."""

    requests: int
    seconds: float
    cpu_seconds: float
    p50_ms: float
    p99_ms: float
    socket_errors: int

    @property
    def rps(self) -> float:
        return self.requests / self.seconds

    @property
    def cpu_us(self) -> float:
        """Server CPU per completed request, in µs."""
        return self.cpu_seconds / self.requests * 1e6


def _wrk(server: _Server, duration: int) -> Run:
    wrk = shutil.which("wrk")
    if wrk is None:
        msg = "wrk is not installed: run `make realparts` (Debian: apt-get install wrk)"
        raise RuntimeError(msg)
    before = server.cpu_seconds()
    done = subprocess.run(
        [wrk, "-t1", f"-c{CONNECTIONS}", f"-d{duration}s", "--timeout", "5s",
         "-s", str(LUA_SCRIPT), f"http://127.0.0.1:{server.port}"],
        capture_output=True, text=True, timeout=duration + 60, check=True,
    )  # fmt: skip
    cpu = server.cpu_seconds() - before
    line = next((x for x in done.stdout.splitlines() if x.startswith("BENCH ")), None)
    if line is None:
        msg = f"wrk printed no summary:\n{done.stdout}\n{done.stderr}"
        raise RuntimeError(msg)
    summary = json.loads(line.removeprefix("BENCH "))
    if summary["status"]:
        msg = f"{server.name}: {summary['status']} responses were not 2xx/3xx"
        raise RuntimeError(msg)
    if not summary["requests"]:
        msg = f"{server.name}: wrk completed no request"
        raise RuntimeError(msg)
    server.served += summary["requests"]
    errors = sum(summary[k] for k in ("connect", "read", "write", "timeout"))
    return Run(
        requests=summary["requests"],
        seconds=summary["duration_us"] / 1e6,
        cpu_seconds=cpu,
        p50_ms=summary["p50_us"] / 1000,
        p99_ms=summary["p99_us"] / 1000,
        socket_errors=errors,
    )


@dataclass
class PairResult:
    """A configuration against its bare twin, on one kind of server."""

    config: Config
    mode: str
    bare: list[Run] = field(default_factory=list)
    configured: list[Run] = field(default_factory=list)
    log_lines_per_request: float = 0.0
    spans_per_request: float = 0.0

    @property
    def kept(self) -> float:
        return statistics.median(
            c.rps / b.rps for b, c in zip(self.bare, self.configured, strict=True)
        )

    @property
    def cpu_added(self) -> float:
        return statistics.median(
            c.cpu_us - b.cpu_us for b, c in zip(self.bare, self.configured, strict=True)
        )

    @staticmethod
    def median(runs: Sequence[Run], attribute: str) -> float:
        return statistics.median(float(getattr(run, attribute)) for run in runs)


def _environment(config: Config, sink: _Sink | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "METRICS_"))}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    env.update(
        ENVIRONMENT="production",
        LOG_LEVEL="INFO",
        OTEL_SERVICE_NAME="bench-http",
        OTEL_TRACES_SAMPLER="parentbased_traceidratio",
        OTEL_TRACES_SAMPLER_ARG=str(config.sampling),
    )
    if sink is not None and config.exports:
        env["OTEL_EXPORTER_OTLP_ENDPOINT"] = f"http://127.0.0.1:{sink.port}"
        env["OTEL_EXPORTER_OTLP_PROTOCOL"] = "http/protobuf"
    return env


def _run_pair(
    config: Config, mode: str, *, duration: int, rounds: int, warmup: int, sink: _Sink | None
) -> PairResult:
    result = PairResult(config, mode)
    env = _environment(config, sink)
    spans_before = sink.stats()["spans"] if sink is not None and config.exports else 0
    with _serve("bare", mode, env) as bare, _serve(config.name, mode, env) as configured:
        for server in (bare, configured):
            _wrk(server, warmup)
        for _ in range(rounds):
            result.bare.append(_wrk(bare, duration))
            result.configured.append(_wrk(configured, duration))
    # Both servers stopped: their access logs are drained and their spans flushed.
    served = configured.served
    result.log_lines_per_request = configured.stdout.lines / served
    if sink is not None and config.exports:
        result.spans_per_request = (sink.stats()["spans"] - spans_before) / served
    return result


def run_benchmark(
    names: Sequence[str] | None = None,
    modes: Sequence[str] = ("plain", "standard"),
    *,
    duration: int = 5,
    rounds: int = 3,
    warmup: int = 1,
) -> list[PairResult]:
    """Run every selected configuration against a fresh bare server, on each mode."""
    known = {config.name: config for config in CONFIGS}
    unknown = [name for name in names or () if name not in known]
    if unknown:
        msg = f"unknown configuration(s) {', '.join(unknown)}; known: {', '.join(known)}"
        raise ValueError(msg)
    bad_modes = [mode for mode in modes if mode not in MODES]
    if bad_modes:
        msg = f"unknown mode(s) {', '.join(bad_modes)}; known: {', '.join(MODES)}"
        raise ValueError(msg)
    if duration < 1 or rounds < 1 or warmup < 1:
        msg = "duration, rounds and warmup must be at least 1"
        raise ValueError(msg)
    selected = [config for config in CONFIGS if not names or config.name in names]
    results: list[PairResult] = []
    with contextlib.ExitStack() as stack:
        sink = stack.enter_context(_otlp_sink()) if any(c.exports for c in selected) else None
        for mode in modes:
            for config in selected:
                _progress(f"[{MODES[mode][0]}] {config.name} ...")
                pair = _run_pair(
                    config, mode, duration=duration, rounds=rounds, warmup=warmup, sink=sink
                )
                _progress(f"    kept {pair.kept:.2f}, CPU added {pair.cpu_added:+.0f} µs/request")
                results.append(pair)
    return results


def _exported(pair: PairResult) -> str:
    parts = []
    if pair.config.logs:
        parts.append(f"{pair.log_lines_per_request:.2f} lines")
    if pair.config.exports:
        parts.append(f"{pair.spans_per_request:.2f} spans")
    return ", ".join(parts)


def render(results: Sequence[PairResult], *, duration: int, rounds: int) -> str:
    """The markdown tables: one per server mode, then the targets with pass/fail."""
    out: list[str] = []
    for mode, (label, _, _) in MODES.items():
        rows = [pair for pair in results if pair.mode == mode]
        if not rows:
            continue
        out += [
            f"### {label}",
            "",
            "| configuration | req/s bare → with | kept | CPU µs/req bare | CPU µs/req with "
            "| CPU added | p99 ms bare → with | written per request |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
        ]
        for pair in rows:
            bare, conf = pair.bare, pair.configured
            out.append(
                f"| {pair.config.label} "
                f"| {pair.median(bare, 'rps'):.0f} → {pair.median(conf, 'rps'):.0f} "
                f"| {pair.kept:.2f} "
                f"| {pair.median(bare, 'cpu_us'):.0f} | {pair.median(conf, 'cpu_us'):.0f} "
                f"| {pair.cpu_added:+.0f} "
                f"| {pair.median(bare, 'p99_ms'):.1f} → {pair.median(conf, 'p99_ms'):.1f} "
                f"| {_exported(pair)} |"
            )
        out.append("")
    targets = [
        (pair, TARGETS[(pair.config.name, pair.mode)])
        for pair in results
        if (pair.config.name, pair.mode) in TARGETS
    ]
    if targets:
        out += [
            "### Targets (throughput kept, relative to the bare server)",
            "",
            "| configuration | server | target | measured | |",
            "| --- | --- | ---: | ---: | --- |",
        ]
        for pair, target in targets:
            verdict = "pass" if pair.kept >= target else "**miss**"
            out.append(
                f"| {pair.config.label} | {MODES[pair.mode][0]} | ≥ {target:.2f} "
                f"| {pair.kept:.2f} | {verdict} |"
            )
        out.append("")
    out.append(
        f"wrk -t1 -c{CONNECTIONS}, {rounds} round(s) of {duration} s per server, medians; "
        f"{datetime.date.today().isoformat()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}."
    )
    return "\n".join(out) + "\n"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_http", description=__doc__)
    parser.add_argument("--duration", type=int, default=5, help="seconds per wrk run (5)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (3)")
    parser.add_argument("--warmup", type=int, default=1, help="warm-up seconds per server (1)")
    parser.add_argument(
        "--only",
        nargs="+",
        metavar="NAME",
        help=f"configurations: {', '.join(c.name for c in CONFIGS)}",
    )
    parser.add_argument("--mode", choices=("plain", "standard", "both"), default="both")
    parser.add_argument("--output", type=Path, help="also write the markdown to this file")
    args = parser.parse_args(argv)
    modes = ("plain", "standard") if args.mode == "both" else (args.mode,)
    names = [n for item in args.only or () for n in item.split(",") if n] or None
    try:
        results = run_benchmark(
            names, modes, duration=args.duration, rounds=args.rounds, warmup=args.warmup
        )
    except (ValueError, RuntimeError) as exc:
        parser.exit(2, f"error: {exc}\n")
    table = render(results, duration=args.duration, rounds=args.rounds)
    print(table)
    if args.output is not None:
        args.output.write_text(table)


if __name__ == "__main__":
    main()
