"""The shared Transport against the real Lytics fake over HTTP: retries, faults, typed errors.

Every transport here sleeps on a fake clock (``clock.sleeps`` records each wait), so retry
waits are asserted exactly without a test ever really waiting for them.
"""

from __future__ import annotations

import importlib.metadata
import logging

import pytest

from airflow_audience_provider.core.auth import OAuth2ClientCredentials
from airflow_audience_provider.core.errors import (
    AudienceAuthenticationError,
    AudienceNotFoundError,
    AudienceRateLimitError,
    AudienceServerError,
    AudienceTransportError,
    AudienceValidationError,
)
from airflow_audience_provider.core.ratelimit import RateLimit, RateLimiter, Window
from airflow_audience_provider.core.transport import Timeouts, VendorProfile
from airflow_audience_provider.hooks.lytics import LyticsHook

LIST = "/v2/segment"
#: small initial backoff so the jitter added to a Retry-After is below 0.01 s
FAST = {"backoff_initial": 0.01}


def api_requests(fake, path=LIST, method=None):
    return [r for r in fake.requests if r["path"] == path and (method is None or r["method"] == method)]


def new_segment(slug: str) -> dict:
    return {"name": slug, "slug_name": slug, "segment_ql": f"FILTER * FROM user ALIAS {slug}"}


def test_plain_get_answers_data(lytics_sandbox, make_transport, clock):
    body = make_transport().json("GET", LIST, params={"valid": "all"})
    assert {s["slug_name"] for s in body["data"]} == {"all_users", "unsubscribed"}
    assert len(api_requests(lytics_sandbox)) == 1
    assert clock.sleeps == []


def test_user_agent_names_package_and_version(lytics_sandbox, make_transport):
    transport = make_transport()
    transport.request("GET", LIST)
    version = importlib.metadata.version("airflow-audience-provider")
    agent = lytics_sandbox.requests[-1]["user_agent"]
    assert agent.startswith(f"airflow-audience-provider/{version} ")
    assert transport.session.headers["User-Agent"] == agent


def test_503_burst_on_get_is_retried_with_growing_backoff(lytics_sandbox, make_transport, clock):
    lytics_sandbox.faults.inject("status", count=3, path_prefix=LIST, method="GET", status=503)
    transport = make_transport(retry={"backoff_initial": 1.0, "backoff_max": 60.0})
    response = transport.request("GET", LIST)
    assert response.status_code == 200
    log = api_requests(lytics_sandbox)
    assert [r["status"] for r in log] == [503, 503, 503, 200]
    assert transport.requests_sent == 4
    # "equal jitter": the n-th wait lies in [c/2, c] with c = 1, 2, 4 s
    assert len(clock.sleeps) == 3
    for wait, ceiling in zip(clock.sleeps, (1.0, 2.0, 4.0), strict=True):
        assert ceiling / 2 <= wait <= ceiling


def test_429_retry_after_is_honoured(lytics_sandbox, make_transport, clock):
    lytics_sandbox.faults.inject("status", count=1, path_prefix=LIST, status=429, retry_after=7)
    response = make_transport(retry=FAST).request("GET", LIST)
    assert response.status_code == 200
    assert [r["status"] for r in api_requests(lytics_sandbox)] == [429, 200]
    assert len(clock.sleeps) == 1
    assert 7.0 <= clock.sleeps[0] <= 7.01


def test_retry_after_beyond_max_retry_after_fails_at_once(lytics_sandbox, make_transport, clock):
    lytics_sandbox.faults.inject("status", count=5, path_prefix=LIST, status=429, retry_after=3600)
    with pytest.raises(AudienceRateLimitError) as caught:
        make_transport(retry={"max_retry_after": 120}).request("GET", LIST)
    assert caught.value.retry_after == 3600
    assert caught.value.status == 429
    assert "3600 s" in caught.value.message and "120 s" in caught.value.message
    assert len(api_requests(lytics_sandbox)) == 1
    assert clock.sleeps == []


