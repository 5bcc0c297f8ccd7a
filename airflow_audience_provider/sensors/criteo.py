"""Criteo sensors: wait until uploaded changes are live after Criteo's audience computation."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from airflow import __version__ as _airflow_version
from airflow.triggers.base import StartTriggerArgs

from airflow_audience_provider.connections import CRITEO
from airflow_audience_provider.domain.criteo_cycle import (
    COMPUTATION_HOURS_UTC,
    PROPAGATION_DELAY,
    latest_safe_upload_time,
    live_at,
    next_computation_window,
)
from airflow_audience_provider.links.criteo import CriteoSegmentLink
from airflow_audience_provider.sensors.base import AudienceWaitSensor
from airflow_audience_provider.triggers.criteo import CriteoComputationWindowTrigger

if TYPE_CHECKING:
    from airflow.sdk import Context

__all__ = ["CriteoAudienceLiveSensor", "latest_safe_upload_time", "live_at", "next_computation_window"]

_TRIGGER = f"{CriteoComputationWindowTrigger.__module__}.{CriteoComputationWindowTrigger.__qualname__}"
#: Airflow 3.3 is the first whose triggerer renders the templated arguments of a task started there.
_TRIGGERER_RENDERS_TEMPLATES = tuple(int(part) for part in _airflow_version.split(".")[:2]) >= (3, 3)


def _is_template(value: Any) -> bool:
    return isinstance(value, str) and any(mark in value for mark in ("{{", "{%", "{#"))


class CriteoAudienceLiveSensor(AudienceWaitSensor):
    """Wait until the changes of an upstream Criteo upload are live in campaigns.

    Criteo computes audiences at 00:00 and 12:00 UTC; changes reach live campaigns about 5 hours
    after the computation starts. The sensor waits for the first computation window at or after
    ``uploaded_at`` plus ``propagation_delay``, and, with ``segment_id`` and ``min_identifiers``,
    until the segment's contact-list statistics report at least that many identifiers.

    By default it **starts in the triggerer** (``start_from_trigger``): no worker slot is taken
    while waiting, and the wait survives triggerer restarts because the target time follows from the
    arguments alone. Airflow 3.3 is the first whose triggerer renders templated arguments; on older
    versions a sensor with templated arguments starts on a worker and defers from there. Where the
    task is run by a worker anyway (``airflow dags test``, or ``start_from_trigger=False``) it
    defers to the same trigger, or pokes with ``deferrable=False``.

    Window hours, an interval in seconds (for tests and demos) and the delay are parameters.

    .. seealso:: :ref:`howto/operator:CriteoAudienceLiveSensor`

    :param uploaded_at: when the upload finished, ISO-8601 (templated), e.g.
        ``"{{ ti.xcom_pull(task_ids='upload')['finished_at'] }}"``.
    :param hours_utc: hours of the day (UTC) of Criteo's computations; default ``(0, 12)``.
    :param interval_seconds: instead of ``hours_utc``, a computation every this many seconds.
    :param propagation_delay: time from a computation to live campaigns (timedelta or seconds); 5 h.
    :param segment_id: the uploaded segment (templated): shown as a link, used for the Asset event and
        for the statistics confirmation.
    :param min_identifiers: confirm with the statistics: at least this many identifiers (templated).
    :param owner_id: account or advertiser of the statistics read; default from the connection (templated).
    :param criteo_conn_id: the Criteo connection (templated).
    :param start_from_trigger: start directly in the triggerer. Default: yes where the triggerer can
        render the templated arguments (Airflow 3.3+, or none is templated), else on a worker. True on
        an older Airflow with templated arguments warns and starts on a worker.
    :param emit_asset: when live, record an Asset event ``criteo://<account>/segment/<id>``
        (alias ``criteo-segments``).
    :param poke_interval: seconds between looks, on a worker or in the triggerer (default 300).
    :param timeout: seconds to wait at most (default 24 h).
    :param deferrable: wait in the triggerer (default True).
    :return: ``{"uploaded_at", "computation_window", "live_at", "segment_id", "statistics"?, "asset_uri"}``.
    """

    spec = CRITEO
    trigger_class = CriteoComputationWindowTrigger
    template_fields: Sequence[str] = ("uploaded_at", "segment_id", "owner_id", "min_identifiers", "criteo_conn_id")
    operator_extra_links = (CriteoSegmentLink(),)
    ui_color = "#fff0e6"
    default_asset_alias = "criteo-segments"
    emits_assets = True
    start_trigger_args = StartTriggerArgs(
        trigger_cls=_TRIGGER, trigger_kwargs={}, next_method="execute_complete", next_kwargs=None, timeout=None
    )
    start_from_trigger = False

    def __init__(
        self,
        *,
        uploaded_at: str,
        hours_utc: Sequence[float] = COMPUTATION_HOURS_UTC,
        interval_seconds: float | None = None,
        propagation_delay: timedelta | float = PROPAGATION_DELAY,
        segment_id: str | None = None,
        min_identifiers: int | str | None = None,
        owner_id: str | None = None,
        criteo_conn_id: str = CRITEO.default_conn_name,
        poke_interval: float = 300,
        timeout: float = 24 * 60 * 60,
        start_from_trigger: bool | None = None,
        deferrable: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(poke_interval=poke_interval, timeout=timeout, deferrable=deferrable, **kwargs)
        delay = propagation_delay.total_seconds() if isinstance(propagation_delay, timedelta) else propagation_delay
        next_computation_window(0, hours_utc=hours_utc, interval_seconds=interval_seconds)  # validates both
        self.uploaded_at = uploaded_at
        self.hours_utc = [float(h) for h in hours_utc]
        self.interval_seconds = interval_seconds
        self.propagation_delay_seconds = float(delay)
        self.segment_id = segment_id
        self.min_identifiers = min_identifiers
        self.owner_id = owner_id
        self.criteo_conn_id = criteo_conn_id
        self.start_from_trigger = self._can_start_from_trigger(start_from_trigger)
        if self.start_from_trigger:
            trigger = CriteoComputationWindowTrigger.for_wait(
                self.criteo_conn_id,
                {name: getattr(self, name) for name in CriteoComputationWindowTrigger.status_fields},
                poll_interval=float(self.poke_interval),
                deadline=None,  # the task's trigger timeout bounds a wait started in the triggerer
                max_consecutive_failures=self.max_consecutive_failures,
            )
            self.start_trigger_args = StartTriggerArgs(
                trigger_cls=_TRIGGER,
                trigger_kwargs=trigger.serialize()[1],
                next_method="execute_complete",
                next_kwargs=None,
                timeout=timedelta(seconds=float(timeout)),
            )

    def _can_start_from_trigger(self, requested: bool | None) -> bool:
        """Whether the triggerer can start this task: it renders templates from Airflow 3.3 on."""
        if requested is False or _TRIGGERER_RENDERS_TEMPLATES:
            return requested is not False
        templated = sorted(name for name in self.template_fields if _is_template(getattr(self, name)))
        if templated and requested:
            warnings.warn(
                f"start_from_trigger=True with templated {', '.join(templated)} needs Airflow 3.3 or later, "
                f"whose triggerer renders templates; task {self.task_id!r} starts on a worker and defers.",
                UserWarning,
                stacklevel=3,
            )
        return not templated

    def on_start(self, context: Context) -> None:
        if self.segment_id:
            CriteoSegmentLink.persist(context, self.hook.segment_url(str(self.segment_id), self.owner_id or None))

    def on_done(self, context: Context, result: dict[str, Any]) -> None:
        segment_id = result.get("segment_id") or self.segment_id
        if not segment_id:
            return
        hook = self.hook
        # Started in the triggerer, the task never ran execute(): the link is stored here.
        url = hook.segment_url(str(segment_id), self.owner_id or None)
        CriteoSegmentLink.persist(context, url)
        uri = hook.asset_uri("segment", str(segment_id), self.owner_id or None)
        result["asset_uri"] = uri
        self.emit_asset_event(context, uri, {"live_at": result.get("live_at"), "action": "live", "link": url})
