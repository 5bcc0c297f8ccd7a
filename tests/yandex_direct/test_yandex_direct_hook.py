"""YandexDirectHook against the Direct fake over HTTP: envelope, errors with HTTP 200, per-item
results, paging, Units, retries, agency logins and the Audience segment -> goal resolution."""

from __future__ import annotations

import threading
import time

import pytest

from airflow_audience_provider.core.errors import (
    AudienceAuthenticationError,
    AudienceConfigurationError,
    AudienceNotFoundError,
    AudiencePermissionError,
    AudienceServerError,
    AudienceValidationError,
)
from airflow_audience_provider.core.transport import RetryPolicy
from airflow_audience_provider.domain.yandex_direct import item_results, rules_signature, validate_rules
from airflow_audience_provider.hooks.yandex_direct import Units, YandexDirectUnitsError
from airflow_audience_provider.sandbox.yandex_direct import AGENCY_TOKEN, AUDIENCE_GOAL_OFFSET

SEGMENT_GOAL = AUDIENCE_GOAL_OFFSET + 1001
CONVERTED_GOAL = AUDIENCE_GOAL_OFFSET + 1002
PURCHASE_GOAL = 12345678


def a_list(name: str, *goal_ids: int, operator: str = "ANY") -> dict:
    return {"Name": name, "Rules": [{"Operator": operator, "Arguments": [{"ExternalId": g} for g in goal_ids]}]}


# -- envelope, units, request ids ------------------------------------------------------------


def test_test_connection_reads_one_list_and_reports_units(hook, api_calls):
    ok, message = hook.test_connection()
    assert ok, message
    assert "sandbox-advertiser" in message and "units left" in message
    (call,) = api_calls("retargetinglists")
    assert call["method"] == "POST" and call["authorization"]


def test_units_and_request_id_are_recorded_on_every_call(hook, direct):
    hook.get_retargeting_lists()
    first = hook.units
    assert first is not None and first.daily_limit == 160000 and first.remaining == 160000 - first.spent
    hook.add_retargeting_lists([a_list("one", SEGMENT_GOAL)])
    assert hook.units.remaining < first.remaining  # the header decreases call by call
    assert hook.units_spent == first.spent + hook.units.spent
    assert hook.last_request_id and hook.last_request_id.isdigit()
    report = hook.units_report()
    assert report == {
        "spent": hook.units_spent,
        "calls": 2,
        "remaining": hook.units.remaining,
        "daily_limit": 160000,
    }
    assert direct.account().units_spent == hook.units_spent


def test_units_header_parsing():
    assert Units.parse("12/151407/168000") == Units(12, 151407, 168000)
    for bad in (None, "", "12/151407", "a/b/c", "1/2/3/4"):
        assert Units.parse(bad) is None  # unknown, never zero


def test_request_level_error_with_http_200_is_typed(hook, api_calls):
    with pytest.raises(AudienceValidationError) as info:
        hook.call("retargetinglists", "get", {})  # FieldNames missing
    error = info.value
    assert error.code == "8000" and "FieldNames" in error.message
    assert error.request_id and error.request_id.isdigit()
    assert [c["status"] for c in api_calls()] == [200]  # not retried, and HTTP 200 it was
    assert hook.units is not None  # the Units header of an error answer is read too


def test_unknown_method_is_55(hook):
    with pytest.raises(AudienceValidationError, match="Method not found") as info:
        hook.call("retargetinglists", "archive", {})
    assert info.value.code == "55"


def test_bad_token_is_an_authentication_error_and_never_retried(set_direct_conn, make_hook, api_calls):
    set_direct_conn("direct_bad", password="not-a-token")
    with pytest.raises(AudienceAuthenticationError) as info:
        make_hook("direct_bad").get_retargeting_lists()
    assert info.value.code == "53"
    assert len(api_calls()) == 1


def test_missing_token_names_the_connection_field(set_direct_conn, make_hook):
    set_direct_conn("direct_no_token", password=None)
    with pytest.raises(AudienceConfigurationError, match="OAuth token"):
        make_hook("direct_no_token").get_retargeting_lists()


def test_foreign_client_login_is_a_permission_error(hook, make_hook):
    with pytest.raises(AudiencePermissionError) as info:
        make_hook(client_login="someone-else").get_retargeting_lists()
    assert info.value.code == "54"


