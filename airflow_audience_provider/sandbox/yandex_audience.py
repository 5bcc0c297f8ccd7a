"""Fake Yandex.Audience management API v1 following Yandex's API reference (yandex.ru/dev/audience).

Behaviour worth knowing when writing clients:

* Everything lives under ``/v1/management/``. Auth: exactly ``Authorization: OAuth <token>``;
  missing, wrong or ``Bearer`` tokens get 401 ``unauthorized``; the token
  ``NO_RIGHTS_TOKEN`` is valid but lacks Audience rights: 403 ``access_denied``.
* Errors: ``{"errors": [{"error_type", "message", "location"?}], "code": <status>, "message"}``.
* Ids are integers. Single objects come wrapped (``{"segment": {...}}``), lists as
  ``{"segments": [...]}``; deletes answer ``{"success": true}``.
* File segments: ``segments/upload_file`` (plain list: device ids, MACs, ClientIDs) and
  ``segments/upload_csv_file`` (CRM CSV with a header naming ``email`` and/or ``phone``; a bad
  header is 400 ``header_validation_error``) create a draft with status ``uploaded``; files over
  ``max_file_bytes`` (1 GB) or empty are 400 ``invalid_uploading``. ``segment/{id}/confirm``
  checks the content type against the upload (``crm`` needs the CSV upload), refuses MD5,
  enforces ``min_entries`` (100) unless ``check_size=false``, and starts processing:
  ``is_processed`` for ``processing_seconds``, then ``processed``, or ``few_data`` when fewer than
  ``min_matched_ids`` ids matched (matched = 60 % of the valid unique values, 3 cookies each), or
  the outcome set by :meth:`YandexAudienceFake.fail_next_processing`.
* ``modify_data`` (``addition``/``subtraction``/``replace``) needs a confirmed file segment,
  the same file structure and hashed form; the same file twice in a row is 400 ``no_changes``.
  The segment is ``is_updated`` for ``processing_seconds``. Assumption: it is accepted in any
  confirmed status (clients say ``processed`` only; unverified).
* Non-file segments (metrika, appmetrica, geo, pixel, lookalike) start ``is_processed``.
  Lookalikes need an own, ``processed`` source (403 for a segment shared with the login).
* Other logins' segments: one is shared with the sandbox login (visible, read-only: 403 on
  writes), one is not (404).
* Quotas (429 ``quota``, the message names the quota and its period): per login 10/100/500
  segment writes per minute/hour/day (uploads, confirms, modify_data, create_*, rename, delete),
  5000 requests per day, 30 requests per second per IP; reprocess twice per segment and 20 per
  login per 24 h. Every request counts, failed ones too (unverified: clients say so, the reference
  does not). All windows slide on the fake's clock (:meth:`~.VendorFake.advance_time`) and are configurable.
* ``segment/{id}/update_geo_points`` answers 400: the feature is switched off (so the reference says).

Strict choices where Yandex's documentation leaves a point open (each has a setting for the other reading):

* ``modify_data`` on a segment still processing (``is_processed``/``is_updated``) is refused with 400
  ``invalid_parameter`` (clients say it needs ``processed``); ``modify_while_processing=1`` accepts it.
* ``owner`` is written the way Yandex spells the login, not the way the client does: hyphens as
  dots (``sandbox.login`` for the login ``sandbox-login``; Yandex treats both as one login).
* CRM (CSV) file segments are listed with ``type`` ``universal`` (the newer file segments of the
  web interface); ``universal_file_segments=0`` lists them as ``uploading``.
* ``GET segments`` answers at most ``max_page_size`` segments (``limit``/``offset``, default page 10000);
  a larger ``limit`` is refused with 400.
* ``quota_names_period=0`` words 429 messages without the quota's period.

Python API for tests and other fakes: :meth:`YandexAudienceFake.segments`,
:meth:`YandexAudienceFake.get_segment`, :meth:`YandexAudienceFake.processed_segments` (for the
Yandex Direct fake), :meth:`YandexAudienceFake.fail_next_processing`,
:meth:`YandexAudienceFake.grants`, :meth:`YandexAudienceFake.pixels`,
:meth:`YandexAudienceFake.delegates`.
"""

from __future__ import annotations

import csv
import hashlib
import io
import re
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
    control_call,
    json_object_body,
    rfc3339,
)

__all__ = ["YandexAudienceFake"]

SANDBOX_TOKEN = "yandex-audience-sandbox-token-7d1e"
NO_RIGHTS_TOKEN = "yandex-audience-sandbox-token-no-rights"
SANDBOX_LOGIN = "sandbox-login"
OTHER_LOGIN = "other-login"
PREFIX = "/v1/management"

_ERROR_TYPES = {
    400: "invalid_parameter",
    401: "unauthorized",
    403: "access_denied",
    404: "not_found",
    405: "invalid_parameter",
    406: "not_acceptable",
    409: "conflict",
    429: "quota",
    500: "backend_error",
    502: "backend_error",
    503: "backend_error",
    504: "timeout",
}
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
_MAC = re.compile(r"^[0-9a-fA-F]{12}$")
CONTENT_TYPES = {"crm": "csv", "idfa_gaid": "plain", "mac": "plain"}
#: segment write operations counted against the 10/100/500 quotas (exact set unverified)
_WRITE_PATHS = re.compile(
    r"^/v1/management/(segments/(upload_file|upload_csv_file|create_\w+)"
    r"|segment/(client_id/)?\d+/(confirm|modify_data)|segment/\d+)$"
)


def _fail(status: int, error_type: str, message: str, location: str | None = None) -> ApiError:
    return ApiError(status, message, error_type, location=location)


