"""Yandex.Audience triggers."""

from __future__ import annotations

from airflow_audience_provider.triggers.base import AudiencePollingTrigger, HookStatus


class YandexAudienceSegmentProcessedTrigger(AudiencePollingTrigger):
    """Wait in the triggerer until a Yandex.Audience segment is ``processed`` (or fails).

    ``status_kwargs``: ``segment_id``. The status function is
    :meth:`~airflow_audience_provider.hooks.yandex_audience.YandexAudienceHook.segment_status`;
    each poll costs one request of the login's daily budget, so poll every few minutes.
    """

    vendor = "yandex_audience"
    subject = "processing of Yandex.Audience segment {segment_id}"

    @staticmethod
    def polls() -> HookStatus:
        # the hook imports requests: not at DAG parse
        from airflow_audience_provider.hooks.yandex_audience import YandexAudienceHook

        return HookStatus(YandexAudienceHook, YandexAudienceHook.segment_status)
