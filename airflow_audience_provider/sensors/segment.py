"""Segment sensors."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from airflow_audience_provider.connections import SEGMENT
from airflow_audience_provider.links.segment import SegmentAudienceLink
from airflow_audience_provider.sensors.base import AudienceWaitSensor
from airflow_audience_provider.triggers.segment import SegmentAudienceComputedTrigger

if TYPE_CHECKING:
    from airflow.sdk import Context


class SegmentAudienceComputedSensor(AudienceWaitSensor):
    """Wait until a Segment Engage audience has computed.

    Works in poke, reschedule and deferrable modes, all judging the audience's ``status`` by
    :data:`~airflow_audience_provider.hooks.segment.SEGMENT_AUDIENCE_STATUS`: ``Live``,
    ``Not Computing`` and ``Disabled`` are done, except for an edited BATCH audience: Segment
    shows it ``Live`` at once, applies the edit at its next scheduled compute and reports no
    compute time, so it counts as computed ``batch_compute_wait`` seconds (default 24 h) after
    ``changed_at`` (default: the audience's ``updatedAt``); ``Failed`` and ``Error`` fail the task (not
    retried: waiting again finds the same failure); ``Preparing``, ``Computing``,
    ``Backfilling``, ``Awaiting Destinations`` and ``Locked`` keep waiting. Statuses the provider
    does not know are logged verbatim and waited on until ``timeout``, which ends the task with a
    message naming the audience and the last status seen.

    Segment advises allowing up to 24 hours for a new audience's first computation; size
    ``timeout`` accordingly and prefer ``deferrable=True`` or ``mode="reschedule"``. Polling
    faster than every few minutes gains nothing (the app refreshes progress about every 10
    minutes) and the audience read is limited to 100 requests per minute.

    .. seealso:: :ref:`howto/operator:SegmentAudienceComputedSensor`

    :param audience_id: the audience's id (templated), e.g.
        ``"{{ ti.xcom_pull(task_ids='upsert')['audience_id'] }}"``.
    :param space_id: the Engage space (templated); default: the connection's ``space_id``.
    :param segment_conn_id: the Segment connection.
    :param changed_at: when the change to wait for was made, RFC 3339 (templated); default: the
        audience's ``updatedAt``.
    :param batch_compute_wait: seconds after a change from which an edited BATCH audience counts
        as computed (default 24 h; keep ``timeout`` above it).
    :param emit_asset: when computed, record an Asset event ``segment://<space>/audience/<id>``
        (with the size and status) through the alias ``asset_alias``.
    :param asset_alias: defaults to ``segment-audiences``.
    :param poke_interval: seconds between checks (default 300).
    :param timeout: seconds to wait at most (default 30 h).
    """

    spec = SEGMENT
    trigger_class = SegmentAudienceComputedTrigger
    template_fields: Sequence[str] = ("audience_id", "space_id", "changed_at", "segment_conn_id")
    operator_extra_links = (SegmentAudienceLink(),)
    ui_color = "#e8f5e9"
    default_asset_alias = "segment-audiences"
    emits_assets = True

    def __init__(
        self,
        *,
        audience_id: str,
        space_id: str | None = None,
        segment_conn_id: str = SEGMENT.default_conn_name,
        poke_interval: float = 5 * 60,
        timeout: float = 30 * 60 * 60,
        changed_at: str | None = None,
        batch_compute_wait: float | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(poke_interval=poke_interval, timeout=timeout, **kwargs)
        self.audience_id = audience_id
        self.space_id = space_id
        self.segment_conn_id = segment_conn_id
        self.changed_at = changed_at
        self.batch_compute_wait = batch_compute_wait

    def status_kwargs(self, context: Context) -> dict[str, Any]:
        # The space is resolved here, so the trigger's kwargs name it even when the task did not.
        kwargs: dict[str, Any] = {"audience_id": self.audience_id, "space_id": self.hook.space(self.space_id)}
        if self.changed_at and str(self.changed_at).strip() not in ("None", "null"):
            kwargs["changed_at"] = str(self.changed_at)
        if self.batch_compute_wait is not None:
            kwargs["batch_compute_wait"] = float(self.batch_compute_wait)
        return kwargs

    def execute(self, context: Context) -> Any:
        hook = self.hook
        SegmentAudienceLink.persist(context, hook.audience_url(hook.space(self.space_id), self.audience_id))
        return super().execute(context)

    def on_done(self, context: Context, result: dict[str, Any]) -> None:
        hook = self.hook
        space = result.get("space_id") or hook.space(self.space_id)
        uri = result.get("asset_uri") or hook.audience_asset_uri(space, self.audience_id)
        result["asset_uri"] = uri
        SegmentAudienceLink.persist(context, result.get("url"))
        self.emit_asset_event(
            context,
            uri,
            {
                "object_name": result.get("name"),
                "vendor_size": result.get("size"),
                "state": result.get("status"),
                "action": "computed",
                "link": result.get("url"),
            },
        )
