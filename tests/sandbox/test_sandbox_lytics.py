"""The Lytics fake over real HTTP: auth, every endpoint, envelopes against the spec, the server's surprises
(a taken slug renamed, not refused; an update without FROM making another segment), lifecycle."""

from __future__ import annotations

import time
from typing import Any

import pytest
import requests
from sandbox_helpers import (
    LyticsApi,
    check_segment,
    check_v2_error,
    schema_for,
    spec_response_schema,
    validate,
)

from airflow_audience_provider.sandbox.base import ApiError

US_QL = 'FILTER AND (country = "US", last_visit_ts > "now-30d") FROM user ALIAS us_active'


def _seg(api: LyticsApi, ref: str, **params) -> dict:
    response = api.get(f"/v2/segment/{ref}", params=params)
    assert response.status_code == 200, response.text
    return response.json()["data"]


# ---------------------------------------------------------------------------- auth and account
@pytest.mark.parametrize("header", [None, "wrong-token", "Bearer {token}"])
def test_bad_token_gets_v1_shaped_401(lytics_sandbox, header) -> None:
    headers = {} if header is None else {"Authorization": header.format(token=lytics_sandbox.token)}
    for path in ("/v2/segment", "/v2/segment/group", "/v2/no/such/route", "/api/segment/sizes?ids=x"):
        response = requests.get(lytics_sandbox.base_url + path, headers=headers, timeout=5)
        assert response.status_code == 401
        assert response.json() == {"message": "Not authorized", "status": 401}
        assert response.headers["x-request-id"]


def test_v1_accepts_access_token_query(lytics_sandbox) -> None:
    response = requests.get(
        lytics_sandbox.base_url + "/api/segment/sizes",
        params={"ids": "all_users", "access_token": lytics_sandbox.token},
        timeout=5,
    )
    assert response.status_code == 200
    # v2 does not
    response = requests.get(
        lytics_sandbox.base_url + "/v2/segment", params={"access_token": lytics_sandbox.token}, timeout=5
    )
    assert response.status_code == 401


def test_account_id_must_match(api: LyticsApi, lytics_sandbox) -> None:
    assert api.get("/v2/segment", params={"account_id": lytics_sandbox.account_id}).status_code == 200
    assert api.get("/v2/segment", params={"account_id": str(lytics_sandbox.aid)}).status_code == 200
    message = check_v2_error(api.get("/v2/segment", params={"account_id": "other"}), 404, "ACCOUNT-NOTFOUND-021")
    assert "other" in message


# ---------------------------------------------------------------------------- list / create / get
def test_list_conforms_to_spec_and_filters(api: LyticsApi) -> None:
    response = api.get("/v2/segment")
    body = response.json()
    validate(body, spec_response_schema("/segment", "get", 200))
    assert body["request_id"] == response.headers["x-request-id"]
    assert {s["slug_name"] for s in body["data"]} == {"all_users", "unsubscribed"}
    for segment in body["data"]:
        check_segment(segment)
        assert "size" not in segment
    assert [s["slug_name"] for s in api.get("/v2/segment", params={"kind": "aspect"}).json()["data"]] == [
        "unsubscribed"
    ]
    assert api.get("/v2/segment", params={"table": "content"}).json()["data"] == []
    with_sizes = api.get("/v2/segment", params={"sizes": "true", "kind": "all", "valid": "all"}).json()["data"]
    for segment in with_sizes:
        check_segment(segment, sizes=True)
    check_v2_error(api.get("/v2/segment", params={"table": "nope"}), 404, "TABLE-NOTFOUND-009")
    check_v2_error(api.get("/v2/segment", params={"valid": "maybe"}), 400, "BADREQ-001")


