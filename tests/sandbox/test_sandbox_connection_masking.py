"""No sandbox connection value is too short for Airflow's secret masker.

Airflow registers every connection extra with its secret masker when a task reads the
connection, and logs "Skipping masking for a secret as it's too short (<5 chars)" for any value
shorter than ``[logging] min_length_masked_secret`` (5), whatever its key. The sandbox's values
stay longer, so the demo's task logs do not start with that warning.
"""

from __future__ import annotations

import json

import pytest

from airflow_audience_provider.connections import CONNECTION_SPECS

MIN_LENGTH_MASKED_SECRET = 5  # Airflow's default [logging] min_length_masked_secret


@pytest.mark.parametrize("conn_type", sorted(CONNECTION_SPECS))
def test_sandbox_connection_values_are_long_enough_to_mask(sandbox, conn_type):
    conn = json.loads(sandbox.connections()[CONNECTION_SPECS[conn_type].default_conn_name])
    values = {"login": conn.get("login"), "password": conn.get("password"), **(conn.get("extra") or {})}
    short = {k: v for k, v in values.items() if isinstance(v, str) and v and len(v) < MIN_LENGTH_MASKED_SECRET}
    assert not short, f"{conn_type} sandbox connection values Airflow warns about as too short to mask: {short}"
