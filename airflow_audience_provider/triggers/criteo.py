"""Criteo triggers."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from airflow_audience_provider.hooks.criteo_cycle import COMPUTATION_HOURS_UTC, PROPAGATION_DELAY
from airflow_audience_provider.triggers.base import AudiencePollingTrigger


class CriteoComputationWindowTrigger(AudiencePollingTrigger):
    """Wait in the triggerer until changes uploaded to Criteo are live in campaigns.

    Live = the first audience computation at or after ``uploaded_at`` (00:00 and 12:00 UTC by default)
    plus the propagation delay (5 h by default), optionally confirmed by the segment's contact-list
    statistics; see :meth:`~airflow_audience_provider.hooks.criteo.CriteoHook.computation_status`.
    The target is computed from the kwargs alone, so a triggerer restart resumes the same wait.

    The kwargs carry the sensor's parameter names so that, when the sensor starts in the triggerer
    (``start_from_trigger``), the triggerer renders the templated ones (``uploaded_at``,
    ``segment_id``, ``owner_id``, ``criteo_conn_id``) at the start of ``run()``.
    """

    hook_path = "airflow_audience_provider.hooks.criteo.CriteoHook"
    status_method = "computation_status"
    vendor = "criteo"
    subject = "Criteo audience computation"

    def __init__(
        self,
        criteo_conn_id: str = "criteo_default",
        uploaded_at: str = "",
        hours_utc: Sequence[float] = COMPUTATION_HOURS_UTC,
        interval_seconds: float | None = None,
        propagation_delay_seconds: float = PROPAGATION_DELAY.total_seconds(),
        segment_id: str | None = None,
        owner_id: str | None = None,
        min_identifiers: int | None = None,
        poll_interval: float = 300.0,
        deadline: float | None = None,
        max_consecutive_failures: int = 3,
    ) -> None:
        self.criteo_conn_id = criteo_conn_id
        self.uploaded_at = uploaded_at
        self.hours_utc = [float(h) for h in hours_utc]
        self.interval_seconds = None if interval_seconds in (None, "") else float(interval_seconds)
        self.propagation_delay_seconds = float(propagation_delay_seconds)
        self.segment_id = segment_id
        self.owner_id = owner_id
        self.min_identifiers = min_identifiers
        super().__init__(
            conn_id=criteo_conn_id,
            status_kwargs={},
            poll_interval=poll_interval,
            deadline=deadline,
            max_consecutive_failures=max_consecutive_failures,
        )
        self.status_kwargs = self.current_status_kwargs()

    def current_status_kwargs(self) -> dict[str, Any]:
        """The status function's arguments from the (possibly just rendered) attributes."""
        minimum = self.min_identifiers
        if isinstance(minimum, str) and minimum.strip().lower() in ("", "none", "null"):
            minimum = None  # a template that rendered nothing
        return {
            "uploaded_at": str(self.uploaded_at or ""),
            "hours_utc": list(self.hours_utc),
            "interval_seconds": self.interval_seconds,
            "propagation_delay_seconds": self.propagation_delay_seconds,
            "segment_id": str(self.segment_id) if self.segment_id else None,
            "owner_id": str(self.owner_id) if self.owner_id else None,
            "min_identifiers": None if minimum is None else int(minimum),
        }

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "criteo_conn_id": self.criteo_conn_id,
                "uploaded_at": self.uploaded_at,
                "hours_utc": list(self.hours_utc),
                "interval_seconds": self.interval_seconds,
                "propagation_delay_seconds": self.propagation_delay_seconds,
                "segment_id": self.segment_id,
                "owner_id": self.owner_id,
                "min_identifiers": self.min_identifiers,
                "poll_interval": self.poll_interval,
                "deadline": self.deadline,
                "max_consecutive_failures": self.max_consecutive_failures,
            },
        )

    def describe_subject(self) -> str:
        return f"Criteo computation of the changes uploaded at {self.uploaded_at}"

    def resolve_arguments(self) -> None:
        # Rendering (start_from_trigger) happens after __init__: read the attributes again.
        self.conn_id = self.criteo_conn_id
        self.status_kwargs = self.current_status_kwargs()
