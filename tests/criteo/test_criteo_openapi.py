"""The OpenAPI check itself: it must catch requests and answers that break Criteo's documents,
and the fake's answers to every documented audience operation must pass it."""

from __future__ import annotations

import requests
from criteo_openapi import SpecCheck


def _session(check: SpecCheck, token: str) -> requests.Session:
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {token}"
    check.attach(session)
    return session


def _token(criteo) -> str:
    form = {"client_id": criteo.client_id, "client_secret": criteo.connection("")["password"],
            "grant_type": "client_credentials"}  # fmt: skip
    answer = requests.post(f"{criteo.base_url}/oauth2/token", data=form, timeout=10)
    assert answer.status_code == 200
    body = answer.json()
    assert body["token_type"] == "Bearer" and body["expires_in"] == 900 and body["refresh_token"] is None
    return body["access_token"]


def test_the_check_catches_a_request_that_breaks_the_document(criteo, _spec_check):
    _spec_check.start(criteo.base_url)
    session = _session(_spec_check, _token(criteo))
    sid = criteo.segments[0]["id"]
    session.post(
        f"{criteo.base_url}/2026-07/retail-media/audience-segments/{sid}/contact-list/add-remove",
        json={"data": {"attributes": {"operation": "append", "identifiers": ["x"]}}},  # not add|remove
        timeout=10,
    )
    problems = _spec_check.problems()
    assert len(problems) == 1 and problems[0].startswith("request POST")


def test_the_check_catches_an_answer_that_breaks_the_document(criteo, _spec_check, monkeypatch):
    _spec_check.start(criteo.base_url)
    session = _session(_spec_check, _token(criteo))
    response = session.get(f"{criteo.base_url}/2026-07/retail-media/me", timeout=10)
    assert response.status_code == 200
    response._content = b'{"data": {"attributes": {"applicationId": "not-an-int"}}}'
    assert any(p.startswith("response 200") for p in _spec_check.problems())


def test_token_errors_use_the_oauth_envelope(criteo):
    answer = requests.post(
        f"{criteo.base_url}/oauth2/token",
        data={"client_id": criteo.client_id, "client_secret": "nope", "grant_type": "client_credentials"},
        timeout=10,
    )
    assert answer.status_code == 401 and answer.json()["error"] == "invalid_client"
    unauthenticated = requests.get(f"{criteo.base_url}/2026-07/retail-media/me", timeout=10)
    assert unauthenticated.status_code == 401
    assert unauthenticated.json()["errors"][0]["code"] == "authorization-token-invalid"


def test_stable_retail_media_has_no_audience_writes(criteo, _spec_check):
    _spec_check.start(criteo.base_url)
    session = _session(_spec_check, _token(criteo))
    answer = session.post(
        f"{criteo.base_url}/2026-07/retail-media/accounts/424242/audiences/create",
        json={"data": [{"attributes": {"name": "x", "retailerId": "311", "algebra": {"audienceSegmentId": "1"}}}]},
        timeout=10,
    )
    assert answer.status_code == 404