def test_create_conforms_to_spec(api: LyticsApi, lytics_sandbox) -> None:
    response = api.post(
        "/v2/segment",
        params={"account_id": lytics_sandbox.account_id},
        json={
            "name": "US active",
            "slug_name": "us_active",
            "description": "Managed by Airflow",
            "segment_ql": US_QL,
            "table": "user",
            "kind": "segment",
            "is_public": True,
            "tags": ["airflow"],
            "save_hist": True,
            "id": "ignored-server-field",
        },
    )
    assert response.status_code == 201
    body = response.json()
    validate(body, spec_response_schema("/segment", "post", 201))
    assert body["status"] == 201
    segment = body["data"]
    check_segment(segment)
    assert segment["id"] != "ignored-server-field"
    assert segment["aid"] == lytics_sandbox.aid
    assert segment["account_id"] == lytics_sandbox.account_id
    assert segment["public_name"] == "us_active"
    assert segment["tags"] == ["airflow"] and segment["save_hist"] is True
    assert segment["ast"]["op"] == "and"
    assert segment["fields"] == ["country", "last_visit_ts"]
    assert segment["datemath_calc"] is True
    assert segment["invalid"] is False and segment["invalid_reason"] == ""
    assert segment["created"].endswith("Z") and "T" in segment["created"]
    # get by id and by slug
    assert _seg(api, segment["id"])["slug_name"] == "us_active"
    by_slug = api.get("/v2/segment/us_active", params={"sizes": "true"})
    validate(by_slug.json(), spec_response_schema("/segment/{id}", "get", 200))
    check_segment(by_slug.json()["data"], sizes=True)
    assert by_slug.json()["data"]["id"] == segment["id"]


def test_taken_slug_is_silently_renamed(api: LyticsApi) -> None:
    first = api.create(name="Dup", slug_name="dup", segment_ql='FILTER country = "US"')
    second = api.create(name="Dup", slug_name="dup", segment_ql='FILTER country = "US"')
    third = api.create(name="Dup", segment_ql='FILTER country = "US" ALIAS dup')
    assert [first["slug_name"], second["slug_name"], third["slug_name"]] == ["dup", "dup_1", "dup_2"]
    assert len({first["id"], second["id"], third["id"]}) == 3


def test_alias_sets_slug_and_name_defaults(api: LyticsApi) -> None:
    created = api.create(segment_ql="FILTER EXISTS email ALIAS has_email")
    assert (created["slug_name"], created["name"]) == ("has_email", "has_email")
    from_name = api.create(name="VIP Buyers!", segment_ql="FILTER EXISTS email")
    assert from_name["slug_name"] == "vip_buyers"


def test_create_from_ast_only_like_the_seed(api: LyticsApi) -> None:
    ast = {"op": "and", "args": [{"op": "=", "args": [{"ident": "country"}, {"val": "US"}]},
                                 {"op": ">", "args": [{"ident": "visitct"}, {"val": "5"}]}]}  # fmt: skip
    created = api.create(name="High Value", slug_name="high_value", table="user", is_public=True, ast=ast)
    assert created["ast"] == ast
    assert created["segment_ql"] == 'FILTER AND (country = "US", visitct > 5) FROM user ALIAS high_value'


@pytest.mark.parametrize(
    ("body", "status", "code", "fragment"),
    [
        ({"name": "x", "segment_ql": 'FILTER AND (country = "US"'}, 400, "BADREQ-001", "expected ')'"),
        ({"name": "x", "segment_ql": "country = 1"}, 400, "BADREQ-001", "expected FILTER"),
        ({"name": "x", "segment_ql": 'FILTER x = "open'}, 400, "BADREQ-001", "unterminated string"),
        ({"name": "x", "segment_ql": "FILTER x LIKES 1"}, 400, "BADREQ-001", "expected an operator"),
        ({"name": "x"}, 400, "BADREQ-001", "segment_ql is required"),
        ({"segment_ql": "FILTER *"}, 400, "BADREQ-001", "name is required"),
        ({"name": "x", "segment_ql": "FILTER *", "tags": "a"}, 400, "JSON-BADREQ-025", "Segment.tags"),
        ({"name": "x", "segment_ql": "FILTER *", "table": "orders"}, 404, "TABLE-NOTFOUND-009", "orders"),
        ({"name": "x", "segment_ql": "FILTER *", "kind": "weird"}, 400, "BADREQ-001", "invalid kind"),
        ({"name": "x", "segment_ql": "FILTER *", "slug_name": "no spaces"}, 400, "BADREQ-001", "slug_name"),
        ({"name": "x", "ast": {"op": "frob"}}, 400, "BADREQ-001", "invalid ast"),
    ],
)
def test_create_rejects_bad_input(api: LyticsApi, body, status, code, fragment) -> None:
    response = api.post("/v2/segment", json=body)
    message = check_v2_error(response, status, code)
    assert fragment in message
    validate(response.json(), spec_response_schema("/segment", "post", status))


