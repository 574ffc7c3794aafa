"""Docs that run: every Python block of README.md and docs/*.md is executed, links resolve.

Each ```python block runs as written, in a fresh interpreter (``python -m tests.test_docs``
reads it on stdin), so the global state a snippet sets up (the global tracer provider,
structlog's configuration, ``PII_PATTERNS``, the default Prometheus registry) never
reaches another snippet or test. The interpreter refuses any connection or name lookup
beyond the loopback addresses (an audit hook), so a snippet cannot reach the network. A
block that leaves an ASGI callable named ``app`` is then exercised: lifespan startup
when the app supports it, one GET request through ``httpx.ASGITransport`` (``/`` unless
the block says otherwise), lifespan shutdown; a 5xx answer fails the test.

A block can be preceded by one HTML comment that the test reads:

- ``<!-- doc-test: fragment, REASON -->``: a fragment of a larger file (a gunicorn
  config, one line of a bigger app); it is only compiled. Keep these rare, each with a
  reason.
- ``<!-- doc-test: get /PATH -->``: the path requested from the block's ``app``.

The other tests keep the docs honest: relative links (and their ``#anchors``) resolve,
benchmark figures live in docs/performance.md only, and the docs speak of the project
alone.
"""

from __future__ import annotations

import argparse
import ast
import asyncio
import contextlib
import inspect
import ipaddress
import itertools
import json
import os
import re
import subprocess
import sys
import threading
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from asgi_observe.types import ASGIApp, Message, Receive, Scope, Send
from tests.support import free_port, http_get, require, stop_process, wait_until

