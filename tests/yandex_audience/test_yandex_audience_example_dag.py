"""The Yandex.Audience example DAG end to end under real Airflow (`airflow dags test`, SQLite) against the sandbox.

(Named uniquely: several vendor directories hold a ``test_example_dag.py`` and the suite imports test
modules by basename.)
"""

from __future__ import annotations

import pytest
from helpers import migrated_airflow_env, read_run, reset_fake

from airflow_audience_provider.sandbox.dagrun import run_dag_test

DAG_ID = "example_yandex_audience_crm_refresh"

pytestmark = pytest.mark.dag_run


@pytest.fixture(scope="module")
def audience(sandbox):
    # Long enough that the sensor's first poke finds the segment still processing, so it really
    # defers (Airflow 3.1 starts tasks more slowly than 3.3).
    yield from reset_fake(sandbox, "yandex_audience", processing_seconds=4)


@pytest.fixture(scope="module")
def airflow_env(sandbox, audience, tmp_path_factory):
    # No scheduler under `airflow dags test`: the reschedule sensor need not keep 15 s between checks.
    return migrated_airflow_env(
        sandbox, tmp_path_factory, AUDIENCE_EXAMPLE_POLL_SECONDS="0.3", AUDIENCE_EXAMPLE_RESCHEDULE_SECONDS="1"
    )


def test_crm_refresh_end_to_end_then_incremental_rerun(airflow_env, audience):
    first = run_dag_test(DAG_ID, airflow_env, timeout=300)
    assert first.ok, first.log[-4000:]
    assert "running trigger in line" in first.log  # the sensor really deferred

    summary = read_run(airflow_env, DAG_ID)
    run = summary["runs"][-1]
    tasks = run["tasks"]
    assert run["state"] == "success", {t: v["state"] for t, v in tasks.items()}
    synced = tasks["sync_crm"]["xcom"]["return_value"]
    assert synced["action"] == "created" and synced["counts"]["unique"] == 300
    segment_id = synced["segment_id"]
    assert tasks["sync_crm"]["xcom"]["segment_id"] == segment_id
    assert str(segment_id) in tasks["sync_crm"]["xcom"]["_link_YandexAudienceSegmentLink"]
    processed = tasks["wait_for_processing"]["xcom"]["return_value"]
    assert processed["status"] == "processed" and processed["segment_id"] == segment_id
    lookalike = tasks["build_lookalike"]["xcom"]["return_value"]
    assert lookalike["action"] == "created" and lookalike["type"] == "lookalike"
    assert audience.get_segment(lookalike["segment_id"])["lookalike_link"] == segment_id
    for sid in (segment_id, lookalike["segment_id"]):
        assert [g["user_login"] for g in audience.grants(sid)] == ["agency-direct-login"]
    uris = sorted(e["uri"] for e in summary["asset_events"])
    assert uris == sorted(
        f"yandex-audience://sandbox-login/segment/{sid}" for sid in (segment_id, lookalike["segment_id"])
    )

    # The next night: five customers left, five joined. Only the difference is sent; nothing is duplicated.
    second = run_dag_test(DAG_ID, airflow_env, timeout=300, conf={"shift": 5})
    assert second.ok, second.log[-4000:]
    rerun = read_run(airflow_env, DAG_ID)["runs"][-1]["tasks"]
    synced = rerun["sync_crm"]["xcom"]["return_value"]
    assert synced["action"] == "updated" and synced["segment_id"] == segment_id
    assert synced["files"] == [{"operation": "addition", "entries": 5}, {"operation": "subtraction", "entries": 5}]
    assert rerun["build_lookalike"]["xcom"]["return_value"]["action"] == "exists"
    assert rerun["grant_agency_crm"]["xcom"]["return_value"]["unchanged"] == ["agency-direct-login"]
    names = [s["name"] for s in audience.segments()]
    assert names.count("CRM buyers (Airflow)") == 1 and names.count("CRM buyers lookalike (Airflow)") == 1
    assert audience.get_segment(segment_id)["valid_unique_quantity"] == 300
    assert {"id": segment_id, "name": "CRM buyers (Airflow)", "status": "processed"} in audience.processed_segments()
