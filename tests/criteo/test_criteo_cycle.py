"""The computation cycle: window arithmetic, the trigger (serialisation, restarts, events) and the sensor."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from airflow_audience_provider.core.errors import AudienceTimeoutError, AudienceValidationError
from airflow_audience_provider.domain.criteo_cycle import latest_safe_upload_time, live_at, next_computation_window
from airflow_audience_provider.sensors.criteo import _TRIGGERER_RENDERS_TEMPLATES, CriteoAudienceLiveSensor
from airflow_audience_provider.triggers.criteo import CriteoComputationWindowTrigger


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


# -- arithmetic ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("finished", "window", "live"),
    [
        ("2026-11-25T11:50:00", "2026-11-25T12:00:00", "2026-11-25T17:00:00"),  # done before 12h: live ~5 h later
        ("2026-11-25T12:10:00", "2026-11-26T00:00:00", "2026-11-26T05:00:00"),
        ("2026-11-25T12:00:00", "2026-11-25T12:00:00", "2026-11-25T17:00:00"),  # exactly at the window
        ("2026-12-31T23:59:59", "2027-01-01T00:00:00", "2027-01-01T05:00:00"),
    ],
)
def test_next_window_and_live_time(finished, window, live):
    assert next_computation_window(utc(finished)) == utc(window)
    assert live_at(finished + "Z") == utc(live)


def test_windows_with_other_hours_an_interval_and_delays():
    # 07:00 at UTC+2 is 05:00 UTC: the 06:00 UTC window is next
    assert next_computation_window("2026-11-25T07:00:00+02:00", hours_utc=[6, 18]) == utc("2026-11-25T06:00:00")
    assert next_computation_window("2026-11-25T09:00:00+02:00", hours_utc=[6, 18]) == utc("2026-11-25T18:00:00")
    assert next_computation_window(1001.5, interval_seconds=2) == datetime.fromtimestamp(1002, UTC)
    assert live_at(1001.5, interval_seconds=2, propagation_delay=0.5) == datetime.fromtimestamp(1002.5, UTC)
    with pytest.raises(AudienceValidationError):
        next_computation_window(0, hours_utc=[24])
    with pytest.raises(AudienceValidationError):
        next_computation_window("yesterday")


def test_latest_safe_upload_time():
    assert latest_safe_upload_time("2026-11-25T09:00:00Z") == utc("2026-11-25T11:30:00")
    assert latest_safe_upload_time("2026-11-25T11:45:00Z") == utc("2026-11-25T23:30:00")  # 11:30 has passed
    margin = timedelta(hours=1, minutes=30)
    assert latest_safe_upload_time("2026-11-25T21:00:00Z", safety_margin=margin) == utc("2026-11-25T22:30:00")


# -- hook status function -----------------------------------------------------------------------


def test_computation_status_waits_then_confirms_with_statistics(hook, criteo):
    from airflow_audience_provider.core.results import Phase

    future = datetime.now(UTC).isoformat()
    waiting = hook.computation_status(future, hours_utc=[0, 12], propagation_delay_seconds=3600)
    assert waiting.phase is Phase.RUNNING and waiting.vendor_status in {"waiting_for_window", "propagating"}
    past = "2026-01-01T00:00:00Z"
    assert hook.computation_status(past).phase is Phase.DONE
    sid = criteo.segments[0]["id"]
    pending = hook.computation_status(past, segment_id=sid, min_identifiers=1)
    assert pending.phase is Phase.RUNNING and pending.vendor_status == "statistics_pending"
    hook.add_remove_contact_list_by_audience_segment(sid, "add", ["a" * 64], "email")
    done = hook.computation_status(past, segment_id=sid, min_identifiers=1)
    assert done.phase is Phase.DONE and done.data["statistics"]["number_of_identifiers"] == 1


# -- trigger ------------------------------------------------------------------------------------


def _run(trigger):
    async def first():
        async for event in trigger.run():
            return event.payload

    return asyncio.run(first())


def test_trigger_serialises_and_a_restarted_trigger_waits_for_the_same_moment(criteo):
    trigger = CriteoComputationWindowTrigger(
        uploaded_at="2026-11-25T11:50:00Z", segment_id="730011223344", min_identifiers="5", poll_interval=1.0
    )
    path, kwargs = trigger.serialize()
    assert path == "airflow_audience_provider.triggers.criteo.CriteoComputationWindowTrigger"
    restarted = CriteoComputationWindowTrigger(**kwargs)
    assert restarted.serialize() == (path, kwargs)
    assert restarted.current_status_kwargs() == trigger.current_status_kwargs()
    assert trigger.current_status_kwargs()["min_identifiers"] == 5


def test_trigger_fires_after_window_plus_delay(criteo):
    uploaded = datetime.now(UTC).isoformat()
    trigger = CriteoComputationWindowTrigger(
        uploaded_at=uploaded, interval_seconds=0.5, propagation_delay_seconds=0.3, poll_interval=0.05
    )
    event = _run(trigger)
    assert event["status"] == "success" and event["vendor"] == "criteo"
    assert datetime.fromisoformat(event["result"]["live_at"]) <= datetime.now(UTC)
    assert event["result"]["uploaded_at"] == datetime.fromisoformat(uploaded).isoformat()


def test_trigger_renders_templated_attributes_before_running(criteo):
    trigger = CriteoComputationWindowTrigger(
        uploaded_at="{{ upload_time }}", interval_seconds=0.2, propagation_delay_seconds=0, poll_interval=0.05
    )
    trigger.uploaded_at = "2026-01-01T00:00:00Z"  # what the triggerer's rendering does in place
    assert _run(trigger)["status"] == "success"


def test_trigger_times_out_with_a_clear_message(criteo):
    import time

    trigger = CriteoComputationWindowTrigger(
        uploaded_at=datetime.now(UTC).isoformat(), poll_interval=0.05, deadline=time.time() + 0.2
    )
    event = _run(trigger)
    assert event["status"] == "timeout" and "Criteo computes at" in event["message"]


def test_trigger_with_a_bad_time_reports_an_error(criteo):
    event = _run(CriteoComputationWindowTrigger(uploaded_at="not a time", poll_interval=0.05))
    assert event["status"] == "error" and "not an ISO-8601 time" in event["message"]


# -- sensor -------------------------------------------------------------------------------------


@pytest.mark.skipif(not _TRIGGERER_RENDERS_TEMPLATES, reason="Airflow 3.3 is the first whose triggerer renders")
def test_sensor_starts_in_the_triggerer_with_templated_kwargs():
    sensor = CriteoAudienceLiveSensor(
        task_id="live",
        uploaded_at="{{ ti.xcom_pull(task_ids='upload')['finished_at'] }}",
        segment_id="{{ ti.xcom_pull(task_ids='upload')['segment_id'] }}",
        interval_seconds=2,
        propagation_delay=1,
        timeout=60,
    )
    assert sensor.start_from_trigger is True
    args = sensor.start_trigger_args
    assert args.trigger_cls == "airflow_audience_provider.triggers.criteo.CriteoComputationWindowTrigger"
    assert args.next_method == "execute_complete" and args.timeout == timedelta(seconds=60)
    # the trigger is built from these kwargs, and the templated ones have the same names on both sides
    trigger = CriteoComputationWindowTrigger(**args.trigger_kwargs)
    templated = {f for f in sensor.template_fields if f in args.trigger_kwargs and hasattr(trigger, f)}
    assert templated == {"uploaded_at", "segment_id", "owner_id", "min_identifiers", "criteo_conn_id"}


def test_where_the_triggerer_cannot_render_templates_the_sensor_starts_on_a_worker(monkeypatch):
    import airflow_audience_provider.sensors.criteo as module

    monkeypatch.setattr(module, "_TRIGGERER_RENDERS_TEMPLATES", False)  # Airflow 3.1 and 3.2
    templated = "{{ ti.xcom_pull(task_ids='upload')['finished_at'] }}"
    assert CriteoAudienceLiveSensor(task_id="a", uploaded_at=templated).start_from_trigger is False
    with pytest.warns(UserWarning, match="uploaded_at needs Airflow 3.3"):
        sensor = CriteoAudienceLiveSensor(task_id="b", uploaded_at=templated, start_from_trigger=True)
    assert sensor.start_from_trigger is False
    plain = CriteoAudienceLiveSensor(task_id="c", uploaded_at="2026-01-01T00:00:00Z")
    assert plain.start_from_trigger is True and plain.start_trigger_args.trigger_kwargs["uploaded_at"] == (
        "2026-01-01T00:00:00Z"
    )
    assert (
        CriteoAudienceLiveSensor(task_id="d", uploaded_at=templated, start_from_trigger=False).start_from_trigger
        is False
    )


def test_sensor_poke_mode_done_emits_the_segment_asset(criteo, context):
    sid = criteo.segments[0]["id"]
    sensor = CriteoAudienceLiveSensor(
        task_id="live", uploaded_at="2026-01-01T00:00:00Z", segment_id=sid, deferrable=False, poke_interval=0.01
    )
    result = sensor.execute(context)
    assert result["asset_uri"] == f"criteo://424242/segment/{sid}"
    assert context["outlet_events"].added[0][:2] == ("criteo-segments", f"criteo://424242/segment/{sid}")
    assert sid in context["ti"].pushed["criteo_segment_url"]


def test_sensor_defers_from_a_worker_and_completes_from_the_event(criteo, context):
    from airflow.providers.common.compat.sdk import TaskDeferred

    sensor = CriteoAudienceLiveSensor(
        task_id="live", uploaded_at=datetime.now(UTC).isoformat(), interval_seconds=3600, timeout=30
    )
    with pytest.raises(TaskDeferred) as deferred:
        sensor.execute(context)
    trigger = deferred.value.trigger
    assert isinstance(trigger, CriteoComputationWindowTrigger) and trigger.deadline is not None
    event = {
        "status": "success",
        "vendor": "criteo",
        "message": "live",
        "schema": 1,
        "result": {"live_at": "x", "segment_id": None},
    }
    assert sensor.execute_complete(context, event)["live_at"] == "x"
    with pytest.raises(AudienceTimeoutError):
        sensor.execute_complete(context, {"status": "timeout", "vendor": "criteo", "message": "too long"})