def test_create_rejects_non_json(api: LyticsApi) -> None:
    check_v2_error(api.post("/v2/segment", data="{not json"), 400, "JSON-BADREQ-025")
    check_v2_error(api.post("/v2/segment", json=[1, 2]), 400, "JSON-BADREQ-025")


def test_unknown_segment_is_404_naming_it(api: LyticsApi) -> None:
    missing = "0" * 32
    for method, path in (
        ("GET", f"/v2/segment/{missing}"),
        ("PUT", f"/v2/segment/{missing}"),
        ("DELETE", f"/v2/segment/{missing}"),
        ("POST", f"/v2/segment/{missing}/reevaluate"),
        ("GET", f"/v2/segment/{missing}/ancestors"),
        ("GET", f"/v2/segment/{missing}/jobs"),
    ):
        response = api.request(method, path, json={} if method == "PUT" else None)
        assert missing in check_v2_error(response, 404, "NOTFOUND-003"), (method, path)
    validate(api.get(f"/v2/segment/{missing}").json(), spec_response_schema("/segment/{id}", "get", 404))


# ---------------------------------------------------------------------------- update
def test_update(api: LyticsApi) -> None:
    created = api.create(name="Upd", slug_name="upd", segment_ql="FILTER EXISTS email FROM user ALIAS upd")
    time.sleep(0.002)
    response = api.put(
        f"/v2/segment/{created['id']}",
        json={"name": "Updated", "description": "new", "segment_ql": "FILTER visitct > 3 FROM user ALIAS upd"},
    )
    assert response.status_code == 200
    validate(response.json(), spec_response_schema("/segment/{id}", "put", 200))
    updated = response.json()["data"]
    check_segment(updated)
    assert updated["id"] == created["id"]
    assert (updated["name"], updated["description"], updated["slug_name"]) == ("Updated", "new", "upd")
    assert updated["ast"] == {"op": ">", "args": [{"ident": "visitct"}, {"val": "3"}]}
    assert updated["updated"] > created["updated"]
    assert updated["created"] == created["created"]
    # invalid definition on update
    bad = api.put(f"/v2/segment/{created['id']}", json={"segment_ql": "FILTER OR ("})
    assert "Invalid SegmentQL" in check_v2_error(bad, 400, "BADREQ-001")


def test_update_to_taken_slug_is_rejected(api: LyticsApi) -> None:
    api.create(name="A", slug_name="taken", segment_ql="FILTER *")
    other = api.create(name="B", slug_name="free", segment_ql="FILTER *")
    response = api.put(f"/v2/segment/{other['id']}", json={"slug_name": "taken"})
    assert check_v2_error(response, 400, "BADREQ-001") == "Slug is already used."
    # keeping its own slug is fine
    assert api.put(f"/v2/segment/{other['id']}", json={"slug_name": "free", "name": "B2"}).status_code == 200


def test_update_alias_renames_slug(api: LyticsApi) -> None:
    created = api.create(name="Alias", slug_name="old_slug", segment_ql="FILTER * ALIAS old_slug")
    updated = api.put(f"/v2/segment/{created['id']}", json={"segment_ql": "FILTER * ALIAS new_slug"}).json()
    assert updated["data"]["slug_name"] == "new_slug"


def test_update_without_from_on_content_segment_creates_another(api: LyticsApi) -> None:
    created = api.create(name="Docs", slug_name="docs", segment_ql="FILTER EXISTS title FROM content ALIAS docs")
    assert created["table"] == "content"
    response = api.put(f"/v2/segment/{created['id']}", json={"segment_ql": "FILTER EXISTS author ALIAS docs"})
    assert response.status_code == 200
    result = response.json()["data"]
    assert result["id"] != created["id"] and result["table"] == "user"
    assert _seg(api, created["id"])["segment_ql"] == created["segment_ql"]


