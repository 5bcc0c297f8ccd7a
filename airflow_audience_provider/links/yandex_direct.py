"""Links from Yandex Direct tasks to the retargeting list in the Direct web interface."""

from __future__ import annotations

from airflow_audience_provider.links.base import AudienceLink


class YandexDirectRetargetingListLink(AudienceLink):
    """Opens the retargeting list the task created, changed or attached to ad groups."""

    name = "Yandex Direct retargeting list"
    key = "yandex_direct_retargeting_list_url"
