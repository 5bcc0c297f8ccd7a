"""Fake Lytics API (segments, segment groups, jobs, v1 sizes/validate).

Follows Lytics' "Segment API" documentation page and its published v1/v2 API specs.

Behaviour worth knowing when writing clients:

* Auth: the raw token in ``Authorization`` (no ``Bearer``); v1 paths also accept
  ``?access_token=``. A missing/wrong token (or ``Bearer <token>``) gets 401 in the v1 shape
  ``{"message": "Not authorized", "status": 401}``, before routing, on every path.
* ``account_id`` (v2, optional) must be the sandbox account id (or its numeric ``aid``), else
  404 ``ACCOUNT-NOTFOUND-021``. It is a v2 parameter: on a v1 (``/api``) path it answers 400
  (``configure(v1_accepts_account_id=1)`` accepts it).
* v2 answers ``{"status", "request_id", "data"}``; v2 errors
  ``{"status", "errors": [{"code", "level", "message", "timestamp"}], "request_id"}``; v1 answers
  ``{"status", "message", "data"}``. Every answer carries ``X-Request-Id``.
* Create never answers 409: a taken slug becomes ``<slug>_1``, ``<slug>_2``... (slugs are unique
  per account, whatever the table). Update to a slug used by another segment: 400 ``Slug is already used.``
* ``segment_ql`` is stored re-serialised from its parsed form (back-ticks dropped, keywords
  upper-case, ``FROM``/``ALIAS`` at the end), as Lytics may do;
  ``configure(keep_segment_ql_text=1)`` stores the text as sent.
* Update with a ``segment_ql`` that has no ``FROM`` resets the table to ``user``; for a non-user
  segment the update then creates a *new* segment (new id) and still answers 200.
  Update with a ``segment_ql`` whose ``ALIAS`` differs and no ``slug_name`` renames the slug.
* ``GET /v2/segment/{id}``, ``/ancestors``, ``/jobs`` and reevaluate accept an id or a slug;
  ``PUT`` and ``DELETE`` need the 32-hex id. ``DELETE /v2/segment/a,b`` (comma-separated) answers
  ``models.SegmentDeleteResp``, and so does a single id (the document's two DELETE paths collide;
  ``configure(single_delete_answers_id=1)`` answers ``{"id", "deleted": true}`` instead, and
  ``configure(delete_no_content=1)`` 204 without a body). A segment other
  segments ``INCLUDE`` is deleted like any other (Lytics documents no guard); they turn invalid.
* The list hides invalid segments unless ``valid=false|all``; a segment is invalid while an
  ``INCLUDE`` names no existing segment.
* Reevaluation::

      POST /v2/segment/reevaluate {"id": ...}  -> 200 {"status": 200, "request_id": ...}

  The answer carries nothing else (no document shows its shape). The
  ``POST /v2/segment/{id}/reevaluate`` of Lytics' Segment API page answers 404 (no other source shows it) unless
  ``configure(seed_reevaluate_path=1)``. The work is a job ``{"id", "name", "workflow":
  "segment_reevaluate", "status", "created", "updated", "config": {"segment_id": ...}, "aid",
  "account_id"}``, listed by ``GET /v2/segment/{id}/jobs`` only with
  ``configure(list_reevaluation_jobs=1)`` (no document shows reevaluations among jobs). Its
  status is computed from the clock: ``initializing`` for the first third of
  ``processing_seconds``, then ``running``, then ``completed`` (or the status
  injected with :meth:`LyticsFake.fail_next_reevaluation`; ``running`` forever after
  :meth:`LyticsFake.stall_next_reevaluation`). When the job completes, the segment's ``size``
  changes to a new deterministic value and its ``updated`` moves to the completion time. A
  failed job changes neither. Segments carry only the fields of ``models.Segment``.
* ``POST /api/segment/size`` is throttled to one call per ``size_throttle_seconds`` (10) per
  token: 429 (v1 shape) with ``Retry-After``. The general limit ``rate_limit_per_second``
  (default off) answers 429 in the v2 envelope without ``Retry-After``.

Initial state: two segments, ``all_users`` (kind ``segment``, ``FILTER *``) and ``unsubscribed``
(kind ``aspect``), and one export job (status ``sleeping``) on ``all_users``.
"""

from __future__ import annotations

import hashlib
import html
import json
import math
import re
from typing import Any, ClassVar
from urllib.parse import parse_qsl

from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import BaseRoute, Route

from airflow_audience_provider.sandbox.base import (
    ApiError,
    ErrorReply,
    FakeRateLimiter,
    Quota,
    VendorFake,
    control_body,
    control_error,
    json_object_body,
    new_hex_id,
    request_id_of,
    rfc3339,
)
from airflow_audience_provider.sandbox.filterql import FilterQLError, ParsedQL, ast_to_ql, parse

__all__ = ["LyticsFake"]

#: Token the sandbox accepts (the connection's password).
SANDBOX_TOKEN = "lytics-sandbox-token-5f2c9a"
#: The sandbox account: string id and numeric aid.
SANDBOX_ACCOUNT_ID = "5a4d5b0c1e2f3a4b5c6d7e8f"
SANDBOX_AID = 4242
SANDBOX_AUTHOR_ID = "6b5e6c1d2f3a4b5c6d7e8f90"

