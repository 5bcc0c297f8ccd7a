"""The one upload path (ContactListUploadOperator) as the Criteo upload operator uses it, against the fake."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from helpers import sha, write_emails

from airflow_audience_provider.core.errors import AudienceConfigurationError, AudienceError
from airflow_audience_provider.operators.criteo import (
    CriteoCreateOrUpdateSegmentOperator,
    CriteoUploadContactListOperator,
)

pytestmark = pytest.mark.usefixtures("validate_exchanges")


def segment(context) -> str:
    op = CriteoCreateOrUpdateSegmentOperator(task_id="s", name="upload-path", retailer_id="311")
    return op.execute(context)["segment_id"]


def amendments(criteo) -> list[dict]:
    return [r for r in criteo.requests if r["path"].endswith(("/add-remove", "/contact-list/clear"))]


def test_plan_only_sends_nothing_and_writes_no_snapshot(criteo, context, tmp_path):
    sid = segment(context)
    source = write_emails(tmp_path / "a.csv", [f"u{i}@x.com" for i in range(10)])
    snapshots = tmp_path / "snap"
    events = len(context["outlet_events"].added)
    plan = CriteoUploadContactListOperator(
        task_id="u", segment_id=sid, source=source, snapshot_base=str(snapshots), plan_only=True
    ).execute(context)
    assert plan["status"] == "planned" and plan["blocked_by"] == [] and plan["added"] == 10 and plan["sent"] == 0
    assert amendments(criteo) == [] and criteo.members(sid) == set()
    assert not list(snapshots.rglob("snapshot.txt"))
    assert len(context["outlet_events"].added) == events  # no Asset event for a plan


def backdate_snapshots(base: str, days: int = 2) -> None:
    """Pretend the last change was recorded before Criteo's last computation window."""
    import json
    from datetime import UTC, datetime, timedelta

    for path in Path(base).rglob("snapshot.txt"):
        header, _, rest = path.read_text().partition("\n")
        prefix, _, meta = header.partition(" ")
        fields = json.loads(meta)
        fields["written_at"] = (datetime.now(UTC) - timedelta(days=days)).strftime("%Y-%m-%dT%H:%M:%SZ")
        path.write_text(f"{prefix} {json.dumps(fields, sort_keys=True)}\n{rest}")


def test_drift_between_criteo_and_the_snapshot_is_reported(criteo, context, tmp_path, hook):
    sid = segment(context)
    emails = [f"u{i}@x.com" for i in range(100)]
    source = write_emails(tmp_path / "a.csv", emails)
    snapshots = str(tmp_path / "snap")

    def upload(**kwargs):
        op = CriteoUploadContactListOperator(
            task_id="u", segment_id=sid, source=source, snapshot_base=snapshots, **kwargs
        )
        return op.execute(context)

    assert upload()["drift"] is None  # nothing recorded before the first run
    # Statistics show the list as of the last computation: a change made since is not compared.
    assert upload()["drift"] is None
    backdate_snapshots(snapshots)
    clean = upload()
    assert clean["drift"]["drifted"] is False and clean["drift"]["vendor"] == clean["drift"]["ours"] == 100
    # Someone else adds five identifiers to the list behind the snapshot's back.
    hook.add_remove_contact_list_by_audience_segment(sid, "add", [sha(f"other{i}@x.com") for i in range(5)], "Email")
    second = upload()
    assert second["engine_mode"] == "noop"
    assert second["drift"]["drifted"] is True and second["drift"]["difference"] == 5
    assert "mode='replace'" in second["drift"]["message"]
    with pytest.raises(AudienceError, match="drift of \\+5"):
        upload(on_drift="fail")
    assert upload(drift_tolerance=0.1)["drift"]["drifted"] is False  # five in a hundred is within 10 %
    # A replace makes the list equal to the input again.
    upload(mode="replace")
    assert criteo.members(sid) == {sha(e) for e in emails}
    backdate_snapshots(snapshots)
    assert upload()["drift"]["drifted"] is False


def test_host_local_snapshots_with_a_distributed_executor_warn_or_refuse(
    criteo, context, tmp_path, monkeypatch, caplog
):
    sid = segment(context)
    source = write_emails(tmp_path / "a.csv", ["a@x.com"])
    # The default base (host-local), kept per test here.
    monkeypatch.setenv("AIRFLOW__AUDIENCE__SNAPSHOT_BASE_PATH", str(tmp_path / "audience_snapshots"))
    monkeypatch.setenv("AIRFLOW__CORE__EXECUTOR", "CeleryExecutor")
    with pytest.raises(AudienceConfigurationError, match=r"CeleryExecutor.*shared storage.*nothing was sent"):
        CriteoUploadContactListOperator(
            task_id="u", segment_id=sid, source=source, mode="add", require_shared_state=True
        ).execute(context)
    assert amendments(criteo) == []
    with caplog.at_level(logging.WARNING):
        result = CriteoUploadContactListOperator(task_id="u", segment_id=sid, source=source, mode="add").execute(
            context
        )
    assert result["sent"] == 1
    assert any("audience_snapshots" in r.getMessage() and "CeleryExecutor" in r.getMessage() for r in caplog.records)
    monkeypatch.setenv("AIRFLOW__CORE__EXECUTOR", "LocalExecutor")
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        CriteoUploadContactListOperator(
            task_id="u", segment_id=sid, source=source, mode="add", require_shared_state=True
        ).execute(context)
    assert not any("CeleryExecutor" in r.getMessage() for r in caplog.records)


