"""Fixtures for the Yandex.Audience tests: a fast sandbox, a hook on it, and a tiny Airflow context double.

The vendor is always the real Yandex.Audience fake over HTTP; only the Airflow task context (``ti`` and
``outlet_events``) is a recording double, and the client-side rate limiter runs on a fake clock.
"""

from __future__ import annotations

from typing import Any

import pytest
from helpers import FakeClock, conn_setter, fast_hook
from yandex_audience_helpers import PROCESSING


@pytest.fixture
def ya(yandex_audience_sandbox):
    """The reset Yandex.Audience fake with fast processing and the per-login write quotas off.

    Tests of the quotas turn them back on with ``ya.configure(writes_per_minute=10, ...)``.
    """
    yandex_audience_sandbox.configure(
        processing_seconds=PROCESSING, writes_per_minute=None, writes_per_hour=None, writes_per_day=None
    )
    return yandex_audience_sandbox


@pytest.fixture
def snapshots(tmp_path):
    return str(tmp_path / "snapshots")


@pytest.fixture
def limiter_clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def patch_limiter(monkeypatch, limiter_clock):
    """Every hook built in the test shares one in-memory limiter on a fake clock, and retries sleep on it."""
    from airflow_audience_provider.core import transport as transport_module
    from airflow_audience_provider.core.ratelimit import RateLimiter

    limiter = RateLimiter(clock=limiter_clock, sleep=limiter_clock.sleep)
    monkeypatch.setattr(transport_module, "default_rate_limiter", lambda: limiter)
    original = transport_module.Transport.__init__

    def init(self, *args: Any, **kwargs: Any) -> None:
        kwargs["sleep"] = limiter_clock.sleep
        original(self, *args, **kwargs)

    monkeypatch.setattr(transport_module.Transport, "__init__", init)
    return limiter


@pytest.fixture
def hook(ya, patch_limiter):
    """A YandexAudienceHook on the sandbox with fast retries and a fake-clock limiter."""
    from airflow_audience_provider.hooks.yandex_audience import YandexAudienceHook

    yield from fast_hook(YandexAudienceHook)


@pytest.fixture
def set_ya_conn(ya, monkeypatch):
    """Point a connection id at the sandbox with changed fields: ``set_ya_conn("id", password="x")``."""
    return conn_setter(ya, monkeypatch)
