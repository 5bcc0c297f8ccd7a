"""Roll out a Segment Engage audience whose definition lives in the repository; announce it as an Asset.

1. ``upsert_audience`` creates the audience (disabled, so nothing computes yet), or updates the
   one with the same name; the query lives next to this file in ``segment/*.segmentql``.
2. ``preview_size`` previews the definition and fails the run when the audience would be
   empty. An already computed audience with the same definition is not previewed again, so a
   daily run spends none of the 700 previews a month.
3. ``enable_audience`` switches computation on, after the edit lock of step 1 has cleared.
4. ``wait_until_computed`` waits in the triggerer (deferrable) until Segment reports the
   audience ``Live``, then records an Asset event ``segment://<space>/audience/<id>``.

Run it offline against the sandbox: ``make demo``.
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta

from airflow.sdk import DAG, task

from airflow_audience_provider.operators.segment import (
    SegmentCreateOrUpdateAudienceOperator,
    SegmentEnableAudienceOperator,
    SegmentPreviewAudienceOperator,
)
from airflow_audience_provider.sensors.segment import SegmentAudienceComputedSensor

# Segment refreshes compute progress about every 10 minutes; polling faster gains nothing.
# The demo and the tests shorten this through the environment.
POLL_SECONDS = float(os.environ.get("AUDIENCE_EXAMPLE_POLL_SECONDS", "600"))
# An edited BATCH audience reads Live before its next scheduled compute applies the edit.
BATCH_WAIT_SECONDS = float(os.environ.get("AUDIENCE_EXAMPLE_BATCH_WAIT_SECONDS", str(24 * 60 * 60)))
AUDIENCE_NAME = "Recent purchasers (Airflow)"

with DAG(
    dag_id="example_segment_audience_rollout",
    description="Create or update, preview, enable and wait for a Segment audience; emit its Asset",
    schedule="@daily",
    start_date=datetime(2026, 1, 1),
    catchup=False,
    template_searchpath=[os.path.join(os.path.dirname(__file__), "segment")],
    default_args={"retries": 2, "retry_delay": timedelta(minutes=10)},
    tags=["example", "segment", "audience"],
) as dag:
    # [START howto_operator_segment_upsert]
    upsert = SegmentCreateOrUpdateAudienceOperator(
        task_id="upsert_audience",
        name=AUDIENCE_NAME,
        definition="recent_purchasers.segmentql",  # a template file: rendered, then sent
        audience_type="USERS",
        description="Managed by Airflow ({{ dag.dag_id }}); edit the repository, not the Segment app",
        options={"includeHistoricalData": True, "backfillEventDataDays": 30},
        lock_poll_interval=POLL_SECONDS,
        emit_asset=False,  # the audience is announced once it has computed
    )
    # [END howto_operator_segment_upsert]

    # [START howto_operator_segment_preview]
    preview = SegmentPreviewAudienceOperator(
        task_id="preview_size",
        definition="recent_purchasers.segmentql",
        audience_type="USERS",
        audience_name=AUDIENCE_NAME,  # unchanged and computed: reuse its size, spend no preview
        batch_compute_wait=BATCH_WAIT_SECONDS,
        min_size=1,
        deferrable=True,
        poll_interval=POLL_SECONDS,
        timeout=30 * 60,
    )
    # [END howto_operator_segment_preview]

    # [START howto_operator_segment_enable]
    enable = SegmentEnableAudienceOperator(
        task_id="enable_audience",
        audience_id="{{ ti.xcom_pull(task_ids='upsert_audience')['audience_id'] }}",
        deferrable=True,  # a lock left by an edit is waited out in the triggerer, not in a worker slot
        lock_poll_interval=POLL_SECONDS,
        lock_timeout=6 * 60 * 60,
    )
    # [END howto_operator_segment_enable]

    # [START howto_sensor_segment_computed]
    wait = SegmentAudienceComputedSensor(
        task_id="wait_until_computed",
        audience_id="{{ ti.xcom_pull(task_ids='upsert_audience')['audience_id'] }}",
        deferrable=True,
        poke_interval=POLL_SECONDS,
        # Segment reports no batch compute time: an edited BATCH audience counts as computed this
        # long after its last change (see the sensor's docs).
        batch_compute_wait=BATCH_WAIT_SECONDS,
        timeout=30 * 60 * 60,  # Segment advises allowing a day for a first computation
    )
    # [END howto_sensor_segment_computed]

    @task
    def report(computed: dict, previewed: dict) -> dict:
        """A small summary for the logs and for XCom."""
        print(
            f"Segment audience {computed['name']} ({computed['audience_id']}) is {computed['status']} "
            f"with {computed['size']} members (preview said {previewed['size']})"
        )
        return {"audience_id": computed["audience_id"], "size": computed["size"], "asset_uri": computed["asset_uri"]}

    upsert >> preview >> enable >> wait
    report(wait.output, preview.output)
