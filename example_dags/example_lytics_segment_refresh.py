"""Keep a Lytics audience in step with the repository, refresh it daily, announce it as an Asset.

1. ``upsert_segment`` creates the segment, or updates the one with the same slug (a rerun
   never duplicates it); the definition lives next to this file in ``lytics/*.fql``.
2. ``reevaluate`` asks Lytics to recompute membership and returns at once.
3. ``wait_for_reevaluation`` waits in the triggerer (deferrable) until Lytics' job completes,
   then records an Asset event ``lytics://<account>/segment/<id>`` with the new size.
4. ``example_lytics_downstream`` (the next file) is scheduled on that Asset.

Run it offline against the sandbox: ``make demo``.
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta

from airflow.sdk import DAG, task

from airflow_audience_provider.operators.lytics import (
    LyticsCreateOrUpdateSegmentGroupOperator,
    LyticsCreateOrUpdateSegmentOperator,
    LyticsReevaluateSegmentOperator,
)
from airflow_audience_provider.sensors.lytics import LyticsSegmentReevaluatedSensor

# Lytics has no published completion signal or quota for reevaluation; poll every few minutes.
# The demo and the tests shorten this through the environment.
POLL_SECONDS = float(os.environ.get("AUDIENCE_EXAMPLE_POLL_SECONDS", "300"))
SETTLE_SECONDS = float(os.environ.get("AUDIENCE_EXAMPLE_SETTLE_SECONDS", "900"))

with DAG(
    dag_id="example_lytics_segment_refresh",
    description="Upsert, reevaluate and wait for a Lytics audience; emit its Asset",
    schedule="@daily",
    start_date=datetime(2026, 1, 1),
    catchup=False,
    template_searchpath=[os.path.join(os.path.dirname(__file__), "lytics")],
    default_args={"retries": 2, "retry_delay": timedelta(minutes=5)},
    tags=["example", "lytics", "audience"],
) as dag:
    # [START howto_operator_lytics_group]
    group = LyticsCreateOrUpdateSegmentGroupOperator(
        task_id="ensure_group",
        name="Airflow managed audiences",
        description="Audiences whose definitions live in the data team's repository",
    )
    # [END howto_operator_lytics_group]

    # [START howto_operator_lytics_upsert]
    upsert = LyticsCreateOrUpdateSegmentOperator(
        task_id="upsert_segment",
        slug_name="high_value_customers",
        name="High value customers",
        segment_ql="high_value_customers.fql",  # a template file: rendered, then sent
        description="Managed by Airflow ({{ dag.dag_id }}); edit the repository, not the UI",
        tags=["airflow", "crm"],
        emit_asset=False,  # the refreshed audience is announced after reevaluation instead
    )
    # [END howto_operator_lytics_upsert]

    # [START howto_operator_lytics_reevaluate]
    reevaluate = LyticsReevaluateSegmentOperator(
        task_id="reevaluate",
        segment="{{ ti.xcom_pull(task_ids='upsert_segment')['segment_id'] }}",
        wait_for_completion=False,  # the sensor below waits without holding a worker slot
        emit_asset=False,
    )
    # [END howto_operator_lytics_reevaluate]

    # [START howto_sensor_lytics_reevaluated]
    wait = LyticsSegmentReevaluatedSensor(
        task_id="wait_for_reevaluation",
        segment_id="{{ ti.xcom_pull(task_ids='reevaluate')['segment_id'] }}",
        requested_at="{{ ti.xcom_pull(task_ids='reevaluate')['requested_at'] }}",
        # Lytics documents no "done" signal: a job of the segment completing, or the size staying
        # the same over 3 readings this far apart, ends the wait (see the sensor's docs).
        settle_interval=SETTLE_SECONDS,
        deferrable=True,
        poke_interval=POLL_SECONDS,
        timeout=2 * 60 * 60,
    )
    # [END howto_sensor_lytics_reevaluated]

    @task
    def report(refreshed: dict) -> dict:
        """A small summary for the logs and for XCom."""
        print(
            f"Lytics segment {refreshed['slug_name']} ({refreshed['segment_id']}) now has {refreshed['size']} members"
        )
        return {"segment_id": refreshed["segment_id"], "size": refreshed["size"], "asset_uri": refreshed["asset_uri"]}

    group >> upsert >> reevaluate >> wait
    report(wait.output)
