"""Segment triggers: wait in the triggerer on the same hook status functions poke() uses."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from airflow_audience_provider.core.results import PollResult
from airflow_audience_provider.triggers.base import AudiencePollingTrigger, HookStatus

if TYPE_CHECKING:
    from airflow_audience_provider.hooks.segment import SegmentHook


class SegmentTrigger(AudiencePollingTrigger):
    """A wait on one status method of :class:`~airflow_audience_provider.hooks.segment.SegmentHook`,
    named by the subclass's :meth:`status_method`."""

    vendor = "segment"

    @staticmethod
    def status_method(hook_class: type[SegmentHook]) -> Callable[..., PollResult]:
        """The status method of ``hook_class`` this trigger polls."""
        raise NotImplementedError

    @classmethod
    def polls(cls) -> HookStatus:
        from airflow_audience_provider.hooks.segment import SegmentHook  # the hook imports requests: not at DAG parse

        return HookStatus(SegmentHook, cls.status_method(SegmentHook))


class SegmentAudienceComputedTrigger(SegmentTrigger):
    """Wait until a Segment audience has computed (``Live``, ``Not Computing``, ``Disabled``) or failed.

    ``status_kwargs``: ``audience_id`` and ``space_id``; see
    :meth:`~airflow_audience_provider.hooks.segment.SegmentHook.audience_compute_status`.
    """

    subject = "computation of Segment audience {audience_id}"

    @staticmethod
    def status_method(hook_class: type[SegmentHook]) -> Callable[..., PollResult]:
        return hook_class.audience_compute_status


class SegmentAudiencePreviewTrigger(SegmentTrigger):
    """Wait until a Segment audience preview has completed or failed.

    ``status_kwargs``: ``preview_id`` and ``space_id``; see
    :meth:`~airflow_audience_provider.hooks.segment.SegmentHook.audience_preview_status`.
    """

    subject = "Segment audience preview {preview_id}"

    @staticmethod
    def status_method(hook_class: type[SegmentHook]) -> Callable[..., PollResult]:
        return hook_class.audience_preview_status


class SegmentAudienceEditableTrigger(SegmentTrigger):
    """Wait until a Segment audience's edit lock has cleared (its status is no longer
    ``Locked``, ``Preparing``, ``Computing`` or ``Backfilling``).

    ``status_kwargs``: ``audience_id`` and ``space_id``; see
    :meth:`~airflow_audience_provider.hooks.segment.SegmentHook.audience_edit_status`.
    """

    subject = "the edit lock of Segment audience {audience_id}"

    @staticmethod
    def status_method(hook_class: type[SegmentHook]) -> Callable[..., PollResult]:
        return hook_class.audience_edit_status
