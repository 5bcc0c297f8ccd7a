"""Every operator, sensor, trigger and link module imports cheaply: DAG parsing imports them.

One fresh interpreter loads what any operator needs from Airflow, then imports each module in
turn and records what that import added; a module that pulls in an HTTP client, a dataframe
library, a vendor hook or the contact-list engine is named in the failure.
"""

from __future__ import annotations

import json
import os
import pkgutil
import subprocess
import sys

import airflow_audience_provider.links
import airflow_audience_provider.operators
import airflow_audience_provider.sensors
import airflow_audience_provider.triggers

#: third-party packages a DAG parse must not load through this provider
HEAVY_PACKAGES = ("requests", "tenacity", "polars", "phonenumbers", "redis", "pyarrow", "fastapi", "starlette")
#: provider modules that load them or do work only a running task needs
TASK_ONLY_PREFIXES = (
    "airflow_audience_provider.hooks",
    "airflow_audience_provider.core.transport",
    "airflow_audience_provider.core.auth",
    "airflow_audience_provider.core.hook",
    "airflow_audience_provider.identifiers",
    "airflow_audience_provider.operators.senders",
    "airflow_audience_provider.sandbox",
)


def parse_time_modules() -> list[str]:
    names = []
    for package in (
        airflow_audience_provider.operators,
        airflow_audience_provider.sensors,
        airflow_audience_provider.triggers,
        airflow_audience_provider.links,
    ):
        names.append(package.__name__)
        for info in pkgutil.iter_modules(package.__path__, package.__name__ + "."):
            if not info.ispkg:  # operators.senders runs in the task: it imports the hooks
                names.append(info.name)
    return names


_PROBE = """
import importlib, json, sys
from airflow.sdk import BaseOperator, BaseOperatorLink, BaseSensorOperator  # what any operator needs
from airflow.providers.common.compat.sdk import conf
import airflow.triggers.base
baseline = set(sys.modules)
added = {}
for name in sys.argv[1:]:
    before = set(sys.modules)
    importlib.import_module(name)
    added[name] = sorted(set(sys.modules) - before)
print(json.dumps({"baseline": sorted(baseline), "added": added}))
"""


def test_operator_sensor_trigger_and_link_modules_import_nothing_heavy():
    modules = parse_time_modules()
    assert "airflow_audience_provider.sensors.criteo" in modules and len(modules) >= 20
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, *modules],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
        env=os.environ.copy(),
    )
    loaded = json.loads(out.stdout.strip().splitlines()[-1])
    baseline = {name.split(".")[0] for name in loaded["baseline"]}
    # Airflow itself imports tenacity (and, on 3.1, phonenumbers); the check below can only catch
    # packages Airflow did not load already, and these must be among them for it to mean something
    assert {"requests", "polars", "redis", "pyarrow"}.isdisjoint(baseline)
    offenders = {
        module: [name for name in added if name.split(".")[0] in HEAVY_PACKAGES or name.startswith(TASK_ONLY_PREFIXES)]
        for module, added in loaded["added"].items()
    }
    assert {module: names for module, names in offenders.items() if names} == {}
