"""Fixtures for the core tests: a recording sleep, a fake clock, a transport on the Lytics fake."""

from __future__ import annotations

import types
from collections.abc import Callable
from typing import Any

import pytest
from helpers import FakeClock


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def tenacity_clock(monkeypatch, clock: FakeClock) -> FakeClock:
    """Make tenacity's elapsed-time bookkeeping follow ``clock`` (advanced by ``clock.sleep``)."""
    import tenacity

    monkeypatch.setattr(tenacity, "time", types.SimpleNamespace(monotonic=clock))
    return clock


@pytest.fixture
def make_transport(lytics_sandbox, clock: FakeClock) -> Callable[..., Any]:
    """Build a Transport on the Lytics fake that sleeps on ``clock`` (so no test really waits).

    Keyword arguments override Transport's; ``retry`` may be a dict of RetryPolicy overrides.
    """
    from airflow_audience_provider.core.auth import TokenHeaderAuth
    from airflow_audience_provider.core.ratelimit import RateLimiter
    from airflow_audience_provider.core.transport import RetryPolicy, Transport
    from airflow_audience_provider.hooks.lytics import LyticsHook

    made: list[Any] = []

    def factory(token: str | None = None, retry: dict[str, Any] | None = None, **kwargs: Any) -> Transport:
        kwargs.setdefault("sleep", clock.sleep)
        kwargs.setdefault("limiter", RateLimiter(clock=clock, sleep=clock.sleep))
        policy = RetryPolicy().with_overrides(**(retry or {}))
        transport = Transport(
            kwargs.pop("profile", LyticsHook.profile),
            lytics_sandbox.base_url,
            kwargs.pop("auth", None) or TokenHeaderAuth(token or lytics_sandbox.token),
            retry=policy,
            **kwargs,
        )
        made.append(transport)
        return transport

    yield factory
    for transport in made:
        transport.close()
