"""YandexAudienceSegmentProcessedSensor and its trigger against the fake: poke, reschedule, deferrable."""

from __future__ import annotations

import time

import pytest
from airflow.sdk import PokeReturnValue
from airflow_compat import AirflowSensorTimeout, TaskDeferred
from yandex_audience_helpers import POLL, PROCESSING

from airflow_audience_provider.core.errors import (
    AudienceError,
    AudienceJobFailedError,
    AudienceNotFoundError,
    AudienceTimeoutError,
)
from airflow_audience_provider.sensors.yandex_audience import YandexAudienceSegmentProcessedSensor
from airflow_audience_provider.triggers.yandex_audience import YandexAudienceSegmentProcessedTrigger

PATH = "airflow_audience_provider.triggers.yandex_audience.YandexAudienceSegmentProcessedTrigger"


def crm(n: int = 150) -> bytes:
    return ("email\n" + "".join(f"u{i}@example.com\n" for i in range(n))).encode()


@pytest.fixture
def segment_id(hook):
    draft = hook.upload_csv_file(crm())
    hook.confirm_segment(draft["id"], "crm", "crm")
    return draft["id"]


@pytest.fixture
def slow_segment_id(ya, hook):
    """A segment still processing until the test moves the fake's clock on (a first look sees it
    running however loaded the machine; 0.2 s of processing could be over by then)."""
    ya.configure(processing_seconds=3600)
    draft = hook.upload_csv_file(crm())
    hook.confirm_segment(draft["id"], "crm", "crm")
    return draft["id"]


def sensor_for(segment_id, **kwargs) -> YandexAudienceSegmentProcessedSensor:
    kwargs.setdefault("poke_interval", POLL)
    kwargs.setdefault("timeout", 10)
    return YandexAudienceSegmentProcessedSensor(task_id="wait", segment_id=str(segment_id), **kwargs)


def test_defaults_respect_the_daily_budget():
    sensor = YandexAudienceSegmentProcessedSensor(task_id="w", segment_id="1")
    assert sensor.poke_interval == 300 and sensor.timeout == 4 * 60 * 60


def test_poke_false_then_done(ya, hook, context, slow_segment_id):
    segment_id = slow_segment_id
    sensor = sensor_for(segment_id)
    assert sensor.poke(context) is False  # is_processed
    ya.advance_time(3600)
    done = sensor.poke(context)
    assert isinstance(done, PokeReturnValue) and done.is_done
    assert done.xcom_value["status"] == "processed" and done.xcom_value["segment_id"] == segment_id
    assert context["outlet_events"].added[0][1] == f"yandex-audience://sandbox-login/segment/{segment_id}"


def test_poke_mode_execute_and_link(ya, hook, context, segment_id):
    result = sensor_for(segment_id, mode="poke").execute(context)
    assert result["status"] == "processed" and result["cookies_matched_quantity"] > 0
    assert context["ti"].pushed["yandex_audience_segment_url"] == f"{ya.base_url}/app/segments/{segment_id}"


def test_reschedule_mode_pokes_once(ya, hook, context, slow_segment_id):
    from airflow_compat import AirflowRescheduleException

    with pytest.raises(AirflowRescheduleException):
        sensor_for(slow_segment_id, mode="reschedule").execute(context)


@pytest.mark.parametrize(
    ("status", "expected"),
    [("processing_failed", "failed processing"), ("few_data", "Add data")],
)
def test_failures_fail_the_task(ya, hook, context, segment_id, status, expected):
    ya.fail_next_processing(segment_id, status)
    with pytest.raises(AudienceJobFailedError, match=expected) as caught:
        sensor_for(segment_id, mode="poke").execute(context)
    assert caught.value.code == status


def test_unknown_status_is_reported_verbatim_until_the_timeout(ya, hook, context, segment_id, caplog):
    ya.fail_next_processing(segment_id, "too_much_data")
    time.sleep(PROCESSING * 1.5)
    sensor = sensor_for(segment_id, mode="poke", timeout=0.3)
    with pytest.raises(AirflowSensorTimeout):
        sensor.execute(context)
    assert "'too_much_data'" in caplog.text


def test_unconfirmed_draft_fails_at_once(ya, hook, context):
    draft = hook.upload_csv_file(crm())
    with pytest.raises(AudienceJobFailedError, match="unconfirmed draft"):
        sensor_for(draft["id"]).poke(context)


def test_segment_of_another_login_fails_at_once(ya, hook, context):
    with pytest.raises(AudienceNotFoundError, match="not visible"):
        sensor_for(30000003).poke(context)


def test_trigger_serialize_round_trip():
    trigger = YandexAudienceSegmentProcessedTrigger("ya_x", {"segment_id": "7"}, 300, 1234.5, 4)
    path, kwargs = trigger.serialize()
    assert path == PATH
    assert kwargs == {
        "conn_id": "ya_x",
        "status_kwargs": {"segment_id": "7"},
        "poll_interval": 300.0,
        "deadline": 1234.5,
        "max_consecutive_failures": 4,
    }
    assert YandexAudienceSegmentProcessedTrigger(**kwargs).serialize() == (path, kwargs)


@pytest.mark.asyncio
async def test_deferrable_path(ya, hook, context, slow_segment_id):
    segment_id = slow_segment_id
    sensor = sensor_for(segment_id, deferrable=True)
    with pytest.raises(TaskDeferred) as deferred:
        sensor.execute(context)
    trigger = deferred.value.trigger
    assert isinstance(trigger, YandexAudienceSegmentProcessedTrigger)
    assert trigger.status_kwargs == {"segment_id": str(segment_id)} and trigger.poll_interval == POLL
    ya.advance_time(3600)
    event = (await anext(trigger.run())).payload
    assert event["status"] == "success" and event["vendor_status"] == "processed"
    result = sensor.execute_complete(context, event)
    assert result["segment_id"] == segment_id and result["status"] == "processed"
    assert context["outlet_events"].added[-1][2]["action"] == "processed"


@pytest.mark.asyncio
async def test_trigger_reports_few_data_and_timeouts(ya, hook, context, segment_id):
    ya.fail_next_processing(segment_id, "few_data")
    trigger = YandexAudienceSegmentProcessedTrigger(
        "yandex_audience_default", {"segment_id": str(segment_id)}, POLL, time.time() + 10
    )
    event = (await anext(trigger.run())).payload
    assert event["status"] == "failed" and event["vendor_status"] == "few_data"
    with pytest.raises(AudienceJobFailedError, match="reprocess"):
        sensor_for(segment_id).execute_complete(context, event)

    draft = hook.upload_csv_file(crm())
    other = hook.confirm_segment(draft["id"], "stuck", "crm")
    ya.fail_next_processing(other["id"], "stuck")
    trigger = YandexAudienceSegmentProcessedTrigger(
        "yandex_audience_default", {"segment_id": str(other["id"])}, POLL, time.time() + 0.3
    )
    event = (await anext(trigger.run())).payload
    with pytest.raises(AudienceTimeoutError, match=f"processing of Yandex.Audience segment {other['id']}"):
        sensor_for(other["id"]).execute_complete(context, event)


@pytest.mark.parametrize(
    "event",
    [None, {"status": "nope", "vendor": "yandex_audience"}, {"status": "success", "vendor": "lytics"}],
)
def test_bad_events_fail(context, event):
    with pytest.raises(AudienceError):
        sensor_for(1).execute_complete(context, event)
