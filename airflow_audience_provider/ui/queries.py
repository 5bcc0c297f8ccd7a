"""Read the audiences our tasks touched from Airflow's metadata DB: ``asset``, ``asset_event``, ``dag_run``.

Nothing else is stored. An audience is an Asset whose URI has one of our vendor schemes; its
history is the Asset events whose ``extra`` has the shape of :mod:`airflow_audience_provider.core.events`.
Every query is restricted to the events of the DAGs the caller may read (``dag_ids``), so an
audience touched only by other DAGs does not exist for that caller.

Cost per page view: one query over the ``asset`` table (one row per audience object), each row's
latest event found through the ``(asset_id, timestamp)`` index, and one bounded query per listed
audience; never a scan of every event.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

from airflow_audience_provider.connections import CONNECTION_SPECS
from airflow_audience_provider.core.events import AUDIENCE_EVENTS_XCOM, read_audience_extra

#: how many recent events of an audience are read to fill its row's latest sizes and counts.
ROW_EVENTS = 20
MAX_PAGE_SIZE = 200
MAX_POINTS = 500


def vendor_schemes() -> tuple[str, ...]:
    """The Asset URI schemes our operators emit (``lytics``, ``criteo``, ...)."""
    return tuple(sorted({s.asset_scheme for s in CONNECTION_SPECS.values() if s.asset_scheme}))


@dataclass
class EventPoint:
    """One Asset event of an audience, as the view shows it."""

    event_id: int
    timestamp: Any
    dag_id: str
    run_id: str | None
    task_id: str | None
    run_state: str | None
    fields: dict[str, Any]


@dataclass
class AudienceRow:
    """One audience of the view: its Asset, the vendor object, and the figures of its latest event."""

    asset_id: int
    uri: str
    vendor: str
    account: str
    kind: str
    object_id: str
    object_name: str | None = None
    last_sync: Any = None
    last_dag_id: str | None = None
    last_run_id: str | None = None
    last_run_state: str | None = None
    last_action: str | None = None
    state: str | None = None
    snapshot_size: int | None = None
    vendor_size: int | None = None
    match_rate: float | None = None
    drift: int | None = None
    added: int | None = None
    removed: int | None = None
    invalid: int | None = None
    link: str | None = None
    dag_ids: list[str] = field(default_factory=list)


@dataclass
class AudiencePage:
    """One page of the audiences table, with the number of audiences on every page."""

    rows: list[AudienceRow]
    total: int
    page: int
    page_size: int


def _scheme_filter(uri_column: Any, vendor: str | None) -> Any:
    from sqlalchemy import or_

    schemes = vendor_schemes()
    if vendor:
        schemes = tuple(s for s in schemes if s == vendor)
    if not schemes:
        return uri_column.is_(None) & uri_column.isnot(None)  # no vendor of ours: nothing matches
    return or_(*(uri_column.like(f"{scheme}://%") for scheme in schemes))


def _event_filter(event: Any, dag_ids: Collection[str], dag_id: str | None) -> Any:
    allowed = sorted(set(dag_ids) & {dag_id}) if dag_id else sorted(dag_ids)
    return event.source_dag_id.in_(allowed)


def list_audiences(
    session: Any,
    dag_ids: Collection[str],
    *,
    vendor: str | None = None,
    dag_id: str | None = None,
    page: int = 1,
    page_size: int = 25,
) -> AudiencePage:
    """One page of audiences, most recently synced first.

    :param session: a SQLAlchemy session on Airflow's metadata DB.
    :param dag_ids: the DAGs whose events the caller may see.
    :param vendor: only this URI scheme (``lytics``, ``criteo``, ...).
    :param dag_id: only audiences this DAG touched, and only its events.
    """
    from airflow.models.asset import AssetEvent, AssetModel
    from sqlalchemy import exists, func, select

    page = max(1, int(page))
    page_size = max(1, min(MAX_PAGE_SIZE, int(page_size)))
    if not dag_ids:
        return AudiencePage([], 0, page, page_size)
    visible = _event_filter(AssetEvent, dag_ids, dag_id)
    has_event = exists().where(AssetEvent.asset_id == AssetModel.id, visible)
    where = (_scheme_filter(AssetModel.uri, vendor), has_event)
    total = session.scalar(select(func.count()).select_from(AssetModel).where(*where)) or 0
    last_time = (
        select(AssetEvent.timestamp)
        .where(AssetEvent.asset_id == AssetModel.id, visible)
        .order_by(AssetEvent.timestamp.desc())
        .limit(1)
        .correlate(AssetModel)
        .scalar_subquery()
    )
    assets = session.execute(
        select(AssetModel.id, AssetModel.uri)
        .where(*where)
        .order_by(last_time.desc(), AssetModel.id.desc())
        .offset((page - 1) * page_size)
        .limit(page_size)
    ).all()
    rows = []
    for asset_id, uri in assets:
        events = audience_events(session, dag_ids, asset_id, dag_id=dag_id, limit=ROW_EVENTS)
        row = summarise(asset_id, uri, events)
        if row is not None:
            rows.append(row)
    return AudiencePage(rows, int(total), page, page_size)


def audience_events(
    session: Any,
    dag_ids: Collection[str],
    asset_id: int,
    *,
    dag_id: str | None = None,
    limit: int = MAX_POINTS,
) -> list[EventPoint]:
    """The newest ``limit`` events of one audience the caller may see, one per DAG run, newest first.

    Each run's point has the fields of its Asset events and of what the run's other tasks recorded
    about the object in XCom (an upload's counts when only a later sensor announced the object).
    """
    from airflow.models.asset import AssetEvent
    from airflow.models.dagrun import DagRun
    from sqlalchemy import and_, select

    if not dag_ids:
        return []
    limit = max(1, min(MAX_POINTS, int(limit)))
    result = session.execute(
        select(
            AssetEvent.id,
            AssetEvent.timestamp,
            AssetEvent.source_dag_id,
            AssetEvent.source_run_id,
            AssetEvent.source_task_id,
            AssetEvent.extra,
            DagRun.state,
        )
        .outerjoin(DagRun, and_(DagRun.dag_id == AssetEvent.source_dag_id, DagRun.run_id == AssetEvent.source_run_id))
        .where(AssetEvent.asset_id == asset_id, _event_filter(AssetEvent, dag_ids, dag_id))
        .order_by(AssetEvent.timestamp.desc(), AssetEvent.id.desc())
        .limit(limit)
    ).all()
    points = []
    for event_id, timestamp, source_dag, run_id, task_id, extra, run_state in result:
        fields = read_audience_extra(extra)
        if fields is None:  # an event of another shape (an older version, or not ours)
            continue
        state = getattr(run_state, "value", run_state)
        points.append(EventPoint(event_id, timestamp, source_dag, run_id, task_id, state, fields))
    _fill_from_xcom(session, points)
    return _one_per_run(points)


def _same_object(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return all(a.get(k) == b.get(k) for k in ("vendor", "account", "kind", "object_id"))


def _fill_from_xcom(session: Any, points: list[EventPoint]) -> None:
    """Add what other tasks of the same DAG runs recorded about this object (XCom ``audience_events``).

    An upload whose Asset event is left to a later sensor (``emit_asset=False``) still records its
    counts there; only the runs of the events already read (and so already authorised) are looked at.
    """
    import json

    from airflow.models.xcom import XComModel
    from sqlalchemy import select

    if not points:
        return
    runs: dict[str, set[str]] = {}
    for point in points:
        if point.run_id:
            runs.setdefault(point.dag_id, set()).add(point.run_id)
    found: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for dag_id, run_ids in runs.items():
        rows = session.execute(
            select(XComModel.run_id, XComModel.value).where(
                XComModel.key == AUDIENCE_EVENTS_XCOM, XComModel.dag_id == dag_id, XComModel.run_id.in_(sorted(run_ids))
            )
        ).all()
        for run_id, stored in rows:
            value = stored
            if isinstance(stored, str | bytes):
                try:
                    value = json.loads(stored)
                except ValueError:
                    continue
            for item in value if isinstance(value, list) else []:
                fields = read_audience_extra(item)
                if fields is not None and _same_object(fields, points[0].fields):
                    found.setdefault((dag_id, run_id), []).append(fields)
    for point in points:
        for fields in found.get((point.dag_id, point.run_id or ""), []):
            for key, value in fields.items():
                point.fields.setdefault(key, value)


def _one_per_run(points: list[EventPoint]) -> list[EventPoint]:
    """One point per DAG run (newest first): a run's newest event, gaps filled from its older ones."""
    merged: dict[tuple[str, str], EventPoint] = {}
    out = []
    for point in points:
        key = (point.dag_id, point.run_id or f"event-{point.event_id}")
        if key in merged:
            for name, value in point.fields.items():
                merged[key].fields.setdefault(name, value)
            continue
        merged[key] = point
        out.append(point)
    return out


def get_asset_uri(session: Any, asset_id: int) -> str | None:
    """The URI of the Asset ``asset_id`` when it is one of our audiences, else None."""
    from airflow.models.asset import AssetModel
    from sqlalchemy import select

    return session.scalar(select(AssetModel.uri).where(AssetModel.id == asset_id, _scheme_filter(AssetModel.uri, None)))


def summarise(asset_id: int, uri: str, events: list[EventPoint]) -> AudienceRow | None:
    """A table row from an audience's events (newest first): each field from the newest event having it."""
    if not events:
        return None
    newest = events[0]
    f = newest.fields
    row = AudienceRow(
        asset_id=asset_id,
        uri=uri,
        vendor=f["vendor"],
        account=f["account"],
        kind=f["kind"],
        object_id=f["object_id"],
        last_sync=newest.timestamp,
        last_dag_id=newest.dag_id,
        last_run_id=newest.run_id,
        last_run_state=newest.run_state,
        last_action=f.get("action"),
    )
    for key in ("object_name", "state", "snapshot_size", "vendor_size", "match_rate", "drift", "link"):
        setattr(row, key, next((e.fields[key] for e in events if key in e.fields), None))
    if row.drift is None and row.vendor_size is not None and row.snapshot_size is not None:
        row.drift = row.vendor_size - row.snapshot_size  # the two sizes came from different tasks
    last_upload = next((e.fields for e in events if "rows" in e.fields or "added" in e.fields), None)
    if last_upload is not None:
        row.added = last_upload.get("added")
        row.removed = last_upload.get("removed")
        row.invalid = sum((last_upload.get("invalid") or {}).values())
    row.dag_ids = sorted({e.dag_id for e in events})
    return row
