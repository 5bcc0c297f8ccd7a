"""Malformed connection extras are refused before any request, naming the connection and field."""

from __future__ import annotations

import json

import pytest

from airflow_audience_provider.connections import CONNECTION_SPECS
from airflow_audience_provider.core.errors import AudienceConfigurationError
from airflow_audience_provider.core.hook import ConnectionSettings, check_extras


def _settings(conn_type: str, **extra: object) -> ConnectionSettings:
    return ConnectionSettings("my_conn", conn_type, None, None, "secret-token", None, None, dict(extra))


@pytest.mark.parametrize(
    ("conn_type", "field", "bad", "expected"),
    [
        ("yandex_direct", "is_agency", "maybe", "must be true or false"),
        ("yandex_direct", "api_version", "v4", "must be one of v5, v501"),
        ("yandex_direct", "units_reserve", "12.5", "must be an integer"),
        ("yandex_direct", "audience_goal_id_offset", "lots", "must be an integer"),
        ("segment", "region", "asia", "must be one of us, eu"),
        ("criteo", "api", "display", "must be one of retail_media, marketing_solutions"),
        ("lytics", "read_timeout", "soon", "must be a number"),
        ("lytics", "max_attempts", True, "must be an integer"),
        ("lytics", "max_retries", "often", "must be an integer"),  # the former name is checked too
    ],
)
def test_malformed_extra_names_connection_field_and_value(conn_type, field, bad, expected):
    with pytest.raises(AudienceConfigurationError) as raised:
        check_extras(CONNECTION_SPECS[conn_type], _settings(conn_type, **{field: bad}))
    message = str(raised.value)
    assert "'my_conn'" in message and f"'{field}'" in message and expected in message and repr(bad) in message


@pytest.mark.parametrize("conn_type", sorted(CONNECTION_SPECS))
def test_well_formed_extras_pass_in_json_and_uri_string_forms(conn_type):
    spec = CONNECTION_SPECS[conn_type]
    typed = {}
    as_strings = {}
    for f in spec.fields:
        value = f.enum[0] if f.enum else {"boolean": True, "integer": 3, "number": 2.5}.get(f.type, "x")
        typed[f.name] = value
        as_strings[f.name] = str(value).lower() if isinstance(value, bool) else str(value)
    check_extras(spec, _settings(conn_type, **typed))
    check_extras(spec, _settings(conn_type, **as_strings))  # URI-form connections give strings


def test_test_connection_reports_a_malformed_extra_instead_of_calling(lytics_sandbox, monkeypatch, sandbox):
    conn = json.loads(sandbox.connections()["lytics_default"])
    conn["extra"]["read_timeout"] = "soon"
    monkeypatch.setenv("AIRFLOW_CONN_LYTICS_DEFAULT", json.dumps(conn))
    before = len(lytics_sandbox.requests)

    from airflow_audience_provider.hooks.lytics import LyticsHook

    ok, message = LyticsHook().test_connection()
    assert not ok and "'read_timeout'" in message and "must be a number" in message
    assert len(lytics_sandbox.requests) == before