def test_public_name_persists(api: LyticsApi) -> None:
    created = api.create(name="Pub", slug_name="pub", segment_ql="FILTER *", is_public=True)
    updated = api.put(f"/v2/segment/{created['id']}", json={"is_public": False}).json()["data"]
    assert updated["is_public"] is False and updated["public_name"] == "pub"


# ---------------------------------------------------------------------------- delete
def test_delete_single(api: LyticsApi) -> None:
    created = api.create(name="Del", segment_ql="FILTER *")
    response = api.delete(f"/v2/segment/{created['id']}")
    assert response.status_code == 200
    validate(response.json(), spec_response_schema("/segment/{ids}", "delete", 200))
    assert response.json()["data"]["deleted"] == [created["id"]]  # the batch handler's answer
    check_v2_error(api.get(f"/v2/segment/{created['id']}"), 404, "NOTFOUND-003")
    check_v2_error(api.delete(f"/v2/segment/{created['id']}"), 404, "NOTFOUND-003")


def test_delete_can_answer_204(api: LyticsApi, lytics_sandbox) -> None:
    lytics_sandbox.configure(delete_no_content=1)
    created = api.create(name="Del204", segment_ql="FILTER *")
    response = api.delete(f"/v2/segment/{created['id']}")
    assert response.status_code == 204 and response.content == b""
    assert response.headers["x-request-id"]
    assert lytics_sandbox.get_segment(created["id"]) is None


def test_delete_of_an_included_segment_is_not_guarded(api: LyticsApi, lytics_sandbox) -> None:
    """Lytics documents no guard: the delete goes through and the includer turns invalid."""
    base = api.create(name="Base", slug_name="base", segment_ql="FILTER EXISTS email")
    user = api.create(name="User", segment_ql="FILTER AND (INCLUDE base, visitct > 1)")
    response = api.delete(f"/v2/segment/{base['id']}")
    assert response.status_code == 200 and response.json()["data"]["deleted"] == [base["id"]]
    assert lytics_sandbox.get_segment(user["id"])["invalid"] is True

    other = api.create(name="Other", slug_name="other", segment_ql="FILTER EXISTS email")
    api.create(name="Uses other", segment_ql="FILTER INCLUDE other")
    loose = api.create(name="Loose", segment_ql="FILTER *")
    response = api.delete(f"/v2/segment/{other['id']},{loose['id']},{'f' * 32}")
    assert response.status_code == 200
    validate(response.json(), spec_response_schema("/segment/{ids}", "delete", 200))
    data = response.json()["data"]
    validate(data, schema_for("models.SegmentDeleteResp", required=["deleted", "not_deleted", "segments"]))
    assert data["deleted"] == [other["id"], loose["id"]]
    assert data["not_deleted"] == ["f" * 32]
    assert {s["id"]: s["reason"] for s in data["segments"]}["f" * 32] == "segment not found"


# ---------------------------------------------------------------------------- ancestors, invalid
def test_ancestors_recursive(api: LyticsApi) -> None:
    leaf = api.create(name="Leaf", slug_name="leaf", segment_ql="FILTER EXISTS email")
    mid = api.create(name="Mid", slug_name="mid", segment_ql=f"FILTER AND (INCLUDE `{leaf['id']}`, x > 1)")
    top = api.create(name="Top", segment_ql="FILTER OR (INCLUDE mid, NOT INCLUDE unsubscribed)")
    response = api.get(f"/v2/segment/{top['id']}/ancestors")
    assert response.status_code == 200
    ancestors = response.json()["data"]
    for segment in ancestors:
        check_segment(segment)
    assert [a["slug_name"] for a in ancestors] == ["mid", "unsubscribed", "leaf"]
    assert api.get(f"/v2/segment/{leaf['id']}/ancestors").json()["data"] == []
    assert top["includes"] == [mid["id"], _seg(api, "unsubscribed")["id"]]


