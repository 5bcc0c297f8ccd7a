"""A heartbeat renewal that fails must not overwrite a later successful renewal made by ``may_send``.

The interleaving is forced with events: one heartbeat beat whose storage write fails, then a
``may_send`` renewal that succeeds, then the heartbeat records its failure (where it does so
outside the lease's lock, as it once did). The newest renewal succeeded, so the next chunk may go.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
from contact_helpers import break_lease_writes

from airflow_audience_provider.identifiers.lease import DestinationLease

HEARTBEAT = "contact-list-lease"  # the heartbeat thread's name


class OneBeat(threading.Event):
    """The heartbeat's pause: the first returns at once (one beat), every later one lasts until release."""

    def __init__(self) -> None:
        super().__init__()
        self.beaten = threading.Event()

    def wait(self, timeout: float | None = None) -> bool:
        if not self.beaten.is_set():
            self.beaten.set()
            return self.is_set()
        return super().wait()


class ObservedLease(DestinationLease):
    """A lease that tells the test when a failed renewal is recorded, and lets the test go first
    when that happens outside its lock."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._stop = OneBeat()
        self.failure_seen = threading.Event()
        self.may_send_done = threading.Event()
        self.failure_recorded = threading.Event()

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "_renew_error" and value is not None and threading.current_thread().name == HEARTBEAT:
            self.failure_seen.set()
            if not self._lock.locked():  # recorded outside the lock: may_send can run first
                self.may_send_done.wait(10)
            super().__setattr__(name, value)
            self.failure_recorded.set()
            return
        super().__setattr__(name, value)


def test_a_failed_heartbeat_does_not_undo_a_later_may_send_renewal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from airflow_audience_provider.identifiers import lease as lease_module

    real_write = lease_module.write_atomic

    def write(location: Any, data: bytes, **kw: Any) -> None:
        if threading.current_thread().name == HEARTBEAT:
            raise OSError("the storage did not answer")
        real_write(location, data, **kw)

    monkeypatch.setattr(lease_module, "write_atomic", write)
    lease = ObservedLease(tmp_path / "lease", ttl=300, max_clock_skew=5, clock=lambda: 1000.0, landing_window=20)
    assert lease.try_acquire()  # starts the heartbeat: one beat, whose write fails
    try:
        assert lease.failure_seen.wait(10)
        lease.may_send(reach=10, landing=400)  # a longer window: rewritten (renewed) before the request
        lease.may_send_done.set()
        assert lease.failure_recorded.wait(10)
        lease.check()  # the newest renewal succeeded: the next chunk may go
    finally:
        lease.release()


def test_a_failed_renewal_stops_chunks_until_one_succeeds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from airflow_audience_provider.identifiers.lease import LeaseLostError

    broken = break_lease_writes(monkeypatch)
    lease = DestinationLease(tmp_path / "lease", ttl=300, max_clock_skew=5, clock=lambda: 1000.0, landing_window=20)
    lease._stop = OneBeat()
    lease._stop.beaten.set()  # no heartbeat beat: the renewals below are the only ones
    assert lease.try_acquire()
    try:
        broken.set()
        with pytest.raises(OSError):
            lease.renew()
        with pytest.raises(LeaseLostError, match="could not be renewed"):
            lease.check()
        broken.clear()
        lease.may_send(reach=10, landing=400)
        lease.check()
    finally:
        broken.clear()
        lease.release()