def test_429_is_retried_even_for_a_post(lytics_sandbox, make_transport, clock):
    # A refused request was not applied, so resending a create is safe.
    lytics_sandbox.faults.inject("status", count=1, path_prefix=LIST, method="POST", status=429, retry_after=1)
    created = make_transport(retry=FAST).json("POST", LIST, json=new_segment("after_429"))
    assert created["data"]["slug_name"] == "after_429"
    assert [r["status"] for r in api_requests(lytics_sandbox, method="POST")] == [429, 201]
    assert len(clock.sleeps) == 1


def test_429_retries_exhausted_raise_rate_limit_error_with_retry_after(lytics_sandbox, make_transport):
    lytics_sandbox.faults.inject("status", count=10, path_prefix=LIST, status=429, retry_after=2)
    with pytest.raises(AudienceRateLimitError) as caught:
        make_transport(retry={**FAST, "max_attempts": 3}).request("GET", LIST)
    assert caught.value.retry_after == 2.0
    assert len(api_requests(lytics_sandbox)) == 3


def test_dropped_connection_on_get_is_retried(lytics_sandbox, make_transport, clock):
    lytics_sandbox.faults.inject("drop", count=2, path_prefix=LIST, method="GET")
    response = make_transport(retry=FAST).request("GET", LIST)
    assert response.status_code == 200
    assert [r["fault"] for r in api_requests(lytics_sandbox)] == ["drop", "drop", None]
    assert len(clock.sleeps) == 2


def test_post_is_not_blindly_retried_on_503(lytics_sandbox, make_transport, clock):
    lytics_sandbox.faults.inject("status", count=5, path_prefix=LIST, method="POST", status=503)
    with pytest.raises(AudienceServerError) as caught:
        make_transport(retry=FAST).request("POST", LIST, json=new_segment("x503"))
    assert caught.value.status == 503
    assert len(api_requests(lytics_sandbox, method="POST")) == 1
    assert clock.sleeps == []


def test_post_is_not_blindly_retried_on_dropped_connection(lytics_sandbox, make_transport, clock):
    lytics_sandbox.faults.inject("drop", count=5, path_prefix=LIST, method="POST")
    with pytest.raises(AudienceTransportError, match="read back before resending"):
        make_transport(retry=FAST).request("POST", LIST, json=new_segment("xdrop"))
    assert len(api_requests(lytics_sandbox, method="POST")) == 1
    assert clock.sleeps == []


def test_post_marked_idempotent_is_retried(lytics_sandbox, make_transport):
    lytics_sandbox.faults.inject("status", count=1, path_prefix="/api/segment/validate", status=503)
    response = make_transport(retry=FAST).request(
        "POST", "/api/segment/validate", data=b"FILTER * FROM user", idempotent=True
    )
    assert response.status_code == 200
    assert len(api_requests(lytics_sandbox, "/api/segment/validate")) == 2


def test_post_to_a_closed_port_is_retried(lytics_sandbox, make_transport, clock):
    # Connection refused: the request never reached the vendor, so even a POST may be resent.
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    transport = make_transport(retry={**FAST, "max_attempts": 3})
    transport.base_url = f"http://127.0.0.1:{port}"
    with pytest.raises(AudienceTransportError) as caught:
        transport.request("POST", LIST, json=new_segment("never"))
    assert "read back" not in caught.value.message
    assert transport.requests_sent == 3
    assert len(clock.sleeps) == 2


def test_slow_answer_trips_read_timeout_then_is_retried(lytics_sandbox, make_transport):
    lytics_sandbox.faults.inject("slow", count=1, path_prefix=LIST, method="GET", delay=1.0)
    transport = make_transport(retry=FAST, timeouts=Timeouts(connect=2.0, read=0.2))
    response = transport.request("GET", LIST)
    assert response.status_code == 200
    assert [r["fault"] for r in api_requests(lytics_sandbox)] == ["slow", None]


