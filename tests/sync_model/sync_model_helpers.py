"""Shared pieces of the sync-model tests: vendor targets on the sandbox fakes, fault plans, kills.

A :class:`Target` is one destination on a real vendor fake (Criteo contact list, Yandex.Audience
file segment) reached over HTTP through the real hook and the real chunk sender. Faults are
injected into the fake (``fake.faults``) at a chosen chunk by :class:`FaultAtChunk`, which only
decides *when* a fault is armed; every request still goes to the fake.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from airflow_audience_provider.core.ratelimit import RateLimiter
from airflow_audience_provider.core.transport import RetryPolicy, Timeouts
from airflow_audience_provider.identifiers import SyncOptions, get_rule, sync_contact_list

READ_TIMEOUT = 0.4
#: A "slow" answer: longer than the read timeout, so the client gives up while the fake still applies it.
SLOW = 1.0
#: How long an abandoned request may still land (the fakes apply a slow request after SLOW seconds).
SETTLE = 2.0
ATTEMPTS = 3
LEASE_TTL = 4.0
LEASE_SKEW = 1.0

KILL_CHILD = Path(__file__).with_name("kill_child.py")


def sha(email: str) -> str:
    return hashlib.sha256(email.strip().lower().encode()).hexdigest()


def email(i: int) -> str:
    return f"user{i}@example.com"


def make_input(start: int, size: int, duplicates: int = 0, invalid: int = 0) -> list[str]:
    """Rows of an export: ``size`` distinct e-mails from ``start``, case-variant duplicates, invalid rows."""
    rows = [email(i) for i in range(start, start + size)]
    rows += [email(i).upper() for i in range(start, start + min(duplicates, size))]
    rows += [f"not-an-email-{i}" for i in range(invalid)]
    return rows


def expected(rows: list[str]) -> set[str]:
    return {sha(r) for r in rows if "@" in r}


def options(**kw: Any) -> SyncOptions:
    base: dict[str, Any] = {
        "allow_mass_removal": True,
        "max_invalid_share": 0.5,
        "lease_timeout": 30.0,
        "lease_poll_interval": 0.1,
        "lease_ttl": LEASE_TTL,
        "max_clock_skew": LEASE_SKEW,
        "progress_every_seconds": 3600,
    }
    base.update(kw)
    return SyncOptions(**base)


def wait_quiet(fake: Any, timeout: float = 15.0) -> None:
    """Wait until the fake answered every request it will answer (slow ones land late)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pending = [
            r
            for r in fake.requests
            if (r["status"] is None and r.get("fault") != "drop" and not r.get("applied"))
            or (r.get("fault") == "late" and not r.get("applied"))
        ]
        if not pending:
            return
        time.sleep(0.05)
    raise AssertionError(f"{fake.name} still has requests in flight after {timeout} s")


class Target:
    """One destination on a vendor fake."""

    vendor = ""
    fault_prefix = ""
    clear_prefix: str | None = None
    min_size = 1

    def __init__(self, fake: Any, snapshot_base: Path) -> None:
        self.fake = fake
        self.snapshot_base = snapshot_base
        self.hooks: list[Any] = []

    @property
    def rule(self) -> Any:
        raise NotImplementedError

    def hook_class(self) -> Any:
        raise NotImplementedError

    def hook(self) -> Any:
        """A hook on the fake with short timeouts and retry waits and a private rate limiter."""
        hook = self.hook_class()(
            timeouts=Timeouts(connect=5, read=READ_TIMEOUT),
            retry=RetryPolicy(max_attempts=ATTEMPTS, backoff_initial=0.01, backoff_max=0.05, max_retry_after=5),
        )
        transport = hook.get_conn()
        transport.limiter = RateLimiter()
        transport.settle_seconds = SETTLE
        self.hooks.append(hook)
        return hook

    def sender(self, hook: Any) -> Any:
        raise NotImplementedError

    def members(self) -> set[str]:
        raise NotImplementedError

    @property
    def key(self) -> str:
        raise NotImplementedError

    def child_args(self) -> dict[str, Any]:
        raise NotImplementedError

    def close(self) -> None:
        for hook in self.hooks:
            hook.get_conn().close()
        self.hooks.clear()

    def sync(self, rows: list[str], mode: str, sender: Any | None = None, **kw: Any) -> dict[str, Any]:
        """One run with the real hook and chunk sender."""
        hook = self.hook()
        return sync_contact_list(
            rows,
            self.rule,
            sender if sender is not None else self.sender(hook),
            destination_key=self.key,
            snapshot_base=self.snapshot_base,
            mode=mode,
            options=options(**kw),
        )


