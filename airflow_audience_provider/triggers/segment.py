"""Segment triggers: wait in the triggerer on the same hook status functions poke() uses."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from airflow_audience_provider.triggers.base import AudiencePollingTrigger

if TYPE_CHECKING:
    from airflow_audience_provider.core.results import PollResult
    from airflow_audience_provider.hooks.segment import SegmentHook


class _SegmentTrigger(AudiencePollingTrigger):
    """The Segment hook for every Segment wait."""

    vendor = "segment"

    @classmethod
    def build_hook(cls, conn_id: str) -> SegmentHook:
        from airflow_audience_provider.hooks.segment import SegmentHook  # the hook imports requests: not at DAG parse

        return SegmentHook(conn_id)


class SegmentAudienceComputedTrigger(_SegmentTrigger):
    """Wait until a Segment audience has computed (``Live``, ``Not Computing``, ``Disabled``) or failed.

    ``status_kwargs``: ``audience_id`` and ``space_id``; see
    :meth:`~airflow_audience_provider.hooks.segment.SegmentHook.audience_compute_status`.
    """

    subject = "computation of Segment audience {audience_id}"

    @staticmethod
    def status_function(hook: SegmentHook) -> Callable[..., PollResult]:
        return hook.audience_compute_status


class SegmentAudiencePreviewTrigger(_SegmentTrigger):
    """Wait until a Segment audience preview has completed or failed.

    ``status_kwargs``: ``preview_id`` and ``space_id``; see
    :meth:`~airflow_audience_provider.hooks.segment.SegmentHook.audience_preview_status`.
    """

    subject = "Segment audience preview {preview_id}"

    @staticmethod
    def status_function(hook: SegmentHook) -> Callable[..., PollResult]:
        return hook.audience_preview_status


class SegmentAudienceEditableTrigger(_SegmentTrigger):
    """Wait until a Segment audience's edit lock has cleared (its status is no longer
    ``Locked``, ``Preparing``, ``Computing`` or ``Backfilling``).

    ``status_kwargs``: ``audience_id`` and ``space_id``; see
    :meth:`~airflow_audience_provider.hooks.segment.SegmentHook.audience_edit_status`.
    """

    subject = "the edit lock of Segment audience {audience_id}"

    @staticmethod
    def status_function(hook: SegmentHook) -> Callable[..., PollResult]:
        return hook.audience_edit_status