ROOT = Path(__file__).resolve().parents[1]
DOCS = (ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")))
PERFORMANCE = ROOT / "docs" / "performance.md"
SNIPPET_TIMEOUT = 120.0  # seconds; a snippet imports FastAPI and OpenTelemetry on a shared machine

FENCE = re.compile(r"^(?P<indent> {0,3})(?P<fence>`{3,}|~{3,})\s*(?P<info>[^`\s]*)")
DIRECTIVE = re.compile(r"^<!--\s*doc-test:\s*(?P<body>.*?)\s*-->$")
PYTHON_INFOS = frozenset({"python", "py", "python3"})


@dataclass(frozen=True)
class Block:
    """One fenced code block of a Markdown file."""

    path: Path
    line: int  # 1-based line of the opening fence
    info: str
    source: str
    directive: str | None  # the body of a `<!-- doc-test: ... -->` comment right before it

    @property
    def id(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def fenced_blocks(path: Path) -> list[Block]:
    """Every fenced block of `path` (backticks or tildes, CommonMark closing rules)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks: list[Block] = []
    index = 0
    while index < len(lines):
        opening = FENCE.match(lines[index])
        if opening is None:
            index += 1
            continue
        fence = opening["fence"]
        closing = re.compile(rf"^ {{0,3}}{re.escape(fence[0])}{{{len(fence)},}}\s*$")
        end = index + 1
        while end < len(lines) and not closing.match(lines[end]):
            end += 1
        before = index - 1
        while before >= 0 and not lines[before].strip():
            before -= 1
        directive = DIRECTIVE.match(lines[before].strip()) if before >= 0 else None
        blocks.append(
            Block(
                path=path,
                line=index + 1,
                info=opening["info"].lower(),
                source="\n".join(lines[index + 1 : end]) + "\n",
                directive=directive["body"] if directive else None,
            )
        )
        index = end + 1
    return blocks


def python_blocks() -> list[Block]:
    return [block for doc in DOCS for block in fenced_blocks(doc) if block.info in PYTHON_INFOS]


def prose(path: Path) -> str:
    """The text of `path` without fenced blocks and inline code spans (links live here)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    for block in fenced_blocks(path):
        count = block.source.count("\n") + 2
        for number in range(block.line - 1, min(block.line - 1 + count, len(lines))):
            lines[number] = ""
    return re.sub(r"(`+)(?:(?!\1).)+?\1", "", "\n".join(lines))


# --- snippets -------------------------------------------------------------------------


@dataclass(frozen=True)
class Directive:
    """What a `<!-- doc-test: ... -->` comment asks for."""

    fragment_reason: str | None = None
    request_path: str = "/"


def parse_directive(body: str | None) -> Directive:
    if body is None:
        return Directive()
    kind, _, rest = body.partition(" ")
    kind = kind.rstrip(",").lower()
    rest = rest.strip()
    if kind == "fragment":
        if not rest:
            msg = "a `doc-test: fragment` comment needs a reason: <!-- doc-test: fragment, why -->"
            raise ValueError(msg)
        return Directive(fragment_reason=rest)
    if kind == "get":
        if not rest.startswith("/") or " " in rest:
            msg = f"`doc-test: get` needs one absolute path, got {rest!r}"
            raise ValueError(msg)
        return Directive(request_path=rest)
    msg = f"unknown doc-test directive {body!r} (expected 'fragment, REASON' or 'get /PATH')"
    raise ValueError(msg)


def snippet_environment(tmp: Path) -> dict[str, str]:
    """The test process's environment without anything the library or examples read."""
    own = ("OTEL_", "METRICS_", "PROMETHEUS_MULTIPROC_DIR", "DATABASE_URL", "REDIS_URL")
    settings = (
        "ENVIRONMENT",
        "LOG_LEVEL",
        "ENABLE_METRICS",
        "TRUSTED_PROXIES",
        "REQUEST_ID_HEADER",
        "ACCESS_LOG_EXCLUDE_PATHS",
        "BALIBLISSED_AI_FAILURE",
    )
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(own) and name not in settings
    }
    env["PYTHONPATH"] = str(ROOT)
    env["HOME"] = str(tmp)
    return env


BLOCKS = python_blocks()


@dataclass(frozen=True)
class ChildRun:
    """What running one snippet in a fresh interpreter gave."""

    returncode: int
    output: str  # the tail of stdout and stderr, for failure messages
    app: bool  # the snippet left an ASGI app named `app`
    status: int | None  # the answer to the GET request sent to it


def run_in_child(source: str, *, filename: str, line: int, path: str, tmp: Path) -> ChildRun:
    result_file = tmp / "result.json"
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.test_docs",
            "--filename",
            filename,
            "--line",
            str(line),
            "--get",
            path,
            "--result",
            str(result_file),
        ],
        input=source,
        capture_output=True,
        text=True,
        cwd=tmp,
        env=snippet_environment(tmp),
        timeout=SNIPPET_TIMEOUT,
        check=False,
    )
    output = f"stdout:\n{completed.stdout[-4000:]}\nstderr:\n{completed.stderr[-8000:]}"
    result = json.loads(result_file.read_text()) if result_file.exists() else {}
    return ChildRun(completed.returncode, output, result.get("app", False), result.get("status"))


@pytest.mark.parametrize("block", BLOCKS, ids=[block.id for block in BLOCKS])
def test_python_block_runs(block: Block, tmp_path: Path) -> None:
    directive = parse_directive(block.directive)
    filename = str(block.path.relative_to(ROOT))
    if directive.fragment_reason is not None:
        # Tracebacks and syntax errors point at the Markdown line.
        compile("\n" * block.line + block.source, filename, "exec")
        return
    run = run_in_child(
        block.source, filename=filename, line=block.line, path=directive.request_path, tmp=tmp_path
    )
    assert run.returncode == 0, f"{block.id} failed\n{run.output}"
    if run.app:
        assert run.status is not None
        assert run.status < 500, f"{block.id}: GET {directive.request_path}\n{run.output}"


@pytest.mark.parametrize(
    "source",
    [
        "import socket\nsocket.getaddrinfo('example.com', 80)\n",
        "import socket\nsocket.create_connection(('192.0.2.1', 80), timeout=1)\n",
        "import socket\nsocket.socket(socket.AF_INET6).connect(('2001:db8::1', 80))\n",
    ],
)
def test_snippets_cannot_reach_beyond_loopback(source: str, tmp_path: Path) -> None:
    run = run_in_child(source, filename="doc.md", line=1, path="/", tmp=tmp_path)
    assert run.returncode != 0
    assert "doc snippets may reach 127.0.0.1 only" in run.output


