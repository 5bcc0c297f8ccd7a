"""Links from Yandex.Audience tasks to the segment in the Audience web interface."""

from __future__ import annotations

from airflow_audience_provider.links.base import AudienceLink


class YandexAudienceSegmentLink(AudienceLink):
    """Opens the segment the task created, changed or waited for."""

    name = "Yandex.Audience segment"
    key = "yandex_audience_segment_url"
