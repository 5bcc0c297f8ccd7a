"""The Audiences view's queries and pages over a real metadata DB filled by running the example DAGs.

``airflow dags test`` runs the Yandex.Audience CRM refresh twice (a new segment, then a shifted
list; the session's ``crm_refresh_runs``, which the example's own test checks) and the Lytics
refresh once into a fresh SQLite DB; the view's queries then read it through an ordinary
SQLAlchemy session on that file, as the API server would.
"""

from __future__ import annotations

import pytest
from helpers import REPO, read_run

from airflow_audience_provider.sandbox.dagrun import run_dag_test

YANDEX_DAG = "example_yandex_audience_crm_refresh"
LYTICS_DAG = "example_lytics_segment_refresh"

pytestmark = pytest.mark.dag_run


@pytest.fixture(scope="module")
def filled_db(sandbox, crm_refresh_runs):
    # The session's two CRM refresh runs (tests/conftest.py), then a Lytics refresh into the same DB.
    for run in ("first", "second"):
        assert crm_refresh_runs[run]["outcome"].ok, crm_refresh_runs[run]["outcome"].log[-4000:]
    env = crm_refresh_runs["env"]
    sandbox.fake("lytics").reset()
    outcome = run_dag_test(LYTICS_DAG, env, timeout=300)  # the home's settle interval is 0.5 s
    assert outcome.ok, outcome.log[-4000:]
    yield env, {dag_id: read_run(env, dag_id) for dag_id in (YANDEX_DAG, LYTICS_DAG)}
    sandbox.fake("lytics").reset()


@pytest.fixture(scope="module")
def session(filled_db):
    from sqlalchemy import create_engine
    from sqlalchemy.orm import Session

    env, _ = filled_db
    engine = create_engine(f"sqlite:///{env['AIRFLOW_HOME']}/airflow.db")
    with Session(engine) as db:
        yield db
    engine.dispose()


@pytest.fixture(scope="module")
def runs(filled_db):
    return filled_db[1]


ALL = {YANDEX_DAG, LYTICS_DAG}


def _crm(runs):
    first, second = (r["tasks"]["sync_crm"]["xcom"]["return_value"] for r in runs[YANDEX_DAG]["runs"])
    return first, second


def test_every_event_of_the_example_runs_has_the_shape(runs):
    events = runs[YANDEX_DAG]["asset_events"] + runs[LYTICS_DAG]["asset_events"]
    assert events
    for event in events:
        extra = event["extra"]
        assert extra["audience_extra_version"] == 1
        assert event["uri"] == f"{extra['vendor']}://{extra['account']}/{extra['kind']}/{extra['object_id']}"
        assert "@" not in str(extra)  # no e-mail, clear or redacted


def test_table_lists_every_audience_touched_newest_first(session, runs):
    from airflow_audience_provider.ui.queries import list_audiences

    page = list_audiences(session, ALL)
    first, _ = _crm(runs)
    lookalike = runs[YANDEX_DAG]["runs"][0]["tasks"]["build_lookalike"]["xcom"]["return_value"]
    lytics = runs[LYTICS_DAG]["runs"][0]["tasks"]["wait_for_reevaluation"]["xcom"]["return_value"]
    assert page.total == 3
    assert [(r.vendor, r.object_id) for r in page.rows] == [
        ("lytics", str(lytics["segment_id"])),  # the last DAG run
        ("yandex-audience", str(first["segment_id"])),
        ("yandex-audience", str(lookalike["segment_id"])),
    ]
    crm = page.rows[1]
    assert crm.object_name == "CRM buyers (Airflow)" and crm.account == "sandbox-login"
    assert crm.dag_ids == [YANDEX_DAG] and crm.last_run_state == "success"
    # The last upload sent the difference: five in, five out, nothing invalid; 300 in the list.
    assert (crm.added, crm.removed, crm.invalid, crm.snapshot_size) == (5, 5, 0, 300)
    assert crm.vendor_size is not None and crm.vendor_size > 0  # from the processing sensor
    assert crm.drift == crm.vendor_size - 300  # the two sizes come from different tasks of the run
    assert crm.link == first["url"]
    lytics_row = page.rows[0]
    assert lytics_row.vendor_size == lytics["size"] and lytics_row.last_action == "reevaluated"
    assert lytics_row.added is None  # a segment, not a contact list: no upload counts


