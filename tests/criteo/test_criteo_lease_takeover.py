"""A deferrable contact-list upload meeting the lease of a run that died: it waits in the triggerer.

The dead run's requests may still land until the old expiry plus the clock skew plus its landing
window; a deferrable task waits for that moment deferred, without holding the lease (a deferred
task has no heartbeat), takes the lease over when it resumes and sends with no wait in the worker.
Time passes by shifting the clock every lease is judged by (``lease.host_clock``), never by sleeping.
"""

from __future__ import annotations

import json
import logging
import time
from datetime import UTC, datetime

import pytest
from helpers import sha, write_emails

from airflow_audience_provider.operators.criteo import (
    CriteoCreateOrUpdateSegmentOperator,
    CriteoUploadContactListOperator,
)

pytestmark = pytest.mark.usefixtures("validate_exchanges")

DEAD_WINDOW = 400.0  # the dead run's recorded landing window: longer than the upload's own


@pytest.fixture
def shift(monkeypatch):
    """Seconds added to the clock of every lease (and so of the engine's wait after a takeover)."""
    from airflow_audience_provider.identifiers import lease as lease_module

    offset = [0.0]
    monkeypatch.setattr(lease_module, "host_clock", lambda: time.time() + offset[0])
    return offset


def at(shift, moment: float) -> None:
    """Move the leases' clock to ``moment`` (seconds since the epoch)."""
    shift[0] = moment - time.time()


def segment(context) -> str:
    op = CriteoCreateOrUpdateSegmentOperator(task_id="s", name="lease-takeover", retailer_id="311")
    return op.execute(context)["segment_id"]


def amendments(criteo) -> list[dict]:
    return [r for r in criteo.requests if r["path"].endswith(("/add-remove", "/contact-list/clear"))]


def lease_of(snapshots: str, sid: str):
    from airflow_audience_provider.identifiers import get_rule
    from airflow_audience_provider.identifiers.sync import lease_for

    return lease_for(get_rule("criteo", "email"), f"retail_media-{sid}", snapshots)


def dead_run(snapshots: str, sid: str, shift):
    """A run that took the lease, recorded a long landing window, and was killed: never released.

    Returns its record; the clock is moved past its expiry plus the skew (it can be taken over now).
    """
    dead = lease_of(snapshots, sid)
    dead.landing_window = DEAD_WINDOW
    assert dead.try_acquire()
    dead._stop.set()  # killed: no heartbeat, no release
    dead._heartbeat.join()
    record = dead.current()
    assert record is not None and not record.released and record.landing_window == DEAD_WINDOW
    at(shift, record.expires_at + dead.max_clock_skew + 1)
    assert lease_of(snapshots, sid).abandoned(record)
    return record


def upload(sid: str, source: str, snapshots: str, **kwargs) -> CriteoUploadContactListOperator:
    return CriteoUploadContactListOperator(
        task_id="u", segment_id=sid, source=source, snapshot_base=snapshots, deferrable=True, **kwargs
    )


def safe_moment(op, record) -> float:
    """When the dead run's requests can no longer land, by the formula the engine waits with."""
    from airflow_audience_provider.identifiers.lease import takeover_safe_at
    from airflow_audience_provider.operators.senders.criteo import CriteoChunkSender

    own = CriteoChunkSender(op.hook, "1", "Email").landing_window()  # what the engine waits with
    assert 0 < own < DEAD_WINDOW
    safe_at = takeover_safe_at(record, max_clock_skew=60.0, landing_window=own)
    assert safe_at == record.expires_at + 60.0 + DEAD_WINDOW
    return safe_at


def engine_waits(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if "before sending, until requests" in r.getMessage()]


def test_a_deferrable_upload_outwaits_a_dead_holder_in_the_triggerer_then_sends_at_once(
    criteo, context, tmp_path, shift, caplog
):
    from airflow.providers.common.compat.sdk import TaskDeferred
    from airflow.providers.standard.triggers.temporal import DateTimeTrigger

    sid = segment(context)
    snapshots = str(tmp_path / "snap")
    source = write_emails(tmp_path / "a.csv", ["a@x.com", "b@x.com"])
    record = dead_run(snapshots, sid, shift)
    op = upload(sid, source, snapshots, lease_timeout=3600)
    safe_at = safe_moment(op, record)

    with pytest.raises(TaskDeferred) as deferred:
        op.execute(context)
    trigger = deferred.value.trigger
    assert isinstance(trigger, DateTimeTrigger) and trigger.moment == datetime.fromtimestamp(safe_at, UTC)
    assert deferred.value.method_name == "execute_after_lease_wait"
    json.dumps(deferred.value.kwargs)  # kwargs travel through the metadata database
    deadline = deferred.value.kwargs["lease_deadline"]
    assert deadline == pytest.approx(record.expires_at + 60.0 + 1 + 3600, abs=30)
    # The lease was not taken: a deferred task could not keep it alive.
    assert lease_of(snapshots, sid).current() == record and amendments(criteo) == []

    # Resumed early (the triggerer's clock behind ours): deferred again to the same moment.
    at(shift, safe_at - 5)
    with pytest.raises(TaskDeferred) as again:
        op.execute_after_lease_wait(context, event=trigger.moment, lease_deadline=deadline)
    assert again.value.trigger.moment == trigger.moment and again.value.kwargs["lease_deadline"] == deadline
    assert lease_of(snapshots, sid).current() == record and amendments(criteo) == []

    # Resumed after the moment: takes the dead run's lease over and sends with no wait in the worker.
    at(shift, safe_at + 1)
    with caplog.at_level(logging.INFO):
        result = op.execute_after_lease_wait(context, event=trigger.moment, lease_deadline=deadline)
    assert result["sent"] == 2 and criteo.members(sid) == {sha("a@x.com"), sha("b@x.com")}
    assert any("Took over the expired lease" in r.getMessage() for r in caplog.records)
    assert engine_waits(caplog) == []
    after = lease_of(snapshots, sid).current()
    assert after is not None and after.token == record.token + 1 and after.released


