"""The live test's triggerer: ``python live_loop_cpu.py triggerer`` runs ``airflow triggerer`` with
every asyncio event-loop step timed in its thread's CPU time.

A step that uses at least ``AUDIENCE_LIVE_LOOP_CPU_SECONDS`` of CPU is appended to
``AUDIENCE_LIVE_LOOP_LOG`` with the task that ran it. asyncio's debug mode reports a step's wall
time, which on a loaded machine includes the time the thread waited for a CPU; the thread's CPU
time is what the step itself spent holding the loop. The trigger runner is forked from this
process, so it inherits the timing.
"""

from __future__ import annotations

import asyncio.events
import os
import sys
import time
from asyncio.base_events import _format_handle  # type: ignore[attr-defined]
from datetime import UTC, datetime
from typing import Any


def install(path: str, floor: float) -> None:
    run = asyncio.events.Handle._run

    def timed_run(handle: Any) -> None:
        started = time.thread_time()
        try:
            run(handle)
        finally:
            used = time.thread_time() - started
            if used >= floor:
                line = f"{datetime.now(UTC).isoformat()} pid={os.getpid()} cpu={used:.3f} {_format_handle(handle)}\n"
                with open(path, "a", encoding="utf-8") as log:
                    log.write(line)

    asyncio.events.Handle._run = timed_run  # type: ignore[method-assign]


if __name__ == "__main__":
    if os.environ.get("AUDIENCE_LIVE_LOOP_LOG"):
        install(os.environ["AUDIENCE_LIVE_LOOP_LOG"], float(os.environ.get("AUDIENCE_LIVE_LOOP_CPU_SECONDS", "0.02")))
    from airflow.__main__ import main

    sys.argv[0] = "airflow"
    sys.exit(main())
