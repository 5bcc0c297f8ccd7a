"""Yandex.Audience management API v1 hook (``https://api-audience.yandex.ru/v1/management/``).

Method names follow the operations of the API, grouped as Yandex groups them (segments,
permissions/grants, accounts, delegates, pixels), so the vendor's reference is the index.
Everything below ``v1/management/`` is one path per operation (28 operations in the API reference).

Authentication: the connection's password is an OAuth token sent as ``Authorization: OAuth
<token>`` (the word is ``OAuth``, not ``Bearer`` as in Direct). The connection's login names the
quota bucket (quotas are per login) and tells own segments from segments shared with the login.

**Quotas** (documented in the Yandex.Audience API reference, yandex.ru/dev/audience) are enforced
on the client side by the shared rate limiter before a request leaves: segment create/modify
requests 10 per minute, 100 per hour and 500 per day per login; 5000 requests per day per login
(reads and writes together: Yandex counts reads and writes in separate groups, so one shared
budget is the conservative reading); 30 requests per second per IP (shared by every login on the
host); reprocess 20 per login per 24 h. All but the reprocess one can be changed in the
connection's extras (raised quotas). A quota error from Yandex (HTTP 429, ``error_type``
``quota``) names the quota and when it frees up.

**Statuses**: ``processed`` is done; ``processing_failed`` and ``few_data`` are
failures (few_data comes with advice: add data or reprocess); ``is_processed`` and
``is_updated`` are in progress; ``uploaded`` is a draft that was never confirmed and never
progresses, so waiting on it fails at once. Any other status is reported verbatim and waited on.
There is no GET-one-segment operation: status checks list the segments and pick the id.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, ClassVar
from urllib.parse import quote

import requests

from airflow_audience_provider.assets import segment_uri
from airflow_audience_provider.connections import YANDEX_AUDIENCE
from airflow_audience_provider.core.auth import TokenHeaderAuth
from airflow_audience_provider.core.errors import (
    AudienceAuthenticationError,
    AudienceConfigurationError,
    AudienceConflictError,
    AudienceError,
    AudienceNotFoundError,
    AudienceOutcomeUnknownError,
    AudiencePermissionError,
    AudienceRateLimitError,
    AudienceServerError,
    AudienceTransportError,
    AudienceValidationError,
)
from airflow_audience_provider.core.hook import AudienceHook, ConnectionSettings
from airflow_audience_provider.core.paging import paginate
from airflow_audience_provider.core.ratelimit import RateLimit, Window
from airflow_audience_provider.core.results import Phase, PollResult, StatusMap
from airflow_audience_provider.core.times import epoch_seconds
from airflow_audience_provider.core.transport import (
    ErrorInfo,
    Timeouts,
    VendorProfile,
    call_with_read_back,
    default_retry_after,
)

log = logging.getLogger(__name__)

VENDOR = "yandex_audience"
API_PREFIX = "v1/management"

#: Segment statuses (one list for every segment type). ``uploaded`` is handled separately (a draft never progresses).
YANDEX_AUDIENCE_SEGMENT_STATUS = StatusMap.of(
    done={"processed"},
    failed={"processing_failed", "few_data"},
    running={"is_processed", "is_updated"},
)

#: Confirm ``content_type`` values and the upload operation each needs (CRM CSV with a header: upload_csv_file).
CONTENT_TYPES = {"crm": "upload_csv_file", "idfa_gaid": "upload_file", "mac": "upload_file"}
MODIFICATION_TYPES = ("addition", "subtraction", "replace")
#: Slowest upload rate assumed when the read timeout of a file upload is scaled (bytes per second).
UPLOAD_BYTES_PER_SECOND = 1_000_000.0
#: ``type`` values of segments made from uploaded files: ``uploading``, and ``universal`` for the
#: newer one-file-many-columns segments of the web interface (how the API names them is unverified).
FILE_SEGMENT_TYPES = frozenset({"uploading", "universal"})
#: Page size of ``GET segments`` (the default page clients report; limit/offset are unverified).
SEGMENTS_PAGE_SIZE = 10_000
#: Yandex mail domains a login may be written with (``name@yandex.ru`` is the login ``name``).
_YANDEX_MAIL_DOMAINS = re.compile(r"@(?:yandex\.(?:ru|com|by|kz|ua|com\.tr)|ya\.ru|narod\.ru)$")
GEO_SEGMENT_TYPES = ("last", "regular", "home", "work", "condition")
DELEGATE_PERMS = ("view", "edit")
#: Moscow time (UTC+3, no DST): the daily quotas reset at its midnight.
MOSCOW = timezone(timedelta(hours=3))

#: error_type -> our error class (Yandex's error_type catalogue). Unknown types fall back to the HTTP status.
ERROR_TYPES: dict[str, type[AudienceError]] = {
    "invalid_parameter": AudienceValidationError,
    "missing_parameter": AudienceValidationError,
    "query_error": AudienceValidationError,
    "not_found": AudienceNotFoundError,
    "access_denied": AudiencePermissionError,
    "unauthorized": AudienceAuthenticationError,
    "invalid_token": AudienceAuthenticationError,
    "quota": AudienceRateLimitError,
    "reprocess_quota": AudienceRateLimitError,
    "conflict": AudienceConflictError,
    "not_acceptable": AudienceValidationError,
    "invalid_uploading": AudienceValidationError,
    "header_validation_error": AudienceValidationError,
    "too_large_polygon": AudienceValidationError,
    "self_crossing_polygon": AudienceValidationError,
    "crossing_polygons": AudienceValidationError,
    "reprocess_wrong_type": AudienceValidationError,
    "reprocess_wrong_status": AudienceValidationError,
    "targeted_quota": AudienceValidationError,
    "ast_too_large": AudienceValidationError,
    "backend_error": AudienceServerError,
    "timeout": AudienceServerError,
}
_PERIODS = ("day", "hour", "minute", "second")
_PER_PERIOD = re.compile(r"\b(?:per|a|an|each)\s+(day|hour|minute|second)\b")
#: Above this many seconds a quota is not slept on in the task: the error is raised at once.
LONG_QUOTA_SECONDS = 300.0


class YandexAudienceNoChangesError(AudienceValidationError):
    """Yandex refused a modify_data file identical to the last one (``no_changes``): nothing to do."""


def quota_reset_seconds(text: str, now: float | None = None) -> float | None:
    """Seconds until a quota named in a Yandex message frees up, from the period it names.

    Assumption (Yandex documents only that a 429 body says which quota; the wording is unverified):
    the message names the period ("per second/minute/hour/day"). Daily quotas reset at midnight
    Moscow time.
    """
    lowered = text.lower()
    # "per <period>" first: a login named e.g. "holiday-ads" must not turn a minute quota into a daily one
    match = _PER_PERIOD.search(lowered)
    period = match.group(1) if match else next((p for p in _PERIODS if re.search(rf"\b{p}", lowered)), None)
    if period is None and ("daily" in lowered or "24 h" in lowered):
        period = "day"
    if period == "day":
        current = datetime.fromtimestamp(time.time() if now is None else now, tz=MOSCOW)
        midnight = (current + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
        return max(1.0, (midnight - current).total_seconds())
    return {"hour": 3600.0, "minute": 60.0, "second": 1.0}.get(period or "")


def _describe_reset(seconds: float) -> str:
    at = datetime.now(UTC) + timedelta(seconds=seconds)
    return f"it frees up in about {seconds:.0f} s (around {at:%Y-%m-%d %H:%M} UTC)"


def parse_yandex_audience_error(response: requests.Response) -> ErrorInfo:
    """Read the envelope ``{"errors": [{"error_type", "message", "location"}], "code", "message"}``."""
    try:
        body = response.json()
    except ValueError:
        return ErrorInfo()
    if not isinstance(body, dict):
        return ErrorInfo()
    errors = [e for e in body.get("errors") or [] if isinstance(e, dict)]
    first = errors[0] if errors else {}
    error_type = first.get("error_type")
    message = first.get("message") or body.get("message")
    if len(errors) > 1:
        message = "; ".join(str(e.get("message") or e.get("error_type")) for e in errors)
    info = ErrorInfo(
        message=message,
        code=error_type,
        field=first.get("location"),
        error_class=ERROR_TYPES.get(str(error_type)) if error_type else None,
        details=[{"error_type": e.get("error_type"), "location": e.get("location")} for e in errors] or None,
    )
    if error_type == "no_changes":
        info.error_class = YandexAudienceNoChangesError
    if error_type in ("quota", "reprocess_quota") or response.status_code == 429:
        wait = _retry_after(response)
        if wait is not None:
            info.message = f"{message or 'request quota exceeded'}; {_describe_reset(wait)}"
            # An hourly or daily quota is not slept on: fail now, saying which quota and when.
            if wait > LONG_QUOTA_SECONDS:
                info.retryable = False
        else:
            # The body does not say which period the quota covers in words we read: it may be an
            # hourly or daily one, so retrying blindly would only spend minutes and more quota.
            text = message or _body_text(response) or "request quota exceeded"
            info.message = (
                f"{text} (Yandex did not say in a form this provider reads when the quota frees up; "
                "not retried: rerun later, or lower the client-side quotas in the connection's extras)"
            )
            info.retryable = False
    return info


def _body_text(response: requests.Response, limit: int = 500) -> str:
    """The answer's text, shortened, for an error message (Yandex error bodies carry no identifiers)."""
    try:
        text = response.text.strip()
    except (UnicodeDecodeError, ValueError):
        return ""
    return text if len(text) <= limit else text[:limit] + "..."


