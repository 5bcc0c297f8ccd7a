"""A worker that runs one contact-list sync and SIGKILLs itself at a chosen sender call.

Started by ``sync_model_helpers.run_killed`` with a JSON job on stdin; the sandbox connection comes
from the inherited ``AIRFLOW_CONN_*`` variables. The kill is abrupt: no ``finally``, no lease
release, no journal update; exactly what a worker killed by the OOM killer or a lost node leaves.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
from typing import Any


def main() -> int:
    job = json.loads(sys.stdin.read())
    from airflow_audience_provider.core.ratelimit import RateLimiter
    from airflow_audience_provider.core.transport import RetryPolicy, Timeouts
    from airflow_audience_provider.identifiers import SyncOptions, get_rule, sync_contact_list

    timeouts = Timeouts(connect=5, read=job["read_timeout"])
    retry = RetryPolicy(max_attempts=job["attempts"], backoff_initial=0.01, backoff_max=0.05, max_retry_after=5)
    if job["vendor"] == "criteo":
        from airflow_audience_provider.hooks.criteo import CriteoHook
        from airflow_audience_provider.operators.senders.criteo import CriteoChunkSender

        hook: Any = CriteoHook("criteo_default", timeouts=timeouts, retry=retry)
        inner: Any = CriteoChunkSender(hook, job["segment_id"])
        rule = get_rule("criteo", "email").with_options(max_ids_per_chunk=20)
        key = f"retail_media-{job['segment_id']}"
    else:
        from airflow_audience_provider.hooks.yandex_audience import YandexAudienceHook
        from airflow_audience_provider.operators.senders.yandex_audience import YandexAudienceSegmentSender

        hook = YandexAudienceHook(timeouts=timeouts, retry=retry)
        inner = YandexAudienceSegmentSender(hook, "model segment", "crm", segment_id=job["segment_id"])
        rule = get_rule("yandex_audience", "email").with_options(max_ids_per_chunk=60)
        key = "model-segment"
    hook.get_conn().limiter = RateLimiter()
    hook.get_conn().settle_seconds = job["settle"]
    calls = [0]
    lock = threading.Lock()

    def call(method: str, *args: Any) -> Any:
        with lock:  # several chunks may be in flight (send_concurrency)
            calls[0] += 1
            number = calls[0]
        if number == job["kill_at"] and not job["after_send"]:
            os.kill(os.getpid(), signal.SIGKILL)
        result = getattr(inner, method)(*args)
        if number == job["kill_at"]:
            os.kill(os.getpid(), signal.SIGKILL)
        return result

    class KillingSender:
        send_concurrency = int(job.get("concurrency", 1))
        transport = None  # the child run's writes are not guarded by its lease

        @property
        def remote_id(self) -> str | None:
            return inner.remote_id

        def unsettled_until(self) -> float:
            return 0.0  # the child run does not wait for its own unanswered requests

        def landing_window(self) -> float:
            return 0.0

        def add(self, chunk: Any) -> Any:
            return call("add", chunk)

        def remove(self, chunk: Any) -> Any:
            return call("remove", chunk)

        def replace(self, chunk: Any) -> Any:
            return call("replace", chunk)

        def clear(self) -> None:
            call("clear")

    options = SyncOptions(
        allow_mass_removal=True,
        max_invalid_share=0.5,
        lease_timeout=30,
        lease_poll_interval=0.1,
        lease_ttl=job["lease_ttl"],
        max_clock_skew=job["lease_skew"],
    )
    try:
        sync_contact_list(
            job["rows"],
            rule,
            KillingSender(),
            destination_key=key,
            snapshot_base=job["snapshot_base"],
            mode=job["mode"],
            options=options,
        )
    except Exception as exc:
        print(f"run failed: {type(exc).__name__}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
