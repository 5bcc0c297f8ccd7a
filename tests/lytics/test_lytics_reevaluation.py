"""LyticsHook.reevaluation_status: the completion signal defined in hooks/lytics.py."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest

from airflow_audience_provider.core.errors import AudienceNotFoundError
from airflow_audience_provider.core.results import Phase

from_iso = datetime.fromisoformat


def wait_for(hook, started, *, until=(Phase.DONE, Phase.FAILED), polls=100):
    """Poll every 20 ms until the phase is terminal; bounded."""
    for _ in range(polls):
        result = hook.reevaluation_status(started["segment_id"], started["requested_at"], started["job_id"])
        if result.phase in until:
            return result
        time.sleep(0.02)
    raise AssertionError(f"still {result.describe()} after {polls} polls")


def start(hook, slug="all_users"):
    return hook.reevaluate_segment(hook.get_segment(slug)["id"])


def test_running_then_done(hook, lytics):
    lytics.configure(processing_seconds=30)  # the fake's clock, not ours, decides when it is done
    before = lytics.segment_size("all_users")
    started = start(hook)
    first = hook.reevaluation_status(started["segment_id"], started["requested_at"], started["job_id"])
    assert (first.phase, first.vendor_status) == (Phase.RUNNING, "initializing")
    lytics.advance_time(15)
    second = hook.reevaluation_status(started["segment_id"], started["requested_at"], started["job_id"])
    assert (second.phase, second.vendor_status) == (Phase.RUNNING, "running")
    lytics.advance_time(15)
    done = hook.reevaluation_status(started["segment_id"], started["requested_at"], started["job_id"])
    assert done.phase is Phase.DONE
    assert done.vendor_status == "completed"
    assert done.data["segment_id"] == started["segment_id"]
    assert done.data["job_id"] == started["job_id"]
    assert done.data["size"] == lytics.segment_size("all_users") != before
    assert done.data["url"].endswith(f"/audiences/{started['segment_id']}?aid={lytics.aid}")


def test_without_a_job_id_jobs_since_the_request_are_tracked(hook, lytics):
    started = start(hook)
    done = wait_for(hook, {**started, "job_id": None})
    assert done.phase is Phase.DONE
    assert done.data["job_id"] == started["job_id"]


def test_older_export_jobs_are_ignored(hook, lytics):
    # all_users carries a seeded export job in state "sleeping"; an older failed one too
    seg = hook.get_segment("all_users")
    lytics.add_export_job(seg["id"], status="failed")
    started = start(hook)
    done = wait_for(hook, {**started, "job_id": None})
    assert done.phase is Phase.DONE


def test_not_listed_yet_counts_as_running(hook, lytics):
    seg = hook.get_segment("all_users")
    result = hook.reevaluation_status(seg["id"], datetime.now(UTC).isoformat(), None)
    assert (result.phase, result.vendor_status) == (Phase.RUNNING, "not_listed")
    result = hook.reevaluation_status(seg["id"], datetime.now(UTC).isoformat(), "0" * 32)
    assert result.vendor_status == "not_listed"


@pytest.mark.parametrize("status", ["failed", "fault-3"])
def test_failed_job_fails(hook, lytics, status):
    seg = hook.get_segment("all_users")
    size = lytics.segment_size(seg["id"])
    lytics.fail_next_reevaluation(seg["id"], status)
    started = hook.reevaluate_segment(seg["id"])
    result = wait_for(hook, started)
    assert result.phase is Phase.FAILED
    assert result.vendor_status == status
    assert f"ended in state '{status}'" in result.message
    assert result.data["job_id"] == started["job_id"]
    assert lytics.segment_size(seg["id"]) == size  # a failed job changes nothing


def test_invalid_segment_fails(hook, lytics):
    seg = lytics.create_segment(name="Dangling", slug_name="dangling", segment_ql="FILTER INCLUDE gone FROM user")
    result = hook.reevaluation_status(seg["id"], datetime.now(UTC).isoformat())
    assert (result.phase, result.vendor_status) == (Phase.FAILED, "invalid")
    assert "INCLUDE references unknown segment 'gone'" in result.message


def test_stalled_job_stays_running(hook, lytics):
    seg = hook.get_segment("all_users")
    lytics.stall_next_reevaluation(seg["id"])
    started = hook.reevaluate_segment(seg["id"])
    lytics.advance_time(3600)
    result = hook.reevaluation_status(started["segment_id"], started["requested_at"], started["job_id"])
    assert (result.phase, result.vendor_status) == (Phase.RUNNING, "running")


def test_unknown_state_is_reported_verbatim(hook, lytics):
    # Lytics lists "unknown" among job states; a job in it, created after the request, is waited on.
    seg = hook.get_segment("all_users")
    requested = datetime.now(UTC) - timedelta(seconds=1)
    lytics.add_export_job(seg["id"], status="unknown", _at=lytics.now())
    result = hook.reevaluation_status(seg["id"], requested.isoformat())
    assert result.phase is Phase.UNKNOWN
    assert result.vendor_status == "unknown"
    assert "unknown job state(s) ['unknown']" in result.message


def test_unknown_segment_is_not_found(hook):
    with pytest.raises(AudienceNotFoundError, match=r"'0{32}' was not found"):
        hook.reevaluation_status("0" * 32, datetime.now(UTC).isoformat())


def test_requested_at_is_the_vendor_time(hook, lytics):
    started = start(hook)
    job = next(j for j in lytics.jobs() if j["id"] == started["job_id"])
    assert from_iso(started["requested_at"].replace("Z", "+00:00")) == from_iso(job["created"].replace("Z", "+00:00"))


def test_done_reports_the_size_after_the_job_even_if_it_finished_mid_poll(hook, lytics, monkeypatch):
    """The job completes between the segment read and the jobs read: the size must be the new one."""
    started = start(hook)
    before = lytics.segment_size(started["segment_id"])
    real_jobs = hook.get_segment_jobs

    def jobs_after_the_job_finished(segment_id):
        lytics.advance_time(60)  # the vendor finishes the reevaluation right now
        return real_jobs(segment_id)

    monkeypatch.setattr(hook, "get_segment_jobs", jobs_after_the_job_finished)
    result = hook.reevaluation_status(started["segment_id"], started["requested_at"], started["job_id"])
    assert result.phase is Phase.DONE
    assert result.data["size"] == lytics.segment_size(started["segment_id"]) != before
    assert f"size {result.data['size']}" in result.message