# -- agency logins ---------------------------------------------------------------------------------


def test_agency_without_client_login_is_refused_before_sending(set_direct_conn, make_hook, api_calls):
    set_direct_conn("agency", password=AGENCY_TOKEN, extra={"client_login": None, "is_agency": True})
    with pytest.raises(AudienceConfigurationError, match="client_login"):
        make_hook("agency").get_retargeting_lists()
    assert api_calls() == []


def test_agency_login_missing_from_direct_error_8000_says_what_to_set(set_direct_conn, make_hook):
    # the connection does not say it is an agency: Direct's own 8000 names the fix
    set_direct_conn("agency_unmarked", password=AGENCY_TOKEN, extra={"client_login": None})
    with pytest.raises(AudienceValidationError, match="client_login") as info:
        make_hook("agency_unmarked").get_retargeting_lists()
    assert info.value.code == "8000"


def test_agency_acts_for_the_task_client_login(set_direct_conn, make_hook, direct):
    set_direct_conn("agency", password=AGENCY_TOKEN, extra={"client_login": None, "is_agency": True})
    hook = make_hook("agency", client_login="sandbox-client")
    (outcome,) = hook.add_retargeting_lists([a_list("agency list", SEGMENT_GOAL)])
    assert outcome["ok"]
    assert [x["Name"] for x in direct.account("sandbox-client").lists.values()] == ["agency list"]
    assert direct.account().lists == {}
    goals = hook.get_retargeting_goals()  # v4 Live: Logins from the Client-Login
    assert {g["Login"] for g in goals} == {"sandbox-client"}
    with pytest.raises(AudienceNotFoundError) as info:
        make_hook("agency", client_login="not-our-client").get_retargeting_lists()
    assert info.value.code == "8800"


# -- per-item results ----------------------------------------------------------------------------


def test_add_maps_item_errors_back_to_the_input(hook):
    outcomes = hook.add_retargeting_lists([a_list("good", SEGMENT_GOAL), {"Name": "x" * 10, "Rules": []}][:1])
    assert outcomes[0]["ok"] and outcomes[0]["id"]
    list_id = outcomes[0]["id"]
    outcomes = hook.add_audience_targets(
        [
            {"AdGroupId": 5757000001, "RetargetingListId": list_id},
            {"AdGroupId": 1, "RetargetingListId": list_id},
            {"AdGroupId": 5757000002, "RetargetingListId": list_id, "StrategyPriority": "HIGH"},
        ]
    )
    assert [o["ok"] for o in outcomes] == [True, False, True]
    assert outcomes[1]["id"] is None and outcomes[1]["errors"][0]["code"] == 8800
    assert outcomes[1]["input"]["AdGroupId"] == 1
    assert outcomes[0]["errors"] == [] and outcomes[0]["warnings"] == []  # absent keys read as empty


def test_item_results_refuses_a_count_mismatch():
    with pytest.raises(AudienceServerError, match="cannot map"):
        item_results({"AddResults": [{"Id": 1}]}, "AddResults", [{}, {}])
    assert item_results({}, "DeleteResults", []) == []


def test_suspend_twice_is_a_warning_not_an_error(hook):
    (created,) = hook.add_retargeting_lists([a_list("l", SEGMENT_GOAL)])
    (target,) = hook.add_audience_targets([{"AdGroupId": 5757000001, "RetargetingListId": created["id"]}])
    (first,) = hook.suspend_audience_targets([target["id"]])
    (again,) = hook.suspend_audience_targets([target["id"]])
    assert first["ok"] and not first["warnings"]
    assert again["ok"] and again["warnings"][0]["code"] == 10242
    (resumed,) = hook.resume_audience_targets([target["id"]])
    assert resumed["ok"]
    (state,) = hook.get_audience_targets(ids=[target["id"]])
    assert state["State"] == "ON"