def test_per_call_timeouts_override_the_transport(lytics_sandbox, make_transport):
    lytics_sandbox.faults.inject("slow", count=1, path_prefix=LIST, method="GET", delay=1.0)
    transport = make_transport(retry={**FAST, "max_attempts": 1}, timeouts=Timeouts(connect=2.0, read=30.0))
    with pytest.raises(AudienceTransportError, match="Timeout"):
        transport.request("GET", LIST, timeouts=Timeouts(connect=2.0, read=0.2))


def test_an_abandoned_request_settles_over_its_own_longer_read_timeout(lytics_sandbox, make_transport):
    # An upload given a longer read timeout than the connection's may still land for 3 of its own.
    lytics_sandbox.faults.inject("slow", count=1, path_prefix=LIST, method="POST", delay=1.0)
    transport = make_transport(retry={**FAST, "max_attempts": 1}, timeouts=Timeouts(connect=2.0, read=0.1))
    assert transport.unsettled_until() == 0.0
    with pytest.raises(AudienceTransportError, match="read back"):
        transport.request("POST", LIST, json=new_segment("slow"), timeouts=Timeouts(connect=2.0, read=0.3))
    assert transport.last_unknown_outcome is not None
    assert transport.unsettled_until() == pytest.approx(transport.last_unknown_outcome + 0.9)


def test_an_abandoned_request_settles_no_sooner_than_the_connections_read_timeouts(lytics_sandbox, make_transport):
    lytics_sandbox.faults.inject("slow", count=1, path_prefix=LIST, method="POST", delay=1.0)
    transport = make_transport(retry={**FAST, "max_attempts": 1}, timeouts=Timeouts(connect=2.0, read=30.0))
    with pytest.raises(AudienceTransportError, match="read back"):
        transport.request("POST", LIST, json=new_segment("slow"), timeouts=Timeouts(connect=2.0, read=0.2))
    assert transport.last_unknown_outcome is not None
    assert transport.unsettled_until() == pytest.approx(transport.last_unknown_outcome + 90.0)


def test_attempts_bound(lytics_sandbox, make_transport, clock):
    lytics_sandbox.faults.inject("status", count=10, path_prefix=LIST, status=503)
    with pytest.raises(AudienceServerError):
        make_transport(retry={**FAST, "max_attempts": 3}).request("GET", LIST)
    assert len(api_requests(lytics_sandbox)) == 3
    assert len(clock.sleeps) == 2


def test_max_elapsed_bound_counts_the_waits(lytics_sandbox, make_transport, tenacity_clock):
    # Each answer asks for 3 s; with 10 s in total, waits of 3+3+3 fit and the 4th would not.
    lytics_sandbox.faults.inject("status", count=10, path_prefix=LIST, status=503, retry_after=3)
    transport = make_transport(retry={**FAST, "max_attempts": 50, "max_elapsed": 10.0})
    with pytest.raises(AudienceServerError):
        transport.request("GET", LIST)
    assert len(api_requests(lytics_sandbox)) == 4
    assert len(tenacity_clock.sleeps) == 3
    assert sum(tenacity_clock.sleeps) <= 10.0


def test_a_wait_longer_than_max_elapsed_is_not_started(lytics_sandbox, make_transport, clock):
    lytics_sandbox.faults.inject("status", count=10, path_prefix=LIST, status=503, retry_after=30)
    with pytest.raises(AudienceServerError):
        make_transport(retry={**FAST, "max_elapsed": 20.0}).request("GET", LIST)
    assert len(api_requests(lytics_sandbox)) == 1
    assert clock.sleeps == []


def test_401_is_an_authentication_error_without_retry(lytics_sandbox, make_transport, clock):
    with pytest.raises(AudienceAuthenticationError) as caught:
        make_transport(token="not-the-sandbox-token").request("GET", LIST)
    error = caught.value
    assert error.status == 401
    assert "Not authorized" in error.message  # Lytics' v1-shaped 401 message
    assert error.request_id == lytics_sandbox.requests[-1]["request_id"]
    assert len(api_requests(lytics_sandbox)) == 1
    assert clock.sleeps == []