def test_include_of_unknown_segment_is_invalid_and_hidden(api: LyticsApi) -> None:
    created = api.create(name="Dangling", segment_ql="FILTER INCLUDE not_there_yet")
    assert created["invalid"] is True and "not_there_yet" in created["invalid_reason"]
    visible = [s["id"] for s in api.get("/v2/segment").json()["data"]]
    assert created["id"] not in visible
    assert created["id"] in [s["id"] for s in api.get("/v2/segment", params={"valid": "all"}).json()["data"]]
    assert [s["id"] for s in api.get("/v2/segment", params={"valid": "false"}).json()["data"]] == [created["id"]]
    api.create(name="Now there", slug_name="not_there_yet", segment_ql="FILTER *")
    assert _seg(api, created["id"])["invalid"] is False


# ---------------------------------------------------------------------------- reevaluation and jobs
def _job(api: LyticsApi, segment_id: str, job_id: str) -> dict:
    jobs = api.get(f"/v2/segment/{segment_id}/jobs").json()["data"]
    return next(job for job in jobs if job["id"] == job_id)


def _reevaluate(api: LyticsApi, fake, segment_id: str) -> dict[str, Any]:
    """Reevaluate through the documented body form; ``{"job_id", "requested"}`` from the fake's own state."""
    response = api.post("/v2/segment/reevaluate", json={"id": segment_id})
    assert response.status_code == 200, response.text
    job = [j for j in fake.jobs(segment_id) if j["workflow"] == "segment_reevaluate"][-1]
    return {"job_id": job["id"], "requested": job["created"]}


def test_reevaluate_answers_minimally_and_the_seed_path_is_a_switch(api: LyticsApi, lytics_sandbox) -> None:
    seg_id = lytics_sandbox.get_segment("all_users")["id"]
    body = api.post("/v2/segment/reevaluate", json={"id": seg_id}).json()
    assert set(body) == {"status", "request_id"} and body["status"] == 200  # nothing no document shows
    check_v2_error(api.post(f"/v2/segment/{seg_id}/reevaluate"), 404, "NOTFOUND-003")
    lytics_sandbox.configure(seed_reevaluate_path=1)
    assert set(api.post(f"/v2/segment/{seg_id}/reevaluate").json()) == {"status", "request_id"}


def test_reevaluation_jobs_are_listed_only_when_switched_on(api: LyticsApi, lytics_sandbox) -> None:
    seg_id = lytics_sandbox.get_segment("all_users")["id"]
    _reevaluate(api, lytics_sandbox, seg_id)
    assert [j["workflow"] for j in api.get(f"/v2/segment/{seg_id}/jobs").json()["data"]] == ["export"]
    lytics_sandbox.configure(list_reevaluation_jobs=1)
    _reevaluate(api, lytics_sandbox, seg_id)
    listed = [j["workflow"] for j in api.get(f"/v2/segment/{seg_id}/jobs").json()["data"]]
    assert listed == ["export", "segment_reevaluate"]


def test_reevaluation_lifecycle(api: LyticsApi, lytics_sandbox) -> None:
    # The fake's clock moves only when told (600 s of work: a third initializing, then running),
    # so each phase is read however loaded the machine is.
    lytics_sandbox.configure(processing_seconds=600, list_reevaluation_jobs=1)
    created = api.create(name="Re", segment_ql="FILTER visitct > 1")
    before = _seg(api, created["id"], sizes="true")
    data = _reevaluate(api, lytics_sandbox, created["id"])
    job = _job(api, created["id"], data["job_id"])
    assert job["status"] == "initializing"
    assert job["workflow"] == "segment_reevaluate"
    assert job["config"] == {"segment_id": created["id"]}
    assert set(job) >= {"id", "name", "workflow", "status", "created", "updated", "config"}
    assert job["created"] == data["requested"]
    seen = [job["status"]]
    lytics_sandbox.advance_time(300)
    seen.append(_job(api, created["id"], data["job_id"])["status"])
    assert _seg(api, created["id"], sizes="true")["size"] == before["size"]  # the size moves only when it completes
    lytics_sandbox.advance_time(301)
    seen.append(_job(api, created["id"], data["job_id"])["status"])
    assert seen == ["initializing", "running", "completed"]
    done = _job(api, created["id"], data["job_id"])
    assert done["status"] == "completed"
    assert done["updated"] > done["created"]
    after = _seg(api, created["id"], sizes="true")
    assert after["size"] != before["size"]
    assert "last_evaluated" not in after  # models.Segment has no such field
    assert after["updated"] == done["updated"]
    # the v1 sizes endpoint agrees
    sizes = api.get("/api/segment/sizes", params={"ids": created["id"]}).json()
    assert sizes["data"][0]["size"] == after["size"]


