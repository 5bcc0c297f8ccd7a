"""LyticsSegmentReevaluatedSensor: poke, failure, transient-error budget and the deferrable path."""

from __future__ import annotations

import time

import pytest
from airflow.providers.common.compat.sdk import TaskDeferred
from airflow.sdk import PokeReturnValue

from airflow_audience_provider.core.errors import (
    AudienceAuthenticationError,
    AudienceError,
    AudienceJobFailedError,
    AudienceNotFoundError,
    AudienceServerError,
    AudienceTimeoutError,
)
from airflow_audience_provider.sensors.lytics import LyticsSegmentReevaluatedSensor
from airflow_audience_provider.triggers.lytics import LyticsReevaluationTrigger

POLL = 0.05


def sensor_for(started, **kwargs) -> LyticsSegmentReevaluatedSensor:
    kwargs.setdefault("task_id", "wait")
    kwargs.setdefault("poke_interval", POLL)
    kwargs.setdefault("timeout", 30)
    return LyticsSegmentReevaluatedSensor(
        segment_id=started["segment_id"],
        requested_at=started["requested_at"],
        job_id=started["job_id"],
        **kwargs,
    )


def poke_until_done(sensor, context, polls=100):
    for _ in range(polls):
        value = sensor.poke(context)
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError("the sensor never finished")


@pytest.fixture
def started(hook, reevaluated):
    return reevaluated(hook.get_segment("all_users")["id"])


@pytest.fixture
def slow_started(hook, lytics, reevaluated):
    """A reevaluation that finishes only when the test moves the fake's clock on."""
    lytics.configure(processing_seconds=30)
    return reevaluated(hook.get_segment("all_users")["id"])


def test_poke_false_then_poke_return_value(lytics, context, slow_started):
    started = slow_started
    sensor = sensor_for(started)
    assert sensor.poke(context) is False
    assert context["outlet_events"].added == []
    lytics.advance_time(60)
    done = sensor.poke(context)
    assert isinstance(done, PokeReturnValue) and done.is_done
    value = done.xcom_value
    assert value["segment_id"] == started["segment_id"]
    assert value["job_id"] == started["job_id"]
    assert value["size"] == lytics.segment_size(started["segment_id"])
    uri = f"lytics://{lytics.account_id}/segment/{started['segment_id']}"
    ((alias, event_uri, extra),) = context["outlet_events"].added
    assert (alias, event_uri) == ("lytics-segments", uri)
    assert extra == {
        "audience_extra_version": 1,
        "vendor": "lytics",
        "account": lytics.account_id,
        "kind": "segment",
        "object_id": started["segment_id"],
        "object_name": "all_users",
        "action": "reevaluated",
        "vendor_size": value["size"],
        "link": value["url"],
    }


def test_job_id_is_optional(lytics, context, started):
    done = poke_until_done(sensor_for({**started, "job_id": None}), context)
    assert done.xcom_value["job_id"] == started["job_id"]


@pytest.mark.parametrize("status", ["failed", "fault-4"])
def test_failed_job_fails_the_poke(hook, lytics, context, status, reevaluated):
    seg = hook.get_segment("all_users")
    lytics.fail_next_reevaluation(seg["id"], status)
    sensor = sensor_for(reevaluated(seg["id"]))
    with pytest.raises(AudienceJobFailedError, match=f"'{status}'") as caught:
        poke_until_done(sensor, context)
    assert caught.value.code == status


def test_unknown_segment_fails_at_once(lytics, context):
    sensor = sensor_for({"segment_id": "0" * 32, "requested_at": "2026-01-01T00:00:00Z", "job_id": None})
    with pytest.raises(AudienceNotFoundError):
        sensor.poke(context)


def test_transient_errors_are_tolerated_up_to_the_budget(lytics, context, set_lytics_conn, started):
    conn_id = set_lytics_conn("lytics_one_try", extra={"max_retries": 1})
    lytics.faults.inject("status", count=10, path_prefix=f"/v2/segment/{started['segment_id']}", status=503)
    sensor = sensor_for(started, lytics_conn_id=conn_id, max_consecutive_failures=3)
    assert sensor.poke(context) is False
    assert sensor.poke(context) is False
    with pytest.raises(AudienceServerError):
        sensor.poke(context)


def test_a_good_answer_resets_the_failure_count(lytics, context, set_lytics_conn, started):
    conn_id = set_lytics_conn("lytics_one_try", extra={"max_retries": 1})
    path = f"/v2/segment/{started['segment_id']}"
    sensor = sensor_for(started, lytics_conn_id=conn_id, max_consecutive_failures=2)
    lytics.faults.inject("status", count=1, path_prefix=path, status=503)
    assert sensor.poke(context) is False  # failure 1 of 2
    sensor.poke(context)  # a good look (running or done): no raise
    lytics.faults.inject("status", count=1, path_prefix=path, status=503)
    assert sensor.poke(context) is False  # failure 1 of 2 again, not 2 of 2


def test_wrong_token_fails_at_once(lytics, context, set_lytics_conn, started):
    conn_id = set_lytics_conn("lytics_bad_token", password="wrong-token-0000")
    with pytest.raises(AudienceAuthenticationError):
        sensor_for(started, lytics_conn_id=conn_id, max_consecutive_failures=5).poke(context)


