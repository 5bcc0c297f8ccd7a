"""Send guards: checks the transport runs before every attempt of a write, against the real Lytics fake."""

from __future__ import annotations

import pytest

from airflow_audience_provider.core.transport import Timeouts

VALIDATE = "/api/segment/validate"
FAST = {"backoff_initial": 0.01}


class Refused(Exception):
    pass


def api_requests(fake, path):
    return [r for r in fake.requests if r["path"] == path]


def test_the_guard_runs_before_each_attempt_of_a_write_retries_included(lytics_sandbox, make_transport):
    lytics_sandbox.faults.inject("status", count=2, path_prefix=VALIDATE, status=503)
    transport = make_transport(retry=FAST, timeouts=Timeouts(connect=2.0, read=5.0))
    transport.settle_seconds = 7.0
    seen: list[tuple[Timeouts, float]] = []
    with transport.guard_sends(lambda timeouts, landing: seen.append((timeouts, landing))):
        response = transport.request("POST", VALIDATE, data=b"FILTER * FROM user", idempotent=True)
        transport.request("GET", "/v2/segment")  # reads are not guarded
    assert response.status_code == 200
    assert [r["status"] for r in api_requests(lytics_sandbox, VALIDATE)] == [503, 503, 200]
    # One call per attempt, with the attempt's timeouts and read timeout + settle time.
    assert seen == [(Timeouts(connect=2.0, read=5.0), 12.0)] * 3
    transport.request("POST", VALIDATE, data=b"FILTER * FROM user", idempotent=True)
    assert len(seen) == 3  # the guard is gone outside the block


def test_a_guard_that_raises_stops_the_retries_unsent(lytics_sandbox, make_transport):
    lytics_sandbox.faults.inject("status", count=3, path_prefix=VALIDATE, status=503)
    transport = make_transport(retry=FAST)
    calls: list[int] = []

    def guard(timeouts: Timeouts, landing: float) -> None:
        calls.append(1)
        if len(calls) > 1:
            raise Refused("no longer allowed to write")

    with transport.guard_sends(guard), pytest.raises(Refused):
        transport.request("POST", VALIDATE, data=b"FILTER * FROM user", idempotent=True)
    assert [r["status"] for r in api_requests(lytics_sandbox, VALIDATE)] == [503]  # the retry never went out
    assert len(calls) == 2


def test_the_guard_sees_a_call_s_own_longer_timeouts(lytics_sandbox, make_transport):
    transport = make_transport(retry=FAST, timeouts=Timeouts(connect=2.0, read=1.0))
    seen: list[tuple[Timeouts, float]] = []
    upload = Timeouts(connect=2.0, read=40.0)
    with transport.guard_sends(lambda timeouts, landing: seen.append((timeouts, landing))):
        transport.request("POST", VALIDATE, data=b"FILTER * FROM user", timeouts=upload)
    # No settle_seconds: an abandoned request may land for three of its own read timeouts.
    assert seen == [(upload, 40.0 + 120.0)]
    assert transport.landing_window() == 4.0
