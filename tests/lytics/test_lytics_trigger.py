"""LyticsReevaluationTrigger: serialisation, and every event it can send, against the fake."""

from __future__ import annotations

import time

import pytest

from airflow_audience_provider.core.results import validate_event
from airflow_audience_provider.triggers.lytics import LyticsReevaluationTrigger

POLL = 0.05
PATH = "airflow_audience_provider.triggers.lytics.LyticsReevaluationTrigger"


def trigger_for(started, conn_id="lytics_default", deadline_in=10.0, **kwargs) -> LyticsReevaluationTrigger:
    return LyticsReevaluationTrigger(
        conn_id=conn_id,
        status_kwargs={
            "segment_id": started["segment_id"],
            "requested_at": started["requested_at"],
            "job_id": started["job_id"],
        },
        poll_interval=POLL,
        deadline=time.time() + deadline_in,
        **kwargs,
    )


async def first_event(trigger) -> dict:
    event = await anext(trigger.run())
    return event.payload


@pytest.fixture
def started(hook, reevaluated):
    return reevaluated(hook.get_segment("all_users")["id"])


def test_serialize_round_trip():
    trigger = LyticsReevaluationTrigger(
        "lytics_x", {"segment_id": "s1", "requested_at": "2026-01-01T00:00:00Z", "job_id": None}, 5, 1234.5, 4
    )
    path, kwargs = trigger.serialize()
    assert path == PATH
    assert kwargs == {
        "conn_id": "lytics_x",
        "status_kwargs": {"segment_id": "s1", "requested_at": "2026-01-01T00:00:00Z", "job_id": None},
        "poll_interval": 5.0,
        "deadline": 1234.5,
        "max_consecutive_failures": 4,
    }
    assert LyticsReevaluationTrigger(**kwargs).serialize() == (path, kwargs)


def test_kwargs_survive_airflow_serde():
    try:
        from airflow.sdk import serde  # 3.2+: trigger kwargs go through the task SDK's serde
    except ImportError:  # Airflow 3.1
        from airflow.serialization import serde

    _, kwargs = LyticsReevaluationTrigger("c", {"segment_id": "s", "requested_at": "t"}, deadline=None).serialize()
    assert serde.deserialize(serde.serialize(kwargs)) == kwargs


@pytest.mark.asyncio
async def test_success_event(lytics, started):
    event = await first_event(trigger_for(started))
    assert event["status"] == "success"
    assert event["vendor"] == "lytics"
    assert event["vendor_status"] == "completed"
    assert event["result"]["segment_id"] == started["segment_id"]
    assert event["result"]["size"] == lytics.segment_size(started["segment_id"])
    assert validate_event(event, "lytics") is event


@pytest.mark.asyncio
@pytest.mark.parametrize("status", ["failed", "fault-7"])
async def test_failed_event(hook, lytics, status, reevaluated):
    seg = hook.get_segment("all_users")
    lytics.fail_next_reevaluation(seg["id"], status)
    started = reevaluated(seg["id"])
    event = await first_event(trigger_for(started))
    assert (event["status"], event["vendor_status"]) == ("failed", status)
    assert started["job_id"] in event["message"]


@pytest.mark.asyncio
async def test_timeout_event_names_the_last_state(hook, lytics, reevaluated):
    seg = hook.get_segment("all_users")
    lytics.stall_next_reevaluation(seg["id"])
    started = reevaluated(seg["id"])
    event = await first_event(trigger_for(started, deadline_in=0.4))
    assert event["status"] == "timeout"
    assert f"Timed out waiting for reevaluation of Lytics segment {seg['id']}" in event["message"]
    assert "vendor status 'running'" in event["message"]


@pytest.mark.asyncio
async def test_transient_failures_within_budget_are_tolerated(lytics, set_lytics_conn, started):
    conn_id = set_lytics_conn("lytics_one_try", extra={"max_retries": 1})
    lytics.faults.inject("status", count=2, path_prefix=f"/v2/segment/{started['segment_id']}", status=503)
    event = await first_event(trigger_for(started, conn_id=conn_id, max_consecutive_failures=3))
    assert event["status"] == "success"
    assert [r["fault"] for r in lytics.requests[-4:]].count("status") == 0  # faults used up before success
    assert sum(1 for r in lytics.requests if r["fault"] == "status") == 2


@pytest.mark.asyncio
async def test_consecutive_transient_failures_end_in_an_error_event(lytics, set_lytics_conn, started):
    conn_id = set_lytics_conn("lytics_one_try", extra={"max_retries": 1})
    lytics.faults.inject("status", count=50, path_prefix=f"/v2/segment/{started['segment_id']}", status=503)
    event = await first_event(trigger_for(started, conn_id=conn_id, max_consecutive_failures=3))
    assert event["status"] == "error"
    assert "after 3 consecutive failures" in event["message"]
    assert sum(1 for r in lytics.requests if r["fault"] == "status") == 3


@pytest.mark.asyncio
async def test_not_found_is_fatal_at_once(lytics):
    missing = {"segment_id": "0" * 32, "requested_at": "2026-01-01T00:00:00Z", "job_id": None}
    event = await first_event(trigger_for(missing, max_consecutive_failures=5))
    assert event["status"] == "error"
    assert event["http_status"] == 404
    assert event["error"] == "AudienceNotFoundError"
    assert event["code"] == "NOTFOUND-003"
    assert len(lytics.requests) == 1
    with pytest.raises(Exception, match="was not found"):
        validate_event(event, "lytics")


@pytest.mark.asyncio
async def test_wrong_token_is_fatal_at_once(lytics, set_lytics_conn, started):
    conn_id = set_lytics_conn("lytics_bad_token", password="wrong-token-0000")
    lytics.clear_requests()
    event = await first_event(trigger_for(started, conn_id=conn_id))
    assert (event["status"], event["http_status"], event["error"]) == ("error", 401, "AudienceAuthenticationError")
    assert len(lytics.requests) == 1


@pytest.mark.asyncio
async def test_missing_token_is_an_error_event(set_lytics_conn, started):
    conn_id = set_lytics_conn("lytics_no_token", password=None)
    event = await first_event(trigger_for(started, conn_id=conn_id))
    assert event["status"] == "error"
    assert "'lytics_no_token' has no API token" in event["message"]


@pytest.mark.asyncio
async def test_undefined_connection_becomes_an_error_event(monkeypatch):
    """A connection missing where the triggerer runs ends the wait with a clear error event, not a crash."""
    monkeypatch.delenv("AIRFLOW_CONN_NO_SUCH_LYTICS", raising=False)
    trigger = LyticsReevaluationTrigger(
        "no_such_lytics", {"segment_id": "s", "requested_at": "2026-01-01T00:00:00Z"}, poll_interval=0.01
    )
    event = await first_event(trigger)
    assert event["status"] == "error"
    assert "no_such_lytics" in event["message"]
