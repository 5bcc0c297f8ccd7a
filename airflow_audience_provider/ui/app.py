"""The Audiences view's FastAPI app, mounted by the API server at ``/audiences``.

Server-rendered HTML with inline SVG plots (no JavaScript build) and the same data as JSON:

- ``GET /audiences/``: the table of audiences (``?vendor=&dag_id=&page=``);
- ``GET /audiences/audience/{asset_id}``: one audience's history, plotted;
- ``GET /audiences/api/audiences`` and ``/audiences/api/audiences/{asset_id}``: the same as JSON.

Every endpoint but the icon needs an Airflow login (the API server's JWT, as a Bearer header or
the UI's session cookie) and read access to Assets; every query keeps only the events of the
DAGs the user may read (the auth manager's ``get_authorized_dag_ids``). Only the fields of the
audience event shape are shown, never an event's raw ``extra``.
"""

from __future__ import annotations

import html
from datetime import datetime
from typing import Annotated, Any
from urllib.parse import quote, urlencode

from airflow.api_fastapi.core_api.security import get_user, requires_access_asset
from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, Response

from airflow_audience_provider.ui import queries
from airflow_audience_provider.ui.plugin import URL_PREFIX
from airflow_audience_provider.ui.svg import Series, line_plot

ICON = (
    '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 24 24" fill="none" stroke="currentColor" '
    'stroke-width="2"><circle cx="9" cy="8" r="3"/><circle cx="17" cy="9" r="2.5"/>'
    '<path d="M3 20c0-3.3 2.7-6 6-6s6 2.7 6 6M14 20c0-2.5 1.3-4.5 3-4.5s4 2 4 4.5"/></svg>'
)


def allowed_dag_ids(user: Annotated[Any, Depends(get_user)]) -> set[str]:
    """The DAGs whose events this user may see: those the auth manager lets them read."""
    from airflow.api_fastapi.app import get_auth_manager

    return set(get_auth_manager().get_authorized_dag_ids(user=user, method="GET"))


def create_app() -> FastAPI:
    """The view's FastAPI app: the HTML pages and their JSON twins (see the module docstring)."""
    app = FastAPI(title="Audiences", docs_url=None, redoc_url=None, openapi_url=None)
    # Asset read access for every data endpoint; the events are then filtered to readable DAGs.
    guarded = [Depends(requires_access_asset("GET"))]

    @app.get("/icon.svg", include_in_schema=False)
    def icon() -> Response:
        return Response(ICON, media_type="image/svg+xml")

    @app.get("/api/audiences", dependencies=guarded)
    def api_list(
        dag_ids: Annotated[set[str], Depends(allowed_dag_ids)],
        vendor: str | None = None,
        dag_id: str | None = None,
        page: int = Query(1, ge=1),
        page_size: int = Query(25, ge=1, le=queries.MAX_PAGE_SIZE),
    ) -> dict[str, Any]:
        with _session() as session:
            result = queries.list_audiences(
                session, dag_ids, vendor=vendor or None, dag_id=dag_id or None, page=page, page_size=page_size
            )
        return {
            "total": result.total,
            "page": result.page,
            "page_size": result.page_size,
            "audiences": [_row_json(row) for row in result.rows],
        }

    @app.get("/api/audiences/{asset_id}", dependencies=guarded)
    def api_detail(
        asset_id: int,
        dag_ids: Annotated[set[str], Depends(allowed_dag_ids)],
        dag_id: str | None = None,
        limit: int = Query(100, ge=1, le=queries.MAX_POINTS),
    ) -> dict[str, Any]:
        row, events = _detail(asset_id, dag_ids, dag_id, limit)
        return {"audience": _row_json(row), "events": [_event_json(e) for e in events]}

    @app.get("/", dependencies=guarded, response_class=HTMLResponse)
    def index(
        request: Request,
        dag_ids: Annotated[set[str], Depends(allowed_dag_ids)],
        vendor: str | None = None,
        dag_id: str | None = None,
        page: int = Query(1, ge=1),
        page_size: int = Query(25, ge=1, le=queries.MAX_PAGE_SIZE),
    ) -> HTMLResponse:
        with _session() as session:
            result = queries.list_audiences(
                session, dag_ids, vendor=vendor or None, dag_id=dag_id or None, page=page, page_size=page_size
            )
        return HTMLResponse(_index_html(request, result, sorted(dag_ids), vendor or "", dag_id or ""))

    @app.get("/audience/{asset_id}", dependencies=guarded, response_class=HTMLResponse)
    def detail(
        request: Request,
        asset_id: int,
        dag_ids: Annotated[set[str], Depends(allowed_dag_ids)],
        dag_id: str | None = None,
        limit: int = Query(100, ge=1, le=queries.MAX_POINTS),
    ) -> HTMLResponse:
        row, events = _detail(asset_id, dag_ids, dag_id, limit)
        return HTMLResponse(_detail_html(request, row, events))

    return app


