"""Asset URIs for vendor objects, so downstream DAGs can be scheduled on an audience refresh.

Schemes are registered in the provider info (``asset-uris``) from each vendor's
``ConnectionSpec.asset_scheme``. A Lytics segment is ``lytics://<account>/segment/<segment id>``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import SplitResult, quote

if TYPE_CHECKING:
    from airflow.sdk import Asset


def _path_kinds(scheme: str) -> tuple[str, ...]:
    from airflow_audience_provider.connections import CONNECTION_SPECS

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
