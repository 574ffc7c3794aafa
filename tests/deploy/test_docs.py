"""docs/deploy.md: every command on the page runs, or is marked as needing a cluster or
a Docker engine, or names the manifest whose command a test runs."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tests.assets.promql import REPO
from tests.support import require_binary

DOC = REPO / "docs" / "deploy.md"
NEEDS = ("# needs a cluster", "# needs a Docker engine")
_BLOCK = re.compile(r"```bash\n(.*?)```", re.DOTALL)


def blocks() -> list[list[str]]:
    return [block.strip().splitlines() for block in _BLOCK.findall(DOC.read_text())]


def runnable() -> list[str]:
    commands: list[str] = []
    for lines in blocks():
        if lines[0] in NEEDS or lines[0].startswith("# tested: "):
            continue
        commands.extend(line for line in lines if line and not line.startswith("#"))
    return commands


def test_every_block_is_run_or_marked() -> None:
    found = blocks()
    assert len(found) >= 6
    for lines in found:
        if lines[0].startswith("# tested: "):
            source = REPO / lines[0].removeprefix("# tested: ")
            text = " ".join(source.read_text().split())
            for line in lines[1:]:
                assert " ".join(line.split()) in text, f"{line!r} is not in {source}"
    # The sections come in the order of the issue.
    headings = re.findall(r"^## \d\. (.+)$", DOC.read_text(), re.MULTILINE)
    assert [h.split()[0] for h in headings] == [
        "Compose:",
        "Several",
        "Kubernetes",
        "The",
        "Long-term",
    ]


def test_readme_links_the_page() -> None:
    assert "(docs/deploy.md)" in (REPO / "README.md").read_text()


@pytest.mark.realparts
@pytest.mark.parametrize("command", runnable())
def test_command_on_the_page_succeeds(command: str, tmp_path: Path) -> None:
    if command.startswith("promtool"):
        require_binary("promtool")
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    if command.startswith("python scripts/gen_k8s.py") and "--check" not in command:
        # Writing is checked in a copy: the real generated files stay as committed.
        command = f"{command} --output-dir {tmp_path}"
    result = subprocess.run(
        shlex.split(command),
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
