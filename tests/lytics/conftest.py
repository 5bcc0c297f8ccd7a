"""Fixtures for the Lytics tests: a fast sandbox, a hook on it, and a tiny Airflow context double.

The vendor is always the real Lytics fake over HTTP; only the Airflow task context (``ti`` and
``outlet_events``) is a recording double.
"""

from __future__ import annotations

from typing import Any

import pytest
from helpers import checked_exchanges, conn_setter, fast_hook
from openapi_check import LyticsSpecCheck

#: how long a reevaluation takes in the sandbox for these tests, and how often we look
PROCESSING = 0.2
POLL = 0.05


@pytest.fixture(scope="session")
def _lytics_spec():
    return LyticsSpecCheck()


@pytest.fixture(autouse=True)
def lytics_spec(_lytics_spec, monkeypatch):
    """Every LyticsHook exchange of the test, validated against Lytics' v2 document (where it covers
    the operation) at teardown. A test that breaks the document on purpose sets ``enabled = False``."""
    from airflow_audience_provider.hooks.lytics import LyticsHook

    yield from checked_exchanges(monkeypatch, LyticsHook, _lytics_spec)


@pytest.fixture
def lytics(lytics_sandbox):
    """The reset Lytics fake with fast asynchronous work."""
    lytics_sandbox.configure(processing_seconds=PROCESSING)
    return lytics_sandbox


@pytest.fixture
def hook(lytics):
    """A LyticsHook on the sandbox with short retry waits and its own in-memory rate limiter."""
    from airflow_audience_provider.hooks.lytics import LyticsHook

    yield from fast_hook(LyticsHook, own_limiter=True)


@pytest.fixture
def set_lytics_conn(lytics, monkeypatch):
    """Point a connection id at the sandbox with changed fields: ``set_lytics_conn("id", password=None)``."""
    return conn_setter(lytics, monkeypatch)


@pytest.fixture
def reevaluated(hook, lytics):
    """``reevaluated(segment_id)``: ask for a reevaluation with the job listed (the lenient reading),
    and return the hook's answer plus the ``job_id`` the sandbox gave the work."""
    lytics.configure(list_reevaluation_jobs=1)

    def start(segment_id: str) -> dict[str, Any]:
        started = hook.reevaluate_segment(segment_id)
        jobs = [j for j in lytics.jobs(segment_id) if j["workflow"] == "segment_reevaluate"]
        return {**started, "job_id": jobs[-1]["id"]}

    return start
