"""The Yandex.Audience example DAG end to end under real Airflow (`airflow dags test`, SQLite) against the sandbox.

(Named uniquely: several vendor directories hold a ``test_example_dag.py`` and the suite imports test
modules by basename.)
"""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.dag_run


def test_crm_refresh_end_to_end_then_incremental_rerun(crm_refresh_runs):
    # The runs are made once per session (tests/conftest.py), as the Audiences view reads them too;
    # "fake" is the Yandex.Audience fake's state right after each run.
    first = crm_refresh_runs["first"]["outcome"]
    assert first.ok, first.log[-4000:]
    assert "running trigger in line" in first.log  # the sensor really deferred

    summary = crm_refresh_runs["first"]["read"]
    audience = crm_refresh_runs["first"]["fake"]
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
    assert audience["by_id"][lookalike["segment_id"]]["lookalike_link"] == segment_id
    for sid in (segment_id, lookalike["segment_id"]):
        assert audience["grantees"][sid] == ["agency-direct-login"]
    uris = sorted(e["uri"] for e in summary["asset_events"])
    assert uris == sorted(
        f"yandex-audience://sandbox-login/segment/{sid}" for sid in (segment_id, lookalike["segment_id"])
    )

    # The next night: five customers left, five joined. Only the difference is sent; nothing is duplicated.
    second = crm_refresh_runs["second"]["outcome"]
    assert second.ok, second.log[-4000:]
    rerun = crm_refresh_runs["second"]["read"]["runs"][-1]["tasks"]
    audience = crm_refresh_runs["second"]["fake"]
    synced = rerun["sync_crm"]["xcom"]["return_value"]
    assert synced["action"] == "updated" and synced["segment_id"] == segment_id
    assert synced["files"] == [{"operation": "addition", "entries": 5}, {"operation": "subtraction", "entries": 5}]
    assert rerun["build_lookalike"]["xcom"]["return_value"]["action"] == "exists"
    assert rerun["grant_agency_crm"]["xcom"]["return_value"]["unchanged"] == ["agency-direct-login"]
    names = [s["name"] for s in audience["segments"]]
    assert names.count("CRM buyers (Airflow)") == 1 and names.count("CRM buyers lookalike (Airflow)") == 1
    assert audience["by_id"][segment_id]["valid_unique_quantity"] == 300
    assert {"id": segment_id, "name": "CRM buyers (Airflow)", "status": "processed"} in audience["processed"]
