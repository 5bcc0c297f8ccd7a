"""Yandex Direct operators executed against the Direct fake with a recording task context."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from airflow_audience_provider.core.errors import (
    AudienceNotFoundError,
    AudiencePartialFailure,
    AudienceServerError,
    AudienceTimeoutError,
    AudienceValidationError,
)
from airflow_audience_provider.hooks.yandex_direct import YandexDirectUnitsError
from airflow_audience_provider.operators.yandex_direct import (
    YandexDirectAddAudienceTargetsOperator,
    YandexDirectCreateOrUpdateRetargetingListOperator,
    YandexDirectDeleteAudienceTargetsOperator,
    YandexDirectDeleteRetargetingListsOperator,
    YandexDirectResumeAudienceTargetsOperator,
    YandexDirectSetAudienceTargetBidsOperator,
    YandexDirectSuspendAudienceTargetsOperator,
)
from airflow_audience_provider.sandbox.yandex_direct import AUDIENCE_GOAL_OFFSET

SEGMENT_GOAL = AUDIENCE_GOAL_OFFSET + 1001
CONVERTED_GOAL = AUDIENCE_GOAL_OFFSET + 1002
PURCHASE_GOAL = 12345678
GROUPS = [5757000001, 5757000002]
RULES = [{"operator": "ANY", "segments": [1001]}, {"operator": "NONE", "segments": ["Converted customers"]}]


def upsert(**kwargs):
    kwargs.setdefault("task_id", "upsert")
    kwargs.setdefault("name", "airflow: buyers minus converted")
    kwargs.setdefault("rules", RULES)
    kwargs.setdefault("poll_interval", 0.1)
    kwargs.setdefault("segment_wait_timeout", 0.5)
    return YandexDirectCreateOrUpdateRetargetingListOperator(**kwargs)


def stored_lists(direct):
    return list(direct.account().lists.values())


# -- create or update ----------------------------------------------------------------------------


def test_create_then_rerun_is_unchanged_then_update(direct, context, api_calls):
    result = upsert().execute(context)
    assert result["action"] == "created"
    list_id = result["retargeting_list_id"]
    assert result["is_available"] == "YES" and result["scope"] == "FOR_TARGETS_AND_ADJUSTMENTS"
    assert [g["goal_id"] for g in result["goals"]] == [SEGMENT_GOAL, CONVERTED_GOAL]
    assert result["units"]["spent"] > 0 and result["units"]["remaining"] < 160000
    assert context["ti"].pushed["retargeting_list_id"] == list_id
    assert str(list_id) in context["ti"].pushed["yandex_direct_retargeting_list_url"]
    (stored,) = stored_lists(direct)
    assert stored["Rules"] == [
        {"Operator": "ANY", "Arguments": [{"ExternalId": SEGMENT_GOAL}]},
        {"Operator": "NONE", "Arguments": [{"ExternalId": CONVERTED_GOAL}]},
    ]
    json.dumps(result)  # a small JSON XCom

    writes_before = [c for c in api_calls("retargetinglists")]
    again = upsert().execute(context)
    assert again["action"] == "unchanged" and again["retargeting_list_id"] == list_id
    assert len(stored_lists(direct)) == 1
    # the rerun only read: get by name and the read-back (the segment life span null does not look like drift)
    assert len(api_calls("retargetinglists")) - len(writes_before) == 2

    changed = upsert(
        rules=[
            {"operator": "ANY", "segments": [1001], "goals": [{"goal_id": PURCHASE_GOAL, "membership_life_span": 30}]}
        ],
        description="managed by Airflow",
    ).execute(context)
    assert changed["action"] == "updated" and changed["changed"] == ["Description", "Rules"]
    (stored,) = stored_lists(direct)
    assert stored["Description"] == "managed by Airflow"
    assert {"ExternalId": PURCHASE_GOAL, "MembershipLifeSpan": 30} in stored["Rules"][0]["Arguments"]


def test_unknown_segment_fails_before_any_write(direct, context, api_calls):
    with pytest.raises(AudienceNotFoundError, match="424242"):
        upsert(rules=[{"operator": "ANY", "segments": [424242]}], wait_for_segments=False).execute(context)
    with pytest.raises(AudienceTimeoutError, match=r"424242.*Segments and other non-goal items Direct lists now"):
        upsert(rules=[{"operator": "ANY", "segments": [424242]}]).execute(context)  # waited, then gave up
    assert stored_lists(direct) == []
    assert api_calls("retargetinglists") == []


def test_unknown_goal_fails(direct, context):
    with pytest.raises(AudienceNotFoundError, match="no goal"):
        upsert(rules=[{"operator": "ALL", "goals": [99]}]).execute(context)


def test_rules_over_the_limit_fail_before_any_write(direct, context, api_calls):
    direct.add_audience_segment(5000, "a")
    too_many = [{"operator": "ANY", "segments": [1001]}] * 3
    with pytest.raises(AudienceValidationError, match="at most 2 rules"):
        upsert(rules=too_many, max_rules=2).execute(context)
    with pytest.raises(AudienceValidationError, match="operator must be one of"):
        upsert(rules=[{"operator": "SOMETIMES", "segments": [1001]}]).execute(context)
    with pytest.raises(AudienceValidationError, match="unknown keys"):
        upsert(rules=[{"operator": "ANY", "segment": [1001]}]).execute(context)
    assert api_calls("retargetinglists") == []


def test_name_limits_and_duplicates(direct, context, make_hook):
    with pytest.raises(AudienceValidationError, match="1-250"):
        upsert(name="x" * 251).execute(context)
    hook = make_hook()
    rule = [{"Operator": "ANY", "Arguments": [{"ExternalId": SEGMENT_GOAL}]}]
    hook.add_retargeting_lists([{"Name": "twin", "Rules": rule}, {"Name": "twin", "Rules": rule}])
    with pytest.raises(AudienceValidationError, match="Several"):
        upsert(name="twin").execute(context)


def test_type_cannot_change(direct, context):
    upsert().execute(context)
    with pytest.raises(AudienceValidationError, match="cannot change a list's type"):
        upsert(list_type="AUDIENCE").execute(context)


def test_list_unavailable_after_the_write_fails_or_warns(direct, context):
    # Access to a segment is revoked between the goal lookup and the read-back: Direct keeps the list
    # but reports IsAvailable NO (what Direct does when a list's Audience segment is deleted or unshared).
    segments = [{"id": 1001, "name": "CRM buyers 2026"}, {"id": 1002, "name": "Converted customers"}]
    looks: list[int] = []

    def revoked_after_the_first_look():  # the wait for the segments, then the goal lookup
        looks.append(1)
        return segments if len(looks) <= 2 else segments[:1]

    direct.set_goal_source(revoked_after_the_first_look)
    with pytest.raises(AudienceValidationError, match="IsAvailable=NO"):
        upsert().execute(context)
    assert context["ti"].pushed["retargeting_list_id"]  # id and link pushed before failing
    looks.clear()
    result = upsert(require_available=False).execute(context)
    assert result["is_available"] == "NO" and result["action"] == "unchanged"


def test_create_after_a_write_that_failed_ambiguously(direct, context, make_hook, monkeypatch):
    from airflow_audience_provider.hooks.yandex_direct import YandexDirectHook

    real_add = YandexDirectHook.add_retargeting_lists
    calls = []

    def flaky_add(self, lists):
        calls.append(1)
        outcomes = real_add(self, lists)  # Direct created it ...
        if len(calls) == 1:
            raise AudienceServerError(
                "gateway timeout after the write", vendor="yandex_direct"
            )  # ... but we never heard
        return outcomes

    monkeypatch.setattr(YandexDirectHook, "add_retargeting_lists", flaky_add)
    result = upsert().execute(context)
    assert result["action"] == "created"
    assert len(calls) == 1  # found by name on read-back, not sent twice
    assert len(stored_lists(direct)) == 1


def test_units_exhausted_mid_task(direct, context):
    direct.set_units(12)  # the name lookup leaves 11: less than the cheapest write
    with pytest.raises(YandexDirectUnitsError, match="left"):
        upsert().execute(context)
    assert stored_lists(direct) == []


def test_all_none_list_is_for_adjustments_only(direct, context):
    result = upsert(name="adjustments", rules=[{"operator": "NONE", "segments": [1002]}]).execute(context)
    assert result["scope"] == "FOR_ADJUSTMENTS_ONLY"  # the operator logs a warning saying so
    with pytest.raises(AudiencePartialFailure, match="6000"):  # and Direct refuses it as an audience target
        YandexDirectAddAudienceTargetsOperator(
            task_id="attach", retargeting_list_id=result["retargeting_list_id"], ad_group_ids=GROUPS[:1]
        ).execute(context)


# -- audience targets ---------------------------------------------------------------------------


@pytest.fixture
def list_id(direct, context):
    return upsert(task_id="prepare").execute(context)["retargeting_list_id"]


def test_add_targets_idempotent_with_bids(direct, context, list_id):
    op = YandexDirectAddAudienceTargetsOperator(
        task_id="attach", retargeting_list_id=str(list_id), ad_group_ids=GROUPS, context_bid=12.5
    )
    first = op.execute(context)
    assert len(first["added"]) == 2 and first["existing"] == [] and first["failed"] == []
    assert {t["ContextBid"] for t in direct.account().targets.values()} == {12_500_000}
    again = YandexDirectAddAudienceTargetsOperator(
        task_id="attach", retargeting_list_id=list_id, ad_group_ids="[5757000001, 5757000002, 5757000003]"
    ).execute(context)
    assert sorted(again["existing"]) == GROUPS and len(again["added"]) == 1
    assert len(direct.account().targets) == 3


def test_add_targets_partial_failure_fail_or_warn(direct, context, list_id):
    groups = [5757000001, 5757000004, 1]  # ok, dynamic group (not allowed), unknown group
    with pytest.raises(AudiencePartialFailure, match="2 of 3 items failed") as info:
        YandexDirectAddAudienceTargetsOperator(
            task_id="attach", retargeting_list_id=list_id, ad_group_ids=groups
        ).execute(context)
    assert {i["input"]["AdGroupId"] for i in info.value.items} == {5757000004, 1}
    assert len(context["ti"].pushed["outcomes"]) == 3
    assert len(direct.account().targets) == 1  # the good item was applied
    warned = YandexDirectAddAudienceTargetsOperator(
        task_id="attach", retargeting_list_id=list_id, ad_group_ids=groups, on_item_error="warn"
    ).execute(context)
    assert warned["existing"] == [5757000001] and sorted(warned["failed"]) == [1, 5757000004]
    codes = {o["ad_group_id"]: o["errors"][0]["code"] for o in warned["outcomes"] if o["status"] == "error"}
    assert codes == {5757000004: 6001, 1: 8800}


def test_add_targets_to_a_wrong_list(direct, context):
    with pytest.raises(AudienceNotFoundError, match="retargeting list 1 does not exist"):
        YandexDirectAddAudienceTargetsOperator(task_id="attach", retargeting_list_id=1, ad_group_ids=GROUPS).execute(
            context
        )


def test_suspend_resume_delete_by_list(direct, context, list_id):
    YandexDirectAddAudienceTargetsOperator(task_id="attach", retargeting_list_id=list_id, ad_group_ids=GROUPS).execute(
        context
    )
    suspended = YandexDirectSuspendAudienceTargetsOperator(task_id="s", retargeting_list_id=list_id).execute(context)
    assert len(suspended["done"]) == 2
    assert {t["State"] for t in direct.account().targets.values()} == {"SUSPENDED"}
    again = YandexDirectSuspendAudienceTargetsOperator(task_id="s", retargeting_list_id=list_id).execute(context)
    assert {o["status"] for o in again["outcomes"]} == {"warning"}  # 10242, not a failure
    one = suspended["done"][0]
    resumed = YandexDirectResumeAudienceTargetsOperator(task_id="r", target_ids=[one]).execute(context)
    assert resumed["done"] == [one]
    with pytest.raises(AudiencePartialFailure):
        YandexDirectDeleteAudienceTargetsOperator(task_id="d", target_ids=[one, 1]).execute(context)
    deleted = YandexDirectDeleteAudienceTargetsOperator(
        task_id="d", retargeting_list_id=list_id, ad_group_ids=GROUPS
    ).execute(context)
    assert len(deleted["done"]) == 1 and direct.account().targets == {}
    assert (
        YandexDirectDeleteAudienceTargetsOperator(task_id="d", retargeting_list_id=list_id).execute(context)["done"]
        == []
    )


def test_set_bids(direct, context, list_id):
    YandexDirectAddAudienceTargetsOperator(task_id="attach", retargeting_list_id=list_id, ad_group_ids=GROUPS).execute(
        context
    )
    result = YandexDirectSetAudienceTargetBidsOperator(
        task_id="bids",
        bids=[
            {"ad_group_id": 5757000001, "context_bid": 3.2},
            {"ad_group_id": 5757000002, "strategy_priority": "high"},
        ],
    ).execute(context)
    assert [o["ad_group_id"] for o in result["done"]] == GROUPS
    by_group = {t["AdGroupId"]: t for t in direct.account().targets.values()}
    assert by_group[5757000001]["ContextBid"] == 3_200_000
    assert by_group[5757000002]["StrategyPriority"] == "HIGH"
    with pytest.raises(AudiencePartialFailure, match="1 of 1"):
        YandexDirectSetAudienceTargetBidsOperator(task_id="bids", bids=[{"target_id": 1, "context_bid": 1}]).execute(
            context
        )


def test_selection_is_required():
    with pytest.raises(ValueError, match="target_ids"):
        YandexDirectSuspendAudienceTargetsOperator(task_id="s")
    with pytest.raises(ValueError, match="on_item_error"):
        YandexDirectSuspendAudienceTargetsOperator(task_id="s", target_ids=[1], on_item_error="ignore")


# -- delete lists ----------------------------------------------------------------------------------


def test_delete_lists_reports_those_in_use(direct, context, list_id):
    free = upsert(task_id="x", name="free", rules=[{"operator": "ANY", "segments": [1002]}]).execute(context)
    YandexDirectAddAudienceTargetsOperator(task_id="attach", retargeting_list_id=list_id, ad_group_ids=GROUPS).execute(
        context
    )
    with pytest.raises(AudiencePartialFailure, match="1 of 2 items failed") as info:
        YandexDirectDeleteRetargetingListsOperator(
            task_id="delete", retargeting_list_ids=[list_id, free["retargeting_list_id"]]
        ).execute(context)
    assert "used by audience targets" in str(info.value)
    assert [x["Id"] for x in stored_lists(direct)] == [list_id]  # the free one was deleted
    warned = YandexDirectDeleteRetargetingListsOperator(
        task_id="delete", names=["airflow: buyers minus converted", "never existed"], on_item_error="warn"
    ).execute(context)
    assert warned["deleted"] == [] and list(warned["in_use"]) == [str(list_id)]
    assert len(warned["in_use"][str(list_id)]) == 2 and warned["missing"] == ["never existed"]
    with pytest.raises(AudienceNotFoundError):
        YandexDirectDeleteRetargetingListsOperator(
            task_id="delete", retargeting_list_ids=[1], missing_ok=False
        ).execute(context)


def test_templated_fields():
    op = upsert()
    assert {"name", "rules", "description", "client_login"} <= set(op.template_fields)
    assert {"retargeting_list_id", "ad_group_ids"} <= set(YandexDirectAddAudienceTargetsOperator.template_fields)
    assert "bids" in YandexDirectSetAudienceTargetBidsOperator.template_fields


def test_operator_module_import_is_cheap():
    code = (
        "import sys, json; from airflow.sdk import BaseOperator; before = set(sys.modules); "
        "import airflow_audience_provider.operators.yandex_direct, airflow_audience_provider.links.yandex_direct; "
        "print(json.dumps(sorted(set(sys.modules) - before)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    added = set(json.loads(out.stdout.strip().splitlines()[-1]))
    for heavy in (
        "requests",
        "tenacity",
        "airflow_audience_provider.hooks.yandex_direct",
        "airflow_audience_provider.core.transport",
    ):
        assert heavy not in added, heavy


# -- fidelity: Metrica goals need a membership life span ----------------------------------------


def test_metrica_goals_get_a_membership_life_span_by_default_and_by_parameter(direct, context):
    rules = [{"operator": "ANY", "segments": [1001], "goals": [PURCHASE_GOAL]}]
    upsert(name="default span", rules=rules).execute(context)
    upsert(name="own span", rules=rules, membership_life_span=540).execute(context)
    spans = {
        item["Name"]: [a.get("MembershipLifeSpan") for r in item["Rules"] for a in r["Arguments"]]
        for item in stored_lists(direct)
    }
    assert spans == {"default span": [None, 90], "own span": [None, 540]}  # segments carry none


@pytest.mark.parametrize("span", [0, 541, "30", True])
def test_a_bad_membership_life_span_fails_before_anything_is_sent(direct, context, api_calls, span):
    with pytest.raises(AudienceValidationError, match="membership_life_span"):
        upsert(rules=[{"operator": "ANY", "goals": [PURCHASE_GOAL]}], membership_life_span=span).execute(context)
    assert api_calls() == []


def test_direct_refuses_a_metrica_goal_without_a_life_span(hook):
    rules = [{"Operator": "ANY", "Arguments": [{"ExternalId": PURCHASE_GOAL}]}]
    (outcome,) = hook.add_retargeting_lists([{"Name": "no span", "Rules": rules}])
    assert outcome["errors"][0]["code"] == 5000 and "MembershipLifeSpan" in outcome["errors"][0]["details"]
    from airflow_audience_provider.domain.yandex_direct import validate_rules

    with pytest.raises(AudienceValidationError, match="needs a membership life span"):
        validate_rules(rules, metrica_goals=[PURCHASE_GOAL])


# -- fidelity: wait while Direct does not list a segment yet ------------------------------------


def test_a_segment_listed_late_is_waited_for_in_the_worker(direct, context):
    import threading

    timer = threading.Timer(0.3, direct.set_segment_status, args=(1003, "processed"))  # e.g. a fresh grant
    timer.start()
    try:
        result = upsert(name="late", rules=[{"operator": "ANY", "segments": [1003]}], segment_wait_timeout=10).execute(
            context
        )
    finally:
        timer.cancel()
    assert result["action"] == "created" and [g["goal_id"] for g in result["goals"]] == [AUDIENCE_GOAL_OFFSET + 1003]


@pytest.mark.asyncio
async def test_a_segment_listed_late_is_waited_for_in_the_triggerer(direct, context):
    from airflow.providers.common.compat.sdk import TaskDeferred

    from airflow_audience_provider.triggers.yandex_direct import YandexDirectSegmentsListedTrigger

    op = upsert(
        name="deferred", rules=[{"operator": "ANY", "segments": [1003]}], deferrable=True, segment_wait_timeout=30
    )
    with pytest.raises(TaskDeferred) as deferred:
        op.execute(context)
    trigger = deferred.value.trigger
    assert isinstance(trigger, YandexDirectSegmentsListedTrigger)
    assert trigger.status_kwargs == {"segments": [1003], "client_login": "sandbox-advertiser"}
    assert stored_lists(direct) == []  # nothing written while waiting
    direct.set_segment_status(1003, "processed")
    event = (await anext(trigger.run())).payload
    resumed = upsert(name="deferred", rules=[{"operator": "ANY", "segments": [1003]}], deferrable=True)
    assert resumed.execute_complete(context, event)["action"] == "created"