TABLES = ("user", "content")
KINDS = ("segment", "aspect", "goal", "list", "conversion", "metric", "managed", "candidate")
JOB_STATUSES = (
    "running", "sleeping", "paused", "pausing", "initializing", "failed",
    "completed", "deleted", "deleting", "unknown",
)  # fmt: skip
REEVALUATE_WORKFLOW = "segment_reevaluate"
_SLUG_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_-]*$")

_V2_CODES = {
    400: "BADREQ-001",
    401: "UNAUTHORIZED-017",
    403: "FORBIDDEN-026",
    404: "NOTFOUND-003",
    405: "BADREQ-001",
    409: "BADREQ-001",
    422: "BADREQ-001",
}

# writable Segment fields and their JSON types (spec models.Segment)
_WRITABLE: dict[str, type | tuple[type, ...]] = {
    "name": str,
    "slug_name": str,
    "description": str,
    "segment_ql": str,
    "table": str,
    "kind": str,
    "is_public": bool,
    "tags": list,
    "groups": list,
    "save_hist": bool,
    "schedule_exit": bool,
    "category": str,
    "ast": dict,
    "expires_at": str,
    "emit_trigger": bool,
}
_JSON_TYPE_NAMES = {str: "string", bool: "bool", list: "array", dict: "object"}


def _stable_id(text: str) -> str:
    return hashlib.md5(text.encode(), usedforsecurity=False).hexdigest()


