"""Fixtures for the Lytics tests: a fast sandbox, a hook on it, and a tiny Airflow context double.

The vendor is always the real Lytics fake over HTTP; only the Airflow task context (``ti`` and
``outlet_events``) is a recording double.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

#: how long a reevaluation takes in the sandbox for these tests, and how often we look
PROCESSING = 0.2
POLL = 0.05


@pytest.fixture
def lytics(lytics_sandbox):
    """The reset Lytics fake with fast asynchronous work."""
    lytics_sandbox.configure(processing_seconds=PROCESSING)
    return lytics_sandbox


@pytest.fixture
def hook(lytics):
    """A LyticsHook on the sandbox with short retry waits and its own in-memory rate limiter."""
    from airflow_audience_provider.core.ratelimit import RateLimiter
    from airflow_audience_provider.core.transport import RetryPolicy
    from airflow_audience_provider.hooks.lytics import LyticsHook

    made = LyticsHook(retry=RetryPolicy(backoff_initial=0.01, backoff_max=0.02))
    made.get_conn().limiter = RateLimiter()
    yield made
    made.get_conn().close()


@pytest.fixture
def set_lytics_conn(lytics, monkeypatch):
    """Point a connection id at the sandbox with changed fields: ``set_lytics_conn("id", password=None)``."""

    def setter(conn_id: str, *, extra: dict[str, Any] | None = None, **fields: Any) -> str:
        conn = lytics.connection(lytics.base_url)
        conn.update(fields)
        conn = {k: v for k, v in conn.items() if v is not None}
        conn["extra"] = {**conn.get("extra", {}), **(extra or {})}
        monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(conn))
        return conn_id

    return setter
