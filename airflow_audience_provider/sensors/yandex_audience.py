"""Yandex.Audience sensors."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from airflow_audience_provider.connections import YANDEX_AUDIENCE
from airflow_audience_provider.links.yandex_audience import YandexAudienceSegmentLink
from airflow_audience_provider.sensors.base import AudienceWaitSensor
from airflow_audience_provider.triggers.yandex_audience import YandexAudienceSegmentProcessedTrigger

if TYPE_CHECKING:
    from airflow.sdk import Context


class YandexAudienceSegmentProcessedSensor(AudienceWaitSensor):
    """Wait until a Yandex.Audience segment is ``processed`` (usable in Direct and Adfox).

    Works in poke, reschedule and deferrable modes. ``processing_failed`` fails the task;
    ``few_data`` (too few users matched) fails it too, with advice to add data or reprocess; an
    unconfirmed draft (``uploaded``) fails at once because it never progresses. ``is_processed``
    and ``is_updated`` mean still working; any other status is logged verbatim and waited on until
    ``timeout``, which ends the task naming the last status seen.

    Yandex has no GET-one-segment call: every poke lists the login's segments, one request of its
    daily budget of 5000, so the default interval is five minutes. Processing usually takes up to
    about two hours, hence the four-hour default timeout.

    .. seealso:: :ref:`howto/operator:YandexAudienceSegmentProcessedSensor`

    :param segment_id: the segment's id (templated), e.g.
        ``"{{ ti.xcom_pull(task_ids='upload')['segment_id'] }}"``.
    :param yandex_audience_conn_id: the Yandex.Audience connection.
    :param poke_interval: seconds between checks (default 300).
    :param timeout: seconds to wait at most (default 4 h).
    :param emit_asset: when processed, record an Asset event ``yandex-audience://<login>/segment/<id>``
        through the alias ``asset_alias`` (default ``yandex-audience-segments``).
    :return: ``{"segment_id", "name", "type", "status", "item_quantity", "matched_quantity",
        "cookies_matched_quantity", "url", "asset_uri"}``.
    """

    spec = YANDEX_AUDIENCE
    trigger_class = YandexAudienceSegmentProcessedTrigger
    template_fields: Sequence[str] = ("segment_id", "yandex_audience_conn_id")
    operator_extra_links = (YandexAudienceSegmentLink(),)
    ui_color = "#fff3cc"
    default_asset_alias = "yandex-audience-segments"
    emits_assets = True

    def __init__(
        self,
        *,
        segment_id: int | str,
        yandex_audience_conn_id: str = YANDEX_AUDIENCE.default_conn_name,
        poke_interval: float = 300,
        timeout: float = 4 * 60 * 60,
        **kwargs: Any,
    ) -> None:
        super().__init__(poke_interval=poke_interval, timeout=timeout, **kwargs)
        self.segment_id = segment_id
        self.yandex_audience_conn_id = yandex_audience_conn_id

    def status_kwargs(self, context: Context) -> dict[str, Any]:
        return {"segment_id": str(self.segment_id).strip()}

    def execute(self, context: Context) -> Any:
        hook = self.hook
        YandexAudienceSegmentLink.persist(context, hook.segment_url(str(self.segment_id).strip()))
        return super().execute(context)

    def on_done(self, context: Context, result: dict[str, Any]) -> None:
        uri = result.get("asset_uri")
        if uri:
            self.emit_asset_event(
                context,
                uri,
                {
                    "object_name": result.get("name"),
                    "state": result.get("status"),
                    "vendor_size": result.get("item_quantity"),
                    "match_rate": _match_rate(result),
                    "action": "processed",
                    "link": result.get("url"),
                },
            )


def _match_rate(result: dict[str, Any]) -> float | None:
    """Matched users per uploaded item, when Yandex reports both (None otherwise)."""
    items, matched = result.get("item_quantity"), result.get("matched_quantity")
    if not isinstance(items, int) or not isinstance(matched, int) or items <= 0:
        return None
    return min(1.0, matched / items)