def _retry_after(response: requests.Response) -> float | None:
    """``Retry-After`` if Yandex sends one (unverified), else the period the quota message names."""
    wait = default_retry_after(response)
    if wait is not None:
        return wait
    if response.status_code != 429:
        return None
    try:
        body = response.json()
    except ValueError:
        return None
    texts = [str(body.get("message") or "")] if isinstance(body, dict) else []
    if isinstance(body, dict):
        texts += [str(e.get("message") or "") for e in body.get("errors") or [] if isinstance(e, dict)]
    for text in texts:
        wait = quota_reset_seconds(text)
        if wait is not None:
            return wait
    return None


def yandex_audience_rate_limits(
    *,
    writes_per_minute: int = 10,
    writes_per_hour: int = 100,
    writes_per_day: int = 500,
    requests_per_day: int = 5000,
    requests_per_second: int = 30,
    reprocess_per_day: int = 20,
) -> dict[str, RateLimit]:
    """The documented quotas (Yandex.Audience API reference) as client-side windows per endpoint class.

    ``read``: every GET. ``write``: segment create/modify (uploads, confirm, modify_data, the
    create_* operations, rename, delete). ``reprocess``: reprocess. ``default``: other writes
    (grants, delegates, pixels). All draw from the daily budget and the per-IP limit.
    """
    daily = Window(requests_per_day, 86400.0, f"{requests_per_day} requests per day per login", scope="daily")
    per_ip = Window(
        requests_per_second, 1.0, f"{requests_per_second} requests per second per IP", scope="ip", per_account=False
    )
    writes = (
        Window(writes_per_minute, 60.0, f"{writes_per_minute} segment writes per minute per login"),
        Window(writes_per_hour, 3600.0, f"{writes_per_hour} segment writes per hour per login"),
        Window(writes_per_day, 86400.0, f"{writes_per_day} segment writes per day per login"),
    )
    reprocess = Window(reprocess_per_day, 86400.0, f"{reprocess_per_day} reprocess runs per 24 h per login")
    # A minute window may be waited out (<= 60 s); hourly and daily ones fail at once.
    return {
        "read": RateLimit((daily, per_ip), max_wait=65.0),
        "write": RateLimit((*writes, daily, per_ip), max_wait=65.0),
        "reprocess": RateLimit((reprocess, daily, per_ip), max_wait=65.0),
        "default": RateLimit((daily, per_ip), max_wait=65.0),
    }


def canonical_login(login: str) -> str:
    """A Yandex login in one comparable form: lower-case, without a Yandex mail domain, ``.`` as ``-``.

    Yandex treats ``Ivan.Petrov``, ``ivan-petrov`` and ``ivan-petrov@yandex.ru`` as the same login,
    and the ``owner`` the API reports need not be written the way the connection's login is.
    """
    text = login.strip().lower()
    text = _YANDEX_MAIL_DOMAINS.sub("", text)
    return text.replace(".", "-")