def _slugify(name: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")
    return slug or "segment"


def _truthy(value: str | None) -> bool:
    return (value or "").lower() in ("1", "true", "yes", "on")


class LyticsFake(VendorFake):
    """In-memory Lytics account served over HTTP. All state lives behind :attr:`~.VendorFake.lock`.

    Python API for tests: :meth:`create_segment`, :meth:`get_segment`, :attr:`segments`,
    :meth:`segment_size`, :meth:`jobs`, :meth:`add_export_job`, :meth:`fail_next_reevaluation`,
    :meth:`stall_next_reevaluation`, plus the base class' :attr:`~.VendorFake.faults`,
    :meth:`~.VendorFake.requests`, :meth:`~.VendorFake.configure`, :meth:`~.VendorFake.advance_time` and
    :meth:`~.VendorFake.reset`.
    """

    name: ClassVar[str] = "lytics"
    conn_id: ClassVar[str] = "lytics_default"
    default_config: ClassVar[dict[str, float | None]] = {
        **VendorFake.default_config,
        "processing_seconds": 3.0,
        "size_throttle_seconds": 10.0,
        # 1 = single-id DELETE answers 204 with no body (the skills say many v2 deletes do)
        "delete_no_content": 0.0,
        # 1 = single-id DELETE answers {"id", "deleted": true} (else the batch handler's SegmentDeleteResp)
        "single_delete_answers_id": 0.0,
        # Strict readings of points Lytics' documents leave unverified (1 = the lenient reading):
        # the Segment API page's POST /v2/segment/{id}/reevaluate exists (else 404: only POST /v2/segment/reevaluate)
        "seed_reevaluate_path": 0.0,
        # a reevaluation is listed as a job of the segment (else no document shows one, so none is)
        "list_reevaluation_jobs": 0.0,
        # v1 (/api) paths accept the v2 query parameter account_id (else 400)
        "v1_accepts_account_id": 0.0,
        # segment_ql is stored as sent (else re-serialised from the parsed form, back-ticks dropped)
        "keep_segment_ql_text": 0.0,
    }

    token: str = SANDBOX_TOKEN
    account_id: str = SANDBOX_ACCOUNT_ID
    aid: int = SANDBOX_AID

    # ------------------------------------------------------------------ state
    def reset_state(self) -> None:
        """Initial account: ``all_users``, ``unsubscribed`` and an export job on ``all_users``."""
        self._segments: dict[str, dict[str, Any]] = {}
        self._evaluations: dict[str, int] = {}
        self._groups: dict[str, dict[str, Any]] = {}
        self._jobs: dict[str, dict[str, Any]] = {}
        self._next_outcome: dict[str, str] = {}
        self._size_calls = FakeRateLimiter()
        seeded_at = self.now() - 30 * 86400
        for slug, name, kind, ql in (
            ("all_users", "All users", "segment", "FILTER * FROM user ALIAS all_users"),
            ("unsubscribed", "Unsubscribed", "aspect", "FILTER EXISTS unsubscribed_ts FROM user ALIAS unsubscribed"),
        ):
            self._store_new(
                {"name": name, "slug_name": slug, "kind": kind, "segment_ql": ql, "save_hist": True},
                segment_id=_stable_id(f"sandbox:lytics:{slug}"),
                at=seeded_at,
            )
        self.add_export_job(_stable_id("sandbox:lytics:all_users"), _at=seeded_at + 3600)

    @property
    def segments(self) -> list[dict[str, Any]]:
        """Every segment as the API renders it (with ``size``), oldest first."""
        with self.lock:
            self._settle()
            return [self._render(seg, sizes=True) for seg in self._segments.values()]

    @property
    def groups(self) -> list[dict[str, Any]]:
        """Every segment group."""
        with self.lock:
            return [dict(group) for group in self._groups.values()]

    def get_segment(self, id_or_slug: str) -> dict[str, Any] | None:
        """The segment with this id or slug as the API renders it (with ``size``), or ``None``."""
        with self.lock:
            self._settle()
            seg = self._lookup(id_or_slug, allow_slug=True)
            return self._render(seg, sizes=True) if seg else None

    def create_segment(self, **fields: Any) -> dict[str, Any]:
        """Create a segment directly (same rules as ``POST /v2/segment``); returns it rendered.

        :raises ApiError: on an invalid definition (status/code/message as the API would answer).
        """
        with self.lock:
            self._settle()
            return self._render(self._create(fields), sizes=True)

    def segment_size(self, id_or_slug: str) -> int:
        """Current size of a segment.

        :raises KeyError: unknown segment.
        """
        seg = self.get_segment(id_or_slug)
        if seg is None:
            raise KeyError(id_or_slug)
        return int(seg["size"])

    def jobs(self, segment_id: str | None = None) -> list[dict[str, Any]]:
        """Jobs (all, or of one segment) as the API renders them, oldest first."""
        with self.lock:
            self._settle()
            return [
                self._render_job(job)
                for job in self._jobs.values()
                if segment_id is None or job["segment_id"] == segment_id
            ]

    def add_export_job(self, segment_id: str, status: str = "sleeping", *, _at: float | None = None) -> dict[str, Any]:
        """Add an unrelated, older export job on a segment (clients must ignore it when waiting)."""
        with self.lock:
            created = _at if _at is not None else self.now() - 3600
            job: dict[str, Any] = {
                "id": _stable_id(f"export:{segment_id}:{len(self._jobs)}") if _at else new_hex_id(),
                "name": f"export_{segment_id[:8]}",
                "workflow": "export",
                "segment_id": segment_id,
                "created": created,
                "duration": 0.0,
                "outcome": status,
                "fixed_status": status,
                "applied": True,
            }
            self._jobs[job["id"]] = job
            return self._render_job(job)

    def fail_next_reevaluation(self, segment_id: str, status: str = "failed") -> None:
        """The next reevaluation job of ``segment_id`` ends in ``status`` (``failed`` or ``fault-N``)."""
        if status != "failed" and not re.fullmatch(r"fault-\d+", status):
            raise ValueError("status must be 'failed' or 'fault-<n>'")
        with self.lock:
            self._next_outcome[segment_id] = status

    def stall_next_reevaluation(self, segment_id: str) -> None:
        """The next reevaluation job of ``segment_id`` stays ``running`` forever."""
        with self.lock:
            self._next_outcome[segment_id] = "stall"

    def reevaluate(self, id_or_slug: str) -> dict[str, Any]:
        """Start a reevaluation as the API does; returns ``{"id", "job_id", "requested"}``.

        :raises ApiError: 404 for an unknown segment.
        """
        with self.lock:
            self._settle()
            return self._reevaluate(id_or_slug)

    # ------------------------------------------------------------------ connection, envelopes
    def connection(self, base_url: str) -> dict[str, Any]:
        """``{"conn_type": "lytics", "host", "password", "extra": {"account_id", "web_app_url"}}``."""
        return {
            "conn_type": "lytics",
            "host": base_url,
            "password": self.token,
            "extra": {"account_id": self.account_id, "web_app_url": f"{base_url}/app"},
        }

    def new_request_id(self) -> str:
        """Lytics-style request id."""
        return new_hex_id()[:20]

    def error_envelope(self, reply: ErrorReply) -> Response:
        """401 in the v1 shape everywhere, v1 shape under ``/api``, the v2 envelope elsewhere."""
        status, headers = reply.status, reply.headers
        if status == 401:
            return JSONResponse({"message": "Not authorized", "status": 401}, status, headers=headers)
        if reply.path.startswith("/api/"):
            return JSONResponse({"status": status, "message": reply.message, "data": None}, status, headers=headers)
        code = reply.code
        if code is None:
            code = _V2_CODES.get(status, "INTERNAL-019" if status >= 500 else "UNKNOWN-000")
        body = {
            "status": status,
            "errors": [
                {
                    "code": code,
                    "level": "error",
                    "message": reply.message,
                    "timestamp": rfc3339(self.now()),
                }
            ],
            "request_id": reply.request_id,
        }
        return JSONResponse(body, status, headers=headers)

    def check_request(self, request: Request) -> None:
        """Token check before routing (``/v2`` and ``/api``), then the v2 ``account_id`` check."""
        path = request.url.path
        is_v2 = path == "/v2" or path.startswith("/v2/")
        is_v1 = path == "/api" or path.startswith("/api/")
        if not (is_v1 or is_v2):
            return
        token = request.headers.get("authorization")
        if token is None and is_v1:
            token = request.query_params.get("access_token")
        if token != self.token:
            raise ApiError(401, "Not authorized")
        account = request.query_params.get("account_id")
        if is_v1 and account is not None and not self.config.get("v1_accepts_account_id"):
            raise ApiError(400, "unknown query parameter account_id (a v2 parameter)")
        if is_v2 and account is not None and account not in (self.account_id, str(self.aid)):
            raise ApiError(404, f"account {account!r} not found", "ACCOUNT-NOTFOUND-021")

    def rate_limit_key(self, request: Request) -> str | None:
        """The token (header or v1 query parameter)."""
        return request.headers.get("authorization") or request.query_params.get("access_token")

    # ------------------------------------------------------------------ internals (call under lock)
    def _lookup(self, ref: str, *, allow_slug: bool, table: str | None = None) -> dict[str, Any] | None:
        seg = self._segments.get(ref)
        if seg is not None or not allow_slug:
            return seg
        candidates = [s for s in self._segments.values() if s["slug_name"] == ref]
        if table:
            candidates = [s for s in candidates if s["table"] == table]
        candidates.sort(key=lambda s: (s["table"] != "user", s["created"]))
        return candidates[0] if candidates else None

    def _require(self, ref: str, *, allow_slug: bool, table: str | None = None) -> dict[str, Any]:
        seg = self._lookup(ref, allow_slug=allow_slug, table=table)
        if seg is None:
            raise ApiError(404, f"segment {ref!r} not found", "NOTFOUND-003")
        return seg

    def _slug_owner(self, slug: str) -> dict[str, Any] | None:
        """The segment with this slug: slugs are unique per account, whatever the table."""
        for seg in self._segments.values():
            if seg["slug_name"] == slug:
                return seg
        return None

    def _size(self, segment_id: str) -> int:
        seg = self._segments[segment_id]
        evaluations = self._evaluations.get(segment_id, 0)
        ceiling = 2_000_000 if seg["_ast"].get("op") == "*" else 250_000

        def at(n: int) -> int:
            digest = hashlib.sha256(f"{segment_id}:{n}".encode()).hexdigest()
            return 100 + int(digest[:12], 16) % ceiling

        size = at(evaluations)
        if evaluations and size == at(evaluations - 1):
            size += 1
        return size

    def _parse(self, segment_ql: str) -> ParsedQL:
        try:
            return parse(segment_ql)
        except FilterQLError as exc:
            raise ApiError(400, str(exc), "BADREQ-001") from None

    def _check_fields(self, body: dict[str, Any]) -> dict[str, Any]:
        clean: dict[str, Any] = {}
        for key, value in body.items():
            expected = _WRITABLE.get(key)
            if expected is None:
                continue  # server-managed or unknown fields are ignored, like the server does
            if value is None:
                continue
            if not isinstance(value, expected) or (expected is not bool and isinstance(value, bool)):
                wanted = _JSON_TYPE_NAMES.get(expected, "value")  # type: ignore[call-overload,arg-type]
                raise ApiError(
                    400,
                    f"json: cannot unmarshal {type(value).__name__} into Go struct field Segment.{key} "
                    f"of type {wanted}",
                    "JSON-BADREQ-025",
                )
            if isinstance(value, list) and not all(isinstance(item, str) for item in value):
                raise ApiError(400, f"{key} must be a list of strings", "JSON-BADREQ-025")
            clean[key] = value
        if "table" in clean and clean["table"] not in TABLES:
            raise ApiError(404, f"table {clean['table']!r} not found", "TABLE-NOTFOUND-009")
        if "kind" in clean and clean["kind"] not in KINDS:
            raise ApiError(400, f"invalid kind {clean['kind']!r}; expected one of {', '.join(KINDS)}")
        if "slug_name" in clean and not _SLUG_RE.match(clean["slug_name"]):
            raise ApiError(400, f"invalid slug_name {clean['slug_name']!r}: use letters, digits, _ and -")
        if "name" in clean and not clean["name"].strip():
            raise ApiError(400, "name must not be empty")
        return clean

    def _definition(self, fields: dict[str, Any]) -> tuple[str, ParsedQL]:
        if "segment_ql" in fields:
            parsed = self._parse(fields["segment_ql"])
            if self.config.get("keep_segment_ql_text"):
                return fields["segment_ql"], parsed
            # Lytics may store its own rendering of the statement.
            return ast_to_ql(parsed.ast, table=parsed.table, alias=parsed.alias), parsed
        try:
            text = ast_to_ql(fields["ast"], table=fields.get("table"), alias=fields.get("slug_name"))
        except FilterQLError as exc:
            raise ApiError(400, f"invalid ast: {exc}", "BADREQ-001") from None
        return text, self._parse(text)

    def _store_new(self, fields: dict[str, Any], *, segment_id: str | None = None, at: float | None = None) -> dict:
        now = self.now() if at is None else at
        segment_ql, parsed = self._definition(fields)
        table = parsed.table or fields.get("table") or "user"
        if table not in TABLES:
            raise ApiError(404, f"table {table!r} not found", "TABLE-NOTFOUND-009")
        slug = fields.get("slug_name") or parsed.alias or _slugify(fields.get("name") or "")
        if not _SLUG_RE.match(slug):
            raise ApiError(400, f"invalid slug_name {slug!r}: use letters, digits, _ and -")
        base, suffix = slug, 0
        while self._slug_owner(slug) is not None:  # a taken slug is silently renamed, never 409
            suffix += 1
            slug = f"{base}_{suffix}"
        is_public = bool(fields.get("is_public", False))
        seg: dict[str, Any] = {
            "id": segment_id or new_hex_id(),
            "aid": self.aid,
            "account_id": self.account_id,
            "author_id": SANDBOX_AUTHOR_ID,
            "name": fields.get("name") or slug,
            "slug_name": slug,
            "description": fields.get("description", ""),
            "segment_ql": segment_ql,
            "table": table,
            "kind": fields.get("kind", "segment"),
            "is_public": is_public,
            "tags": list(fields.get("tags") or []),
            "groups": list(fields.get("groups") or []),
            "save_hist": bool(fields.get("save_hist", False)),
            "schedule_exit": bool(fields.get("schedule_exit", False)),
            "category": fields.get("category", ""),
            "deleted": False,
            "created": now,
            "updated": now,
            "last_evaluated": now,
        }
        if is_public:
            seg["public_name"] = slug
        for extra in ("expires_at", "emit_trigger"):
            if extra in fields:
                seg[extra] = fields[extra]
        self._apply_parsed(seg, parsed)
        self._segments[seg["id"]] = seg
        self._evaluations[seg["id"]] = 0
        return seg

    @staticmethod
    def _apply_parsed(seg: dict[str, Any], parsed: ParsedQL) -> None:
        seg["_ast"] = parsed.ast
        seg["_fields"] = list(parsed.fields)
        seg["_includes"] = list(parsed.includes)
        seg["_datemath"] = parsed.datemath

    def _create(self, body: dict[str, Any]) -> dict[str, Any]:
        fields = self._check_fields(body)
        if "segment_ql" not in fields and "ast" not in fields:
            raise ApiError(400, "segment_ql is required", "BADREQ-001")
        if not (fields.get("name") or fields.get("slug_name")):
            parsed = self._parse(fields["segment_ql"]) if "segment_ql" in fields else None
            if not (parsed and parsed.alias):
                raise ApiError(400, "name is required", "BADREQ-001")
        return self._store_new(fields)

    def _update(self, segment_id: str, body: dict[str, Any]) -> dict[str, Any]:
        seg = self._require(segment_id, allow_slug=False)
        fields = self._check_fields(body)
        parsed: ParsedQL | None = None
        segment_ql = seg["segment_ql"]
        if "segment_ql" in fields or "ast" in fields:
            if "segment_ql" not in fields:
                fields["table"] = fields.get("table") or seg["table"]
            segment_ql, parsed = self._definition(fields)
        # a segment_ql without FROM resets the table to user
        table = (parsed.table or "user") if parsed is not None else fields.get("table", seg["table"])
        if "slug_name" in fields:
            slug = fields["slug_name"]
        elif parsed is not None and parsed.alias:
            slug = parsed.alias  # an ALIAS renames the slug
        else:
            slug = seg["slug_name"]
        if table != seg["table"]:
            # the update misses the original and creates another segment, still "success"
            merged = {k: v for k, v in seg.items() if k in _WRITABLE and not k.startswith("_")}
            merged.update(fields)
            merged.update({"segment_ql": segment_ql, "table": table, "slug_name": slug})
            merged.pop("ast", None)
            return self._store_new(merged)
        owner = self._slug_owner(slug)
        if owner is not None and owner["id"] != seg["id"]:
            raise ApiError(400, "Slug is already used.", "BADREQ-001")
        for key in ("name", "description", "kind", "tags", "groups", "save_hist", "schedule_exit", "category"):
            if key in fields:
                seg[key] = list(fields[key]) if isinstance(fields[key], list) else fields[key]
        for extra in ("expires_at", "emit_trigger"):
            if extra in fields:
                seg[extra] = fields[extra]
        if "is_public" in fields:
            seg["is_public"] = fields["is_public"]
        seg["slug_name"] = slug
        if seg["is_public"]:
            seg["public_name"] = slug  # kept when is_public goes back to false
        seg["segment_ql"] = segment_ql
        seg["table"] = table
        if parsed is not None:
            self._apply_parsed(seg, parsed)
        seg["updated"] = self.now()
        return seg

    def _included_by(self, segment_id: str) -> list[dict[str, Any]]:
        result = []
        for other in self._segments.values():
            if other["id"] == segment_id:
                continue
            for ref in other["_includes"]:
                target = self._lookup(ref, allow_slug=True, table=other["table"])
                if target is not None and target["id"] == segment_id:
                    result.append(other)
                    break
        return result

    def _ancestors(self, seg: dict[str, Any]) -> list[dict[str, Any]]:
        seen = {seg["id"]}
        order: list[dict[str, Any]] = []
        queue = [seg]
        while queue:
            current = queue.pop(0)
            for ref in current["_includes"]:
                target = self._lookup(ref, allow_slug=True, table=current["table"])
                if target is not None and target["id"] not in seen:
                    seen.add(target["id"])
                    order.append(target)
                    queue.append(target)
        return order

    def _delete(self, segment_id: str) -> None:
        self._segments.pop(segment_id, None)
        self._evaluations.pop(segment_id, None)
        self._next_outcome.pop(segment_id, None)

    def _reevaluate(self, ref: str) -> dict[str, Any]:
        seg = self._require(ref, allow_slug=True)
        now = self.now()
        outcome = self._next_outcome.pop(seg["id"], "completed")
        job = {
            "id": new_hex_id(),
            "name": f"reevaluate_{seg['slug_name']}",
            "workflow": REEVALUATE_WORKFLOW,
            "segment_id": seg["id"],
            "created": now,
            "duration": self.processing_seconds,
            "outcome": outcome,
            "fixed_status": None,
            "applied": False,
            "listed": bool(self.config.get("list_reevaluation_jobs")),
        }
        self._jobs[job["id"]] = job
        return {"id": seg["id"], "job_id": job["id"], "requested": rfc3339(now)}

    def _job_state(self, job: dict[str, Any], now: float) -> tuple[str, float]:
        """(status, time of the last status change) computed from the clock."""
        if job["fixed_status"]:
            return job["fixed_status"], job["created"]
        elapsed, duration = now - job["created"], job["duration"]
        if elapsed < duration / 3:
            return "initializing", job["created"]
        if job["outcome"] == "stall" or elapsed < duration:
            return "running", job["created"] + duration / 3
        return job["outcome"], job["created"] + duration

    def _settle(self) -> None:
        """Apply the effects of reevaluation jobs that completed by now."""
        now = self.now()
        for job in sorted(self._jobs.values(), key=lambda j: j["created"]):
            if job["applied"]:
                continue
            status, changed = self._job_state(job, now)
            if status in ("initializing", "running"):
                continue
            job["applied"] = True
            seg = self._segments.get(job["segment_id"])
            if status == "completed" and seg is not None:
                self._evaluations[seg["id"]] = self._evaluations.get(seg["id"], 0) + 1
                seg["last_evaluated"] = changed
                seg["updated"] = max(seg["updated"], changed)

    def _render(self, seg: dict[str, Any], *, sizes: bool) -> dict[str, Any]:
        out = {k: (list(v) if isinstance(v, list) else v) for k, v in seg.items() if not k.startswith("_")}
        out.pop("last_evaluated", None)  # kept internally; models.Segment has no such field
        for key in ("created", "updated"):
            out[key] = rfc3339(seg[key])
        missing = [ref for ref in seg["_includes"] if self._lookup(ref, allow_slug=True, table=seg["table"]) is None]
        out["invalid"] = bool(missing)
        out["invalid_reason"] = f"INCLUDE references unknown segment {missing[0]!r}" if missing else ""
        out["ast"] = json.loads(json.dumps(seg["_ast"]))
        out["fields"] = list(seg["_fields"])
        out["field_changes_fields"] = []
        out["includes"] = [
            target["id"]
            for ref in seg["_includes"]
            if (target := self._lookup(ref, allow_slug=True, table=seg["table"])) is not None
        ]
        out["datemath_calc"] = bool(seg["_datemath"])
        out["forward_datemath"] = False
        if sizes:
            out["size"] = self._size(seg["id"])
        return out

    def _render_job(self, job: dict[str, Any]) -> dict[str, Any]:
        status, changed = self._job_state(job, self.now())
        return {
            "id": job["id"],
            "name": job["name"],
            "workflow": job["workflow"],
            "status": status,
            "aid": self.aid,
            "account_id": self.account_id,
            "created": rfc3339(job["created"]),
            "updated": rfc3339(changed),
            "config": {"segment_id": job["segment_id"]},
        }

    def _render_group(self, group: dict[str, Any]) -> dict[str, Any]:
        return dict(group)

    # ------------------------------------------------------------------ HTTP helpers
    def _ok(self, request: Request, data: Any, status: int = 200) -> JSONResponse:
        return JSONResponse({"status": status, "request_id": request_id_of(request), "data": data}, status)

    @staticmethod
    def _v1(data: Any, status: int = 200, message: str = "success") -> JSONResponse:
        return JSONResponse({"status": status, "message": message, "data": data}, status)

    @staticmethod
    async def _json(request: Request) -> dict[str, Any]:
        return await json_object_body(
            request,
            lambda detail: ApiError(400, f"invalid JSON body: {detail}", "JSON-BADREQ-025"),
            lambda: ApiError(400, "request body must be a JSON object", "JSON-BADREQ-025"),
            empty=b"null",
        )

    @staticmethod
    async def _text(request: Request) -> str:
        raw = await request.body()
        return raw.decode("utf-8", errors="replace").strip()

    # ------------------------------------------------------------------ routes
    def routes(self) -> list[BaseRoute]:
        """v2 segments/groups/jobs, v1 sizes/validate/size, and a tiny web app under ``/app``."""
        return [
            Route("/v2/segment", self._h_segments, methods=["GET", "POST"]),
            Route("/v2/segment/group", self._h_groups, methods=["GET", "POST"]),
            Route("/v2/segment/group/{group_id}", self._h_group, methods=["GET", "PUT", "DELETE"]),
            Route("/v2/segment/reevaluate", self._h_reevaluate_body, methods=["POST"]),
            Route("/v2/segment/{segment_id}/reevaluate", self._h_reevaluate, methods=["POST"]),
            Route("/v2/segment/{segment_id}/ancestors", self._h_ancestors, methods=["GET"]),
            Route("/v2/segment/{segment_id}/jobs", self._h_jobs, methods=["GET"]),
            Route("/v2/segment/{segment_id}", self._h_segment, methods=["GET", "PUT", "DELETE"]),
            Route("/api/segment/sizes", self._h_v1_sizes, methods=["GET"]),
            Route("/api/segment/validate", self._h_v1_validate, methods=["POST"]),
            Route("/api/segment/size", self._h_v1_adhoc_size, methods=["POST"]),
            Route("/api/segment/{segment_id}/size", self._h_v1_one_size, methods=["GET"]),
            Route("/api/segment/{segment_id}/sizes", self._h_v1_one_size, methods=["GET"]),
            Route("/app", self._h_app, methods=["GET"]),
            Route("/app/{rest:path}", self._h_app, methods=["GET"]),
        ]

    async def _h_segments(self, request: Request) -> Response:
        if request.method == "POST":
            body = await self._json(request)
            with self.lock:
                self._settle()
                return self._ok(request, self._render(self._create(body), sizes=False), 201)
        params = request.query_params
        table = params.get("table")
        valid = (params.get("valid") or "true").lower()
        kind = (params.get("kind") or "all").lower()
        if valid not in ("true", "false", "all"):
            raise ApiError(400, "valid must be true, false or all")
        if table is not None and table not in TABLES:
            raise ApiError(404, f"table {table!r} not found", "TABLE-NOTFOUND-009")
        sizes = _truthy(params.get("sizes"))
        with self.lock:
            self._settle()
            out = []
            for seg in self._segments.values():
                rendered = self._render(seg, sizes=sizes)
                if table and seg["table"] != table:
                    continue
                if kind != "all" and seg["kind"] != kind:
                    continue
                if valid != "all" and rendered["invalid"] == (valid == "true"):
                    continue
                out.append(rendered)
        return self._ok(request, out)

    async def _h_segment(self, request: Request) -> Response:
        ref = request.path_params["segment_id"]
        if request.method == "GET":
            with self.lock:
                self._settle()
                seg = self._require(ref, allow_slug=True, table=request.query_params.get("table"))
                return self._ok(request, self._render(seg, sizes=_truthy(request.query_params.get("sizes"))))
        if request.method == "PUT":
            body = await self._json(request)
            with self.lock:
                self._settle()
                return self._ok(request, self._render(self._update(ref, body), sizes=False))
        ids = [part.strip() for part in ref.split(",") if part.strip()]
        with self.lock:
            if len(ids) == 1 and "," not in ref:
                # Lytics documents no guard for a segment other segments INCLUDE: they turn invalid.
                seg = self._require(ids[0], allow_slug=False)
                if self.config.get("delete_no_content"):
                    self._delete(seg["id"])
                    return Response(status_code=204)
                if self.config.get("single_delete_answers_id"):
                    self._delete(seg["id"])
                    return self._ok(request, {"id": seg["id"], "deleted": True})
                # The document's /segment/{id} and /segment/{ids} collide; the batch handler answers.
                return self._ok(request, self._delete_many([seg["id"]]))
            return self._ok(request, self._delete_many(ids))

    def _delete_many(self, ids: list[str]) -> dict[str, Any]:
        deleted: list[str] = []
        not_deleted: list[str] = []
        statuses: list[dict[str, Any]] = []
        for segment_id in ids:
            seg = self._segments.get(segment_id)
            if seg is None:
                not_deleted.append(segment_id)
                statuses.append({"id": segment_id, "deleted": False, "reason": "segment not found", "segments": {}})
                continue
            deleted.append(segment_id)
            statuses.append({"id": segment_id, "deleted": True, "reason": "", "segments": {}})
        for segment_id in deleted:
            self._delete(segment_id)
        return {"deleted": deleted, "not_deleted": not_deleted, "segments": statuses}

    async def _h_reevaluate(self, request: Request) -> Response:
        if not self.config.get("seed_reevaluate_path"):
            raise ApiError(404, f"route not found: POST {request.url.path}", "NOTFOUND-003")
        with self.lock:
            self._settle()
            self._reevaluate(request.path_params["segment_id"])
        return self._accepted(request)

    def _accepted(self, request: Request) -> JSONResponse:
        """The reevaluate answer: no document shows its shape, so it carries nothing beyond the envelope."""
        return JSONResponse({"status": 200, "request_id": request_id_of(request)}, 200)

    async def _h_reevaluate_body(self, request: Request) -> Response:
        body = await self._json(request)
        ref = body.get("id")
        if not isinstance(ref, str) or not ref:
            raise ApiError(400, "id is required")
        with self.lock:
            self._settle()
            self._reevaluate(ref)
        return self._accepted(request)

    async def _h_ancestors(self, request: Request) -> Response:
        with self.lock:
            self._settle()
            seg = self._require(request.path_params["segment_id"], allow_slug=True)
            return self._ok(request, [self._render(a, sizes=False) for a in self._ancestors(seg)])

    async def _h_jobs(self, request: Request) -> Response:
        with self.lock:
            self._settle()
            seg = self._require(request.path_params["segment_id"], allow_slug=True)
            jobs = [
                self._render_job(job)
                for job in self._jobs.values()
                if job["segment_id"] == seg["id"] and job.get("listed", True)
            ]
            return self._ok(request, jobs)

    async def _h_groups(self, request: Request) -> Response:
        if request.method == "GET":
            with self.lock:
                return self._ok(request, [self._render_group(g) for g in self._groups.values()])
        body = await self._json(request)
        name, description = body.get("name"), body.get("description", "")
        if not isinstance(name, str) or not name.strip():
            raise ApiError(400, "name is required")
        if not isinstance(description, str):
            raise ApiError(400, "description must be a string", "JSON-BADREQ-025")
        with self.lock:
            now = rfc3339(self.now())
            group: dict[str, Any] = {
                "id": new_hex_id(),
                "aid": self.aid,
                "account_id": self.account_id,
                "name": name,
                "description": description,
                "created": now,
                "updated": now,
            }
            self._groups[group["id"]] = group
            return self._ok(request, self._render_group(group), 201)

    async def _h_group(self, request: Request) -> Response:
        group_id = request.path_params["group_id"]
        body = await self._json(request) if request.method == "PUT" else {}
        with self.lock:
            group = self._groups.get(group_id)
            if group is None:
                raise ApiError(404, f"segment group {group_id!r} not found", "NOTFOUND-003")
            if request.method == "GET":
                return self._ok(request, self._render_group(group))
            if request.method == "DELETE":
                del self._groups[group_id]
                for seg in self._segments.values():  # segments stay; only the membership goes
                    if group_id in seg["groups"]:
                        seg["groups"] = [g for g in seg["groups"] if g != group_id]
                return self._ok(request, {"id": group_id, "deleted": True})
            for key in ("name", "description"):
                if key in body:
                    if not isinstance(body[key], str) or (key == "name" and not body[key].strip()):
                        raise ApiError(400, f"{key} must be a non-empty string")
                    group[key] = body[key]
            group["updated"] = rfc3339(self.now())
            return self._ok(request, self._render_group(group))

    async def _h_v1_sizes(self, request: Request) -> Response:
        refs: list[str] = []
        for key, value in parse_qsl(request.url.query, keep_blank_values=True):
            if key in ("ids", "ids[]"):
                refs.extend(part.strip() for part in value.strip("[]").split(",") if part.strip())
        if not refs:
            raise ApiError(400, "ids is required")
        with self.lock:
            self._settle()
            out = []
            for ref in dict.fromkeys(refs):
                seg = self._lookup(ref, allow_slug=True)
                if seg is not None:
                    out.append(self._size_item(seg))
        return self._v1(out)

    def _size_item(self, seg: dict[str, Any]) -> dict[str, Any]:
        return {"id": seg["id"], "name": seg["name"], "slug_name": seg["slug_name"], "size": self._size(seg["id"])}

    async def _h_v1_one_size(self, request: Request) -> Response:
        with self.lock:
            self._settle()
            seg = self._require(request.path_params["segment_id"], allow_slug=True)
            return self._v1(self._size_item(seg))

    async def _h_v1_validate(self, request: Request) -> Response:
        text = await self._text(request)
        self._parse(text)
        return self._v1(None)

    async def _h_v1_adhoc_size(self, request: Request) -> Response:
        key = self.rate_limit_key(request) or ""
        window = float(self.config.get("size_throttle_seconds") or 0.0)
        with self.lock:
            now = self.now()
            full = self._size_calls.hit(now, Quota(key, 1 if window else None, window))
            if full is not None:
                wait = max(1, math.ceil(full.resets_at - now))
                raise ApiError(
                    429,
                    f"Too Many Requests: segment size is limited to 1 request per {window:g} seconds",
                    headers={"Retry-After": str(wait)},
                )
        text = await self._text(request)
        parsed = self._parse(text)
        canonical = json.dumps(parsed.ast, sort_keys=True) + (parsed.table or "user")
        size = 100 + int(hashlib.sha256(canonical.encode()).hexdigest()[:12], 16) % 250_000
        alias = parsed.alias or ""
        return self._v1({"id": "", "name": alias, "slug_name": alias, "size": size})

    async def _h_app(self, request: Request) -> Response:
        rest = request.path_params.get("rest", "")
        title = "Lytics sandbox"
        detail = ""
        match = re.search(r"([0-9a-f]{32})", rest)
        if match:
            seg = self.get_segment(match.group(1))
            if seg is not None:
                title = f"Audience {seg['name']}"
                detail = f"<p>slug <code>{html.escape(seg['slug_name'])}</code>, size {seg['size']}</p>"
        page = f"<!doctype html><title>{html.escape(title)}</title><h1>{html.escape(title)}</h1>{detail}"
        return HTMLResponse(page)

    # ------------------------------------------------------------------ control routes
    def state(self) -> dict[str, Any]:
        """Segments, segment groups and jobs."""
        return {"segments": self.segments, "groups": self.groups, "jobs": self.jobs()}

    def control_routes(self) -> list[BaseRoute]:
        """``/_sandbox/lytics/{fail_reevaluation,stall_reevaluation,export_job}``."""

        async def body_of(request: Request) -> dict[str, Any]:
            body = await control_body(request)
            if not isinstance(body.get("segment_id"), str):
                raise ValueError("body must be a JSON object with 'segment_id'")
            return body

        async def fail(request: Request) -> Response:
            try:
                body = await body_of(request)
                self.fail_next_reevaluation(body["segment_id"], body.get("status", "failed"))
            except ValueError as exc:
                return control_error(str(exc))
            return JSONResponse({"segment_id": body["segment_id"], "next_outcome": body.get("status", "failed")})

        async def stall(request: Request) -> Response:
            try:
                body = await body_of(request)
            except ValueError as exc:
                return control_error(str(exc))
            self.stall_next_reevaluation(body["segment_id"])
            return JSONResponse({"segment_id": body["segment_id"], "next_outcome": "stall"})

        async def export_job(request: Request) -> Response:
            try:
                body = await body_of(request)
            except ValueError as exc:
                return control_error(str(exc))
            return JSONResponse({"job": self.add_export_job(body["segment_id"], body.get("status", "sleeping"))})

        p = f"/_sandbox/{self.name}"
        return [
            Route(f"{p}/fail_reevaluation", fail, methods=["POST"]),
            Route(f"{p}/stall_reevaluation", stall, methods=["POST"]),
            Route(f"{p}/export_job", export_job, methods=["POST"]),
        ]
