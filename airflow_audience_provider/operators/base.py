"""What every vendor operator shares: the hook factory, timeout overrides and asset emission."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import timedelta
from functools import cached_property
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar

from airflow.sdk import BaseOperator

from airflow_audience_provider.assets import AssetEmitterMixin
from airflow_audience_provider.core.errors import AudienceError, AudiencePartialFailure, AudienceTimeoutError
from airflow_audience_provider.core.waiting import judge, log_judgement, outcome

if TYPE_CHECKING:
    from airflow_audience_provider.connections import ConnectionSpec
    from airflow_audience_provider.core.hook import AudienceHook
    from airflow_audience_provider.core.results import PollResult
    from airflow_audience_provider.core.transport import Timeouts

log = logging.getLogger(__name__)

#: The vendor hook an operator builds; a vendor base names it: ``AudienceBaseOperator["CriteoHook"]``.
HookT = TypeVar("HookT", bound="AudienceHook")

#: What an operator does when the vendor refuses some items of a multi-item call.
PARTIAL_FAILURE_MODES = ("fail", "warn")


def partial_failure_mode(name: str, value: str) -> str:
    """``value`` when it is a partial-failure mode; ValueError naming the parameter otherwise."""
    if value not in PARTIAL_FAILURE_MODES:
        raise ValueError(f"{name} must be one of {PARTIAL_FAILURE_MODES}, got {value!r}")
    return value


class AudienceBaseOperator(AssetEmitterMixin, BaseOperator, Generic[HookT]):
    """Base of the vendor operators. Each vendor base names its connection type (``spec``, as its
    hook does): the attribute holding the connection id (``<vendor>_conn_id``, returned by
    :attr:`conn_id`); it builds its hook from that attribute in :meth:`make_hook`, which imports
    the hook class on first use, so DAG parsing stays cheap.

    :param connect_timeout: seconds to wait for a connection, overriding the Airflow connection.
    :param read_timeout: seconds to wait for each read, overriding the Airflow connection.
    :param emit_asset: add an Asset event for each object this task changes, through the
        vendor's asset alias (``asset_alias``), so downstream DAGs can be scheduled on it.
    :param asset_alias: name of the AssetAlias the events are added to.
    """

    def __init__(
        self,
        *,
        connect_timeout: float | None = None,
        read_timeout: float | None = None,
        emit_asset: bool = True,
        asset_alias: str | None = None,
        **kwargs: Any,
    ) -> None:
        self._asset_outlets(kwargs, emit_asset, asset_alias)
        super().__init__(**kwargs)
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout

    #: the vendor's connection type: names the connection-id attribute and the hook class.
    spec: ClassVar[ConnectionSpec]

    @property
    def conn_id(self) -> str:
        """The Airflow connection id: the vendor base's ``<vendor>_conn_id`` (possibly rendered)."""
        return getattr(self, self.spec.conn_name_attr)

    def make_hook(self) -> HookT:
        """A new vendor hook on this task's connection; the vendor base imports its hook class here, on first
        use (hook modules import requests, which DAG parsing must not load)."""
        raise NotImplementedError

    @cached_property
    def hook(self) -> HookT:
        """The vendor hook of this task, built by :meth:`make_hook` on first use (after templates are rendered)."""
        return self.make_hook()

    def settle_partial_failure(
        self,
        failed: list[dict[str, Any]],
        message: str,
        *,
        mode: str,
        mode_name: str,
        vendor: str,
        before_failing: Callable[[], object] | None = None,
    ) -> list[dict[str, Any]]:
        """The one "fail or warn" rule for items a vendor refused, after the others were applied.

        ``fail`` raises :class:`~airflow_audience_provider.core.errors.AudiencePartialFailure`
        carrying ``failed`` (after ``before_failing``, e.g. an XCom push of the partial result);
        ``warn`` logs the message and carries on.

        :param failed: the refused items, each mapped to its input (JSON-safe).
        :param message: the task's error text (also the warning).
        :param mode: the operator's ``fail``/``warn`` setting; ``mode_name`` names that parameter.
        :returns: ``failed`` (empty when nothing was refused).
        """
        if not failed:
            return []
        if mode == "fail":
            if before_failing is not None:
                before_failing()
            raise AudiencePartialFailure(message, vendor=vendor, items=failed)
        self.log.warning("%s (%s='warn': carrying on)", message, mode_name)
        return failed

    def timeouts(self) -> Timeouts | None:
        """The connect and read timeouts the task sets over the connection's, if any."""
        if not (self.connect_timeout or self.read_timeout):
            return None
        from airflow_audience_provider.core.transport import Timeouts  # requests: not at DAG parse

        return Timeouts(
            connect=float(self.connect_timeout or Timeouts.connect),
            read=float(self.read_timeout or Timeouts.read),
        )

    def wait_for(
        self,
        trigger_class: Any,
        status_kwargs: dict[str, Any],
        *,
        deferrable: bool,
        poll_interval: float,
        timeout: float,
        method_name: str = "execute_complete",
        look_first: bool = False,
    ) -> dict[str, Any]:
        """The one way an operator waits for vendor work: defer to the vendor's trigger, or poll
        the same hook status function in the worker. Returns the result data (worker mode, or
        when ``look_first`` finds the work done); in deferrable mode the task resumes in
        ``method_name`` with the trigger's event.

        :param look_first: in deferrable mode, look once before deferring: finished work needs no
            trip through the triggerer.
        """
        hook = self.hook
        status_fn = trigger_class.status_function(hook)
        trigger = trigger_class.for_wait(
            self.conn_id, status_kwargs, poll_interval=float(poll_interval), deadline=time.time() + float(timeout)
        )
        if deferrable:
            if look_first:
                try:
                    answer: PollResult | AudienceError = status_fn(**status_kwargs)
                except AudienceError as exc:
                    answer = exc
                judgement = judge(answer, 0, trigger.max_consecutive_failures)
                log_judgement(log, judgement, trigger.describe_subject(), trigger.max_consecutive_failures)
                if judgement.final:
                    return outcome(judgement, trigger_class.vendor)
            # A little later than the trigger's own deadline, so its clear timeout message wins.
            self.defer(trigger=trigger, method_name=method_name, timeout=timedelta(seconds=float(timeout) + 60))
        return wait_in_worker(
            status_fn,
            status_kwargs,
            poll_interval=float(poll_interval),
            timeout=float(timeout),
            subject=trigger.describe_subject(),
            vendor=trigger_class.vendor,
        )


def wait_in_worker(
    status_fn: Any,
    status_kwargs: dict[str, Any],
    *,
    poll_interval: float,
    timeout: float,
    subject: str,
    vendor: str,
    max_consecutive_failures: int = 3,
) -> dict[str, Any]:
    """Poll a hook status function in the worker (non-deferrable waits), same rules as the trigger.

    :returns: the result data when done.
    :raises AudienceJobFailedError: when the vendor reports failure.
    :raises AudienceTimeoutError: when ``timeout`` passes first.
    """
    deadline = time.monotonic() + timeout
    failures = 0
    last: PollResult | None = None
    while True:
        try:
            answer: PollResult | AudienceError = status_fn(**status_kwargs)
        except AudienceError as exc:
            answer = exc
        judgement = judge(answer, failures, max_consecutive_failures)
        failures, last = judgement.failures, judgement.result or last
        log_judgement(log, judgement, subject, max_consecutive_failures)
        if judgement.final:
            return outcome(judgement, vendor)
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            seen = last.describe() if last else "no successful check"
            raise AudienceTimeoutError(
                f"Timed out after {timeout:g} s waiting for {subject}; last seen: {seen}", vendor=vendor
            )
        time.sleep(min(poll_interval, remaining))
