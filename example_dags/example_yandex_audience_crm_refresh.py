"""Nightly CRM refresh into Yandex.Audience: incremental sync, wait for processing, lookalike, agency grant, Assets.

1. ``export_crm`` stands in for the CRM export: a CSV of customers with an ``email`` column.
2. ``sync_crm`` syncs it into the file segment named "CRM buyers (Airflow)": the first run uploads and
   confirms it; later runs send only the difference (an ``addition`` and a ``subtraction`` file), so a
   rerun never creates a second segment. E-mails are normalised and SHA-256 hashed before they leave.
3. ``wait_for_processing`` waits in the triggerer (deferrable) until Yandex has matched the segment
   (``processed``); ``few_data`` or ``processing_failed`` fail it. Each check costs one request of the
   login's daily budget of 5000, so it polls every five minutes.
4. ``build_lookalike`` creates the lookalike segment from it once (idempotent by name), and
   ``wait_for_lookalike`` waits in ``reschedule`` mode until Yandex has built it: between checks the
   task gives its worker slot back, and no triggerer is needed.
5. ``grant_agency`` shares both segments with the agency's Direct login, so they appear in its Direct
   goal list (Direct sees a segment only once it is processed and owned or granted).
6. The sensor and the lookalike record Asset events ``yandex-audience://<login>/segment/<id>``.

Run it offline against the sandbox: ``make demo``. Pass ``{"shift": 5}`` as the run's conf to see an
incremental run (five customers leave, five join).
"""

from __future__ import annotations

import contextlib
import csv
import os
from datetime import datetime, timedelta

from airflow.sdk import DAG, task

from airflow_audience_provider.operators.yandex_audience import (
    YandexAudienceCreateLookalikeSegmentOperator,
    YandexAudienceGrantSegmentAccessOperator,
    YandexAudienceUploadContactListOperator,
)
from airflow_audience_provider.sensors.yandex_audience import YandexAudienceSegmentProcessedSensor

# Yandex counts every status check against a daily budget: poll every few minutes. The demo and the
# tests shorten this through the environment.
POLL_SECONDS = float(os.environ.get("AUDIENCE_EXAMPLE_POLL_SECONDS", "300"))
# A running Airflow may fail a task that reschedules every second, so reschedule-mode checks are at
# least 15 s apart; under ``airflow dags test`` (no scheduler) the tests shorten this too.
RESCHEDULE_SECONDS = float(os.environ.get("AUDIENCE_EXAMPLE_RESCHEDULE_SECONDS") or max(POLL_SECONDS, 15))
AGENCY_LOGIN = "agency-direct-login"
# Where the stand-in CRM export is written: every worker must read it, so with several workers point
# AUDIENCE_EXAMPLE_DATA_DIR at shared storage. Files are private to the user and removed after the sync.
DATA_DIR = os.path.expanduser(
    os.environ.get("AUDIENCE_EXAMPLE_DATA_DIR")
    or os.path.join(os.environ.get("AIRFLOW_HOME", "~/airflow"), "audience_example_data")
)

with DAG(
    dag_id="example_yandex_audience_crm_refresh",
    description="Sync a CRM export into a Yandex.Audience segment, wait for processing, lookalike, grant",
    schedule="@daily",
    start_date=datetime(2026, 1, 1),
    catchup=False,
    # Segment writes are limited to 10 a minute per login: never run two refreshes at once.
    max_active_runs=1,
    default_args={"retries": 2, "retry_delay": timedelta(minutes=10)},
    tags=["example", "yandex_audience", "audience"],
) as dag:

    @task
    def export_crm(dag_run=None, run_id=None) -> dict:
        """Write the CRM export (a stand-in for a real one): 300 customers, shifted by ``conf["shift"]``."""
        shift = int((dag_run.conf or {}).get("shift", 0)) if dag_run else 0
        os.makedirs(DATA_DIR, mode=0o700, exist_ok=True)
        safe_run = "".join(c if c.isalnum() else "_" for c in str(run_id or "manual"))
        path = os.path.join(DATA_DIR, f"yandex_audience_crm_{safe_run}.csv")
        # Clear-text e-mails: readable by this user only.
        with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(["customer_id", "email", "city"])
            for i in range(shift, shift + 300):
                writer.writerow([i, f"Customer.{i}@Example.com", "Moscow"])
        return {"path": path, "format": "csv", "column": "email"}

    @task(trigger_rule="all_done")
    def remove_export(export: dict) -> None:
        """Delete the clear-text export once the sync has finished, whatever its outcome."""
        with contextlib.suppress(FileNotFoundError):
            os.remove(export["path"])

    # [START howto_operator_yandex_audience_upload]
    sync = YandexAudienceUploadContactListOperator(
        task_id="sync_crm",
        segment_name="CRM buyers (Airflow)",
        source="{{ ti.xcom_pull(task_ids='export_crm')['path'] }}",
        column="email",
        identifier_type="email",
        mode="sync",  # incremental: addition + subtraction files after the first run
        emit_asset=False,  # the processed segment is announced by the sensor instead
    )
    # [END howto_operator_yandex_audience_upload]

    # [START howto_sensor_yandex_audience_processed]
    wait = YandexAudienceSegmentProcessedSensor(
        task_id="wait_for_processing",
        segment_id="{{ ti.xcom_pull(task_ids='sync_crm')['segment_id'] }}",
        deferrable=True,
        poke_interval=POLL_SECONDS,
        timeout=4 * 60 * 60,
    )
    # [END howto_sensor_yandex_audience_processed]

    # [START howto_operator_yandex_audience_lookalike]
    lookalike = YandexAudienceCreateLookalikeSegmentOperator(
        task_id="build_lookalike",
        name="CRM buyers lookalike (Airflow)",
        source_segment_id="{{ ti.xcom_pull(task_ids='wait_for_processing')['segment_id'] }}",
        lookalike_value=3,
        maintain_geo_distribution=True,
    )
    # [END howto_operator_yandex_audience_lookalike]

    # [START howto_sensor_yandex_audience_reschedule]
    lookalike_ready = YandexAudienceSegmentProcessedSensor(
        task_id="wait_for_lookalike",
        segment_id="{{ ti.xcom_pull(task_ids='build_lookalike')['segment_id'] }}",
        mode="reschedule",  # frees the worker slot between checks; no triggerer needed
        deferrable=False,
        # Each check is a new worker process: reschedule mode is for waits of minutes, not seconds.
        poke_interval=RESCHEDULE_SECONDS,
        timeout=4 * 60 * 60,
        emit_asset=False,  # build_lookalike has announced it already
    )
    # [END howto_sensor_yandex_audience_reschedule]

    # [START howto_operator_yandex_audience_grant]
    grant_crm = YandexAudienceGrantSegmentAccessOperator(
        task_id="grant_agency_crm",
        segment_id="{{ ti.xcom_pull(task_ids='wait_for_processing')['segment_id'] }}",
        user_logins=[AGENCY_LOGIN],
        comment="Retargeting in Direct",
    )
    grant_lookalike = YandexAudienceGrantSegmentAccessOperator(
        task_id="grant_agency_lookalike",
        segment_id="{{ ti.xcom_pull(task_ids='build_lookalike')['segment_id'] }}",
        user_logins=[AGENCY_LOGIN],
        comment="Prospecting in Direct",
    )
    # [END howto_operator_yandex_audience_grant]

    exported = export_crm()
    exported >> sync >> wait >> [lookalike, grant_crm]
    sync >> remove_export(exported)
    lookalike >> lookalike_ready >> grant_lookalike
