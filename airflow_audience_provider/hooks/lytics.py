"""Lytics Segment API hook (v2 management API, plus the v1 size and validate endpoints).

Method names follow the Lytics operations of its "Segment API" documentation page ("List Segments",
"Reevaluate a Segment", ...), so the vendor's docs are the index. Paths follow that page where it
and the older published API specs disagree; the alternative is noted where relevant.

Authentication: the API token is sent as the raw ``Authorization`` value (no ``Bearer``), on
v2 and v1 paths alike. ``account_id`` from the connection is sent on every v2 call so that a
token with access to several accounts can never touch the wrong one; it is a v2 parameter, so
v1 calls (sizes, validate, ad-hoc size) do not send it and act in the token's default account.

**Reevaluate** posts to the documented ``POST /v2/segment/{id}/reevaluate``; when that path answers
404, to ``POST /v2/segment/reevaluate`` with ``{"id"}`` (the form Lytics' own tooling uses). No
document shows the answer's shape, so nothing is read from it.

**When is a reevaluation finished?** Lytics documents no completion signal (the segment has no
status field). This provider uses a *heuristic* built from what the API does offer, see
:meth:`LyticsHook.reevaluation_status`; whichever of these comes first ends the wait:

1. **A job of the segment completes**: a job listed by ``GET /v2/segment/{id}/jobs`` (if the
   account serves that path) created at or after the request, or the job named by the user.
   Such a job ending ``failed``, ``deleted``, ``deleting`` or ``fault-N`` fails the wait.
2. **The size settles**: the segment's size, read after the request in polls at least
   ``settle_interval`` seconds apart, is the same in ``settle_polls`` consecutive polls.
   This cannot tell a reevaluation that has not started from one that has finished; choose an
   interval longer than the account's reevaluations take.

An ``invalid`` segment fails the wait at once. Unknown job states are reported verbatim and
waited on.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar
from urllib.parse import quote

import requests

from airflow_audience_provider.assets import segment_uri
from airflow_audience_provider.connections import LYTICS
from airflow_audience_provider.core.auth import TokenHeaderAuth
from airflow_audience_provider.core.errors import AudienceNotFoundError, AudienceValidationError
from airflow_audience_provider.core.hook import AudienceHook, ConnectionSettings
from airflow_audience_provider.core.ratelimit import RateLimit, Window
from airflow_audience_provider.core.results import Phase, PollResult, StatusMap
from airflow_audience_provider.core.times import parse_time
from airflow_audience_provider.core.transport import ErrorInfo, VendorProfile, call_with_read_back
from airflow_audience_provider.domain.lytics import segment_references

log = logging.getLogger(__name__)

#: Lytics job states (the values listed by Lytics' own tooling, its agent-skills recipes).
LYTICS_JOB_STATUS = StatusMap.of(
    done={"completed"},
    failed={"failed", "deleted", "deleting"},
    running={"running", "initializing", "sleeping", "paused", "pausing"},
    failed_prefixes=("fault",),
)


#: Clock skew tolerated when matching jobs to a reevaluation request by creation time.
JOB_CLOCK_SKEW = timedelta(seconds=5)
#: "The size has settled": this many consecutive equal readings ...
DEFAULT_SETTLE_POLLS = 3
#: ... at least this many seconds apart (longer than a typical reevaluation takes).
DEFAULT_SETTLE_INTERVAL = 600.0


def parse_lytics_error(response: requests.Response) -> ErrorInfo:
    """Read both Lytics envelopes: v2 ``errors[]`` and v1 ``message`` (a 401 is always v1)."""
    try:
        body = response.json()
    except ValueError:
        return ErrorInfo(request_id=response.headers.get("X-Request-Id"))
    if not isinstance(body, dict):
        return ErrorInfo()
    errors = body.get("errors")
    if isinstance(errors, list) and errors and isinstance(errors[0], dict):
        first = errors[0]
        return ErrorInfo(
            message=first.get("message"),
            code=first.get("code"),
            field=first.get("field"),
            request_id=body.get("request_id"),
            details=[{"code": e.get("code"), "message": e.get("message")} for e in errors if isinstance(e, dict)],
        )
    return ErrorInfo(message=body.get("message"), request_id=body.get("request_id"))


def _size_settled(
    history: list[list[float]] | None,
    size: Any,
    since: datetime | None,
    polls: int,
    interval: float,
) -> bool:
    """Record a size reading in ``history`` (in place) and say whether the last ``polls`` agree.

    A reading counts only after the request and at least ``interval`` seconds after the last
    counted one; a reading that differs restarts the count.
    """
    if history is None or polls <= 0 or not isinstance(size, int | float) or isinstance(size, bool):
        return False
    now = time.time()
    if since is not None and now < since.timestamp():
        return False
    if history and now - history[-1][0] < interval:
        return False
    if history and history[-1][1] != size:
        history.clear()
    history.append([now, float(size)])
    return len(history) >= polls


class LyticsHook(AudienceHook):
    """Talk to the Lytics Segment API.

    :param lytics_conn_id: Airflow connection of type ``lytics`` (:ref:`howto/connection:lytics`).
    """

    spec = LYTICS
    default_host = "https://api.lytics.io"
    profile: ClassVar[VendorProfile] = VendorProfile(
        name="lytics",
        parse_error=parse_lytics_error,
        request_id_headers=("X-Request-Id",),
        rate_limits={
            # Documented (v1 API spec): ad-hoc size is throttled to 1 request per 10 s.
            "adhoc_size": RateLimit((Window(1, 10.0, "1 ad-hoc size request per 10 s"),), max_wait=60),
        },
    )

    def __init__(self, lytics_conn_id: str = LYTICS.default_conn_name, **kwargs: Any) -> None:
        super().__init__(lytics_conn_id, **kwargs)
        self.lytics_conn_id = lytics_conn_id

    def build_auth(self, settings: ConnectionSettings, session: requests.Session) -> requests.auth.AuthBase:
        token = settings.require(settings.password, "API token (password field)")
        if token.lower().startswith("bearer "):
            token = token[7:]  # Lytics wants the raw token; a pasted "Bearer x" would be refused
        return TokenHeaderAuth(token, scheme=None)

    # -- helpers ----------------------------------------------------------------------------

    @property
    def account_id(self) -> str | None:
        value = self.settings().get_extra("account_id")
        return str(value) if value else None

    def _params(self, **params: Any) -> dict[str, Any]:
        """Query parameters of a v2 call: the given ones plus the connection's ``account_id``."""
        clean = {k: v for k, v in params.items() if v is not None}
        if self.account_id:
            clean["account_id"] = self.account_id
        return clean

    @staticmethod
    def _v1_params(**params: Any) -> dict[str, Any]:
        """Query parameters of a v1 (``/api``) call: ``account_id`` is a v2 parameter, not sent."""
        return {k: v for k, v in params.items() if v is not None}

    def _data(self, method: str, path: str, **kwargs: Any) -> Any:
        body = self.transport.json(method, path, **kwargs)
        return body.get("data") if isinstance(body, dict) else body

    @staticmethod
    def _path_id(value: str) -> str:
        if not value or not str(value).strip():
            raise AudienceValidationError("A Lytics segment id or slug is required", vendor="lytics")
        return quote(str(value).strip(), safe="")

    def segment_url(self, segment: dict[str, Any]) -> str:
        """Link to a segment in the Lytics web app.

        Assumption (not in Lytics' documentation): audiences open at ``<web app>/audiences/<id>``,
        with ``?aid=<account>`` selecting the account. The base is the connection's
        ``web_app_url``.
        """
        base = str(self.settings().get_extra("web_app_url", "https://app.lytics.com")).rstrip("/")
        url = f"{base}/audiences/{quote(str(segment.get('id', '')), safe='')}"
        aid = segment.get("aid") or self.account_id
        return f"{url}?aid={quote(str(aid), safe='')}" if aid else url

    def segment_asset_uri(self, segment: dict[str, Any]) -> str:
        """``lytics://<account>/segment/<id>``: the account is the connection's ``account_id``,
        else the segment's own account, so every task of a DAG names the same Asset."""
        account = self.account_id or segment.get("account_id") or segment.get("aid") or "default"
        return segment_uri("lytics", str(account), "segment", str(segment.get("id") or segment.get("segment_id")))

    # -- segments ---------------------------------------------------------------------------

    def list_segments(
        self, table: str | None = "user", valid: str = "all", kind: str | None = None, sizes: bool = False
    ) -> list[dict[str, Any]]:
        """List Segments: ``GET /v2/segment``. ``valid="all"`` so invalid segments are not hidden."""
        params = self._params(table=table, valid=valid, kind=kind, sizes="true" if sizes else None)
        return list(self._data("GET", "/v2/segment", params=params) or [])

    def get_segment(self, segment: str, sizes: bool = False) -> dict[str, Any]:
        """Get a Segment by id or slug: ``GET /v2/segment/{id}``.

        :raises AudienceNotFoundError: naming the id when it does not exist in this account.
        """
        try:
            data = self._data(
                "GET", f"/v2/segment/{self._path_id(segment)}", params=self._params(sizes="true" if sizes else None)
            )
        except AudienceNotFoundError as exc:
            raise exc.restated(
                f"Lytics segment {segment!r} was not found in account {self.account_id or '(token default)'}"
            ) from exc
        return dict(data or {})

    def find_segment(self, segment: str, sizes: bool = False) -> dict[str, Any] | None:
        """The segment with this id or slug, or None. Slugs are unique per account, whatever the table."""
        try:
            return self.get_segment(segment, sizes=sizes)
        except AudienceNotFoundError:
            return None

    def create_segment(self, body: dict[str, Any]) -> dict[str, Any]:
        """Create a Segment: ``POST /v2/segment``.

        A create is not idempotent and Lytics silently renames a taken slug (``<slug>_1``, never a 409), so an
        ambiguous failure is followed by a read-back by slug before anything is resent.
        """
        slug = body.get("slug_name")

        def send() -> dict[str, Any]:
            return dict(self._data("POST", "/v2/segment", params=self._params(), json=body) or {})

        def read_back() -> dict[str, Any] | None:
            return self.find_segment(slug) if slug else None

        created = call_with_read_back(
            send, read_back, what=f"Creating Lytics segment {slug!r}", transport=self.transport
        )
        if slug and created.get("slug_name") not in (None, slug):
            log.warning(
                "Lytics stored the new segment under slug %r instead of %r: the slug was taken",
                created.get("slug_name"),
                slug,
            )
        return created

    def update_segment(self, segment_id: str, body: dict[str, Any]) -> dict[str, Any]:
        """Update a Segment: ``PUT /v2/segment/{id}`` and check Lytics updated *this* segment.

        An update whose ``FROM`` table differs can create another segment while answering
        success; a changed id in the answer is therefore an error.
        """
        updated = dict(
            self._data("PUT", f"/v2/segment/{self._path_id(segment_id)}", params=self._params(), json=body) or {}
        )
        if updated.get("id") and updated["id"] != segment_id:
            raise AudienceValidationError(
                f"Lytics answered the update of segment {segment_id} with another segment "
                f"({updated['id']}); check the FROM table of the definition",
                vendor="lytics",
            )
        return updated

    def delete_segment(self, segment_id: str) -> None:
        """Delete a Segment: ``DELETE /v2/segment/{id}`` (200 with a body, or 204 without)."""
        data = self._data("DELETE", f"/v2/segment/{self._path_id(segment_id)}", params=self._params())
        if isinstance(data, dict) and data.get("not_deleted"):
            reasons = "; ".join(
                f"{s.get('id')}: {s.get('reason')}" for s in data.get("segments", []) if not s.get("deleted")
            )
            raise AudienceValidationError(f"Lytics did not delete segment {segment_id}: {reasons}", vendor="lytics")

    def delete_segments(self, segment_ids: list[str]) -> dict[str, Any]:
        """Delete several segments in one call: ``DELETE /v2/segment/{ids}`` (comma-separated)."""
        ids = ",".join(self._path_id(s) for s in segment_ids)
        data = self._data("DELETE", f"/v2/segment/{ids}", params=self._params())
        # A list answer is the batch shape; one id goes down the single-delete path, whose
        # answer is {"id", "deleted": true} (or 204): normalise both to the batch shape.
        if isinstance(data, dict) and isinstance(data.get("deleted", data.get("not_deleted")), list):
            return data
        return {"deleted": list(segment_ids), "not_deleted": [], "segments": []}

    def reevaluate_segment(self, segment_id: str) -> dict[str, Any]:
        """Reevaluate a Segment: ``POST /v2/segment/{id}/reevaluate`` (the documented path), and on 404
        ``POST /v2/segment/reevaluate`` with ``{"id"}`` (the form Lytics' tooling uses).

        Asking twice is harmless, so the call is retried like an idempotent one. Returns
        ``{"segment_id", "requested_at"}`` (our clock, taken before the request); nothing is read
        from the answer, whose shape no document shows.

        :raises AudienceNotFoundError: when both forms answer 404.
        """
        requested_at = datetime.now(UTC).isoformat()
        try:
            self._data(
                "POST", f"/v2/segment/{self._path_id(segment_id)}/reevaluate", params=self._params(), idempotent=True
            )
        except AudienceNotFoundError:
            log.info("POST /v2/segment/{id}/reevaluate answered 404; using POST /v2/segment/reevaluate")
            try:
                self._data(
                    "POST", "/v2/segment/reevaluate", params=self._params(), json={"id": segment_id}, idempotent=True
                )
            except AudienceNotFoundError as exc:
                raise exc.restated(
                    f"Lytics segment {segment_id!r} was not found in account "
                    f"{self.account_id or '(token default)'} (both reevaluate forms answered 404)"
                ) from exc
        return {"segment_id": segment_id, "requested_at": requested_at}

    def get_segment_ancestors(self, segment_id: str) -> list[dict[str, Any]]:
        """Segment Ancestry: ``GET /v2/segment/{id}/ancestors``."""
        return list(
            self._data("GET", f"/v2/segment/{self._path_id(segment_id)}/ancestors", params=self._params()) or []
        )

    def get_segment_jobs(self, segment_id: str) -> list[dict[str, Any]]:
        """Segment Jobs: ``GET /v2/segment/{id}/jobs``."""
        return list(self._data("GET", f"/v2/segment/{self._path_id(segment_id)}/jobs", params=self._params()) or [])

    def get_segment_sizes(self, segment_ids: list[str]) -> dict[str, int | None]:
        """Sizes of saved segments: v1 ``GET /api/segment/sizes?ids=a,b`` -> {id: size}."""
        data = self._data("GET", "/api/segment/sizes", params=self._v1_params(ids=",".join(segment_ids)))
        return {str(item.get("id")): item.get("size") for item in data or [] if isinstance(item, dict)}

    def validate_segment_ql(self, segment_ql: str) -> None:
        """Validate a FilterQL statement: v1 ``POST /api/segment/validate`` (text/plain).

        :raises AudienceValidationError: carrying Lytics' parse message.
        """
        self.transport.request(
            "POST",
            "/api/segment/validate",
            data=segment_ql.encode(),
            headers={"Content-Type": "text/plain"},
            idempotent=True,
        )

    def size_segment_ql(self, segment_ql: str) -> int | None:
        """Size of an unsaved statement: v1 ``POST /api/segment/size`` (1 request per 10 s)."""
        data = self._data(
            "POST",
            "/api/segment/size",
            data=segment_ql.encode(),
            headers={"Content-Type": "text/plain"},
            idempotent=True,
            endpoint_class="adhoc_size",
        )
        return data.get("size") if isinstance(data, dict) else None

    def find_dependents(self, segment: dict[str, Any]) -> list[dict[str, Any]]:
        """Segments whose definition ``INCLUDE`` this one (by slug or id); Lytics does not guard deletes."""
        keys = {segment.get("id"), segment.get("slug_name")} - {None, ""}
        return [
            s
            for s in self.list_segments(table=None, valid="all", kind="all")
            if s.get("id") != segment.get("id") and keys & segment_references(s.get("segment_ql"))
        ]

    # -- segment groups ---------------------------------------------------------------------

    def list_segment_groups(self) -> list[dict[str, Any]]:
        """List Groups: ``GET /v2/segment/group``."""
        return list(self._data("GET", "/v2/segment/group", params=self._params()) or [])

    def create_segment_group(self, name: str, description: str | None = None) -> dict[str, Any]:
        """Create a Group: ``POST /v2/segment/group`` (read back by name after an ambiguous failure)."""
        body = {"name": name, "description": description or ""}

        def read_back() -> dict[str, Any] | None:
            return next((g for g in self.list_segment_groups() if g.get("name") == name), None)

        return call_with_read_back(
            lambda: dict(self._data("POST", "/v2/segment/group", params=self._params(), json=body) or {}),
            read_back,
            what=f"Creating Lytics segment group {name!r}",
            transport=self.transport,
        )

    def update_segment_group(self, group_id: str, **fields: Any) -> dict[str, Any]:
        """Update a Group: ``PUT /v2/segment/group/{id}``."""
        return dict(
            self._data("PUT", f"/v2/segment/group/{self._path_id(group_id)}", params=self._params(), json=fields) or {}
        )

    def delete_segment_group(self, group_id: str) -> None:
        """Delete a Group: ``DELETE /v2/segment/group/{id}``; its segments are kept."""
        self._data("DELETE", f"/v2/segment/group/{self._path_id(group_id)}", params=self._params())

    # -- waiting ----------------------------------------------------------------------------

    def reevaluation_status(
        self,
        segment_id: str,
        requested_at: str,
        job_id: str | None = None,
        settle_polls: int = DEFAULT_SETTLE_POLLS,
        settle_interval: float = DEFAULT_SETTLE_INTERVAL,
        size_history: list[list[float]] | None = None,
    ) -> PollResult:
        """Where a reevaluation stands, by the heuristic in the module docstring.

        :param job_id: a job the user knows belongs to the reevaluation; else the segment's jobs
            created at or after ``requested_at`` are tracked.
        :param settle_polls: how many consecutive equal sizes count as settled (0: job signal only).
        :param settle_interval: the least time between two size readings that count.
        :param size_history: ``[[time, size], ...]`` kept by the caller between polls (updated in
            place); None keeps no history, so only the job signal can end the wait.
        """
        segment = self.get_segment(segment_id, sizes=True)
        result = {
            "segment_id": segment.get("id", segment_id),
            "account_id": segment.get("account_id") or segment.get("aid"),
            "slug_name": segment.get("slug_name"),
            "size": segment.get("size"),
            "job_id": job_id,
            "requested_at": requested_at,
            "url": self.segment_url(segment),
            "asset_uri": self.segment_asset_uri(segment),
        }
        if segment.get("invalid"):
            return PollResult(
                Phase.FAILED,
                "invalid",
                f"Lytics segment {segment_id} is invalid: {segment.get('invalid_reason') or 'no reason given'}",
                result,
            )
        since = parse_time(requested_at)
        tracked = self._reevaluation_jobs(segment_id, since, job_id)
        phases = [(j, LYTICS_JOB_STATUS.phase(j.get("status"))) for j in tracked]
        for job, phase in phases:
            if phase is Phase.FAILED:
                result["job_id"] = job.get("id")
                return PollResult(
                    Phase.FAILED,
                    str(job.get("status")),
                    f"Lytics job {job.get('id')} for segment {segment_id} ended in state {job.get('status')!r}",
                    result,
                )
        if phases and all(phase is Phase.DONE for _, phase in phases):
            result["job_id"] = result["job_id"] or tracked[-1].get("id")
            # The segment was read before the jobs: if the job finished in between, that read
            # predates the new membership. Read it again so the reported size is the new one.
            segment = self.get_segment(segment_id, sizes=True)
            result.update(size=segment.get("size"), signal="job")
            return PollResult(
                Phase.DONE,
                "completed",
                f"Reevaluation of Lytics segment {segment_id} completed (job {result['job_id']}); "
                f"size {segment.get('size')}",
                result,
            )
        settled = _size_settled(size_history, segment.get("size"), since, settle_polls, settle_interval)
        if settled:
            result["signal"] = "size_settled"
            return PollResult(
                Phase.DONE,
                "size_settled",
                f"Lytics segment {segment_id} kept size {segment.get('size')} over {settle_polls} readings "
                f"at least {settle_interval:g} s apart since the reevaluation request; taken as reevaluated",
                result,
            )
        unknown = [str(j.get("status")) for j, phase in phases if phase is Phase.UNKNOWN]
        if unknown:
            return PollResult(
                Phase.UNKNOWN,
                unknown[0],
                f"Lytics reports unknown job state(s) {unknown} for segment {segment_id}; still waiting",
                result,
            )
        if not phases:
            readings = len(size_history or [])
            return PollResult(
                Phase.RUNNING,
                "waiting",
                f"No job of segment {segment_id} is listed since the request; size {segment.get('size')} "
                f"({readings} of {settle_polls} equal readings needed)",
                result,
            )
        states = sorted({str(j.get("status")) for j, _ in phases})
        return PollResult(
            Phase.RUNNING, states[0], f"Reevaluation of segment {segment_id} is {', '.join(states)}", result
        )

    def _reevaluation_jobs(self, segment_id: str, since: datetime | None, job_id: str | None) -> list[dict[str, Any]]:
        """The named job, or the segment's jobs created since the request; none where the path is absent."""
        try:
            jobs = self.get_segment_jobs(segment_id)
        except AudienceNotFoundError:
            return []  # the segment was just read, so the jobs path itself is what is missing
        if job_id:
            return [j for j in jobs if str(j.get("id")) == str(job_id)]
        return [
            j
            for j in jobs
            if since is None or ((created := parse_time(j.get("created"))) and created >= since - JOB_CLOCK_SKEW)
        ]

    # -- connection test --------------------------------------------------------------------

    def probe(self) -> str:
        segments = self._data("GET", "/v2/segment", params=self._params(table="user", kind="segment", limit=1))
        account = self.account_id or "the token's default account"
        return f"Connected to Lytics ({account}); {len(segments or [])} segment(s) visible in the probe"