def test_set_bids_in_micros_and_mixed_kinds_refused_locally(hook, api_calls):
    (created,) = hook.add_retargeting_lists([a_list("l", SEGMENT_GOAL)])
    (target,) = hook.add_audience_targets([{"AdGroupId": 5757000001, "RetargetingListId": created["id"]}])
    (outcome,) = hook.set_bids_audience_targets([{"AdGroupId": 5757000001, "ContextBid": 12_500_000}])
    assert outcome["ok"] and outcome["AdGroupId"] == 5757000001
    assert hook.get_audience_targets(ids=[target["id"]])[0]["ContextBid"] == 12_500_000
    before = len(api_calls())
    with pytest.raises(AudienceValidationError, match="one kind of id"):
        hook.set_bids_audience_targets([{"Id": target["id"], "ContextBid": 1}, {"AdGroupId": 1, "ContextBid": 1}])
    assert len(api_calls()) == before
    with pytest.raises(AudienceValidationError) as info:  # and Direct says 4005 if it gets there
        hook.call(
            "audiencetargets", "setBids", {"Bids": [{"Id": 1, "ContextBid": 1}, {"AdGroupId": 1, "ContextBid": 1}]}
        )
    assert info.value.code == "4005"


def test_audience_targets_get_needs_a_filter(hook):
    with pytest.raises(AudienceValidationError, match="needs ids"):
        hook.get_audience_targets()
    with pytest.raises(AudienceValidationError) as info:
        hook.call("audiencetargets", "get", {"SelectionCriteria": {}, "FieldNames": ["Id"]})
    assert info.value.code == "4001"


def test_update_refuses_type_before_sending(hook, api_calls):
    with pytest.raises(AudienceValidationError, match="Type cannot be changed"):
        hook.update_retargeting_lists([{"Id": 1, "Type": "AUDIENCE"}])
    assert api_calls() == []


def test_deleting_a_list_in_use_fails_per_item(hook):
    (used,) = hook.add_retargeting_lists([a_list("used", SEGMENT_GOAL)])
    (free,) = hook.add_retargeting_lists([a_list("free", SEGMENT_GOAL)])
    hook.add_audience_targets([{"AdGroupId": 5757000001, "RetargetingListId": used["id"]}])
    outcomes = hook.delete_retargeting_lists([used["id"], free["id"], 999])
    assert [o["ok"] for o in outcomes] == [False, True, False]
    assert outcomes[0]["errors"][0]["code"] == 8301
    assert outcomes[2]["errors"][0]["code"] == 8800


# -- paging --------------------------------------------------------------------------------------


def test_get_pages_transparently_with_limited_by(hook, api_calls):
    hook.add_retargeting_lists([a_list(f"list {n}", SEGMENT_GOAL) for n in range(5)])
    start = len(api_calls())
    found = hook.get_all("retargetinglists", "RetargetingLists", {"FieldNames": ["Id", "Name"]}, page_limit=2)
    assert [x["Name"] for x in found] == [f"list {n}" for n in range(5)]
    assert len(api_calls()) - start == 3


def test_empty_get_is_an_empty_list(hook):
    assert hook.get_retargeting_lists() == []
    assert hook.get_audience_targets(ad_group_ids=[5757000001]) == []


# -- retries ---------------------------------------------------------------------------------------


def test_gateway_5xx_on_get_is_retried(hook, direct, api_calls):
    direct.faults.inject("status", count=2, path_prefix="/json/v5/retargetinglists", status=503)
    assert hook.get_retargeting_lists() == []
    assert [c["status"] for c in api_calls()] == [503, 503, 200]


def test_write_is_not_blindly_resent_after_a_5xx(hook, direct, api_calls):
    direct.faults.inject("status", count=1, path_prefix="/json/v5/retargetinglists", status=502)
    with pytest.raises(AudienceServerError):
        hook.add_retargeting_lists([a_list("x", SEGMENT_GOAL)])
    assert len(api_calls()) == 1


def holding_the_slot(direct, timeout: float = 10.0) -> None:
    """Wait until a request holds the advertiser's only slot (polled: thread starts vary under load)."""
    deadline = time.monotonic() + timeout
    while direct.account().in_flight == 0:
        assert time.monotonic() < deadline, "the blocking request never reached the fake"
        time.sleep(0.01)


