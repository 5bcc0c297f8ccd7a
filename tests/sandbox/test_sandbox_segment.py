"""The Segment fake over raw HTTP: auth, envelopes, media types, pagination, lifecycle, limits."""

from __future__ import annotations

import email.utils
import json
from pathlib import Path

import jsonschema
import pytest
import requests

V1 = "application/vnd.segment.v1+json"
QUERY = "event('Order Completed').count() >= 1"


@pytest.fixture(scope="module")
def answers_check():
    """Segment's Public API 73.2.0, for the answers only (some tests send what it forbids on purpose)."""
    from openapi_check import SegmentSpecCheck

    check = SegmentSpecCheck()
    check.check_requests = False
    return check


@pytest.fixture
def api(segment_sandbox, answers_check):
    """Raw calls of the audience paths; every answer is validated against the document at teardown."""
    check = answers_check
    check.start("")
    session = requests.Session()
    session.headers.update({"Authorization": f"Bearer {segment_sandbox.token}", "Accept": V1, "Content-Type": V1})
    check.attach(session)
    base = f"{segment_sandbox.base_url}/spaces/{segment_sandbox.space_id}/audiences"

    def call(method: str, path: str = "", **kwargs) -> requests.Response:
        return session.request(method, base + path, timeout=5, **kwargs)

    yield call
    session.close()
    check.assert_valid()


#: The 2022 spec's envelope and pagination schemas (it predates audiences; the audience shapes come from the SDK).
SPEC = json.loads((Path(__file__).parent / "specs" / "segment-public-api-2022.envelope-excerpt.json").read_text())

#: AudienceSummary as Segment's Python SDK 73.2.0 models it; GET/LIST add computeCadence and size.
AUDIENCE_SUMMARY = {
    "type": "object",
    "required": ["id", "spaceId", "name", "key", "enabled", "definition", "audienceType",
                 "createdBy", "updatedBy", "createdAt", "updatedAt"],
    "properties": {
        "id": {"type": "string"}, "spaceId": {"type": "string"}, "name": {"type": "string"},
        "description": {"type": "string"}, "key": {"type": "string"}, "enabled": {"type": "boolean"},
        "definition": {"type": ["object", "null"], "required": ["query"],
                       "properties": {"query": {"type": "string"}, "targetEntity": {"type": ["string", "null"]}}},
        "status": {"type": "string"},
        "audienceType": {"enum": ["USERS", "ACCOUNTS", "LINKED"]},
        "options": {"type": "object", "properties": {
            "filterByExternalIds": {"type": "array", "items": {"type": "string"}},
            "includeHistoricalData": {"type": "boolean"}, "backfillEventDataDays": {"type": "number"}}},
        "createdBy": {"type": "string"}, "updatedBy": {"type": "string"},
        "createdAt": {"type": "string"}, "updatedAt": {"type": "string"},
    },
}  # fmt: skip
AUDIENCE_FULL = {
    **AUDIENCE_SUMMARY,
    "required": [*AUDIENCE_SUMMARY["required"], "computeCadence"],
    "properties": {
        **AUDIENCE_SUMMARY["properties"],
        "computeCadence": {"type": "object", "required": ["type"],
                           "properties": {"type": {"enum": ["BATCH", "REALTIME"]}}},
        "size": {"type": "object", "required": ["type"], "properties": {
            "count": {"type": "number"}, "uniqueCount": {"type": "number"},
            "type": {"enum": ["USERS", "ACCOUNTS", "ENTITIES"]}}},
    },
}  # fmt: skip


def spec_validate(instance, name: str) -> None:
    schema = {"$ref": f"#/components/schemas/{name}", "components": SPEC["components"]}
    jsonschema.Draft7Validator(schema).validate(instance)


def check_error(response: requests.Response, status: int, error_type: str) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    spec_validate(body, "RequestErrorEnvelope")
    assert set(body) == {"errors"}  # never both data and errors
    first = body["errors"][0]
    assert first["type"] == error_type and first["message"]
    assert response.headers["x-request-id"]
    return first


@pytest.mark.parametrize("header", [None, "wrong", "{token}", "Bearer wrong"])
def test_bearer_token_is_required(segment_sandbox, header):
    headers = {} if header is None else {"Authorization": header.format(token=segment_sandbox.token)}
    for path in ("/spaces", f"/spaces/{segment_sandbox.space_id}/audiences", "/nope"):
        check_error(requests.get(segment_sandbox.base_url + path, headers=headers, timeout=5), 401, "Unauthorized")


def test_create_answers_200_with_the_summary(api, segment_sandbox):
    response = api("POST", json={"name": "N", "audienceType": "USERS", "definition": {"query": QUERY}})
    assert response.status_code == 200
    audience = response.json()["data"]["audience"]
    assert audience["status"] == "Preparing" and audience["key"] == "n"
    assert "size" not in audience and "computeCadence" not in audience  # AudienceSummary
    jsonschema.Draft7Validator(AUDIENCE_SUMMARY).validate(audience)
    full = api("GET", f"/{audience['id']}").json()["data"]["audience"]
    jsonschema.Draft7Validator(AUDIENCE_FULL).validate(full)
    assert "size" in full


def test_validation_errors_name_each_field(api):
    response = api("POST", json={"name": "", "audienceType": "PEOPLE", "definition": {"query": "x"}})
    errors = response.json()["errors"]
    assert response.status_code == 422
    assert {e["field"] for e in errors} == {"name", "audienceType", "definition.query"}