class CriteoTarget(Target):
    vendor = "criteo"

    def __init__(self, fake: Any, snapshot_base: Path) -> None:
        super().__init__(fake, snapshot_base)
        self.segment_id = str(fake.add_segment("model", retailer_id="311")["id"])
        prefix = self.hook()._prefix()
        self.fault_prefix = f"{prefix}/audience-segments/{self.segment_id}"
        self.clear_prefix = self.fault_prefix + "/contact-list/clear"

    @property
    def rule(self) -> Any:
        return get_rule("criteo", "email").with_options(max_ids_per_chunk=20)

    @property
    def key(self) -> str:
        return f"retail_media-{self.segment_id}"

    def hook_class(self) -> Any:
        from airflow_audience_provider.hooks.criteo import CriteoHook

        return CriteoHook

    def sender(self, hook: Any) -> Any:
        from airflow_audience_provider.operators.senders.criteo import CriteoChunkSender

        return CriteoChunkSender(hook, self.segment_id)

    def members(self) -> set[str]:
        return self.fake.members(self.segment_id)

    def child_args(self) -> dict[str, Any]:
        return {"vendor": "criteo", "segment_id": self.segment_id}


class YandexTarget(Target):
    vendor = "yandex_audience"
    min_size = 100

    def __init__(self, fake: Any, snapshot_base: Path) -> None:
        super().__init__(fake, snapshot_base)
        fake.configure(processing_seconds=0.05, writes_per_minute=None, writes_per_hour=None, writes_per_day=None)
        self.segment_id: int | None = None
        self.fault_prefix = "/v1/management/segment"

    @property
    def rule(self) -> Any:
        return get_rule("yandex_audience", "email").with_options(max_ids_per_chunk=60)

    @property
    def key(self) -> str:
        return "model-segment"

    def hook_class(self) -> Any:
        from airflow_audience_provider.hooks.yandex_audience import YandexAudienceHook

        return YandexAudienceHook

    def sender(self, hook: Any) -> Any:
        from airflow_audience_provider.operators.senders.yandex_audience import YandexAudienceSegmentSender

        sender = YandexAudienceSegmentSender(hook, "model segment", "crm", segment_id=self.segment_id)
        if self.segment_id is None:
            sender.on_created = lambda seg: setattr(self, "segment_id", seg["id"])
        return sender

    def members(self) -> set[str]:
        assert self.segment_id is not None
        return set(self.fake.segment_values(self.segment_id))

    def child_args(self) -> dict[str, Any]:
        return {"vendor": "yandex_audience", "segment_id": self.segment_id}


class ThroughCall:
    """A chunk sender whose four operations all go through ``self._call(method, *args)``; it paces
    and settles as the sender it wraps (``self.inner``)."""

    inner: Any

    def _call(self, method: str, *args: Any) -> Any:
        raise NotImplementedError

    @property
    def send_concurrency(self) -> int:
        return int(self.inner.send_concurrency)

    @property
    def transport(self) -> Any:
        return self.inner.transport

    @property
    def remote_id(self) -> str | None:
        return self.inner.remote_id

    def unsettled_until(self) -> float:
        return float(self.inner.unsettled_until())

    def landing_window(self) -> float:
        return float(self.inner.landing_window())

    def add(self, chunk: Any) -> Any:
        return self._call("add", chunk)

    def remove(self, chunk: Any) -> Any:
        return self._call("remove", chunk)

    def replace(self, chunk: Any) -> Any:
        return self._call("replace", chunk)

    def clear(self) -> None:
        self._call("clear")