def test_modes_and_limits_come_from_one_place():
    from airflow_audience_provider.hooks.criteo import (
        MAX_IDENTIFIERS_PER_REQUEST,
        MS_IDENTIFIER_TYPES,
        RM_IDENTIFIER_TYPES,
    )
    from airflow_audience_provider.identifiers import get_rule

    rule = get_rule("criteo", "email")
    assert MAX_IDENTIFIERS_PER_REQUEST == rule.max_ids_per_chunk == 50_000
    assert RM_IDENTIFIER_TYPES["email"] == rule.api_identifier_type("retail_media") == "Email"
    assert MS_IDENTIFIER_TYPES["maid"] == "madid" and "maid" not in RM_IDENTIFIER_TYPES
    with pytest.raises(ValueError, match="mode must be one of add, remove, replace, sync"):
        CriteoUploadContactListOperator(task_id="u", segment_id="1", source="x.csv", mode="upsert")
    with pytest.raises(ValueError, match="between 1 and 50,000"):
        CriteoUploadContactListOperator(task_id="u", segment_id="1", source="x.csv", max_identifiers_per_request=0)


def hold_lease(snapshots: str, sid: str):
    """Another run holding the segment's lease (as a run in another DAG or on another host would)."""
    from airflow_audience_provider.identifiers import get_rule
    from airflow_audience_provider.identifiers.sync import lease_for

    other = lease_for(get_rule("criteo", "email"), f"retail_media-{sid}", snapshots)
    assert other.try_acquire()
    return other


def test_a_busy_lease_fails_in_the_worker_naming_the_holder_before_sending(criteo, context, tmp_path):
    from airflow_audience_provider.core.errors import AudienceConflictError

    sid = segment(context)
    snapshots = str(tmp_path / "snap")
    source = write_emails(tmp_path / "a.csv", ["a@x.com", "b@x.com"])
    other = hold_lease(snapshots, sid)
    op = CriteoUploadContactListOperator(
        task_id="u", segment_id=sid, source=source, snapshot_base=snapshots, lease_timeout=0.3, lease_poll_interval=0.1
    )
    with pytest.raises(AudienceConflictError, match=f"Criteo segment {sid}: another run is sending.*token 1 held by"):
        op.execute(context)
    assert amendments(criteo) == [] and criteo.members(sid) == set()
    other.release()
    assert op.execute(context)["sent"] == 2


def test_a_deferrable_upload_waits_for_the_lease_in_the_triggerer(criteo, context, tmp_path):
    import time

    from airflow.providers.common.compat.sdk import TaskDeferred
    from airflow.providers.standard.triggers.temporal import DateTimeTrigger

    from airflow_audience_provider.core.errors import AudienceConflictError

    sid = segment(context)
    snapshots = str(tmp_path / "snap")
    source = write_emails(tmp_path / "a.csv", ["a@x.com", "b@x.com"])
    other = hold_lease(snapshots, sid)
    op = CriteoUploadContactListOperator(
        task_id="u", segment_id=sid, source=source, snapshot_base=snapshots, deferrable=True, lease_timeout=600
    )
    with pytest.raises(TaskDeferred) as deferred:
        op.execute(context)
    assert isinstance(deferred.value.trigger, DateTimeTrigger)  # a timer: no worker slot, no vendor call
    assert deferred.value.method_name == "execute_after_lease_wait"
    deadline = deferred.value.kwargs["lease_deadline"]
    assert deadline == pytest.approx(time.time() + 600, abs=30)
    # Still held when the timer fires: defer again, keeping the first deadline.
    with pytest.raises(TaskDeferred) as again:
        op.execute_after_lease_wait(context, event=None, lease_deadline=deadline)
    assert again.value.kwargs["lease_deadline"] == deadline
    assert amendments(criteo) == []
    # The deadline has passed: fail naming the holder, before sending anything.
    with pytest.raises(AudienceConflictError, match="token 1 held by"):
        op.execute_after_lease_wait(context, event=None, lease_deadline=time.time() - 1)
    assert amendments(criteo) == []
    other.release()
    result = op.execute_after_lease_wait(context, event=None, lease_deadline=deadline)
    assert result["sent"] == 2 and criteo.members(sid) == {sha("a@x.com"), sha("b@x.com")}


def test_full_refresh_every_forces_a_periodic_full_replace(criteo, context, tmp_path):
    from datetime import timedelta

    sid = segment(context)
    source = write_emails(tmp_path / "a.csv", [f"u{i}@x.com" for i in range(10)])
    snapshots = str(tmp_path / "snap")

    def upload(every):
        return CriteoUploadContactListOperator(
            task_id="u", segment_id=sid, source=source, snapshot_base=snapshots, full_refresh_every=every
        ).execute(context)

    assert upload(timedelta(days=7))["engine_mode"] == "full_replace"  # the first run
    assert upload(timedelta(days=7))["engine_mode"] == "noop"  # the last full replace is recent
    refreshed = upload(timedelta(microseconds=1))
    assert (
        refreshed["engine_mode"] == "full_replace" and "full_refresh_every" in refreshed["state"]["full_replace_reason"]
    )
    assert criteo.members(sid) == {sha(f"u{i}@x.com") for i in range(10)}
