"""Run each vendor trigger to its first event on a watched event loop, in a fresh process like a triggerer.

A blocking call is one of these audit events raised on the loop's thread while a trigger runs: a
module imported for the first time, a file opened, a DNS lookup, a blocking socket connect, a
``time.sleep``, a process started or a file lock taken. Worker threads (``asyncio.to_thread``) may do
all of them. Each is charged to the nearest calling frame of this package (``blocking``) or of Airflow
(``airflow_blocking``: e.g. the lazy imports of its async connection lookup, once per process).
Prints one JSON object: ``{"events": {trigger: status}, "blocking": [[trigger, event, detail]], ...}``.
Run by ``tests/test_trigger_event_loop.py``.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import threading
import time
from typing import Any

BLOCKING = {
    "import",
    "open",
    "socket.getaddrinfo",
    "socket.gethostbyname",
    "socket.connect",
    "time.sleep",
    "subprocess.Popen",
    "os.system",
    "fcntl.flock",
    "os.mkdir",
    "os.listdir",
    "os.scandir",
}

_watched: dict[str, Any] = {"thread": None, "trigger": ""}
blocking: list[list[str]] = []


airflow_blocking: list[list[str]] = []
_OURS = f"{os.sep}airflow_audience_provider{os.sep}"
_AIRFLOW = f"{os.sep}site-packages{os.sep}airflow{os.sep}"


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if event not in BLOCKING or _watched["thread"] != threading.get_ident():
        return
    # Whose call is it: the nearest frame of this package or of Airflow (its lazy imports are its own).
    frame = sys._getframe(1)
    while frame is not None:
        filename = frame.f_code.co_filename
        if _OURS in filename or _AIRFLOW in filename:
            break
        frame = frame.f_back
    record = [_watched["trigger"], event, str(args[0])[:200] if args else ""]
    (blocking if frame is not None and _OURS in frame.f_code.co_filename else airflow_blocking).append(record)


def main() -> None:
    # What a triggerer process has loaded before it runs any trigger: Airflow and the trigger classes.
    import airflow.jobs.triggerer_job_runner  # noqa: F401

    from airflow_audience_provider.sandbox.server import SandboxServer
    from airflow_audience_provider.triggers.criteo import CriteoComputationWindowTrigger
    from airflow_audience_provider.triggers.lytics import LyticsReevaluationTrigger
    from airflow_audience_provider.triggers.segment import SegmentAudienceComputedTrigger
    from airflow_audience_provider.triggers.yandex_audience import YandexAudienceSegmentProcessedTrigger

    sys.addaudithook(_audit)
    events: dict[str, str] = {}
    with SandboxServer(processing_seconds=0.2) as server:
        for name, url in server.connections().items():
            os.environ[f"AIRFLOW_CONN_{name.upper()}"] = url
        deadline = time.time() + 5
        segment = server.fake("criteo").segments[0]["id"]
        triggers = {
            # statistics confirmation: an OAuth token and an HTTP read
            "criteo": CriteoComputationWindowTrigger(
                uploaded_at="2026-01-01T00:00:00Z", segment_id=segment, min_identifiers=0, poll_interval=0.05
            ),
            "lytics": LyticsReevaluationTrigger(
                "lytics_default",
                {"segment_id": "missing", "requested_at": "2026-01-01T00:00:00Z"},
                poll_interval=0.05,
                deadline=deadline,
            ),
            "segment": SegmentAudienceComputedTrigger(
                "segment_default", {"audience_id": "missing"}, poll_interval=0.05, deadline=deadline
            ),
            "yandex_audience": YandexAudienceSegmentProcessedTrigger(
                "yandex_audience_default", {"segment_id": 1}, poll_interval=0.05, deadline=deadline
            ),
        }
        for name, trigger in triggers.items():

            async def first_event(trigger: Any = trigger, name: str = name) -> dict[str, Any]:
                _watched["thread"], _watched["trigger"] = threading.get_ident(), name
                try:
                    return (await anext(trigger.run())).payload
                finally:
                    _watched["thread"] = None

            events[name] = asyncio.run(first_event())["status"]
    print(json.dumps({"events": events, "blocking": blocking, "airflow_blocking": airflow_blocking}))


if __name__ == "__main__":
    main()