def same_login(a: str | None, b: str | None) -> bool:
    """Whether two spellings name the same Yandex login (see :func:`canonical_login`)."""
    if not a or not b:
        return False
    return canonical_login(a) == canonical_login(b)


def _few_data_advice(segment_id: Any) -> str:
    return (
        f"Yandex.Audience segment {segment_id} ended in few_data: too few users matched (fewer than about 100), "
        "so it cannot be used in ads and is not refreshed. Add data (modify_data with addition) or reprocess it "
        "(at most twice a day per segment)."
    )


class YandexAudienceHook(AudienceHook):
    """Talk to the Yandex.Audience management API v1.

    :param yandex_audience_conn_id: Airflow connection of type ``yandex_audience``
        (:ref:`howto/connection:yandex_audience`).
    """

    spec = YANDEX_AUDIENCE
    default_host = "https://api-audience.yandex.ru"
    profile: ClassVar[VendorProfile] = VendorProfile(
        name=VENDOR,
        parse_error=parse_yandex_audience_error,
        request_id_headers=("X-Request-Id", "X-Req-Id"),
        retry_after=_retry_after,
        rate_limits=yandex_audience_rate_limits(),
    )

    def __init__(self, yandex_audience_conn_id: str = YANDEX_AUDIENCE.default_conn_name, **kwargs: Any) -> None:
        super().__init__(yandex_audience_conn_id, **kwargs)
        self.yandex_audience_conn_id = yandex_audience_conn_id

    # -- connection -------------------------------------------------------------------------

    def build_auth(self, settings: ConnectionSettings, session: requests.Session) -> requests.auth.AuthBase:
        token = settings.require(settings.password, "OAuth token (password field)")
        for prefix in ("oauth ", "bearer "):
            if token.lower().startswith(prefix):
                token = token[len(prefix) :]  # a pasted header value; Yandex wants exactly "OAuth <token>"
        return TokenHeaderAuth(token.strip(), scheme="OAuth")

    def budget_key(self, settings: ConnectionSettings) -> str:
        """Quotas are per login: the host and the login (or, without a login, the connection id)."""
        return f"{self.base_url(settings)}|{settings.login or settings.conn_id}"

    def rate_limits(self, settings: ConnectionSettings) -> dict[str, RateLimit]:
        """The documented quotas, or the connection's own numbers (a contract with other limits)."""
        numbers = {}
        for key in (
            "writes_per_minute",
            "writes_per_hour",
            "writes_per_day",
            "requests_per_day",
            "requests_per_second",
        ):
            raw = settings.get_extra(key)
            if raw is None:
                continue
            try:
                numbers[key] = int(float(raw))
            except (TypeError, ValueError):
                numbers[key] = 0
            if numbers[key] <= 0:
                raise AudienceConfigurationError(
                    f"Airflow connection '{settings.conn_id}': extra field '{key}' must be a positive integer, "
                    f"got {raw!r}"
                )
        return yandex_audience_rate_limits(**numbers) if numbers else dict(self.profile.rate_limits)

    @property
    def login(self) -> str | None:
        """The connection's Yandex login, if set."""
        return self.settings().login or None

    @property
    def default_region(self) -> str | None:
        """The connection's ``default_region`` extra: the ISO 3166 region of phone numbers written
        without a country code (``RU`` reads ``8 (999) 555-11-11`` as ``+79995551111``).

        :raises AudienceConfigurationError: when the value is not a region the phone library knows.
        """
        raw = self.settings().get_extra("default_region")
        if raw in (None, ""):
            return None
        region = str(raw).strip().upper()
        import phonenumbers

        if region not in phonenumbers.SUPPORTED_REGIONS:
            raise AudienceConfigurationError(
                f"Airflow connection '{self.yandex_audience_conn_id}': extra field 'default_region' must be an "
                f"ISO 3166 alpha-2 region such as 'RU', got {raw!r}"
            )
        return region

    def probe(self) -> str:
        """One cheap authenticated read: the accounts the login is a delegate of."""
        accounts = self.list_accounts()
        return f"Connected to Yandex.Audience; the token's login is a delegate of {len(accounts)} account(s)"

    def _call(self, method: str, path: str, *, endpoint_class: str | None = None, **kwargs: Any) -> Any:
        if endpoint_class is None:
            endpoint_class = "read" if method == "GET" else "default"
        return self.transport.json(method, f"{API_PREFIX}/{path}", endpoint_class=endpoint_class, **kwargs)

    @staticmethod
    def _id(value: Any, what: str = "segment") -> str:
        text = str(value).strip() if value is not None else ""
        if not text.isdigit():
            raise AudienceValidationError(
                f"A Yandex.Audience {what} id must be a positive integer, got {value!r}", vendor=VENDOR
            )
        return text

    @staticmethod
    def _unwrap(body: Any, key: str) -> Any:
        if isinstance(body, dict) and key in body:
            return body[key]
        raise AudienceServerError(f"Yandex.Audience answered without '{key}'", vendor=VENDOR)

    @staticmethod
    def _clean(fields: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in fields.items() if v is not None}

    # -- links and assets -------------------------------------------------------------------

    def segment_url(self, segment_id: Any) -> str:
        """Link to the segment in the Audience web interface.

        Assumption (Yandex documents no URL scheme for it): ``<web interface>/segments/<id>``; the base is
        the connection's ``web_app_url`` (default ``https://audience.yandex.ru``).
        """
        base = str(self.settings().get_extra("web_app_url", "https://audience.yandex.ru")).rstrip("/")
        return f"{base}/segments/{quote(str(segment_id), safe='')}"

    def segment_asset_uri(self, segment_id: Any) -> str:
        """``yandex-audience://<login>/segment/<id>``; the login is the connection's (``default`` if unset)."""
        return segment_uri("yandex-audience", self.login or "default", "segment", str(segment_id))

    # ===================================================================== segments

    def list_segments(
        self, pixel: int | str | None = None, limit: int | None = None, offset: int | None = None
    ) -> list[dict[str, Any]]:
        """List segments: ``GET segments`` (own and shared, every type mixed).

        With ``limit`` or ``offset`` one page is fetched as asked. Without them every page is read
        (see :meth:`iter_segments`).
        """
        if limit is not None or offset is not None:
            params = self._clean({"pixel": pixel, "limit": limit, "offset": offset})
            return list(self._unwrap(self._call("GET", "segments", params=params), "segments") or [])
        return list(self.iter_segments(pixel))

    def iter_segments(self, pixel: int | str | None = None, page_size: int | None = None) -> Iterator[dict[str, Any]]:
        """Every segment the login sees, page by page (``limit``/``offset``), read lazily.

        ``limit``/``offset`` are documented by clients, not in the reference we read. Assumption:
        a page shorter than the ``limit`` asked is the last one. A server that ignored the
        parameters would answer the same page again: a page without a new id ends the listing.
        """
        size = page_size or self.segments_page_size
        seen: set[Any] = set()

        def page_at(offset: int) -> tuple[list[dict[str, Any]], int | None]:
            params = self._clean({"pixel": pixel, "limit": size, "offset": offset})
            page = list(self._unwrap(self._call("GET", "segments", params=params), "segments") or [])
            fresh = [s for s in page if s.get("id") not in seen]
            seen.update(s.get("id") for s in fresh)
            return fresh, None if len(page) < size or not fresh else offset + len(page)

        return paginate(page_at, 0, endpoint="GET segments", vendor=VENDOR)

    #: segments asked for per ``GET segments`` page
    segments_page_size: int = SEGMENTS_PAGE_SIZE

    def is_own(self, segment: dict[str, Any]) -> bool:
        """Whether the connection's login owns the segment (any spelling of it, see ``same_login``).

        Without a login on the connection every segment counts as own; a segment without
        ``owner`` too.
        """
        owner = segment.get("owner")
        return not self.login or owner in (None, "") or same_login(str(owner), self.login)

    @staticmethod
    def _type_matches(segment: dict[str, Any], segment_type: str | None) -> bool:
        if not segment_type:
            return True
        kind = segment.get("type")
        if segment_type in FILE_SEGMENT_TYPES:
            return kind in FILE_SEGMENT_TYPES
        return bool(kind == segment_type)

    def find_segments(self, name: str, segment_type: str | None = None, own_only: bool = True) -> list[dict[str, Any]]:
        """Segments named ``name`` (optionally of one ``type``); by default only the login's own ones.

        Segments shared with the login (another ``owner``) can be neither modified nor renamed, so
        they never count as the segment an idempotent operator should reuse. The file segment
        types ``uploading`` and ``universal`` match each other.
        """
        found = []
        for segment in self.iter_segments():
            if segment.get("name") != name or not self._type_matches(segment, segment_type):
                continue
            if own_only and not self.is_own(segment):
                continue
            found.append(segment)
        return found

    def find_segment(
        self, name: str, segment_type: str | None = None, *, adopt_oldest: bool = False
    ) -> dict[str, Any] | None:
        """The login's own segment named ``name``, or None.

        :param adopt_oldest: with several of that name (twins created elsewhere), use the oldest and
            warn; otherwise several is an error.
        """
        found = [s for s in self.find_segments(name, segment_type) if s.get("status") != "uploaded"]
        if len(found) > 1 and adopt_oldest:
            found.sort(key=lambda s: (epoch_seconds(s.get("create_time")) or 0.0, int(s.get("id") or 0)))
            others = ", ".join(str(s.get("id")) for s in found[1:])
            log.warning(
                "Several Yandex.Audience segments are named %r: using the oldest, %s; the others (%s) are left "
                "alone and receive nothing; delete or rename them",
                name,
                found[0].get("id"),
                others,
            )
            return found[0]
        if len(found) > 1:
            ids = ", ".join(str(s.get("id")) for s in found)
            raise AudienceConflictError(
                f"Several Yandex.Audience segments are named {name!r} ({ids}); rename or delete the extra ones "
                "so that the name identifies one segment",
                vendor=VENDOR,
            )
        return found[0] if found else None

    def get_segment(self, segment_id: int | str) -> dict[str, Any]:
        """One segment, from the list (Yandex has no GET-one-segment operation); stops at the page holding it.

        :raises AudienceNotFoundError: naming the id when the login does not see it.
        """
        wanted = self._id(segment_id)
        for segment in self.iter_segments():
            if str(segment.get("id")) == wanted:
                return segment
        who = f"login {self.login!r}" if self.login else "this token"
        raise AudienceNotFoundError(
            f"Yandex.Audience segment {wanted} is not visible to {who}: it does not exist, was deleted, "
            "or belongs to another login that did not grant access",
            vendor=VENDOR,
        )

    def upload_timeouts(self, size: int) -> Timeouts:
        """Timeouts of a file upload of ``size`` bytes: the read timeout grows with the file.

        Yandex answers an upload only after it has read and checked the whole file, so a fixed read
        timeout fails large files with no fault at all. Assumption: at least
        ``upload_bytes_per_second`` (connection extra, default 1 MB/s) on top of the connection's
        read timeout.
        """
        base = self.transport.timeouts
        rate = float(self.settings().get_extra("upload_bytes_per_second", UPLOAD_BYTES_PER_SECOND) or 0)
        rate = rate if rate > 0 else UPLOAD_BYTES_PER_SECOND
        return Timeouts(connect=base.connect, read=float(base.read) + size / rate)

    def upload_file(self, content: bytes, filename: str = "data.tsv") -> dict[str, Any]:
        """Create a draft from a plain data file (device ids, MACs): ``POST segments/upload_file``.

        The draft is ``uploaded`` until :meth:`confirm_segment`. Retried safely (see :meth:`upload_draft`).
        """
        return self.upload_draft("segments/upload_file", content, filename)

    def upload_csv_file(self, content: bytes, filename: str = "data.csv") -> dict[str, Any]:
        """Create a draft from a CRM CSV with a header row: ``POST segments/upload_csv_file``.

        Retried safely (see :meth:`upload_draft`).
        """
        return self.upload_draft("segments/upload_csv_file", content, filename)

    def upload_draft(self, path: str, content: bytes, filename: str) -> dict[str, Any]:
        """Upload a file as a draft; after a timeout, a dropped connection or a 5xx, find the draft the
        lost request may have created before sending the file again.

        The file is sent under a name unique to this call (``<stem>-<random>.<ext>``); the draft's
        ``name`` is that file name until it is confirmed (assumption, as the sandbox does: Yandex
        names a draft after its file). Before resending, the segment list is read, again while the
        abandoned request may still land: a draft of that name is adopted (extra copies are deleted),
        otherwise the file is sent again once the abandoned request has settled.
        """
        stem, dot, ext = filename.rpartition(".")
        unique = f"{stem or filename}-{uuid.uuid4().hex[:12]}{dot}{ext if stem else ''}"
        timeouts = self.upload_timeouts(len(content))

        def send() -> dict[str, Any]:
            body = self._call(
                "POST",
                path,
                files={"file": (unique, content, "application/octet-stream")},
                endpoint_class="write",
                timeouts=timeouts,
            )
            return dict(self._unwrap(body, "segment"))

        def read_back() -> dict[str, Any] | None:
            drafts = self.find_drafts(lambda name: name == unique)
            if not drafts:
                return None
            keep, *extra = drafts
            for twin in extra:
                self._delete_draft(twin, "a second copy of a resent upload")
            log.info("Adopted the draft %s of a lost upload instead of uploading again", keep.get("id"))
            return keep

        return call_with_read_back(
            send, read_back, what=f"Uploading a file to Yandex.Audience ({path})", transport=self.transport
        )

    def find_drafts(self, name_matches: Callable[[str], bool], since: float | None = None) -> list[dict[str, Any]]:
        """The login's own unconfirmed drafts (``uploaded``) whose name matches, oldest first.

        :param since: only drafts created at or after this time (seconds since the epoch).
        """
        drafts = []
        for segment in self.iter_segments():
            if segment.get("status") != "uploaded" or not self.is_own(segment):
                continue
            if not name_matches(str(segment.get("name") or "")):
                continue
            created = epoch_seconds(segment.get("create_time"))
            if since is not None and created is not None and created < since:
                continue
            drafts.append(segment)
        return sorted(drafts, key=lambda d: (epoch_seconds(d.get("create_time")) or 0.0, int(d.get("id") or 0)))

    def delete_orphaned_drafts(self, prefix: str) -> list[Any]:
        """Delete the unconfirmed drafts whose file name starts with ``prefix`` (a destination's drafts
        left by a run that was killed or timed out); returns their ids."""
        deleted = []
        for draft in self.find_drafts(lambda name: name.startswith(prefix)):
            if self._delete_draft(draft, "left unconfirmed by an earlier run"):
                deleted.append(draft.get("id"))
        return deleted

    def _delete_draft(self, draft: dict[str, Any], why: str) -> bool:
        try:
            self.delete_segment(draft["id"])
        except AudienceNotFoundError:
            return False
        except AudienceError as exc:
            log.warning("Could not delete the Yandex.Audience draft %s (%s): %s", draft.get("id"), why, exc.message)
            return False
        log.warning("Deleted the unconfirmed Yandex.Audience draft %s: %s", draft.get("id"), why)
        return True

    def confirm_segment(
        self,
        segment_id: int | str,
        name: str,
        content_type: str,
        *,
        hashed: bool | None = None,
        hashing_alg: str | None = None,
        device_matching_type: str | None = None,
        check_size: bool = True,
    ) -> dict[str, Any]:
        """Save a draft file segment and start processing: ``POST segment/{id}/confirm``.

        :param content_type: ``crm``, ``idfa_gaid`` or ``mac``.
        :param hashed: whether the values are hashed (sent as a boolean; very old docs used 0/1).
        :param hashing_alg: ``SHA256`` (MD5 is refused for new data since 2025).
        :param check_size: ``False`` lets a file under 100 entries through (then unusable in Direct).
        """
        sid = self._id(segment_id)
        if content_type not in CONTENT_TYPES:
            raise AudienceValidationError(
                f"content_type must be one of {', '.join(CONTENT_TYPES)}, got {content_type!r}", vendor=VENDOR
            )
        segment = self._clean(
            {
                "id": int(sid),
                "name": name,
                "content_type": content_type,
                "hashed": bool(hashed) if hashed is not None else None,
                "hashing_alg": hashing_alg,
                "device_matching_type": device_matching_type,
            }
        )

        def send() -> dict[str, Any]:
            body = self._call(
                "POST",
                f"segment/{sid}/confirm",
                params={"check_size": "true" if check_size else "false"},
                json={"segment": segment},
                endpoint_class="write",
            )
            return dict(self._unwrap(body, "segment"))

        def read_back() -> dict[str, Any] | None:
            current = self.get_segment(sid)
            return current if current.get("status") != "uploaded" and current.get("name") == name else None

        return call_with_read_back(
            send, read_back, what=f"Confirming Yandex.Audience segment {sid}", transport=self.transport
        )

    def confirm_client_id_segment(self, segment_id: int | str, name: str, counter_id: int | str) -> dict[str, Any]:
        """Save a draft whose file holds Metrica ClientIDs: ``POST segment/client_id/{id}/confirm``."""
        sid = self._id(segment_id)

        def send() -> dict[str, Any]:
            body = self._call(
                "POST",
                f"segment/client_id/{sid}/confirm",
                json={"segment": {"name": name, "counter_id": int(self._id(counter_id, "counter"))}},
                endpoint_class="write",
            )
            return dict(self._unwrap(body, "segment"))

        def read_back() -> dict[str, Any] | None:
            current = self.get_segment(sid)
            return current if current.get("status") != "uploaded" else None

        return call_with_read_back(
            send, read_back, what=f"Confirming Yandex.Audience ClientID segment {sid}", transport=self.transport
        )

    def modify_data(
        self,
        segment_id: int | str,
        content: bytes,
        modification_type: str,
        *,
        check_size: bool = True,
        filename: str = "data.csv",
        wait_until_processed: bool = True,
    ) -> dict[str, Any]:
        """Add, remove or replace a file segment's data: ``POST segment/{id}/modify_data``.

        The file must have the structure and hashed form of the first upload. Resending the same
        file is harmless (Yandex answers ``no_changes``), so an ambiguous failure is retried; a
        ``no_changes`` answer raises :class:`YandexAudienceNoChangesError`.

        Clients say modify_data needs a ``processed`` segment (unverified): by default the call
        first waits while the segment is still processing (after a confirm or the previous file,
        e.g. between an addition and a subtraction), see :meth:`wait_until_settled`.

        :param wait_until_processed: wait while the segment is processing before sending.
        """
        sid = self._id(segment_id)
        if modification_type not in MODIFICATION_TYPES:
            raise AudienceValidationError(
                f"modification_type must be one of {', '.join(MODIFICATION_TYPES)}, got {modification_type!r}",
                vendor=VENDOR,
            )
        if wait_until_processed:
            self.wait_until_settled(sid)
        body = self._call(
            "POST",
            f"segment/{sid}/modify_data",
            params={"modification_type": modification_type, "check_size": "true" if check_size else "false"},
            files={"file": (filename, content, "application/octet-stream")},
            endpoint_class="write",
            idempotent=True,
            timeouts=self.upload_timeouts(len(content)),
        )
        return dict(self._unwrap(body, "segment"))

    def wait_until_settled(self, segment_id: int | str, timeout: float | None = None) -> dict[str, Any]:
        """Block while a segment is processing (``is_processed``, ``is_updated``); return it settled.

        Polls ``GET segments`` every ``processing_poll_interval`` seconds (connection extra, default
        30) for at most ``processing_wait_timeout`` seconds (default 3 hours: processing usually takes
        up to two). Any other status (processed, few_data, failed, unknown) returns at once.

        :raises AudienceServerError: when the segment is still processing after the timeout.
        """
        settings = self.settings()
        interval = float(settings.get_extra("processing_poll_interval", 30.0) or 30.0)
        limit = float(timeout if timeout is not None else settings.get_extra("processing_wait_timeout", 10800.0))
        deadline = time.monotonic() + limit
        while True:
            segment = self.get_segment(segment_id)
            status = segment.get("status")
            if YANDEX_AUDIENCE_SEGMENT_STATUS.phase(str(status)) is not Phase.RUNNING:
                return segment
            if time.monotonic() + interval > deadline:
                raise AudienceServerError(
                    f"Yandex.Audience segment {segment_id} is still processing (status {status}) after "
                    f"{limit:.0f} s; its data can be changed only once it is processed. Rerun later "
                    "(the snapshot was not advanced, so the rerun sends the difference again)",
                    vendor=VENDOR,
                )
            log.info("Yandex.Audience segment %s is %s; waiting %g s before changing its data", segment_id, status,
                     interval)  # fmt: skip
            time.sleep(interval)

    def _create(self, path: str, segment: dict[str, Any], segment_type: str) -> dict[str, Any]:
        """A create_* call; after an ambiguous failure the segment is looked up by name first."""
        name = segment["name"]

        def send() -> dict[str, Any]:
            body = self._call("POST", path, json={"segment": self._clean(segment)}, endpoint_class="write")
            return dict(self._unwrap(body, "segment"))

        def read_back() -> dict[str, Any] | None:
            return self.find_segment(name, segment_type)

        return call_with_read_back(
            send, read_back, what=f"Creating Yandex.Audience {segment_type} segment {name!r}", transport=self.transport
        )

    def create_metrika_segment(
        self,
        name: str,
        metrika_segment_type: str,
        metrika_segment_id: int | str,
        device_matching_type: str | None = None,
    ) -> dict[str, Any]:
        """Segment from a Metrica counter, goal or segment: ``POST segments/create_metrika``.

        :param metrika_segment_type: ``counter_id``, ``goal_id`` or ``segment_id``.
        """
        return self._create(
            "segments/create_metrika",
            {
                "name": name,
                "metrika_segment_type": metrika_segment_type,
                "metrika_segment_id": int(self._id(metrika_segment_id, "Metrica object")),
                "device_matching_type": device_matching_type,
            },
            "metrika",
        )

    def create_appmetrica_segment(
        self,
        name: str,
        app_metrica_segment_type: str,
        app_metrica_segment_id: int | str,
        device_matching_type: str | None = None,
    ) -> dict[str, Any]:
        """Segment from an AppMetrica app or segment: ``POST segments/create_appmetrica``.

        :param app_metrica_segment_type: ``api_key`` or ``segment_id``.
        """
        return self._create(
            "segments/create_appmetrica",
            {
                "name": name,
                "app_metrica_segment_type": app_metrica_segment_type,
                "app_metrica_segment_id": int(self._id(app_metrica_segment_id, "AppMetrica object")),
                "device_matching_type": device_matching_type,
            },
            "appmetrica",
        )

    @staticmethod
    def _check_geo_type(geo_segment_type: str) -> None:
        if geo_segment_type not in GEO_SEGMENT_TYPES:
            raise AudienceValidationError(
                f"geo_segment_type must be one of {', '.join(GEO_SEGMENT_TYPES)} (a string, not a number), "
                f"got {geo_segment_type!r}",
                vendor=VENDOR,
            )

    def create_geo_segment(
        self,
        name: str,
        geo_segment_type: str,
        radius: int,
        points: list[dict[str, Any]],
        *,
        period_length: int | None = None,
        times_quantity: int | None = None,
        device_matching_type: str | None = None,
    ) -> dict[str, Any]:
        """Geo segment of circles around points: ``POST segments/create_geo``.

        :param points: ``[{"latitude", "longitude", "description"?}]``.
        :param radius: metres.
        """
        self._check_geo_type(geo_segment_type)
        return self._create(
            "segments/create_geo",
            {
                "name": name,
                "geo_segment_type": geo_segment_type,
                "radius": radius,
                "points": points,
                "period_length": period_length,
                "times_quantity": times_quantity,
                "device_matching_type": device_matching_type,
            },
            "geo",
        )

    def create_geo_polygon_segment(
        self,
        name: str,
        geo_segment_type: str,
        polygons: list[dict[str, Any]],
        *,
        period_length: int | None = None,
        times_quantity: int | None = None,
        device_matching_type: str | None = None,
    ) -> dict[str, Any]:
        """Geo segment of polygons: ``POST segments/create_geo_polygon``.

        :param polygons: ``[{"points": [{"latitude", "longitude"}, ...], "description"?}]``.
        """
        self._check_geo_type(geo_segment_type)
        return self._create(
            "segments/create_geo_polygon",
            {
                "name": name,
                "geo_segment_type": geo_segment_type,
                "polygons": polygons,
                "period_length": period_length,
                "times_quantity": times_quantity,
                "device_matching_type": device_matching_type,
            },
            "geo",
        )

    def update_geo_points(self, segment_id: int | str, points: list[dict[str, Any]]) -> None:
        """``POST segment/{id}/update_geo_points``: switched off by Yandex (the API reference marks it so).

        Not sent: create a new geo segment instead.

        :raises AudienceValidationError: always.
        """
        raise AudienceValidationError(
            "Yandex.Audience has switched off update_geo_points; create a new geo segment with the new points",
            vendor=VENDOR,
        )

    def create_pixel_segment(
        self,
        name: str,
        pixel_id: int | str,
        *,
        period_length: int | None = None,
        times_quantity: int | None = None,
        times_quantity_operation: str | None = None,
        utm_source: str | None = None,
        utm_medium: str | None = None,
        utm_campaign: str | None = None,
        utm_content: str | None = None,
        utm_term: str | None = None,
    ) -> dict[str, Any]:
        """Segment of users seen by a pixel: ``POST segments/create_pixel``."""
        return self._create(
            "segments/create_pixel",
            {
                "name": name,
                "pixel_id": int(self._id(pixel_id, "pixel")),
                "period_length": period_length,
                "times_quantity": times_quantity,
                "times_quantity_operation": times_quantity_operation,
                "utm_source": utm_source,
                "utm_medium": utm_medium,
                "utm_campaign": utm_campaign,
                "utm_content": utm_content,
                "utm_term": utm_term,
            },
            "pixel",
        )

    def create_lookalike_segment(
        self,
        name: str,
        lookalike_link: int | str,
        lookalike_value: int,
        *,
        maintain_device_distribution: bool | None = None,
        maintain_geo_distribution: bool | None = None,
    ) -> dict[str, Any]:
        """Lookalike segment built from one of the login's own segments: ``POST segments/create_lookalike``.

        :param lookalike_link: id of the source segment.
        :param lookalike_value: the similarity setting, passed through as is (its direction is
            unverified: third-party clients disagree whether 1 is the closest or the widest).
        """
        return self._create(
            "segments/create_lookalike",
            {
                "name": name,
                "lookalike_link": int(self._id(lookalike_link)),
                "lookalike_value": int(lookalike_value),
                "maintain_device_distribution": maintain_device_distribution,
                "maintain_geo_distribution": maintain_geo_distribution,
            },
            "lookalike",
        )

    def update_segment(self, segment_id: int | str, name: str) -> dict[str, Any]:
        """Rename a segment (only the name is editable): ``PUT segment/{id}``."""
        sid = self._id(segment_id)
        body = self._call("PUT", f"segment/{sid}", json={"segment": {"name": name}}, endpoint_class="write")
        return dict(self._unwrap(body, "segment"))

    def delete_segment(self, segment_id: int | str) -> bool:
        """Delete a segment for good (no undelete): ``DELETE segment/{id}``."""
        sid = self._id(segment_id)
        body = self._call("DELETE", f"segment/{sid}", endpoint_class="write")
        return bool(body.get("success", True)) if isinstance(body, dict) else True

    def reprocess_segment(self, segment_id: int | str) -> bool:
        """Re-run matching (useful for ``few_data``): ``PUT segment/{id}/reprocess``.

        Yandex allows two per segment per day and 20 per login per 24 h. A reprocess is never resent.
        After a timeout, a dropped connection or a 5xx the segment's status is read back, again
        every ``read_back_interval`` seconds of the transport while the unanswered request may still
        land (``unsettled_until``): processing again means the reprocess was applied.
        A segment that still reads done may never have been reprocessed, or may have been
        reprocessed and finished already; nothing tells the two apart, so that is
        :class:`~airflow_audience_provider.core.errors.AudienceOutcomeUnknownError`.
        """
        sid = self._id(segment_id)
        try:
            body = self._call("PUT", f"segment/{sid}/reprocess", endpoint_class="reprocess", idempotent=False)
        except (AudienceServerError, AudienceTransportError) as exc:
            try:
                status = self._read_back_reprocess(sid)
            except AudienceError as unread:
                status = f"unknown: reading it back failed too ({unread.message})"
            if status is None:
                log.warning(
                    "Reprocessing Yandex.Audience segment %s failed ambiguously (%s) but had been applied",
                    sid,
                    exc.message,
                )
                return True
            raise AudienceOutcomeUnknownError(
                f"Reprocessing Yandex.Audience segment {sid} went unanswered ({exc.message}); its status is "
                f"{status}: it may never have been reprocessed, or been reprocessed and finished already. "
                "Not resent (a resend would be a second run, of two allowed a day): check the segment, "
                "then rerun the task if a reprocess is still wanted",
                vendor=VENDOR,
            ) from exc
        return bool(body.get("success", True)) if isinstance(body, dict) else True

    def _read_back_reprocess(self, sid: str) -> str | None:
        """None once the segment reads processing again (the reprocess was applied); else its last status.

        Read once, then again while an unanswered request of this hook may still land.
        """
        while True:
            status = str(self.get_segment(sid).get("status"))
            if status == "is_processed":  # what a reprocess starts (modify_data's is_updated is not it)
                return None
            left = self.transport.unsettled_until() - time.monotonic()
            if left <= 0:
                return status
            time.sleep(min(left, self.transport.read_back_interval))

    # ===================================================================== grants

    def list_grants(self, segment_id: int | str) -> list[dict[str, Any]]:
        """Grants on a segment: ``GET segment/{id}/grants``."""
        sid = self._id(segment_id)
        return list(self._unwrap(self._call("GET", f"segment/{sid}/grants"), "grants") or [])

    def create_grant(
        self, segment_id: int | str, user_login: str, comment: str | None = None, permission: str | None = None
    ) -> dict[str, Any]:
        """Share a segment with another login: ``PUT segment/{id}/grant``.

        :param permission: ``view`` or ``edit``; sent only when given (used by clients, not in the
            API reference; unverified).
        """
        sid = self._id(segment_id)
        if comment is not None and len(comment) > 255:
            raise AudienceValidationError("A grant comment may have at most 255 characters", vendor=VENDOR)
        grant = self._clean({"user_login": user_login, "comment": comment, "permission": permission})
        body = self._call("PUT", f"segment/{sid}/grant", json={"grant": grant})
        return dict(self._unwrap(body, "grant"))

    def delete_grant(self, segment_id: int | str, user_login: str) -> bool:
        """Remove a grant: ``DELETE segment/{id}/grant?user_login=``."""
        sid = self._id(segment_id)
        body = self._call("DELETE", f"segment/{sid}/grant", params={"user_login": user_login})
        return bool(body.get("success", True)) if isinstance(body, dict) else True

    # ===================================================================== accounts

    def list_accounts(self) -> list[dict[str, Any]]:
        """Accounts the login is a delegate of: ``GET accounts``."""
        return list(self._unwrap(self._call("GET", "accounts"), "accounts") or [])

    # ===================================================================== delegates

    def list_delegates(self) -> list[dict[str, Any]]:
        """Delegates of the login's account: ``GET delegates``."""
        return list(self._unwrap(self._call("GET", "delegates"), "delegates") or [])

    def add_delegate(self, user_login: str, perm: str = "view", comment: str | None = None) -> list[dict[str, Any]]:
        """Add a delegate or change its rights: ``PUT delegate``; returns the full delegate list.

        :param perm: ``view`` (read-only) or ``edit`` (full access).
        """
        if perm not in DELEGATE_PERMS:
            raise AudienceValidationError(f"perm must be 'view' or 'edit', got {perm!r}", vendor=VENDOR)
        if comment is not None and len(comment) > 255:
            raise AudienceValidationError("A delegate comment may have at most 255 characters", vendor=VENDOR)
        body = self._call(
            "PUT",
            "delegate",
            json={"delegate": self._clean({"user_login": user_login, "perm": perm, "comment": comment})},
        )
        return list(self._unwrap(body, "delegates") or [])

    def delete_delegate(self, user_login: str) -> bool:
        """Remove a delegate: ``DELETE delegate?user_login=``."""
        body = self._call("DELETE", "delegate", params={"user_login": user_login})
        return bool(body.get("success", True)) if isinstance(body, dict) else True

    # ===================================================================== pixels

    def list_pixels(self) -> list[dict[str, Any]]:
        """Pixels of the login: ``GET pixels``."""
        return list(self._unwrap(self._call("GET", "pixels"), "pixels") or [])

    def create_pixel(self, name: str) -> dict[str, Any]:
        """Create a pixel: ``POST pixels``; after an ambiguous failure it is looked up by name first."""

        def send() -> dict[str, Any]:
            return dict(self._unwrap(self._call("POST", "pixels", json={"pixel": {"name": name}}), "pixel"))

        def read_back() -> dict[str, Any] | None:
            return next((p for p in self.list_pixels() if p.get("name") == name), None)

        return call_with_read_back(
            send, read_back, what=f"Creating Yandex.Audience pixel {name!r}", transport=self.transport
        )

    def update_pixel(self, pixel_id: int | str, name: str) -> dict[str, Any]:
        """Rename a pixel: ``PUT pixel/{id}``."""
        pid = self._id(pixel_id, "pixel")
        return dict(self._unwrap(self._call("PUT", f"pixel/{pid}", json={"pixel": {"name": name}}), "pixel"))

    def delete_pixel(self, pixel_id: int | str) -> bool:
        """Delete a pixel (it can be restored with :meth:`undelete_pixel`): ``DELETE pixel/{id}``."""
        pid = self._id(pixel_id, "pixel")
        body = self._call("DELETE", f"pixel/{pid}")
        return bool(body.get("success", True)) if isinstance(body, dict) else True

    def undelete_pixel(self, pixel_id: int | str) -> bool:
        """Restore a deleted pixel: ``POST pixel/{id}/undelete`` (answer body unverified; any 2xx is success)."""
        pid = self._id(pixel_id, "pixel")
        body = self._call("POST", f"pixel/{pid}/undelete", idempotent=True)
        return bool(body.get("success", True)) if isinstance(body, dict) else True

    # ===================================================================== waiting

    def segment_result(self, segment: dict[str, Any]) -> dict[str, Any]:
        """The small JSON result operators and sensors return for a segment."""
        sid = segment.get("id")
        return {
            "segment_id": sid,
            "name": segment.get("name"),
            "type": segment.get("type"),
            "status": segment.get("status"),
            "item_quantity": segment.get("item_quantity"),
            "matched_quantity": segment.get("matched_quantity"),
            "cookies_matched_quantity": segment.get("cookies_matched_quantity"),
            "url": self.segment_url(sid),
            "asset_uri": self.segment_asset_uri(sid),
        }

    def segment_status(self, segment_id: int | str) -> PollResult:
        """One look at a segment's processing (the status function of sensor, trigger and waits).

        Costs one ``GET segments`` from the daily budget of 5000 requests: poll every few minutes.
        """
        segment = self.get_segment(segment_id)
        status = str(segment.get("status") or "")
        data = self.segment_result(segment)
        label = f"Yandex.Audience segment {segment.get('id')} ({segment.get('name')!r})"
        if status == "uploaded":
            return PollResult(
                Phase.FAILED,
                status,
                f"{label} is an unconfirmed draft (uploaded): it is processed only after confirm",
                data,
            )
        if status == "few_data":
            return PollResult(Phase.FAILED, status, _few_data_advice(segment.get("id")), data)
        return YANDEX_AUDIENCE_SEGMENT_STATUS.poll_result(
            status,
            data,
            subject=label,
            done=f"{label} is processed ({segment.get('cookies_matched_quantity')} matched ids)",
            failed=f"{label} failed processing (status {status})",
            running=f"{label} is still processing (status {status})",
            unknown=f"{label} has status {status!r}, unknown to this provider; still waiting",
        )


__all__ = [
    "YANDEX_AUDIENCE_SEGMENT_STATUS",
    "YandexAudienceHook",
    "YandexAudienceNoChangesError",
    "parse_yandex_audience_error",
    "quota_reset_seconds",
]
