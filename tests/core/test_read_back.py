"""call_with_read_back: look before resending a non-idempotent write."""

from __future__ import annotations

import pytest

from airflow_audience_provider.core.errors import (
    AudienceServerError,
    AudienceTransportError,
    AudienceValidationError,
)
from airflow_audience_provider.core.transport import call_with_read_back


class Recorder:
    def __init__(self, send_outcomes, read_outcomes):
        self.send_outcomes = list(send_outcomes)
        self.read_outcomes = list(read_outcomes)
        self.sends = 0
        self.reads = 0

    def send(self):
        self.sends += 1
        outcome = self.send_outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    def read_back(self):
        self.reads += 1
        return self.read_outcomes.pop(0)


def test_success_needs_no_read_back():
    calls = Recorder([{"id": "new"}], [])
    assert call_with_read_back(calls.send, calls.read_back) == {"id": "new"}
    assert (calls.sends, calls.reads) == (1, 0)


@pytest.mark.parametrize(
    "ambiguous",
    [AudienceServerError("boom", status=503), AudienceTransportError("connection dropped")],
)
def test_ambiguous_failure_found_by_read_back_is_not_resent(ambiguous):
    calls = Recorder([ambiguous], [{"id": "applied"}])
    assert call_with_read_back(calls.send, calls.read_back) == {"id": "applied"}
    assert (calls.sends, calls.reads) == (1, 1)


def test_ambiguous_failure_not_found_is_resent():
    calls = Recorder([AudienceServerError("boom", status=502), {"id": "second"}], [None])
    assert call_with_read_back(calls.send, calls.read_back) == {"id": "second"}
    assert (calls.sends, calls.reads) == (2, 1)


def test_attempts_bound_raises_the_last_error():
    errors = [AudienceServerError(f"boom {n}", status=503) for n in range(3)]
    calls = Recorder(errors, [None, None, None])
    with pytest.raises(AudienceServerError, match="boom 2"):
        call_with_read_back(calls.send, calls.read_back, attempts=3)
    assert (calls.sends, calls.reads) == (3, 3)


def test_a_clear_refusal_is_raised_without_read_back():
    calls = Recorder([AudienceValidationError("bad definition", status=400)], [])
    with pytest.raises(AudienceValidationError):
        call_with_read_back(calls.send, calls.read_back)
    assert (calls.sends, calls.reads) == (1, 0)


def test_hook_create_after_a_dropped_post_reads_back_then_resends_once(lytics_sandbox):
    """Against the fake: the dropped POST was not applied, so exactly one segment results."""
    from airflow_audience_provider.hooks.lytics import LyticsHook

    lytics_sandbox.faults.inject("drop", count=1, path_prefix="/v2/segment", method="POST")
    hook = LyticsHook()
    hook.get_conn().settle_seconds = 0.0  # the fake applies nothing of a dropped request later
    created = hook.create_segment(
        {"name": "Read back", "slug_name": "read_back", "segment_ql": "FILTER * FROM user ALIAS read_back"}
    )
    assert created["slug_name"] == "read_back"
    calls = [(r["method"], r["path"], r["status"]) for r in lytics_sandbox.requests]
    assert calls == [
        ("POST", "/v2/segment", None),
        ("GET", "/v2/segment/read_back", 404),
        ("POST", "/v2/segment", 201),
    ]
    assert [s["slug_name"] for s in lytics_sandbox.segments].count("read_back") == 1


def test_hook_create_that_lands_after_its_timeout_is_read_back_until_it_lands(lytics_sandbox):
    """Against the fake: the POST is applied after the client gave up; read back until it shows, not resent."""
    from airflow_audience_provider.core.transport import Timeouts
    from airflow_audience_provider.hooks.lytics import LyticsHook

    hook = LyticsHook()
    transport = hook.get_conn()
    transport.timeouts = Timeouts(connect=10.0, read=1.0)
    transport.settle_seconds = 60.0  # bounds the read-backs; ends as soon as the segment shows
    transport.read_back_interval = 0.1
    lytics_sandbox.faults.inject("slow", count=1, path_prefix="/v2/segment", method="POST", delay=2.0)
    created = hook.create_segment({"name": "Late", "slug_name": "late", "segment_ql": "FILTER * FROM user ALIAS late"})
    assert created["slug_name"] == "late"
    posts = [r for r in lytics_sandbox.requests if (r["method"], r["path"]) == ("POST", "/v2/segment")]
    assert len(posts) == 1
    assert [s["slug_name"] for s in lytics_sandbox.segments].count("late") == 1
