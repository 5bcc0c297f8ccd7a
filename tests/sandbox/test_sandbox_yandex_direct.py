"""The Yandex Direct fake over plain HTTP, checked against Direct's API v5 reference (yandex.ru/dev/direct)
and recorded real traffic."""

from __future__ import annotations

import threading
import time

import pytest
import requests

from airflow_audience_provider.sandbox.yandex_direct import (
    AGENCY_TOKEN,
    AUDIENCE_GOAL_OFFSET,
    SANDBOX_TOKEN,
    YandexDirectFake,
)

SEGMENT_GOAL = AUDIENCE_GOAL_OFFSET + 1001


@pytest.fixture
def fake(yandex_direct_sandbox) -> YandexDirectFake:
    return yandex_direct_sandbox


def post(fake, service, method, params=None, *, token=SANDBOX_TOKEN, headers=None, version="v5", raw=None):
    sent = {"Authorization": f"Bearer {token}"} if token else {}
    sent.update(headers or {})
    body = raw if raw is not None else None
    json_body = None if raw is not None else {"method": method, "params": params if params is not None else {}}
    return requests.post(
        f"{fake.base_url}/json/{version}/{service}", json=json_body, data=body, headers=sent, timeout=10
    )


def error_of(response):
    assert response.status_code == 200  # request-level errors come with HTTP 200 and an "error" body
    error = response.json()["error"]
    assert set(error) == {"request_id", "error_code", "error_string", "error_detail"}
    assert error["request_id"] == response.headers["RequestId"]
    return error


def add_list(fake, name="l", goal=SEGMENT_GOAL, **headers):
    rules = [{"Operator": "ANY", "Arguments": [{"ExternalId": goal}]}]
    response = post(fake, "retargetinglists", "add", {"RetargetingLists": [{"Name": name, "Rules": rules}]}, **headers)
    return response.json()["result"]["AddResults"][0]["Id"]


def test_units_header_decreases_per_call_and_request_id_on_every_answer(fake):
    first = post(fake, "retargetinglists", "get", {"FieldNames": ["Id"]})
    assert first.json() == {"result": {}}  # nothing found: no collection key, not an empty list
    spent, remaining, limit = map(int, first.headers["Units"].split("/"))
    assert (spent, remaining, limit) == (1, 159999, 160000)
    assert first.headers["Units-Used-Login"] == "sandbox-advertiser"
    add_list(fake)
    later = post(fake, "retargetinglists", "get", {"FieldNames": ["Id"]})
    assert int(later.headers["Units"].split("/")[1]) == 159999 - 12 - 2
    assert first.headers["RequestId"] != later.headers["RequestId"]


def test_units_exhausted_is_152_and_nothing_happens(fake):
    fake.set_units(11)
    error = error_of(post(fake, "retargetinglists", "add", {"RetargetingLists": [{"Name": "x", "Rules": []}]}))
    assert error["error_code"] == 152
    assert fake.account().lists == {}


@pytest.mark.parametrize(
    ("kwargs", "code"),
    [
        ({"token": None}, 8000),
        ({"token": "wrong"}, 53),
        ({"headers": {"Authorization": f"OAuth {SANDBOX_TOKEN}"}, "token": None}, 8000),
        ({"headers": {"Client-Login": "stranger"}}, 54),
        ({"token": AGENCY_TOKEN}, 8000),
        ({"token": AGENCY_TOKEN, "headers": {"Client-Login": "stranger"}}, 8800),
    ],
)
def test_auth_errors(fake, kwargs, code):
    assert error_of(post(fake, "retargetinglists", "get", {"FieldNames": ["Id"]}, **kwargs))["error_code"] == code


def test_envelope_errors(fake):
    assert error_of(post(fake, "retargetinglists", "archive", {}))["error_code"] == 55
    assert error_of(post(fake, "retargetinglists", None, raw=b"{not json"))["error_code"] == 8000
    assert error_of(post(fake, "retargetinglists", None, raw=b'{"params": {}}'))["error_code"] == 8000
    missing_fields = error_of(post(fake, "retargetinglists", "get", {}))
    assert missing_fields["error_code"] == 8000 and "FieldNames" in missing_fields["error_detail"]
    # the service name is case-sensitive; an unknown version is not served
    assert post(fake, "RetargetingLists", "get", {"FieldNames": ["Id"]}).status_code == 404
    assert post(fake, "retargetinglists", "get", {"FieldNames": ["Id"]}, version="v4").status_code == 404
    assert post(fake, "retargetinglists", "get", {"FieldNames": ["Id"]}, version="v501").status_code == 200