def test_too_many_concurrent_requests_506_is_retried(make_hook, direct, api_calls):
    direct.configure(max_concurrent=1, request_seconds=0.3)
    patient = RetryPolicy(backoff_initial=0.2, backoff_max=0.4)  # outlasts the 0.3 s the slot is held
    hooks = [make_hook(retry=patient), make_hook(retry=patient)]
    errors: list[BaseException] = []

    def run(h):
        try:
            h.get_retargeting_lists()
        except BaseException as exc:
            errors.append(exc)

    blocker = threading.Thread(target=run, args=(hooks[0],))
    blocker.start()
    holding_the_slot(direct)
    run(hooks[1])
    blocker.join()
    assert errors == []
    assert len(api_calls()) >= 3  # the second was refused with 506 at least once, then retried


def test_506_on_a_write_is_resent_because_direct_refused_it(make_hook, direct):
    direct.configure(max_concurrent=1, request_seconds=0.3)
    blocker = make_hook()
    thread = threading.Thread(target=blocker.get_retargeting_lists)
    thread.start()
    holding_the_slot(direct)
    patient = RetryPolicy(backoff_initial=0.2, backoff_max=0.4)
    (outcome,) = make_hook(retry=patient).add_retargeting_lists([a_list("during a busy moment", SEGMENT_GOAL)])
    thread.join()
    assert outcome["ok"]
    assert [x["Name"] for x in direct.account().lists.values()] == ["during a busy moment"]


# -- units exhausted ------------------------------------------------------------------------------


def test_units_exhausted_152_from_direct(hook, direct):
    direct.set_units(0)
    with pytest.raises(YandexDirectUnitsError, match="points are used up") as info:
        hook.get_retargeting_lists()
    assert info.value.code == "152"
    assert info.value.retry_after == 3600.0  # points come back hourly: retry the task later, not now


def test_stops_before_a_call_the_remaining_units_cannot_pay(hook, direct, api_calls):
    hook.get_retargeting_lists()
    direct.set_units(11)  # a one-item write costs at least 12
    hook.get_retargeting_lists()  # learns "10 left" after paying 1 for this (empty) get
    sent = len(api_calls())
    with pytest.raises(YandexDirectUnitsError, match="only 10 of 160000") as info:
        hook.add_retargeting_lists([a_list("x", SEGMENT_GOAL)])
    assert len(api_calls()) == sent  # nothing sent
    assert info.value.units.remaining == 10


def test_units_reserve_from_the_connection(set_direct_conn, make_hook, direct):
    set_direct_conn("reserved", extra={"units_reserve": 159998})
    hook = make_hook("reserved")
    hook.get_retargeting_lists()  # 1 spent: 159999 left, the next get (2) would dip below the reserve
    with pytest.raises(YandexDirectUnitsError, match="reserve 159998"):
        hook.get_retargeting_lists()


# -- goals and Audience segments -------------------------------------------------------------------


def test_segments_resolve_by_id_name_and_goal_id(hook):
    resolved = hook.resolve_audience_segments([1001, "1001", "Converted customers", {"goal_id": PURCHASE_GOAL}])
    assert [r["goal_id"] for r in resolved] == [SEGMENT_GOAL, SEGMENT_GOAL, CONVERTED_GOAL, PURCHASE_GOAL]
    assert resolved[0]["name"] == "CRM buyers 2026"


def test_unknown_or_unprocessed_segment_is_a_clear_not_found(hook, direct):
    from airflow_compat import AirflowFailException

    with pytest.raises(AudienceNotFoundError, match=r"\[1003, 'Nobody'\].*processed") as info:
        hook.resolve_audience_segments([1001, 1003, "Nobody"])
    assert isinstance(info.value, AirflowFailException)  # a retry of the task cannot fix it
    direct.set_segment_status(1003, "processed")  # the goal appears once the segment is processed
    assert hook.resolve_audience_segments([1003])[0]["name"] == "Newsletter signups"


def test_segment_id_is_never_taken_as_its_goal_id(hook, direct):
    direct.add_audience_segment(12345678 - AUDIENCE_GOAL_OFFSET + AUDIENCE_GOAL_OFFSET, "clash")  # id 12345678
    (resolved,) = hook.resolve_audience_segments([12345678])
    assert resolved["goal_id"] == AUDIENCE_GOAL_OFFSET + 12345678  # not the Metrica goal 12345678


