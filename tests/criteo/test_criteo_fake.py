"""The Criteo fake over raw HTTP: quota headers, version sunset headers, the movable clock."""

from __future__ import annotations

import time

import requests
from hypothesis import given, settings
from hypothesis import strategies as st

from airflow_audience_provider.sandbox.criteo import CriteoFake


def _token(criteo) -> str:
    form = {
        "client_id": criteo.client_id,
        "client_secret": criteo.connection("")["password"],
        "grant_type": "client_credentials",
    }
    return requests.post(f"{criteo.base_url}/oauth2/token", data=form, timeout=10).json()["access_token"]


def test_quota_answers_429_with_the_ratelimit_headers(criteo):
    criteo.configure(calls_per_minute=2, rate_window_seconds=30)
    headers = {"Authorization": f"Bearer {_token(criteo)}"}
    url = f"{criteo.base_url}/2026-07/retail-media/me"
    assert [requests.get(url, headers=headers, timeout=10).status_code for _ in range(2)] == [200, 200]
    refused = requests.get(url, headers=headers, timeout=10)
    assert refused.status_code == 429
    assert refused.headers["x-ratelimit-limit"] == "2" and refused.headers["x-ratelimit-remaining"] == "0"
    assert 0 < float(refused.headers["x-ratelimit-reset"]) - time.time() <= 30
    assert "Retry-After" not in refused.headers
    assert refused.json()["errors"][0]["type"] == "quota"


def test_deprecated_version_answers_with_sunset_headers_and_unknown_versions_404(criteo):
    headers = {"Authorization": f"Bearer {_token(criteo)}"}
    old = requests.get(f"{criteo.base_url}/2026-01/retail-media/me", headers=headers, timeout=10)
    assert old.status_code == 200 and old.headers["Deprecation"] == "true" and "2027" in old.headers["Sunset"]
    current = requests.get(f"{criteo.base_url}/2026-07/retail-media/me", headers=headers, timeout=10)
    assert "Deprecation" not in current.headers
    assert requests.get(f"{criteo.base_url}/2019-01/retail-media/me", headers=headers, timeout=10).status_code == 404


def test_tokens_expire_on_the_fakes_clock(criteo):
    headers = {"Authorization": f"Bearer {_token(criteo)}"}
    url = f"{criteo.base_url}/2026-07/retail-media/me"
    assert requests.get(url, headers=headers, timeout=10).status_code == 200
    criteo.advance_time(900)
    expired = requests.get(url, headers=headers, timeout=10)
    assert expired.status_code == 401
    assert expired.json()["errors"][0]["code"] == "authorization-token-expired"


def test_statistics_follow_the_computation_windows_of_the_fakes_clock(criteo):
    from datetime import UTC, datetime

    criteo.configure(stats_after_window=1)  # the fake's default (the test fixture turns it off)
    headers = {"Authorization": f"Bearer {_token(criteo)}"}
    sid = criteo.add_segment("clocked")["id"]
    body = {"data": {"attributes": {"operation": "add", "identifierType": "Email", "identifiers": ["a" * 64]}}}
    url = f"{criteo.base_url}/2026-07/retail-media/audience-segments/{sid}/contact-list/add-remove"
    assert requests.post(url, json=body, headers=headers, timeout=10).status_code == 200
    stats_url = f"{criteo.base_url}/2026-07/retail-media/accounts/424242/audience-segments/{sid}/contact-list"

    def count() -> int:
        return requests.get(stats_url, headers=headers, timeout=10).json()["data"]["attributes"]["numberOfIdentifiers"]

    assert count() == 0  # not computed yet
    now = datetime.fromtimestamp(criteo.now(), UTC)
    to_next_window = (12 - now.hour % 12) * 3600 - now.minute * 60 - now.second + 1
    criteo.advance_time(to_next_window - 120)
    headers["Authorization"] = f"Bearer {_token(criteo)}"
    assert count() == 0  # two minutes before the window
    criteo.advance_time(120)
    assert count() == 1


_HEX = "0123456789abcdef"
_identifier = st.one_of(
    st.text(alphabet=_HEX, min_size=63, max_size=65),
    st.text(alphabet=_HEX + "ABCDEF@ .\n+é", min_size=0, max_size=66),
    st.sampled_from(["a" * 64, "A" * 64, "0" * 64 + "\n", "é" * 64, "x@y", " ", "+79161234567"]),
    st.integers(),
    st.none(),
)


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(st.lists(_identifier, max_size=8), st.lists(st.text(alphabet=_HEX, min_size=64, max_size=64))),
    st.sampled_from(["Email", "PhoneNumber", "CustomerId", "email", "madid"]),
)
def test_whole_list_validation_accepts_exactly_what_the_per_value_check_accepts(identifiers, id_type):
    expected = [v for v in identifiers if CriteoFake._valid_identifier(v, id_type)]
    assert CriteoFake._valid_identifiers(identifiers, id_type) == expected