def test_per_item_results_in_input_order(fake):
    items = [
        {"Name": "ok", "Rules": [{"Operator": "ANY", "Arguments": [{"ExternalId": SEGMENT_GOAL}]}]},
        {"Name": "x" * 251, "Rules": [{"Operator": "ANY", "Arguments": [{"ExternalId": SEGMENT_GOAL}]}]},
        {"Name": "too many", "Rules": [{"Operator": "ANY", "Arguments": [{"ExternalId": 1}]}] * 51},
        {"Name": "span", "Rules": [{"Operator": "ANY", "Arguments": [{"ExternalId": 1, "MembershipLifeSpan": 541}]}]},
    ]
    response = post(fake, "retargetinglists", "add", {"RetargetingLists": items})
    results = response.json()["result"]["AddResults"]
    assert "Errors" not in results[0] and results[0]["Id"]  # the sandbox omits empty Errors
    assert [r["Errors"][0]["Code"] for r in results[1:]] == [5001, 7000, 5005]
    assert response.headers["Units"].startswith(f"{10 + 2 * 4 + 20 * 3}/")  # failed items cost more


def test_update_type_and_unknown_fields_are_8000(fake):
    list_id = add_list(fake)
    error = error_of(
        post(fake, "retargetinglists", "update", {"RetargetingLists": [{"Id": list_id, "Type": "AUDIENCE"}]})
    )
    assert error["error_code"] == 8000 and "Type" in error["error_detail"]


def test_lists_read_back_availability_scope_and_null_life_span(fake):
    good = add_list(fake, "good")
    unknown = add_list(fake, "unknown goal", goal=12345)  # Direct accepts any goal id at add time
    rules = [{"Operator": "NONE", "Arguments": [{"ExternalId": SEGMENT_GOAL, "MembershipLifeSpan": 30}]}]
    none_only = post(fake, "retargetinglists", "add", {"RetargetingLists": [{"Name": "n", "Rules": rules}]})
    none_id = none_only.json()["result"]["AddResults"][0]["Id"]
    fields = ["Id", "IsAvailable", "Scope", "AvailableForTargetsInAdGroupTypes", "Rules"]
    lists = post(fake, "retargetinglists", "get", {"FieldNames": fields}).json()["result"]["RetargetingLists"]
    by_id = {x["Id"]: x for x in lists}
    assert by_id[good]["IsAvailable"] == "YES" and by_id[unknown]["IsAvailable"] == "NO"
    assert by_id[none_id]["Scope"] == "FOR_ADJUSTMENTS_ONLY"
    assert by_id[none_id]["AvailableForTargetsInAdGroupTypes"] is None
    assert by_id[none_id]["Rules"][0]["Arguments"][0]["MembershipLifeSpan"] is None  # ignored for segments
    assert set(by_id[good]) == set(fields)


def test_paging_limited_by(fake):
    for n in range(3):
        add_list(fake, f"l{n}")
    page = post(fake, "retargetinglists", "get", {"FieldNames": ["Id"], "Page": {"Limit": 2}}).json()["result"]
    assert len(page["RetargetingLists"]) == 2 and page["LimitedBy"] == 2
    rest = post(fake, "retargetinglists", "get", {"FieldNames": ["Id"], "Page": {"Limit": 2, "Offset": 2}})
    assert "LimitedBy" not in rest.json()["result"] and len(rest.json()["result"]["RetargetingLists"]) == 1
    bad = post(fake, "retargetinglists", "get", {"FieldNames": ["Id"], "Page": {"Limit": 0}})
    assert error_of(bad)["error_code"] == 4002


def test_audience_targets_rules(fake):
    list_id = add_list(fake)
    targets = [
        {"AdGroupId": 5757000001, "RetargetingListId": list_id},
        {"AdGroupId": 5757000001, "RetargetingListId": list_id},
        {"AdGroupId": 5757000002},
        {"AdGroupId": 5757000002, "RetargetingListId": list_id, "InterestId": 1},
        {"AdGroupId": 5757000004, "RetargetingListId": list_id},
        {"AdGroupId": 5757000002, "RetargetingListId": 999},
    ]
    results = post(fake, "audiencetargets", "add", {"AudienceTargets": targets}).json()["result"]["AddResults"]
    assert [r.get("Errors", [{}])[0].get("Code") for r in results] == [None, 9801, 5008, 5009, 6001, 8800]
    assert error_of(post(fake, "audiencetargets", "get", {"FieldNames": ["Id"]}))["error_code"] == 8000
    assert (
        error_of(post(fake, "audiencetargets", "get", {"SelectionCriteria": {}, "FieldNames": ["Id"]}))["error_code"]
        == 4001
    )
    # the list is in use now: deleting it fails per item
    deleted = post(fake, "retargetinglists", "delete", {"SelectionCriteria": {"Ids": [list_id]}})
    assert deleted.json()["result"]["DeleteResults"][0]["Errors"][0]["Code"] == 8301


