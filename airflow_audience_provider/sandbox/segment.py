"""Fake Twilio Segment Public API (Engage audiences of a space) following Segment's API reference.

Behaviour worth knowing when writing clients:

* Auth: ``Authorization: Bearer <token>`` on every path; anything else answers 401 in the error
  envelope ``{"errors": [{"type": "Unauthorized", "message": ..., "status": 401}]}``. Every
  answer carries ``X-Request-Id``; successes are ``{"data": {...}}``, errors ``{"errors": [...]}``
  (never both). Create answers 200, not 201.
* Media types per operation, as Segment's SDK 73.2.0 declares them: ``Accept`` / ``Content-Type``
  may be ``application/vnd.segment.{v1,v1beta,v1alpha}+json`` or ``application/json`` where the
  operation offers them; a version the operation does not have (``v1beta`` on schedules/runs,
  anything but ``v1alpha``/``application/json`` on ``audience-references``, ``GET /spaces`` and
  ``GET /spaces/{id}``) answers 415 (the real answer is unverified). Force Execute Audience Run
  takes no body: a body or a ``Content-Type`` answers 400. The request log keeps the
  ``Content-Type``; ``SegmentFake.accepts`` the ``Accept`` of each call.
* Answers follow the 73.2.0 schemas: ``options.filterByExternalIds`` is always present (default
  ``user_id``, ``email``, ``android.idfa``, ``ios.idfa``), ``size.type`` is the unit counted
  (``ENTITIES`` for LINKED audiences), ``GET /spaces`` is paginated.
* One workspace with the space :data:`SANDBOX_SPACE_ID` ("Sandbox space"); another space id
  answers 404 naming it. Audiences ``aud_...``, previews ``prv_...``, schedules ``sch_...``.
* Lifecycle on the fake's clock (``p`` = ``processing_seconds``): a created, enabled audience is
  ``Preparing`` for p/3, then ``Computing`` (``Backfilling`` with ``includeHistoricalData``) until
  p, then ``Live`` with a size derived from the definition. Any PATCH locks it: ``Locked`` for
  p/3 then ``Computing`` until p, then ``Live``. Disabled audiences read ``Disabled`` (after the
  lock). An edit while ``Locked`` is refused with ``locked_edit_status`` (409 by default; the
  real code is unverified) and counted in ``SegmentFake.refused_edits``.
  :meth:`SegmentFake.fail_next_compute` makes the next computation end ``Failed`` (or ``Error``),
  :meth:`SegmentFake.stall_next_compute` keeps it ``Computing``, :meth:`SegmentFake.set_status` forces any status.
* Definitions: a query must have balanced quotes/parentheses (a backslash escapes the next
  character, so ``\\'`` does not end a string), start with an extractor
  (``event(``, ``trait(``, ``entity(``, ``NOT``, ``ANY``, ``ALL`` or ``(``) and contain a comparison;
  else 422 ``ValidationFailure`` with ``field: definition.query``.
* Previews: ``RUNNING`` for p, then ``COMPLETED`` with ``size`` and sampled ``results`` (or
  ``FAILED`` with ``failureReason`` after :meth:`SegmentFake.fail_next_preview`).
* Pagination: ``pagination.count`` (1-200, default 200) and an opaque ``pagination.cursor``;
  ``pagination.next`` is null on the last page. Search: ``search.type`` NAME/KEY/DEFINITION with a
  case-insensitive substring ``search.query``.
* Rate limits per operation (current documented values, configurable; window
  ``rate_window_seconds``): 429 with ``Retry-After`` (whole seconds), ``X-RateLimit-Consumed``,
  ``X-RateLimit-Remaining``, ``X-RateLimit-Reset`` (RFC 5322 date) and the docs' body
  ``{"errors": [{"type": "RequestError", "message": "Too many requests", "data": {"remainingPoints",
  "msBeforeNext", "consumedPoints"}}]}``; successful limited calls carry the ``X-RateLimit-*``
  headers too. Previews also count against ``preview_monthly_quota`` (700 per 30 days), which
  belongs to the space (this fake has one space), whatever token spends it.
* Preview options are those of the SDK's ``CreateAudiencePreviewOptions`` (``filterByExternalIds``,
  ``backfillEventDataDays``); any other key answers 422. Every version, v1alpha included, takes
  ``LINKED`` previews.
"""

from __future__ import annotations

import base64
import email.utils
import hashlib
import math
import re
import secrets
import string
from typing import Any, ClassVar

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from airflow_audience_provider.sandbox.base import (
    ApiError,
    ErrorReply,
    FakeRateLimiter,
    Quota,
    VendorFake,
    control_body,
    control_call,
    control_error,
    json_object_body,
    rfc3339,
)

__all__ = ["SANDBOX_SPACE_ID", "SegmentFake"]

