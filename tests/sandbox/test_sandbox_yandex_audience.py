"""The Yandex.Audience fake over raw HTTP: auth, envelopes, the 28 operations' routes, lifecycle, quotas."""

from __future__ import annotations

import time

import pytest
import requests

from airflow_audience_provider.sandbox.yandex_audience import NO_RIGHTS_TOKEN, YandexAudienceFake

P = "/v1/management"


@pytest.fixture
def fake(yandex_audience_sandbox):
    yandex_audience_sandbox.configure(processing_seconds=0.2)
    return yandex_audience_sandbox


@pytest.fixture
def http(fake):
    session = requests.Session()
    session.headers["Authorization"] = f"OAuth {fake.token}"

    def call(method, path, **kwargs):
        return session.request(method, f"{fake.base_url}{P}/{path}", timeout=10, **kwargs)

    yield call
    session.close()


def csv_file(n: int, start: int = 0) -> dict:
    body = "email,phone,ext_id\n" + "".join(f"u{i}@example.com,7999{i:07d},c{i}\n" for i in range(start, start + n))
    return {"file": ("data.csv", body.encode(), "application/octet-stream")}


def envelope(response, status, error_type):
    assert response.status_code == status, response.text
    body = response.json()
    assert body["code"] == status and body["message"]
    assert body["errors"][0]["error_type"] == error_type
    return body


@pytest.mark.parametrize(
    "header",
    [None, "", "OAuth wrong", "Bearer {token}", "{token}", "oauth {token}"],
)
def test_only_oauth_scheme_with_the_token_is_accepted(fake, header):
    headers = {} if header is None else {"Authorization": header.format(token=fake.token)}
    response = requests.get(f"{fake.base_url}{P}/segments", headers=headers, timeout=10)
    envelope(response, 401, "unauthorized")


def test_token_without_audience_rights_is_403(fake):
    response = requests.get(
        f"{fake.base_url}{P}/segments", headers={"Authorization": f"OAuth {NO_RIGHTS_TOKEN}"}, timeout=10
    )
    envelope(response, 403, "access_denied")


def test_all_routes_answer_in_the_documented_envelopes(fake, http):
    assert set(http("GET", "segments").json()) == {"segments"}
    draft = http("POST", "segments/upload_csv_file", files=csv_file(120)).json()["segment"]
    assert draft["status"] == "uploaded" and isinstance(draft["id"], int)
    confirmed = http(
        "POST",
        f"segment/{draft['id']}/confirm",
        json={"segment": {"id": draft["id"], "name": "crm", "content_type": "crm"}},
    ).json()["segment"]
    assert confirmed["status"] == "is_processed"
    sid = draft["id"]
    time.sleep(0.3)
    assert http("POST", f"segment/{sid}/modify_data", params={"modification_type": "addition", "check_size": "false"},
                files=csv_file(5, 500)).json()["segment"]["status"] == "is_updated"  # fmt: skip
    assert http("PUT", f"segment/{sid}", json={"segment": {"name": "crm 2"}}).json()["segment"]["name"] == "crm 2"
    assert http("PUT", f"segment/{sid}/grant", json={"grant": {"user_login": "agency"}}).json()["grant"]["user_login"]
    assert http("GET", f"segment/{sid}/grants").json()["grants"][0]["user_login"] == "agency"
    assert http("DELETE", f"segment/{sid}/grant", params={"user_login": "agency"}).json() == {"success": True}
    pixel = http("POST", "pixels", json={"pixel": {"name": "px"}}).json()["pixel"]
    assert set(pixel) >= {"id", "name", "create_time", "url", "user_quantity_7", "segments"}
    assert http("PUT", f"pixel/{pixel['id']}", json={"pixel": {"name": "px2"}}).json()["pixel"]["name"] == "px2"
    assert http("DELETE", f"pixel/{pixel['id']}").json() == {"success": True}
    assert http("POST", f"pixel/{pixel['id']}/undelete").json() == {"success": True}
    assert set(http("GET", "pixels").json()) == {"pixels"}
    assert set(http("GET", "accounts").json()["accounts"][0]) == {"user_login", "perm", "created_at"}
    assert http("PUT", "delegate", json={"delegate": {"user_login": "d", "perm": "view"}}).json()["delegates"]
    assert set(http("GET", "delegates").json()) == {"delegates"}
    assert http("DELETE", "delegate", params={"user_login": "d"}).json() == {"success": True}
    envelope(http("POST", f"segment/{sid}/update_geo_points", json={"points": []}), 400, "invalid_parameter")
    time.sleep(0.3)
    assert http("PUT", f"segment/{sid}/reprocess").json() == {"success": True}
    assert http("DELETE", f"segment/{sid}").json() == {"success": True}
    envelope(http("DELETE", f"segment/{sid}"), 404, "not_found")


