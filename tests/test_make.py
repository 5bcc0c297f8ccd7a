"""The command index: `make help` lists every target of the Makefile, and the docs name only real ones."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
TARGETS = (
    "demo",
    "test",
    "test-live",
    "test-live-celery",
    "test-live-oldest",
    "test-ui",
    "test-matrix",
    "bench",
    "soak",
    "docs",
    "lint",
    "dist",
)


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_help_lists_every_target():
    done = subprocess.run(["make", "-s", "help"], cwd=REPO, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    listed = {line.split()[1] for line in done.stdout.splitlines() if line.strip().startswith("make ")}
    assert set(TARGETS) <= listed, sorted(set(TARGETS) - listed)
    for line in done.stdout.splitlines():
        if line.strip().startswith("make "):
            assert len(line.split(None, 2)) == 3, f"target without a description: {line!r}"


def _makefile_targets() -> set[str]:
    text = (REPO / "Makefile").read_text(encoding="utf-8")
    phony = re.search(r"^\.PHONY:(.*)$", text, re.M)
    assert phony, "the Makefile declares its targets .PHONY"
    return set(phony.group(1).split())


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_help_lists_every_phony_target():
    done = subprocess.run(["make", "-s", "help"], cwd=REPO, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    listed = {line.split()[1] for line in done.stdout.splitlines() if line.strip().startswith("make ")}
    assert listed == _makefile_targets(), (sorted(_makefile_targets() - listed), sorted(listed - _makefile_targets()))


def test_docs_name_only_targets_the_makefile_has():
    targets = _makefile_targets()
    pages = [REPO / "README.md", *(p for p in (REPO / "docs").rglob("*.rst") if "_build" not in p.parts)]
    named = {
        (page.relative_to(REPO).as_posix(), target)
        for page in pages
        for target in re.findall(r"`+make ([a-z][a-z-]*)", page.read_text(encoding="utf-8"))
    }
    assert named, "the README names make targets"
    assert not {(page, target) for page, target in named if target not in targets}
