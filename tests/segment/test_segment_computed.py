"""When is a change of a Segment audience computed? The status, and for BATCH audiences the time.

Segment documents that an edited BATCH audience shows ``Live`` at once and applies the edit at its
next scheduled compute, and the API reports neither that schedule nor a compute time. The fake
behaves so; the hook's status function must not call such an audience computed at the first look.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

from airflow_audience_provider.core.results import Phase

BATCH = "event('Order Completed').within(30 days).count() >= 1"
REALTIME = "event('Order Completed').count() >= 1"


def computed(hook, segment, query, wait_until):
    created = hook.create_audience("Buyers", query)
    segment.advance_time(60)
    assert hook.audience_compute_status(created["id"]).phase is Phase.DONE  # never edited: its status says it
    return created["id"]


def test_an_edited_batch_audience_reads_live_before_its_next_compute(hook, segment, wait_until):
    audience_id = computed(hook, segment, BATCH, wait_until)
    before = hook.get_audience(audience_id)
    assert before["computeCadence"]["type"] == "BATCH"
    hook.update_audience_for_space(audience_id, definition={"query": BATCH.replace(">= 1", ">= 2")})
    segment.advance_time(1)  # past the lock
    after = hook.get_audience(audience_id)
    assert after["status"] == "Live" and after["size"] == before["size"]  # the old definition's members
    look = hook.audience_compute_status(audience_id)
    assert (look.phase, look.vendor_status) == (Phase.RUNNING, "Live")
    assert "BATCH" in look.message and look.data["computed_after"]
    segment.advance_time(3600)  # the fake's batch schedule
    assert hook.get_audience(audience_id)["size"] != before["size"]  # the scheduled compute applied the edit


def test_an_edited_batch_audience_counts_as_computed_after_the_wait(hook, segment, wait_until):
    audience_id = computed(hook, segment, BATCH, wait_until)
    hook.update_audience_for_space(audience_id, description="changed")
    segment.advance_time(1)
    assert hook.audience_compute_status(audience_id, batch_compute_wait=3600).phase is Phase.RUNNING
    changed_at = datetime.now(UTC).isoformat()  # our clock: the fake's runs ahead after advance_time
    done = wait_until(
        lambda: (
            (r := hook.audience_compute_status(audience_id, changed_at=changed_at, batch_compute_wait=0.3)).phase
            is Phase.DONE
            and r
        )
    )
    assert done.data["status"] == "Live"


def test_an_edited_realtime_audience_is_judged_by_its_status(hook, segment, wait_until):
    segment.configure(processing_seconds=30)  # still locked at the first look, however loaded the machine
    audience_id = computed(hook, segment, REALTIME, wait_until)
    hook.update_audience_for_space(audience_id, definition={"query": REALTIME.replace(">= 1", ">= 2")})
    assert hook.audience_compute_status(audience_id).phase is Phase.RUNNING  # Locked, then Computing
    segment.advance_time(60)
    assert hook.audience_compute_status(audience_id).phase is Phase.DONE


def test_a_disabled_batch_audience_is_done_at_once(hook, segment, wait_until):
    audience_id = computed(hook, segment, BATCH, wait_until)
    hook.update_audience_for_space(audience_id, enabled=False)
    segment.advance_time(60)
    look = hook.audience_compute_status(audience_id)
    assert (look.phase, look.vendor_status) == (Phase.DONE, "Disabled")


def test_the_sensor_passes_changed_at_and_the_wait(segment, context):
    from airflow_audience_provider.sensors.segment import SegmentAudienceComputedSensor

    sensor = SegmentAudienceComputedSensor(
        task_id="wait", audience_id="aud_x", changed_at="2026-01-01T00:00:00Z", batch_compute_wait=5
    )
    kwargs = sensor.status_kwargs(context)
    assert kwargs["changed_at"] == "2026-01-01T00:00:00Z" and kwargs["batch_compute_wait"] == 5.0
    assert "changed_at" in sensor.template_fields
    assert time.time() > 0
