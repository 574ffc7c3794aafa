"""scripts/run.sh start (``make stack-up``): a clear message for each missing piece of Docker.

Docker cannot run here, so `docker` is either absent from PATH or a small stand-in
executable; the script itself is the real one.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "run.sh"


def bin_dir(tmp_path: Path, **executables: str) -> Path:
    """A PATH directory with the tools the script needs, plus `executables` (name → body)."""
    directory = tmp_path / "bin"
    directory.mkdir()
    for tool in ("dirname",):
        found = shutil.which(tool)
        if found is None:
            pytest.skip(f"{tool} is not installed")
        (directory / tool).symlink_to(found)
    for name, body in executables.items():
        path = directory / name
        path.write_text("#!/bin/sh\n" + body)
        path.chmod(0o755)
    return directory


def start(path: Path) -> subprocess.CompletedProcess[str]:
    bash = shutil.which("bash")
    assert bash is not None
    return subprocess.run(
        [bash, str(SCRIPT), "start"],
        env={"PATH": str(path), "HOME": str(path)},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_no_docker_on_path(tmp_path: Path) -> None:
    result = start(bin_dir(tmp_path))
    assert result.returncode == 1
    assert "Docker is not installed" in result.stderr
    assert "compose plugin" not in result.stderr


def test_docker_without_the_compose_plugin(tmp_path: Path) -> None:
    # What docker prints when the plugin is missing: an unknown subcommand.
    docker = (
        'if [ "$1" = compose ]; then\n'
        "  echo \"docker: 'compose' is not a docker command.\" >&2\n"
        "  exit 1\n"
        "fi\n"
        "exit 0\n"
    )
    result = start(bin_dir(tmp_path, docker=docker))
    assert result.returncode == 1
    assert "the compose plugin is not" in result.stderr
    assert "Docker is not installed" not in result.stderr


def test_docker_with_the_compose_plugin_starts_the_stack(tmp_path: Path) -> None:
    calls = tmp_path / "calls"
    docker = f'echo "$*" >> {calls}\nexit 0\n'
    result = start(bin_dir(tmp_path, docker=docker))
    assert result.returncode == 0, result.stderr
    assert calls.read_text().splitlines() == [
        "compose version",
        "compose -f compose/docker-compose.yaml --profile otel up -d",
    ]
