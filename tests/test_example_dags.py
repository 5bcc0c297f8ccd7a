"""The example DAGs, end to end under real Airflow (`airflow dags test`, SQLite) against the sandbox."""

from __future__ import annotations

import pytest
from helpers import EXAMPLES, migrated_airflow_env, read_run, reset_fake

from airflow_audience_provider.sandbox.dagrun import run_dag_test

pytestmark = pytest.mark.dag_run


def test_example_dags_import_cleanly():
    try:
        from airflow.dag_processing.dagbag import DagBag  # 3.2+
    except ImportError:  # Airflow 3.1
        from airflow.models.dagbag import DagBag

    bag = DagBag(dag_folder=str(EXAMPLES))
    assert bag.import_errors == {}
    assert {"example_lytics_segment_refresh", "example_lytics_downstream"} <= set(bag.dag_ids)


@pytest.fixture(scope="module")
def airflow_env(sandbox, tmp_path_factory):
    return migrated_airflow_env(sandbox, tmp_path_factory, AUDIENCE_EXAMPLE_POLL_SECONDS="0.3")


@pytest.fixture(scope="module")
def lytics_fake(sandbox):
    # Long enough that the sensor's first poke finds the job still running, so it really defers;
    # the reevaluation is listed as a job, so the sensor ends on the job signal.
    yield from reset_fake(sandbox, "lytics", processing_seconds=4, list_reevaluation_jobs=1)


def _last_run(env, dag_id):
    return read_run(env, dag_id)["runs"][-1]


def test_lytics_refresh_dag_end_to_end_and_idempotent_rerun(airflow_env, lytics_fake):
    streamed: list[str] = []
    first = run_dag_test("example_lytics_segment_refresh", airflow_env, timeout=300, on_line=streamed.append)
    assert first.ok, first.log[-4000:]
    assert "running trigger in line" in first.log  # the sensor really deferred
    assert "\n".join(streamed).strip() == first.log.strip()  # progress sees every line as it comes

    summary = read_run(airflow_env, "example_lytics_segment_refresh")
    # make demo prints the tasks in dependency order
    assert summary["order"] == ["ensure_group", "upsert_segment", "reevaluate", "wait_for_reevaluation", "report"]
    assert summary["asset_scheduled"] is False
    run = summary["runs"][-1]
    assert run["state"] == "success"
    tasks = run["tasks"]
    assert {t: v["state"] for t, v in tasks.items()} == dict.fromkeys(
        ["ensure_group", "upsert_segment", "reevaluate", "wait_for_reevaluation", "report"], "success"
    )
    upsert = tasks["upsert_segment"]["xcom"]["return_value"]
    assert upsert["action"] == "created"
    segment_id = upsert["segment_id"]
    assert tasks["upsert_segment"]["xcom"]["segment_id"] == segment_id
    assert segment_id in tasks["upsert_segment"]["xcom"]["_link_LyticsSegmentLink"]
    reevaluated = tasks["wait_for_reevaluation"]["xcom"]["return_value"]
    assert reevaluated["segment_id"] == segment_id
    assert isinstance(reevaluated["size"], int) and reevaluated["size"] > 0
    assert tasks["report"]["xcom"]["return_value"]["size"] == reevaluated["size"]
    events = [e for e in summary["asset_events"] if e["task_id"] == "wait_for_reevaluation"]
    assert [e["uri"] for e in events] == [reevaluated["asset_uri"]]
    assert reevaluated["asset_uri"].startswith("lytics://") and reevaluated["asset_uri"].endswith(segment_id)
    assert events[0]["extra"]["vendor_size"] == reevaluated["size"]

    # A rerun finds the segment by slug: nothing is created twice, an unchanged definition is not rewritten.
    second = run_dag_test("example_lytics_segment_refresh", airflow_env, timeout=300)
    assert second.ok, second.log[-4000:]
    rerun = _last_run(airflow_env, "example_lytics_segment_refresh")["tasks"]
    assert rerun["upsert_segment"]["xcom"]["return_value"]["action"] == "unchanged"
    assert rerun["upsert_segment"]["xcom"]["return_value"]["segment_id"] == segment_id
    assert rerun["ensure_group"]["xcom"]["return_value"]["action"] == "unchanged"
    slugs = [s["slug_name"] for s in lytics_fake.segments]
    assert slugs.count("high_value_customers") == 1
    assert not any(slug.startswith("high_value_customers_") for slug in slugs)  # no silent renamed twin


def test_lytics_refresh_dag_fails_when_the_reevaluation_job_fails(airflow_env, lytics_fake):
    existing = lytics_fake.get_segment("high_value_customers")  # left by the test above, when run with it
    if existing is None:
        ready = run_dag_test("example_lytics_segment_refresh", airflow_env, timeout=300)
        assert ready.ok, ready.log[-4000:]
        existing = lytics_fake.get_segment("high_value_customers")
    segment_id = existing["id"]
    lytics_fake.fail_next_reevaluation(segment_id, status="fault-3")

    failed = run_dag_test("example_lytics_segment_refresh", airflow_env, timeout=300)
    assert not failed.ok
    assert "fault-3" in failed.log
    tasks = _last_run(airflow_env, "example_lytics_segment_refresh")["tasks"]
    assert tasks["wait_for_reevaluation"]["state"] == "failed"
    assert tasks["report"]["state"] in {"upstream_failed", "None"}


def test_lytics_downstream_dag_runs(airflow_env):
    outcome = run_dag_test("example_lytics_downstream", airflow_env, timeout=300)
    assert outcome.ok, outcome.log[-4000:]
    summary = read_run(airflow_env, "example_lytics_downstream")
    assert summary["runs"][-1]["tasks"]["use_refreshed_audience"]["state"] == "success"
    assert summary["asset_scheduled"] is True  # make demo explains its empty result by this
