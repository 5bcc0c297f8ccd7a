"""Prints the live test's table (DAG, run, state, wall time, tasks deferred) at the end of the session."""

from __future__ import annotations

from typing import Any


def pytest_terminal_summary(terminalreporter: Any) -> None:
    from live_deployment import RESULTS

    if not RESULTS.rows:
        return
    terminalreporter.section("live Airflow: example DAG runs")
    for line in RESULTS.table():
        terminalreporter.write_line(line)
