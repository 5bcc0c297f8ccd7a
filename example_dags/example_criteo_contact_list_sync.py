"""Keep a Criteo contact list in step with the CRM twice a day, before Criteo's computation cutoffs.

Criteo computes audiences at 00:00 and 12:00 UTC and needs about 5 hours more to reach live
campaigns. This DAG runs at 10:30 and 22:30 UTC so that its upload finishes before the next cutoff:

1. ``export_customers`` writes today's customer list (here: a generated CSV; in real life a
   warehouse query) and checks there is time left before the next cutoff;
2. ``ensure_segment`` / ``ensure_exclusion`` find the contact-list segments by name (created on the
   first run, never duplicated);
3. ``sync_contact_list`` sends only the difference since the last run (incremental sync);
4. ``ensure_audience`` combines the list with the exclusion segment: customers who did not opt out;
5. ``wait_until_live`` waits in the triggerer until the next computation window plus the
   propagation delay, then records the Asset event ``criteo://<account>/segment/<id>``. It starts
   there on Airflow 3.3+, whose triggerer renders its templates; on 3.1 and 3.2 it starts on a
   worker and defers.

Run it offline against the sandbox: ``make demo`` (the windows are seconds apart there).
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta

from airflow.sdk import DAG, task

from airflow_audience_provider.operators.criteo import (
    CriteoCreateOrUpdateAudienceOperator,
    CriteoCreateOrUpdateSegmentOperator,
    CriteoUploadContactListOperator,
)
from airflow_audience_provider.sensors.criteo import CriteoAudienceLiveSensor

POLL_SECONDS = float(os.environ.get("AUDIENCE_EXAMPLE_POLL_SECONDS", "300"))
# Criteo's real cycle: 00:00 and 12:00 UTC, live 5 hours later. Against the sandbox (``make demo``
# and the tests set AUDIENCE_EXAMPLE_POLL_SECONDS) the cycle shrinks to a window every 2 seconds and
# a 3-second delay, unless AUDIENCE_EXAMPLE_CRITEO_WINDOW_SECONDS / _DELAY_SECONDS say otherwise.
_SANDBOX_RUN = "AUDIENCE_EXAMPLE_POLL_SECONDS" in os.environ
WINDOW_SECONDS = os.environ.get("AUDIENCE_EXAMPLE_CRITEO_WINDOW_SECONDS", "2" if _SANDBOX_RUN else "")
DELAY_SECONDS = float(os.environ.get("AUDIENCE_EXAMPLE_CRITEO_DELAY_SECONDS", "3" if _SANDBOX_RUN else "18000"))
RETAILER_ID = "311"
# Where the stand-in customer export is written: every worker must read it, so with several workers
# point AUDIENCE_EXAMPLE_DATA_DIR at shared storage. Files are private to the user and removed after the sync.
DATA_DIR = os.path.expanduser(
    os.environ.get("AUDIENCE_EXAMPLE_DATA_DIR")
    or os.path.join(os.environ.get("AIRFLOW_HOME", "~/airflow"), "audience_example_data")
)

with DAG(
    dag_id="example_criteo_contact_list_sync",
    description="Sync a CRM list to a Criteo contact list before the cutoffs, build an audience, wait until live",
    # [START howto_criteo_schedule_before_cutoffs]
    schedule="30 10,22 * * *",  # 90 minutes before the 12:00 and 00:00 UTC computations
    # [END howto_criteo_schedule_before_cutoffs]
    start_date=datetime(2026, 1, 1),
    catchup=False,
    default_args={"retries": 2, "retry_delay": timedelta(minutes=5)},
    tags=["example", "criteo", "audience"],
) as dag:
    # [START howto_criteo_latest_safe_upload_time]
    @task
    def export_customers(run_id=None) -> dict:
        """Write the customer list; warn when the upload may miss the next computation window."""
        import csv
        import logging
        from datetime import UTC

        from airflow_audience_provider.domain.criteo_cycle import latest_safe_upload_time

        cutoff = latest_safe_upload_time(datetime.now(UTC), safety_margin=timedelta(minutes=30))
        logging.getLogger(__name__).info("Finish this upload before %s to make the next window", cutoff)
        os.makedirs(DATA_DIR, mode=0o700, exist_ok=True)
        safe_run = "".join(c if c.isalnum() else "_" for c in str(run_id or "manual"))
        path = os.path.join(DATA_DIR, f"criteo_customers_{safe_run}.csv")
        # Clear-text e-mails: readable by this user only.
        with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["customer_id", "email"])
            for n in range(250):
                writer.writerow([n, f"Customer.{n}@Example.com "])  # the engine trims, lower-cases, hashes
        return {"path": path, "format": "csv", "column": "email"}

    # [END howto_criteo_latest_safe_upload_time]

    # [START howto_operator_criteo_segment]
    ensure_segment = CriteoCreateOrUpdateSegmentOperator(
        task_id="ensure_segment",
        name="crm-loyal-customers",
        retailer_id=RETAILER_ID,
        identifier_type="Email",
        description="Loyalty members, synced by Airflow ({{ dag.dag_id }})",
        emit_asset=False,  # the segment is announced once its changes are live, below
    )
    # [END howto_operator_criteo_segment]

    ensure_exclusion = CriteoCreateOrUpdateSegmentOperator(
        task_id="ensure_exclusion", name="Opted-out customers", retailer_id=RETAILER_ID, emit_asset=False
    )

    exported = export_customers()

    # [START howto_operator_criteo_upload]
    sync = CriteoUploadContactListOperator(
        task_id="sync_contact_list",
        segment_id="{{ ti.xcom_pull(task_ids='ensure_segment')['segment_id'] }}",
        source=exported,  # {"path", "format", "column"} from the export task
        identifier_type="email",
        mode="sync",  # incremental: only additions and removals since the last run
        max_removal_share=0.2,  # a broken export must not empty the list
        emit_asset=False,
    )
    # [END howto_operator_criteo_upload]

    # [START howto_operator_criteo_audience]
    audience = CriteoCreateOrUpdateAudienceOperator(
        task_id="ensure_audience",
        name="Loyal customers without opt-outs",
        retailer_id=RETAILER_ID,
        algebra={
            "and": [
                {"audienceSegmentId": "{{ ti.xcom_pull(task_ids='ensure_segment')['segment_id'] }}"},
                {"not": {"audienceSegmentId": "{{ ti.xcom_pull(task_ids='ensure_exclusion')['segment_id'] }}"}},
            ]
        },
    )
    # [END howto_operator_criteo_audience]

    # [START howto_sensor_criteo_live]
    wait = CriteoAudienceLiveSensor(
        task_id="wait_until_live",
        # Rendered by the triggerer: an unmapped task's XCom is one read, which the triggerer serves.
        uploaded_at="{{ ti.xcom_pull(task_ids='sync_contact_list')['finished_at'] }}",
        segment_id="{{ ti.xcom_pull(task_ids='sync_contact_list')['segment_id'] }}",
        interval_seconds=float(WINDOW_SECONDS) if WINDOW_SECONDS else None,  # None: 00:00 and 12:00 UTC
        propagation_delay=DELAY_SECONDS,
        poke_interval=POLL_SECONDS,
        timeout=24 * 60 * 60,
    )
    # [END howto_sensor_criteo_live]

    @task(trigger_rule="all_done")
    def remove_export(export: dict) -> None:
        """Delete the clear-text export once the sync has finished, whatever its outcome."""
        import contextlib

        with contextlib.suppress(FileNotFoundError):
            os.remove(export["path"])

    exported >> ensure_segment >> sync >> remove_export(exported)
    [sync, ensure_exclusion] >> audience >> wait