def test_listed_file_segment_has_the_documented_fields(fake, http):
    draft = http("POST", "segments/upload_csv_file", files=csv_file(150)).json()["segment"]
    http("POST", f"segment/{draft['id']}/confirm",
         json={"segment": {"name": "crm", "content_type": "crm", "hashed": False}})  # fmt: skip
    time.sleep(0.3)
    listed = next(s for s in http("GET", "segments").json()["segments"] if s["id"] == draft["id"])
    for key in ("id", "name", "type", "status", "create_time", "owner", "has_guests", "guest_quantity",
                "can_create_dependent", "has_derivatives", "derivatives", "cookies_matched_quantity",
                "hashed", "content_type", "item_quantity", "valid_unique_quantity", "matched_quantity"):  # fmt: skip
        assert key in listed, key
    assert listed["status"] == "processed" and listed["type"] == "universal"  # CRM files: the newer type
    assert listed["create_time"].endswith("Z")
    assert listed["valid_unique_quantity"] == 300  # e-mail and phone cells, each a value
    assert fake.processed_segments()[-1] == {"id": draft["id"], "name": "crm", "status": "processed"}


def test_missing_and_wrong_parameters_name_their_location(fake, http):
    body = envelope(http("POST", "segments/create_lookalike", json={"segment": {"name": "x"}}), 400,
                    "missing_parameter")  # fmt: skip
    assert body["errors"][0]["location"] == "segment.lookalike_link"
    body = envelope(http("POST", "segment/30000001/modify_data", files=csv_file(1)), 400, "missing_parameter")
    assert body["errors"][0]["location"] == "modification_type"
    envelope(http("POST", "segments/upload_file"), 400, "missing_parameter")


def test_write_quotas_per_login_answer_429_quota(fake, http):
    fake.configure(writes_per_minute=2)
    for i in range(2):
        assert http("POST", "pixels", json={"pixel": {"name": f"p{i}"}}).ok  # pixels are not segment writes
        assert http("POST", "segments/create_metrika",
                    json={"segment": {"name": f"m{i}", "metrika_segment_type": "counter_id",
                                      "metrika_segment_id": 1}}).ok  # fmt: skip
    body = envelope(
        http("POST", "segments/create_metrika",
             json={"segment": {"name": "m3", "metrika_segment_type": "counter_id", "metrika_segment_id": 1}}),
        429, "quota",
    )  # fmt: skip
    assert "2 segment create/modify requests per minute for login sandbox-login" in body["message"]
    assert http("GET", "segments").ok  # reads are not write-limited
    fake.advance_time(61)
    assert http("PUT", "segment/30000001", json={"segment": {"name": "renamed"}}).ok


def test_daily_request_budget(fake, http):
    fake.configure(requests_per_day=2)
    assert http("GET", "accounts").ok
    assert http("GET", "pixels").ok
    body = envelope(http("GET", "delegates"), 429, "quota")
    assert "requests per day" in body["message"] and "midnight Moscow time" in body["message"]


def test_failed_processing_via_control_api(fake, http):
    draft = http("POST", "segments/upload_csv_file", files=csv_file(150)).json()["segment"]
    assert requests.post(f"{fake.base_url}/_sandbox/yandex_audience/fail_next_processing",
                         json={"segment_id": draft["id"]}, timeout=10).ok  # fmt: skip
    http("POST", f"segment/{draft['id']}/confirm", json={"segment": {"name": "f", "content_type": "crm"}})
    time.sleep(0.3)
    state = requests.get(f"{fake.base_url}/_sandbox/yandex_audience/state", timeout=10).json()
    assert next(s for s in state["segments"] if s["id"] == draft["id"])["status"] == "processing_failed"


def test_connection_points_at_the_fake(fake):
    conn = fake.connection(fake.base_url)
    assert set(conn) <= {"conn_type", "host", "port", "login", "password", "schema", "extra"}
    assert conn["conn_type"] == "yandex_audience" and conn["login"] == "sandbox-login"
    assert YandexAudienceFake.conn_id == "yandex_audience_default"


def test_processed_segments_for_a_login(fake, http):
    assert [s["id"] for s in fake.processed_segments()] == [30000001, 30000002]
    assert fake.processed_segments(for_login="agency") == []
    http("PUT", "segment/30000001/grant", json={"grant": {"user_login": "agency"}})
    assert fake.processed_segments(for_login="agency") == [
        {"id": 30000001, "name": "Site visitors (Metrica)", "status": "processed"}
    ]
    # its own segment, and the one another login shared with it
    assert [s["id"] for s in fake.processed_segments(for_login="sandbox-login")] == [30000001, 30000002]