def test_snippets_may_reach_loopback(tmp_path: Path) -> None:
    source = (
        "import socket\n"
        "server = socket.create_server(('127.0.0.1', 0))\n"
        "socket.create_connection(server.getsockname(), timeout=5).close()\n"
        "socket.getaddrinfo('localhost', 80)\n"
    )
    run = run_in_child(source, filename="doc.md", line=1, path="/", tmp=tmp_path)
    assert run.returncode == 0, run.output
    assert not run.app


def test_an_app_answering_5xx_is_reported(tmp_path: Path) -> None:
    source = (
        "async def app(scope, receive, send):\n"
        "    if scope['type'] == 'http':\n"
        "        await send({'type': 'http.response.start', 'status': 503, 'headers': []})\n"
        "        await send({'type': 'http.response.body', 'body': b''})\n"
    )
    run = run_in_child(source, filename="doc.md", line=3, path="/ready", tmp=tmp_path)
    assert run.returncode == 0, run.output
    assert (run.app, run.status) == (True, 503)


async def answer_ok(send: Send, status: int = 200) -> None:
    await send({"type": "http.response.start", "status": status, "headers": []})
    await send({"type": "http.response.body", "body": b""})


async def test_lifespan_startup_and_state_reach_the_request() -> None:
    events: list[str] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                events.append(message["type"])
                if message["type"] == "lifespan.startup":
                    scope["state"]["ready"] = True
                    await send({"type": "lifespan.startup.complete"})
                else:
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        await answer_ok(send, 200 if scope["state"].get("ready") else 500)

    assert await exercise(app, "/") == 200
    assert events == ["lifespan.startup", "lifespan.shutdown"]


async def test_an_app_without_lifespan_is_served() -> None:
    async def raising(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            raise RuntimeError("http only")
        await answer_ok(send)

    async def answering_like_http(scope: Scope, receive: Receive, send: Send) -> None:
        await answer_ok(send)

    assert await exercise(raising, "/") == 200
    assert await exercise(answering_like_http, "/") == 200


async def test_a_failed_lifespan_startup_fails_the_run() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await receive()
            await send({"type": "lifespan.startup.failed", "message": "no database"})
            return
        await answer_ok(send)

    with pytest.raises(RuntimeError, match="no database"):
        await exercise(app, "/")


def test_a_failing_snippet_points_at_its_markdown_line(tmp_path: Path) -> None:
    run = run_in_child(
        "x = 1\nundefined_name\n", filename="doc.md", line=40, path="/", tmp=tmp_path
    )
    assert run.returncode != 0
    assert 'File "doc.md", line 42' in run.output
    assert "NameError" in run.output


def test_python_blocks_are_found() -> None:
    # The parametrized test above passes vacuously if the collector finds nothing.
    assert len(BLOCKS) >= 10
    assert any(block.path.name == "README.md" for block in BLOCKS)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (None, Directive()),
        ("fragment, a gunicorn.conf.py body", Directive(fragment_reason="a gunicorn.conf.py body")),
        ("get /items/42", Directive(request_path="/items/42")),
    ],
)
def test_directive_parsing(body: str | None, expected: Directive) -> None:
    assert parse_directive(body) == expected


@pytest.mark.parametrize("body", ["fragment", "fragment,", "get items", "skip", "get /a /b"])
def test_directive_refuses_what_it_does_not_know(body: str) -> None:
    with pytest.raises(ValueError, match="doc-test"):
        parse_directive(body)


