"""The AudienceHook base (via LyticsHook): connection decoding, transport settings, test_connection."""

from __future__ import annotations

import json

import pytest

from airflow_audience_provider.core.errors import AudienceConfigurationError
from airflow_audience_provider.core.hook import ConnectionSettings
from airflow_audience_provider.core.transport import RetryPolicy, Timeouts
from airflow_audience_provider.hooks.lytics import LyticsHook


def set_conn(monkeypatch, conn_id: str = "lytics_core", **fields) -> str:
    fields.setdefault("conn_type", "lytics")
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(fields))
    return conn_id


def test_settings_decode_the_connection(monkeypatch):
    conn_id = set_conn(
        monkeypatch, host="https://api.example", password="tok-12345", extra={"account_id": "acc", "x": 1}
    )
    settings = LyticsHook(conn_id).settings()
    assert settings.conn_id == conn_id
    assert (settings.host, settings.password) == ("https://api.example", "tok-12345")
    assert settings.get_extra("account_id") == "acc"
    assert settings.get_extra("missing", "dflt") == "dflt"


def test_legacy_prefixed_extras_are_read():
    settings = ConnectionSettings("c", "lytics", None, None, None, None, None, {"extra__lytics__account_id": "old"})
    assert settings.get_extra("account_id") == "old"


def test_wrong_connection_type_names_the_connection(monkeypatch):
    conn_id = set_conn(monkeypatch, conn_type="http", host="x", password="tok-12345")
    with pytest.raises(AudienceConfigurationError, match=f"'{conn_id}' is of type 'http'.*'lytics'"):
        LyticsHook(conn_id).settings()


@pytest.mark.parametrize(
    ("host", "port", "expected"),
    [
        (None, None, "https://api.lytics.io"),
        ("api.eu.example", None, "https://api.eu.example"),
        ("api.eu.example/", 8443, "https://api.eu.example:8443"),
        ("http://127.0.0.1:8700", 9999, "http://127.0.0.1:8700"),
    ],
)
def test_base_url(host, port, expected):
    hook = LyticsHook("unused")
    assert hook.base_url(ConnectionSettings("c", "lytics", host, None, "t", port, None)) == expected


def test_transport_settings_come_from_the_connection(monkeypatch):
    conn_id = set_conn(
        monkeypatch,
        host="http://127.0.0.1:1",
        password="tok-12345",
        # URI-form connections give strings: accepted
        extra={"connect_timeout": "3", "read_timeout": 7.5, "max_attempts": 2},
    )
    transport = LyticsHook(conn_id).get_conn()
    assert transport.timeouts == Timeouts(connect=3.0, read=7.5)
    assert transport.retry.max_attempts == 2
    assert transport.base_url == "http://127.0.0.1:1"


def test_max_retries_is_the_former_name_of_max_attempts(monkeypatch, caplog):
    conn_id = set_conn(monkeypatch, password="tok-12345", extra={"max_retries": 2})
    with caplog.at_level("WARNING"):
        assert LyticsHook(conn_id).get_conn().retry.max_attempts == 2
    assert "'max_retries' is deprecated" in caplog.text and "'max_attempts'" in caplog.text
    conn_id = set_conn(monkeypatch, password="tok-12345", extra={"max_retries": 9, "max_attempts": 1})
    assert LyticsHook(conn_id).get_conn().retry.max_attempts == 1  # the current name wins


def test_operator_overrides_win_over_the_connection(monkeypatch):
    conn_id = set_conn(monkeypatch, password="tok-12345", extra={"read_timeout": 99, "max_retries": 9})
    hook = LyticsHook(conn_id, timeouts=Timeouts(1, 2), retry=RetryPolicy(max_attempts=1))
    transport = hook.get_conn()
    assert transport.timeouts == Timeouts(1, 2)
    assert transport.retry.max_attempts == 1
    assert hook.get_conn() is transport  # built once


@pytest.mark.parametrize(("value", "problem"), [("soon", "must be a number"), (0, "must be positive")])
def test_bad_numeric_extra_names_connection_and_field(monkeypatch, value, problem):
    conn_id = set_conn(monkeypatch, password="tok-12345", extra={"read_timeout": value})
    with pytest.raises(AudienceConfigurationError, match=f"'{conn_id}': extra field 'read_timeout' {problem}"):
        LyticsHook(conn_id).get_conn()


def test_test_connection_never_raises(monkeypatch):
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    conn_id = set_conn(monkeypatch, host=f"http://127.0.0.1:{port}", password="tok-12345", extra={"max_retries": 1})
    ok, message = LyticsHook(conn_id).test_connection()
    assert ok is False
    assert "lytics GET /v2/segment failed: ConnectionError" in message


def test_test_connection_reports_unexpected_errors(monkeypatch):
    hook = LyticsHook("lytics_core")
    monkeypatch.setattr(hook, "probe", lambda: 1 / 0)
    assert hook.test_connection() == (False, "ZeroDivisionError: division by zero")


@pytest.mark.asyncio
async def test_async_settings_and_transport(lytics_sandbox):
    hook = LyticsHook()
    settings = await hook.asettings()
    assert settings.host == lytics_sandbox.base_url
    assert settings.get_extra("account_id") == lytics_sandbox.account_id
    transport = await hook.aget_conn()
    assert transport is hook.get_conn()
    assert (await transport.ajson("GET", "/v2/segment"))["status"] == 200


def test_connection_form_classmethods_come_from_the_spec():
    from airflow_audience_provider.connections import LYTICS

    assert LyticsHook.get_ui_field_behaviour() == LYTICS.ui_field_behaviour()
    assert isinstance(LyticsHook.get_connection_form_widgets(), dict)