SANDBOX_TOKEN = "segment-sandbox-token-7c41e0d2"
#: The id of the workspace's one Engage space ("Sandbox space").
SANDBOX_SPACE_ID = "spa_9aQ1Lj62S4bomZKLF4DPqW"
SANDBOX_WORKSPACE_SLUG = "sandbox-workspace"
SANDBOX_USER = "usr_sandboxApiToken"

MEDIA_VERSIONS = {
    "application/vnd.segment.v1+json": "v1",
    "application/vnd.segment.v1beta+json": "v1beta",
    "application/vnd.segment.v1alpha+json": "v1alpha",
    "application/json": "json",
}
_ALL_VERSIONS = frozenset({"v1", "v1beta", "v1alpha", "json"})
_NO_BETA = frozenset({"v1", "v1alpha", "json"})
_ALPHA_ONLY = frozenset({"v1alpha", "json"})
#: ``listSpaces`` / ``getSpace`` produce v1alpha and application/json only (SDK 73.2.0).
_SPACES = _ALPHA_ONLY

#: Profiles qualify through these external ids unless ``options.filterByExternalIds`` says otherwise.
DEFAULT_EXTERNAL_IDS = ("user_id", "email", "android.idfa", "ios.idfa")
#: ``size.type`` is the unit counted: LINKED audiences count entities.
_SIZE_TYPES = {"USERS": "USERS", "ACCOUNTS": "ACCOUNTS", "LINKED": "ENTITIES"}

_TYPES = {400: "BadRequest", 401: "Unauthorized", 403: "Forbidden", 404: "NotFound", 409: "Conflict",
          415: "UnsupportedMediaType", 422: "ValidationFailure", 429: "RequestError"}  # fmt: skip

_EXTRACTOR = re.compile(r"^\s*(event|trait|entity|NOT\b|ANY\b|ALL\b|\()", re.IGNORECASE)
_COMPARISON = re.compile(
    r"(>=|<=|!=|=|>|<|\.(equals|differs|greater_than|at_least|less_than|at_most|exists|absent|contains|omits|"
    r"starts_with|ends_with|one_of|none_of|before_date|after_date|within_last|within_next|before_last|"
    r"after_next)\s*\()"
)


def _id(prefix: str) -> str:
    alphabet = string.ascii_letters + string.digits
    return prefix + "".join(secrets.choice(alphabet) for _ in range(27))


def _size_of(query: str, salt: str = "") -> int:
    digest = hashlib.sha256((" ".join(query.split()) + salt).encode()).hexdigest()
    return 50 + int(digest[:10], 16) % 200_000


def _definition_problem(query: Any) -> str | None:
    if not isinstance(query, str) or not query.strip():
        return "definition.query is required"
    # A backslash escapes the next character: Segment documents it for a literal "." in a name.
    depth, quoted, escaping = 0, False, False
    for char in query:
        if escaping:
            escaping = False
        elif char == "\\":
            escaping = True
        elif char == "'":
            quoted = not quoted
        elif not quoted and char == "(":
            depth += 1
        elif not quoted and char == ")":
            depth -= 1
            if depth < 0:
                return "definition.query has an unmatched ')'"
    if quoted:
        return "definition.query has an unterminated string literal"
    if depth:
        return "definition.query has an unmatched '('"
    if not _EXTRACTOR.match(query):
        return "definition.query must start with an extractor such as event('...') or trait('...')"
    if not _COMPARISON.search(query):
        return "definition.query must end in a comparison (an audience definition evaluates to a boolean)"
    return None