def _session() -> Any:
    from airflow.utils.session import create_session

    return create_session()


def _detail(
    asset_id: int, dag_ids: set[str], dag_id: str | None, limit: int
) -> tuple[queries.AudienceRow, list[queries.EventPoint]]:
    with _session() as session:
        uri = queries.get_asset_uri(session, asset_id)
        events = queries.audience_events(session, dag_ids, asset_id, dag_id=dag_id or None, limit=limit) if uri else []
    row = queries.summarise(asset_id, uri or "", events)
    if row is None:  # not ours, or no event of a DAG this user may read: the same answer
        raise HTTPException(status_code=404, detail="Audience not found")
    return row, events


# -- JSON ------------------------------------------------------------------------------------------


def _iso(value: Any) -> str | None:
    return value.isoformat() if isinstance(value, datetime) else (str(value) if value is not None else None)


def _when(value: Any) -> str:
    """``2026-12-07 08:44`` (UTC) with the full time as a tooltip."""
    if not isinstance(value, datetime):
        return _e(value)
    return f'<span title="{_e(value.isoformat())}">{value.strftime("%Y-%m-%d %H:%M")}</span>'


def _row_json(row: queries.AudienceRow) -> dict[str, Any]:
    data = dict(row.__dict__)
    data["last_sync"] = _iso(row.last_sync)
    return data


def _event_json(event: queries.EventPoint) -> dict[str, Any]:
    return {
        "event_id": event.event_id,
        "timestamp": _iso(event.timestamp),
        "dag_id": event.dag_id,
        "run_id": event.run_id,
        "task_id": event.task_id,
        "run_state": event.run_state,
        **event.fields,
    }


# -- HTML ------------------------------------------------------------------------------------------

_STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:16px;color:#1a202c;font-size:13px}
h1{font-size:20px;margin:0 0 12px} h2{font-size:16px;margin:20px 0 6px}
table{border-collapse:collapse;width:100%} th,td{border-bottom:1px solid #e2e8f0;padding:6px 8px;text-align:left}
th{background:#f7fafc;font-weight:600} td.n,th.n{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
td.dags{word-break:break-word;max-width:14em} td.id{word-break:break-all;max-width:16em}
a{color:#2b6cb0} form{margin:0 0 12px;display:flex;gap:8px;align-items:center}
.muted{color:#718096} .state{padding:1px 6px;border-radius:8px;background:#edf2f7}
.state-success{background:#c6f6d5} .state-failed{background:#fed7d7} .state-running{background:#bee3f8}
.plots{display:grid;grid-template-columns:repeat(auto-fit,minmax(420px,1fr));gap:12px}
.plot{border:1px solid #e2e8f0;border-radius:6px;padding:8px} .plot h3{font-size:14px;margin:0 0 4px}
dl{display:grid;grid-template-columns:max-content auto;gap:4px 16px} dt{color:#718096}
"""


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value))


def _n(value: Any) -> str:
    if value is None:
        return '<span class="muted">&ndash;</span>'
    if isinstance(value, float):
        return f"{value:.1%}"
    return f"{value:,}"


def _root(request: Request) -> str:
    """The API server's base path (the part of root_path before this app's prefix)."""
    root_path = str(request.scope.get("root_path") or "")
    return root_path[: -len(URL_PREFIX)] if root_path.endswith(URL_PREFIX) else root_path


def _here(request: Request) -> str:
    return str(request.scope.get("root_path") or "")


def _run_url(request: Request, dag_id: str | None, run_id: str | None) -> str | None:
    if not dag_id or not run_id:
        return None
    return f"{_root(request)}/dags/{quote(dag_id, safe='')}/runs/{quote(run_id, safe='')}"


# Inside the Airflow UI the view is an iframe whose sandbox forbids navigating the top window, so a
# link to a DAG run moves the UI's own router instead (same origin), and a vendor link opens a
# window from the UI; anywhere else (or when that fails) links navigate as usual.
_SCRIPT = """
document.addEventListener('click', function (event) {
  var link = event.target.closest && event.target.closest('a[data-airflow], a[data-external]');
  if (!link || window.parent === window) return;
  try {
    var ui = window.parent, href = link.getAttribute('href');
    if (link.hasAttribute('data-external')) {
      ui.open(href, '_blank', 'noopener');
      event.preventDefault();
      return;
    }
    ui.history.pushState({}, '', href);
    ui.dispatchEvent(new PopStateEvent('popstate', {state: {}}));
    event.preventDefault();
  } catch (error) { /* another origin: an ordinary navigation */ }
});
"""


def _page(title: str, body: str) -> str:
    return (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{_e(title)}</title>'
        f'<meta name="viewport" content="width=device-width,initial-scale=1"><style>{_STYLE}</style></head>'
        f"<body>{body}<script>{_SCRIPT}</script></body></html>"
    )


def _state(value: Any) -> str:
    if not value:
        return '<span class="muted">&ndash;</span>'
    return f'<span class="state state-{_e(value)}">{_e(value)}</span>'


def _index_html(request: Request, result: queries.AudiencePage, dag_ids: list[str], vendor: str, dag_id: str) -> str:
    here = _here(request)
    vendor_options = '<option value="">all vendors</option>' + "".join(
        f'<option value="{_e(v)}"{" selected" if v == vendor else ""}>{_e(v)}</option>'
        for v in queries.vendor_schemes()
    )
    dag_list = "".join(f'<option value="{_e(d)}"></option>' for d in dag_ids)
    rows = []
    for row in result.rows:
        detail = f"{here}/audience/{row.asset_id}" + (f"?{urlencode({'dag_id': dag_id})}" if dag_id else "")
        run_url = _run_url(request, row.last_dag_id, row.last_run_id)
        last_html = _link(_when(row.last_sync), run_url)
        rows.append(
            f'<tr data-asset-id="{row.asset_id}"><td>{_e(row.vendor)}</td><td class="id">{_e(row.account)}</td>'
            f'<td class="id"><a class="audience" href="{_e(detail)}">{_e(row.object_name or row.object_id)}</a>'
            f'<div class="muted">{_e(row.kind)} {_e(row.object_id)}</div></td>'
            f'<td class="dags">{_e(", ".join(row.dag_ids))}</td><td>{last_html}</td>'
            f"<td>{_state(row.last_run_state)} {_e(row.last_action)} {_e(row.state)}</td>"
            f'<td class="n">{_n(row.snapshot_size)}</td><td class="n">{_n(row.vendor_size)}</td>'
            f'<td class="n">{_n(row.added)}</td><td class="n">{_n(row.removed)}</td>'
            f'<td class="n">{_n(row.invalid)}</td></tr>'
        )
    table = (
        '<table id="audiences"><thead><tr><th>Vendor</th><th>Account</th><th>Audience</th><th>DAGs</th>'
        "<th>Last sync</th><th>State</th><th class=n>Size (ours)</th><th class=n>Size (vendor)</th>"
        "<th class=n>Added</th><th class=n>Removed</th><th class=n>Invalid</th></tr></thead><tbody>"
        + ("".join(rows) or '<tr><td colspan="11" class="muted">No audience events in the DAGs you can see.</td></tr>')
        + "</tbody></table>"
    )
    pages = max(1, -(-result.total // result.page_size))
    nav = []
    for number, label in ((result.page - 1, "&lsaquo; newer"), (result.page + 1, "older &rsaquo;")):
        if 1 <= number <= pages:
            query = urlencode({k: v for k, v in (("vendor", vendor), ("dag_id", dag_id)) if v} | {"page": number})
            nav.append(f'<a href="{here}/?{_e(query)}">{label}</a>')
    form = (
        f'<form method="get" action="{here}/"><label>Vendor <select name="vendor">{vendor_options}</select></label>'
        f'<label>DAG <input name="dag_id" list="dag-ids" value="{_e(dag_id)}" placeholder="all DAGs"></label>'
        f'<datalist id="dag-ids">{dag_list}</datalist><button type="submit">Filter</button></form>'
    )
    summary = f'<p class="muted">{result.total} audience(s); page {result.page} of {pages}. {" ".join(nav)}</p>'
    return _page("Audiences", f"<h1>Audiences</h1>{form}{table}{summary}")


def _detail_html(request: Request, row: queries.AudienceRow, events: list[queries.EventPoint]) -> str:
    oldest_first = list(reversed(events))
    labels = [_iso(e.timestamp) or "" for e in oldest_first]
    hrefs = [_run_url(request, e.dag_id, e.run_id) for e in oldest_first]

    def series(key: str, name: str) -> Series:
        return Series(name, [e.fields.get(key) for e in oldest_first])

    plots = [
        ("size", "Size", [series("snapshot_size", "ours"), series("vendor_size", "vendor")], False),
        ("match-rate", "Match rate", [series("match_rate", "match rate")], True),
        ("changes", "Added and removed per run", [series("added", "added"), series("removed", "removed")], False),
    ]
    plot_html = "".join(
        f'<div class="plot" id="plot-{key}"><h3>{_e(title)}</h3>{line_plot(data, labels, hrefs, percent=percent)}</div>'
        for key, title, data, percent in plots
    )
    link = f'<a id="vendor-link" data-external href="{_e(row.link)}" rel="noopener">open in {_e(row.vendor)}</a>'
    facts = (
        f"<dl><dt>Vendor</dt><dd>{_e(row.vendor)}</dd><dt>Account</dt><dd>{_e(row.account)}</dd>"
        f"<dt>{_e(row.kind.capitalize())}</dt><dd>{_e(row.object_id)}</dd>"
        f"<dt>Vendor page</dt><dd>{link if row.link else '&ndash;'}</dd>"
        f"<dt>DAGs</dt><dd>{_e(', '.join(row.dag_ids))}</dd>"
        f"<dt>Size (ours / vendor)</dt><dd>{_n(row.snapshot_size)} / {_n(row.vendor_size)}</dd>"
        f"<dt>Drift</dt><dd>{_n(row.drift)}</dd><dt>Match rate</dt><dd>{_n(row.match_rate)}</dd></dl>"
    )
    history = "".join(
        f"<tr><td>{_link(_when(e.timestamp), _run_url(request, e.dag_id, e.run_id))}</td><td>{_e(e.dag_id)}</td>"
        f"<td>{_e(e.task_id)}</td><td>{_state(e.run_state)} {_e(e.fields.get('action'))}</td>"
        f'<td class="n">{_n(e.fields.get("rows"))}</td><td class="n">{_n(e.fields.get("added"))}</td>'
        f'<td class="n">{_n(e.fields.get("removed"))}</td>'
        f'<td class="n">{_n(sum((e.fields.get("invalid") or {}).values()) if "invalid" in e.fields else None)}</td>'
        f'<td class="n">{_n(e.fields.get("snapshot_size"))}</td><td class="n">{_n(e.fields.get("vendor_size"))}</td>'
        "</tr>"
        for e in events
    )
    table = (
        '<table id="events"><thead><tr><th>Time</th><th>DAG</th><th>Task</th><th>Action</th><th>Rows</th>'
        "<th>Added</th><th>Removed</th><th>Invalid</th><th>Size (ours)</th><th>Size (vendor)</th></tr></thead>"
        f"<tbody>{history}</tbody></table>"
    )
    back = f'<p><a href="{_here(request)}/">&lsaquo; all audiences</a></p>'
    title = row.object_name or row.object_id
    return _page(
        f"Audience {title}",
        f"{back}<h1>{_e(title)}</h1>{facts}<div class=plots>{plot_html}</div><h2>Events</h2>{table}",
    )


def _link(text: str, href: str | None) -> str:
    return f'<a data-airflow href="{_e(href)}">{text}</a>' if href else text