def test_reevaluate_by_body_path_and_clock(api: LyticsApi, lytics_sandbox) -> None:
    lytics_sandbox.configure(processing_seconds=600, list_reevaluation_jobs=1)
    created = api.create(name="Body", segment_ql="FILTER *")
    size0 = lytics_sandbox.segment_size(created["id"])
    data = _reevaluate(api, lytics_sandbox, created["id"])
    assert _job(api, created["id"], data["job_id"])["status"] == "initializing"
    lytics_sandbox.advance_time(300)
    assert _job(api, created["id"], data["job_id"])["status"] == "running"
    lytics_sandbox.advance_time(301)
    assert _job(api, created["id"], data["job_id"])["status"] == "completed"
    size1 = lytics_sandbox.segment_size(created["id"])
    assert size1 != size0
    check_v2_error(api.post("/v2/segment/reevaluate", json={}), 400, "BADREQ-001")


def test_same_history_gives_same_sizes(api: LyticsApi, lytics_sandbox) -> None:
    lytics_sandbox.configure(processing_seconds=0)
    seg_id = lytics_sandbox.get_segment("all_users")["id"]
    sizes = [lytics_sandbox.segment_size(seg_id)]
    for _ in range(2):
        api.post("/v2/segment/reevaluate", json={"id": seg_id})
        sizes.append(lytics_sandbox.segment_size(seg_id))
    lytics_sandbox.reset()
    lytics_sandbox.configure(processing_seconds=0)
    again = [lytics_sandbox.segment_size(seg_id)]
    for _ in range(2):
        lytics_sandbox.reevaluate(seg_id)
        again.append(lytics_sandbox.segment_size(seg_id))
    assert sizes == again and len(set(sizes)) == 3


@pytest.mark.parametrize("via_http", [False, True])
@pytest.mark.parametrize("status", ["failed", "fault-3"])
def test_injected_reevaluation_failure(api: LyticsApi, lytics_sandbox, via_http: bool, status: str) -> None:
    lytics_sandbox.configure(processing_seconds=60, list_reevaluation_jobs=1)
    created = api.create(name="Fails", segment_ql="FILTER *")
    if via_http:
        answer = requests.post(
            lytics_sandbox.base_url + "/_sandbox/lytics/fail_reevaluation",
            json={"segment_id": created["id"], "status": status},
            timeout=5,
        )
        assert answer.status_code == 200
    else:
        lytics_sandbox.fail_next_reevaluation(created["id"], status=status)
    size0 = lytics_sandbox.segment_size(created["id"])
    job_id = _reevaluate(api, lytics_sandbox, created["id"])["job_id"]
    lytics_sandbox.advance_time(30)
    assert _job(api, created["id"], job_id)["status"] == "running"
    lytics_sandbox.advance_time(31)
    assert _job(api, created["id"], job_id)["status"] == status
    assert lytics_sandbox.segment_size(created["id"]) == size0
    # only the next one fails
    next_job = _reevaluate(api, lytics_sandbox, created["id"])["job_id"]
    lytics_sandbox.advance_time(61)
    assert _job(api, created["id"], next_job)["status"] == "completed"


def test_fail_reevaluation_rejects_bad_status(lytics_sandbox) -> None:
    with pytest.raises(ValueError):
        lytics_sandbox.fail_next_reevaluation("x", status="completed")
    answer = requests.post(
        lytics_sandbox.base_url + "/_sandbox/lytics/fail_reevaluation",
        json={"segment_id": "x", "status": "oops"},
        timeout=5,
    )
    assert answer.status_code == 400