@dataclass
class FaultAtChunk(ThroughCall):
    """Arms faults in the fake just before the sender's n-th call (1-based), then calls the real sender.

    With several chunks in flight (``send_concurrency``), a call with faults goes alone: it waits
    for the calls in flight to end and no other starts before it ends, so its faults hit its own
    requests.

    :param plan: call number -> list of ``fake.faults.inject`` keyword dicts; a dict of kind
        ``short_count`` arms :func:`arm_short_count` instead (the next amendment answers short).
    """

    inner: Any
    fake: Any
    plan: dict[int, list[dict[str, Any]]] = field(default_factory=dict)
    calls: int = 0
    lock: threading.Condition = field(default_factory=threading.Condition)
    in_flight: int = 0
    alone: bool = False

    def _call(self, method: str, *args: Any) -> Any:
        with self.lock:
            self.calls += 1
            faults = self.plan.get(self.calls, [])
            self.lock.wait_for(lambda: not self.alone)
            if faults:
                self.alone = True
                self.lock.wait_for(lambda: self.in_flight == 0)
            self.in_flight += 1
            for fault in faults:
                if fault["kind"] == "short_count":
                    arm_short_count(self.fake, fault["dropped"])
                else:
                    self.fake.faults.inject(**fault)
        try:
            return getattr(self.inner, method)(*args)
        finally:
            with self.lock:
                self.in_flight -= 1
                if faults:
                    self.alone = False
                self.lock.notify_all()


def arm_short_count(fake: Any, dropped: int) -> None:
    """The fake's next add/remove answer leaves its last ``dropped`` identifiers out, unapplied and uncounted."""
    fake.short_count_amendments(dropped=dropped)


def disarm_short_counts(fake: Any) -> None:
    """Forget short answers armed but not given (the run ended before another amendment)."""
    pending = getattr(fake, "_short_answers", None)
    if pending is not None:
        with fake.lock:
            pending.clear()


def run_killed(target: Target, rows: list[str], mode: str, kill_at: int, after_send: bool, concurrency: int = 1) -> int:
    """Run one sync in a subprocess that SIGKILLs itself at its ``kill_at``-th sender call.

    ``after_send``: the request was answered (the vendor applied it) but the run had not recorded
    it; otherwise it dies just before sending. ``concurrency``: chunks in flight at once (the other
    one may be anywhere in its request when the kill comes). Returns the exit code (-9 when the
    kill happened).
    """
    args = {
        **target.child_args(),
        "concurrency": concurrency,
        "rows": rows,
        "mode": mode,
        "kill_at": kill_at,
        "after_send": after_send,
        "snapshot_base": str(target.snapshot_base),
        "read_timeout": READ_TIMEOUT,
        "attempts": ATTEMPTS,
        "settle": SETTLE,
        "lease_ttl": LEASE_TTL,
        "lease_skew": LEASE_SKEW,
    }
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parent), env.get("PYTHONPATH", "")])
    proc = subprocess.run(
        [sys.executable, str(KILL_CHILD)],
        input=json.dumps(args).encode(),
        env=env,
        capture_output=True,
        timeout=120,
        check=False,
    )
    if proc.returncode not in (-9, 0, 1):
        raise AssertionError(f"the child failed unexpectedly ({proc.returncode}): {proc.stderr.decode()[-2000:]}")
    return proc.returncode


def in_threads(*jobs: Callable[[], Any]) -> list[Any]:
    """Start the jobs together; return each one's result or exception."""
    results: list[Any] = [None] * len(jobs)
    barrier = threading.Barrier(len(jobs))

    def work(i: int, job: Callable[[], Any]) -> None:
        barrier.wait()
        try:
            results[i] = job()
        except Exception as exc:
            results[i] = exc

    threads = [threading.Thread(target=work, args=(i, job)) for i, job in enumerate(jobs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=180)
    return results
