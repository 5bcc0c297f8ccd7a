"""Fixtures for the Segment tests: a fast sandbox, a hook on it, and a tiny Airflow context double.

The vendor is always the real Segment fake over HTTP; only the Airflow task context (``ti`` and
``outlet_events``) is a recording double. Every SegmentHook a test builds (operators and sensors
build their own) records its exchanges, and ``segment_spec`` validates them against Segment's
Public API document at the end of each test (requests with their Accept and Content-Type, and
every answer the fake gives).
"""

from __future__ import annotations

import pytest
from helpers import checked_exchanges, conn_setter, fast_hook
from openapi_check import SegmentSpecCheck

#: how long asynchronous work takes in the sandbox for these tests, and how often we look
PROCESSING = 0.3
POLL = 0.05


@pytest.fixture(autouse=True)
def fresh_rate_budgets(monkeypatch):
    """Every test starts with empty client-side budgets (previews allow only 5 a minute)."""
    from airflow_audience_provider.core import ratelimit

    monkeypatch.setattr(ratelimit, "_default_limiter", ratelimit.RateLimiter())


@pytest.fixture(scope="session")
def _segment_spec():
    return SegmentSpecCheck()


@pytest.fixture(autouse=True)
def segment_spec(_segment_spec, monkeypatch):
    """Records every SegmentHook exchange of the test; validated against the spec at teardown.

    A test that sends what the spec forbids on purpose sets ``segment_spec.enabled = False``.
    """
    from airflow_audience_provider.hooks.segment import SegmentHook

    yield from checked_exchanges(monkeypatch, SegmentHook, _segment_spec)


@pytest.fixture
def segment(segment_sandbox):
    """The reset Segment fake with fast asynchronous work."""
    segment_sandbox.configure(processing_seconds=PROCESSING)
    return segment_sandbox


@pytest.fixture
def hook(segment):
    """A SegmentHook on the sandbox with short retry waits."""
    from airflow_audience_provider.hooks.segment import SegmentHook

    yield from fast_hook(SegmentHook)


@pytest.fixture
def set_segment_conn(segment, monkeypatch):
    """Point a connection id at the sandbox with changed fields: ``set_segment_conn("id", password=None)``."""
    return conn_setter(segment, monkeypatch)


@pytest.fixture
def wait_until():
    """``wait_until(predicate)``: poll until it returns something truthy (the sandbox clock runs in real time)."""
    import time

    def waiter(predicate, timeout: float = 10.0, step: float = 0.02):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = predicate()
            if value:
                return value
            time.sleep(step)
        raise AssertionError("condition not reached in time")

    return waiter
