"""SegmentAudienceComputedSensor in poke, reschedule and deferrable modes; the triggers' serialisation and events."""

from __future__ import annotations

import time

import pytest
from airflow.sdk import PokeReturnValue
from airflow_compat import AirflowRescheduleException, TaskDeferred

from airflow_audience_provider.core.errors import (
    AudienceAuthenticationError,
    AudienceError,
    AudienceJobFailedError,
    AudienceNotFoundError,
    AudienceServerError,
    AudienceTimeoutError,
)
from airflow_audience_provider.core.results import validate_event
from airflow_audience_provider.sensors.segment import SegmentAudienceComputedSensor
from airflow_audience_provider.triggers.segment import (
    SegmentAudienceComputedTrigger,
    SegmentAudienceEditableTrigger,
    SegmentAudiencePreviewTrigger,
)

POLL = 0.05
QUERY = "event('Order Completed').count() >= 1"


def sensor_for(audience_id: str, **kwargs) -> SegmentAudienceComputedSensor:
    kwargs.setdefault("task_id", "wait")
    kwargs.setdefault("poke_interval", POLL)
    kwargs.setdefault("timeout", 30)
    return SegmentAudienceComputedSensor(audience_id=audience_id, **kwargs)


@pytest.fixture
def computing(segment):
    """A new, enabled audience whose computation has just started; ``segment.advance_time(60)`` ends it."""
    segment.configure(processing_seconds=30)  # never finishes by itself while a test looks
    return segment.create_audience(name="Computing", audienceType="USERS", enabled=True, definition={"query": QUERY})


def poke_until_done(sensor, context, polls=200):
    for _ in range(polls):
        value = sensor.poke(context)
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError("the sensor never finished")


def test_poke_false_then_done_with_asset(segment, context, computing):
    sensor = sensor_for(computing["id"])
    assert sensor.poke(context) is False
    segment.advance_time(60)
    done = poke_until_done(sensor, context)
    assert isinstance(done, PokeReturnValue) and done.is_done
    value = done.xcom_value
    assert value["status"] == "Live" and value["size"] == segment.audience(computing["id"])["size"]["count"]
    uri = f"segment://{segment.space_id}/audience/{computing['id']}"
    ((alias, event_uri, extra),) = context["outlet_events"].added
    assert (alias, event_uri) == ("segment-audiences", uri)
    assert extra == {
        "audience_extra_version": 1,
        "vendor": "segment",
        "account": segment.space_id,
        "kind": "audience",
        "object_id": computing["id"],
        "object_name": "Computing",
        "action": "computed",
        "state": "Live",
        "vendor_size": value["size"],
        "link": value["url"],
    }


@pytest.mark.parametrize("status", ["Failed", "Error"])
def test_failed_compute_fails_the_poke(segment, context, computing, status):
    segment.fail_next_compute(computing["id"], status)
    segment.advance_time(60)
    with pytest.raises(AudienceJobFailedError, match=f"is {status}") as caught:
        poke_until_done(sensor_for(computing["id"]), context)
    assert caught.value.code == status
    assert context["outlet_events"].added == []


def test_unknown_status_keeps_waiting_and_is_reported_verbatim(segment, context):
    segment.set_status("aud_sandboxSeedAudience000000001", "Reticulating Splines")
    sensor = sensor_for("aud_sandboxSeedAudience000000001")
    assert sensor.poke(context) is False
    segment.set_status("aud_sandboxSeedAudience000000001", "Live")
    assert sensor.poke(context).is_done


def test_unknown_audience_fails_at_once(segment, context):
    with pytest.raises(AudienceNotFoundError, match="aud_gone"):
        sensor_for("aud_gone").poke(context)


def test_transient_errors_are_tolerated_up_to_the_budget(segment, context, set_segment_conn, computing):
    conn_id = set_segment_conn("seg_one_try", extra={"max_retries": 1})
    segment.faults.inject("status", count=10, path_prefix=f"/spaces/{segment.space_id}/audiences/", status=503)
    sensor = sensor_for(computing["id"], segment_conn_id=conn_id, max_consecutive_failures=3)
    assert sensor.poke(context) is False
    assert sensor.poke(context) is False
    with pytest.raises(AudienceServerError):
        sensor.poke(context)


def test_wrong_token_fails_at_once(segment, context, set_segment_conn, computing):
    conn_id = set_segment_conn("seg_bad_token", password="wrong")
    with pytest.raises(AudienceAuthenticationError):
        sensor_for(computing["id"], segment_conn_id=conn_id, max_consecutive_failures=5).poke(context)


def test_poke_mode_execute(segment, context, computing):
    segment.configure(processing_seconds=0.3)
    computing = segment.create_audience(name="Quick", audienceType="USERS", enabled=True, definition={"query": QUERY})
    result = sensor_for(computing["id"], mode="poke").execute(context)
    assert result["status"] == "Live"
    assert context["ti"].pushed["segment_audience_url"] == result["url"]