def test_oauth2_401_refreshes_the_token_once(lytics_sandbox, make_transport, clock):
    # Lytics wants a raw token, so every Bearer token is refused: one refresh, then the error.
    minted: list[str] = []

    def post(url, form):
        minted.append(f"minted-token-{len(minted)}")
        return {"access_token": minted[-1], "expires_in": 3600}

    auth = OAuth2ClientCredentials("http://token.invalid/oauth", "client", "client-secret-xyz", post)
    with pytest.raises(AudienceAuthenticationError):
        make_transport(auth=auth, retry=FAST).request("GET", LIST)
    assert auth.tokens_minted == 2
    assert len(api_requests(lytics_sandbox)) == 2


def test_errors_carry_status_code_request_id_and_vendor_message(lytics_sandbox, make_transport):
    with pytest.raises(AudienceNotFoundError) as caught:
        make_transport().request("GET", "/v2/segment/no_such_segment")
    error = caught.value
    logged = lytics_sandbox.requests[-1]
    assert (error.vendor, error.status, error.code) == ("lytics", 404, "NOTFOUND-003")
    assert error.request_id == logged["request_id"]
    assert "segment 'no_such_segment' not found" in error.message
    rendered = str(error)
    for fact in ("vendor=lytics", "http_status=404", "code=NOTFOUND-003", f"request_id={logged['request_id']}"):
        assert fact in rendered
    assert error.to_dict()["error"] == "AudienceNotFoundError"


def test_server_error_after_retries_carries_the_last_request_id(lytics_sandbox, make_transport):
    lytics_sandbox.faults.inject("status", count=10, path_prefix=LIST, status=502)
    with pytest.raises(AudienceServerError) as caught:
        make_transport(retry={**FAST, "max_attempts": 2}).request("GET", LIST)
    assert caught.value.status == 502
    assert caught.value.code == "INTERNAL-019"
    assert caught.value.request_id == lytics_sandbox.requests[-1]["request_id"]


def test_validation_error_carries_lytics_message(lytics_sandbox, make_transport):
    with pytest.raises(AudienceValidationError) as caught:
        make_transport().request(
            "POST", "/api/segment/validate", data=b"FILTER AND (", headers={"Content-Type": "text/plain"}
        )
    assert caught.value.status == 400
    assert "Invalid SegmentQL" in caught.value.message
    assert caught.value.request_id == lytics_sandbox.requests[-1]["request_id"]


def test_allowed_statuses_are_returned(lytics_sandbox, make_transport):
    response = make_transport().request("GET", "/v2/segment/nope", allowed_statuses=[404])
    assert response.status_code == 404


def test_json_of_a_non_json_body_is_a_server_error(lytics_sandbox, make_transport):
    with pytest.raises(AudienceServerError, match="not JSON"):
        make_transport().json("GET", "/app")


def test_body_error_turns_a_200_into_a_typed_error(lytics_sandbox, make_transport):
    from airflow_audience_provider.core.errors import AudiencePermissionError
    from airflow_audience_provider.core.transport import ErrorInfo

    profile = VendorProfile(
        name="lytics",
        body_error=lambda r: ErrorInfo(message="quota says no", code="Q1", error_class=AudiencePermissionError),
    )
    with pytest.raises(AudiencePermissionError, match="quota says no") as caught:
        make_transport(profile=profile).request("GET", LIST)
    assert caught.value.code == "Q1"


