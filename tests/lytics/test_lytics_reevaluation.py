"""Reevaluate and LyticsHook.reevaluation_status: the heuristic defined in hooks/lytics.py.

The fake takes the strict readings by default: the documented ``/v2/segment/{id}/reevaluate`` answers
404, the answer carries nothing, and no job of the segment is listed; ``configure`` switches each
one. The wait must end correctly both ways: on a completed job, or on a settled size.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest

from airflow_audience_provider.core.errors import AudienceNotFoundError
from airflow_audience_provider.core.results import Phase


@pytest.fixture
def jobs_listed(lytics):
    """The lenient reading: the reevaluation is listed among the segment's jobs."""
    lytics.configure(list_reevaluation_jobs=1)
    return lytics


def status(hook, started, **kwargs):
    return hook.reevaluation_status(started["segment_id"], started["requested_at"], **kwargs)


def wait_for(hook, started, *, until=(Phase.DONE, Phase.FAILED), polls=200, **kwargs):
    """Poll every 20 ms until the phase is terminal; bounded."""
    kwargs.setdefault("size_history", [])
    for _ in range(polls):
        result = status(hook, started, **kwargs)
        if result.phase in until:
            return result
        time.sleep(0.02)
    raise AssertionError(f"still {result.describe()} after {polls} polls")


def start(hook, slug="all_users"):
    return hook.reevaluate_segment(hook.get_segment(slug)["id"])


def reevaluation_job(lytics, segment_id):
    return [j for j in lytics.jobs(segment_id) if j["workflow"] == "segment_reevaluate"][-1]


# -- the request ------------------------------------------------------------------------------


def test_reevaluate_falls_back_to_the_body_form_when_the_seed_path_is_missing(hook, lytics):
    seg = hook.get_segment("all_users")
    started = hook.reevaluate_segment(seg["id"])
    assert set(started) == {"segment_id", "requested_at"}  # nothing is read from the answer
    calls = [(r["method"], r["path"], r["status"]) for r in lytics.requests[1:]]
    assert calls == [
        ("POST", f"/v2/segment/{seg['id']}/reevaluate", 404),
        ("POST", "/v2/segment/reevaluate", 200),
    ]
    assert [j["workflow"] for j in hook.get_segment_jobs(seg["id"])] == ["export"]  # the reevaluation: not listed
    assert reevaluation_job(lytics, seg["id"])  # but the work was started all the same


def test_reevaluate_uses_the_seed_path_where_it_exists(hook, lytics):
    lytics.configure(seed_reevaluate_path=1)
    seg = hook.get_segment("all_users")
    hook.reevaluate_segment(seg["id"])
    assert [(r["path"], r["status"]) for r in lytics.requests[1:]] == [(f"/v2/segment/{seg['id']}/reevaluate", 200)]


def test_reevaluate_of_an_unknown_segment_names_it(hook):
    with pytest.raises(AudienceNotFoundError, match=r"'0{32}' was not found"):
        hook.reevaluate_segment("0" * 32)


# -- the job signal (the lenient reading) --------------------------------------------------------


def test_running_then_done_on_the_job(hook, jobs_listed):
    lytics = jobs_listed
    lytics.configure(processing_seconds=30)  # the fake's clock, not ours, decides when it is done
    before = lytics.segment_size("all_users")
    started = start(hook)
    first = status(hook, started, settle_polls=0)
    assert (first.phase, first.vendor_status) == (Phase.RUNNING, "initializing")
    lytics.advance_time(15)
    assert status(hook, started, settle_polls=0).vendor_status == "running"
    lytics.advance_time(15)
    done = status(hook, started, settle_polls=0)
    assert (done.phase, done.vendor_status, done.data["signal"]) == (Phase.DONE, "completed", "job")
    assert done.data["job_id"] == reevaluation_job(lytics, started["segment_id"])["id"]
    assert done.data["size"] == lytics.segment_size("all_users") != before
    assert done.data["url"].endswith(f"/audiences/{started['segment_id']}?aid={lytics.aid}")


def test_older_export_jobs_are_ignored(hook, jobs_listed):
    seg = hook.get_segment("all_users")
    jobs_listed.add_export_job(seg["id"], status="failed")  # older than the request
    done = wait_for(hook, start(hook), settle_polls=0)
    assert done.phase is Phase.DONE and done.data["signal"] == "job"


@pytest.mark.parametrize("status_name", ["failed", "fault-3"])
def test_failed_job_fails(hook, jobs_listed, status_name):
    seg = hook.get_segment("all_users")
    size = jobs_listed.segment_size(seg["id"])
    jobs_listed.fail_next_reevaluation(seg["id"], status_name)
    started = hook.reevaluate_segment(seg["id"])
    result = wait_for(hook, started)
    assert (result.phase, result.vendor_status) == (Phase.FAILED, status_name)
    assert f"ended in state '{status_name}'" in result.message
    assert result.data["job_id"] == reevaluation_job(jobs_listed, seg["id"])["id"]
    assert jobs_listed.segment_size(seg["id"]) == size  # a failed job changes nothing


