"""Yandex.Audience triggers."""

from __future__ import annotations

from airflow_audience_provider.triggers.base import AudiencePollingTrigger


class YandexAudienceSegmentProcessedTrigger(AudiencePollingTrigger):
    """Wait in the triggerer until a Yandex.Audience segment is ``processed`` (or fails).

    ``status_kwargs``: ``segment_id``. The status function is
    :meth:`~airflow_audience_provider.hooks.yandex_audience.YandexAudienceHook.segment_status`;
    each poll costs one request of the login's daily budget, so poll every few minutes.
    """

    hook_path = "airflow_audience_provider.hooks.yandex_audience.YandexAudienceHook"
    status_method = "segment_status"
    vendor = "yandex_audience"
    subject = "processing of Yandex.Audience segment {segment_id}"