@pytest.mark.parametrize("via_http", [False, True])
def test_stalled_reevaluation_runs_forever(api: LyticsApi, lytics_sandbox, via_http: bool) -> None:
    created = api.create(name="Stall", segment_ql="FILTER *")
    if via_http:
        url = lytics_sandbox.base_url + "/_sandbox/lytics/stall_reevaluation"
        assert requests.post(url, json={"segment_id": created["id"]}, timeout=5).status_code == 200
    else:
        lytics_sandbox.stall_next_reevaluation(created["id"])
    lytics_sandbox.configure(list_reevaluation_jobs=1)
    job_id = _reevaluate(api, lytics_sandbox, created["id"])["job_id"]
    lytics_sandbox.advance_time(10 * 86400)
    assert _job(api, created["id"], job_id)["status"] == "running"


def test_jobs_include_unrelated_export_jobs(api: LyticsApi, lytics_sandbox) -> None:
    seeded = api.get("/v2/segment/all_users/jobs").json()["data"]
    assert [(j["workflow"], j["status"]) for j in seeded] == [("export", "sleeping")]
    created = api.create(name="Exported", segment_ql="FILTER *")
    export = lytics_sandbox.add_export_job(created["id"])
    via_http = requests.post(
        lytics_sandbox.base_url + "/_sandbox/lytics/export_job", json={"segment_id": created["id"]}, timeout=5
    ).json()["job"]
    lytics_sandbox.configure(list_reevaluation_jobs=1)
    job_id = _reevaluate(api, lytics_sandbox, created["id"])["job_id"]
    jobs = api.get(f"/v2/segment/{created['id']}/jobs").json()
    assert jobs["status"] == 200
    assert [j["id"] for j in jobs["data"]] == [export["id"], via_http["id"], job_id]
    assert all(j["created"] < jobs["data"][-1]["created"] for j in jobs["data"][:2])
    for job in jobs["data"]:
        assert job["status"] in {"running", "sleeping", "paused", "pausing", "initializing", "failed",
                                 "completed", "deleted", "deleting", "unknown"}  # fmt: skip
        assert job["config"]["segment_id"] == created["id"]


def test_state_control_endpoint(lytics_sandbox) -> None:
    state = requests.get(lytics_sandbox.base_url + "/_sandbox/lytics/state", timeout=5).json()
    assert {s["slug_name"] for s in state["segments"]} == {"all_users", "unsubscribed"}
    assert len(state["jobs"]) == 1 and state["groups"] == []


def test_python_create_raises_api_error(lytics_sandbox) -> None:
    with pytest.raises(ApiError) as excinfo:
        lytics_sandbox.create_segment(name="bad", segment_ql="FILTER (")
    assert excinfo.value.status == 400
    segment = lytics_sandbox.create_segment(name="ok", segment_ql="FILTER *")
    assert lytics_sandbox.get_segment(segment["slug_name"])["id"] == segment["id"]


# ---------------------------------------------------------------------------- groups
def test_groups_crud(api: LyticsApi) -> None:
    assert api.get("/v2/segment/group").json()["data"] == []
    response = api.post("/v2/segment/group", json={"name": "Campaign Audiences", "description": "Q1"})
    assert response.status_code == 201
    group = response.json()["data"]
    assert set(group) >= {"id", "name", "description", "created", "updated"}
    assert len(group["id"]) == 32
    segment = api.create(name="Grouped", segment_ql="FILTER *", groups=[group["id"]])
    assert segment["groups"] == [group["id"]]

    assert [g["id"] for g in api.get("/v2/segment/group").json()["data"]] == [group["id"]]
    updated = api.put(f"/v2/segment/group/{group['id']}", json={"description": "Q2"}).json()["data"]
    assert (updated["name"], updated["description"]) == ("Campaign Audiences", "Q2")
    assert api.get(f"/v2/segment/group/{group['id']}").json()["data"]["description"] == "Q2"

    deleted = api.delete(f"/v2/segment/group/{group['id']}")
    assert deleted.status_code == 200 and deleted.json()["data"]["deleted"] is True
    assert api.get("/v2/segment/group").json()["data"] == []
    survivor = _seg(api, segment["id"])  # deleting a group does not delete its segments
    assert survivor["groups"] == []
    assert group["id"] in check_v2_error(api.delete(f"/v2/segment/group/{group['id']}"), 404, "NOTFOUND-003")
    check_v2_error(api.put(f"/v2/segment/group/{'a' * 32}", json={"name": "x"}), 404, "NOTFOUND-003")


