"""Test-wide setup: an isolated Airflow home, no examples, the package's example DAGs.

This must run before anything imports airflow, so it sits at the top of the root conftest.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

_REPO = Path(__file__).resolve().parent.parent
_AIRFLOW_HOME = Path(os.environ.get("AUDIENCE_TEST_AIRFLOW_HOME") or tempfile.mkdtemp(prefix="aap-airflow-home-"))
os.environ["AIRFLOW_HOME"] = str(_AIRFLOW_HOME)
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(_REPO / "example_dags")
os.environ.setdefault("AIRFLOW__CORE__UNIT_TEST_MODE", "False")
# Each test process keeps its OAuth tokens in memory (fakes revoke them on reset); the token-cache
# tests choose a shared store explicitly.
os.environ.setdefault("AIRFLOW__AUDIENCE__TOKEN_CACHE", "process")
# The OpenLineage provider is installed for the lineage tests, which call the facet methods directly;
# its listener stays off so no task run tries to send events anywhere (there is no network here).
os.environ.setdefault("AIRFLOW__OPENLINEAGE__DISABLED", "True")

# ---- sandbox fixtures (below this line) ----

import pytest  # noqa: E402
from hypothesis import settings  # noqa: E402

# Hypothesis' default 200 ms per-example deadline is a wall-clock assertion: a loaded CI box trips it.
settings.register_profile("audience", deadline=None)
settings.load_profile("audience")


@pytest.fixture(scope="session")
def sandbox():
    """Every vendor fake served over real HTTP on 127.0.0.1 for the whole session.

    Yields the running :class:`~airflow_audience_provider.sandbox.server.SandboxServer`.
    Asynchronous vendor work takes 0.5 s here; tests that need another delay call
    ``fake.configure(processing_seconds=...)`` (undone by the per-vendor fixtures' reset).
    """
    from airflow_audience_provider.sandbox.server import SandboxServer

    with SandboxServer(processing_seconds=0.5) as server:
        yield server


def _vendor_sandbox(sandbox, monkeypatch, vendor: str):
    """A vendor's fake, reset (state, faults, request log, config, clock) before and after the test,
    with ``AIRFLOW_CONN_<VENDOR>_DEFAULT`` pointing at it."""
    fake = sandbox.fake(vendor)
    fake.reset()
    monkeypatch.setenv(f"AIRFLOW_CONN_{vendor.upper()}_DEFAULT", sandbox.connections()[f"{vendor}_default"])
    yield fake
    fake.reset()


@pytest.fixture(autouse=True)
def _fresh_oauth_tokens():
    """OAuth tokens are cached per process; a fake's reset revokes them, so each test starts without."""
    from airflow_audience_provider.core.auth import PROCESS_TOKENS

    PROCESS_TOKENS.clear()
    yield
    PROCESS_TOKENS.clear()


@pytest.fixture(autouse=True)
def _fresh_rate_limits(monkeypatch, tmp_path_factory):
    """Each test starts with full client-side budgets, on file ledgers of its own (the product's default
    backend): a budget earlier tests spent (Criteo's 250 calls a minute) is no wait of this one."""
    from airflow_audience_provider.core import ratelimit

    monkeypatch.setattr(ratelimit, "_default_limiter", ratelimit.RateLimiter(tmp_path_factory.mktemp("ratelimits")))


@pytest.fixture(scope="session")
def crm_refresh_runs(sandbox, tmp_path_factory):
    """The Yandex.Audience CRM refresh example run twice under ``airflow dags test``, once per session:
    its end-to-end test checks these runs and the Audiences view reads them (see ``run_crm_refresh_twice``)."""
    from helpers import run_crm_refresh_twice

    return run_crm_refresh_twice(sandbox, tmp_path_factory)


@pytest.fixture
def lytics_sandbox(sandbox, monkeypatch):
    """The :class:`~airflow_audience_provider.sandbox.lytics.LyticsFake`, reset; its URL is ``.base_url``."""
    yield from _vendor_sandbox(sandbox, monkeypatch, "lytics")


@pytest.fixture
def yandex_audience_sandbox(sandbox, monkeypatch):
    """The :class:`~airflow_audience_provider.sandbox.yandex_audience.YandexAudienceFake`, reset."""
    yield from _vendor_sandbox(sandbox, monkeypatch, "yandex_audience")


@pytest.fixture
def yandex_direct_sandbox(sandbox, monkeypatch):
    """The :class:`~airflow_audience_provider.sandbox.yandex_direct.YandexDirectFake`, reset.

    Its retargeting goals come from its own seeded Audience segments;
    ``fake.use_audience_fake(sandbox.fake("yandex_audience"))`` makes them follow the Yandex.Audience
    fake's processed segments instead (undone by the reset).
    """
    yield from _vendor_sandbox(sandbox, monkeypatch, "yandex_direct")


@pytest.fixture
def segment_sandbox(sandbox, monkeypatch):
    """The :class:`~airflow_audience_provider.sandbox.segment.SegmentFake`, reset."""
    yield from _vendor_sandbox(sandbox, monkeypatch, "segment")


@pytest.fixture
def criteo_sandbox(sandbox, monkeypatch):
    """The :class:`~airflow_audience_provider.sandbox.criteo.CriteoFake`, reset (its clock too)."""
    yield from _vendor_sandbox(sandbox, monkeypatch, "criteo")


# ---- the Airflow task context double shared by the operator and sensor tests ----
# The vendor is always a real sandbox fake over HTTP; only ``ti`` and ``outlet_events`` of the
# Airflow context are recording doubles, because tests call ``execute`` outside the task runner.


class RecordingTI:
    """Records xcom_push calls."""

    def __init__(self) -> None:
        self.pushed: dict = {}

    def xcom_push(self, key: str, value: object) -> None:
        self.pushed[key] = value

    def get_first_reschedule_date(self, context: object) -> None:
        """Reschedule-mode sensors ask when they first ran; None = this is the first try."""
        return None


class RecordingOutletEvents:
    """``context["outlet_events"][AssetAlias(...)].add(asset, extra=...)`` recorded as tuples."""

    def __init__(self) -> None:
        self.added: list[tuple[str, str, dict]] = []

    def __getitem__(self, alias: object) -> object:
        events = self

        class Accessor:
            def add(self, asset: object, extra: dict | None = None) -> None:
                events.added.append((alias.name, asset.uri, dict(extra or {})))  # type: ignore[attr-defined]

        return Accessor()


@pytest.fixture
def context() -> dict:
    """A minimal task context: a recording ``ti`` and recording ``outlet_events``."""
    ti = RecordingTI()
    return {"ti": ti, "task_instance": ti, "outlet_events": RecordingOutletEvents()}