def test_retries_are_logged_without_secrets(lytics_sandbox, make_transport, caplog):
    lytics_sandbox.faults.inject("status", count=1, path_prefix=LIST, status=503)
    with caplog.at_level(logging.WARNING, logger="airflow_audience_provider.core.transport"):
        make_transport(retry=FAST).request("GET", LIST, params={"account_id": lytics_sandbox.account_id})
    text = caplog.text
    assert "lytics GET /v2/segment failed with HTTP 503" in text
    assert "attempt 1 of 5" in text
    assert lytics_sandbox.token not in text
    assert lytics_sandbox.account_id not in text  # no query strings in logs


def test_client_side_quota_waits_then_refuses_without_sending(lytics_sandbox, make_transport, clock):
    profile = VendorProfile(
        name="lytics",
        rate_limits={"default": RateLimit((Window(2, 60.0),), max_wait=30.0)},
    )
    limiter = RateLimiter(clock=clock, sleep=clock.sleep)
    transport = make_transport(profile=profile, limiter=limiter)
    transport.request("GET", LIST)
    transport.request("GET", LIST)
    with pytest.raises(AudienceRateLimitError) as caught:
        transport.request("GET", LIST)
    assert caught.value.code == "client_quota"
    assert caught.value.retry_after == pytest.approx(60.25)  # the window plus the client's margin
    assert len(api_requests(lytics_sandbox)) == 2  # the third never left the client


def test_endpoint_class_selects_the_quota(lytics_sandbox, make_transport, clock):
    # Lytics' ad-hoc size quota: 1 per 10 s. The second call waits 10 s on the (fake) clock.
    lytics_sandbox.configure(size_throttle_seconds=0)
    transport = make_transport(limiter=RateLimiter(clock=clock, sleep=clock.sleep))
    for _ in range(2):
        transport.request("POST", "/api/segment/size", data=b"FILTER * FROM user", endpoint_class="adhoc_size")
    transport.request("GET", LIST)  # another class: not throttled
    assert clock.sleeps == [pytest.approx(10.2)]  # 10 s plus the client's margin


@pytest.mark.asyncio
async def test_arequest_runs_off_the_event_loop(lytics_sandbox, make_transport):
    transport = make_transport()
    body = await transport.ajson("GET", LIST)
    assert body["status"] == 200
    response = await transport.arequest("GET", LIST)
    assert response.status_code == 200


def test_hook_transport_sends_the_package_user_agent(lytics_sandbox):
    LyticsHook().get_conn().request("GET", LIST)
    assert lytics_sandbox.requests[-1]["user_agent"].startswith("airflow-audience-provider/")


def test_scoped_windows_share_one_budget_across_classes_and_accounts(lytics_sandbox, make_transport, clock):
    # A daily budget shared by reads and writes of one account, and a per-host limit shared by all accounts.
    daily = Window(3, 86400.0, "3 requests per day per login", scope="daily")
    per_host = Window(100, 1.0, "100 per second per IP", scope="ip", per_account=False)
    profile = VendorProfile(
        name="lytics",
        rate_limits={
            "read": RateLimit((daily, per_host), max_wait=30.0),
            "write": RateLimit((Window(10, 60.0), daily, per_host), max_wait=30.0),
        },
    )
    limiter = RateLimiter(clock=clock, sleep=clock.sleep)
    one = make_transport(profile=profile, limiter=limiter, budget_key="acct-1")
    other = make_transport(profile=profile, limiter=limiter, budget_key="acct-2")
    one.request("GET", LIST, endpoint_class="read")
    one.request("GET", LIST, endpoint_class="write")
    one.request("GET", LIST, endpoint_class="read")
    with pytest.raises(AudienceRateLimitError) as caught:
        one.request("GET", LIST, endpoint_class="write")
    assert "3 requests per day per login" in caught.value.message
    assert caught.value.retry_after == pytest.approx(86400.25)
    other.request("GET", LIST, endpoint_class="read")  # another account has its own daily budget
    assert len(api_requests(lytics_sandbox)) == 4
    assert set(limiter.backend._ledgers) == {
        "lytics:acct-1:daily",
        "lytics:acct-2:daily",
        "lytics:*:ip",
        "lytics:acct-1:write",
    }
