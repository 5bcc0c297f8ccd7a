"""Yandex Direct triggers."""

from __future__ import annotations

from airflow_audience_provider.triggers.base import AudiencePollingTrigger, HookStatus


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

    @staticmethod
    def polls() -> HookStatus:
        # the hook imports requests: not at DAG parse
        from airflow_audience_provider.hooks.yandex_direct import YandexDirectHook

        return HookStatus(YandexDirectHook, YandexDirectHook.audience_goals_status)
