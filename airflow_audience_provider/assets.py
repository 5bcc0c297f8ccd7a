"""Asset URIs for vendor objects, so downstream DAGs can be scheduled on an audience refresh.

Schemes are registered in the provider info (``asset-uris``) from each vendor's
``ConnectionSpec.asset_scheme``. A Lytics segment is ``lytics://<account>/segment/<segment id>``.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import SplitResult, quote

from airflow_audience_provider.connections import CONNECTION_SPECS
from airflow_audience_provider.core.events import AUDIENCE_EVENTS_XCOM, audience_event_extra

if TYPE_CHECKING:
    from airflow.sdk import Asset, Context

log = logging.getLogger(__name__)


def _path_kinds(scheme: str) -> tuple[str, ...]:
    return next((s.asset_kinds for s in CONNECTION_SPECS.values() if s.asset_scheme == scheme), ())


def segment_uri(vendor: str, account: str, kind: str, object_id: str) -> str:
    """The canonical URI of a vendor object, e.g. ``lytics://acme/segment/3f9a``."""
    return f"{vendor}://{quote(str(account or 'default'), safe='')}/{kind}/{quote(str(object_id), safe='')}"


def sanitize_uri(uri: SplitResult) -> SplitResult:
    """Airflow's URI handler: accept only ``<scheme>://<account>/<kind>/<id>`` shapes."""
    if not uri.netloc:
        raise ValueError(f"{uri.scheme} asset URI needs an account: {uri.scheme}://<account>/<kind>/<id>")
    parts = [p for p in uri.path.split("/") if p]
    kinds = _path_kinds(uri.scheme)
    if len(parts) != 2 or (kinds and parts[0] not in kinds):
        raise ValueError(f"{uri.scheme} asset URI must look like {uri.scheme}://<account>/<kind>/<id>")
    return uri


def create_asset(
    *, vendor: str, account: str, kind: str, object_id: str, extra: dict[str, Any] | None = None, **more: Any
) -> Asset:
    """Asset factory registered for the vendor schemes.

    Airflow calls it as ``factory(**asset_kwargs, extra=asset_extra)`` (hook lineage), so
    ``extra`` is the Asset's extra dict itself; other keyword arguments are merged into it.
    """
    from airflow.sdk import Asset

    merged = {**(extra or {}), **more}
    return Asset(uri=segment_uri(vendor, account, kind, object_id), extra=merged or None)


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
        shaped = audience_event_extra(uri, **extra)  # a bad field fails here, in every mode
        touched = self.__dict__.setdefault("_lineage_uris", [])
        if uri not in touched:
            touched.append(uri)
        # Also in XCom, announced or not: the Audiences view reads the counts of an upload whose
        # Asset event is left to a later sensor (emit_asset=False) from the same DAG run.
        recorded = self.__dict__.setdefault("_audience_events", [])
        recorded.append(shaped)
        ti = context.get("ti")
        if ti is not None:
            ti.xcom_push(key=AUDIENCE_EVENTS_XCOM, value=list(recorded))
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
