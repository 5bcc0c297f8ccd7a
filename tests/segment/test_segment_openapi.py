"""The Segment contract check itself, and the fake's answers to every audience and space operation.

Every test in this folder validates its hooks' exchanges against Segment's Public API 73.2.0
(``segment_spec``, see conftest); these tests make sure the check catches what it must, and walk
every documented operation of the fake over raw HTTP in each media type it offers.
"""

from __future__ import annotations

import pytest
import requests

from airflow_audience_provider.hooks.segment import SegmentHook

QUERY = "event('Order Completed').within(30 days).count() >= 1"
SEED = "aud_sandboxSeedAudience000000001"
V1, BETA, ALPHA, JSON = (
    "application/vnd.segment.v1+json",
    "application/vnd.segment.v1beta+json",
    "application/vnd.segment.v1alpha+json",
    "application/json",
)


@pytest.fixture
def raw(segment, segment_spec):
    """``raw(method, path, media, **kwargs)``: one recorded call of the fake with that Accept (and
    Content-Type when a body goes along)."""
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {segment.token}"
    segment_spec.attach(session)

    def call(method: str, path: str, media: str = V1, **kwargs) -> requests.Response:
        headers = {"Accept": media, **({"Content-Type": media} if "json" in kwargs else {})}
        headers.update(kwargs.pop("headers", {}))
        return session.request(method, segment.base_url + path, headers=headers, timeout=10, **kwargs)

    yield call
    session.close()


def _audiences(segment) -> str:
    return f"/spaces/{segment.space_id}/audiences"


def test_the_check_catches_an_accept_the_operation_does_not_offer(raw, segment, segment_spec):
    raw("GET", f"/spaces/{segment.space_id}", V1)
    problems = segment_spec.problems()
    assert any("getSpace: Accept" in p for p in problems), problems
    segment_spec.enabled = False


def test_the_check_catches_a_body_on_an_operation_without_one(raw, segment, segment_spec):
    linked = segment.create_audience(
        name="L", audienceType="LINKED", definition={"query": "entity('orders').count() >= 1"}
    )
    raw("POST", f"{_audiences(segment)}/{linked['id']}/runs", V1, json={})
    assert any("forceExecuteAudienceRun takes no body" in p for p in segment_spec.problems())
    segment_spec.enabled = False


def test_the_check_catches_an_answer_that_breaks_the_document(raw, segment, segment_spec):
    answer = raw("GET", f"{_audiences(segment)}/{SEED}")
    assert answer.status_code == 200
    answer._content = answer.content.replace(b'"filterByExternalIds"', b'"filterByExternalIdz"')
    assert any(p.startswith("response 200") and "filterByExternalIds" in p for p in segment_spec.problems())
    segment_spec.enabled = False


def test_the_check_reads_dotted_query_parameters(raw, segment, segment_spec):
    raw("GET", _audiences(segment), params={"pagination.count": "many"})
    assert any(p.startswith("request GET") and "pagination" in p for p in segment_spec.problems())
    segment_spec.enabled = False


