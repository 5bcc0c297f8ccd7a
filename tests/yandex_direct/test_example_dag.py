"""example_yandex_direct_retargeting end to end under real Airflow (`airflow dags test`) against the sandbox.

Direct's retargeting goals follow the Yandex.Audience fake here: a segment created through the Audience
API becomes a Direct goal only once Audience reports it ``processed``.
"""

from __future__ import annotations

import pytest
import requests
from helpers import EXAMPLES, migrated_airflow_env, read_run

from airflow_audience_provider.sandbox.dagrun import run_dag_test
from airflow_audience_provider.sandbox.yandex_direct import ADVERTISER as DIRECT_LOGIN
from airflow_audience_provider.sandbox.yandex_direct import AUDIENCE_GOAL_OFFSET

DAG_ID = "example_yandex_direct_retargeting"
GROUPS = [5757000001, 5757000002]

pytestmark = pytest.mark.dag_run


@pytest.fixture(scope="module")
def airflow_env(sandbox, tmp_path_factory):
    return migrated_airflow_env(sandbox, tmp_path_factory, AUDIENCE_EXAMPLE_POLL_SECONDS="0.3")


@pytest.fixture(scope="module")
def wired(sandbox):
    """The Direct fake reading goals from the Audience fake (when served), else its own seeded segments."""
    direct = sandbox.fake("yandex_direct")
    direct.reset()
    audience = sandbox.fake("yandex_audience") if "yandex_audience" in sandbox.vendors else None
    if audience is not None:
        audience.reset()
        assert direct.use_audience_fake(audience)
    yield direct, audience
    direct.reset()
    if audience is not None:
        audience.reset()


def test_audience_segment_becomes_a_direct_goal_only_once_processed(sandbox, wired, monkeypatch):
    direct, audience = wired
    if audience is None:
        pytest.skip("the Yandex.Audience fake is not served")
    from airflow_audience_provider.hooks.yandex_audience import YandexAudienceHook

    for key, value in sandbox.env().items():
        monkeypatch.setenv(key, value)
    audience.configure(processing_seconds=3600)
    created = YandexAudienceHook().create_metrika_segment(
        name="Cart abandoners", metrika_segment_type="counter_id", metrika_segment_id=44147844
    )
    segment_id = int(created["id"])
    goal_ids = {g["GoalID"] for g in direct.goals()}
    assert AUDIENCE_GOAL_OFFSET + segment_id not in goal_ids  # still is_processed
    audience.advance_time(3601)
    assert AUDIENCE_GOAL_OFFSET + segment_id not in {g["GoalID"] for g in direct.goals()}  # not granted yet
    YandexAudienceHook().create_grant(segment_id, DIRECT_LOGIN)
    goal_ids = {g["GoalID"]: g["Name"] for g in direct.goals()}
    assert goal_ids[AUDIENCE_GOAL_OFFSET + segment_id] == "Cart abandoners"


def _segment_id(audience) -> int:
    """A processed segment granted to the Direct login (Direct lists no other)."""
    if audience is None:
        return 1001  # the Direct fake's own seeded, processed segment
    segment_id = int(audience.processed_segments()[0]["id"])
    granted = requests.put(
        f"{audience.base_url}/v1/management/segment/{segment_id}/grant",
        json={"grant": {"user_login": DIRECT_LOGIN}},
        headers={"Authorization": f"OAuth {audience.token}"},
        timeout=10,
    )
    assert granted.ok, granted.text
    return segment_id


def test_example_dag_end_to_end_and_idempotent_rerun(airflow_env, wired):
    direct, audience = wired
    segment_id = _segment_id(audience)
    outcome = run_dag_test(DAG_ID, airflow_env, timeout=300, conf={"segment_id": segment_id})
    assert outcome.ok, outcome.log[-4000:]
    run = read_run(airflow_env, DAG_ID)["runs"][-1]
    tasks = run["tasks"]
    assert {t: v["state"] for t, v in tasks.items()} == dict.fromkeys(
        ["segments_to_target", "list_definition", "upsert_retargeting_list", "attach_to_ad_groups"], "success"
    )
    assert tasks["segments_to_target"]["xcom"]["return_value"] == [segment_id]
    upsert = tasks["upsert_retargeting_list"]["xcom"]["return_value"]  # one mapped task per segment
    assert upsert["action"] == "created" and upsert["is_available"] == "YES"
    list_id = upsert["retargeting_list_id"]
    assert [g["goal_id"] for g in upsert["goals"]] == [AUDIENCE_GOAL_OFFSET + segment_id, 12345678]
    assert str(list_id) in tasks["upsert_retargeting_list"]["xcom"]["_link_YandexDirectRetargetingListLink"]
    assert upsert["units"]["spent"] > 0
    attach = tasks["attach_to_ad_groups"]["xcom"]["return_value"]
    assert len(attach["added"]) == 2 and attach["failed"] == []
    (stored,) = direct.account().lists.values()
    assert stored["Rules"] == [
        {"Operator": "ANY", "Arguments": [{"ExternalId": AUDIENCE_GOAL_OFFSET + segment_id}]},
        {"Operator": "NONE", "Arguments": [{"ExternalId": 12345678, "MembershipLifeSpan": 90}]},
    ]
    assert sorted(t["AdGroupId"] for t in direct.account().targets.values()) == GROUPS

    again = run_dag_test(DAG_ID, airflow_env, timeout=300, conf={"segment_id": segment_id})
    assert again.ok, again.log[-4000:]
    rerun = read_run(airflow_env, DAG_ID)["runs"][-1]["tasks"]
    assert rerun["upsert_retargeting_list"]["xcom"]["return_value"]["action"] == "unchanged"
    assert sorted(rerun["attach_to_ad_groups"]["xcom"]["return_value"]["existing"]) == GROUPS
    assert len(direct.account().lists) == 1 and len(direct.account().targets) == 2


def test_segments_come_from_the_triggering_audience_assets():
    import importlib.util

    from airflow.sdk import Asset, AssetAlias

    spec = importlib.util.spec_from_file_location("example_direct_dag", EXAMPLES / f"{DAG_ID}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    dag = module.dag
    pick = dag.get_task("segments_to_target").python_callable
    # What iterating Airflow's accessor yields: each Asset, and the alias they came through. (A list,
    # not a dict keyed by Asset: on Airflow 3.1 an Asset with its extra dict is not hashable.)
    events = [
        Asset(uri="yandex-audience://sandbox-login/segment/30000007"),
        AssetAlias(name="yandex-audience-segments"),
        Asset(uri="yandex-audience://sandbox-login/segment/30000003"),
        Asset(uri="lytics://acme/segment/3f9a"),
    ]
    assert pick(triggering_asset_events=events, params={"segment_id": 1001}) == [30000003, 30000007]
    assert pick(triggering_asset_events={}, params={"segment_id": "1001"}) == [1001]
    with pytest.raises(ValueError, match="no segment_id param"):
        pick(triggering_asset_events={}, params={"segment_id": None})
