"""The command index: `make help` lists every target the README and the release checklist name."""

from __future__ import annotations

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
