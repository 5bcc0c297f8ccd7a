"""Criteo triggers."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from airflow_audience_provider.domain.criteo_cycle import COMPUTATION_HOURS_UTC, PROPAGATION_DELAY
from airflow_audience_provider.triggers.base import AudiencePollingTrigger, HookStatus


def _text(value: Any) -> str:
    return str(value or "")


def _optional_text(value: Any) -> str | None:
    """An optional id; a template that rendered nothing is None."""
    return str(value) if value else None


def _hours(value: Any) -> list[float]:
    return [float(hour) for hour in value]


def _optional_float(value: Any) -> float | None:
    return None if value in (None, "") else float(value)


def _optional_int(value: Any) -> int | None:
    """An optional count; a template that rendered nothing ("", "None") is None."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "none", "null")):
        return None
    return int(value)


class CriteoComputationWindowTrigger(AudiencePollingTrigger):
    """Wait in the triggerer until changes uploaded to Criteo are live in campaigns.

    Live = the first audience computation at or after ``uploaded_at`` (00:00 and 12:00 UTC by default)
    plus the propagation delay (5 h by default), optionally confirmed by the segment's contact-list
    statistics; see :meth:`~airflow_audience_provider.hooks.criteo.CriteoHook.computation_status`.
    The target is computed from the kwargs alone, so a triggerer restart resumes the same wait.

    The status arguments are the trigger's own kwargs (``status_fields``), named like the sensor's
    parameters so that, when the sensor starts in the triggerer (``start_from_trigger``), the
    templated ones (``uploaded_at``, ``segment_id``, ``owner_id``, ``min_identifiers``,
    ``criteo_conn_id``) are rendered at the start of ``run()``.
    """

    vendor = "criteo"
    subject = "Criteo computation of the changes uploaded at {uploaded_at}"
    conn_field = "criteo_conn_id"
    status_fields = {
        "uploaded_at": _text,
        "hours_utc": _hours,
        "interval_seconds": _optional_float,
        "propagation_delay_seconds": float,
        "segment_id": _optional_text,
        "owner_id": _optional_text,
        "min_identifiers": _optional_int,
    }

    @staticmethod
    def polls() -> HookStatus:
        from airflow_audience_provider.hooks.criteo import CriteoHook  # the hook imports requests: not at DAG parse

        return HookStatus(CriteoHook, CriteoHook.computation_status)

    def __init__(
        self,
        criteo_conn_id: str = "criteo_default",
        uploaded_at: str = "",
        hours_utc: Sequence[float] = COMPUTATION_HOURS_UTC,
        interval_seconds: float | None = None,
        propagation_delay_seconds: float = PROPAGATION_DELAY.total_seconds(),
        segment_id: str | None = None,
        owner_id: str | None = None,
        min_identifiers: int | str | None = None,
        poll_interval: float = 300.0,
        deadline: float | None = None,
        max_consecutive_failures: int = 3,
    ) -> None:
        super().__init__(
            conn_id=criteo_conn_id,
            status_kwargs={},
            poll_interval=poll_interval,
            deadline=deadline,
            max_consecutive_failures=max_consecutive_failures,
        )
        self.criteo_conn_id = criteo_conn_id
        self.uploaded_at = uploaded_at
        self.hours_utc = _hours(hours_utc)
        self.interval_seconds = _optional_float(interval_seconds)
        self.propagation_delay_seconds = float(propagation_delay_seconds)
        self.segment_id = segment_id
        self.owner_id = owner_id
        self.min_identifiers = min_identifiers