def test_reschedule_mode_gives_the_slot_back(segment, context, computing):
    with pytest.raises(AirflowRescheduleException):
        sensor_for(computing["id"], mode="reschedule").execute(context)
    segment.advance_time(60)
    assert sensor_for(computing["id"], mode="reschedule").execute(context)["status"] == "Live"


@pytest.mark.asyncio
async def test_deferrable_path(segment, context, computing):
    sensor = sensor_for(computing["id"], deferrable=True)
    with pytest.raises(TaskDeferred) as deferred:
        sensor.execute(context)
    trigger = deferred.value.trigger
    assert isinstance(trigger, SegmentAudienceComputedTrigger)
    assert trigger.status_kwargs == {"audience_id": computing["id"], "space_id": segment.space_id}
    assert deferred.value.method_name == "execute_complete"
    assert computing["id"] in context["ti"].pushed["segment_audience_url"]
    segment.advance_time(60)
    event = (await anext(trigger.run())).payload
    assert event["status"] == "success" and event["vendor_status"] == "Live"
    result = sensor.execute_complete(context, event)
    assert result["size"] == segment.audience(computing["id"])["size"]["count"]
    assert [e[1] for e in context["outlet_events"].added] == [result["asset_uri"]]


def test_deferrable_sensor_does_not_defer_a_live_audience(segment, context):
    assert sensor_for("aud_sandboxSeedAudience000000001", deferrable=True).execute(context)["status"] == "Live"


@pytest.mark.asyncio
async def test_deferred_failure_and_timeout(segment, context, computing):
    segment.fail_next_compute(computing["id"])
    segment.advance_time(60)
    trigger = SegmentAudienceComputedTrigger(
        "segment_default", {"audience_id": computing["id"], "space_id": segment.space_id}, POLL, time.time() + 10
    )
    event = (await anext(trigger.run())).payload
    assert event["status"] == "failed" and event["vendor_status"] == "Failed"
    with pytest.raises(AudienceJobFailedError):
        sensor_for(computing["id"]).execute_complete(context, event)

    segment.stall_next_compute("aud_sandboxSeedAudience000000001")
    segment.set_status("aud_sandboxSeedAudience000000001", "Computing")
    stalled = SegmentAudienceComputedTrigger(
        "segment_default", {"audience_id": "aud_sandboxSeedAudience000000001", "space_id": segment.space_id},
        POLL, time.time() + 0.3,
    )  # fmt: skip
    event = (await anext(stalled.run())).payload
    with pytest.raises(AudienceTimeoutError, match="Computing"):
        sensor_for("aud_sandboxSeedAudience000000001").execute_complete(context, event)


@pytest.mark.asyncio
async def test_trigger_gives_up_on_a_missing_audience(segment):
    trigger = SegmentAudienceComputedTrigger(
        "segment_default", {"audience_id": "aud_gone", "space_id": segment.space_id}, POLL, time.time() + 10
    )
    event = (await anext(trigger.run())).payload
    assert event["status"] == "error" and event["http_status"] == 404 and "aud_gone" in event["message"]


@pytest.mark.parametrize(
    "cls", [SegmentAudienceComputedTrigger, SegmentAudiencePreviewTrigger, SegmentAudienceEditableTrigger]
)
def test_trigger_serialize_round_trip(cls):
    from airflow_compat import serde

    trigger = cls("segment_x", {"audience_id": "a", "preview_id": "p", "space_id": "s"}, 5, 1234.5, 4)
    path, kwargs = trigger.serialize()
    assert path == f"airflow_audience_provider.triggers.segment.{cls.__name__}"
    assert kwargs["conn_id"] == "segment_x" and kwargs["deadline"] == 1234.5
    assert cls(**kwargs).serialize() == (path, kwargs)
    assert serde.deserialize(serde.serialize(kwargs)) == kwargs


@pytest.mark.parametrize(
    ("event", "error"),
    [
        (None, AudienceError),
        ({"status": "nope", "vendor": "segment"}, AudienceError),
        ({"status": "success", "vendor": "lytics"}, AudienceError),
        ({"status": "failed", "vendor": "segment", "message": "x", "vendor_status": "Failed"}, AudienceJobFailedError),
        ({"status": "timeout", "vendor": "segment", "message": "late"}, AudienceTimeoutError),
    ],
)
def test_execute_complete_refuses_bad_events(context, event, error):
    with pytest.raises(error):
        sensor_for("a", deferrable=True).execute_complete(context, event)
    assert context["outlet_events"].added == []


def test_validate_event_accepts_a_success():
    event = {"status": "success", "vendor": "segment", "message": "ok", "result": {}}
    assert validate_event(event, "segment") is event