class SegmentFake(VendorFake):
    """In-memory Segment workspace with one Engage space. All state lives behind :attr:`~.VendorFake.lock`.

    Python API for tests: :meth:`create_audience`, :meth:`audience`, :attr:`audiences`,
    :meth:`fail_next_compute`, :meth:`stall_next_compute`, :meth:`set_status`,
    :meth:`fail_next_preview`, ``refused_edits``, ``accepts``, plus the base class'
    :attr:`~.VendorFake.faults`, :meth:`~.VendorFake.requests`, :meth:`~.VendorFake.configure`,
    :meth:`~.VendorFake.advance_time` and :meth:`~.VendorFake.reset`.
    """

    name: ClassVar[str] = "segment"
    conn_id: ClassVar[str] = "segment_default"
    default_config: ClassVar[dict[str, float | None]] = {
        **VendorFake.default_config,
        "processing_seconds": 3.0,
        "rate_window_seconds": 60.0,
        "limit_list_audiences": 60,
        "limit_get_audience": 100,
        "limit_create_audience": 50,
        "limit_update_audience": 50,
        "limit_remove_audience": 50,
        "limit_create_audience_preview": 5,
        "limit_get_audience_preview": 300,
        "limit_audience_references": 25,
        "limit_write_schedule": 50,
        "preview_monthly_quota": 700,
        "locked_edit_status": 409,
        # BATCH audiences compute on a schedule: an edit of the definition or options waits for this
        # long (the fake's clock) and the audience reads Live meanwhile, as Segment documents.
        "batch_compute_seconds": 3600.0,
        # 0 = the alpha-only audience-references endpoint is not offered (404), as in workspaces without it
        "references_endpoint": 1,
    }

    token: str = SANDBOX_TOKEN
    space_id: str = SANDBOX_SPACE_ID

    # ------------------------------------------------------------------ state
    def reset_state(self) -> None:
        """Initial workspace: one space with one live audience, ``Sandbox seed audience``."""
        self._audiences: dict[str, dict[str, Any]] = {}
        self._previews: dict[str, dict[str, Any]] = {}
        self._quotas = FakeRateLimiter()
        self._next_compute: dict[str, str] = {}
        self._next_preview_failure: str | None = None
        # PATCHes of a locked audience refused so far.
        self.refused_edits = 0
        # The ``Accept`` header of each call, in order.
        self.accepts: list[str | None] = []
        seeded = self.now() - 30 * 86400
        self._store(
            {
                "name": "Sandbox seed audience",
                "description": "Present in every fresh sandbox",
                "audienceType": "USERS",
                "enabled": True,
                "definition": {"query": "event('Signed Up').count() >= 1"},
            },
            at=seeded,
            audience_id="aud_sandboxSeedAudience000000001",
        )

    @property
    def audiences(self) -> list[dict[str, Any]]:
        """Every audience as GET renders it, oldest first."""
        with self.lock:
            return [self._render(a, full=True) for a in self._audiences.values()]

    def audience(self, audience_id: str) -> dict[str, Any] | None:
        """One audience as GET renders it, or None."""
        with self.lock:
            stored = self._audiences.get(audience_id)
            return self._render(stored, full=True) if stored else None

    def create_audience(self, **body: Any) -> dict[str, Any]:
        """Create an audience directly (same rules as the API); returns it rendered."""
        with self.lock:
            return self._render(self._create(body), full=True)

    def fail_next_compute(self, audience_id: str, status: str = "Failed") -> None:
        """The next computation of the audience (after create or edit) ends in ``status``."""
        with self.lock:
            self._next_compute[audience_id] = status
            stored = self._audiences.get(audience_id)
            if stored is not None and stored["timeline"]:
                stored["final"] = status  # a computation under way fails too

    def stall_next_compute(self, audience_id: str) -> None:
        """The next (or current) computation of the audience never leaves ``Computing``."""
        self.fail_next_compute(audience_id, "Computing")

    def set_status(self, audience_id: str, status: str) -> None:
        """Force the displayed status (e.g. one the provider does not know)."""
        with self.lock:
            stored = self._audiences[audience_id]
            stored["timeline"], stored["final"], stored["locked_until"] = [], status, 0.0

    def fail_next_preview(self, reason: str = "Definition references an unknown event") -> None:
        """The next preview ends ``FAILED`` with this ``failureReason``."""
        with self.lock:
            self._next_preview_failure = reason

    # ------------------------------------------------------------------ connection, envelopes
    def connection(self, base_url: str) -> dict[str, Any]:
        """``{"conn_type": "segment", "host", "password", "extra": {"space_id", "workspace_slug", "app_url"}}``."""
        return {
            "conn_type": "segment",
            "host": base_url,
            "password": self.token,
            "extra": {
                "space_id": self.space_id,
                "workspace_slug": SANDBOX_WORKSPACE_SLUG,
                "app_url": f"{base_url}/app",
            },
        }

    def error_envelope(self, reply: ErrorReply) -> Response:
        """The ``RequestErrorEnvelope``: ``{"errors": [{"type", "message", "status"}]}``."""
        status = reply.status
        error: dict[str, Any] = {
            "type": reply.code or _TYPES.get(status, "RequestError"),
            "message": reply.message,
            "status": status,
        }
        retry_after = reply.headers.get("Retry-After")
        if status == 429 and retry_after is not None:
            error["data"] = {"remainingPoints": 0, "msBeforeNext": int(float(retry_after) * 1000)}
        return JSONResponse({"errors": [error]}, status, headers=reply.headers)

    def check_request(self, request: Request) -> None:
        """Bearer token before routing (``/app`` pages excepted)."""
        if request.url.path.startswith("/app"):
            return
        if request.headers.get("authorization") != f"Bearer {self.token}":
            raise ApiError(401, "Unauthorized: missing or invalid token")

    # ------------------------------------------------------------------ internals (under lock)
    def _store(self, body: dict[str, Any], *, at: float, audience_id: str | None = None) -> dict[str, Any]:
        p = self.processing_seconds
        options = dict(body.get("options") or {})
        options.setdefault("filterByExternalIds", list(DEFAULT_EXTERNAL_IDS))
        if options.get("backfillEventDataDays") is not None:
            options["includeHistoricalData"] = True  # Segment forces it and echoes it back
        stored = {
            "id": audience_id or _id("aud_"),
            "spaceId": self.space_id,
            "name": body["name"],
            "description": body.get("description") or "",
            "key": self._unique_key(body["name"]),
            "enabled": bool(body.get("enabled", True)),
            "definition": {
                "query": body["definition"]["query"],
                "targetEntity": body["definition"].get("targetEntity"),
            },
            "audienceType": body["audienceType"],
            "options": options,
            "createdAt": rfc3339(at),
            "updatedAt": rfc3339(at),
            "createdBy": SANDBOX_USER,
            "updatedBy": SANDBOX_USER,
            "locked_until": 0.0,
            "timeline": [],
            "final": "Live",
            "computed_query": None,
            "schedules": {},
            # Segment decides the cadence from the definition; an edit cannot switch it.
            "cadence": "BATCH" if "within" in body["definition"]["query"] else "REALTIME",
            "batch_due": None,
        }
        if audience_id is None and stored["enabled"]:
            middle = "Backfilling" if options.get("includeHistoricalData") else "Computing"
            stored["timeline"] = [("Preparing", at + p / 3), (middle, at + p)]
            stored["final"] = self._next_compute.pop(stored["id"], "Live")
        else:
            stored["computed_query"] = stored["definition"]["query"]
        self._audiences[stored["id"]] = stored
        return stored

    def _unique_key(self, name: str) -> str:
        base = re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_") or "audience"
        taken = {a["key"] for a in self._audiences.values()}
        key, n = base, 1
        while key in taken:
            n += 1
            key = f"{base}_{n}"
        return key

    def _status(self, stored: dict[str, Any]) -> str:
        now = self.now()
        if stored["batch_due"] is not None and now >= stored["batch_due"]:
            stored["batch_due"] = None  # the scheduled compute has run: the edit is applied now
            if stored["final"] == "Live":
                stored["computed_query"] = stored["definition"]["query"]
        if now < stored["locked_until"]:
            return "Locked"
        if not stored["enabled"] and stored["final"] in ("Live", "Disabled"):
            return "Disabled"
        for status, until in stored["timeline"]:
            if now < until:
                return status
        if stored["timeline"]:
            stored["timeline"] = []
            if stored["final"] == "Live":
                stored["computed_query"] = stored["definition"]["query"]
        return stored["final"]

    def _render(self, stored: dict[str, Any], *, full: bool, schedules: bool = False) -> dict[str, Any]:
        status = self._status(stored)
        out = {
            k: v
            for k, v in stored.items()
            if k not in ("locked_until", "timeline", "final", "computed_query", "schedules", "cadence", "batch_due")
        }
        out["definition"] = dict(stored["definition"])
        out["options"] = dict(stored["options"])
        out["status"] = status
        if full:
            out["computeCadence"] = {"type": stored["cadence"]}
            size_type = _SIZE_TYPES[stored["audienceType"]]
            if stored["computed_query"] is not None:
                count = _size_of(stored["computed_query"])
                out["size"] = {"type": size_type, "count": count, "uniqueCount": count - count // 50}
            else:
                out["size"] = {"type": size_type}
            if schedules:
                out["schedules"] = [dict(s) for s in stored["schedules"].values()]
        return out

    def _create(self, body: dict[str, Any]) -> dict[str, Any]:
        problems = []
        if not isinstance(body.get("name"), str) or not body["name"].strip():
            problems.append(("name", "name is required"))
        if body.get("audienceType") not in ("USERS", "ACCOUNTS", "LINKED"):
            problems.append(("audienceType", "audienceType must be one of USERS, ACCOUNTS, LINKED"))
        definition = body.get("definition")
        problem = _definition_problem(definition.get("query") if isinstance(definition, dict) else None)
        if problem:
            problems.append(("definition.query", problem))
        for key in ("enabled",):
            if key in body and not isinstance(body[key], bool):
                problems.append((key, f"{key} must be a boolean"))
        if problems:
            raise _validation(problems)
        return self._store(body, at=self.now())

    def _require_space(self, space_id: str) -> None:
        if space_id != self.space_id:
            raise ApiError(404, f"Space {space_id} not found", "NotFound")

    def _require(self, space_id: str, audience_id: str) -> dict[str, Any]:
        self._require_space(space_id)
        stored = self._audiences.get(audience_id)
        if stored is None:
            raise ApiError(404, f"Audience {audience_id} not found in space {space_id}", "NotFound")
        return stored

    def _limit(self, operation: str) -> dict[str, str]:
        """Count a call against its operation's limit; 429 when used up. Returns the X-RateLimit headers."""
        limit = self.config.get(f"limit_{operation}")
        if limit is None:
            return {}
        window = float(self.config.get("rate_window_seconds") or 60.0)
        now = self.now()
        calls = Quota(operation, limit, window, "Too many requests")
        quotas = [calls]
        if operation == "create_audience_preview":
            monthly = self.config.get("preview_monthly_quota")
            quotas.insert(0, Quota("previews-monthly", monthly, 30 * 86400, "Monthly audience preview quota exhausted"))
        full = self._quotas.hit(now, *quotas)
        if full is not None:
            raise self._too_many(full.resets_at - now, full.count, now, full.quota.message)
        used = self._quotas.use(calls, now)
        return {
            "X-RateLimit-Consumed": str(used.count),
            "X-RateLimit-Remaining": str(max(0, int(limit) - used.count)),
            "X-RateLimit-Reset": email.utils.formatdate(used.resets_at, usegmt=True),
        }

    def _too_many(self, wait: float, consumed: int, now: float, message: str) -> ApiError:
        seconds = max(1, math.ceil(wait))
        error = ApiError(
            429,
            message,
            "RequestError",
            headers={
                "Retry-After": str(seconds),
                "X-RateLimit-Consumed": str(consumed),
                "X-RateLimit-Remaining": "0",
                "X-RateLimit-Reset": email.utils.formatdate(now + wait, usegmt=True),
            },
        )
        return error

    def _version(self, request: Request, allowed: frozenset[str] = _ALL_VERSIONS, body: bool = False) -> str:
        accept = request.headers.get("accept")
        with self.lock:
            self.accepts.append(accept)
        for header in ("accept", "content-type") if body else ("accept",):
            value = (request.headers.get(header) or "application/json").split(";")[0].strip()
            if value == "*/*":
                value = "application/json"
            version = MEDIA_VERSIONS.get(value)
            if version is None or version not in allowed:
                raise ApiError(415, f"Unsupported media type {value!r} for this operation", "UnsupportedMediaType")
        return MEDIA_VERSIONS.get((request.headers.get("accept") or "application/json").split(";")[0], "json")

    @staticmethod
    async def _json(request: Request) -> dict[str, Any]:
        return await json_object_body(
            request,
            lambda detail: ApiError(400, f"Request body is not JSON: {detail}", "BadRequest"),
            lambda: ApiError(422, "Request body must be an object", "ValidationFailure"),
        )

    @staticmethod
    def _ok(data: dict[str, Any], headers: dict[str, str] | None = None) -> JSONResponse:
        return JSONResponse({"data": data}, 200, headers=headers or {})

    @staticmethod
    def _page(request: Request, items: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        params = request.query_params
        raw_count = params.get("pagination.count") or params.get("pagination[count]") or "200"
        try:
            count = int(raw_count)
        except ValueError:
            raise _validation([("pagination.count", "pagination.count must be an integer")]) from None
        if not 1 <= count <= 200:
            raise _validation([("pagination.count", "pagination.count must be between 1 and 200")])
        cursor = params.get("pagination.cursor") or params.get("pagination[cursor]")
        offset = 0
        if cursor:
            try:
                offset = int(base64.b64decode(cursor.encode(), validate=True).decode())
            except ValueError:
                raise _validation([("pagination.cursor", "pagination.cursor is invalid")]) from None
        page = items[offset : offset + count]
        nxt = offset + count
        pagination = {
            "current": base64.b64encode(str(offset).encode()).decode(),
            "next": base64.b64encode(str(nxt).encode()).decode() if nxt < len(items) else None,
            "previous": base64.b64encode(str(max(0, offset - count)).encode()).decode() if offset else None,
            "totalEntries": len(items),
        }
        return page, pagination

    # ------------------------------------------------------------------ routes
    def routes(self) -> list[BaseRoute]:
        """Spaces, audiences, previews, references, runs and schedules, and a tiny app under ``/app``."""
        a = "/spaces/{space_id}/audiences"
        return [
            Route("/", self._h_root, methods=["GET"]),
            Route("/spaces", self._h_spaces, methods=["GET"]),
            Route("/spaces/{space_id}", self._h_space, methods=["GET"]),
            Route(a, self._h_audiences, methods=["GET", "POST"]),
            Route(f"{a}/previews", self._h_previews, methods=["POST"]),
            Route(f"{a}/previews/{{preview_id}}", self._h_preview, methods=["GET"]),
            Route(f"{a}/{{audience_id}}", self._h_audience, methods=["GET", "PATCH", "DELETE"]),
            Route(f"{a}/{{audience_id}}/audience-references", self._h_references, methods=["GET"]),
            Route(f"{a}/{{audience_id}}/runs", self._h_runs, methods=["POST"]),
            Route(f"{a}/{{audience_id}}/schedules", self._h_schedules, methods=["GET", "POST"]),
            Route(
                f"{a}/{{audience_id}}/schedules/{{schedule_id}}", self._h_schedule, methods=["GET", "PATCH", "DELETE"]
            ),
            Route("/app/{rest:path}", self._h_app, methods=["GET"]),
        ]

    async def _h_root(self, request: Request) -> Response:
        return self._ok({"workspace": {"id": "ws_sandbox", "slug": SANDBOX_WORKSPACE_SLUG, "name": "Sandbox"}})

    async def _h_spaces(self, request: Request) -> Response:
        self._version(request, _SPACES)
        page, pagination = self._page(request, [{"id": self.space_id, "name": "Sandbox space", "slug": "sandbox"}])
        return self._ok({"spaces": page, "pagination": pagination})

    async def _h_space(self, request: Request) -> Response:
        self._version(request, _SPACES)
        with self.lock:
            self._require_space(request.path_params["space_id"])
        return self._ok({"space": {"id": self.space_id, "name": "Sandbox space", "slug": "sandbox"}})

    async def _h_audiences(self, request: Request) -> Response:
        space_id = request.path_params["space_id"]
        if request.method == "POST":
            self._version(request, body=True)
            body = await self._json(request)
            with self.lock:
                self._require_space(space_id)
                headers = self._limit("create_audience")
                return self._ok({"audience": self._render(self._create(body), full=False)}, headers)
        self._version(request)
        params = request.query_params
        with self.lock:
            self._require_space(space_id)
            headers = self._limit("list_audiences")
            items = [
                self._render(a, full=True, schedules=params.get("include") == "schedules")
                for a in self._audiences.values()
            ]
        query = params.get("search.query")
        if query is not None:
            kind = (params.get("search.type") or "NAME").upper()
            field = {"NAME": "name", "KEY": "key", "DEFINITION": "definition"}.get(kind)
            if field is None:
                raise _validation([("search.type", "search.type must be NAME, KEY or DEFINITION")])
            needle = query.lower()
            items = [
                a for a in items
                if needle in (a["definition"]["query"] if field == "definition" else a[field]).lower()
            ]  # fmt: skip
        page, pagination = self._page(request, items)
        return self._ok({"audiences": page, "pagination": pagination}, headers)

    async def _h_audience(self, request: Request) -> Response:
        space_id, audience_id = request.path_params["space_id"], request.path_params["audience_id"]
        if request.method == "GET":
            self._version(request)
            with self.lock:
                stored = self._require(space_id, audience_id)
                headers = self._limit("get_audience")
                schedules = request.query_params.get("include") == "schedules"
                return self._ok({"audience": self._render(stored, full=True, schedules=schedules)}, headers)
        if request.method == "DELETE":
            self._version(request)
            with self.lock:
                self._require(space_id, audience_id)
                headers = self._limit("remove_audience")
                del self._audiences[audience_id]
                return self._ok({"status": "SUCCESS"}, headers)
        self._version(request, body=True)
        body = await self._json(request)
        with self.lock:
            stored = self._require(space_id, audience_id)
            headers = self._limit("update_audience")
            return self._ok({"audience": self._render(self._update(stored, body), full=False)}, headers)

    def _update(self, stored: dict[str, Any], body: dict[str, Any]) -> dict[str, Any]:
        allowed = {"enabled", "name", "description", "definition", "options"}
        problems = [(k, f"{k} cannot be updated") for k in body if k not in allowed]
        if not body:
            problems.append(("body", "at least one field is required"))
        if "definition" in body:
            definition = body["definition"]
            problem = _definition_problem(definition.get("query") if isinstance(definition, dict) else None)
            if problem:
                problems.append(("definition.query", problem))
        if "enabled" in body and not isinstance(body["enabled"], bool):
            problems.append(("enabled", "enabled must be a boolean"))
        if "name" in body and (not isinstance(body["name"], str) or not body["name"].strip()):
            problems.append(("name", "name must be a non-empty string"))
        if problems:
            raise _validation(problems)
        if self._status(stored) == "Locked":
            self.refused_edits += 1
            status = int(self.config.get("locked_edit_status") or 409)
            raise ApiError(
                status,
                "Audience is locked until the previous changes have been incorporated",
                "Conflict" if status == 409 else "ValidationFailure",
            )
        now, p = self.now(), self.processing_seconds
        for key in ("name", "description", "enabled"):
            if key in body:
                stored[key] = body[key]
        if "definition" in body:
            stored["definition"]["query"] = body["definition"]["query"]
        if "options" in body and isinstance(body["options"], dict):
            stored["options"] = {**stored["options"], **body["options"]}
        stored["updatedAt"] = rfc3339(now)
        stored["locked_until"] = now + p / 3
        recompute = "definition" in body or "options" in body
        if stored["enabled"] and stored["cadence"] == "BATCH" and recompute and stored["computed_query"] is not None:
            # A BATCH audience shows Live at once and applies the edit at its next scheduled compute.
            stored["timeline"], stored["final"] = [], self._next_compute.pop(stored["id"], "Live")
            stored["batch_due"] = now + float(self.config.get("batch_compute_seconds") or 0.0)
        elif stored["enabled"]:
            stored["timeline"] = [("Computing", now + p)]
            stored["final"] = self._next_compute.pop(stored["id"], "Live")
        else:
            stored["timeline"], stored["final"] = [], "Disabled"
        return stored

    async def _h_references(self, request: Request) -> Response:
        if not self.config.get("references_endpoint"):
            raise ApiError(404, "Not found", "NotFound")
        self._version(request, _ALPHA_ONLY)
        with self.lock:
            stored = self._require(request.path_params["space_id"], request.path_params["audience_id"])
            headers = self._limit("audience_references")
            needle = f"trait('{stored['key']}')"
            users = [
                self._render(a, full=False)
                for a in self._audiences.values()
                if a["id"] != stored["id"] and needle in a["definition"]["query"]
            ]
        page, pagination = self._page(request, users)
        return self._ok({"audiences": page, "pagination": pagination}, headers)

    async def _h_runs(self, request: Request) -> Response:
        self._version(request, _NO_BETA)
        if await request.body() or request.headers.get("content-type"):
            raise ApiError(400, "Force Execute Audience Run takes no request body", "BadRequest")
        with self.lock:
            stored = self._require(request.path_params["space_id"], request.path_params["audience_id"])
            if stored["audienceType"] != "LINKED":
                raise _validation([("audienceType", "Runs can only be forced for LINKED audiences")])
        return self._ok({"run": {"id": _id("run_")}})

    async def _h_schedules(self, request: Request) -> Response:
        body = await self._json(request) if request.method == "POST" else {}
        self._version(request, _NO_BETA, body=request.method == "POST")
        with self.lock:
            stored = self._require(request.path_params["space_id"], request.path_params["audience_id"])
            if stored["audienceType"] != "LINKED":
                raise _validation([("audienceType", "Schedules apply to LINKED audiences only")])
            if request.method == "GET":
                return self._ok({"audienceSchedules": [dict(s) for s in stored["schedules"].values()]})
            headers = self._limit("write_schedule")
            schedule = {"id": _id("sch_"), **_schedule(body)}
            stored["schedules"][schedule["id"]] = schedule
            return self._ok({"audienceSchedule": dict(schedule)}, headers)

    async def _h_schedule(self, request: Request) -> Response:
        body = await self._json(request) if request.method == "PATCH" else {}
        self._version(request, _NO_BETA, body=request.method == "PATCH")
        with self.lock:
            stored = self._require(request.path_params["space_id"], request.path_params["audience_id"])
            schedule_id = request.path_params["schedule_id"]
            schedule = stored["schedules"].get(schedule_id)
            if schedule is None:
                raise ApiError(404, f"Schedule {schedule_id} not found", "NotFound")
            if request.method == "GET":
                return self._ok({"audienceSchedule": dict(schedule)})
            headers = self._limit("write_schedule")
            if request.method == "DELETE":
                del stored["schedules"][schedule_id]
                return self._ok({"status": "SUCCESS"}, headers)
            schedule.update(_schedule(body))
            return self._ok({"audienceSchedule": dict(schedule)}, headers)

    async def _h_previews(self, request: Request) -> Response:
        self._version(request, body=True)
        body = await self._json(request)
        with self.lock:
            self._require_space(request.path_params["space_id"])
            problems = []
            definition = body.get("definition")
            problem = _definition_problem(definition.get("query") if isinstance(definition, dict) else None)
            if problem:
                problems.append(("definition.query", problem))
            if body.get("audienceType") not in ("USERS", "ACCOUNTS", "LINKED"):
                problems.append(("audienceType", "audienceType must be one of USERS, ACCOUNTS, LINKED"))
            problems.extend(_preview_options_problems(body.get("options")))
            if problems:
                raise _validation(problems)
            headers = self._limit("create_audience_preview")
            preview = {
                "id": _id("prv_"),
                "audienceType": body["audienceType"],
                "definition": dict(definition or {}),
                "options": dict(body.get("options") or {}),
                "ready_at": self.now() + self.processing_seconds,
                "failure": self._next_preview_failure,
            }
            self._next_preview_failure = None
            self._previews[preview["id"]] = preview
            return self._ok({"audiencePreview": {"id": preview["id"]}}, headers)

    async def _h_preview(self, request: Request) -> Response:
        self._version(request)
        with self.lock:
            self._require_space(request.path_params["space_id"])
            preview_id = request.path_params["preview_id"]
            preview = self._previews.get(preview_id)
            if preview is None:
                raise ApiError(404, f"Audience preview {preview_id} not found", "NotFound")
            headers = self._limit("get_audience_preview")
            out = {k: preview[k] for k in ("id", "audienceType", "definition", "options")}
            if self.now() < preview["ready_at"]:
                out["status"] = "RUNNING"
            elif preview["failure"]:
                out.update(status="FAILED", failureReason=preview["failure"])
            else:
                count = _size_of(preview["definition"]["query"])
                out.update(
                    status="COMPLETED",
                    size={"type": _SIZE_TYPES[preview["audienceType"]], "count": count},
                    results=[
                        {
                            "id": f"user_{i}",
                            "idProperty": "user_id",
                            "relationshipSlug": "profile",
                            "profilesTruncated": False,
                        }
                        for i in range(min(count, 3))
                    ],
                )
            return self._ok({"audiencePreview": out}, headers)

    async def _h_app(self, request: Request) -> Response:
        from starlette.responses import HTMLResponse

        match = re.search(r"audiences/([A-Za-z0-9_]+)", request.path_params.get("rest", ""))
        title = "Segment sandbox"
        if match and (found := self.audience(match.group(1))):
            title = f"Audience {found['name']} ({found['status']})"
        return HTMLResponse(f"<!doctype html><title>{title}</title><h1>{title}</h1>")

    def create_app(self) -> Any:
        """The base app, plus a handler that renders validation errors with their ``field``."""
        wrapped = super().create_app()

        async def field_error(request: Request, exc: Exception) -> Response:
            assert isinstance(exc, _FieldError)
            errors = [
                {"type": "ValidationFailure", "message": message, "field": field, "status": 422}
                for field, message in exc.problems
            ]
            return JSONResponse({"errors": errors}, 422)

        wrapped.app.add_exception_handler(_FieldError, field_error)  # type: ignore[attr-defined]
        return wrapped

    # ------------------------------------------------------------------ control routes
    def state(self) -> dict[str, Any]:
        """Audiences and how many edits were refused."""
        return {"audiences": self.audiences, "refused_edits": self.refused_edits}

    def control_routes(self) -> list[BaseRoute]:
        """``/_sandbox/segment/{fail_compute,set_status,fail_preview}``."""

        async def fail_compute(request: Request) -> Response:
            return await control_call(
                request,
                lambda body: self.fail_next_compute(str(body["audience_id"]), str(body.get("status", "Failed"))),
                "audience_id",
            )

        async def set_status(request: Request) -> Response:
            return await control_call(
                request,
                lambda body: self.set_status(str(body["audience_id"]), str(body["status"])),
                "audience_id and status",
            )

        async def fail_preview(request: Request) -> Response:
            try:
                body = await control_body(request)
            except ValueError as exc:
                return control_error(str(exc))
            self.fail_next_preview(str(body.get("reason") or "Preview failed"))
            return JSONResponse({"ok": True})

        p = f"/_sandbox/{self.name}"
        return [
            Route(f"{p}/fail_compute", fail_compute, methods=["POST"]),
            Route(f"{p}/set_status", set_status, methods=["POST"]),
            Route(f"{p}/fail_preview", fail_preview, methods=["POST"]),
        ]


class _FieldError(ApiError):
    """A 422 whose envelope names the input fields at fault (one ``errors[]`` item per problem)."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        super().__init__(422, "; ".join(m for _, m in problems), "ValidationFailure")
        self.problems = problems


def _validation(problems: list[tuple[str, str]]) -> ApiError:
    return _FieldError(problems)


#: CreateAudiencePreviewOptions of the SDK (73.2.0): its only fields.
_PREVIEW_OPTIONS = ("filterByExternalIds", "backfillEventDataDays")


def _preview_options_problems(options: Any) -> list[tuple[str, str]]:
    if options is None:
        return []
    if not isinstance(options, dict):
        return [("options", "options must be an object")]
    problems = [
        (f"options.{key}", f"options.{key} is not a preview option ({', '.join(_PREVIEW_OPTIONS)})")
        for key in options
        if key not in _PREVIEW_OPTIONS
    ]
    ids = options.get("filterByExternalIds")
    if ids is not None and not (isinstance(ids, list) and all(isinstance(i, str) for i in ids)):
        problems.append(("options.filterByExternalIds", "options.filterByExternalIds must be an array of strings"))
    days = options.get("backfillEventDataDays")
    if days is not None and (isinstance(days, bool) or not isinstance(days, int | float)):
        problems.append(("options.backfillEventDataDays", "options.backfillEventDataDays must be a number"))
    return problems


def _schedule(body: dict[str, Any]) -> dict[str, Any]:
    strategy = body.get("strategy")
    config = body.get("config")
    if strategy not in ("PERIODIC", "SPECIFIC_DAYS") or not isinstance(config, dict):
        raise _validation([("strategy", "strategy must be PERIODIC or SPECIFIC_DAYS, with a config object")])
    if strategy == "PERIODIC" and config.get("interval") not in (
        "15m",
        "30m",
        "1h",
        "2h",
        "4h",
        "6h",
        "8h",
        "12h",
        "1d",
    ):
        raise _validation([("config.interval", "config.interval is not an allowed interval")])
    return {"strategy": strategy, "config": dict(config)}
