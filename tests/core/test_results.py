"""StatusMap, make_event and validate_event: the one event shape every trigger sends."""

from __future__ import annotations

import json

import pytest

from airflow_audience_provider.core.errors import AudienceError, AudienceJobFailedError, AudienceTimeoutError
from airflow_audience_provider.core.results import (
    EVENT_SCHEMA_VERSION,
    Phase,
    PollResult,
    StatusMap,
    make_event,
    validate_event,
)

STATES = StatusMap.of(
    done={"completed"}, failed={"failed", "deleted"}, running={"running", "sleeping"}, failed_prefixes=("fault",)
)


@pytest.mark.parametrize(
    ("status", "phase"),
    [
        ("completed", Phase.DONE),
        (" Completed ", Phase.DONE),
        ("failed", Phase.FAILED),
        ("deleted", Phase.FAILED),
        ("fault-3", Phase.FAILED),
        ("running", Phase.RUNNING),
        ("SLEEPING", Phase.RUNNING),
        ("warming_up", Phase.UNKNOWN),
        ("", Phase.UNKNOWN),
        (None, Phase.UNKNOWN),
    ],
)
def test_status_map_phase(status, phase):
    assert STATES.phase(status) is phase


def test_poll_result_describes_the_vendor_state_verbatim():
    result = PollResult(Phase.UNKNOWN, "Warming_Up", "still waiting")
    assert result.describe() == "unknown (vendor status 'Warming_Up'): still waiting"


def test_make_event_is_plain_json():
    event = make_event("success", "lytics", "done", result={"size": 3})
    assert event == {
        "status": "success",
        "vendor": "lytics",
        "message": "done",
        "schema": EVENT_SCHEMA_VERSION,
        "result": {"size": 3},
    }
    assert json.loads(json.dumps(event)) == event


def test_make_event_refuses_unknown_status():
    with pytest.raises(ValueError):
        make_event("finished", "lytics", "?")


def test_validate_success_returns_the_event():
    event = make_event("success", "lytics", "ok", result={"segment_id": "a"})
    assert validate_event(event, "lytics") is event


def test_validate_success_without_vendor_is_accepted():
    assert validate_event({"status": "success"}, "lytics") == {"status": "success"}


@pytest.mark.parametrize("event", [None, {}, [], "success", {"message": "no status"}])
def test_validate_missing_or_malformed_event(event):
    with pytest.raises(AudienceError, match="no valid lytics trigger event"):
        validate_event(event, "lytics")


def test_validate_unknown_status():
    with pytest.raises(AudienceError, match="unknown status 'finished'"):
        validate_event({"status": "finished", "vendor": "lytics"}, "lytics")


def test_validate_wrong_vendor():
    with pytest.raises(AudienceError, match="'criteo', expected 'lytics'"):
        validate_event(make_event("success", "criteo", "ok"), "lytics")


def test_validate_failed_raises_job_failed_with_vendor_status():
    event = make_event("failed", "lytics", "job j1 ended in state 'fault-2'", vendor_status="fault-2")
    with pytest.raises(AudienceJobFailedError, match="fault-2") as caught:
        validate_event(event, "lytics")
    assert caught.value.code == "fault-2"


def test_validate_timeout_raises_timeout_error():
    with pytest.raises(AudienceTimeoutError, match="Timed out waiting"):
        validate_event(make_event("timeout", "lytics", "Timed out waiting for x"), "lytics")


def test_validate_error_raises_with_status_and_code():
    event = make_event("error", "lytics", "denied", http_status=401, code="UNAUTHORIZED-017")
    with pytest.raises(AudienceError, match="denied") as caught:
        validate_event(event, "lytics")
    assert type(caught.value) is AudienceError
    assert (caught.value.status, caught.value.code) == (401, "UNAUTHORIZED-017")
