"""example_segment_audience_rollout end to end under real Airflow (`airflow dags test`) against the sandbox.

A failed computation failing the sensor is covered in test_segment_sensor.py (poke and deferred
events); a third `airflow dags test` here would cost ~15 s on a loaded box for no new code path.
"""

from __future__ import annotations

import pytest
from helpers import migrated_airflow_env, read_run, reset_fake

from airflow_audience_provider.sandbox.dagrun import run_dag_test

DAG_ID = "example_segment_audience_rollout"
NAME = "Recent purchasers (Airflow)"

pytestmark = pytest.mark.dag_run


@pytest.fixture(scope="module")
def airflow_env(sandbox, tmp_path_factory):
    return migrated_airflow_env(
        sandbox,
        tmp_path_factory,
        AUDIENCE_EXAMPLE_POLL_SECONDS="0.3",
        AUDIENCE_EXAMPLE_BATCH_WAIT_SECONDS="2",
    )


@pytest.fixture(scope="module")
def segment_fake(sandbox):
    yield from reset_fake(sandbox, "segment")


def _last_run(env):
    return read_run(env, DAG_ID)["runs"][-1]


def test_rollout_end_to_end_then_an_idempotent_rerun(airflow_env, segment_fake):
    first = run_dag_test(DAG_ID, airflow_env, timeout=300)
    assert first.ok, first.log[-4000:]
    assert "running trigger in line" in first.log  # the preview and the sensor really deferred

    summary = read_run(airflow_env, DAG_ID)
    run = summary["runs"][-1]
    tasks = run["tasks"]
    assert run["state"] == "success"
    assert {t: v["state"] for t, v in tasks.items()} == dict.fromkeys(
        ["upsert_audience", "preview_size", "enable_audience", "wait_until_computed", "report"], "success"
    )
    upserted = tasks["upsert_audience"]["xcom"]["return_value"]
    assert upserted["action"] == "created" and upserted["enabled"] is False
    audience_id = upserted["audience_id"]
    assert tasks["upsert_audience"]["xcom"]["audience_id"] == audience_id
    assert audience_id in tasks["upsert_audience"]["xcom"]["_link_SegmentAudienceLink"]
    previewed = tasks["preview_size"]["xcom"]["return_value"]
    assert previewed["source"] == "preview" and previewed["size"] > 0
    assert tasks["enable_audience"]["xcom"]["return_value"]["action"] == "enabled"
    computed = tasks["wait_until_computed"]["xcom"]["return_value"]
    assert computed["audience_id"] == audience_id and computed["status"] == "Live" and computed["size"] > 0
    assert tasks["report"]["xcom"]["return_value"]["size"] == computed["size"]
    events = [e for e in summary["asset_events"] if e["task_id"] == "wait_until_computed"]
    assert [e["uri"] for e in events] == [f"segment://{segment_fake.space_id}/audience/{audience_id}"]
    assert events[0]["extra"]["vendor_size"] == computed["size"]

    stored = segment_fake.audience(audience_id)
    assert stored["enabled"] is True and stored["options"]["backfillEventDataDays"] == 30
    assert "revenue" in stored["definition"]["query"]  # the query came from the repository file
    assert segment_fake.refused_edits == 0  # the enable waited for the create's lock, never collided

    # A rerun finds the audience by name: nothing is created or edited, and no preview is spent.
    segment_fake.clear_requests()
    second = run_dag_test(DAG_ID, airflow_env, timeout=300)
    assert second.ok, second.log[-4000:]
    rerun = _last_run(airflow_env)["tasks"]
    assert rerun["upsert_audience"]["xcom"]["return_value"]["action"] == "unchanged"
    assert rerun["preview_size"]["xcom"]["return_value"]["source"] == "audience"
    assert rerun["enable_audience"]["xcom"]["return_value"]["action"] == "unchanged"
    assert [a["name"] for a in segment_fake.audiences].count(NAME) == 1
    assert {r["method"] for r in segment_fake.requests} == {"GET"}
