"""Lytics triggers."""

from __future__ import annotations

from airflow_audience_provider.triggers.base import AudiencePollingTrigger


class LyticsReevaluationTrigger(AudiencePollingTrigger):
    """Wait in the triggerer until a Lytics segment reevaluation completes or fails.

    ``status_kwargs``: ``segment_id``, ``requested_at`` (RFC 3339) and optionally ``job_id``;
    see :meth:`~airflow_audience_provider.hooks.lytics.LyticsHook.reevaluation_status` for
    the completion signal.
    """

    hook_path = "airflow_audience_provider.hooks.lytics.LyticsHook"
    status_method = "reevaluation_status"
    vendor = "lytics"
    subject = "reevaluation of Lytics segment {segment_id}"
