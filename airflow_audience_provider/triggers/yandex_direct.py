"""Yandex Direct triggers."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from airflow_audience_provider.triggers.base import AudiencePollingTrigger

if TYPE_CHECKING:
    from airflow_audience_provider.core.results import PollResult
    from airflow_audience_provider.hooks.yandex_direct import YandexDirectHook


class YandexDirectSegmentsListedTrigger(AudiencePollingTrigger):
    """Wait in the triggerer until Yandex Direct lists Yandex.Audience segments as retargeting goals.

    A segment shows in ``GetRetargetingGoals`` only once it is processed and owned by or granted
    to the Direct login, and a fresh grant may take a while to show. ``status_kwargs``:
    ``segments`` (ids, names or dicts, as the retargeting-list operator takes them) and
    ``client_login``. The status function is
    :meth:`~airflow_audience_provider.hooks.yandex_direct.YandexDirectHook.audience_goals_status`;
    each poll costs a few Direct points.
    """

    vendor = "yandex_direct"
    subject = "Yandex Direct to list the Yandex.Audience segments {segments}"

    @classmethod
    def build_hook(cls, conn_id: str) -> YandexDirectHook:
        # the hook imports requests: not at DAG parse
        from airflow_audience_provider.hooks.yandex_direct import YandexDirectHook

        return YandexDirectHook(conn_id)

    @staticmethod
    def status_function(hook: YandexDirectHook) -> Callable[..., PollResult]:
        return hook.audience_goals_status
