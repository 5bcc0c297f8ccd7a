"""A contact-list sync that is planned first and sent only when the plan passes review.

1. ``export_crm`` writes the CRM export (a stand-in for a real one).
2. ``plan_sync`` runs the upload as a **plan only**: it reads, normalises, hashes and diffs the list
   against the last snapshot and reports adds, removes, invalid rows, duplicates and the requests it
   would make, sending nothing.
3. ``review_plan`` lets the plan through on its own when no guard blocked it and it removes at most
   ``max_removed`` members. A larger removal goes to ``approve_plan``: Airflow's human-in-the-loop
   ``ApprovalOperator`` (``airflow.providers.standard.operators.hitl``) shows the plan's counts and
   waits for a person to approve or reject it (Required Actions in the UI, or the REST API). With
   ``ask_approval`` false, or on an Airflow without that operator, a larger removal stops the run.
   A plan blocked by any other guard (e.g. too many invalid rows) always stops it.
4. ``sync_crm`` sends the difference; a rejection, an unanswered request (12 hours) or a stop
   skips it, so nothing is sent. ``remove_export`` deletes the clear-text export in every case.
5. ``wait_for_processing`` checks in ``poke`` mode until Yandex has processed the list: a short
   wait, so the task keeps its worker slot instead of going back to the scheduler between checks.

Run ``{"shift": 200}`` as conf after a first run to see a sync that would remove two thirds of the
list wait for approval (``{"shift": 200, "ask_approval": false}`` stops it instead).
"""

from __future__ import annotations

import contextlib
import csv
import os
from datetime import datetime, timedelta

from airflow.providers.standard.operators.empty import EmptyOperator
from airflow.sdk import DAG, Param, task

from airflow_audience_provider.operators.yandex_audience import YandexAudienceUploadContactListOperator
from airflow_audience_provider.sensors.yandex_audience import YandexAudienceSegmentProcessedSensor

try:  # Airflow's human-in-the-loop operators: standard provider on Airflow 3.1+
    from airflow.providers.standard.operators.hitl import ApprovalOperator
except ImportError:
    ApprovalOperator = None

SEGMENT_NAME = "CRM reviewed (Airflow)"
# The demo and the tests shorten the processing checks through the environment.
POLL_SECONDS = float(os.environ.get("AUDIENCE_EXAMPLE_POLL_SECONDS", "60"))
# Where the stand-in CRM export is written: every worker must read it, so with several workers point
# AUDIENCE_EXAMPLE_DATA_DIR at shared storage. Files are private to the user and removed at the end.
DATA_DIR = os.path.expanduser(
    os.environ.get("AUDIENCE_EXAMPLE_DATA_DIR")
    or os.path.join(os.environ.get("AIRFLOW_HOME", "~/airflow"), "audience_example_data")
)

with DAG(
    dag_id="example_yandex_audience_reviewed_sync",
    description="Plan a Yandex.Audience contact-list sync, review the plan, then send it",
    schedule="@daily",
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    params={
        "max_removed": Param(50, type="integer", description="Most members one sync may remove unreviewed"),
        "ask_approval": Param(True, type="boolean", description="Ask a person about a larger removal (else stop)"),
    },
    tags=["example", "yandex_audience", "audience"],
) as dag:

    @task
    def export_crm(dag_run=None, run_id=None) -> str:
        """300 customers, shifted by ``conf["shift"]`` to simulate customers leaving and joining."""
        shift = int((dag_run.conf or {}).get("shift", 0)) if dag_run else 0
        os.makedirs(DATA_DIR, mode=0o700, exist_ok=True)
        safe_run = "".join(c if c.isalnum() else "_" for c in str(run_id or "manual"))
        path = os.path.join(DATA_DIR, f"yandex_audience_reviewed_{safe_run}.csv")
        # Clear-text e-mails: readable by this user only.
        with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(["email"])
            for i in range(shift, shift + 300):
                writer.writerow([f"reviewed.{i}@example.com"])
        return path

    exported = export_crm()

    @task(trigger_rule="all_done")
    def remove_export(path: str) -> None:
        """Delete the clear-text export once the run is over, whether the sync ran or was stopped."""
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)

    # [START howto_operator_yandex_audience_plan]
    plan = YandexAudienceUploadContactListOperator(
        task_id="plan_sync",
        segment_name=SEGMENT_NAME,
        source=exported,
        column="email",
        identifier_type="email",
        mode="sync",
        plan_only=True,  # count, diff and check; send nothing
    )

    @task.branch
    def review_plan(planned: dict, params=None) -> str | None:
        """Within limits: sync; a larger removal: ask a person (or stop); blocked by a guard: stop."""
        from airflow_audience_provider.identifiers import plan_allows

        counts = planned["counts"]
        print(f"Plan: +{counts.get('added', 0)} -{counts.get('removed', 0)}, invalid {counts.get('invalid', 0)}")
        if plan_allows(planned, max_removed=int(params["max_removed"])):
            return "within_limits"
        guards = {blocked["guard"] for blocked in planned.get("blocked_by", [])}
        if guards - {"RemovalGuardError"} or ApprovalOperator is None or not params["ask_approval"]:
            return None  # stop: everything downstream is skipped
        return "approve_plan"  # only the removal is too large: a person decides

    within_limits = EmptyOperator(task_id="within_limits")
    reviewed = [within_limits]
    if ApprovalOperator is not None:
        approve = ApprovalOperator(
            task_id="approve_plan",
            subject="Sync the CRM list to Yandex.Audience segment " + repr(SEGMENT_NAME) + "?",
            body=(
                "The plan adds {{ ti.xcom_pull(task_ids='plan_sync')['counts']['added'] }} and removes "
                "{{ ti.xcom_pull(task_ids='plan_sync')['counts']['removed'] }} members "
                "(more than {{ params.max_removed }}). Reject to send nothing."
            ),
            response_timeout=timedelta(hours=12),  # unanswered: the task fails and nothing is sent
        )
        reviewed.append(approve)

    sync = YandexAudienceUploadContactListOperator(
        task_id="sync_crm",
        segment_name=SEGMENT_NAME,
        # A template, not ``exported``: an XComArg would make export_crm an upstream task, and its
        # success alone would then satisfy the trigger rule below even when the review stopped the run.
        source="{{ ti.xcom_pull(task_ids='export_crm') }}",
        column="email",
        identifier_type="email",
        mode="sync",
        allow_mass_removal=True,  # review_plan is this DAG's removal guard: only a reviewed plan gets here
        trigger_rule="none_failed_min_one_success",  # after whichever review path ran
    )
    # [END howto_operator_yandex_audience_plan]

    # [START howto_sensor_yandex_audience_poke]
    processed = YandexAudienceSegmentProcessedSensor(
        task_id="wait_for_processing",
        segment_id="{{ ti.xcom_pull(task_ids='sync_crm')['segment_id'] }}",
        mode="poke",  # a short wait: keep the worker slot between checks
        deferrable=False,
        poke_interval=POLL_SECONDS,
        timeout=30 * 60,
    )
    # [END howto_sensor_yandex_audience_poke]

    review_plan(plan.output) >> reviewed
    reviewed >> sync >> processed
    sync >> remove_export(exported)