def test_a_named_job_is_tracked(hook, jobs_listed):
    started = start(hook)
    job = reevaluation_job(jobs_listed, started["segment_id"])
    assert wait_for(hook, started, job_id=job["id"], settle_polls=0).data["job_id"] == job["id"]
    missing = status(hook, started, job_id="0" * 32, settle_polls=0)
    assert (missing.phase, missing.vendor_status) == (Phase.RUNNING, "waiting")


def test_stalled_job_stays_running(hook, jobs_listed):
    seg = hook.get_segment("all_users")
    jobs_listed.stall_next_reevaluation(seg["id"])
    started = hook.reevaluate_segment(seg["id"])
    jobs_listed.advance_time(3600)
    result = status(hook, started, settle_polls=0)
    assert (result.phase, result.vendor_status) == (Phase.RUNNING, "running")


def test_unknown_state_is_reported_verbatim(hook, lytics):
    seg = hook.get_segment("all_users")
    requested = datetime.now(UTC) - timedelta(seconds=1)
    lytics.add_export_job(seg["id"], status="unknown", _at=lytics.now())
    result = hook.reevaluation_status(seg["id"], requested.isoformat())
    assert (result.phase, result.vendor_status) == (Phase.UNKNOWN, "unknown")
    assert "unknown job state(s) ['unknown']" in result.message


def test_done_reports_the_size_after_the_job_even_if_it_finished_mid_poll(hook, jobs_listed, monkeypatch):
    """The job completes between the segment read and the jobs read: the size must be the new one."""
    started = start(hook)
    before = jobs_listed.segment_size(started["segment_id"])
    real_jobs = hook.get_segment_jobs

    def jobs_after_the_job_finished(segment_id):
        jobs_listed.advance_time(60)  # the vendor finishes the reevaluation right now
        return real_jobs(segment_id)

    monkeypatch.setattr(hook, "get_segment_jobs", jobs_after_the_job_finished)
    result = status(hook, started, settle_polls=0)
    assert result.phase is Phase.DONE
    assert result.data["size"] == jobs_listed.segment_size(started["segment_id"]) != before


# -- the size signal (the strict reading: no job is listed) --------------------------------------


def test_without_a_listed_job_the_settled_size_ends_the_wait(hook, lytics):
    """Readings 0.15 s apart while the fake takes 0.2 s: the old size cannot settle before the new one."""
    before = lytics.segment_size("all_users")
    started = start(hook)
    history: list = []
    done = wait_for(hook, started, settle_polls=3, settle_interval=0.15, size_history=history)
    assert (done.phase, done.vendor_status, done.data["signal"]) == (Phase.DONE, "size_settled", "size_settled")
    assert done.data["size"] == lytics.segment_size("all_users") != before
    assert len(history) == 3 and {size for _, size in history} == {done.data["size"]}
    assert history[1][0] - history[0][0] >= 0.15


def test_no_job_and_no_settling_keeps_waiting(hook, lytics):
    started = start(hook)
    lytics.advance_time(3600)
    for kwargs in ({"settle_polls": 0, "size_history": []}, {"size_history": None}):
        result = status(hook, started, **kwargs)
        assert (result.phase, result.vendor_status) == (Phase.RUNNING, "waiting")


def test_a_changing_size_restarts_the_count(hook, lytics):
    started = start(hook)
    history = [[time.time() - 10, 1.0], [time.time() - 5, 1.0]]  # two equal readings of another size
    result = status(hook, started, settle_polls=3, settle_interval=1, size_history=history)
    assert result.phase is Phase.RUNNING and len(history) == 1


def test_readings_closer_than_the_interval_do_not_count(hook, lytics):
    started = start(hook)
    history: list = []
    for _ in range(5):
        status(hook, started, settle_polls=2, settle_interval=60, size_history=history)
    assert len(history) == 1


def test_invalid_segment_fails(hook, lytics):
    seg = lytics.create_segment(name="Dangling", slug_name="dangling", segment_ql="FILTER INCLUDE gone FROM user")
    result = hook.reevaluation_status(seg["id"], datetime.now(UTC).isoformat())
    assert (result.phase, result.vendor_status) == (Phase.FAILED, "invalid")
    assert "INCLUDE references unknown segment 'gone'" in result.message


def test_unknown_segment_is_not_found(hook):
    with pytest.raises(AudienceNotFoundError, match=r"'0{32}' was not found"):
        hook.reevaluation_status("0" * 32, datetime.now(UTC).isoformat())