@pytest.mark.parametrize("media", [V1, BETA, ALPHA, JSON])
def test_every_audience_operation_answers_by_the_document(raw, segment, media):
    base = _audiences(segment)
    kind = "USERS" if media == ALPHA else "LINKED"
    query = QUERY if kind == "USERS" else "entity('orders').count() >= 1"
    body = {"name": f"A {media}", "audienceType": kind, "definition": {"query": query}}
    created = raw("POST", base, media, json=body)
    assert created.status_code == 200, created.text
    audience_id = created.json()["data"]["audience"]["id"]
    assert raw("GET", base, media, params={"pagination.count": 1, "include": "schedules"}).status_code == 200
    assert raw("GET", base, media, params={"search.type": "NAME", "search.query": "A"}).status_code == 200
    got = raw("GET", f"{base}/{audience_id}", media, params={"include": "schedules"}).json()["data"]["audience"]
    assert got["options"]["filterByExternalIds"] == ["user_id", "email", "android.idfa", "ios.idfa"]
    assert got["size"]["type"] == ("USERS" if kind == "USERS" else "ENTITIES")
    preview = raw("POST", f"{base}/previews", media, json={"definition": {"query": query}, "audienceType": kind})
    assert raw("GET", f"{base}/previews/{preview.json()['data']['audiencePreview']['id']}", media).status_code == 200
    segment.advance_time(60)
    assert raw("GET", f"{base}/previews/{preview.json()['data']['audiencePreview']['id']}", media).status_code == 200
    if media != BETA and kind == "LINKED":
        assert raw("POST", f"{base}/{audience_id}/runs", media).status_code == 200
        schedule = {"strategy": "PERIODIC", "config": {"interval": "1h"}}
        added = raw("POST", f"{base}/{audience_id}/schedules", media, json=schedule).json()["data"]["audienceSchedule"]
        assert raw("GET", f"{base}/{audience_id}/schedules", media).status_code == 200
        assert raw("GET", f"{base}/{audience_id}/schedules/{added['id']}", media).status_code == 200
        changed = {"strategy": "PERIODIC", "config": {"interval": "2h"}}
        assert raw("PATCH", f"{base}/{audience_id}/schedules/{added['id']}", media, json=changed).status_code == 200
        assert raw("DELETE", f"{base}/{audience_id}/schedules/{added['id']}", media).status_code == 200
    if media in (ALPHA, JSON):
        assert raw("GET", f"{base}/{audience_id}/audience-references", media).status_code == 200
        assert raw("GET", "/spaces", media).status_code == 200
        assert raw("GET", f"/spaces/{segment.space_id}", media).status_code == 200
    assert raw("PATCH", f"{base}/{audience_id}", media, json={"description": "d"}).status_code == 200
    assert raw("DELETE", f"{base}/{audience_id}", media).status_code == 200
    # Declared error answers are checked too.
    assert raw("GET", f"{base}/aud_missing", media).status_code == 404
    invalid = {"name": "N", "audienceType": "USERS", "definition": {"query": "x"}}
    assert raw("POST", base, media, json=invalid).status_code == 422


def test_spaces_answer_only_in_the_alpha_media_types(raw, segment, segment_spec):
    for media in (V1, BETA):
        assert raw("GET", "/spaces", media).status_code == 415
        assert raw("GET", f"/spaces/{segment.space_id}", media).status_code == 415
    listed = raw("GET", "/spaces", ALPHA).json()["data"]
    assert listed["pagination"]["current"] and listed["spaces"][0]["id"] == segment.space_id
    segment_spec.exchanges = [e for e in segment_spec.exchanges if e.status_code != 415]


def test_runs_refuse_a_body(raw, segment, segment_spec):
    linked = segment.create_audience(name="L", audienceType="LINKED", definition={"query": "entity('o').count() >= 1"})
    assert raw("POST", f"{_audiences(segment)}/{linked['id']}/runs", V1, json={}).status_code == 400
    segment_spec.enabled = False


def test_the_hook_pins_each_operations_media_type(segment, set_segment_conn):
    """listSpaces/getSpace in v1alpha whatever the connection says; runs without body or Content-Type."""
    for version in ("v1", "v1beta"):
        hook = SegmentHook(set_segment_conn(f"seg_{version}", extra={"api_version": version}))
        ok, message = hook.test_connection()
        assert ok, message
        assert segment.accepts[-1] == ALPHA
        assert SegmentHook(set_segment_conn("seg_nospace", extra={"space_id": None})).list_spaces()
        assert segment.accepts[-1] == ALPHA
    hook = SegmentHook(set_segment_conn("seg_runs", extra={"api_version": "v1beta"}))
    linked = hook.create_audience("Linked", "entity('orders').count() >= 1", audience_type="LINKED")
    assert hook.force_execute_audience_run(linked["id"])["id"]
    assert segment.accepts[-1] == V1
    assert segment.requests[-1]["content_type"] is None
