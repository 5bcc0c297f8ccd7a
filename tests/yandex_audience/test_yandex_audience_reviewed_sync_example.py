"""The plan-review-sync example under real Airflow: a plan is sent only when it passes review."""

from __future__ import annotations

import pytest
from helpers import migrated_airflow_env, read_run, reset_fake

from airflow_audience_provider.sandbox.dagrun import run_dag_test

DAG_ID = "example_yandex_audience_reviewed_sync"

pytestmark = pytest.mark.dag_run


@pytest.fixture(scope="module")
def audience(sandbox):
    yield from reset_fake(sandbox, "yandex_audience")


@pytest.fixture(scope="module")
def airflow_env(sandbox, audience, tmp_path_factory):
    return migrated_airflow_env(sandbox, tmp_path_factory, AUDIENCE_EXAMPLE_POLL_SECONDS="0.3")


def _segments_named(audience, name):
    return [s for s in audience.segments() if s.get("name") == name]


def test_plan_is_reviewed_then_sent_and_a_mass_removal_is_stopped(airflow_env, audience):
    first = run_dag_test(DAG_ID, airflow_env, timeout=300)
    assert first.ok, first.log[-4000:]
    tasks = read_run(airflow_env, DAG_ID)["runs"][-1]["tasks"]
    plan = tasks["plan_sync"]["xcom"]["return_value"]
    assert plan["action"] == "planned" and plan["files"] == []  # the plan sent nothing
    assert plan["counts"]["unique"] == 300 and not plan["blocked_by"]
    assert tasks["review_plan"]["state"] == "success"
    assert tasks["within_limits"]["state"] == "success" and tasks["approve_plan"]["state"] == "skipped"
    synced = tasks["sync_crm"]["xcom"]["return_value"]
    assert synced["action"] == "created" and synced["counts"]["unique"] == 300
    processed = tasks["wait_for_processing"]["xcom"]["return_value"]  # the poke-mode sensor
    assert processed["status"] == "processed" and processed["segment_id"] == synced["segment_id"]
    [segment] = _segments_named(audience, "CRM reviewed (Airflow)")
    requests_before = len(audience.requests)

    # Two thirds of the customers leave: the plan says so; told not to ask a person (an approval
    # would wait for an answer from outside `airflow dags test`), the review stops the run and nothing is sent.
    second = run_dag_test(DAG_ID, airflow_env, timeout=300, conf={"shift": 200, "ask_approval": False})
    assert second.ok, second.log[-4000:]
    tasks = read_run(airflow_env, DAG_ID)["runs"][-1]["tasks"]
    plan = tasks["plan_sync"]["xcom"]["return_value"]
    assert plan["counts"]["removed"] == 200 and plan["counts"]["added"] == 200
    assert tasks["sync_crm"]["state"] == "skipped"
    assert tasks["approve_plan"]["state"] == "skipped" and tasks["wait_for_processing"]["state"] == "skipped"
    writes = [r for r in audience.requests[requests_before:] if r["method"] != "GET"]
    assert writes == []
    assert [s["id"] for s in _segments_named(audience, "CRM reviewed (Airflow)")] == [segment["id"]]
