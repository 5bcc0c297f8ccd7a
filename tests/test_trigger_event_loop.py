"""No trigger of this provider blocks the triggerer's event loop.

``tests/loop_probe.py`` runs each vendor's trigger to its first event in a fresh process (cold imports,
as in a triggerer that has loaded Airflow and the trigger classes but no hook yet) and records every
blocking call made on the loop's thread from this package's code: a first-time module import, a file
opened, DNS, a blocking connect, ``time.sleep``, a file lock. A hook built on the loop imported the
vendor module there (about half a second: the triggerer's "async thread was blocked" warning).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

PROBE = Path(__file__).with_name("loop_probe.py")


def test_no_trigger_blocks_the_event_loop():
    done = subprocess.run(
        [sys.executable, str(PROBE)], check=False, capture_output=True, text=True, timeout=600, cwd=PROBE.parent.parent
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    # every trigger reached the vendor: the live Criteo segment, unknown objects elsewhere
    assert report["events"] == {
        "criteo": "success",
        "lytics": "error",
        "segment": "error",
        "yandex_audience": "error",
    }
    assert report["blocking"] == []