class YandexAudienceFake(VendorFake):
    """In-memory Yandex.Audience account of ``SANDBOX_LOGIN``. All state lives behind :attr:`~.VendorFake.lock`."""

    name: ClassVar[str] = "yandex_audience"
    conn_id: ClassVar[str] = "yandex_audience_default"
    default_config: ClassVar[dict[str, float | None]] = {
        **VendorFake.default_config,
        "processing_seconds": 3.0,
        "writes_per_minute": 10,
        "writes_per_hour": 100,
        "writes_per_day": 500,
        "requests_per_day": 5000,
        "requests_per_second_per_ip": 30,
        "reprocess_per_segment_per_day": 2,
        "reprocess_per_login_per_day": 20,
        "max_file_bytes": 1_000_000_000,
        "min_entries": 100,
        "min_matched_ids": 100,
        #: largest ``limit`` of ``GET segments`` (also the page given without one)
        "max_page_size": 10000,
        #: 1: modify_data is accepted while the segment is still processing (0: refused, 400)
        "modify_while_processing": 0,
        #: 1: CRM (CSV) file segments are listed with ``type`` ``universal``; 0: ``uploading``
        "universal_file_segments": 1,
        #: 1: 429 quota messages name the quota and its period ("... per minute ..."); 0: they do not
        "quota_names_period": 1,
    }

    token: str = SANDBOX_TOKEN
    login: str = SANDBOX_LOGIN

    # ------------------------------------------------------------------ state
    def reset_state(self) -> None:
        """Initial account: one processed Metrica segment of the login, one segment of another login
        shared with it, one it cannot see, a pixel, an account it is a delegate of."""
        self._segments: dict[int, dict[str, Any]] = {}
        self._pixels: dict[int, dict[str, Any]] = {}
        self._delegates: dict[str, dict[str, Any]] = {}
        self._next_id = 30_000_001
        self._next_pixel = 7001
        self._forced: dict[int, str] = {}
        self._quotas = FakeRateLimiter()
        seeded = self.now() - 30 * 86400
        self._accounts = [{"user_login": "client-login-1", "perm": "edit", "created_at": rfc3339(seeded)}]
        own = self._new_segment("metrika", "Site visitors (Metrica)", at=seeded)
        own.update(metrika_segment_type="counter_id", metrika_segment_id=44147844, _busy_until=seeded)
        shared = self._new_segment("uploading", "Partner CRM buyers", owner=OTHER_LOGIN, at=seeded)
        shared.update(
            _confirmed=True,
            _busy_until=seeded,
            _values={f"{i:064x}" for i in range(500)},
            content_type="crm",
            hashed=True,
            _grants={self.login: {"user_login": self.login, "comment": "", "created_at": rfc3339(seeded)}},
        )
        self._new_segment("uploading", "Private segment of another login", owner=OTHER_LOGIN, at=seeded).update(
            _confirmed=True, _busy_until=seeded, _values={"x"}, content_type="crm"
        )
        pixel = self._new_pixel("Sandbox pixel", at=seeded)
        pixel.update(user_quantity_7=1200, user_quantity_30=5400, user_quantity_90=13100)

    def _new_segment(self, seg_type: str, name: str, *, owner: str | None = None, at: float | None = None) -> dict:
        sid = self._next_id
        self._next_id += 1
        seg: dict[str, Any] = {
            "id": sid,
            "name": name,
            "type": seg_type,
            "owner": owner or self.login,
            "_created": self.now() if at is None else at,
            "_confirmed": seg_type != "uploading",
            "_busy_until": (self.now() if at is None else at) + self.processing_seconds,
            "_phase": "is_processed",
            "_outcome": None,
            "_values": set(),
            "_grants": {},
            "_last_file": None,
        }
        self._segments[sid] = seg
        return seg

    def _new_pixel(self, name: str, at: float | None = None) -> dict[str, Any]:
        pid = self._next_pixel
        self._next_pixel += 1
        pixel = {
            "id": pid,
            "name": name,
            "create_time": rfc3339(self.now() if at is None else at),
            "url": f"https://mc.yandex.ru/pixel/{pid}?rnd=%aw_random%",
            "user_quantity_7": 0,
            "user_quantity_30": 0,
            "user_quantity_90": 0,
            "_deleted": False,
        }
        self._pixels[pid] = pixel
        return pixel

    # ------------------------------------------------------------------ Python API
    def segments(self, include_invisible: bool = False) -> list[dict[str, Any]]:
        """Segments as ``GET segments`` renders them (own and shared with the login)."""
        with self.lock:
            return [self._render(s) for s in self._segments.values() if include_invisible or self._visible(s)]

    def get_segment(self, segment_id: int | str) -> dict[str, Any] | None:
        """One segment as the list renders it, or None."""
        with self.lock:
            seg = self._segments.get(int(segment_id))
            return self._render(seg) if seg else None

    def segment_values(self, segment_id: int | str) -> list[str]:
        """The values a file segment holds after processing (what matching would use), sorted.

        For tests that check what reached the vendor (hashes, or ClientIDs as written).
        """
        with self.lock:
            return sorted(self._segments[int(segment_id)].get("_values") or ())

    def processed_segments(self, for_login: str | None = None) -> list[dict[str, Any]]:
        """``[{"id", "name", "status"}]`` of the segments the sandbox login sees that are ``processed``.

        For fakes that consume Audience segments (Yandex Direct shows a segment's goals only once
        it is processed) when both run in one SandboxServer: ``server.fake("yandex_audience")``.

        :param for_login: only the segments this login may use: it owns them or holds a grant
            (Direct lists a segment only for such a login). None = every segment the sandbox login sees.
        """
        with self.lock:
            return [
                {"id": s["id"], "name": s["name"], "status": "processed"}
                for s in self._segments.values()
                if self._visible(s)
                and self._status(s) == "processed"
                and (for_login is None or s["owner"] == for_login or for_login in s["_grants"])
            ]

    def fail_next_processing(self, segment_id: int | str, status: str = "processing_failed") -> None:
        """The next processing of this segment ends in ``status`` (``processing_failed``, ``few_data``,
        or any other string, to test unknown statuses; ``stuck`` keeps it processing forever)."""
        with self.lock:
            self._forced[int(segment_id)] = status

    def grants(self, segment_id: int | str) -> list[dict[str, Any]]:
        """The grants of a segment, as ``GET segment/{id}/grants`` lists them."""
        with self.lock:
            return [dict(g) for g in self._segments[int(segment_id)]["_grants"].values()]

    def pixels(self, include_deleted: bool = False) -> list[dict[str, Any]]:
        """The account's pixels as the API renders them; deleted ones only with ``include_deleted``."""
        with self.lock:
            return [self._render_pixel(p) for p in self._pixels.values() if include_deleted or not p["_deleted"]]

    def delegates(self) -> list[dict[str, Any]]:
        """The account's delegates (login and permission)."""
        with self.lock:
            return [dict(d) for d in self._delegates.values()]

    # ------------------------------------------------------------------ connection, envelopes
    def connection(self, base_url: str) -> dict[str, Any]:
        """``{"conn_type": "yandex_audience", "host", "login", "password", "extra"}``; the extra polls
        processing every 0.25 s (the sandbox processes in seconds, not hours)."""
        return {
            "conn_type": "yandex_audience",
            "host": base_url,
            "login": self.login,
            "password": self.token,
            "extra": {"web_app_url": f"{base_url}/app", "processing_poll_interval": 0.25},
        }

    def error_envelope(self, reply: ErrorReply) -> Response:
        """``details`` may name the ``location`` of the bad parameter."""
        status = reply.status
        error_type = reply.code or _ERROR_TYPES.get(status, "backend_error" if status >= 500 else "invalid_parameter")
        error: dict[str, Any] = {"error_type": error_type, "message": reply.message}
        location = reply.details.get("location")
        if location:
            error["location"] = location
        return JSONResponse(
            {"errors": [error], "code": status, "message": reply.message}, status, headers=reply.headers
        )

    def check_request(self, request: Request) -> None:
        """OAuth check, then the quotas (per IP, daily per login, segment writes per login)."""
        path = request.url.path
        if not path.startswith(PREFIX + "/"):
            return
        header = request.headers.get("authorization") or ""
        scheme, _, token = header.partition(" ")
        if scheme != "OAuth" or token not in (self.token, NO_RIGHTS_TOKEN):
            raise ApiError(401, "OAuth token is missing or invalid", "unauthorized")
        if token == NO_RIGHTS_TOKEN:
            raise ApiError(403, "The OAuth application has no Yandex.Audience rights", "access_denied")
        with self.lock:
            now = self.now()
            ip = request.client.host if request.client else "unknown"
            checks = [(f"ip:{ip}", "requests_per_second_per_ip", 1.0, "requests per second from one IP")]
            checks.append(
                (
                    f"day:{self.login}",
                    "requests_per_day",
                    86400.0,
                    f"requests per day for login {self.login} (resets at midnight Moscow time)",
                )
            )
            if request.method != "GET" and _WRITE_PATHS.match(path):
                for key, seconds, label in (
                    ("writes_per_minute", 60.0, "minute"),
                    ("writes_per_hour", 3600.0, "hour"),
                    ("writes_per_day", 86400.0, "day"),
                ):
                    checks.append(
                        (f"{key}:{self.login}", key, seconds, f"segment create/modify requests per {label} for login")
                    )
            quotas = []
            for key, setting, seconds, label in checks:
                limit = self.config.get(setting)
                if limit is not None:
                    text = f"Request quota exceeded: {int(limit)} {label} {self.login}".rstrip()
                    quotas.append(Quota(key, limit, seconds, text))
            full = self._quotas.hit(now, *quotas)
            if full is not None:
                text = full.quota.message
                if not self.config.get("quota_names_period"):
                    group = {"ip": "ip", "day": "user_login"}.get(full.quota.key.split(":")[0], "client_write")
                    text = f"Quota exceeded: {group}"
                raise ApiError(429, text, "quota")

    def rate_limit_key(self, request: Request) -> str | None:
        return request.headers.get("authorization")

    # ------------------------------------------------------------------ internals (under lock)
    def _visible(self, seg: dict[str, Any]) -> bool:
        return seg["owner"] == self.login or self.login in seg["_grants"]

    def _status(self, seg: dict[str, Any]) -> str:
        if not seg["_confirmed"]:
            return "uploaded"
        if seg["_outcome"] == "stuck" or self.now() < seg["_busy_until"]:
            return seg["_phase"]
        if seg["_outcome"] is None:
            forced = self._forced.pop(seg["id"], None)
            if forced:
                seg["_outcome"] = forced
            elif seg["type"] == "uploading" and self._cookies(seg) < (self.config.get("min_matched_ids") or 0):
                seg["_outcome"] = "few_data"
            else:
                seg["_outcome"] = "processed"
            if seg["_outcome"] == "stuck":
                return seg["_phase"]
        return str(seg["_outcome"])

    def _valid_values(self, seg: dict[str, Any]) -> int:
        return len(seg["_values"])

    def _cookies(self, seg: dict[str, Any]) -> int:
        if seg["type"] == "uploading":
            return (self._valid_values(seg) * 6 // 10) * 3
        if seg["type"] == "lookalike":
            source = self._segments.get(seg.get("lookalike_link", 0))
            return (self._cookies(source) if source else 1000) * 5
        return 1000 + seg["id"] % 1000

    def _render(self, seg: dict[str, Any]) -> dict[str, Any]:
        status = self._status(seg)
        out: dict[str, Any] = {k: v for k, v in seg.items() if not k.startswith("_")}
        out["owner"] = seg["owner"].replace("-", ".")  # Yandex's spelling of the login, not the client's
        if seg["type"] == "uploading" and seg.get("_kind") == "csv" and self.config.get("universal_file_segments"):
            out["type"] = "universal"
        grants = seg["_grants"]
        derivatives = [s["id"] for s in self._segments.values() if s.get("lookalike_link") == seg["id"]]
        out.update(
            status=status,
            create_time=rfc3339(seg["_created"]).replace(".000Z", "Z"),
            has_guests=bool(grants),
            guest_quantity=len(grants),
            can_create_dependent=status == "processed" and seg["owner"] == self.login,
            has_derivatives=bool(derivatives),
            derivatives=derivatives,
            cookies_matched_quantity=self._cookies(seg) if status == "processed" else 0,
        )
        if seg["type"] == "uploading":
            valid = self._valid_values(seg)
            items = seg.get("_items", valid)
            matched = valid * 6 // 10
            out.update(
                item_quantity=items,
                valid_unique_quantity=valid,
                valid_unique_percentage=f"{(100 * valid / items) if items else 0:.2f}",
                matched_quantity=matched if status != "uploaded" else 0,
                matched_percentage=f"{(100 * matched / valid) if valid else 0:.2f}",
            )
        return out

    def _render_pixel(self, pixel: dict[str, Any]) -> dict[str, Any]:
        out = {k: v for k, v in pixel.items() if not k.startswith("_")}
        out["segments"] = [
            self._render(s) for s in self._segments.values() if s.get("pixel_id") == pixel["id"] and self._visible(s)
        ]
        return out

    def _segment(self, raw_id: str, *, own: bool = True) -> dict[str, Any]:
        try:
            seg = self._segments.get(int(raw_id))
        except ValueError:
            seg = None
        if seg is None or not self._visible(seg):
            raise _fail(404, "not_found", f"Segment {raw_id} not found")
        if own and seg["owner"] != self.login:
            raise _fail(403, "access_denied", f"Segment {raw_id} belongs to another login; you may only view it")
        return seg

    def _start(self, seg: dict[str, Any], phase: str) -> None:
        seg["_phase"] = phase
        seg["_busy_until"] = self.now() + self.processing_seconds
        seg["_outcome"] = None

    # -- files
    def _read_file(self, raw: bytes) -> str:
        limit = self.config.get("max_file_bytes")
        if limit is not None and len(raw) > limit:
            raise _fail(400, "invalid_uploading", f"The file is larger than the {int(limit)}-byte limit", "file")
        if not raw.strip():
            raise _fail(400, "invalid_uploading", "The file is empty", "file")
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return raw.decode("cp1251")

    def _parse_csv(self, text: str) -> tuple[list[str], list[str], int]:
        """(header columns, values of phone/email cells, rows)."""
        rows = list(csv.reader(io.StringIO(text)))
        rows = [r for r in rows if any(cell.strip() for cell in r)]
        header = [c.strip().lower() for c in rows[0]]
        if len(set(header)) != len(header):
            raise _fail(400, "header_validation_error", "The header repeats a column name", "file")
        if any("@" in c or c.isdigit() or re.fullmatch(r"[0-9a-f]{32,64}", c) for c in header):
            raise _fail(400, "header_validation_error", "The first line must name the columns, not hold data", "file")
        keys = [i for i, c in enumerate(header) if c in ("email", "phone")]
        if not keys:
            raise _fail(400, "header_validation_error", "The header must name a 'phone' or 'email' column", "file")
        values = []
        for row in rows[1:]:
            cells = [row[i].strip() for i in keys if i < len(row) and row[i].strip()]
            values.extend(cells)
        return header, values, len(rows) - 1

    @staticmethod
    def _parse_plain(text: str) -> list[str]:
        return [v.strip() for v in re.split(r"[,\n\t\r]+", text) if v.strip()]

    async def _upload(self, request: Request) -> tuple[bytes, str]:
        form = await request.form()
        part = form.get("file")
        if part is None or isinstance(part, str):
            raise _fail(400, "missing_parameter", "The multipart field 'file' is required", "file")
        raw = await part.read()
        return raw, getattr(part, "filename", None) or "data"

    def _valid(self, seg: dict[str, Any], values: list[str]) -> set[str]:
        """The values processing can use: hashed form checked, invalid ones dropped."""
        if seg.get("hashed"):
            return {v.lower() for v in values if _HEX64.match(v.lower())}
        content_type = seg.get("content_type")
        if content_type == "idfa_gaid":
            return {v for v in values if _UUID.match(v)}
        if content_type == "mac":
            return {v.lower() for v in values if _MAC.match(re.sub(r"[.:,-]", "", v))}
        if content_type == "client_id":
            return {v for v in values if v.isdigit()}
        return {v.lower() for v in values if "@" in v or v.isdigit()}

    # ------------------------------------------------------------------ HTTP helpers
    @staticmethod
    async def _json(request: Request) -> dict[str, Any]:
        return await json_object_body(
            request,
            lambda detail: _fail(400, "invalid_parameter", "The request body is not valid JSON"),
            lambda: _fail(400, "invalid_parameter", "The request body must be a JSON object"),
            empty=b"null",
        )

    @staticmethod
    def _object(body: dict[str, Any], key: str) -> dict[str, Any]:
        value = body.get(key)
        if not isinstance(value, dict):
            raise _fail(400, "missing_parameter", f"'{key}' object is required", key)
        return value

    @staticmethod
    def _name(obj: dict[str, Any], where: str) -> str:
        name = obj.get("name")
        if not isinstance(name, str) or not name.strip():
            raise _fail(400, "missing_parameter", "name is required", f"{where}.name")
        return name

    @staticmethod
    def _int(obj: dict[str, Any], key: str, where: str, *, low: int | None = None, high: int | None = None) -> int:
        value = obj.get(key)
        if isinstance(value, bool) or not isinstance(value, int):
            raise _fail(400, "missing_parameter" if value is None else "invalid_parameter", f"{key} must be an integer",
                        f"{where}.{key}")  # fmt: skip
        if (low is not None and value < low) or (high is not None and value > high):
            raise _fail(400, "invalid_parameter", f"{key} must be between {low} and {high}", f"{where}.{key}")
        return value

    def _seg_answer(self, seg: dict[str, Any]) -> JSONResponse:
        return JSONResponse({"segment": self._render(seg)})

    @staticmethod
    def _success() -> JSONResponse:
        return JSONResponse({"success": True})

    # ------------------------------------------------------------------ routes
    def routes(self) -> list[BaseRoute]:
        p = PREFIX
        return [
            Route(f"{p}/segments", self._h_list, methods=["GET"]),
            Route(f"{p}/segments/upload_file", self._h_upload_file, methods=["POST"]),
            Route(f"{p}/segments/upload_csv_file", self._h_upload_csv, methods=["POST"]),
            Route(f"{p}/segments/create_metrika", self._h_create_metrika, methods=["POST"]),
            Route(f"{p}/segments/create_appmetrica", self._h_create_appmetrica, methods=["POST"]),
            Route(f"{p}/segments/create_geo", self._h_create_geo, methods=["POST"]),
            Route(f"{p}/segments/create_geo_polygon", self._h_create_geo_polygon, methods=["POST"]),
            Route(f"{p}/segments/create_pixel", self._h_create_pixel, methods=["POST"]),
            Route(f"{p}/segments/create_lookalike", self._h_create_lookalike, methods=["POST"]),
            Route(f"{p}/segment/client_id/{{sid}}/confirm", self._h_confirm_client_id, methods=["POST"]),
            Route(f"{p}/segment/{{sid}}/confirm", self._h_confirm, methods=["POST"]),
            Route(f"{p}/segment/{{sid}}/modify_data", self._h_modify, methods=["POST"]),
            Route(f"{p}/segment/{{sid}}/update_geo_points", self._h_update_geo_points, methods=["POST"]),
            Route(f"{p}/segment/{{sid}}/reprocess", self._h_reprocess, methods=["PUT"]),
            Route(f"{p}/segment/{{sid}}/grants", self._h_grants, methods=["GET"]),
            Route(f"{p}/segment/{{sid}}/grant", self._h_grant, methods=["PUT", "DELETE"]),
            Route(f"{p}/segment/{{sid}}", self._h_segment, methods=["PUT", "DELETE"]),
            Route(f"{p}/pixels", self._h_pixels, methods=["GET", "POST"]),
            Route(f"{p}/pixel/{{pid}}/undelete", self._h_pixel_undelete, methods=["POST"]),
            Route(f"{p}/pixel/{{pid}}", self._h_pixel, methods=["PUT", "DELETE"]),
            Route(f"{p}/accounts", self._h_accounts, methods=["GET"]),
            Route(f"{p}/delegates", self._h_delegates, methods=["GET"]),
            Route(f"{p}/delegate", self._h_delegate, methods=["PUT", "DELETE"]),
        ]

    # -- segments
    async def _h_list(self, request: Request) -> Response:
        params = request.query_params
        with self.lock:
            segs = [s for s in self._segments.values() if self._visible(s)]
            if params.get("pixel"):
                segs = [s for s in segs if str(s.get("pixel_id")) == params["pixel"]]
            most = int(self.config.get("max_page_size") or 10000)
            try:
                offset = int(params.get("offset") or 0)
                limit = int(params.get("limit") or most)
            except ValueError:
                raise _fail(400, "invalid_parameter", "limit and offset must be integers") from None
            if limit < 1 or limit > most or offset < 0:
                raise _fail(400, "invalid_parameter", f"limit must be between 1 and {most}, offset >= 0", "limit")
            return JSONResponse({"segments": [self._render(s) for s in segs[offset : offset + limit]]})

    async def _h_upload_file(self, request: Request) -> Response:
        raw, filename = await self._upload(request)
        values = self._parse_plain(self._read_file(raw))
        with self.lock:
            seg = self._new_segment("uploading", filename)
            seg.update(_confirmed=False, _kind="plain", _pending=values, _items=len(values), _last_file=None)
            return self._seg_answer(seg)

    async def _h_upload_csv(self, request: Request) -> Response:
        raw, filename = await self._upload(request)
        header, values, rows = self._parse_csv(self._read_file(raw))
        with self.lock:
            seg = self._new_segment("uploading", filename)
            seg.update(_confirmed=False, _kind="csv", _header=header, _pending=values, _items=rows)
            return self._seg_answer(seg)

    def _check_size(self, request: Request, entries: int) -> None:
        check = (request.query_params.get("check_size") or "true").lower() != "false"
        minimum = self.config.get("min_entries")
        if check and minimum is not None and entries < minimum:
            raise _fail(
                400,
                "invalid_uploading",
                f"The file has {entries} entries; at least {int(minimum)} are required (or check_size=false)",
                "file",
            )

    def _unconfirmed_upload(self, sid: str) -> dict[str, Any]:
        """Segment ``sid``, which must be an upload not confirmed yet. Called under ``lock``."""
        seg = self._segment(sid)
        if seg["type"] != "uploading" or seg["_confirmed"]:
            raise _fail(400, "invalid_parameter", f"Segment {seg['id']} is not an unconfirmed upload", "segment.id")
        return seg

    async def _h_confirm(self, request: Request) -> Response:
        body = self._object(await self._json(request), "segment")
        with self.lock:
            seg = self._unconfirmed_upload(request.path_params["sid"])
            name = self._name(body, "segment")
            content_type = body.get("content_type")
            if content_type not in CONTENT_TYPES:
                raise _fail(
                    400, "invalid_parameter", "content_type must be crm, idfa_gaid or mac", "segment.content_type"
                )
            if CONTENT_TYPES[content_type] != seg["_kind"]:
                needed = "upload_csv_file" if CONTENT_TYPES[content_type] == "csv" else "upload_file"
                raise _fail(
                    400,
                    "invalid_parameter",
                    f"content_type {content_type} needs a file uploaded with {needed}",
                    "segment.content_type",
                )
            hashed = body.get("hashed", False)
            if hashed not in (True, False, 0, 1):
                raise _fail(400, "invalid_parameter", "hashed must be a boolean", "segment.hashed")
            alg = body.get("hashing_alg") or ("SHA256" if hashed else None)
            if hashed and alg != "SHA256":
                raise _fail(
                    400, "invalid_parameter", f"hashing_alg {alg} is not accepted; use SHA256", "segment.hashing_alg"
                )
            self._check_size(request, seg["_items"])
            seg.update(
                name=name,
                content_type=content_type,
                hashed=bool(hashed),
                used_hashing_alg=alg,
                device_matching_type=body.get("device_matching_type") or "CROSS_DEVICE",
                _confirmed=True,
            )
            seg["_values"] = self._valid(seg, seg.pop("_pending"))
            seg["uploading_last_modify_time"] = rfc3339(self.now())
            self._start(seg, "is_processed")
            return self._seg_answer(seg)

    async def _h_confirm_client_id(self, request: Request) -> Response:
        body = self._object(await self._json(request), "segment")
        with self.lock:
            seg = self._unconfirmed_upload(request.path_params["sid"])
            if seg["_kind"] != "plain":
                raise _fail(400, "invalid_parameter", "ClientID segments need a plain file (upload_file)", "file")
            name = self._name(body, "segment")
            counter = self._int(body, "counter_id", "segment", low=1)
            seg.update(name=name, content_type="client_id", counter_id=counter, hashed=False, _confirmed=True)
            seg["_values"] = self._valid(seg, seg.pop("_pending"))
            self._start(seg, "is_processed")
            return self._seg_answer(seg)

    async def _h_modify(self, request: Request) -> Response:
        kind = request.query_params.get("modification_type")
        if kind is None:
            raise _fail(400, "missing_parameter", "modification_type is required", "modification_type")
        if kind not in ("addition", "subtraction", "replace"):
            raise _fail(
                400, "invalid_parameter", "modification_type must be addition, subtraction or replace",
                "modification_type",
            )  # fmt: skip
        raw, _filename = await self._upload(request)
        text = self._read_file(raw)
        with self.lock:
            seg = self._segment(request.path_params["sid"])
            if seg["type"] != "uploading" or not seg["_confirmed"]:
                raise _fail(400, "invalid_parameter", f"Segment {seg['id']} is not a confirmed file segment", "segment")
            status = self._status(seg)
            if status in ("is_processed", "is_updated") and not self.config.get("modify_while_processing"):
                raise _fail(
                    400, "invalid_parameter",
                    f"Segment {seg['id']} is {status}; its data can be changed once it is processed", "segment",
                )  # fmt: skip
            if seg["_kind"] == "csv":
                header, values, rows = self._parse_csv(text)
                if set(header) != set(seg["_header"]):
                    raise _fail(
                        400, "invalid_uploading", "The file's columns differ from the segment's first upload", "file"
                    )
            else:
                values = self._parse_plain(text)
                rows = len(values)
            if seg.get("hashed") and any(not _HEX64.match(v.lower()) for v in values):
                raise _fail(400, "invalid_uploading", "The segment holds hashed data; the file must be hashed", "file")
            digest = hashlib.sha256(kind.encode() + b"\0" + raw).hexdigest()
            if digest == seg["_last_file"]:
                raise _fail(400, "no_changes", "The same file was already applied to this segment", "file")
            self._check_size(request, rows)
            valid = self._valid(seg, values)
            if kind == "addition":
                seg["_values"] |= valid
            elif kind == "subtraction":
                seg["_values"] -= valid
            else:
                seg["_values"] = valid
            seg["_items"] = len(seg["_values"])
            seg["_last_file"] = digest
            seg["uploading_last_modify_time"] = rfc3339(self.now())
            self._start(seg, "is_updated")
            return self._seg_answer(seg)

    def _create(self, seg_type: str, name: str, **fields: Any) -> JSONResponse:
        seg = self._new_segment(seg_type, name)
        seg.update(fields)
        self._start(seg, "is_processed")
        return self._seg_answer(seg)

    async def _h_create_metrika(self, request: Request) -> Response:
        return await self._create_from_metrica(request, "metrika", ("counter_id", "goal_id", "segment_id"))

    async def _h_create_appmetrica(self, request: Request) -> Response:
        return await self._create_from_metrica(request, "app_metrica", ("api_key", "segment_id"))

    async def _create_from_metrica(self, request: Request, source: str, kinds: tuple[str, ...]) -> Response:
        """A segment of a Metrica or AppMetrica object: ``<source>_segment_type`` (one of ``kinds``) and ``_id``."""
        body = self._object(await self._json(request), "segment")
        type_field, id_field = f"{source}_segment_type", f"{source}_segment_id"
        with self.lock:
            name = self._name(body, "segment")
            kind = body.get(type_field)
            if kind not in kinds:
                allowed = f"{', '.join(kinds[:-1])} or {kinds[-1]}"
                raise _fail(400, "invalid_parameter", f"{type_field} must be {allowed}", f"segment.{type_field}")
            ref = self._int(body, id_field, "segment", low=1)
            return self._create(
                source.replace("_", ""), name, **{type_field: kind, id_field: ref},
                device_matching_type=body.get("device_matching_type") or "CROSS_DEVICE",
            )  # fmt: skip

    def _geo_common(self, body: dict[str, Any]) -> dict[str, Any]:
        kind = body.get("geo_segment_type")
        if kind not in ("last", "regular", "home", "work", "condition"):
            raise _fail(
                400, "invalid_parameter", "geo_segment_type must be last, regular, home, work or condition",
                "segment.geo_segment_type",
            )  # fmt: skip
        out: dict[str, Any] = {"geo_segment_type": kind}
        if kind == "condition" or body.get("period_length") is not None:
            out["period_length"] = self._int(body, "period_length", "segment", low=1, high=90)
        if kind == "condition" or body.get("times_quantity") is not None:
            out["times_quantity"] = self._int(body, "times_quantity", "segment", low=1)
        out["device_matching_type"] = body.get("device_matching_type") or "CROSS_DEVICE"
        return out

    @staticmethod
    def _points(points: Any, where: str, limit: int) -> list[dict[str, Any]]:
        if not isinstance(points, list) or not points:
            raise _fail(400, "missing_parameter", "points must be a non-empty list", where)
        if len(points) > limit:
            raise _fail(400, "invalid_parameter", f"at most {limit} points are allowed", where)
        for point in points:
            lat, lon = (point or {}).get("latitude"), (point or {}).get("longitude")
            if not isinstance(lat, int | float) or not isinstance(lon, int | float) or abs(lat) > 90 or abs(lon) > 180:
                raise _fail(400, "invalid_parameter", "each point needs a latitude and a longitude", where)
            if len(str(point.get("description") or "")) > 200:
                raise _fail(400, "invalid_parameter", "a point description has at most 200 characters", where)
        return points

    async def _h_create_geo(self, request: Request) -> Response:
        body = self._object(await self._json(request), "segment")
        with self.lock:
            name = self._name(body, "segment")
            common = self._geo_common(body)
            radius = self._int(body, "radius", "segment", low=500, high=10000)
            limit = 100 if common["geo_segment_type"] == "condition" else 1000
            points = self._points(body.get("points"), "segment.points", limit)
            return self._create("geo", name, radius=radius, points=points, **common)

    async def _h_create_geo_polygon(self, request: Request) -> Response:
        body = self._object(await self._json(request), "segment")
        with self.lock:
            name = self._name(body, "segment")
            common = self._geo_common(body)
            polygons = body.get("polygons")
            if not isinstance(polygons, list) or not polygons:
                raise _fail(400, "missing_parameter", "polygons must be a non-empty list", "segment.polygons")
            for polygon in polygons:
                points = self._points((polygon or {}).get("points"), "segment.polygons.points", 1000)
                if len(points) < 3:
                    raise _fail(400, "invalid_parameter", "a polygon needs at least 3 points", "segment.polygons")
                lats = [p["latitude"] for p in points]
                lons = [p["longitude"] for p in points]
                if max(lats) - min(lats) > 2 or max(lons) - min(lons) > 2:
                    raise _fail(400, "too_large_polygon", "The polygon is too large", "segment.polygons")
            return self._create("geo", name, polygons=polygons, **common)

    async def _h_update_geo_points(self, request: Request) -> Response:
        raise _fail(400, "invalid_parameter", "update_geo_points is switched off; create a new geo segment")

    async def _h_create_pixel(self, request: Request) -> Response:
        body = self._object(await self._json(request), "segment")
        with self.lock:
            name = self._name(body, "segment")
            pixel_id = self._int(body, "pixel_id", "segment", low=1)
            pixel = self._pixels.get(pixel_id)
            if pixel is None or pixel["_deleted"]:
                raise _fail(404, "not_found", f"Pixel {pixel_id} not found", "segment.pixel_id")
            fields: dict[str, Any] = {"pixel_id": pixel_id}
            if body.get("period_length") is not None:
                fields["period_length"] = self._int(body, "period_length", "segment", low=1, high=90)
            if body.get("times_quantity") is not None:
                fields["times_quantity"] = self._int(body, "times_quantity", "segment", low=1)
            operation = body.get("times_quantity_operation")
            if operation is not None and operation not in ("lt", "eq", "gt"):
                raise _fail(
                    400, "invalid_parameter", "times_quantity_operation must be lt, eq or gt",
                    "segment.times_quantity_operation",
                )  # fmt: skip
            if operation:
                fields["times_quantity_operation"] = operation
            for key in ("utm_source", "utm_medium", "utm_campaign", "utm_content", "utm_term"):
                if body.get(key):
                    fields[key] = str(body[key])
            return self._create("pixel", name, **fields)

    async def _h_create_lookalike(self, request: Request) -> Response:
        body = self._object(await self._json(request), "segment")
        with self.lock:
            name = self._name(body, "segment")
            link = self._int(body, "lookalike_link", "segment", low=1)
            value = self._int(body, "lookalike_value", "segment", low=1, high=5)
            source = self._segments.get(link)
            if source is None or not self._visible(source):
                raise _fail(404, "not_found", f"Segment {link} not found", "segment.lookalike_link")
            if source["owner"] != self.login:
                raise _fail(
                    403, "access_denied", "A lookalike can only be built from your own segments",
                    "segment.lookalike_link",
                )  # fmt: skip
            if self._status(source) != "processed":
                raise _fail(400, "invalid_parameter", f"Segment {link} is not processed yet", "segment.lookalike_link")
            return self._create(
                "lookalike", name, lookalike_link=link, lookalike_value=value,
                maintain_device_distribution=bool(body.get("maintain_device_distribution", True)),
                maintain_geo_distribution=bool(body.get("maintain_geo_distribution", True)),
            )  # fmt: skip

    async def _h_segment(self, request: Request) -> Response:
        if request.method == "PUT":
            body = self._object(await self._json(request), "segment")
            with self.lock:
                seg = self._segment(request.path_params["sid"])
                extra = set(body) - {"name", "id"}
                if extra:
                    raise _fail(400, "invalid_parameter", "Only the name of a segment can be changed", "segment")
                seg["name"] = self._name(body, "segment")
                return self._seg_answer(seg)
        with self.lock:
            seg = self._segment(request.path_params["sid"])
            del self._segments[seg["id"]]
            return self._success()

    async def _h_reprocess(self, request: Request) -> Response:
        with self.lock:
            seg = self._segment(request.path_params["sid"])
            status = self._status(seg)
            if status not in ("processed", "few_data", "processing_failed"):
                raise _fail(400, "reprocess_wrong_status", f"Segment {seg['id']} is {status}; it cannot be reprocessed")
            quotas = []
            for key, setting, what in (
                (
                    f"seg:{seg['id']}",
                    "reprocess_per_segment_per_day",
                    f"reprocess runs per day for segment {seg['id']}",
                ),
                (
                    f"login:{self.login}",
                    "reprocess_per_login_per_day",
                    f"reprocess runs per day for login {self.login}",
                ),
            ):
                limit = self.config.get(setting)
                text = "" if limit is None else f"Reprocess quota exceeded: {int(limit)} {what}"
                quotas.append(Quota(f"reprocess-{key}", limit, 86400.0, text))
            full = self._quotas.hit(self.now(), *quotas)
            if full is not None:
                if not self.config.get("quota_names_period"):
                    raise _fail(429, "quota", "Reprocess quota exceeded")
                raise _fail(429, "quota", full.quota.message)
            self._start(seg, "is_processed")
            return self._success()

    # -- grants
    async def _h_grants(self, request: Request) -> Response:
        with self.lock:
            seg = self._segment(request.path_params["sid"])
            return JSONResponse({"grants": [dict(g) for g in seg["_grants"].values()]})

    async def _h_grant(self, request: Request) -> Response:
        if request.method == "PUT":
            body = self._object(await self._json(request), "grant")
            with self.lock:
                seg = self._segment(request.path_params["sid"])
                login = body.get("user_login")
                if not isinstance(login, str) or not login.strip():
                    raise _fail(400, "missing_parameter", "user_login is required", "grant.user_login")
                if login == self.login:
                    raise _fail(400, "invalid_parameter", "You cannot grant access to yourself", "grant.user_login")
                comment = str(body.get("comment") or "")
                if len(comment) > 255:
                    raise _fail(400, "invalid_parameter", "comment has at most 255 characters", "grant.comment")
                grant = seg["_grants"].get(login) or {"user_login": login, "created_at": rfc3339(self.now())}
                grant["comment"] = comment
                if body.get("permission") is not None:
                    grant["permission"] = body["permission"]
                seg["_grants"][login] = grant
                return JSONResponse({"grant": dict(grant)})
        login = request.query_params.get("user_login")
        if not login:
            raise _fail(400, "missing_parameter", "user_login is required", "user_login")
        with self.lock:
            seg = self._segment(request.path_params["sid"])
            if seg["_grants"].pop(login, None) is None:
                raise _fail(404, "not_found", f"No grant for {login} on segment {seg['id']}", "user_login")
            return self._success()

    # -- pixels
    def _pixel(self, raw_id: str, *, deleted: bool = False) -> dict[str, Any]:
        try:
            pixel = self._pixels.get(int(raw_id))
        except ValueError:
            pixel = None
        if pixel is None or pixel["_deleted"] != deleted:
            raise _fail(404, "not_found", f"Pixel {raw_id} not found")
        return pixel

    async def _h_pixels(self, request: Request) -> Response:
        if request.method == "GET":
            with self.lock:
                return JSONResponse(
                    {"pixels": [self._render_pixel(p) for p in self._pixels.values() if not p["_deleted"]]}
                )
        body = self._object(await self._json(request), "pixel")
        with self.lock:
            return JSONResponse({"pixel": self._render_pixel(self._new_pixel(self._name(body, "pixel")))})

    async def _h_pixel(self, request: Request) -> Response:
        if request.method == "PUT":
            body = self._object(await self._json(request), "pixel")
            with self.lock:
                pixel = self._pixel(request.path_params["pid"])
                pixel["name"] = self._name(body, "pixel")
                return JSONResponse({"pixel": self._render_pixel(pixel)})
        with self.lock:
            self._pixel(request.path_params["pid"])["_deleted"] = True
            return self._success()

    async def _h_pixel_undelete(self, request: Request) -> Response:
        with self.lock:
            self._pixel(request.path_params["pid"], deleted=True)["_deleted"] = False
            return self._success()

    # -- accounts and delegates
    async def _h_accounts(self, request: Request) -> Response:
        with self.lock:
            return JSONResponse({"accounts": [dict(a) for a in self._accounts]})

    async def _h_delegates(self, request: Request) -> Response:
        with self.lock:
            return JSONResponse({"delegates": self.delegates()})

    async def _h_delegate(self, request: Request) -> Response:
        if request.method == "PUT":
            body = self._object(await self._json(request), "delegate")
            login = body.get("user_login")
            if not isinstance(login, str) or not login.strip():
                raise _fail(400, "missing_parameter", "user_login is required", "delegate.user_login")
            perm = body.get("perm")
            if perm not in ("view", "edit"):
                raise _fail(400, "invalid_parameter", "perm must be view or edit", "delegate.perm")
            comment = str(body.get("comment") or "")
            if len(comment) > 255:
                raise _fail(400, "invalid_parameter", "comment has at most 255 characters", "delegate.comment")
            with self.lock:
                current = self._delegates.get(login) or {"user_login": login, "created_at": rfc3339(self.now())}
                current.update(perm=perm, comment=comment)
                self._delegates[login] = current
                return JSONResponse({"delegates": self.delegates()})
        login = request.query_params.get("user_login")
        if not login:
            raise _fail(400, "missing_parameter", "user_login is required", "user_login")
        with self.lock:
            if self._delegates.pop(login, None) is None:
                raise _fail(404, "not_found", f"{login} is not a delegate", "user_login")
            return self._success()

    # ------------------------------------------------------------------ control API
    def state(self) -> dict[str, Any]:
        """Every segment (those the login cannot see too), pixels, delegates and processed segments."""
        return {
            "segments": self.segments(include_invisible=True),
            "pixels": self.pixels(True),
            "delegates": self.delegates(),
            "processed": self.processed_segments(),
        }

    def control_routes(self) -> list[BaseRoute]:
        async def fail(request: Request) -> Response:
            return await control_call(
                request,
                lambda body: self.fail_next_processing(
                    int(body["segment_id"]), str(body.get("status") or "processing_failed")
                ),
                "segment_id (and status)",
            )

        return [
            Route("/_sandbox/yandex_audience/fail_next_processing", fail, methods=["POST"]),
        ]