def test_fragments_are_rare() -> None:
    fragments = [block.id for block in BLOCKS if block.directive and "fragment" in block.directive]
    assert len(fragments) <= max(2, len(BLOCKS) // 5), fragments


# --- links ----------------------------------------------------------------------------

INLINE_LINK = re.compile(r"\]\(\s*<?(?P<target>[^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE_LINK = re.compile(r"^ {0,3}\[[^\]]+\]:\s*<?(?P<target>[^\s>]+)>?", re.MULTILINE)
HTML_LINK = re.compile(r"""<(?:a|img)\s[^>]*?(?:href|src)=["'](?P<target>[^"']+)["']""")
HEADING = re.compile(r"^ {0,3}#{1,6}\s+(?P<text>.*?)(?:\s+#+)?\s*$")
HTML_ANCHOR = re.compile(r"""<a\s[^>]*?(?:id|name)=["'](?P<anchor>[^"']+)["']""")


def links(path: Path) -> list[str]:
    text = prose(path)
    return [
        match["target"]
        for pattern in (INLINE_LINK, REFERENCE_LINK, HTML_LINK)
        for match in pattern.finditer(text)
    ]


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: rendered text, lower case, punctuation dropped."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link shows its text
    text = re.sub(r"<[^>]+>", "", text)  # inline HTML is not part of the text
    text = text.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every `#anchor` a link into `path` may use, numbered duplicates included."""
    lines = path.read_text(encoding="utf-8").splitlines()
    in_code = {
        number
        for block in fenced_blocks(path)
        for number in range(block.line - 1, block.line + block.source.count("\n") + 1)
    }
    found: set[str] = set()
    seen: dict[str, int] = {}
    for number, line in enumerate(lines):
        heading = HEADING.match(line)
        if number in in_code or heading is None:
            continue
        base = slug(heading["text"])
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    found.update(match["anchor"] for match in HTML_ANCHOR.finditer(prose(path)))
    return found


def broken_links(path: Path) -> list[str]:
    broken = []
    for target in links(path):
        if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", target) or target.startswith("//"):
            continue  # http:, https:, mailto: ... are not files of this repository
        file_part, _, anchor = target.partition("#")
        destination = (path.parent / file_part).resolve() if file_part else path
        if not destination.exists():
            broken.append(f"{target}: no such file")
        elif anchor and destination.suffix == ".md" and anchor not in anchors(destination):
            broken.append(f"{target}: no heading #{anchor} in {destination.name}")
    return broken


@pytest.mark.parametrize("doc", DOCS, ids=[str(doc.relative_to(ROOT)) for doc in DOCS])
def test_relative_links_resolve(doc: Path) -> None:
    assert broken_links(doc) == []


def test_link_checker_sees_broken_links(tmp_path: Path) -> None:
    (tmp_path / "there.md").write_text(
        "# Securing `/metrics`\n\n## Behind a proxy (TRUSTED_PROXIES)\n"
    )
    doc = tmp_path / "doc.md"
    doc.write_text(
        "[ok](there.md) [ok](there.md#securing-metrics) "
        "[ok](there.md#behind-a-proxy-trusted_proxies) [ok](https://example.com/x)\n"
        "[gone](missing.md) [bad anchor](there.md#nowhere) [self](#nowhere-here)\n"
        "`[code](not-checked.md)`\n\n"
        "```text\n[fenced](not-checked-either.md)\n```\n\n"
        "[ref]: gone-too.md\n"
    )
    assert broken_links(doc) == [
        "missing.md: no such file",
        "there.md#nowhere: no heading #nowhere in there.md",
        "#nowhere-here: no heading #nowhere-here in doc.md",
        "gone-too.md: no such file",
    ]


def test_slug_follows_github() -> None:
    assert slug("Securing `/metrics`") == "securing-metrics"
    assert (
        slug("Behind a reverse proxy (`TRUSTED_PROXIES`)")
        == "behind-a-reverse-proxy-trusted_proxies"
    )
    assert slug("Dashboards, alerts and the local stack") == "dashboards-alerts-and-the-local-stack"
    assert slug("uvicorn[standard] (httptools, uvloop)") == "uvicornstandard-httptools-uvloop"
    assert slug("See [the guide](x.md) now") == "see-the-guide-now"


# --- wording and figures --------------------------------------------------------------

# The docs speak of the project only: never of where its requirements came from.
FORBIDDEN_WORDING = re.compile(r"the seed|seed['\u2019]s|reference user", re.IGNORECASE)
# A benchmark figure: the microsecond unit at all (a table may carry it in its header), a
# number of nanoseconds, a number of requests per second, or a "kept" throughput ratio.
BENCH_FIGURE = re.compile(
    r"[µμ]s\b|\d\s*ns\b|\d\s*req(?:uests)?\s*/\s*s(?:ec)?\b|\d\s*requests per second"
    r"|\bkeeps?\s+[01]\.\d",
    re.IGNORECASE,
)


def wording_sources() -> list[Path]:
    return [*DOCS, *sorted((ROOT / "examples").glob("*.py"))]


@pytest.mark.parametrize(
    "source", wording_sources(), ids=[str(path.relative_to(ROOT)) for path in wording_sources()]
)
def test_docs_speak_of_the_project_only(source: Path) -> None:
    text = source.read_text(encoding="utf-8")
    found = [
        f"{source.relative_to(ROOT)}:{text.count(chr(10), 0, match.start()) + 1}: {match.group()!r}"
        for match in FORBIDDEN_WORDING.finditer(text)
    ]
    assert found == []


@pytest.mark.parametrize(
    "doc",
    [doc for doc in DOCS if doc != PERFORMANCE],
    ids=[str(doc.relative_to(ROOT)) for doc in DOCS if doc != PERFORMANCE],
)
def test_benchmark_figures_only_in_performance_md(doc: Path) -> None:
    text = doc.read_text(encoding="utf-8")
    found = [
        f"line {text.count(chr(10), 0, match.start()) + 1}: {match.group()!r}"
        for match in BENCH_FIGURE.finditer(text)
    ]
    assert found == [], "benchmark figures belong in docs/performance.md; link to it instead"


def test_performance_md_holds_the_figures() -> None:
    # The rule above would pass vacuously if the figures vanished altogether.
    assert len(BENCH_FIGURE.findall(PERFORMANCE.read_text(encoding="utf-8"))) >= 10


@pytest.mark.parametrize(
    "text",
    [
        "+5.6 µs",
        "adds 31µs",
        "12 μs per line",
        "| µs added per request |",
        "3,000 req/s",
        "800 ns",
        "2500 requests per second",
        "the stack keeps 0.57 of the bare server",
    ],
)
def test_benchmark_figure_rule_catches(text: str) -> None:
    assert BENCH_FIGURE.search(text)


@pytest.mark.parametrize(
    "text",
    [
        "a 2 s timeout",
        "response_ms",
        "2 ms",
        "Requests / s by handler",
        "kept alive",
        "keeps 3 files",
    ],
)
def test_benchmark_figure_rule_lets_through(text: str) -> None:
    assert not BENCH_FIGURE.search(text)


# --- the first command: `make run` --------------------------------------------------

BANNER_URL = re.compile(r"https?://[^\s)]+")


def banner_urls(banner: str) -> list[str]:
    """Every URL the `serve` banner prints: full URLs, and the paths after one on its line."""
    urls: list[str] = []
    for line in banner.splitlines():
        found = BANNER_URL.search(line)
        if found is None:
            continue
        urls.append(found.group())
        origin = re.match(r"https?://[^/]+", found.group())
        assert origin is not None
        urls += [origin.group() + path for path in re.findall(r"(?<=\s)/[^\s)]*", line)]
    return urls


def test_banner_urls_are_read_whole() -> None:
    banner = (
        "asgi_observe example: examples.baliblissed:create_app\n"
        "  index      http://127.0.0.1:8000/   (every endpoint)\n"
        "  metrics    http://127.0.0.1:8000/metrics   (legacy JSON: /metrics/legacy)\n"
        "  health     http://127.0.0.1:8000/health   /health/live\n"
        "  stack      make stack-up   (Prometheus :9090)\n"
    )
    assert banner_urls(banner) == [
        "http://127.0.0.1:8000/",
        "http://127.0.0.1:8000/metrics",
        "http://127.0.0.1:8000/metrics/legacy",
        "http://127.0.0.1:8000/health",
        "http://127.0.0.1:8000/health/live",
    ]


def answers(url: str) -> bool:
    try:
        http_get(url, timeout=2)
    except OSError:
        return False
    return True


def test_every_url_make_run_prints_answers_200(tmp_path: Path) -> None:
    """`scripts/run.sh serve` (what `make run` runs): its banner, then the real server.

    The first URL is the example's index; every endpoint it lists without a path
    parameter answers 200 too, so the index cannot list what is not served.
    """
    uvicorn = ROOT / ".venv" / "bin" / "uvicorn"
    require(uvicorn.exists(), f"{uvicorn} is missing (run `make install`)")
    port = free_port()
    env = {**snippet_environment(tmp_path), "HOST": "127.0.0.1", "PORT": str(port)}
    env.pop("APP", None)
    log = tmp_path / "serve.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            ["bash", str(ROOT / "scripts" / "run.sh"), "serve"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=output,
        )
    lines: list[str] = []

    def drain_stdout() -> None:
        # The app logs to stdout too: read it all, so a full pipe never stalls the server.
        assert process.stdout is not None
        lines.extend(raw.decode(errors="replace") for raw in process.stdout)

    drainer = threading.Thread(target=drain_stdout, daemon=True)
    drainer.start()
    try:
        wait_until(
            lambda: process.poll() is not None or any(line.startswith("  stack") for line in lines),
            timeout=30,
            what="the banner of scripts/run.sh serve",
        )
        banner = "".join(
            itertools.takewhile(lambda line: line.startswith(("asgi_observe example", "  ")), lines)
        )
        urls = banner_urls(banner)
        assert urls, banner
        assert urls[0] == f"http://127.0.0.1:{port}/", banner
        wait_until(
            lambda: process.poll() is not None or answers(urls[0]),
            timeout=60,
            what="the example to serve",
        )
        assert process.poll() is None, log.read_text()
        for url in urls:
            status, _, body = http_get(url)
            assert status == 200, f"{url}: {status} {body[:300]!r}"
        index = json.loads(http_get(urls[0])[2])
        listed = [entry["path"] for entry in index["endpoints"] if entry["method"] == "GET"]
        assert {"/destinations", "/metrics", "/health/ready", "/docs"} <= set(listed), index
        for path in listed:
            if "{" in path:
                continue
            status, _, body = http_get(f"http://127.0.0.1:{port}{path}")
            assert status == 200, f"{path}: {status} {body[:300]!r}"
    finally:
        stop_process(process, timeout=30)
        drainer.join(timeout=30)
        assert process.stdout is not None
        process.stdout.close()


# --- the snippet runner (runs in the child interpreter) -------------------------------


def is_loopback(host: object) -> bool:
    if isinstance(host, bytes):
        host = host.decode("ascii", "replace")
    if not isinstance(host, str):
        return False
    if host.lower() in ("localhost", "localhost.", "ip6-localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]").split("%")[0]).is_loopback
    except ValueError:
        return False


def refuse_remote_network(event: str, args: tuple[Any, ...]) -> None:
    """Audit hook: name lookups and connections are allowed to loopback addresses only."""
    if event == "socket.getaddrinfo":
        host = args[0]
        if host is not None and not is_loopback(host):
            msg = f"doc snippets may reach 127.0.0.1 only, not {host!r}"
            raise OSError(msg)
    elif event in ("socket.connect", "socket.sendto"):
        address = args[1] if event == "socket.connect" else args[-1]
        if isinstance(address, tuple) and not is_loopback(address[0]):
            msg = f"doc snippets may reach 127.0.0.1 only, not {address!r}"
            raise OSError(msg)


def is_asgi_app(candidate: object) -> bool:
    if inspect.iscoroutinefunction(candidate):
        return True
    call = getattr(candidate, "__call__", None)  # noqa: B004 - an ASGI app is an async __call__
    return (
        call is not None and not isinstance(candidate, type) and inspect.iscoroutinefunction(call)
    )


LIFESPAN_TIMEOUT = 30.0  # seconds for startup and for shutdown


class Lifespan:
    """The lifespan protocol as uvicorn drives it (``--lifespan auto``).

    An app that raises on the lifespan scope, sends it anything but lifespan messages,
    or returns without answering, does not support it and is served anyway; ``lifespan.startup.failed`` stops the run. The state
    the app sets up is handed to every request scope, as servers do.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.state: dict[str, Any] = {}
        self._inbox: asyncio.Queue[Message] = asyncio.Queue()
        self._answers: asyncio.Queue[Message] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    async def _receive(self) -> Message:
        return await self._inbox.get()

    async def _send(self, message: Message) -> None:
        if not str(message.get("type", "")).startswith("lifespan."):
            # uvicorn refuses it the same way: an app answering lifespan like HTTP does
            # not support lifespan.
            msg = f"unexpected message on the lifespan scope: {message.get('type')!r}"
            raise RuntimeError(msg)
        await self._answers.put(message)

    async def _run(self) -> None:
        scope = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"}}
        with contextlib.suppress(Exception):  # raising on lifespan: not supported
            await self.app({**scope, "state": self.state}, self._receive, self._send)

    async def _exchange(self, event: str) -> None:
        if self._task is None or self._task.done():
            return
        await self._inbox.put({"type": f"lifespan.{event}"})
        answer = asyncio.ensure_future(self._answers.get())
        done, _ = await asyncio.wait(
            {answer, self._task}, timeout=LIFESPAN_TIMEOUT, return_when=asyncio.FIRST_COMPLETED
        )
        if not done:
            msg = f"no answer to lifespan.{event} within {LIFESPAN_TIMEOUT}s"
            raise TimeoutError(msg)
        if answer not in done:
            answer.cancel()
            return  # the app returned: no lifespan support
        message = answer.result()
        if message["type"] != f"lifespan.{event}.complete":
            msg = f"lifespan.{event}: {message}"
            raise RuntimeError(msg)

    async def __aenter__(self) -> ASGIApp:
        self._task = asyncio.create_task(self._run())
        await self._exchange("startup")

        async def app_with_state(scope: Scope, receive: Receive, send: Send) -> None:
            await self.app({**scope, "state": dict(self.state)}, receive, send)

        return app_with_state

    async def __aexit__(self, *exc_info: object) -> None:
        await self._exchange("shutdown")
        if self._task is not None:
            await asyncio.wait({self._task}, timeout=LIFESPAN_TIMEOUT)


async def exercise(app: ASGIApp, path: str) -> int:
    """Lifespan startup, one GET, lifespan shutdown: the response status."""
    import httpx

    async with Lifespan(app) as served:
        transport = httpx.ASGITransport(app=served)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://127.0.0.1:8000"
        ) as client:
            response = await client.get(path)
        return response.status_code


def run_snippet(source: str, *, filename: str, line: int, path: str) -> dict[str, Any]:
    sys.addaudithook(refuse_remote_network)
    code = compile("\n" * line + source, filename, "exec", flags=0, dont_inherit=True)
    # A module of its own, as a file would be: frameworks look up `sys.modules[fn.__module__]`.
    module = types.ModuleType("doc_snippet")
    module.__file__ = filename
    sys.modules[module.__name__] = module
    exec(code, module.__dict__)  # noqa: S102 - running the documentation is the point
    app = module.__dict__.get("app")
    if app is None or not is_asgi_app(app):
        return {"app": False, "status": None}
    return {"app": True, "status": asyncio.run(exercise(app, path))}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Run one documentation snippet read on stdin.")
    parser.add_argument("--filename", required=True)
    parser.add_argument("--line", type=int, required=True)
    parser.add_argument("--get", default="/")
    parser.add_argument("--result", type=Path, required=True)
    options = parser.parse_args(argv)
    source = sys.stdin.read()
    ast.parse(source)  # a syntax error is reported before anything runs
    result = run_snippet(source, filename=options.filename, line=options.line, path=options.get)
    options.result.write_text(json.dumps(result))


if __name__ == "__main__":
    main()