def test_a_live_run_taking_the_dead_lease_during_the_deferral_keeps_the_task_waiting(
    criteo, context, tmp_path, shift, caplog
):
    from airflow.providers.common.compat.sdk import TaskDeferred

    from airflow_audience_provider.core.errors import AudienceConflictError

    sid = segment(context)
    snapshots = str(tmp_path / "snap")
    source = write_emails(tmp_path / "a.csv", ["a@x.com", "b@x.com"])
    record = dead_run(snapshots, sid, shift)
    op = upload(sid, source, snapshots, lease_timeout=3600, lease_poll_interval=30)
    safe_at = safe_moment(op, record)
    with pytest.raises(TaskDeferred) as deferred:
        op.execute(context)
    deadline = deferred.value.kwargs["lease_deadline"]

    # Meanwhile a run that does not defer takes the dead lease over (its own engine waits).
    at(shift, safe_at - 100)
    live = lease_of(snapshots, sid)
    assert live.try_acquire() and live.took_over == record
    try:
        at(shift, safe_at + 1)
        with pytest.raises(TaskDeferred) as busy:
            op.execute_after_lease_wait(context, event=None, lease_deadline=deadline)
        now = live.now()
        moment = busy.value.trigger.moment.timestamp()
        assert now < moment <= now + 31  # the usual busy wait: try again after lease_poll_interval
        assert busy.value.kwargs["lease_deadline"] == deadline
        assert amendments(criteo) == []
        # Past the deadline: fails naming the live holder, having sent nothing.
        with pytest.raises(AudienceConflictError, match=rf"another run is sending.*token {record.token + 1} held by"):
            op.execute_after_lease_wait(context, event=None, lease_deadline=live.now() - 1)
        assert amendments(criteo) == []
    finally:
        live.release()  # it waited for the dead run's requests and finished

    # Released by a live run: nothing of the dead run is in flight; taken and sent at once.
    caplog.clear()
    with caplog.at_level(logging.INFO):
        result = op.execute_after_lease_wait(context, event=None, lease_deadline=deadline)
    assert result["sent"] == 2 and engine_waits(caplog) == []
    assert not any("Took over the expired lease" in r.getMessage() for r in caplog.records)


def test_a_dead_holder_whose_requests_land_after_the_deadline_fails_at_the_deadline(criteo, context, tmp_path, shift):
    from airflow.providers.common.compat.sdk import TaskDeferred

    from airflow_audience_provider.core.errors import AudienceConflictError

    sid = segment(context)
    snapshots = str(tmp_path / "snap")
    source = write_emails(tmp_path / "a.csv", ["a@x.com"])
    record = dead_run(snapshots, sid, shift)
    op = upload(sid, source, snapshots, lease_timeout=100)
    safe_at = safe_moment(op, record)
    with pytest.raises(TaskDeferred) as deferred:
        op.execute(context)
    deadline = deferred.value.kwargs["lease_deadline"]
    assert deadline < safe_at
    assert deferred.value.trigger.moment == datetime.fromtimestamp(deadline, UTC)  # woken at the deadline
    at(shift, deadline + 1)
    with pytest.raises(AudienceConflictError, match=rf"token {record.token} held by .*stopped without releasing it"):
        op.execute_after_lease_wait(context, event=None, lease_deadline=deadline)
    assert lease_of(snapshots, sid).current() == record and amendments(criteo) == []


@pytest.mark.parametrize("bad", ["soon", True, float("nan"), [1.0]])
def test_resuming_with_a_bad_lease_deadline_is_refused(criteo, context, tmp_path, bad):
    from airflow_audience_provider.core.errors import AudienceError

    op = upload("1", str(tmp_path / "a.csv"), str(tmp_path / "snap"))
    with pytest.raises(AudienceError, match="lease_deadline must be seconds since the epoch"):
        op.execute_after_lease_wait(context, event=None, lease_deadline=bad)