def test_ambiguous_segment_name(hook, direct):
    direct.add_audience_segment(2001, "CRM buyers 2026")
    with pytest.raises(AudienceValidationError, match="matches several"):
        hook.resolve_audience_segments(["CRM buyers 2026"])


def test_unknown_metrica_goal(hook):
    with pytest.raises(AudienceNotFoundError, match="no goal"):
        hook.resolve_goals([PURCHASE_GOAL, 42])


def test_goals_follow_an_injected_source(hook, direct):
    direct.set_goal_source(
        lambda: [{"id": 7, "name": "from elsewhere", "status": "processed"}, {"id": 8, "name": "no"}]
    )
    names = {g["Name"] for g in hook.get_retargeting_goals() if g["Type"] != "goal"}
    assert names == {"from elsewhere", "no"}  # status absent: the source vouches for it


# -- rules -------------------------------------------------------------------------------------------


def rule(op="ANY", *ids, span=None):
    return {
        "Operator": op,
        "Arguments": [{"ExternalId": i, **({"MembershipLifeSpan": span} if span else {})} for i in ids],
    }


@pytest.mark.parametrize(
    ("rules", "match"),
    [
        ([], "at least one rule"),
        ([rule("ANY", n + 1) for n in range(51)], "at most 50 rules"),
        ([rule("ANY", *range(1 + n * 100, 101 + n * 100)) for n in range(3)], "at most 250 goals"),
        ([rule("SOME", 1)], "operator must be one of"),
        ([{"Operator": "ALL", "Arguments": []}], "has no segments or goals"),
        ([rule("ANY", 1, 1)], "appears twice"),
        ([rule("ANY", 1, span=541)], "1-540 days"),
        ([rule("ANY", 0)], "positive integer"),
    ],
)
def test_validate_rules_refuses(rules, match):
    with pytest.raises(AudienceValidationError, match=match):
        validate_rules(rules)


def test_rules_over_the_limit_are_refused_before_sending(hook, api_calls):
    with pytest.raises(AudienceValidationError, match="at most 50 rules"):
        hook.add_retargeting_lists([{"Name": "big", "Rules": [rule("ANY", n + 1) for n in range(51)]}])
    assert api_calls() == []


def test_rules_signature_ignores_order_and_segment_life_span():
    stored = [
        rule("NONE", CONVERTED_GOAL),
        {"Operator": "ANY", "Arguments": [{"ExternalId": SEGMENT_GOAL, "MembershipLifeSpan": None}]},
    ]
    desired = [rule("ANY", SEGMENT_GOAL, span=30), rule("NONE", CONVERTED_GOAL)]
    assert rules_signature(stored) == rules_signature(desired)
    assert rules_signature([rule("ANY", PURCHASE_GOAL, span=30)], [PURCHASE_GOAL]) != rules_signature(
        [rule("ANY", PURCHASE_GOAL, span=90)], [PURCHASE_GOAL]
    )


def test_sandbox_switch_picks_directs_sandbox_host(set_direct_conn, make_hook):
    set_direct_conn("direct_sb", host=None, extra={"sandbox": True})
    hook = make_hook("direct_sb")
    assert hook.base_url(hook.settings()) == "https://api-sandbox.direct.yandex.com"
    set_direct_conn("direct_prod", host=None)
    prod = make_hook("direct_prod")
    assert prod.base_url(prod.settings()) == "https://api.direct.yandex.com"
    assert prod.get_conn().session.headers["Accept-Language"] == "en"
    assert prod.live4_url() == "https://api.direct.yandex.com/live/v4/json/"


def test_headers_sent(set_direct_conn, make_hook):
    set_direct_conn("direct_headers", extra={"use_operator_units": True, "accept_language": "ru"})
    headers = make_hook("direct_headers", client_login="override").get_conn().session.headers
    assert headers["Client-Login"] == "override"
    assert headers["Use-Operator-Units"] == "true"
    assert headers["Accept-Language"] == "ru"
    assert headers["Content-Type"] == "application/json; charset=utf-8"


