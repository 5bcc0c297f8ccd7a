"""Twilio Segment Public API hook: Engage audiences of a space (reference: docs.segmentapis.com).

Method names follow Segment's operations ("List Audiences", "Update Audience for Space",
"Create Audience Preview", "Force Execute Audience Run", ...), so Segment's reference is the
index. Every call pins a media type (``application/vnd.segment.<version>+json``) so a promotion of an
endpoint cannot change shapes under a DAG: the connection's ``api_version`` (default ``v1``)
where the operation offers it, else the operation's own (:data:`OPERATION_VERSIONS`): spaces and
``audience-references`` exist in ``v1alpha`` only, schedules/runs have no ``v1beta`` (``v1`` is
used instead). A ``Content-Type`` goes only with a body; Force Execute Audience Run has none.

**Statuses** (the "Compute statuses" of Segment's Engage Audiences docs) are mapped as data in
:data:`SEGMENT_AUDIENCE_STATUS`:
``Live``, ``Not Computing`` and ``Disabled`` are done; ``Failed`` and ``Error`` failed;
``Preparing``, ``Computing``, ``Backfilling``, ``Awaiting Destinations`` and ``Locked`` still
working. The status is a free-text display string: it is compared case-insensitively and an
unknown value is reported verbatim and waited on. Assumption (unverified: the docs describe the
UI): this mapping of the UI's compute statuses holds for the API. One documented exception: an edited
BATCH audience shows ``Live`` at once and applies the edit at its next scheduled compute, which
the API does not report, so :meth:`SegmentHook.audience_compute_status` counts it as computed
only ``batch_compute_wait`` seconds after the change.

**The edit lock**: after an update Segment locks the audience until the change is
incorporated, and Segment warns against editing before a (re)computation completes, so the
audience counts as locked for edits while its status is
one of :data:`EDIT_LOCKED_STATUSES` (``Locked``, ``Preparing``, ``Computing``, ``Backfilling``);
:meth:`SegmentHook.audience_edit_status` is the status function the operators wait on before
they edit. Assumption (unverified): the answer to an edit of a locked audience is 409, 422 or 423;
:meth:`SegmentHook.update_audience_for_space` reads the audience back on any of them and raises
:class:`SegmentAudienceLockedError` when it is locked.

**Query parameters**: object parameters use the dot notation the docs show for pagination
(``pagination.count=50&pagination.cursor=...``); using the same form for ``search.type`` /
``search.query`` is an inference (unverified). ``pagination.count`` is always sent (the alpha
API required it). The NAME search may match loosely, so names are compared exactly here.

**Versions**: with ``api_version = v1alpha`` the hook refuses what the alpha shapes lack
(creating ``LINKED`` audiences, ``options`` in an update) before sending anything; previews take
``LINKED`` in every version.

**Rate limits** per operation are enforced client-side (the values Segment's API reference
gives since 2025-10-09; the alpha values when the connection pins ``v1alpha``; any of them
overridable with the connection's ``rate_limits`` extra). A 429 is retried by the transport after ``Retry-After``,
else the body's ``data.msBeforeNext``, else ``X-RateLimit-Reset`` (an RFC 5322 date). Segment
counts per token, so other users of the token spend the same budget: when an answer says
``X-RateLimit-Remaining: 0``, the next call of that operation waits for ``X-RateLimit-Reset``
(at most a minute, the profile's ``max_budget_pause``) instead of collecting a 429. The monthly preview quota
(700) belongs to the space, whichever token spends it, and is counted per space.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any, ClassVar
from urllib.parse import quote

import requests

from airflow_audience_provider.assets import segment_uri
from airflow_audience_provider.connections import SEGMENT
from airflow_audience_provider.core.auth import TokenHeaderAuth
from airflow_audience_provider.core.errors import (
    AudienceConfigurationError,
    AudienceConflictError,
    AudienceError,
    AudienceNotFoundError,
    AudienceValidationError,
)
from airflow_audience_provider.core.hook import AudienceHook, ConnectionSettings
from airflow_audience_provider.core.paging import MAX_PAGES, paginate
from airflow_audience_provider.core.ratelimit import RateLimit, Window
from airflow_audience_provider.core.results import Phase, PollResult, StatusMap
from airflow_audience_provider.core.times import epoch_seconds
from airflow_audience_provider.core.transport import (
    ErrorInfo,
    VendorProfile,
    call_with_read_back,
    parse_retry_after,
)
from airflow_audience_provider.domain.segment import (
    audience_body,
    audience_type_name,
    check_definition,
    definition_body,
    pending_changes,
    preview_options,
    schedule_body,
)

log = logging.getLogger(__name__)

VENDOR = "segment"

HOSTS = {"us": "https://api.segmentapis.com", "eu": "https://eu1.api.segmentapis.com"}
APP_URLS = {"us": "https://app.segment.com", "eu": "https://eu1.app.segment.com"}
API_VERSIONS = ("v1", "v1beta", "v1alpha")
SEARCH_TYPES = ("NAME", "KEY", "DEFINITION")

#: The media-type versions each group of operations offers (SDK 73.2.0), most stable first. The
#: connection's ``api_version`` is sent where the group offers it, else the group's first version.
OPERATION_VERSIONS: dict[str, tuple[str, ...]] = {
    "spaces": ("v1alpha",),
    "audiences": ("v1", "v1beta", "v1alpha"),
    "runs": ("v1", "v1alpha"),
    "schedules": ("v1", "v1alpha"),
    "references": ("v1alpha",),
}

#: Audience compute statuses (Engage docs, "Compute statuses"), lower-cased; unknown ones keep waiting.
SEGMENT_AUDIENCE_STATUS = StatusMap.of(
    done={"live", "not computing", "disabled"},
    failed={"failed", "error"},
    running={"preparing", "computing", "backfilling", "awaiting destinations", "locked"},
)

#: Statuses during which the audience must not be edited (the lock after an update, and Segment's
#: warning that editing before a (re)computation completes can cause errors).
EDIT_LOCKED_STATUSES = frozenset({"locked", "preparing", "computing", "backfilling"})

#: How long after an edit a BATCH audience counts as computed: Segment applies the edit at the next
#: scheduled compute and reports neither the schedule nor the time of a compute.
DEFAULT_BATCH_COMPUTE_WAIT = 24 * 3600.0

#: Audience preview statuses.
SEGMENT_PREVIEW_STATUS = StatusMap.of(done={"completed"}, failed={"failed"}, running={"running"})

MINUTE = 60.0
#: Documented per-operation limits, requests per minute (Segment's API reference, since 2025-10-09).
CURRENT_LIMITS: dict[str, int] = {
    "list_audiences": 60,
    "get_audience": 100,
    "create_audience": 50,
    "update_audience": 50,
    "remove_audience": 50,
    "create_audience_preview": 5,
    "get_audience_preview": 300,
    "audience_references": 25,
    "write_schedule": 50,
}
#: The alpha-era limits of Segment's v1alpha Audiences reference page (used with ``api_version = v1alpha``).
ALPHA_LIMITS: dict[str, int] = {
    **CURRENT_LIMITS,
    "list_audiences": 25,
    "create_audience": 10,
    "update_audience": 10,
    "remove_audience": 20,
    "get_audience_preview": 100,
}
#: Previews also have a monthly quota per space (700); a month is taken as 30 days.
PREVIEW_MONTHLY_QUOTA = 700
MONTH = 30 * 86400.0


def _limits(per_minute: Mapping[str, int]) -> dict[str, RateLimit]:
    limits: dict[str, RateLimit] = {}
    for name, count in per_minute.items():
        windows = [Window(int(count), MINUTE, f"{count} {name} requests per minute")]
        # Waiting out a per-minute window is fine; a used-up monthly quota fails the call at once.
        limits[name] = RateLimit(tuple(windows), max_wait=120.0)
    return limits


def _preview_limit(per_minute: RateLimit, space_id: str) -> RateLimit:
    """The preview limit for one space: the token's per-minute window plus the space's monthly quota.

    The monthly quota belongs to the space, whichever token spends it, so its ledger is shared by
    every connection on this host (space ids are unique across workspaces).
    """
    monthly = Window(
        PREVIEW_MONTHLY_QUOTA,
        MONTH,
        f"{PREVIEW_MONTHLY_QUOTA} previews per month in space {space_id}",
        scope=f"previews_per_month:{space_id}",
        per_account=False,
    )
    minute = tuple(w for w in per_minute.windows if w.scope == "")
    return replace(per_minute, windows=(*minute, monthly))


class SegmentAudienceLockedError(AudienceConflictError):
    """The audience is locked until Segment has incorporated the previous edit. Retry later."""


def _first_error(body: Any) -> dict[str, Any] | None:
    if isinstance(body, dict):
        errors = body.get("errors")
        if isinstance(errors, list) and errors and isinstance(errors[0], dict):
            return errors[0]
    return None


def parse_segment_error(response: requests.Response) -> ErrorInfo:
    """Read the ``{"errors": [{"type", "message", "field", "data", "status"}]}`` envelope."""
    try:
        body = response.json()
    except ValueError:
        return ErrorInfo()
    first = _first_error(body)
    if first is None:
        return ErrorInfo()
    errors = body["errors"]
    messages = [str(e.get("message") or e.get("type")) for e in errors if isinstance(e, dict)]
    return ErrorInfo(
        message="; ".join(messages),
        code=str(first.get("type")) if first.get("type") else None,
        field=first.get("field"),
        details=[{k: e.get(k) for k in ("type", "message", "field")} for e in errors if isinstance(e, dict)],
    )


def segment_retry_after(response: requests.Response) -> float | None:
    """``Retry-After`` (seconds), else the 429 body's ``data.msBeforeNext``, else ``X-RateLimit-Reset``
    (an RFC 5322 date, or epoch seconds), else None (the transport backs off exponentially)."""
    wait = parse_retry_after(response.headers.get("Retry-After"))
    if wait is not None:
        return wait
    try:
        first = _first_error(response.json())
    except ValueError:
        first = None
    data = first.get("data") if first else None
    if isinstance(data, dict) and isinstance(data.get("msBeforeNext"), int | float):
        return max(0.0, float(data["msBeforeNext"]) / 1000.0)
    reset = response.headers.get("X-RateLimit-Reset")
    if reset:
        try:
            number = float(reset)
        except ValueError:
            return parse_retry_after(reset)
        return max(0.0, number - time.time()) if number > 1_000_000_000 else max(0.0, number)
    return None


def segment_budget_spent(response: requests.Response) -> float | None:
    """Seconds until an operation's budget frees up when ``X-RateLimit-Remaining`` is 0; 0 while some
    is left; None without the header. The reset is an RFC 5322 date in whole seconds: one more
    second makes sure the slot is free."""
    raw = response.headers.get("X-RateLimit-Remaining")
    if raw is None:
        return None
    try:
        remaining = int(float(raw))
    except ValueError:
        return None
    if remaining > 0:
        return 0.0
    wait = parse_retry_after(response.headers.get("X-RateLimit-Reset"))
    return None if wait is None else wait + 1.0


class SegmentHook(AudienceHook):
    """Talk to the Twilio Segment Public API (Engage audiences).

    :param segment_conn_id: Airflow connection of type ``segment`` (:ref:`howto/connection:segment`).
    """

    spec = SEGMENT
    default_host = HOSTS["us"]
    profile: ClassVar[VendorProfile] = VendorProfile(
        name=VENDOR,
        parse_error=parse_segment_error,
        request_id_headers=("X-Request-Id", "Request-Id"),
        retry_after=segment_retry_after,
        rate_limits=_limits(CURRENT_LIMITS),
        # X-RateLimit-Remaining: 0 holds the operation's budget until X-RateLimit-Reset, for every
        # client of the rate limiter; a pause over a minute is left to the 429 path, which fails fast.
        budget_spent=segment_budget_spent,
        max_budget_pause=60.0,
    )

    def __init__(self, segment_conn_id: str = SEGMENT.default_conn_name, **kwargs: Any) -> None:
        super().__init__(segment_conn_id, **kwargs)
        self.segment_conn_id = segment_conn_id

    # -- connection -------------------------------------------------------------------------

    def region(self, settings: ConnectionSettings | None = None) -> str:
        return (settings or self.settings()).get_choice("region", "us", HOSTS, "'us' or 'eu'")

    def base_url(self, settings: ConnectionSettings) -> str:
        region = self.region(settings)  # validated even when the host is set: links use it
        if settings.host:
            return super().base_url(settings)
        return HOSTS[region]

    def build_auth(self, settings: ConnectionSettings, session: requests.Session) -> requests.auth.AuthBase:
        token = settings.require(settings.password, "Public API token (password field)")
        if token.lower().startswith("bearer "):
            token = token[7:].strip()  # a pasted "Bearer x" would otherwise be sent as "Bearer Bearer x"
        return TokenHeaderAuth(token, scheme="Bearer")

    def budget_key(self, settings: ConnectionSettings) -> str:
        # Segment counts per token (and IP); the token itself must not name a file, so hash it.
        import hashlib

        digest = hashlib.sha256((settings.password or "").encode()).hexdigest()[:16]
        return f"{self.base_url(settings)}|{digest}"

    def rate_limits(self, settings: ConnectionSettings) -> dict[str, RateLimit]:
        # Per-connection limits: the alpha values for v1alpha, then the connection's overrides.
        limits = dict(ALPHA_LIMITS if self.api_version(settings) == "v1alpha" else CURRENT_LIMITS)
        raw = settings.get_extra("rate_limits")
        if raw:
            try:
                overrides = json.loads(raw) if isinstance(raw, str) else dict(raw)
                limits.update({str(k): int(v) for k, v in overrides.items()})
            except (TypeError, ValueError) as exc:
                raise AudienceConfigurationError(
                    f"Airflow connection '{settings.conn_id}': extra 'rate_limits' must be a JSON object of "
                    f"operation -> requests per minute ({exc})"
                ) from None
            unknown = sorted(set(limits) - set(CURRENT_LIMITS))
            if unknown:
                raise AudienceConfigurationError(
                    f"Airflow connection '{settings.conn_id}': extra 'rate_limits' names unknown operations "
                    f"{unknown}; known: {', '.join(sorted(CURRENT_LIMITS))}"
                )
            if any(v <= 0 for v in limits.values()):
                raise AudienceConfigurationError(
                    f"Airflow connection '{settings.conn_id}': every rate limit must be a positive integer"
                )
        return _limits(limits)

    def api_version(self, settings: ConnectionSettings | None = None) -> str:
        return (settings or self.settings()).get_choice(
            "api_version", "v1", API_VERSIONS, f"one of {', '.join(API_VERSIONS)}"
        )

    def media_type(self, version: str | None = None) -> str:
        return f"application/vnd.segment.{version or self.api_version()}+json"

    def _headers(self, version: str | None = None, body: bool = False) -> dict[str, str]:
        media = self.media_type(version)
        return {"Accept": media, "Content-Type": media} if body else {"Accept": media}

    def operation_version(self, group: str) -> str:
        """The version to pin for a group of :data:`OPERATION_VERSIONS`: the connection's where offered.

        Spaces and audience references exist in ``v1alpha`` only; schedules and runs have no ``v1beta``.
        """
        version = self.api_version()
        offered = OPERATION_VERSIONS[group]
        return version if version in offered else offered[0]

    def _check_alpha(self, *, audience_type: str | None = None, update_options: bool = False) -> None:
        """Refuse what the v1alpha shapes do not have (no ``LINKED`` type, no update ``options``) before sending it."""
        if self.api_version() != "v1alpha":
            return
        if audience_type is not None and str(audience_type).strip().upper() == "LINKED":
            raise AudienceValidationError(
                "LINKED audiences need api_version v1 or v1beta; v1alpha knows USERS and ACCOUNTS only",
                vendor=VENDOR,
                field="audienceType",
            )
        if update_options:
            raise AudienceValidationError(
                "v1alpha updates cannot change options; set api_version v1 on the connection",
                vendor=VENDOR,
                field="options",
            )

    def default_space_id(self) -> str | None:
        value = self.settings().get_extra("space_id")
        return str(value).strip() if value else None

    def space(self, space_id: str | None) -> str:
        """The space to use: the argument, else the connection's default; required."""
        space = (space_id or "").strip() or self.default_space_id()
        if not space:
            raise AudienceConfigurationError(
                f"No Segment space id: pass space_id or set the 'space_id' extra of connection '{self.conn_id}'"
            )
        return space

    def _call(
        self,
        method: str,
        path: str,
        *,
        endpoint_class: str = "default",
        version: str | None = None,
        json_body: Any = None,
        **kwargs: Any,
    ) -> dict[str, Any]:
        """One call; returns the ``data`` object of the answer."""
        transport = self.transport
        body = transport.json(
            method,
            path,
            headers=self._headers(version, body=json_body is not None),
            json=json_body,
            endpoint_class=endpoint_class,
            **kwargs,
        )
        data = body.get("data") if isinstance(body, dict) else None
        return data if isinstance(data, dict) else {}

    @staticmethod
    def _seg(value: str, what: str) -> str:
        if not value or not str(value).strip():
            raise AudienceValidationError(f"A Segment {what} is required", vendor=VENDOR)
        return quote(str(value).strip(), safe="")

    def _audiences_path(self, space_id: str, *rest: str) -> str:
        path = f"/spaces/{self._seg(space_id, 'space id')}/audiences"
        return "/".join([path, *rest]) if rest else path

    def _not_found(self, exc: AudienceNotFoundError, space_id: str, what: str) -> AudienceError:
        where = f"Segment space {space_id!r}" if what == "space" else f"Segment {what} in space {space_id!r}"
        return exc.restated(
            f"{where} was not found (or the space does not exist, or the token's workspace has no "
            f"Engage audiences): {exc.message}"
        )

    # -- links and assets -------------------------------------------------------------------

    def audience_url(self, space_id: str, audience_id: str) -> str:
        """Link to the audience in the Segment app.

        Assumption (unverified): audiences open at
        ``<app>/<workspace slug>/engage/spaces/<space id>/audiences/<audience id>``; without a
        ``workspace_slug`` extra the link goes to ``<app>/goto-my-workspace/...``, which the app
        redirects to the user's workspace.
        """
        settings = self.settings()
        app = str(settings.get_extra("app_url") or APP_URLS[self.region(settings)]).rstrip("/")
        slug = str(settings.get_extra("workspace_slug") or "goto-my-workspace")
        return (
            f"{app}/{quote(slug, safe='')}/engage/spaces/{quote(str(space_id), safe='')}"
            f"/audiences/{quote(str(audience_id), safe='')}"
        )

    @staticmethod
    def audience_asset_uri(space_id: str, audience_id: str) -> str:
        """``segment://<space id>/audience/<audience id>``."""
        return segment_uri(VENDOR, str(space_id), "audience", str(audience_id))

    # -- spaces -----------------------------------------------------------------------------

    def list_spaces(self) -> list[dict[str, Any]]:
        """List Spaces: ``GET /spaces``."""
        version = self.operation_version("spaces")
        return list(
            self._cursor_pages(
                lambda params: self._call("GET", "/spaces", params=params, version=version),
                {"pagination.count": 200},
                "spaces",
                endpoint="GET /spaces",
            )
        )

    def _cursor_pages(
        self,
        call: Callable[[dict[str, Any]], dict[str, Any]],
        params: dict[str, Any],
        key: str,
        *,
        endpoint: str,
        max_pages: int = MAX_PAGES,
    ) -> Iterator[dict[str, Any]]:
        """The objects under ``key`` of every page of a cursor listing (``pagination.cursor`` = ``pagination.next``)."""

        def page_at(cursor: str | None) -> tuple[list[dict[str, Any]], str | None]:
            data = call(params if cursor is None else {**params, "pagination.cursor": cursor})
            following = (data.get("pagination") or {}).get("next") or None
            return [o for o in data.get(key) or [] if isinstance(o, dict)], following

        return paginate(page_at, None, endpoint=endpoint, vendor=VENDOR, max_pages=max_pages)

    def get_space(self, space_id: str) -> dict[str, Any]:
        """Get Space: ``GET /spaces/{spaceId}``."""
        try:
            data = self._call(
                "GET", f"/spaces/{self._seg(space_id, 'space id')}", version=self.operation_version("spaces")
            )
            return dict(data.get("space") or {})
        except AudienceNotFoundError as exc:
            raise exc.restated(
                f"Segment space {space_id!r} was not found in the token's workspace: {exc.message}"
            ) from exc

    # -- audiences --------------------------------------------------------------------------

    def list_audiences(
        self,
        space_id: str | None = None,
        *,
        search_type: str | None = None,
        search_query: str | None = None,
        include_schedules: bool = False,
        page_size: int = 200,
        max_pages: int = 1000,
    ) -> list[dict[str, Any]]:
        """List Audiences: ``GET /spaces/{spaceId}/audiences``, every page (cursor pagination).

        :param search_type: ``NAME``, ``KEY`` or ``DEFINITION`` (with ``search_query``).
        :param page_size: ``pagination.count`` (1-200); always sent, as the alpha API required it.
        """
        space = self.space(space_id)
        if not 1 <= int(page_size) <= 200:
            raise AudienceValidationError("page_size must be between 1 and 200", vendor=VENDOR)
        params: dict[str, Any] = {"pagination.count": int(page_size)}
        if search_query is not None:
            search_type = (search_type or "NAME").upper()
            if search_type not in SEARCH_TYPES:
                raise AudienceValidationError(f"search_type must be one of {SEARCH_TYPES}", vendor=VENDOR)
            if len(search_query) > 255:
                raise AudienceValidationError("search_query is limited to 255 characters", vendor=VENDOR)
            params.update({"search.type": search_type, "search.query": search_query})
        if include_schedules:
            params["include"] = "schedules"
        path = self._audiences_path(space)

        def call(page_params: dict[str, Any]) -> dict[str, Any]:
            try:
                return self._call("GET", path, params=page_params, endpoint_class="list_audiences")
            except AudienceNotFoundError as exc:
                raise self._not_found(exc, space, "space") from exc

        return list(self._cursor_pages(call, params, "audiences", endpoint=f"GET {path}", max_pages=max_pages))

    def find_audiences_by_name(self, name: str, space_id: str | None = None) -> list[dict[str, Any]]:
        """Audiences whose name is exactly ``name`` (Segment's NAME search may match more loosely)."""
        if not name:
            raise AudienceValidationError("An audience name is required", vendor=VENDOR)
        found = self.list_audiences(space_id, search_type="NAME", search_query=name)
        return [a for a in found if a.get("name") == name]

    def find_audience_by_name(self, name: str, space_id: str | None = None) -> dict[str, Any] | None:
        """The one audience named ``name``, or None.

        :raises AudienceValidationError: when several audiences share the name (Segment allows
            it; which one is meant cannot be guessed).
        """
        matches = self.find_audiences_by_name(name, space_id)
        if len(matches) > 1:
            ids = ", ".join(str(a.get("id")) for a in matches)
            raise AudienceValidationError(
                f"{len(matches)} Segment audiences are named {name!r} ({ids}); rename or remove the extra ones",
                vendor=VENDOR,
            )
        return matches[0] if matches else None

    def get_audience(
        self, audience_id: str, space_id: str | None = None, *, include_schedules: bool = False
    ) -> dict[str, Any]:
        """Get Audience: ``GET /spaces/{spaceId}/audiences/{id}``.

        :raises AudienceNotFoundError: naming the audience and the space.
        """
        space = self.space(space_id)
        params = {"include": "schedules"} if include_schedules else None
        try:
            data = self._call(
                "GET",
                self._audiences_path(space, self._seg(audience_id, "audience id")),
                params=params,
                endpoint_class="get_audience",
            )
        except AudienceNotFoundError as exc:
            raise self._not_found(exc, space, f"audience {audience_id!r}") from exc
        return dict(data.get("audience") or {})

    def find_audience(self, audience_id: str, space_id: str | None = None) -> dict[str, Any] | None:
        """The audience with this id, or None."""
        try:
            return self.get_audience(audience_id, space_id)
        except AudienceNotFoundError:
            return None

    def create_audience(
        self,
        name: str,
        definition: str,
        *,
        space_id: str | None = None,
        audience_type: str = "USERS",
        enabled: bool | None = None,
        description: str | None = None,
        options: dict[str, Any] | None = None,
        target_entity: str | None = None,
    ) -> dict[str, Any]:
        """Create Audience: ``POST /spaces/{spaceId}/audiences`` (answers 200 with ``AudienceSummary``).

        Segment has no idempotency key and a timed-out create may have succeeded, so after an
        ambiguous failure the audience is looked up by name before anything is resent.
        """
        space = self.space(space_id)
        self._check_alpha(audience_type=audience_type)
        body = audience_body(
            name=name,
            definition=definition,
            audience_type=audience_type,
            enabled=enabled,
            description=description,
            options=options,
            target_entity=target_entity,
        )

        def send() -> dict[str, Any]:
            try:
                data = self._call("POST", self._audiences_path(space), json_body=body, endpoint_class="create_audience")
            except AudienceNotFoundError as exc:
                raise self._not_found(exc, space, "space") from exc
            return dict(data.get("audience") or {})

        return call_with_read_back(
            send,
            lambda: self.find_audience_by_name(name, space),
            what=f"Creating Segment audience {name!r}",
            transport=self.transport,
        )

    def update_audience_for_space(self, audience_id: str, space_id: str | None = None, **fields: Any) -> dict[str, Any]:
        """Update Audience for Space: ``PATCH /spaces/{spaceId}/audiences/{id}``.

        ``fields``: any of ``enabled``, ``name``, ``description``, ``definition`` (``{"query"}``),
        ``options``. The audience is locked afterwards until Segment has incorporated the change.

        :raises SegmentAudienceLockedError: when Segment refuses the edit (409/422/423) and the
            audience reads back as locked.
        """
        space = self.space(space_id)
        allowed = {"enabled", "name", "description", "definition", "options"}
        unknown = set(fields) - allowed
        if unknown or not fields:
            raise AudienceValidationError(
                f"An audience update takes some of {sorted(allowed)}; got {sorted(fields)}", vendor=VENDOR
            )
        self._check_alpha(update_options="options" in fields)
        path = self._audiences_path(space, self._seg(audience_id, "audience id"))
        try:
            data = self._call("PATCH", path, json_body=fields, endpoint_class="update_audience", idempotent=True)
        except AudienceNotFoundError as exc:
            raise self._not_found(exc, space, f"audience {audience_id!r}") from exc
        except (AudienceConflictError, AudienceValidationError) as exc:
            if exc.status in (409, 422, 423):
                current = self.find_audience(audience_id, space)
                status = str((current or {}).get("status") or "")
                if current is not None and not pending_changes(current, fields):
                    # A resent PATCH (after a 5xx or timeout) finds the audience locked by its own
                    # first, applied attempt: the change is there, so this is success.
                    log.warning(
                        "Segment refused an edit of audience %s as locked, but it already carries the change",
                        audience_id,
                    )
                    return current
                if current is not None and (exc.status == 409 or status.lower() in EDIT_LOCKED_STATUSES):
                    raise exc.restated(
                        f"Segment audience {audience_id} is locked (status {status!r}) until its previous edit "
                        f"is incorporated; Segment said: {exc.message}",
                        as_class=SegmentAudienceLockedError,
                    ) from exc
            raise
        return dict(data.get("audience") or {})

    def remove_audience_from_space(self, audience_id: str, space_id: str | None = None) -> None:
        """Remove Audience from Space: ``DELETE /spaces/{spaceId}/audiences/{id}``."""
        space = self.space(space_id)
        try:
            self._call(
                "DELETE",
                self._audiences_path(space, self._seg(audience_id, "audience id")),
                endpoint_class="remove_audience",
            )
        except AudienceNotFoundError as exc:
            raise self._not_found(exc, space, f"audience {audience_id!r}") from exc

    def list_audience_consumers(self, audience_id: str, space_id: str | None = None) -> list[dict[str, Any]]:
        """List Audience Consumers: ``GET .../audiences/{id}/audience-references`` (v1alpha only).

        The audiences that reference this one (through ``trait('<key>')``), every page.
        """
        space = self.space(space_id)
        path = self._audiences_path(space, self._seg(audience_id, "audience id"), "audience-references")
        version = self.operation_version("references")

        def call(params: dict[str, Any]) -> dict[str, Any]:
            try:
                return self._call("GET", path, params=params, version=version, endpoint_class="audience_references")
            except AudienceNotFoundError as exc:
                raise self._not_found(exc, space, f"audience {audience_id!r}") from exc

        return list(self._cursor_pages(call, {"pagination.count": 200}, "audiences", endpoint=f"GET {path}"))

    # -- previews ---------------------------------------------------------------------------

    def create_audience_preview(
        self,
        definition: str,
        *,
        space_id: str | None = None,
        audience_type: str = "USERS",
        options: dict[str, Any] | None = None,
        target_entity: str | None = None,
    ) -> dict[str, Any]:
        """Create Audience Preview: ``POST .../audiences/previews``; returns ``{"id", ...}``.

        Previews cost 5 per minute (per token) and 700 per month per space (whichever token);
        the client-side limiter waits out the first and fails at once when the second is used up.

        :param options: ``filterByExternalIds`` (list of strings) and ``backfillEventDataDays``
            (a number), the fields of the SDK's ``CreateAudiencePreviewOptions``.
        """
        space = self.space(space_id)
        check_definition(definition)
        # Every version's preview input, v1alpha's included, takes USERS, ACCOUNTS and LINKED.
        body: dict[str, Any] = {
            "definition": definition_body(definition, target_entity),
            "audienceType": audience_type_name(audience_type),
        }
        if options:
            body["options"] = preview_options(options)
        transport = self.transport
        limits = transport.profile.rate_limits
        if "create_audience_preview" in limits:
            # The monthly quota is the space's: point the preview budget at this space's ledger.
            per_space = _preview_limit(limits["create_audience_preview"], space)
            transport.profile = replace(transport.profile, rate_limits={**limits, "create_audience_preview": per_space})
        try:
            # Retrying a refused (429) POST is safe; an ambiguous failure just costs a preview.
            data = self._call(
                "POST",
                self._audiences_path(space, "previews"),
                json_body=body,
                endpoint_class="create_audience_preview",
            )
        except AudienceNotFoundError as exc:
            raise self._not_found(exc, space, "space") from exc
        return dict(data.get("audiencePreview") or {})

    def get_audience_preview(self, preview_id: str, space_id: str | None = None) -> dict[str, Any]:
        """Get Audience Preview: ``GET .../audiences/previews/{id}``."""
        space = self.space(space_id)
        try:
            data = self._call(
                "GET",
                self._audiences_path(space, "previews", self._seg(preview_id, "preview id")),
                endpoint_class="get_audience_preview",
            )
        except AudienceNotFoundError as exc:
            raise self._not_found(exc, space, f"audience preview {preview_id!r}") from exc
        return dict(data.get("audiencePreview") or {})

    # -- runs and schedules (LINKED audiences) ----------------------------------------------

    def force_execute_audience_run(self, audience_id: str, space_id: str | None = None) -> dict[str, Any]:
        """Force Execute Audience Run: ``POST .../audiences/{id}/runs`` (LINKED audiences only).

        Returns ``{"id"}`` of the started run. No endpoint reads a run's state (none is documented).
        """
        space = self.space(space_id)
        path = self._audiences_path(space, self._seg(audience_id, "audience id"), "runs")
        try:
            # The operation takes no body, so no body and no Content-Type are sent.
            data = self._call("POST", path, version=self.operation_version("runs"))
        except AudienceNotFoundError as exc:
            raise self._not_found(exc, space, f"audience {audience_id!r}") from exc
        return dict(data.get("run") or {})

    def _schedules_path(self, space: str, audience_id: str, schedule_id: str | None = None) -> str:
        parts = [self._seg(audience_id, "audience id"), "schedules"]
        if schedule_id is not None:
            parts.append(self._seg(schedule_id, "schedule id"))
        return self._audiences_path(space, *parts)

    def _schedule_call(
        self, method: str, space_id: str | None, audience_id: str, schedule_id: str | None = None, **kwargs: Any
    ) -> dict[str, Any]:
        space = self.space(space_id)
        try:
            return self._call(
                method,
                self._schedules_path(space, audience_id, schedule_id),
                version=self.operation_version("schedules"),
                **kwargs,
            )
        except AudienceNotFoundError as exc:
            what = (
                f"schedule {schedule_id!r} of audience {audience_id!r}" if schedule_id else f"audience {audience_id!r}"
            )
            raise self._not_found(exc, space, what) from exc

    def list_audience_schedules(self, audience_id: str, space_id: str | None = None) -> list[dict[str, Any]]:
        """List Audience Schedules: ``GET .../audiences/{id}/schedules``."""
        return list(self._schedule_call("GET", space_id, audience_id).get("audienceSchedules") or [])

    def add_audience_schedule(
        self, audience_id: str, strategy: str, config: dict[str, Any], space_id: str | None = None
    ) -> dict[str, Any]:
        """Add Audience Schedule: ``POST .../audiences/{id}/schedules``.

        :param strategy: ``PERIODIC`` (``config.interval``, e.g. ``"1h"``) or ``SPECIFIC_DAYS``
            (``config.days``, ``config.hours``, ``config.timezone``).
        """
        body = schedule_body(strategy, config)
        return dict(
            self._schedule_call("POST", space_id, audience_id, json_body=body, endpoint_class="write_schedule").get(
                "audienceSchedule"
            )
            or {}
        )

    def get_audience_schedule(self, audience_id: str, schedule_id: str, space_id: str | None = None) -> dict[str, Any]:
        """Get Audience Schedule: ``GET .../audiences/{id}/schedules/{scheduleId}``."""
        return dict(self._schedule_call("GET", space_id, audience_id, schedule_id).get("audienceSchedule") or {})

    def update_audience_schedule(
        self, audience_id: str, schedule_id: str, strategy: str, config: dict[str, Any], space_id: str | None = None
    ) -> dict[str, Any]:
        """Update Audience Schedule: ``PATCH .../audiences/{id}/schedules/{scheduleId}``."""
        body = schedule_body(strategy, config)
        return dict(
            self._schedule_call(
                "PATCH",
                space_id,
                audience_id,
                schedule_id,
                json_body=body,
                endpoint_class="write_schedule",
                idempotent=True,
            ).get("audienceSchedule")
            or {}
        )

    def remove_audience_schedule(self, audience_id: str, schedule_id: str, space_id: str | None = None) -> None:
        """Remove Audience Schedule: ``DELETE .../audiences/{id}/schedules/{scheduleId}``."""
        self._schedule_call("DELETE", space_id, audience_id, schedule_id, endpoint_class="write_schedule")

    # -- status functions (sensor poke, triggers and operator waits) -----------------------

    def audience_summary(self, space: str, audience: dict[str, Any]) -> dict[str, Any]:
        """The small JSON result operators return for an audience: its ids, name, state and links."""
        audience_id = str(audience.get("id"))
        return {
            "audience_id": audience_id,
            "space_id": space,
            "name": audience.get("name"),
            "key": audience.get("key"),
            "enabled": audience.get("enabled"),
            "status": audience.get("status"),
            "url": self.audience_url(space, audience_id),
            "asset_uri": self.audience_asset_uri(space, audience_id),
        }

    def _audience_result(self, space: str, audience: dict[str, Any]) -> dict[str, Any]:
        """:meth:`audience_summary` with the audience's sizes and compute cadence (the status functions' result)."""
        raw_size = audience.get("size")
        size: dict[str, Any] = raw_size if isinstance(raw_size, dict) else {}
        return {
            **self.audience_summary(space, audience),
            "size": size.get("count"),
            "unique_size": size.get("uniqueCount"),
            "compute_cadence": (audience.get("computeCadence") or {}).get("type"),
        }

    def audience_compute_status(
        self,
        audience_id: str,
        space_id: str | None = None,
        changed_at: str | None = None,
        batch_compute_wait: float = DEFAULT_BATCH_COMPUTE_WAIT,
    ) -> PollResult:
        """Whether the audience's latest change has computed, by :data:`SEGMENT_AUDIENCE_STATUS`
        and, for BATCH audiences, the time since the change.

        A status in the done set means computed, except for an edited BATCH audience: Segment
        shows it ``Live`` at once and applies the edit at the next scheduled compute, and the API
        reports neither that schedule nor when a compute ran. Such an audience counts as
        computed only ``batch_compute_wait`` seconds after the change: ``changed_at`` (RFC 3339)
        when given, else the audience's ``updatedAt`` (an audience never edited since its
        creation is judged by its status alone). ``Disabled`` is done at once.
        """
        space = self.space(space_id)
        audience = self.get_audience(audience_id, space)
        status = str(audience.get("status") or "")
        result = self._audience_result(space, audience)
        subject = f"Segment audience {audience.get('name')!r} ({audience_id})"
        if SEGMENT_AUDIENCE_STATUS.phase(status) is Phase.DONE and status.strip().lower() != "disabled":
            due = _batch_edit_due(audience, changed_at, batch_compute_wait)
            if due is not None and time.time() < due:
                result["computed_after"] = datetime.fromtimestamp(due, UTC).isoformat()
                return PollResult(
                    Phase.RUNNING,
                    status,
                    f"{subject} is {status}, but it computes in BATCH and was changed since its creation: Segment "
                    f"applies a change at the next scheduled compute and does not report it, so it counts as "
                    f"computed from {result['computed_after']} (batch_compute_wait {batch_compute_wait:g} s)",
                    result,
                )
        return SEGMENT_AUDIENCE_STATUS.poll_result(
            status,
            result,
            subject=subject,
            done=f"{subject} is {status}; size {result['size']}",
            failed=f"{subject} is {status}; Segment advises contacting its support for failed audiences",
        )

    def audience_edit_status(self, audience_id: str, space_id: str | None = None) -> PollResult:
        """Whether the audience may be edited: done when its status is not in :data:`EDIT_LOCKED_STATUSES`.

        A failed audience may be edited (fixing its definition is the way out), so failure is
        not a failure here.
        """
        space = self.space(space_id)
        audience = self.get_audience(audience_id, space)
        status = str(audience.get("status") or "")
        result = self._audience_result(space, audience)
        if status.strip().lower() in EDIT_LOCKED_STATUSES:
            return PollResult(
                Phase.RUNNING, status, f"Segment audience {audience_id} is {status}: locked for edits", result
            )
        return PollResult(
            Phase.DONE, status, f"Segment audience {audience_id} is {status or 'unknown'}: editable", result
        )

    def audience_preview_status(self, preview_id: str, space_id: str | None = None) -> PollResult:
        """Where a preview stands, by :data:`SEGMENT_PREVIEW_STATUS`; the result carries its size."""
        space = self.space(space_id)
        preview = self.get_audience_preview(preview_id, space)
        status = str(preview.get("status") or "")
        raw_size = preview.get("size")
        size: dict[str, Any] = raw_size if isinstance(raw_size, dict) else {}
        result = {
            "preview_id": preview.get("id", preview_id),
            "space_id": space,
            "status": status,
            "size": size.get("count"),
            "size_type": size.get("type"),
            "audience_type": preview.get("audienceType"),
            "sample_count": len(preview.get("results") or []),
        }
        subject = f"Segment audience preview {preview_id}"
        return SEGMENT_PREVIEW_STATUS.poll_result(
            status,
            result,
            subject=subject,
            done=f"{subject} completed; size {result['size']}",
            failed=f"{subject} failed: {preview.get('failureReason') or 'no reason given'}",
        )

    # -- connection test --------------------------------------------------------------------

    def probe(self) -> str:
        """One cheap read: the default space when the connection names one, else the list of spaces."""
        space = self.default_space_id()
        if space:
            found = self.get_space(space)
            return f"Connected to Segment; space {found.get('name') or space!r} ({space}) is readable"
        spaces = self.list_spaces()
        return f"Connected to Segment; {len(spaces)} Engage space(s) visible"


def _batch_edit_due(audience: dict[str, Any], changed_at: str | None, wait: float) -> float | None:
    """When an edited BATCH audience counts as computed (epoch), or None when its status says it all."""
    if str((audience.get("computeCadence") or {}).get("type") or "").upper() != "BATCH" or wait <= 0:
        return None
    changed = epoch_seconds(changed_at)
    if changed is None:
        updated, created = epoch_seconds(audience.get("updatedAt")), epoch_seconds(audience.get("createdAt"))
        if updated is None or (created is not None and updated <= created + 1.0):
            return None  # never edited: Preparing/Computing came before this Live
        changed = updated
    return changed + wait