@pytest.mark.parametrize(
    ("query", "problem"),
    [
        ("trait('it\\'s') = 'yes'", None),  # an escaped quote stays inside the string
        ("trait('a\\.b') = 'yes'", None),  # the escape Segment documents: a literal "." in a name
        ("trait('a\\') = 'yes'", "definition.query has an unterminated string literal"),  # the string runs on
        ("trait('x') = 'y\\'", "definition.query has an unterminated string literal"),
    ],
)
def test_definition_check_honours_backslash_escapes(api, query, problem):
    response = api("POST", json={"name": "Escapes", "audienceType": "USERS", "definition": {"query": query}})
    if problem is None:
        assert response.status_code == 200, response.text
        return
    errors = check_error(response, 422, "ValidationFailure")
    assert errors["message"] == problem and errors["field"] == "definition.query"


def test_not_found_names_space_and_audience(api, segment_sandbox):
    assert "aud_x" in check_error(api("GET", "/aud_x"), 404, "NotFound")["message"]
    other = requests.get(
        f"{segment_sandbox.base_url}/spaces/spa_other/audiences",
        headers={"Authorization": f"Bearer {segment_sandbox.token}"},
        timeout=5,
    )
    assert "spa_other" in check_error(other, 404, "NotFound")["message"]


def test_unknown_media_type_is_refused(api):
    check_error(api("GET", headers={"Accept": "application/vnd.segment.v9+json"}), 415, "UnsupportedMediaType")
    assert api("GET", headers={"Accept": "application/json"}).status_code == 200
    references = api("GET", "/aud_sandboxSeedAudience000000001/audience-references")  # v1: alpha only
    check_error(references, 415, "UnsupportedMediaType")


def test_pagination_cursor(api, segment_sandbox):
    for i in range(3):
        segment_sandbox.create_audience(name=f"P{i}", audienceType="USERS", definition={"query": QUERY})
    first = api("GET", params={"pagination.count": 3}).json()["data"]
    assert len(first["audiences"]) == 3 and first["pagination"]["totalEntries"] == 4
    spec_validate(first["pagination"], "PaginationOutput")
    for audience in first["audiences"]:
        jsonschema.Draft7Validator(AUDIENCE_FULL).validate(audience)
    second = api("GET", params={"pagination.count": 3, "pagination.cursor": first["pagination"]["next"]}).json()
    assert len(second["data"]["audiences"]) == 1 and second["data"]["pagination"]["next"] is None
    check_error(api("GET", params={"pagination.count": 201}), 422, "ValidationFailure")


def test_lifecycle_lock_and_refused_edit(api, segment_sandbox):
    segment_sandbox.configure(processing_seconds=30)
    audience_id = api("POST", json={"name": "L", "audienceType": "USERS", "definition": {"query": QUERY}}).json()[
        "data"
    ]["audience"]["id"]
    status = lambda: api("GET", f"/{audience_id}").json()["data"]["audience"]["status"]  # noqa: E731
    assert status() == "Preparing"
    segment_sandbox.advance_time(11)
    assert status() == "Computing"
    segment_sandbox.advance_time(20)
    assert status() == "Live"
    assert api("PATCH", f"/{audience_id}", json={"enabled": False}).status_code == 200
    assert status() == "Locked"
    check_error(api("PATCH", f"/{audience_id}", json={"enabled": True}), 409, "Conflict")
    assert segment_sandbox.refused_edits == 1
    segment_sandbox.advance_time(11)
    assert status() == "Disabled"
    assert api("DELETE", f"/{audience_id}").json() == {"data": {"status": "SUCCESS"}}


def test_per_operation_limit_headers(api, segment_sandbox):
    segment_sandbox.configure(limit_create_audience_preview=1)
    body = {"definition": {"query": QUERY}, "audienceType": "USERS"}
    ok = api("POST", "/previews", json=body)
    assert ok.status_code == 200 and ok.headers["x-ratelimit-remaining"] == "0"
    refused = api("POST", "/previews", json=body)
    error = check_error(refused, 429, "RequestError")
    assert 1 <= int(refused.headers["retry-after"]) <= 60
    assert error["data"]["msBeforeNext"] > 0
    assert email.utils.parsedate_to_datetime(refused.headers["x-ratelimit-reset"]) is not None
    segment_sandbox.advance_time(61)
    assert api("POST", "/previews", json=body).status_code == 200


def test_monthly_preview_quota(api, segment_sandbox):
    segment_sandbox.configure(preview_monthly_quota=1, limit_create_audience_preview=100)
    body = {"definition": {"query": QUERY}, "audienceType": "USERS"}
    assert api("POST", "/previews", json=body).status_code == 200
    assert "Monthly" in check_error(api("POST", "/previews", json=body), 429, "RequestError")["message"]


def test_control_api(segment_sandbox):
    base = f"{segment_sandbox.base_url}/_sandbox/segment"
    seed = "aud_sandboxSeedAudience000000001"
    assert requests.post(f"{base}/set_status", json={"audience_id": seed, "status": "Odd"}, timeout=5).ok
    state = requests.get(f"{base}/state", timeout=5).json()
    assert state["audiences"][0]["status"] == "Odd"
    assert requests.post(f"{base}/set_status", json={}, timeout=5).status_code == 400