def test_concurrency_limit_answers_506(fake):
    fake.configure(max_concurrent=1, request_seconds=1.0)
    slow = threading.Thread(target=post, args=(fake, "retargetinglists", "get", {"FieldNames": ["Id"]}))
    slow.start()
    deadline = time.monotonic() + 10
    while fake.account().in_flight == 0:  # polled: the slow request holds the only slot (thread starts vary)
        assert time.monotonic() < deadline, "the slow request never reached the fake"
        time.sleep(0.01)
    refused = post(fake, "retargetinglists", "get", {"FieldNames": ["Id"]})
    slow.join()
    assert error_of(refused)["error_code"] == 506
    assert refused.headers["Units"].startswith("0/")  # refused calls cost nothing here


def test_injected_5xx_keeps_the_envelope(fake):
    fake.faults.inject("status", status=503, path_prefix="/json/v5/retargetinglists")
    response = post(fake, "retargetinglists", "get", {"FieldNames": ["Id"]})
    assert response.status_code == 503 and response.json()["error"]["error_code"] == 1000


def test_v4_get_retargeting_goals(fake):
    url = f"{fake.base_url}/live/v4/json/"
    body = {"method": "GetRetargetingGoals", "param": {}, "locale": "en", "token": SANDBOX_TOKEN}
    goals = requests.post(url, json=body, timeout=10).json()["data"]
    assert {g["GoalID"] for g in goals} >= {12345678, SEGMENT_GOAL, AUDIENCE_GOAL_OFFSET + 1002}
    assert AUDIENCE_GOAL_OFFSET + 1003 not in {g["GoalID"] for g in goals}  # still is_processed
    agency = requests.post(url, json={**body, "token": AGENCY_TOKEN}, timeout=10).json()
    assert agency["error_code"] == 71 and "error_str" in agency  # v4 shape: error_str, not error_string
    clients = requests.post(
        url, json={**body, "token": AGENCY_TOKEN, "param": {"Logins": ["sandbox-client"]}}, timeout=10
    )
    assert {g["Login"] for g in clients.json()["data"]} == {"sandbox-client"}
    assert requests.post(url, json={**body, "token": "bad"}, timeout=10).json()["error_code"] == 53


def test_goal_source_follows_the_audience_fake(sandbox, fake):
    if "yandex_audience" not in sandbox.vendors:
        pytest.skip("the Yandex.Audience fake is not served")
    audience = sandbox.fake("yandex_audience")
    audience.reset()
    assert fake.use_audience_fake(audience)
    processed = {AUDIENCE_GOAL_OFFSET + int(s["id"]) for s in audience.processed_segments()}
    assert processed
    # Direct lists a segment only to a login that owns it or holds a grant: none yet.
    assert {g["GoalID"] for g in fake.goals() if g["Type"] != "goal"} == set()
    sid = min(int(s["id"]) for s in audience.processed_segments())
    granted = requests.put(
        f"{audience.base_url}/v1/management/segment/{sid}/grant",
        json={"grant": {"user_login": "sandbox-advertiser"}},
        headers={"Authorization": f"OAuth {audience.token}"},
        timeout=10,
    )
    assert granted.ok, granted.text
    listed = {g["GoalID"]: g for g in fake.goals() if g["Type"] != "goal"}
    assert set(listed) == {AUDIENCE_GOAL_OFFSET + sid} and listed[AUDIENCE_GOAL_OFFSET + sid]["Type"] == "segment"
    assert fake.goals("sandbox-client") == [g for g in fake.goals("sandbox-client") if g["Type"] == "goal"]
    audience.reset()
    fake.reset()
    assert AUDIENCE_GOAL_OFFSET + 1001 in {g["GoalID"] for g in fake.goals()}  # reset: own seeds again


def test_control_api(fake):
    assert requests.post(f"{fake.base_url}/_sandbox/yandex_direct/units", json={"remaining": 5}, timeout=5).ok
    assert post(fake, "retargetinglists", "get", {"FieldNames": ["Id"]}).headers["Units"] == "1/4/160000"
    assert requests.post(
        f"{fake.base_url}/_sandbox/yandex_direct/segments", json={"id": 77, "name": "new"}, timeout=5
    ).ok
    assert AUDIENCE_GOAL_OFFSET + 77 in {g["GoalID"] for g in fake.goals()}
    assert requests.post(f"{fake.base_url}/_sandbox/yandex_direct/units", json={}, timeout=5).status_code == 400
    state = requests.get(f"{fake.base_url}/_sandbox/yandex_direct/state", timeout=5).json()
    assert state["sandbox-advertiser"]["units_spent"] == 160000 - 4
