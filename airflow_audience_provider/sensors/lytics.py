"""Lytics sensors."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from airflow_audience_provider.connections import LYTICS
from airflow_audience_provider.links.lytics import LyticsSegmentLink
from airflow_audience_provider.sensors.base import AudienceWaitSensor
from airflow_audience_provider.triggers.lytics import LyticsReevaluationTrigger

if TYPE_CHECKING:
    from airflow.sdk import Context


class LyticsSegmentReevaluatedSensor(AudienceWaitSensor):
    """Wait until a Lytics segment reevaluation has finished.

    Lytics documents no completion signal, so this is a heuristic (documented in
    :mod:`airflow_audience_provider.hooks.lytics`): the wait ends when a job of the segment
    created since the request completes, or when the segment's size has stayed the same over
    ``settle_polls`` readings at least ``settle_interval`` seconds apart, whichever comes first.
    A failed Lytics job (``failed``, ``fault-N``, ``deleted``) or an invalid segment fails the
    task; unknown job states are logged verbatim and waited on until ``timeout``, which ends the
    task with a message naming the segment and the last state seen.

    Works in poke and deferrable modes. In reschedule mode the size readings do not survive
    between tries, so only a job of the segment can end the wait there.

    .. seealso:: :ref:`howto/operator:LyticsSegmentReevaluatedSensor`

    :param segment_id: the segment's id (templated), e.g.
        ``"{{ ti.xcom_pull('reevaluate')['segment_id'] }}"``.
    :param requested_at: when the reevaluation was requested, RFC 3339 (templated); jobs
        created before it are ignored. Take it from the reevaluate operator's result.
    :param job_id: a job you know belongs to the reevaluation, if any (templated).
    :param settle_polls: equal size readings that count as settled (0: the job signal only;
        default 3).
    :param settle_interval: the least seconds between two size readings that count (default
        600); make it longer than the account's reevaluations take.
    :param lytics_conn_id: the Lytics connection.
    :param emit_asset: when the reevaluation is done, record an Asset event
        ``lytics://<account>/segment/<id>`` (with the new size) through the alias ``asset_alias``.
    :param asset_alias: defaults to ``lytics-segments``.
    :param poke_interval: seconds between checks (default 60).
    :param timeout: seconds to wait at most (default 6 h).
    """

    spec = LYTICS
    trigger_class = LyticsReevaluationTrigger
    template_fields: Sequence[str] = ("segment_id", "requested_at", "job_id", "lytics_conn_id")
    operator_extra_links = (LyticsSegmentLink(),)
    ui_color = "#e6f0ff"
    default_asset_alias = "lytics-segments"
    emits_assets = True

    def __init__(
        self,
        *,
        segment_id: str,
        requested_at: str,
        job_id: str | None = None,
        lytics_conn_id: str = LYTICS.default_conn_name,
        poke_interval: float = 60,
        timeout: float = 6 * 60 * 60,
        settle_polls: int | None = None,
        settle_interval: float | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(poke_interval=poke_interval, timeout=timeout, **kwargs)
        self.segment_id = segment_id
        self.requested_at = requested_at
        self.job_id = job_id
        self.lytics_conn_id = lytics_conn_id
        self.settle_polls = settle_polls
        self.settle_interval = settle_interval
        #: size readings kept between pokes of this try, ``[[time, size], ...]``
        self._size_history: list[list[float]] = []

    def status_kwargs(self, context: Context) -> dict[str, Any]:
        # A template like "{{ ti.xcom_pull('reevaluate')['job_id'] }}" renders a missing job id
        # as the string "None"; tracking a job called "None" would wait until the timeout.
        job_id = None if str(self.job_id or "").strip() in ("", "None", "null") else self.job_id
        kwargs: dict[str, Any] = {
            "segment_id": self.segment_id,
            "requested_at": self.requested_at,
            "job_id": job_id,
            "size_history": self._size_history,
        }
        if self.settle_polls is not None:
            kwargs["settle_polls"] = int(self.settle_polls)
        if self.settle_interval is not None:
            kwargs["settle_interval"] = float(self.settle_interval)
        return kwargs

    def execute(self, context: Context) -> Any:
        hook = self.hook
        LyticsSegmentLink.persist(context, hook.segment_url({"id": self.segment_id}))
        return super().execute(context)

    def on_done(self, context: Context, result: dict[str, Any]) -> None:
        uri = result.get("asset_uri") or self.hook.segment_asset_uri({"id": self.segment_id})
        result["asset_uri"] = uri
        LyticsSegmentLink.persist(context, result.get("url"))  # the full link, now that the segment was read
        self.emit_asset_event(
            context,
            uri,
            {
                "object_name": result.get("slug_name"),
                "vendor_size": result.get("size"),
                "action": "reevaluated",
                "link": result.get("url"),
            },
        )
