"""The shared sandbox machinery over real HTTP: server, connections, faults, request log, control API."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
import requests

from airflow_audience_provider.sandbox import available_vendors, load_fake_class
from airflow_audience_provider.sandbox.base import FaultInjector
from airflow_audience_provider.sandbox.server import SandboxServer

CONNECTION_KEYS = {"conn_type", "host", "port", "login", "password", "schema", "extra", "description"}


def test_import_is_cheap() -> None:
    code = (
        "import sys, airflow_audience_provider.sandbox as s; "
        "print(s.available_vendors()); "
        "print(sorted(m for m in ('starlette', 'uvicorn', 'fastapi') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    vendors, web_modules = out.splitlines()
    assert vendors.startswith("['lytics'")  # every registered vendor is listed, the first one fixes the ports
    assert web_modules == "[]"


def test_registry() -> None:
    assert "lytics" in available_vendors()
    assert load_fake_class("lytics").name == "lytics"
    with pytest.raises(KeyError, match="No sandbox fake"):
        load_fake_class("nope")


def test_server_urls_and_connections(sandbox: SandboxServer) -> None:
    url = sandbox.url("lytics")
    assert url.startswith("http://127.0.0.1:")
    assert sandbox.fake("lytics").base_url == url
    connections = sandbox.connections()
    conn = json.loads(connections["lytics_default"])
    assert set(conn) <= CONNECTION_KEYS
    fake = sandbox.fake("lytics")
    assert conn == {
        "conn_type": "lytics",
        "host": url,
        "password": fake.token,
        "extra": {"account_id": fake.account_id, "web_app_url": f"{url}/app"},
    }
    assert sandbox.env()["AIRFLOW_CONN_LYTICS_DEFAULT"] == connections["lytics_default"]
    assert set(sandbox.env()) == {f"AIRFLOW_CONN_{c.upper()}" for c in connections}  # one per served vendor
    assert sandbox.export_lines()[0].startswith("export AIRFLOW_CONN_LYTICS_DEFAULT='{")
    with pytest.raises(KeyError):
        sandbox.fake("criteo-not-served")


def test_connection_resolves_in_airflow(lytics_sandbox) -> None:
    from airflow.sdk import BaseHook

    conn = BaseHook.get_connection("lytics_default")
    assert conn.host == lytics_sandbox.base_url
    assert conn.password == lytics_sandbox.token
    assert conn.extra_dejson["account_id"] == lytics_sandbox.account_id


def test_fixed_port_and_stop() -> None:
    with SandboxServer(vendors=["lytics"]) as first:
        port = first.port("lytics")
    # the port is free again and can be asked for explicitly
    with SandboxServer(vendors=["lytics"], ports={"lytics": port}) as second:
        assert second.url("lytics") == f"http://127.0.0.1:{port}"
        assert requests.get(second.url("lytics") + "/_sandbox/health", timeout=5).json()["vendor"] == "lytics"
    with pytest.raises(requests.ConnectionError):
        requests.get(f"http://127.0.0.1:{port}/_sandbox/health", timeout=2)


def _get(fake, path: str = "/v2/segment", **kwargs) -> requests.Response:
    kwargs.setdefault("timeout", 5)
    return requests.get(fake.base_url + path, headers={"Authorization": fake.token}, **kwargs)


def test_status_fault_with_retry_after(lytics_sandbox) -> None:
    lytics_sandbox.faults.inject("status", status=429, retry_after=3, count=2)
    for _ in range(2):
        response = _get(lytics_sandbox)
        assert response.status_code == 429
        assert response.headers["Retry-After"] == "3"
        assert response.json()["errors"][0]["message"] == "Too Many Requests"
    assert _get(lytics_sandbox).status_code == 200
    assert [r["fault"] for r in lytics_sandbox.requests] == ["status", "status", None]


def test_5xx_burst_has_no_retry_after_unless_asked(lytics_sandbox) -> None:
    lytics_sandbox.faults.inject("status", status=503, count=3)
    statuses = [_get(lytics_sandbox).status_code for _ in range(4)]
    assert statuses == [503, 503, 503, 200]
    assert [r["status"] for r in lytics_sandbox.requests] == statuses


def test_drop_fault_is_a_connection_error(lytics_sandbox) -> None:
    lytics_sandbox.faults.inject("drop")
    with pytest.raises(requests.ConnectionError):
        _get(lytics_sandbox)
    # a kept-alive session also sees the drop, then recovers
    with requests.Session() as session:
        session.headers["Authorization"] = lytics_sandbox.token
        assert session.get(lytics_sandbox.base_url + "/v2/segment", timeout=5).status_code == 200
        lytics_sandbox.faults.inject("drop")
        with pytest.raises(requests.ConnectionError):
            session.get(lytics_sandbox.base_url + "/v2/segment", timeout=5)
        assert session.get(lytics_sandbox.base_url + "/v2/segment", timeout=5).status_code == 200
    dropped = [r for r in lytics_sandbox.requests if r["fault"] == "drop"]
    assert len(dropped) == 2 and all(r["status"] is None for r in dropped)


def test_slow_fault_trips_read_timeout(lytics_sandbox) -> None:
    lytics_sandbox.faults.inject("slow", delay=2.0)
    with pytest.raises(requests.ReadTimeout):
        _get(lytics_sandbox, timeout=(2, 0.15))
    (slow,) = lytics_sandbox.requests
    assert slow["status"] is None  # the client gave up before the answer (no wall-clock bound)
    assert _get(lytics_sandbox, timeout=(2, 0.5)).status_code == 200


def test_slow_fault_still_answers_patient_clients(lytics_sandbox) -> None:
    lytics_sandbox.faults.inject("slow", delay=0.2)
    started = time.monotonic()
    assert _get(lytics_sandbox).status_code == 200
    assert time.monotonic() - started >= 0.2


def test_fault_matching_by_path_and_method(lytics_sandbox) -> None:
    lytics_sandbox.faults.inject("status", status=500, path_prefix="/v2/segment/group", method="post")
    assert _get(lytics_sandbox, "/v2/segment/group").status_code == 200
    assert _get(lytics_sandbox).status_code == 200
    response = requests.post(
        lytics_sandbox.base_url + "/v2/segment/group",
        headers={"Authorization": lytics_sandbox.token},
        json={"name": "g"},
        timeout=5,
    )
    assert response.status_code == 500
    assert response.json()["errors"][0]["code"] == "INTERNAL-019"
    assert lytics_sandbox.faults.pending() == []


def test_fault_validation() -> None:
    faults = FaultInjector()
    for kwargs in ({"kind": "explode"}, {"kind": "status", "count": 0}, {"kind": "status", "status": 700},
                   {"kind": "slow"}, {"kind": "slow", "delay": -1}):  # fmt: skip
        with pytest.raises(ValueError):
            faults.inject(**kwargs)


def test_control_endpoints(lytics_sandbox) -> None:
    base = lytics_sandbox.base_url + "/_sandbox"
    # no auth needed, not logged, never faulted
    lytics_sandbox.faults.inject("drop")
    assert requests.get(base + "/health", timeout=5).json()["status"] == "ok"
    assert requests.get(base + "/requests", timeout=5).json() == {"requests": []}
    assert requests.delete(base + "/faults", timeout=5).json() == {"faults": []}

    fault = {"kind": "status", "status": 502, "count": 2, "path_prefix": "/v2/"}
    answer = requests.post(base + "/faults", json=fault, timeout=5)
    assert answer.status_code == 200 and answer.json()["fault"]["status"] == 502
    assert requests.get(base + "/faults", timeout=5).json()["faults"][0]["count"] == 2
    assert _get(lytics_sandbox).status_code == 502
    bad = requests.post(base + "/faults", json={"kind": "nope"}, timeout=5)
    assert bad.status_code == 400 and "unknown fault kind" in bad.json()["error"]
    assert requests.post(base + "/faults", json={"kind": "drop", "colour": 1}, timeout=5).status_code == 400

    log = requests.get(base + "/requests", timeout=5).json()["requests"]
    assert [(r["method"], r["path"], r["status"]) for r in log] == [("GET", "/v2/segment", 502)]

    config = requests.post(base + "/config", json={"processing_seconds": 7, "rate_limit_per_second": 5}, timeout=5)
    assert config.json()["config"]["processing_seconds"] == 7
    assert lytics_sandbox.processing_seconds == 7
    assert requests.post(base + "/config", json={"bogus": 1}, timeout=5).status_code == 400
    assert requests.post(base + "/config", json={"processing_seconds": "x"}, timeout=5).status_code == 400

    assert requests.post(base + "/reset", timeout=5).json()["status"] == "reset"
    assert lytics_sandbox.processing_seconds == 0.5  # back to the server's initial setting
    assert lytics_sandbox.faults.pending() == []
    assert lytics_sandbox.requests == []


def test_request_log_never_holds_secrets(lytics_sandbox) -> None:
    requests.post(
        lytics_sandbox.base_url + "/v2/segment?account_id=" + lytics_sandbox.account_id,
        headers={"Authorization": lytics_sandbox.token},
        json={"name": "secretive", "segment_ql": "FILTER *"},
        timeout=5,
    )
    requests.get(
        lytics_sandbox.base_url + "/api/segment/sizes",
        params={"ids": "all_users", "access_token": lytics_sandbox.token},
        timeout=5,
    )
    requests.get(lytics_sandbox.base_url + "/v2/segment", timeout=5)
    log = lytics_sandbox.requests
    assert lytics_sandbox.token not in json.dumps(log)
    assert "secretive" not in json.dumps(log)
    assert [(r["status"], r["authorization"]) for r in log] == [(201, True), (200, False), (401, False)]
    assert log[0]["query"] == f"account_id={lytics_sandbox.account_id}"
    assert "access_token=%2A%2A%2A" in log[1]["query"]
    assert log[0]["content_type"] == "application/json"
    assert log[0]["user_agent"].startswith("python-requests/")
    assert all(set(r) >= {"method", "path", "query", "status", "authorization", "request_id"} for r in log)


def test_general_rate_limit(lytics_sandbox) -> None:
    lytics_sandbox.configure(rate_limit_per_second=3)
    statuses = [_get(lytics_sandbox).status_code for _ in range(5)]
    assert statuses[:3] == [200, 200, 200]
    assert 429 in statuses[3:]
    limited = _get(lytics_sandbox)
    assert limited.status_code == 429
    assert "Retry-After" not in limited.headers  # Lytics documents no Retry-After
    assert limited.json()["errors"][0]["message"] == "Too Many Requests"
    time.sleep(1.05)
    assert _get(lytics_sandbox).status_code == 200


def test_clock_control(lytics_sandbox) -> None:
    before = lytics_sandbox.now()
    answer = requests.post(lytics_sandbox.base_url + "/_sandbox/clock", json={"advance": 3600}, timeout=5)
    assert answer.status_code == 200
    assert lytics_sandbox.now() - before >= 3600
    with pytest.raises(ValueError):
        lytics_sandbox.advance_time(-1)


def test_unknown_route_answers_in_vendor_envelope(lytics_sandbox) -> None:
    response = _get(lytics_sandbox, "/v2/nothing-here")
    assert response.status_code == 404
    assert response.json()["errors"][0]["code"] == "NOTFOUND-003"
    assert response.headers["x-request-id"] == response.json()["request_id"]
