"""A contact-list sync that is planned first and sent only when the plan passes review.

1. ``export_crm`` writes the CRM export (a stand-in for a real one).
2. ``plan_sync`` runs the upload as a **plan only**: it reads, normalises, hashes and diffs the list
   against the last snapshot and reports adds, removes, invalid rows, duplicates and the requests it
   would make, sending nothing.
3. ``review_plan`` approves the plan automatically when it removes at most ``max_removed`` members
   and no guard blocked it; otherwise the run stops there and the sync is skipped. Where a person
   must approve, put Airflow's human-in-the-loop ``ApprovalOperator``
   (``airflow.providers.standard.operators.hitl``) here instead, fed with the same plan.
4. ``sync_crm`` sends the difference.

Run ``{"shift": 200}`` as conf after a first run to see the review stop a sync that would remove
two thirds of the list.
"""

from __future__ import annotations

import contextlib
import csv
import os
from datetime import datetime

from airflow.sdk import DAG, Param, task

from airflow_audience_provider.operators.yandex_audience import YandexAudienceUploadContactListOperator

SEGMENT_NAME = "CRM reviewed (Airflow)"
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
    params={"max_removed": Param(50, type="integer", description="Most members one sync may remove")},
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

    @task.short_circuit(ignore_downstream_trigger_rules=False)  # the clean-up still runs after a stop
    def review_plan(planned: dict, params=None) -> bool:
        """Go on only when no guard blocked the plan and it removes few enough members."""
        from airflow_audience_provider.identifiers import plan_allows

        counts = planned["counts"]
        print(f"Plan: +{counts.get('added', 0)} -{counts.get('removed', 0)}, invalid {counts.get('invalid', 0)}")
        return plan_allows(planned, max_removed=int(params["max_removed"]))

    sync = YandexAudienceUploadContactListOperator(
        task_id="sync_crm",
        segment_name=SEGMENT_NAME,
        source=exported,
        column="email",
        identifier_type="email",
        mode="sync",
    )
    # [END howto_operator_yandex_audience_plan]

    review_plan(plan.output) >> sync >> remove_export(exported)
