"""A refused credential names the Airflow connection and the field to fix."""

from __future__ import annotations

import json

import pytest

from airflow_audience_provider.core.errors import AudienceAuthenticationError
from airflow_audience_provider.hooks.lytics import LyticsHook


def test_wrong_token_error_names_connection_and_field(lytics_sandbox, monkeypatch, sandbox):
    conn = json.loads(sandbox.connections()["lytics_default"])
    conn["password"] = "not-the-sandbox-token"
    monkeypatch.setenv("AIRFLOW_CONN_LYTICS_DEFAULT", json.dumps(conn))

    with pytest.raises(AudienceAuthenticationError) as raised:
        LyticsHook().list_segments()
    assert "API token (password field) of Airflow connection 'lytics_default'" in str(raised.value)
    assert "not-the-sandbox-token" not in str(raised.value)

    ok, message = LyticsHook().test_connection()
    assert not ok
    assert "lytics_default" in message and "HTTP 401" in message