def test_use_operator_units_spends_the_agencys_points(set_direct_conn, make_hook, direct):
    set_direct_conn(
        "agency_units",
        password=AGENCY_TOKEN,
        extra={"client_login": "sandbox-client", "is_agency": True, "use_operator_units": True},
    )
    hook = make_hook("agency_units")
    hook.add_retargeting_lists([a_list("paid by the agency", SEGMENT_GOAL)])
    assert direct.account("sandbox-agency").units_spent == hook.units_spent > 0
    assert direct.account("sandbox-client").units_spent == 0
    assert [x["Name"] for x in direct.account("sandbox-client").lists.values()] == ["paid by the agency"]


def test_test_connection_reports_a_refused_token_without_raising(set_direct_conn, make_hook):
    set_direct_conn("direct_refused", password="revoked")
    ok, message = make_hook("direct_refused").test_connection()
    assert not ok
    assert "Authorization error" in message and "code=53" in message


# -- fidelity: Dictionaries, Direct's own sandbox ---------------------------------------------------


def test_dictionaries_get_reads_the_audience_catalogues(hook, direct):
    catalogues = hook.get_dictionaries()
    assert set(catalogues) == {"AudienceInterests", "AudienceDemographicProfiles", "AudienceCriteriaTypes"}
    assert all(catalogues[name] and all("Id" in i for i in catalogues[name]) for name in catalogues)
    assert {i["InterestType"] for i in hook.get_dictionaries(["AudienceInterests"])["AudienceInterests"]} <= {
        "SHORT_TERM",
        "LONG_TERM",
        "ANY",
    }
    calls = [r["path"] for r in direct.requests if r["path"].endswith("/dictionaries")]
    assert calls == ["/json/v5/dictionaries"] * 2


def test_goals_in_directs_own_sandbox_are_refused_with_a_clear_message(make_hook, set_direct_conn, direct):
    hook = make_hook(set_direct_conn("direct_real_sandbox", host="", extra={"sandbox": True}))
    with pytest.raises(AudienceConfigurationError, match="own sandbox does not support GetRetargetingGoals"):
        hook.get_retargeting_goals()
    assert not [r for r in direct.requests if r["path"].startswith("/live/")]


# -- fidelity: goal ids are matched on what the answer carries -----------------------------------


def test_segments_resolve_without_an_audience_type_or_the_assumed_numbering(hook, direct):
    assert {g["Type"] for g in hook.get_retargeting_goals()} == {"goal", "segment"}  # no "audience" anywhere
    direct.configure(audience_goal_numbering=0)  # Direct numbers the goals otherwise
    goal = direct.audience_goal_id(1001)
    with pytest.raises(AudienceNotFoundError) as missing:
        hook.resolve_audience_segments([1001])
    assert f"{goal} 'CRM buyers 2026' (Type 'segment')" in missing.value.message  # what Direct does list
    assert "'name'" in missing.value.message and "goal_id" in missing.value.message  # and how to say more
    (by_name,) = hook.resolve_audience_segments([{"segment_id": 1001, "name": "CRM buyers 2026"}])
    assert by_name["goal_id"] == goal
    assert hook.resolve_audience_segments(["Converted customers"])[0]["goal_id"] == direct.audience_goal_id(1002)


def test_a_field_naming_the_segment_or_the_bare_id_is_recognised(hook):
    goals = [
        {"GoalID": 12345678, "Name": "Purchase", "Type": "goal"},
        {"GoalID": 555, "Name": "x", "Type": "segment", "SegmentID": 1001},
        {"GoalID": 1002, "Name": "y", "Type": "audience_segment"},
    ]
    resolved = hook.resolve_audience_segments([1001, 1002], goals)
    assert [r["goal_id"] for r in resolved] == [555, 1002]
    with pytest.raises(AudienceNotFoundError):
        hook.resolve_audience_segments([12345678], goals)  # a Metrica goal is not a segment


def test_goals_status_waits_for_a_segment_direct_does_not_list_yet(hook, direct):
    waiting = hook.audience_goals_status([1001, 1003])
    assert waiting.phase.value == "running" and waiting.data == {"missing": [1003]}
    direct.set_segment_status(1003, "processed")
    done = hook.audience_goals_status([1001, 1003])
    assert done.phase.value == "done" and [g["goal_id"] for g in done.data["goals"]] == [
        AUDIENCE_GOAL_OFFSET + 1001,
        AUDIENCE_GOAL_OFFSET + 1003,
    ]
