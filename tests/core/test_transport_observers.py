"""Transport.response_observers: every HTTP answer (success, error, retried) is shown to each observer."""

from __future__ import annotations

import pytest

from airflow_audience_provider.core.errors import AudienceNotFoundError

LIST = "/v2/segment"


def test_observers_see_every_answer_including_retried_and_failed(lytics_sandbox, make_transport):
    lytics_sandbox.faults.inject("status", count=1, path_prefix=LIST, method="GET", status=503)
    transport = make_transport(retry={"backoff_initial": 0.01})
    seen: list[tuple[int, str]] = []
    transport.response_observers.append(lambda response, endpoint: seen.append((response.status_code, endpoint)))
    transport.request("GET", LIST, endpoint_class="list")
    assert seen == [(503, "list"), (200, "list")]
    with pytest.raises(AudienceNotFoundError):
        transport.request("GET", f"{LIST}/{'0' * 32}")
    assert seen[-1] == (404, "default")


def test_a_failing_observer_does_not_break_the_call(lytics_sandbox, make_transport, caplog):
    transport = make_transport()

    def broken(response, endpoint_class):
        raise RuntimeError("bookkeeping bug")

    transport.response_observers.append(broken)
    assert transport.request("GET", LIST).status_code == 200
    assert "response observer failed" in caplog.text
