"""Lytics triggers."""

from __future__ import annotations

from airflow_audience_provider.triggers.base import AudiencePollingTrigger, HookStatus


class LyticsReevaluationTrigger(AudiencePollingTrigger):
    """Wait in the triggerer until a Lytics segment reevaluation completes or fails.

    ``status_kwargs``: ``segment_id``, ``requested_at`` (RFC 3339), and optionally ``job_id``,
    ``settle_polls``, ``settle_interval`` and ``size_history`` (the size readings so far, kept
    in place between polls); see
    :meth:`~airflow_audience_provider.hooks.lytics.LyticsHook.reevaluation_status` for the
    heuristic that ends the wait.
    """

    vendor = "lytics"
    subject = "reevaluation of Lytics segment {segment_id}"

    @staticmethod
    def polls() -> HookStatus:
        from airflow_audience_provider.hooks.lytics import LyticsHook  # the hook imports requests: not at DAG parse

        return HookStatus(LyticsHook, LyticsHook.reevaluation_status)
