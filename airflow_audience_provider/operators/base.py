"""What every vendor operator shares: the hook factory, timeout overrides and asset emission."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, ClassVar

from airflow.sdk import BaseOperator

if TYPE_CHECKING:
    from airflow.sdk import Context

    from airflow_audience_provider.core.hook import AudienceHook

log = logging.getLogger(__name__)


class AssetEmitterMixin:
    """Asset events for the vendor objects a task touched, through an ``AssetAlias``.

    The object's id is known only at run time, so the task declares the alias as an outlet
    at parse time and adds ``Asset("<vendor>://<account>/<kind>/<id>")`` events to it when
    the object exists. Downstream DAGs schedule on the alias or on the concrete asset.
    """

    #: default alias name for the asset events of this vendor, e.g. "lytics-segments".
    default_asset_alias: ClassVar[str | None] = None
    emits_assets: ClassVar[bool] = False
    emit_asset: bool
    asset_alias: str | None

    def _asset_outlets(self, kwargs: dict[str, Any], emit_asset: bool, asset_alias: str | None) -> None:
        """Before ``BaseOperator.__init__``: add the alias to ``kwargs["outlets"]`` when emitting."""
        alias_name = asset_alias or self.default_asset_alias
        self.emit_asset = bool(self.emits_assets and emit_asset and alias_name)
        self.asset_alias = alias_name if self.emit_asset else None
        if self.emit_asset:
            from airflow.sdk import AssetAlias

            outlets = list(kwargs.pop("outlets", None) or [])
            outlets.append(AssetAlias(name=str(alias_name)))
            kwargs["outlets"] = outlets

    def emit_asset_event(self, context: Context, uri: str, extra: dict[str, Any]) -> None:
        """Record an Asset event for ``uri`` through this task's alias (no-op when disabled).

        ``extra`` holds fields of the audience event shape (:mod:`airflow_audience_provider.core.events`),
        e.g. ``{"object_name": ..., "action": ..., "vendor_size": ...}``; vendor, account and id come
        from ``uri``. The object is also remembered for OpenLineage
        (:meth:`get_openlineage_facets_on_complete`), whether or not Asset events are emitted.
        """
        from airflow_audience_provider.core.events import audience_event_extra

        shaped = audience_event_extra(uri, **extra)  # a bad field fails here, in every mode
        touched = self.__dict__.setdefault("_lineage_uris", [])
        if uri not in touched:
            touched.append(uri)
        if not self.emit_asset or not self.asset_alias:
            return
        from airflow.sdk import Asset, AssetAlias

        context["outlet_events"][AssetAlias(name=self.asset_alias)].add(Asset(uri=uri), extra=shaped)
        log.info("Asset event recorded for %s", uri)

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> Any:
        """OpenLineage: the vendor objects (segments, audiences) this task changed, as output datasets.

        Called by the OpenLineage provider when it is installed (the ``openlineage`` extra);
        imported only here, so the provider costs nothing otherwise. Each object's Asset URI
        ``<scheme>://<account>/<kind>/<id>`` becomes namespace ``<scheme>://<account>`` and
        name ``<kind>/<id>``.
        """
        from airflow.providers.openlineage.extractors import OperatorLineage
        from openlineage.client.event_v2 import Dataset

        outputs = []
        for uri in self.__dict__.get("_lineage_uris", []):
            scheme, rest = uri.split("://", 1)
            account, _, path = rest.partition("/")
            outputs.append(Dataset(namespace=f"{scheme}://{account}", name=path))
        return OperatorLineage(outputs=outputs)


class AudienceBaseOperator(AssetEmitterMixin, BaseOperator):
    """Base of the vendor operators. The hook is imported and built lazily in ``execute``.

    :param connect_timeout: seconds to wait for a connection, overriding the Airflow connection.
    :param read_timeout: seconds to wait for each read, overriding the Airflow connection.
    :param emit_asset: add an Asset event for each object this task changes, through the
        vendor's asset alias (``asset_alias``), so downstream DAGs can be scheduled on it.
    :param asset_alias: name of the AssetAlias the events are added to.
    """

    #: "module.Class" of the vendor hook, imported on first use (keeps DAG parsing cheap).
    hook_path: ClassVar[str]

    def __init__(
        self,
        *,
        conn_id: str,
        connect_timeout: float | None = None,
        read_timeout: float | None = None,
        emit_asset: bool = True,
        asset_alias: str | None = None,
        **kwargs: Any,
    ) -> None:
        self._asset_outlets(kwargs, emit_asset, asset_alias)
        super().__init__(**kwargs)
        self.conn_id = conn_id
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self._hook_instance: AudienceHook | None = None

    def wait_for(
        self,
        trigger_class: Any,
        status_kwargs: dict[str, Any],
        *,
        deferrable: bool,
        poll_interval: float,
        timeout: float,
        method_name: str = "execute_complete",
    ) -> dict[str, Any]:
        """The one way an operator waits for vendor work: defer to the vendor's trigger, or poll
        the same hook status function in the worker. Returns the result data (worker mode);
        in deferrable mode the task resumes in ``method_name`` with the trigger's event.
        """
        import time
        from datetime import timedelta

        hook = self.hook  # resolves a templated connection id
        trigger = trigger_class(
            conn_id=self.conn_id,
            status_kwargs=status_kwargs,
            poll_interval=float(poll_interval),
            deadline=time.time() + float(timeout),
        )
        if deferrable:
            # A little later than the trigger's own deadline, so its clear timeout message wins.
            self.defer(trigger=trigger, method_name=method_name, timeout=timedelta(seconds=float(timeout) + 60))
        return wait_in_worker(
            getattr(hook, trigger_class.status_method),
            status_kwargs,
            poll_interval=float(poll_interval),
            timeout=float(timeout),
            subject=trigger.describe_subject(),
            vendor=trigger_class.vendor,
        )

    @property
    def hook(self) -> Any:
        if self._hook_instance is None:
            import importlib

            from airflow_audience_provider.core.transport import Timeouts

            module_name, class_name = self.hook_path.rsplit(".", 1)
            hook_cls = getattr(importlib.import_module(module_name), class_name)
            timeouts = None
            if self.connect_timeout or self.read_timeout:
                timeouts = Timeouts(
                    connect=float(self.connect_timeout or Timeouts.connect),
                    read=float(self.read_timeout or Timeouts.read),
                )
            self._hook_instance = hook_cls(self.conn_id, timeouts=timeouts)
        return self._hook_instance


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
    import time

    from airflow_audience_provider.core.errors import (
        AudienceError,
        AudienceJobFailedError,
        AudienceTimeoutError,
    )
    from airflow_audience_provider.core.results import Phase
    from airflow_audience_provider.triggers.base import FATAL_ERRORS

    deadline = time.monotonic() + timeout
    failures = 0
    last = None
    while True:
        try:
            last = status_fn(**status_kwargs)
            failures = 0
        except FATAL_ERRORS:
            raise
        except AudienceError as exc:
            failures += 1
            if failures >= max_consecutive_failures:
                raise
            log.warning("Checking %s failed (%s); %d of %d tolerated", subject, exc, failures, max_consecutive_failures)
        else:
            log.info("%s: %s", subject, last.describe())
            if last.phase is Phase.DONE:
                return dict(last.data or {})
            if last.phase is Phase.FAILED:
                raise AudienceJobFailedError(last.message, vendor=vendor, code=last.vendor_status)
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            seen = last.describe() if last else "no successful check"
            raise AudienceTimeoutError(
                f"Timed out after {timeout:g} s waiting for {subject}; last seen: {seen}", vendor=vendor
            )
        time.sleep(min(poll_interval, remaining))
