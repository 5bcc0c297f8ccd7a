"""``GET /_sandbox/rates``: requests per sliding window per account, counted at the fake."""

from __future__ import annotations

import hashlib

import pytest
import requests

from airflow_audience_provider.sandbox.base import FakeRateLimiter, Quota, RequestRates


def _get(fake, token: str | None = None) -> requests.Response:
    headers = {"Authorization": token} if token else {}
    return requests.get(fake.base_url + "/v2/segment", headers=headers, timeout=5)


def test_peak_is_the_busiest_half_open_window() -> None:
    arrivals = [0.0, 0.25, 0.5, 1.0, 1.125, 1.25, 1.375, 3.0]  # exact binary fractions
    assert RequestRates.peak(arrivals, 1.0) == 5  # (0.375, 1.375] holds 0.5 .. 1.375
    assert RequestRates.peak(arrivals, 0.25) == 2
    assert RequestRates.peak(arrivals, 10.0) == 8
    assert RequestRates.peak([], 1.0) == 0
    # a stamp exactly one window older is outside the window, as in the client-side limiter
    assert RequestRates.peak([0.0, 1.0], 1.0) == 1


def test_quota_window_slides_and_a_full_window_records_nothing() -> None:
    limiter = FakeRateLimiter()
    minute, day = Quota("minute", 2, 60.0, "per minute"), Quota("day", 3, 86400.0)
    assert limiter.hit(0.0, minute, day) is None
    assert limiter.hit(10.0, minute, day) is None
    full = limiter.hit(20.0, minute, day)
    assert full is not None and full.quota is minute and full.count == 2 and full.resets_at == 60.0
    assert limiter.use(day, 20.0).count == 2  # the refused hit is in no window
    assert limiter.hit(60.0, minute, day) is None  # the hit at 0.0 has left the minute
    full = limiter.hit(70.5, minute, day)
    assert full is not None and full.quota is day and full.count == 3
    assert limiter.use(minute, 70.5).count == 1
    unlimited = Quota("counted", None, 1.0)
    assert all(limiter.hit(100.0, unlimited) is None for _ in range(5))
    assert limiter.use(unlimited, 100.5).count == 5
    assert limiter.use(Quota("empty", 1, 30.0), 5.0).resets_at == 35.0
    assert limiter.allow("second", 1, 0.0) and not limiter.allow("second", 1, 0.5) and limiter.allow("second", 1, 1.0)


def test_rates_are_counted_per_account_without_secrets(lytics_sandbox) -> None:
    for _ in range(3):
        assert _get(lytics_sandbox, lytics_sandbox.token).status_code == 200
    assert _get(lytics_sandbox, "some-other-token").status_code == 401  # refused calls count too
    _get(lytics_sandbox)
    answer = requests.get(lytics_sandbox.base_url + "/_sandbox/rates", params={"window": 60}, timeout=5)
    assert answer.status_code == 200
    report = answer.json()
    assert report["vendor"] == "lytics" and report["window_seconds"] == 60
    assert report["total"] == {"requests": 5, "peak": 5}
    mine = "credentials-" + hashlib.sha256(lytics_sandbox.token.encode()).hexdigest()[:12]
    assert report["accounts"][mine] == {"requests": 3, "peak": 3}
    assert report["accounts"]["anonymous"] == {"requests": 1, "peak": 1}
    assert len(report["accounts"]) == 3
    assert lytics_sandbox.token not in answer.text and "some-other-token" not in answer.text
    # the control API itself is not counted
    assert lytics_sandbox.request_rates(60)["total"]["requests"] == 5


def test_rates_clear_and_reset(lytics_sandbox) -> None:
    _get(lytics_sandbox, lytics_sandbox.token)
    base = lytics_sandbox.base_url + "/_sandbox/rates"
    assert requests.delete(base, timeout=5).json()["cleared"] is True
    assert requests.get(base, timeout=5).json()["total"] == {"requests": 0, "peak": 0}
    _get(lytics_sandbox, lytics_sandbox.token)
    lytics_sandbox.reset()
    assert lytics_sandbox.request_rates()["total"]["requests"] == 0


@pytest.mark.parametrize("window", ["0", "-1", "soon", "nan", "inf"])
def test_rates_window_must_be_positive(lytics_sandbox, window: str) -> None:
    answer = requests.get(lytics_sandbox.base_url + "/_sandbox/rates", params={"window": window}, timeout=5)
    assert answer.status_code == 400 and "window" in answer.json()["error"]


def test_criteo_counts_per_app(criteo_sandbox) -> None:
    token = requests.post(
        criteo_sandbox.base_url + "/oauth2/token",
        data={"grant_type": "client_credentials", "client_id": criteo_sandbox.client_id, "client_secret": "secret"},
        timeout=5,
    )
    assert token.status_code == 401  # wrong secret: counted, as an anonymous call
    conn = criteo_sandbox.connection(criteo_sandbox.base_url)
    minted = [
        requests.post(
            criteo_sandbox.base_url + "/oauth2/token",
            data={"grant_type": "client_credentials", "client_id": conn["login"], "client_secret": conn["password"]},
            timeout=5,
        ).json()["access_token"]
        for _ in range(2)
    ]
    for access in minted:  # two tokens of one app: one account
        requests.get(
            criteo_sandbox.base_url + "/2026-07/retail-media/me",
            headers={"Authorization": f"Bearer {access}"},
            timeout=5,
        )
    accounts = criteo_sandbox.request_rates(60)["accounts"]
    assert accounts[f"app-{criteo_sandbox.client_id}"] == {"requests": 2, "peak": 2}
    assert accounts["anonymous"]["requests"] == 3
