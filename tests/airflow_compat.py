"""Airflow names the tests need, from where the installed Airflow keeps them.

The suite runs on the newest Airflow 3.x and on the oldest supported (3.1, ``make test-matrix``);
3.1 lacks several ``airflow.sdk`` names. One place resolves them, so a test imports
``from airflow_compat import TaskDeferred`` and works on both.
"""

from __future__ import annotations

from airflow.providers.common.compat.sdk import (  # noqa: F401 - re-exported
    AirflowFailException,
    AirflowSensorTimeout,
    TaskDeferred,
    conf,
)

try:
    from airflow.sdk.exceptions import AirflowRescheduleException
except ImportError:  # Airflow 3.1
    from airflow.exceptions import AirflowRescheduleException  # type: ignore[no-redef]  # noqa: F401

try:
    from airflow.sdk import serde  # 3.2+: trigger kwargs go through the task SDK's serde
except ImportError:  # Airflow 3.1
    from airflow.serialization import serde  # type: ignore[no-redef]  # noqa: F401

try:
    from airflow.dag_processing.dagbag import DagBag
except ImportError:  # Airflow 3.1
    from airflow.models.dagbag import DagBag  # type: ignore[no-redef]  # noqa: F401