@pytest.mark.asyncio
async def test_deferrable_path(lytics, context, slow_started):
    started = slow_started
    sensor = sensor_for(started, deferrable=True)
    with pytest.raises(TaskDeferred) as deferred:
        sensor.execute(context)
    lytics.advance_time(60)
    trigger = deferred.value.trigger
    assert isinstance(trigger, LyticsReevaluationTrigger)
    assert deferred.value.method_name == "execute_complete"
    history = trigger.status_kwargs.pop("size_history")
    assert len(history) == 1  # the first poke's size reading goes along into the trigger
    assert trigger.status_kwargs == {
        "segment_id": started["segment_id"],
        "requested_at": started["requested_at"],
        "job_id": started["job_id"],
    }
    assert trigger.poll_interval == POLL
    assert f"/audiences/{started['segment_id']}" in context["ti"].pushed["lytics_segment_url"]

    event = (await anext(trigger.run())).payload
    result = sensor_for(started, deferrable=True).execute_complete(context, event)
    assert result["segment_id"] == started["segment_id"]
    assert result["size"] == lytics.segment_size(started["segment_id"])


def test_deferrable_sensor_does_not_defer_finished_work(lytics, context, started):
    lytics.advance_time(60)  # the reevaluation is long done
    result = sensor_for(started, deferrable=True).execute(context)
    assert result["segment_id"] == started["segment_id"]


@pytest.mark.asyncio
async def test_deferrable_timeout_ends_with_a_clear_message(hook, lytics, context, reevaluated):
    seg = hook.get_segment("all_users")
    lytics.stall_next_reevaluation(seg["id"])
    sensor = sensor_for(reevaluated(seg["id"]), deferrable=True, timeout=0.3)
    with pytest.raises(TaskDeferred) as deferred:
        sensor.execute(context)
    event = (await anext(deferred.value.trigger.run())).payload
    with pytest.raises(AudienceTimeoutError, match=f"Timed out waiting for reevaluation of Lytics segment {seg['id']}"):
        sensor.execute_complete(context, event)


@pytest.mark.parametrize(
    ("event", "error"),
    [
        (None, AudienceError),
        ({"status": "nope", "vendor": "lytics"}, AudienceError),
        ({"status": "success", "vendor": "criteo"}, AudienceError),
        (
            {"status": "failed", "vendor": "lytics", "message": "job j ended", "vendor_status": "failed"},
            AudienceJobFailedError,
        ),
        ({"status": "error", "vendor": "lytics", "message": "denied", "http_status": 401}, AudienceError),
    ],
)
def test_execute_complete_refuses_bad_events(context, event, error):
    sensor = sensor_for({"segment_id": "s", "requested_at": "t", "job_id": None}, deferrable=True)
    with pytest.raises(error):
        sensor.execute_complete(context, event)
    assert context["outlet_events"].added == []


def test_poke_mode_execute_waits_until_done(lytics, context, started):
    result = sensor_for(started, mode="poke").execute(context)
    assert result["segment_id"] == started["segment_id"]
    assert result["size"] == lytics.segment_size(started["segment_id"])
    assert context["ti"].pushed["lytics_segment_url"] == result["url"]


def test_reschedule_mode_gives_the_slot_back_while_running(lytics, context, slow_started):
    started = slow_started
    try:
        from airflow.sdk.exceptions import AirflowRescheduleException
    except ImportError:  # Airflow 3.1
        from airflow.exceptions import AirflowRescheduleException

    with pytest.raises(AirflowRescheduleException):
        sensor_for(started, mode="reschedule").execute(context)
    lytics.advance_time(60)  # the next try, after the reevaluation finished
    result = sensor_for(started, mode="reschedule").execute(context)
    assert result["size"] == lytics.segment_size(started["segment_id"])


@pytest.mark.parametrize("rendered", ["None", "", "null"])
def test_a_job_id_rendered_from_none_means_no_job_id(lytics, context, started, rendered):
    # "{{ ti.xcom_pull('reevaluate')['job_id'] }}" renders a missing id as "None"
    sensor = sensor_for({**started, "job_id": rendered})
    assert sensor.status_kwargs(context)["job_id"] is None
    lytics.advance_time(60)
    assert sensor.poke(context).xcom_value["job_id"] == started["job_id"]


def test_templated_fields_render(lytics, context, started):
    sensor = LyticsSegmentReevaluatedSensor(
        task_id="wait",
        segment_id="{{ params.seg }}",
        requested_at="{{ params.at }}",
        job_id="{{ params.job }}",
        poke_interval=POLL,
    )
    sensor.render_template_fields(
        {"params": {"seg": started["segment_id"], "at": started["requested_at"], "job": started["job_id"]}}
    )
    assert sensor.status_kwargs(context) == {
        "segment_id": started["segment_id"],
        "requested_at": started["requested_at"],
        "job_id": started["job_id"],
        "size_history": [],
    }


@pytest.mark.asyncio
@pytest.mark.parametrize("mode", ["poke", "deferrable"])
async def test_without_a_listed_job_the_settled_size_ends_the_wait(hook, lytics, context, mode):
    """The strict sandbox lists no reevaluation job: the size readings, kept across pokes and into
    the trigger, end the wait with the new size."""
    seg = hook.get_segment("all_users")
    before = lytics.segment_size(seg["id"])
    started = hook.reevaluate_segment(seg["id"])
    sensor = sensor_for({**started, "job_id": None}, settle_polls=3, settle_interval=0.15)
    if mode == "poke":
        done = poke_until_done(sensor, context, polls=200)
        value = done.xcom_value
    else:
        sensor.deferrable = True
        with pytest.raises(TaskDeferred) as deferred:
            sensor.execute(context)
        event = (await anext(deferred.value.trigger.run())).payload
        value = sensor.execute_complete(context, event)
    assert value["signal"] == "size_settled"
    assert value["size"] == lytics.segment_size(seg["id"]) != before