def test_history_has_one_point_per_run_with_the_uploads_counts(session, runs):
    from airflow_audience_provider.ui.queries import audience_events, list_audiences

    crm = list_audiences(session, ALL, vendor="yandex-audience").rows[0]
    points = audience_events(session, ALL, crm.asset_id)
    run_ids = [r["run_id"] for r in runs[YANDEX_DAG]["runs"]]
    assert [p.run_id for p in points] == [run_ids[1], run_ids[0]]  # newest first
    # The sensor announced the segment (the upload has emit_asset=False); the upload's counts
    # come from its XCom in the same run.
    assert [p.task_id for p in points] == ["wait_for_processing", "wait_for_processing"]
    assert [(p.fields["added"], p.fields["removed"], p.fields["snapshot_size"]) for p in points] == [
        (5, 5, 300),
        (300, 0, 300),
    ]
    assert all(p.fields["rows"] == 300 and p.fields["invalid"] == {} for p in points)
    assert all(isinstance(p.fields.get("vendor_size"), int) for p in points)
    assert audience_events(session, ALL, crm.asset_id, limit=1)[0].run_id == run_ids[1]


def test_filters_and_paging(session):
    from airflow_audience_provider.ui.queries import list_audiences

    assert [r.vendor for r in list_audiences(session, ALL, vendor="lytics").rows] == ["lytics"]
    assert list_audiences(session, ALL, vendor="criteo").total == 0
    assert {r.vendor for r in list_audiences(session, ALL, dag_id=YANDEX_DAG).rows} == {"yandex-audience"}
    first = list_audiences(session, ALL, page_size=2)
    second = list_audiences(session, ALL, page=2, page_size=2)
    assert (first.total, len(first.rows), len(second.rows)) == (3, 2, 1)
    assert {r.asset_id for r in first.rows}.isdisjoint(r.asset_id for r in second.rows)


def test_a_user_sees_only_the_audiences_of_dags_they_may_read(session):
    from airflow_audience_provider.ui.queries import audience_events, list_audiences

    only_lytics = list_audiences(session, {LYTICS_DAG})
    assert [r.vendor for r in only_lytics.rows] == ["lytics"] and only_lytics.total == 1
    yandex_asset = list_audiences(session, ALL, vendor="yandex-audience").rows[0].asset_id
    assert audience_events(session, {LYTICS_DAG}, yandex_asset) == []
    # A DAG filter never widens what the user may read.
    assert list_audiences(session, {LYTICS_DAG}, dag_id=YANDEX_DAG).total == 0
    assert list_audiences(session, set()).total == 0


_AS_USERS = r"""
import json, sys
from fastapi.testclient import TestClient
from airflow.api_fastapi.app import init_auth_manager
from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser
from airflow_audience_provider.ui.plugin import LazyAudiencesApp

manager = init_auth_manager()
out = {}
with TestClient(LazyAudiencesApp()) as client:
    for username in ("lytics_only", "everyone"):
        token = manager.generate_jwt(SimpleAuthManagerUser(username=username, role="viewer"))
        headers = {"Authorization": f"Bearer {token}"}
        listed = client.get("/api/audiences", headers=headers).json()["audiences"]
        out[username] = {
            "vendors": sorted(a["vendor"] for a in listed),
            "details": {a["asset_id"]: client.get(f"/api/audiences/{a['asset_id']}", headers=headers).status_code
                        for a in listed},
            "page": client.get("/", headers=headers).text,
        }
    everyone = client.get("/api/audiences", headers=headers).json()["audiences"]
    token = manager.generate_jwt(SimpleAuthManagerUser(username="lytics_only", role="viewer"))
    out["hidden"] = [
        client.get(f"/api/audiences/{a['asset_id']}", headers={"Authorization": f"Bearer {token}"}).status_code
        for a in everyone if a["vendor"] != "lytics"
    ]
print("AUDIENCES-AS-USERS " + json.dumps(out))
"""


def test_through_the_auth_manager_a_user_sees_only_readable_dags_audiences(filled_db):
    """The app with a real (scoped simple) auth manager and real JWTs, over the filled DB."""
    import json
    import os
    import subprocess
    import sys

    env, _ = filled_db
    env = {
        **env,
        "AIRFLOW__CORE__AUTH_MANAGER": "audiences_scoped_auth.ScopedAuthManager",
        "AIRFLOW__API_AUTH__JWT_SECRET": "audiences-view-test-secret",
        "PYTHONPATH": os.pathsep.join([str(REPO / "tests"), env.get("PYTHONPATH", "")]),
    }
    done = subprocess.run(
        [sys.executable, "-c", _AS_USERS], env=env, capture_output=True, text=True, timeout=300, check=False
    )
    line = next((x for x in done.stdout.splitlines() if x.startswith("AUDIENCES-AS-USERS ")), None)
    assert line, done.stdout[-3000:] + done.stderr[-3000:]
    seen = json.loads(line.split(" ", 1)[1])
    assert seen["everyone"]["vendors"] == ["lytics", "yandex-audience", "yandex-audience"]
    assert seen["lytics_only"]["vendors"] == ["lytics"]
    assert set(seen["lytics_only"]["details"].values()) == {200}
    assert seen["hidden"] == [404, 404]  # the Yandex segments do not exist for this user
    assert "CRM buyers" not in seen["lytics_only"]["page"] and "example_yandex" not in seen["lytics_only"]["page"]
    assert "CRM buyers" in seen["everyone"]["page"]
