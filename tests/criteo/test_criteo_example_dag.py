"""example_criteo_contact_list_sync end to end under real Airflow (``airflow dags test``) against the sandbox.

Computation windows are one second apart and the propagation delay five seconds here: long enough
that the sensor's first look (a few task start-ups after the upload) finds the changes not yet
live, so it really defers to its trigger, and short enough for a test.
"""

from __future__ import annotations

import hashlib

import pytest
from helpers import migrated_airflow_env, read_run, reset_fake

from airflow_audience_provider.sandbox.dagrun import run_dag_test

DAG_ID = "example_criteo_contact_list_sync"
TASKS = [
    "export_customers",
    "ensure_segment",
    "ensure_exclusion",
    "sync_contact_list",
    "ensure_audience",
    "wait_until_live",
]

pytestmark = pytest.mark.dag_run


@pytest.fixture(scope="module")
def airflow_env(sandbox, tmp_path_factory):
    return migrated_airflow_env(
        sandbox,
        tmp_path_factory,
        AUDIENCE_EXAMPLE_POLL_SECONDS="0.2",
        AUDIENCE_EXAMPLE_CRITEO_WINDOW_SECONDS="1",
        AUDIENCE_EXAMPLE_CRITEO_DELAY_SECONDS="5",
    )


@pytest.fixture(scope="module")
def criteo_fake(sandbox):
    yield from reset_fake(sandbox, "criteo")


def test_sync_audience_and_wait_for_the_window_then_an_idempotent_rerun(airflow_env, criteo_fake):
    first = run_dag_test(DAG_ID, airflow_env, timeout=300)
    assert first.ok, first.log[-5000:]
    assert "running trigger in line" in first.log  # the sensor waited in its trigger

    summary = read_run(airflow_env, DAG_ID)
    tasks = summary["runs"][-1]["tasks"]
    assert {t: tasks[t]["state"] for t in TASKS} == dict.fromkeys(TASKS, "success")
    segment = tasks["ensure_segment"]["xcom"]["return_value"]
    assert segment["action"] == "created"
    assert tasks["ensure_exclusion"]["xcom"]["return_value"]["action"] == "unchanged"  # the seeded list
    upload = tasks["sync_contact_list"]["xcom"]["return_value"]
    assert (upload["rows"], upload["valid"], upload["sent"], upload["criteo_valid"]) == (250, 250, 250, 250)
    assert upload["engine_mode"] == "full_replace"
    expected = {hashlib.sha256(f"customer.{n}@example.com".encode()).hexdigest() for n in range(250)}
    assert criteo_fake.members(segment["segment_id"]) == expected
    audience = tasks["ensure_audience"]["xcom"]["return_value"]
    assert audience["action"] == "created" and segment["segment_id"] in audience["segment_ids"]
    live = tasks["wait_until_live"]["xcom"]["return_value"]
    assert live["segment_id"] == segment["segment_id"]
    assert live["live_at"] >= live["computation_window"] >= upload["finished_at"][:19]
    events = {(e["task_id"], e["uri"]) for e in summary["asset_events"]}
    assert ("wait_until_live", f"criteo://424242/segment/{segment['segment_id']}") in events
    assert ("ensure_audience", f"criteo://424242/audience/{audience['audience_id']}") in events

    second = run_dag_test(DAG_ID, airflow_env, timeout=300)
    assert second.ok, second.log[-5000:]
    rerun = read_run(airflow_env, DAG_ID)["runs"][-1]["tasks"]
    assert rerun["ensure_segment"]["xcom"]["return_value"]["segment_id"] == segment["segment_id"]
    assert rerun["sync_contact_list"]["xcom"]["return_value"]["sent"] == 0  # nothing changed since
    assert rerun["ensure_audience"]["xcom"]["return_value"]["action"] == "unchanged"
    names = [s["attributes"]["name"] for s in criteo_fake.segments]
    assert names.count("crm-loyal-customers") == 1 and len(criteo_fake.audiences) == 1
