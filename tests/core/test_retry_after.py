"""Retry-After and vendor reset headers."""

from __future__ import annotations

import email.utils
import time

import pytest
import requests

from airflow_audience_provider.core.transport import default_retry_after, parse_retry_after

NOW = 1_700_000_000.0


@pytest.mark.parametrize(
    ("value", "expected"),
    [("120", 120.0), (" 7 ", 7.0), ("0", 0.0), ("1.5", 1.5), ("-3", 0.0)],
)
def test_delta_seconds(value, expected):
    assert parse_retry_after(value, now=NOW) == expected


def test_http_date_in_the_future():
    value = email.utils.formatdate(NOW + 90, usegmt=True)  # "Tue, 14 Nov 2023 22:14:50 GMT"
    assert parse_retry_after(value, now=NOW) == pytest.approx(90.0)


def test_http_date_in_the_past_means_now():
    assert parse_retry_after(email.utils.formatdate(NOW - 600, usegmt=True), now=NOW) == 0.0


def test_http_date_without_zone_is_gmt(monkeypatch):
    # RFC 9110 dates are always GMT; an obsolete zone-less form must not be read as local time.
    value = time.strftime("%a, %d %b %Y %H:%M:%S", time.gmtime(NOW + 30))
    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    try:
        assert parse_retry_after(value, now=NOW) == pytest.approx(30.0)
    finally:
        monkeypatch.undo()
        time.tzset()


@pytest.mark.parametrize("value", [None, "", "soon", "Tomorrow at noon", "12 parsecs", "nan", "inf", "-inf"])
def test_garbage_is_none(value):
    assert parse_retry_after(value, now=NOW) is None


def _response(**headers: str) -> requests.Response:
    response = requests.Response()
    response.status_code = 429
    response.headers.update(headers)
    return response


def test_default_retry_after_prefers_retry_after():
    assert default_retry_after(_response(**{"Retry-After": "4", "X-RateLimit-Reset": "99"})) == 4.0


def test_default_retry_after_reset_header_as_delta_and_epoch():
    assert default_retry_after(_response(**{"RateLimit-Reset": "12"})) == 12.0
    epoch = time.time() + 50
    assert default_retry_after(_response(**{"X-RateLimit-Reset": f"{epoch:.0f}"})) == pytest.approx(50, abs=2)


def test_default_retry_after_none_without_headers():
    assert default_retry_after(_response()) is None
    assert default_retry_after(_response(**{"X-RateLimit-Reset": "whenever"})) is None