def test_group_validation(api: LyticsApi) -> None:
    check_v2_error(api.post("/v2/segment/group", json={"description": "no name"}), 400, "BADREQ-001")
    group = api.post("/v2/segment/group", json={"name": "G"}).json()["data"]
    check_v2_error(api.put(f"/v2/segment/group/{group['id']}", json={"name": ""}), 400, "BADREQ-001")


# ---------------------------------------------------------------------------- v1
def test_v1_sizes(api: LyticsApi, lytics_sandbox) -> None:
    all_users = lytics_sandbox.get_segment("all_users")
    unsub = lytics_sandbox.get_segment("unsubscribed")
    for params in (
        {"ids": f"{all_users['id']},{unsub['id']}"},
        [("ids[]", all_users["id"]), ("ids[]", unsub["id"])],
        {"ids": f"[{all_users['id']},{unsub['id']}]"},
    ):
        body = api.get("/api/segment/sizes", params=params).json()
        assert body["status"] == 200 and body["message"] == "success"
        assert body["data"] == [
            {"id": s["id"], "name": s["name"], "slug_name": s["slug_name"], "size": s["size"]}
            for s in (all_users, unsub)
        ]
    missing = api.get("/api/segment/sizes")
    assert missing.status_code == 400
    assert missing.json() == {"status": 400, "message": "ids is required", "data": None}
    one = api.get(f"/api/segment/{all_users['id']}/sizes").json()["data"]
    assert one["size"] == all_users["size"]


def test_v1_validate(api: LyticsApi) -> None:
    headers = {"Content-Type": "text/plain"}
    ok = api.post("/api/segment/validate", data=US_QL, headers=headers)
    assert ok.status_code == 200
    assert ok.json() == {"status": 200, "message": "success", "data": None}
    bad = api.post("/api/segment/validate", data="FILTER AND (x = 1", headers=headers)
    assert bad.status_code == 400
    assert bad.json()["message"].startswith("Invalid SegmentQL") and bad.json()["data"] is None


def test_v1_adhoc_size_is_throttled(api: LyticsApi, lytics_sandbox) -> None:
    headers = {"Content-Type": "text/plain"}
    first = api.post("/api/segment/size", data="FILTER visitct > 3 ALIAS probe", headers=headers)
    assert first.status_code == 200
    assert first.json()["data"]["id"] == "" and first.json()["data"]["slug_name"] == "probe"
    assert isinstance(first.json()["data"]["size"], int)
    throttled = api.post("/api/segment/size", data="FILTER visitct > 3", headers=headers)
    assert throttled.status_code == 429
    assert throttled.json()["status"] == 429 and "1 request per 10 seconds" in throttled.json()["message"]
    assert 1 <= int(throttled.headers["Retry-After"]) <= 10
    lytics_sandbox.advance_time(10)
    again = api.post("/api/segment/size", data="FILTER visitct > 3 ALIAS probe", headers=headers)
    assert again.status_code == 200 and again.json()["data"]["size"] == first.json()["data"]["size"]
    lytics_sandbox.configure(size_throttle_seconds=0)
    assert api.post("/api/segment/size", data="FILTER *", headers=headers).status_code == 200
    assert api.post("/api/segment/size", data="FILTER (", headers=headers).status_code == 400


def test_web_app_page(lytics_sandbox, api: LyticsApi) -> None:
    segment = lytics_sandbox.get_segment("all_users")
    page = requests.get(f"{lytics_sandbox.base_url}/app/audiences/{segment['id']}?aid=4242", timeout=5)
    assert page.status_code == 200 and "All users" in page.text


def test_every_answer_has_a_request_id(api: LyticsApi) -> None:
    for response in (
        api.get("/v2/segment"),
        api.get("/v2/segment/nope"),
        api.post("/api/segment/validate", data="FILTER *"),
        api.get("/v2/segment/group"),
    ):
        assert response.headers["x-request-id"]
        if "request_id" in response.json():
            assert response.json()["request_id"] == response.headers["x-request-id"]
