"""Fixtures for the Criteo tests: the Criteo fake over real HTTP, hooks on it, an Airflow context double.

The vendor is always the Criteo fake (``airflow_audience_provider.sandbox.criteo``) over HTTP; only the
Airflow task context (``ti`` and ``outlet_events``) is a recording double. Every hook made here records
its requests and the answers, and the ``spec_check`` fixture validates them against Criteo's OpenAPI
documents at the end of each test.
"""

from __future__ import annotations

from typing import Any

import pytest
from criteo_openapi import SpecCheck
from helpers import conn_setter, record_exchanges


@pytest.fixture
def criteo(criteo_sandbox):
    """The reset Criteo fake: statistics at once (no computation lag) unless a test asks for it."""
    criteo_sandbox.configure(stats_after_window=0)
    return criteo_sandbox


@pytest.fixture(scope="session")
def _spec_check():
    return SpecCheck()


@pytest.fixture
def spec_check(_spec_check, criteo):
    """Records every exchange of the hooks made by ``make_hook``; validated against the specs at teardown."""
    _spec_check.start(criteo.base_url)
    yield _spec_check
    _spec_check.assert_valid()


@pytest.fixture
def validate_exchanges(spec_check, monkeypatch):
    """Every CriteoHook the test builds (operators and sensors build their own) records its exchanges
    for the OpenAPI check at teardown."""
    from airflow_audience_provider.hooks.criteo import CriteoHook

    record_exchanges(monkeypatch, CriteoHook, spec_check)
    return spec_check


@pytest.fixture
def set_criteo_conn(criteo, monkeypatch):
    """Point a connection id at the fake with changed fields: ``set_criteo_conn("id", extra={"api": ...})``."""
    return conn_setter(criteo, monkeypatch)


@pytest.fixture
def make_hook(criteo, spec_check):
    """Build CriteoHooks on the fake: short retry waits, a private rate limiter, exchanges recorded."""
    from airflow_audience_provider.core.ratelimit import RateLimiter
    from airflow_audience_provider.core.transport import RetryPolicy
    from airflow_audience_provider.hooks.criteo import CriteoHook

    made = []

    def factory(conn_id: str = "criteo_default", **kwargs: Any) -> CriteoHook:
        kwargs.setdefault("retry", RetryPolicy(backoff_initial=0.01, backoff_max=0.05, max_retry_after=5))
        hook = CriteoHook(conn_id, **kwargs)
        transport = hook.get_conn()
        transport.limiter = RateLimiter()
        spec_check.attach(transport.session)
        made.append(hook)
        return hook

    yield factory
    for hook in made:
        hook.get_conn().close()


@pytest.fixture
def hook(make_hook):
    """A Retail Media hook (the sandbox connection: account 424242, API 2026-07)."""
    return make_hook()


@pytest.fixture
def ms_hook(make_hook, set_criteo_conn):
    """A Marketing Solutions hook (advertiser 98765)."""
    return make_hook(set_criteo_conn("criteo_ms", extra={"api": "marketing_solutions"}))
