"""The Audiences plugin without a server: registration, lazy loading, refusal without a login, plots."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import entry_points

import pytest


def test_registered_through_the_airflow_plugins_entry_point():
    (entry,) = [e for e in entry_points(group="airflow.plugins") if e.name == "audiences"]
    plugin = entry.load()
    assert plugin.name == "audiences"
    (app,) = plugin.fastapi_apps
    assert app["url_prefix"] == "/audiences"
    (view,) = plugin.external_views
    assert (view["name"], view["destination"], view["href"]) == ("Audiences", "nav", "/audiences/")


def test_loading_the_plugin_does_not_build_the_app():
    code = (
        "import sys\n"
        "from airflow import plugins_manager as pm\n"
        "pm.ensure_plugins_loaded()\n"
        "assert 'airflow_audience_provider.ui.plugin' in sys.modules\n"
        "assert 'airflow_audience_provider.ui.app' not in sys.modules, 'app imported eagerly'\n"
        "assert 'airflow_audience_provider.ui.queries' not in sys.modules\n"
        "print('LAZY-OK')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert "LAZY-OK" in done.stdout, done.stdout[-2000:] + done.stderr[-2000:]


@pytest.mark.parametrize("path", ["/", "/api/audiences", "/audience/1", "/api/audiences/1"])
def test_unauthenticated_requests_are_refused(path):
    from fastapi.testclient import TestClient

    from airflow_audience_provider.ui.plugin import LazyAudiencesApp

    with TestClient(LazyAudiencesApp()) as client:
        answer = client.get(path)
    assert answer.status_code == 401
    assert "audience" not in answer.text.lower() or "Not authenticated" in answer.text


def test_icon_is_public_and_static():
    from fastapi.testclient import TestClient

    from airflow_audience_provider.ui.plugin import LazyAudiencesApp

    with TestClient(LazyAudiencesApp()) as client:
        answer = client.get("/icon.svg")
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("image/svg+xml")


def test_plot_has_one_linked_point_per_known_value():
    from airflow_audience_provider.ui.svg import Series, line_plot

    svg = line_plot(
        [Series("ours", [10, None, 30]), Series("vendor", [None, 20, 25])],
        ["t0", "t1", "t2"],
        ["/dags/d/runs/r0", "/dags/d/runs/r1", None],
    )
    assert svg.count('class="point"') == 4
    assert svg.count('href="/dags/d/runs/r0"') == 1 and svg.count('href="/dags/d/runs/r1"') == 1
    assert svg.count("<a ") == 2  # the third run has no link
    assert line_plot([Series("ours", [None])], ["t0"], [None]).startswith('<p class="muted no-data">')


def test_plot_escapes_labels():
    from airflow_audience_provider.ui.svg import Series, line_plot

    svg = line_plot([Series("<b>", [1])], ["<script>"], ['"><x'])
    assert "<script>" not in svg and "<b>" not in svg and '"><x' not in svg
