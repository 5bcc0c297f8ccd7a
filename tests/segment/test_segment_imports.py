"""Importing the Segment operator, sensor, trigger and link modules stays cheap (DAG parsing imports them)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

FORBIDDEN = (
    "requests",
    "airflow_audience_provider.hooks.segment",
    "airflow_audience_provider.core.transport",
    "airflow_audience_provider.sandbox.segment",
    "starlette",
    "uvicorn",
)

_PROBE = """
import json, sys
from airflow.sdk import BaseOperator, BaseOperatorLink, BaseSensorOperator
from airflow.providers.common.compat.sdk import conf
import airflow.triggers.base
before = set(sys.modules)
import airflow_audience_provider.operators.segment
import airflow_audience_provider.sensors.segment
import airflow_audience_provider.triggers.segment
import airflow_audience_provider.links.segment
print(json.dumps({"before": sorted(before), "added": sorted(set(sys.modules) - before)}))
"""


def test_segment_modules_import_no_hook_or_http_stack():
    out = subprocess.run(
        [sys.executable, "-c", _PROBE], capture_output=True, text=True, check=True, timeout=120, env=os.environ.copy()
    )
    loaded = json.loads(out.stdout.strip().splitlines()[-1])
    assert "requests" not in loaded["before"]  # so the check below means something for requests
    for name in FORBIDDEN:
        assert name not in loaded["added"], name
