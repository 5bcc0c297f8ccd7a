"""The sensor base shared by every vendor: poke, reschedule and deferrable modes on one status function."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from datetime import timedelta
from functools import cached_property
from typing import TYPE_CHECKING, Any, ClassVar

from airflow.providers.common.compat.sdk import conf  # airflow.sdk.conf exists from 3.2 only
from airflow.sdk import BaseSensorOperator, PokeReturnValue

from airflow_audience_provider.assets import AssetEmitterMixin
from airflow_audience_provider.core.errors import AudienceError
from airflow_audience_provider.core.results import PollResult, validate_event
from airflow_audience_provider.core.waiting import Verdict, judge, log_judgement, outcome
from airflow_audience_provider.triggers.base import AudiencePollingTrigger

if TYPE_CHECKING:
    from airflow.sdk import Context

    from airflow_audience_provider.connections import ConnectionSpec

log = logging.getLogger(__name__)


class AudienceWaitSensor(AssetEmitterMixin, BaseSensorOperator):
    """Wait for a vendor's asynchronous work; fail when the vendor reports failure.

    Subclasses set ``spec`` (the vendor's connection type, which names the ``<vendor>_conn_id``
    attribute) and ``trigger_class`` (which names the hook and its status function), and
    implement ``status_kwargs()`` unless the trigger's ``status_fields`` name the status
    arguments (the default reads them from the sensor's attributes). A vendor failure state
    fails the task: it never counts as done. Unknown vendor states are logged verbatim and the
    sensor keeps waiting until its ``timeout``.

    :param deferrable: wait in the triggerer instead of a worker slot (default: Airflow's
        ``[operators] default_deferrable``).
    :param max_consecutive_failures: transient API errors in a row tolerated while waiting.
    :param emit_asset: when the wait ends well, record an Asset event for the vendor object through
        the alias ``asset_alias`` (for the sensors that emit them).
    :param asset_alias: name of the AssetAlias the events are added to; default: the vendor's.
    """

    #: the vendor's connection type: names the connection-id attribute.
    spec: ClassVar[ConnectionSpec]
    trigger_class: ClassVar[type[AudiencePollingTrigger]]
    template_fields: Sequence[str] = ()

    def __init__(
        self,
        *,
        deferrable: bool = conf.getboolean("operators", "default_deferrable", fallback=False),
        max_consecutive_failures: int = 3,
        emit_asset: bool = True,
        asset_alias: str | None = None,
        **kwargs: Any,
    ) -> None:
        self._asset_outlets(kwargs, emit_asset, asset_alias)
        super().__init__(**kwargs)
        self.deferrable = deferrable
        self.max_consecutive_failures = max_consecutive_failures
        self._consecutive_failures = 0

    # -- for subclasses ---------------------------------------------------------------------

    @property
    def conn_id(self) -> str:
        """The Airflow connection id: the sensor's ``<vendor>_conn_id`` (possibly rendered)."""
        conn_id: str = getattr(self, self.spec.conn_name_attr)
        return conn_id

    def status_kwargs(self, context: Context) -> dict[str, Any]:
        """The status function's arguments. Default: the trigger's ``status_fields``, read
        from this sensor's attributes of the same names."""
        fields = self.trigger_class.status_fields
        if not fields:
            raise NotImplementedError
        return self.trigger_class.read_status_fields({name: getattr(self, name) for name in fields})

    def result_value(self, result: PollResult) -> Any:
        """What goes to XCom when the wait ends well."""
        return result.data or {}

    def on_start(self, context: Context) -> None:
        """Called as ``execute`` starts on a worker (e.g. to store an extra link)."""

    def on_done(self, context: Context, result: dict[str, Any]) -> None:
        """Called once when the wait ends well, in every mode (e.g. to emit an Asset event)."""

    # -- modes ------------------------------------------------------------------------------

    @cached_property
    def hook(self) -> Any:
        """The vendor hook of this task, built once on first use (after the connection id is rendered)."""
        return self.trigger_class.build_hook(self.conn_id)

    def poke(self, context: Context) -> bool | PokeReturnValue:
        hook = self.hook
        status_fn = self.trigger_class.status_function(hook)
        try:
            answer: PollResult | AudienceError = status_fn(**self.status_kwargs(context))
        except AudienceError as exc:
            answer = exc
        judgement = judge(answer, self._consecutive_failures, self.max_consecutive_failures)
        self._consecutive_failures = judgement.failures
        log_judgement(log, judgement, self.task_id, self.max_consecutive_failures)
        if judgement.verdict is Verdict.DONE and judgement.result is not None:
            value = self.result_value(judgement.result)
            self.on_done(context, value)
            return PokeReturnValue(is_done=True, xcom_value=value)
        if judgement.final:
            outcome(judgement, hook.vendor)  # raises
        return False

    def execute(self, context: Context) -> Any:
        self.on_start(context)
        if not self.deferrable:
            return super().execute(context)
        # One look before deferring: finished work needs no trip through the triggerer.
        first = self.poke(context)
        if isinstance(first, PokeReturnValue) and first.is_done:
            return first.xcom_value
        self.defer(
            trigger=self.trigger_class.for_wait(
                self.conn_id,
                self.status_kwargs(context),
                poll_interval=self.poke_interval,
                deadline=time.time() + float(self.timeout),
                max_consecutive_failures=self.max_consecutive_failures,
            ),
            method_name="execute_complete",
            # A little later than the trigger's own deadline, so its clear message wins.
            timeout=timedelta(seconds=float(self.timeout) + 60),
        )

    def execute_complete(self, context: Context, event: dict[str, Any] | None = None) -> Any:
        """Resume after the trigger: validate the event; failures and timeouts raise."""
        event = validate_event(event, self.trigger_class.vendor)
        log.info("%s", event["message"])
        result = event.get("result") or {}
        self.on_done(context, result)
        return result
