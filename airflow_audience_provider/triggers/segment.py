"""Segment triggers: wait in the triggerer on the same hook status functions poke() uses."""

from __future__ import annotations

from airflow_audience_provider.triggers.base import AudiencePollingTrigger


class SegmentAudienceComputedTrigger(AudiencePollingTrigger):
    """Wait until a Segment audience has computed (``Live``, ``Not Computing``, ``Disabled``) or failed.

    ``status_kwargs``: ``audience_id`` and ``space_id``; see
    :meth:`~airflow_audience_provider.hooks.segment.SegmentHook.audience_compute_status`.
    """

    hook_path = "airflow_audience_provider.hooks.segment.SegmentHook"
    status_method = "audience_compute_status"
    vendor = "segment"
    subject = "computation of Segment audience {audience_id}"


class SegmentAudiencePreviewTrigger(AudiencePollingTrigger):
    """Wait until a Segment audience preview has completed or failed.

    ``status_kwargs``: ``preview_id`` and ``space_id``; see
    :meth:`~airflow_audience_provider.hooks.segment.SegmentHook.audience_preview_status`.
    """

    hook_path = "airflow_audience_provider.hooks.segment.SegmentHook"
    status_method = "audience_preview_status"
    vendor = "segment"
    subject = "Segment audience preview {preview_id}"


class SegmentAudienceEditableTrigger(AudiencePollingTrigger):
    """Wait until a Segment audience's edit lock has cleared (its status is no longer
    ``Locked``, ``Preparing``, ``Computing`` or ``Backfilling``).

    ``status_kwargs``: ``audience_id`` and ``space_id``; see
    :meth:`~airflow_audience_provider.hooks.segment.SegmentHook.audience_edit_status`.
    """

    hook_path = "airflow_audience_provider.hooks.segment.SegmentHook"
    status_method = "audience_edit_status"
    vendor = "segment"
    subject = "the edit lock of Segment audience {audience_id}"
