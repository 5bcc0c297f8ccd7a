"""A lease taken over from a run that died is not marked released before that run's requests can no longer land.

A run stopped (or failing) during the wait would otherwise tell the next run that nothing of the
dead run is in flight; left to expire, its record carries the dead run's landing window, so the
next run waits at least as long as this one had to.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
from contact_helpers import emails

from airflow_audience_provider.identifiers import DestinationLease, SyncOptions, get_rule, sync_contact_list
from airflow_audience_provider.identifiers.errors import ContactListError
from airflow_audience_provider.identifiers.testing import RecordingSender


def dead_holder(directory: Path, now: list[float], window: float) -> Any:
    """The record of a run that took the lease with ``window`` and was killed; ``now`` moved past expiry and skew."""
    dead = DestinationLease(directory, ttl=30, max_clock_skew=5, clock=lambda: now[0], landing_window=window)
    assert dead.try_acquire()
    dead._stop.set()  # killed: no heartbeat, no release
    record = dead.current()
    now[0] = record.expires_at + 6
    return record


def test_a_takeover_released_before_the_safe_moment_is_left_to_expire(tmp_path: Path) -> None:
    now = [1000.0]
    record = dead_holder(tmp_path / "lease", now, window=400)
    taker = DestinationLease(tmp_path / "lease", ttl=30, max_clock_skew=5, clock=lambda: now[0], landing_window=24)
    assert taker.try_acquire() and taker.took_over == record
    safe_at = taker.takeover_safe_at(record)
    assert safe_at == record.expires_at + 5 + 400
    taker.release()  # stopped during the wait
    left = taker.current()
    assert left is not None and left.token == record.token + 1 and not left.released
    assert left.landing_window == 400  # the dead run's, carried over
    now[0] = left.expires_at + 6
    successor = DestinationLease(tmp_path / "lease", ttl=30, max_clock_skew=5, clock=lambda: now[0], landing_window=24)
    assert successor.abandoned(left) and successor.takeover_safe_at(left) >= safe_at


def test_a_takeover_released_after_the_safe_moment_is_released(tmp_path: Path) -> None:
    now = [1000.0]
    record = dead_holder(tmp_path / "lease", now, window=40)
    taker = DestinationLease(tmp_path / "lease", ttl=300, max_clock_skew=5, clock=lambda: now[0], landing_window=24)
    assert taker.try_acquire()
    now[0] = taker.takeover_safe_at(record)
    taker.may_send(reach=5, landing=900)  # a longer request later does not move the moment
    taker.release()
    left = taker.current()
    assert left is not None and left.released


def test_a_sync_stopped_before_the_safe_moment_leaves_the_taken_over_lease_unreleased(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from airflow_audience_provider.identifiers import lease as lease_module
    from airflow_audience_provider.identifiers.sync import lease_for

    rule = get_rule("criteo", "email").with_options(max_ids_per_chunk=10)
    dead = lease_for(rule, "seg", tmp_path)
    dead.landing_window = 7200.0
    assert dead.try_acquire()
    dead._stop.set()
    dead._heartbeat.join()
    record = dead.current()
    offset = record.expires_at + dead.max_clock_skew + 1 - lease_module.host_clock()
    clock = lease_module.host_clock
    monkeypatch.setattr(lease_module, "host_clock", lambda: clock() + offset)
    cancel = threading.Event()
    original = lease_module.create_exclusive

    def create_then_stop(*args: Any, **kwargs: Any) -> bool:
        created = original(*args, **kwargs)
        cancel.set()  # the task is stopped once it holds the lease, before the dead run's requests settled
        return created

    monkeypatch.setattr(lease_module, "create_exclusive", create_then_stop)
    sender = RecordingSender()
    options = SyncOptions(allow_mass_removal=True, allow_empty=True, lease_timeout=0, cancel=cancel)
    with pytest.raises(ContactListError):
        sync_contact_list(emails(20), rule, sender, destination_key="seg", snapshot_base=tmp_path, options=options)
    assert sender.calls == []
    left = lease_for(rule, "seg", tmp_path).current()
    assert left is not None and left.token == record.token + 1 and not left.released
    assert left.landing_window == 7200.0
