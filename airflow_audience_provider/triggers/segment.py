"""Segment triggers: wait in the triggerer on the same hook status functions poke() uses."""

from __future__ import annotations

from airflow_audience_provider.triggers.base import AudiencePollingTrigger, HookStatus


class SegmentAudienceComputedTrigger(AudiencePollingTrigger):
    """Wait until a Segment audience has computed (``Live``, ``Not Computing``, ``Disabled``) or failed.

    ``status_kwargs``: ``audience_id`` and ``space_id``; see
    :meth:`~airflow_audience_provider.hooks.segment.SegmentHook.audience_compute_status`.
    """

    vendor = "segment"
    subject = "computation of Segment audience {audience_id}"

    @staticmethod
    def polls() -> HookStatus:
        from airflow_audience_provider.hooks.segment import SegmentHook  # the hook imports requests: not at DAG parse

        return HookStatus(SegmentHook, SegmentHook.audience_compute_status)


class SegmentAudiencePreviewTrigger(AudiencePollingTrigger):
    """Wait until a Segment audience preview has completed or failed.

    ``status_kwargs``: ``preview_id`` and ``space_id``; see
    :meth:`~airflow_audience_provider.hooks.segment.SegmentHook.audience_preview_status`.
    """

    vendor = "segment"
    subject = "Segment audience preview {preview_id}"

    @staticmethod
    def polls() -> HookStatus:
        from airflow_audience_provider.hooks.segment import SegmentHook  # the hook imports requests: not at DAG parse

        return HookStatus(SegmentHook, SegmentHook.audience_preview_status)


class SegmentAudienceEditableTrigger(AudiencePollingTrigger):
    """Wait until a Segment audience's edit lock has cleared (its status is no longer
    ``Locked``, ``Preparing``, ``Computing`` or ``Backfilling``).

    ``status_kwargs``: ``audience_id`` and ``space_id``; see
    :meth:`~airflow_audience_provider.hooks.segment.SegmentHook.audience_edit_status`.
    """

    vendor = "segment"
    subject = "the edit lock of Segment audience {audience_id}"

    @staticmethod
    def polls() -> HookStatus:
        from airflow_audience_provider.hooks.segment import SegmentHook  # the hook imports requests: not at DAG parse

        return HookStatus(SegmentHook, SegmentHook.audience_edit_status)
