"""Fixtures for the Yandex Direct tests: a hook on the Direct fake and a tiny Airflow context double.

The vendor is always the real Direct fake over HTTP; only the Airflow task context (``ti``) is a
recording double.
"""

from __future__ import annotations

from typing import Any

import pytest
from helpers import conn_setter


@pytest.fixture
def direct(yandex_direct_sandbox):
    """The reset Direct fake."""
    return yandex_direct_sandbox


@pytest.fixture
def make_hook(direct):
    """Build YandexDirectHooks on the sandbox with short retry waits: ``make_hook(client_login=...)``."""
    from airflow_audience_provider.core.transport import RetryPolicy
    from airflow_audience_provider.hooks.yandex_direct import YandexDirectHook

    made = []

    def factory(conn_id: str = "yandex_direct_default", **kwargs: Any) -> YandexDirectHook:
        kwargs.setdefault("retry", RetryPolicy(backoff_initial=0.01, backoff_max=0.02))
        hook = YandexDirectHook(conn_id, **kwargs)
        made.append(hook)
        return hook

    yield factory
    for hook in made:
        if hook._transport is not None:
            hook._transport.close()


@pytest.fixture
def hook(make_hook):
    return make_hook()


@pytest.fixture
def set_direct_conn(direct, monkeypatch):
    """Point a connection id at the sandbox with changed fields: ``set_direct_conn("id", password="x")``."""
    return conn_setter(direct, monkeypatch)


@pytest.fixture
def api_calls(direct):
    """``api_calls(service=None)``: the fake's request log for the Direct API (v5 and v4 Live)."""

    def calls(service: str | None = None) -> list[dict[str, Any]]:
        return [
            r
            for r in direct.requests
            if (r["path"].startswith("/json/") or r["path"].startswith("/live/"))
            and (service is None or r["path"].endswith("/" + service))
        ]

    return calls
