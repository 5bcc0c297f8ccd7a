"""A contact-list upload that does not defer, meeting the lease of a run that died.

Before any request (even the look-up of the segment and the clean-up of drafts) it waits in the
worker until the dead run's requests can no longer land, with the lease held and renewed; the
engine then has nothing left to wait. Time is the clock every lease is judged by
(``lease.host_clock``), shifted so the safe moment is a moment away.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import datetime

import pytest
from yandex_audience_helpers import emails, upload_operator

DEAD_WINDOW = 400.0  # the dead run's recorded landing window: longer than the upload's own
AHEAD = 1.0  # seconds between the takeover and the safe moment


@pytest.fixture
def shift(monkeypatch):
    """Seconds added to the clock of every lease (and so of every wait after a takeover)."""
    from airflow_audience_provider.identifiers import lease as lease_module

    offset = [0.0]
    monkeypatch.setattr(lease_module, "host_clock", lambda: time.time() + offset[0])
    return offset


def upload(snapshots, **overrides):
    return upload_operator(snapshots, emails(150), "takeover", **overrides)


def lease_of(op, hook):
    from airflow_audience_provider.identifiers.sync import lease_for

    return lease_for(op.rule(), op.destination_key(hook), op.snapshot_base)


def dead_run(op, hook, shift, window=DEAD_WINDOW, ahead=AHEAD):
    """A run that took the lease with a long landing window and was killed: never released.

    Moves the leases' clock to ``ahead`` seconds before its requests can no longer land, with the
    taker's window (past its expiry plus skew: it can be taken over now). Returns the safe moment.
    """
    dead = lease_of(op, hook)
    dead.landing_window = window
    assert dead.try_acquire()
    dead._stop.set()  # killed: no heartbeat, no release
    dead._heartbeat.join()
    record = dead.current()
    assert record is not None and not record.released
    own = hook.get_conn().landing_window()
    assert 0 < own < window
    safe_at = record.expires_at + dead.max_clock_skew + window
    shift[0] = safe_at - ahead - time.time()
    assert lease_of(op, hook).abandoned(record)
    return record, safe_at


def logged_at(entry) -> float:
    return datetime.fromisoformat(entry["time"].replace("Z", "+00:00")).timestamp()


def test_a_takeover_waits_before_the_first_request_not_after_prepare(ya, hook, context, snapshots, shift, caplog):
    op = upload(snapshots)
    record, safe_at = dead_run(op, hook, shift)
    ya.clear_requests()

    with caplog.at_level(logging.INFO):
        result = op.execute(context)

    assert result["sent"] == 150 and result["action"] == "created"
    requests = ya.requests
    assert requests
    # The log's times are the host's clock (to the millisecond, truncated); the safe moment is by
    # the leases' clock, ``shift`` ahead of it.
    first = min(logged_at(r) for r in requests)
    assert first + shift[0] >= safe_at - 0.001, (first + shift[0] - safe_at, requests[0]["path"])
    messages = [r.getMessage() for r in caplog.records]
    assert any("Took over the expired lease" in m for m in messages)
    assert not any("before sending, until requests" in m for m in messages)  # the engine did not wait again
    after = lease_of(op, hook).current()
    assert after is not None and after.token == record.token + 1 and after.released


def test_on_kill_ends_the_wait_with_nothing_sent_and_the_lease_unreleased(
    ya, hook, context, snapshots, shift, monkeypatch
):
    from airflow_audience_provider.core.errors import AudienceError
    from airflow_audience_provider.identifiers import lease as lease_module

    op = upload(snapshots)
    record, _ = dead_run(op, hook, shift, window=7200.0, ahead=3600.0)  # only on_kill ends a wait of an hour
    ya.clear_requests()
    # The kill arrives once the task holds the lease: when its record is written.
    original = lease_module.create_exclusive
    killer = threading.Thread(target=op.on_kill)

    def create_then_kill(*args, **kwargs):
        created = original(*args, **kwargs)
        killer.start()
        return created

    monkeypatch.setattr(lease_module, "create_exclusive", create_then_kill)
    try:
        with pytest.raises(AudienceError, match="stopped while waiting"):
            op.execute(context)
    finally:
        killer.join()
    assert ya.requests == []
    # Not released: the next run still waits for the dead run's requests (its window is carried over).
    after = lease_of(op, hook).current()
    assert after is not None and after.token == record.token + 1
    assert not after.released and after.landing_window == 7200.0
    assert lease_of(op, hook).takeover_safe_at(after) >= lease_of(op, hook).takeover_safe_at(record)
