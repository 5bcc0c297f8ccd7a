"""Criteo audience hook: Retail Media and Marketing Solutions audience segments, contact lists, audiences.

Method names follow Criteo's operation names (the official SDK's snake_case ``operationId``), so
Criteo's API reference is the index: ``bulk_create_audience_segments``, ``search_audience_segments``,
``add_remove_contact_list_by_audience_segment``, ``search_audiences``... Marketing Solutions
operations that carry another name in that API have an alias (``create_audience_segments``,
``update_contact_list_by_audience_segment``, ...). One hook serves both APIs; the connection's
``api`` extra picks the paths and body shapes (the two APIs differ in both).

**Authentication**: OAuth2 client credentials (client id = login, secret = password) through
:class:`~airflow_audience_provider.core.auth.OAuth2ClientCredentials`: the token is cached,
refreshed 60 s before its 900 s lifetime runs out (also between the chunks of a long upload) and,
on a 401, minted again once and the request resent (done by the core transport).

**Partial approval**: bulk calls answer 200 with per-item problems in ``warnings``
and/or ``errors``. Every bulk method returns a
:class:`~airflow_audience_provider.domain.criteo.BulkResult` (built by
:func:`~airflow_audience_provider.domain.criteo.map_partial_approval`) that maps each problem to its
input item through ``instance`` (``@data/<index>``); the operators decide whether that fails the
task. A delete refused with ``segment-must-not-be-used-in-audience`` is explained with the
audiences that use the segment.

**Retail Media audiences**: the stable API only searches audiences; create, update, delete and
sizes exist in ``preview`` only, so those methods always call the preview
version. Marketing Solutions offers them in the stable version.

**Computation cycle** (Retail Media docs): Criteo computes audiences at 00:00 and 12:00 UTC; a change takes
about 5 hours more to reach live campaigns.
:func:`~airflow_audience_provider.domain.criteo_cycle.next_computation_window`,
:func:`~airflow_audience_provider.domain.criteo_cycle.live_at` and
:func:`~airflow_audience_provider.domain.criteo_cycle.latest_safe_upload_time` do that arithmetic;
:meth:`CriteoHook.computation_status` is the
status function of the computation-cycle sensor and trigger.
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections.abc import Iterable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar

import requests

from airflow_audience_provider.assets import segment_uri
from airflow_audience_provider.connections import CRITEO
from airflow_audience_provider.core.errors import (
    AudienceConfigurationError,
    AudienceError,
    AudiencePermissionError,
    AudienceValidationError,
)
from airflow_audience_provider.core.hook import AudienceHook, ConnectionSettings
from airflow_audience_provider.core.paging import paginate
from airflow_audience_provider.core.ratelimit import RateLimit, Window
from airflow_audience_provider.core.results import Phase, PollResult
from airflow_audience_provider.core.transport import (
    ErrorInfo,
    JsonStrings,
    VendorProfile,
    call_with_read_back,
    parse_retry_after,
)
from airflow_audience_provider.domain.criteo import (
    BulkResult,
    algebra_segment_ids,
    answer_problems,
    map_partial_approval,
    validate_algebra,
)
from airflow_audience_provider.domain.criteo_cycle import (
    COMPUTATION_HOURS_UTC,
    PROPAGATION_DELAY,
    _as_utc,
    next_computation_window,
)
from airflow_audience_provider.identifiers.rules import list_rules

log = logging.getLogger(__name__)

RETAIL_MEDIA = "retail_media"
MARKETING_SOLUTIONS = "marketing_solutions"
APIS = (RETAIL_MEDIA, MARKETING_SOLUTIONS)
DEFAULT_API_VERSION = "2026-07"
PREVIEW = "preview"

#: Page sizes: RM search ``limit`` 0..500, MS 0..100 (both specs; the defaults disagree, so both are always sent).
MAX_PAGE_SIZE = {RETAIL_MEDIA: 500, MARKETING_SOLUTIONS: 100}

#: Identifier types a Retail Media contact-list segment can be created with (spec RmContactListCreateV1).
RM_SEGMENT_IDENTIFIER_TYPES = ("Email", "UserIdentifier", "IdentityLink", "CustomerId", "PhoneNumber")
#: Amendment identifier types (spec RetailMediaContactlistAmendment); ``Gum`` has no caller id field in RM.
RM_AMENDMENT_IDENTIFIER_TYPES = (*RM_SEGMENT_IDENTIFIER_TYPES, "Gum")


def _rule_names(api: str) -> dict[str, str]:
    """The contact-list engine's identifier kinds -> the name ``api`` uses, from the ``criteo`` rules."""
    names = {}
    for rule in list_rules():
        name = rule.api_identifier_type(api) if rule.vendor == "criteo" else None
        if name:
            names[rule.identifier_type.value] = name
    return names


#: Identifiers per add/remove request: the limit of the ``criteo`` rules.
MAX_IDENTIFIERS_PER_REQUEST = max(r.max_ids_per_chunk or 0 for r in list_rules() if r.vendor == "criteo")
#: Retail Media identifier types (PascalCase) by the contact-list engine's identifier kind (the rules).
RM_IDENTIFIER_TYPES = _rule_names(RETAIL_MEDIA)
#: Marketing Solutions identifier types (lower camel, spec ContactlistAmendment) (the rules).
MS_IDENTIFIER_TYPES = _rule_names(MARKETING_SOLUTIONS)
MS_AMENDMENT_IDENTIFIER_TYPES = ("email", "madid", "identityLink", "gum", "phoneNumber")

#: Entity ``type`` strings (the spec's x-criteo-canonical names; unverified that the server checks them).
SEGMENT_TYPE = {RETAIL_MEDIA: "RetailMediaAudienceSegment", MARKETING_SOLUTIONS: "AudienceSegment"}
AUDIENCE_TYPE = {RETAIL_MEDIA: "RetailMediaAudience", MARKETING_SOLUTIONS: "Audience"}


TOKEN_ERROR_CODES = frozenset({"authorization-token-expired", "authorization-token-invalid"})


# ---------------------------------------------------------------------------------------------
# Error envelope, rate-limit headers
# ---------------------------------------------------------------------------------------------


def parse_criteo_error(response: requests.Response) -> ErrorInfo:
    """Read Criteo's error envelope ``{"errors": [CommonProblem...]}`` or the OAuth ``{"error": ...}``."""
    trace = response.headers.get("x-criteo-trace-id") or response.headers.get("X-Request-Id")
    try:
        body = response.json()
    except ValueError:
        return ErrorInfo(request_id=trace)
    if not isinstance(body, dict):
        return ErrorInfo(request_id=trace)
    problems = body.get("errors") or body.get("warnings")
    if isinstance(problems, list) and problems and isinstance(problems[0], dict):
        first = problems[0]
        message = first.get("detail") or first.get("title")
        info = ErrorInfo(
            message=message,
            code=first.get("code"),
            field=first.get("instance"),
            request_id=first.get("traceId") or first.get("traceIdentifier") or trace,
            details=[{k: p.get(k) for k in ("code", "title", "detail", "instance")} for p in problems],
        )
    elif "error" in body:  # the OAuth2 token endpoint (RFC 6749 §5.2)
        info = ErrorInfo(message=body.get("error_description") or body.get("error"), code=body.get("error"))
    else:
        info = ErrorInfo(message=body.get("message"), request_id=trace)
    if response.status_code == 403:
        # A 403 (API or token endpoint) is about consent or permission, not the secret.
        info.hint = CONSENT_HINT
    return info


#: What a 403 of the API means: missing consent, or a missing permission of the app.
CONSENT_HINT = (
    "Criteo answers 403 when the application may not act on the account or advertiser, not for a wrong "
    "client id or secret (those get 401 invalid_client; the client id and secret are fine): its owner must "
    "grant the application consent (the consent link of the app in "
    "the Criteo Partners Portal), and the app needs the Audience Read/Manage permissions; check also that "
    "the connection's account_id / advertiser_id is the one that consented"
)


def criteo_retry_after(response: requests.Response) -> float | None:
    """Seconds to wait after a 429: ``Retry-After`` if sent, else ``x-ratelimit-reset``.

    The reset header's format is not documented (unverified); epoch seconds, delta seconds and HTTP
    dates are all read.
    """
    wait = parse_retry_after(response.headers.get("Retry-After"))
    if wait is not None:
        return wait
    raw = response.headers.get("x-ratelimit-reset")
    if not raw:
        return None
    try:
        number = float(raw)
    except ValueError:
        return parse_retry_after(raw)  # an HTTP date
    if not math.isfinite(number):
        return None
    return max(0.0, number - time.time()) if number > 1_000_000_000 else max(0.0, number)


# ---------------------------------------------------------------------------------------------
# The hook
# ---------------------------------------------------------------------------------------------


class CriteoHook(AudienceHook):
    """Talk to Criteo's audience APIs (Retail Media or Marketing Solutions).

    :param criteo_conn_id: Airflow connection of type ``criteo`` (:ref:`howto/connection:criteo`).
    """

    spec = CRITEO
    default_host = "https://api.criteo.com"
    profile: ClassVar[VendorProfile] = VendorProfile(
        name="criteo",
        parse_error=parse_criteo_error,
        request_id_headers=("x-criteo-trace-id", "X-Request-Id"),
        retry_after=criteo_retry_after,
        # 250 calls per minute per app, all endpoints together (Criteo's Retail Media rate-limit page).
        rate_limits={"default": RateLimit((Window(250, 60.0, "250 calls per minute per Criteo app"),), max_wait=120)},
    )

    def __init__(self, criteo_conn_id: str = CRITEO.default_conn_name, **kwargs: Any) -> None:
        super().__init__(criteo_conn_id, **kwargs)
        self.criteo_conn_id = criteo_conn_id

    # -- connection ---------------------------------------------------------------------------

    def build_auth(self, settings: ConnectionSettings, session: requests.Session) -> requests.auth.AuthBase:
        client_id = settings.require(settings.login, "client id (login field)")
        secret = settings.require(settings.password, "client secret (password field)")
        token_url = settings.get_extra("token_url") or f"{self.base_url(settings)}/oauth2/token"
        # requests URL-encodes the form, so a secret with '+' stays intact (unencoded: invalid_client).
        # One token per app: hooks, triggers and, through [audience] token_cache, other processes reuse it.
        return self.oauth2_client_credentials(settings, session, token_url, client_id, secret)

    def budget_key(self, settings: ConnectionSettings) -> str:
        # The quota is per Criteo app (client id), whatever the account.
        return f"{self.base_url(settings)}|{settings.login or ''}"

    def extra_headers(self, settings: ConnectionSettings) -> dict[str, str]:
        return {"Accept": "application/json"}

    @property
    def api(self) -> str:
        value = str(self.settings().get_extra("api", RETAIL_MEDIA)).strip().lower().replace("-", "_")
        if value not in APIS:
            raise AudienceConfigurationError(
                f"Airflow connection '{self.criteo_conn_id}': extra 'api' must be one of {APIS}, got {value!r}",
                vendor="criteo",
            )
        return value

    @property
    def api_version(self) -> str:
        return str(self.settings().get_extra("api_version", DEFAULT_API_VERSION)).strip().strip("/")

    @property
    def is_retail_media(self) -> bool:
        return self.api == RETAIL_MEDIA

    def _prefix(self, version: str | None = None) -> str:
        service = "retail-media" if self.is_retail_media else "marketing-solutions"
        return f"/{version or self.api_version}/{service}"

    def account(self, account_id: str | None = None) -> str:
        """The Retail Media account of a call: the argument or the connection's ``account_id``."""
        return self._given_or_extra(account_id, "account_id", "Retail Media account id")

    def advertiser(self, advertiser_id: str | None = None) -> str:
        """The Marketing Solutions advertiser: the argument or the connection's ``advertiser_id``."""
        return self._given_or_extra(advertiser_id, "advertiser_id", "advertiser id")

    def _given_or_extra(self, given: str | None, extra: str, what: str) -> str:
        value = given or self.settings().get_extra(extra)
        if not value:
            raise AudienceConfigurationError(
                f"No Criteo {what}: pass {extra} or set extra '{extra}' of connection '{self.criteo_conn_id}'",
                vendor="criteo",
            )
        return str(value)

    def owner(self, owner_id: str | None = None) -> str:
        """Account (Retail Media) or advertiser (Marketing Solutions) owning segments and audiences."""
        return self.account(owner_id) if self.is_retail_media else self.advertiser(owner_id)

    def _accounts_path(self, account_id: str | None, version: str | None = None) -> str:
        return f"{self._prefix(version)}/accounts/{self.account(account_id)}"

    def _call(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        body = self.transport.json(method, path, **kwargs)
        return body if isinstance(body, dict) else {}

    @staticmethod
    def _path_id(value: Any) -> str:
        text = str(value).strip()
        if not re.fullmatch(r"[0-9A-Za-z_\-]+", text):
            raise AudienceValidationError(f"{text!r} is not a Criteo id", vendor="criteo")
        return text

    # -- links and assets -----------------------------------------------------------------------

    def ui_url(self) -> str:
        return str(self.settings().get_extra("ui_url", "https://app.criteo.com")).rstrip("/")

    def segment_url(self, segment_id: str, owner_id: str | None = None) -> str:
        """Link to the segment in the Criteo UI (URL layout unverified; points at the audience builder)."""
        owner = owner_id or self.settings().get_extra("account_id" if self.is_retail_media else "advertiser_id")
        kind = "retail-media/accounts" if self.is_retail_media else "advertisers"
        return f"{self.ui_url()}/{kind}/{owner}/audiences/segments/{segment_id}"

    def audience_url(self, audience_id: str, owner_id: str | None = None) -> str:
        """Link to the audience in the Criteo UI (URL layout unverified)."""
        owner = owner_id or self.settings().get_extra("account_id" if self.is_retail_media else "advertiser_id")
        kind = "retail-media/accounts" if self.is_retail_media else "advertisers"
        return f"{self.ui_url()}/{kind}/{owner}/audiences/{audience_id}"

    def asset_uri(self, kind: str, object_id: str, owner_id: str | None = None) -> str:
        """``criteo://<account or advertiser>/<segment|audience>/<id>``."""
        owner = owner_id or self.settings().get_extra("account_id" if self.is_retail_media else "advertiser_id")
        return segment_uri("criteo", str(owner or "default"), kind, object_id)

    # -- paging ---------------------------------------------------------------------------------

    def _paged(self, path: str, body: dict[str, Any], page_size: int | None) -> Iterator[dict[str, Any]]:
        """POST search pages with offset/limit until ``meta.totalItems`` (always both: the defaults disagree)."""
        limit = min(int(page_size or MAX_PAGE_SIZE[self.api]), MAX_PAGE_SIZE[self.api])

        def page_at(offset: int) -> tuple[list[dict[str, Any]], int | None]:
            page = self._call("POST", path, params={"offset": offset, "limit": limit}, json=body, idempotent=True)
            data = [r for r in page.get("data") or [] if isinstance(r, dict)]
            total = (page.get("meta") or {}).get("totalItems")
            following = offset + len(data)
            last = not data or (total is not None and following >= int(total)) or (total is None and len(data) < limit)
            return data, None if last else following

        return paginate(page_at, 0, endpoint=f"POST {path}", vendor="criteo")

    # -- segments -------------------------------------------------------------------------------

    def search_audience_segments(
        self,
        *,
        owner_id: str | None = None,
        retailer_ids: Iterable[str] | None = None,
        segment_ids: Iterable[str] | None = None,
        segment_types: Iterable[str] | None = None,
        page_size: int | None = None,
    ) -> list[dict[str, Any]]:
        """Search audience segments, every page: ``POST .../audience-segments/search``.

        :param owner_id: RM account id (path) or MS advertiser id (filter); default from the connection.
        :param retailer_ids: RM only: filter by retailers.
        :param segment_types: ``ContactList``, ``Events`` (RM) or the MS types.
        :returns: segment resources ``{"id", "type", "attributes"}``.
        """
        attributes: dict[str, Any] = {}
        if segment_ids:
            attributes["audienceSegmentIds"] = [str(s) for s in segment_ids]
        if segment_types:
            attributes["audienceSegmentTypes"] = list(segment_types)
        if self.is_retail_media:
            if retailer_ids:
                attributes["retailerIds"] = [str(r) for r in retailer_ids]
            path = f"{self._accounts_path(owner_id)}/audience-segments/search"
        else:
            attributes["advertiserIds"] = [self.advertiser(owner_id)]
            path = f"{self._prefix()}/audience-segments/search"
        body = {"data": {"type": SEGMENT_TYPE[self.api], "attributes": attributes}}
        return list(self._paged(path, body, page_size))

    def get_audience_segment(self, segment_id: str, owner_id: str | None = None) -> dict[str, Any] | None:
        """One segment by id (a search with ``audienceSegmentIds``), or None."""
        found = self.search_audience_segments(owner_id=owner_id, segment_ids=[str(segment_id)])
        return next((s for s in found if str(s.get("id")) == str(segment_id)), None)

    def find_segments_by_name(
        self, name: str, *, owner_id: str | None = None, retailer_id: str | None = None
    ) -> list[dict[str, Any]]:
        """Segments with exactly this name (Criteo has no search by name, so pages are compared here)."""
        found = self.search_audience_segments(
            owner_id=owner_id, retailer_ids=[retailer_id] if retailer_id and self.is_retail_media else None
        )
        return [s for s in found if (s.get("attributes") or {}).get("name") == name]

    def bulk_create_audience_segments(
        self, segments: Sequence[dict[str, Any]], owner_id: str | None = None
    ) -> BulkResult:
        """Create segments: ``POST .../audience-segments/create`` (partial approval).

        :param segments: attribute dicts, e.g. RM ``{"name", "retailerId", "description",
            "contactList": {"identifierType": "Email"}}``; MS ``{"name", "advertiserId", "contactList": {}}``
            (``advertiserId`` defaults to the connection's).
        """
        items: list[dict[str, Any]] = []
        for segment in segments:
            attributes = dict(segment)
            if not self.is_retail_media:
                attributes.setdefault("advertiserId", self.advertiser(owner_id))
            items.append({"type": SEGMENT_TYPE[self.api], "attributes": attributes})
        path = (
            f"{self._accounts_path(owner_id)}/audience-segments/create"
            if self.is_retail_media
            else f"{self._prefix()}/audience-segments/create"
        )
        names = [i["attributes"].get("name") for i in items]

        def send() -> dict[str, Any]:
            return self._call("POST", path, json={"data": items})

        def read_back() -> dict[str, Any] | None:
            # After an ambiguous failure: which of the names exist now? Reuse them, never resend blindly.
            existing = [
                s for s in self.search_audience_segments(owner_id=owner_id) if s["attributes"].get("name") in names
            ]
            if len({s["attributes"]["name"] for s in existing}) == len(set(names)):
                return {"data": existing, "warnings": [], "errors": []}
            return None

        body = call_with_read_back(
            send, read_back, what=f"Creating {len(items)} Criteo segment(s)", transport=self.transport
        )
        return map_partial_approval("create_segments", items, body, match_by="name")

    create_audience_segments = bulk_create_audience_segments

    def bulk_update_audience_segments(
        self, updates: Sequence[dict[str, Any]], owner_id: str | None = None
    ) -> BulkResult:
        """Update segments: ``PATCH .../audience-segments``.

        :param updates: ``{"id": ..., "name": ..., "description": ...}`` dicts; a plain description is
            wrapped as Criteo's ``{"value": ...}`` (on update only; create takes a plain string).
        """
        items = []
        for update in updates:
            attributes = {k: v for k, v in update.items() if k != "id"}
            if "description" in attributes and not isinstance(attributes["description"], dict):
                attributes["description"] = {"value": attributes["description"]}
            items.append({"id": str(update["id"]), "type": SEGMENT_TYPE[self.api], "attributes": attributes})
        path = (
            f"{self._accounts_path(owner_id)}/audience-segments"
            if self.is_retail_media
            else f"{self._prefix()}/audience-segments"
        )
        body = self._call("PATCH", path, json={"data": items}, idempotent=True)  # same values twice: same state
        return map_partial_approval("update_segments", items, body)

    update_audience_segments = bulk_update_audience_segments

    def bulk_delete_audience_segments(
        self, segment_ids: Sequence[str], owner_id: str | None = None, explain: bool = True
    ) -> BulkResult:
        """Delete segments: ``POST .../audience-segments/delete``.

        A segment used in an audience (or that served impressions) is refused with
        ``segment-must-not-be-used-in-audience``; with ``explain`` the problem's detail then names the
        audiences that use it (one audience search).
        """
        items = [{"id": str(s), "type": SEGMENT_TYPE[self.api], "attributes": {}} for s in segment_ids]
        path = (
            f"{self._accounts_path(owner_id)}/audience-segments/delete"
            if self.is_retail_media
            else f"{self._prefix()}/audience-segments/delete"
        )
        # Deleting twice is harmless (segment-not-found the second time), so transient errors are retried.
        body = self._call("POST", path, json={"data": items}, idempotent=True)
        result = map_partial_approval("delete_segments", items, body)
        if explain:
            self._explain_in_use(result, owner_id)
        return result

    delete_audience_segments = bulk_delete_audience_segments

    def _explain_in_use(self, result: BulkResult, owner_id: str | None) -> None:
        in_use = [
            item
            for item in result.failed
            if any(p.get("code") == "segment-must-not-be-used-in-audience" for p in item["problems"])
        ]
        if not in_use:
            return
        try:
            audiences = self.search_audiences(owner_id=owner_id, segment_ids=[i["id"] for i in in_use])
        except AudienceError as exc:  # the explanation is a courtesy; the refusal stands without it
            log.warning("Could not look up the audiences using the undeletable segments: %s", exc)
            return
        for item in in_use:
            users = [
                a
                for a in audiences
                if item["id"] in algebra_segment_ids((a.get("attributes") or {}).get("algebra") or {})
            ]
            item["used_by_audiences"] = [
                {"id": a.get("id"), "name": (a.get("attributes") or {}).get("name")} for a in users
            ]
            names = ", ".join(f"{a['name']} ({a['id']})" for a in item["used_by_audiences"])
            for problem in item["problems"]:
                if problem.get("code") == "segment-must-not-be-used-in-audience":
                    problem["detail"] = (
                        f"{problem.get('detail') or 'The segment is used in an audience'}; used by: "
                        f"{names or 'no audience found: the segment may have served impressions'}. "
                        "Remove it from those audiences (or delete them) first"
                    )

    def compute_audience_segments_sizes(
        self, segment_ids: Sequence[str], channel: str = "Offsite", owner_id: str | None = None
    ) -> list[dict[str, Any]]:
        """Sizes of segments: RM ``preview`` (with ``channel``) or MS ``compute-sizes``."""
        if self.is_retail_media:
            path = f"{self._accounts_path(owner_id, PREVIEW)}/audience-segments/compute-sizes"
            body: dict[str, Any] = {
                "data": {"type": SEGMENT_TYPE[self.api], "attributes": {"ids": list(segment_ids), "channel": channel}}
            }
        else:
            path = f"{self._prefix()}/audience-segments/compute-sizes"
            body = {"data": [{"id": str(s), "type": SEGMENT_TYPE[self.api], "attributes": {}} for s in segment_ids]}
        return list(self._call("POST", path, json=body, idempotent=True).get("data") or [])

    def estimate_audience_segment_size(
        self,
        events: dict[str, Any],
        *,
        retailer_id: str,
        channel: str = "Offsite",
        owner_id: str | None = None,
    ) -> dict[str, Any]:
        """Size of an unsaved events definition (RM preview ``audience-segments/estimate-size``).

        Events segments cannot be created through the API (they are built in
        the retailer UI), but their reach can be estimated before asking for one.

        :param events: e.g. ``{"shopperActivity": "Buy", "lookbackDays": "Last30Days", "categoryIds": ["42"]}``.
        :returns: ``{"size", "relativeSize"}``.
        """
        if not self.is_retail_media:
            raise AudienceConfigurationError(
                "Estimating an events segment exists in the Retail Media API only", vendor="criteo"
            )
        missing = [key for key in ("shopperActivity", "lookbackDays") if not events.get(key)]
        if missing or not retailer_id:
            raise AudienceValidationError(
                "An events estimate needs retailer_id, shopperActivity and lookbackDays; "
                f"missing {missing or ['retailer_id']}",
                vendor="criteo",
            )
        body = {
            "data": {
                "type": "AudienceSegmentSizeEstimation",
                "attributes": {"retailerId": str(retailer_id), "channel": channel, "events": dict(events)},
            }
        }
        path = f"{self._accounts_path(owner_id, PREVIEW)}/audience-segments/estimate-size"
        answer = self._call("POST", path, json=body, idempotent=True)
        return dict((answer.get("data") or {}).get("attributes") or {})

    def _marketing_solutions_only(self, what: str) -> None:
        if self.is_retail_media:
            raise AudienceConfigurationError(
                f"{what} exists in the Marketing Solutions API only (set the connection's extra 'api')",
                vendor="criteo",
            )

    def estimate_audience_segments_sizes(
        self,
        *,
        in_market: dict[str, Any] | None = None,
        location: dict[str, Any] | None = None,
        owner_id: str | None = None,
    ) -> int | None:
        """Size of an unsaved in-market or location segment (MS ``audience-segments/estimate-size``).

        :param in_market: e.g. ``{"country": "FR", "interestIds": ["12"], "gender": "Female"}``.
        :param location: e.g. ``{"pointsOfInterest": [{"latitude": 48.85, "longitude": 2.35}], "radiusInKm": 5}``.
        """
        self._marketing_solutions_only("Estimating a segment's size")
        if (in_market is None) == (location is None):
            raise AudienceValidationError("Give exactly one of in_market or location to estimate", vendor="criteo")
        attributes: dict[str, Any] = {"advertiserId": self.advertiser(owner_id)}
        if in_market is not None:
            if not in_market.get("country"):
                raise AudienceValidationError("in_market needs a country", vendor="criteo", field="country")
            attributes["inMarket"] = dict(in_market)
        else:
            assert location is not None
            if not location.get("pointsOfInterest") or location.get("radiusInKm") is None:
                raise AudienceValidationError(
                    "location needs pointsOfInterest and radiusInKm", vendor="criteo", field="location"
                )
            attributes["location"] = dict(location)
        body = {"data": {"type": "AudienceSegmentSizeEstimation", "attributes": attributes}}
        answer = self._call("POST", f"{self._prefix()}/audience-segments/estimate-size", json=body, idempotent=True)
        return ((answer.get("data") or {}).get("attributes") or {}).get("size")

    def _in_market_lookup(self, kind: str, country: str, owner_id: str | None) -> list[dict[str, Any]]:
        self._marketing_solutions_only(f"In-market {kind}")
        if not country:
            raise AudienceValidationError(f"Looking up in-market {kind} needs a country", vendor="criteo")
        answer = self._call(
            "GET",
            f"{self._prefix()}/audience-segments/in-market-{kind}",
            params={"advertiser-id": self.advertiser(owner_id), "country": country},
        )
        return [
            {"id": item.get("id"), **(item.get("attributes") or {})}
            for item in answer.get("data") or []
            if isinstance(item, dict)
        ]

    def get_audience_segments_in_market_brands(self, country: str, owner_id: str | None = None) -> list[dict[str, Any]]:
        """In-market brands for a country (MS ``audience-segments/in-market-brands``).

        :returns: ``[{"id", "name", "size"}]`` (``name`` and ``size`` may be null).
        """
        return self._in_market_lookup("brands", country, owner_id)

    def get_audience_segments_in_market_interests(
        self, country: str, owner_id: str | None = None
    ) -> list[dict[str, Any]]:
        """In-market interests for a country (MS ``audience-segments/in-market-interests``).

        The interests follow the Google product taxonomy. Criteo's document gives each interest
        an ``id`` and a ``parentId`` only, no name: look names up in the Google product taxonomy
        by id. Other attributes Criteo may add are passed through.

        :returns: ``[{"id", "parentId", ...}]``.
        """
        return self._in_market_lookup("interests", country, owner_id)

    # -- contact lists --------------------------------------------------------------------------

    def vendor_identifier_type(self, identifier_type: str) -> str:
        """The API's name for an identifier kind of the contact-list engine (or an API name as given).

        :raises AudienceValidationError: for a kind this API does not take (e.g. MAIDs on Retail Media).
        """
        value = str(identifier_type)
        if self.is_retail_media:
            if value in RM_AMENDMENT_IDENTIFIER_TYPES:
                return value
            mapped = RM_IDENTIFIER_TYPES.get(value.lower())
            allowed = sorted(set(RM_IDENTIFIER_TYPES) | set(RM_AMENDMENT_IDENTIFIER_TYPES))
        else:
            if value in MS_AMENDMENT_IDENTIFIER_TYPES:
                return value
            mapped = MS_IDENTIFIER_TYPES.get(value.lower())
            allowed = sorted(set(MS_IDENTIFIER_TYPES) | set(MS_AMENDMENT_IDENTIFIER_TYPES))
        if mapped is None:
            raise AudienceValidationError(
                f"Identifier type {value!r} is not accepted by the Criteo {self.api} API; use one of {allowed}",
                vendor="criteo",
            )
        return mapped

    def add_remove_contact_list_by_audience_segment(
        self,
        segment_id: str,
        operation: str,
        identifiers: Sequence[str],
        identifier_type: str,
        gum_caller_id: int | None = None,
    ) -> dict[str, Any]:
        """Add or remove identifiers (RM ``POST .../contact-list/add-remove``, MS ``PATCH .../contact-list``).

        Adding or removing the same identifiers twice leaves the same list, so transient failures are
        retried (nothing is double-counted: the counts come from the answer that succeeded).

        :returns: ``{"contact_list_id", "operation", "request_date", "identifier_type", "valid", "invalid",
            "sample_invalid", "problems"}`` (RM and MS answers normalised; ids as strings: RM ids are int64).
        :raises AudienceValidationError: more than 50,000 identifiers, an unknown operation or type.
        """
        if operation not in ("add", "remove"):
            raise AudienceValidationError(f"operation must be 'add' or 'remove', got {operation!r}", vendor="criteo")
        if len(identifiers) > MAX_IDENTIFIERS_PER_REQUEST:
            raise AudienceValidationError(
                f"{len(identifiers)} identifiers in one Criteo request; at most {MAX_IDENTIFIERS_PER_REQUEST} "
                "are allowed: split them (the upload operator chunks for you)",
                vendor="criteo",
            )
        vendor_type = self.vendor_identifier_type(identifier_type)
        attributes: dict[str, Any] = {
            "operation": operation,
            "identifierType": vendor_type,
            # JsonStrings (digests of a chunk) go into the body as written; anything else is copied.
            "identifiers": identifiers if isinstance(identifiers, JsonStrings) else list(identifiers),
        }
        sid = self._path_id(segment_id)
        if self.is_retail_media:
            body = {"data": {"type": "AddRemoveContactlist", "attributes": attributes}}
            answer = self._call(
                "POST", f"{self._prefix()}/audience-segments/{sid}/contact-list/add-remove", json=body, idempotent=True
            )
            data = answer.get("data") or {}  # RM: fields directly in data (MS: data.attributes)
        else:
            if vendor_type == "gum":
                if gum_caller_id is None:
                    raise AudienceValidationError("identifier type 'gum' needs gum_caller_id", vendor="criteo")
                attributes["gumCallerId"] = int(gum_caller_id)
            body = {"data": {"type": "ContactlistAmendment", "attributes": attributes}}
            answer = self._call(
                "PATCH", f"{self._prefix()}/audience-segments/{sid}/contact-list", json=body, idempotent=True
            )
            data = (answer.get("data") or {}).get("attributes") or {}
        problems = answer_problems(answer)
        valid = data.get("nbValidIdentifiers")
        invalid = data.get("nbInvalidIdentifiers")
        if any(p["severity"] == "error" for p in problems) and valid is None:
            raise AudienceValidationError(
                f"Criteo refused the contact-list {operation} of segment {segment_id}: "
                + "; ".join(f"{p['code']}: {p['detail'] or p['title'] or ''}" for p in problems),
                vendor="criteo",
                code=problems[0]["code"],
            )
        return {
            "contact_list_id": None if data.get("contactListId") is None else str(data.get("contactListId")),
            "operation": data.get("operation", operation),
            "request_date": data.get("requestDate"),
            "identifier_type": data.get("identifierType", vendor_type),
            # No count in the answer: assume all were accepted (Criteo only validates the format).
            "valid": int(valid) if valid is not None else len(identifiers),
            "invalid": int(invalid or 0),
            "sample_invalid_count": len(data.get("sampleInvalidIdentifiers") or []),
            "problems": problems,
        }

    #: Marketing Solutions name of :meth:`add_remove_contact_list_by_audience_segment` (the same method).
    update_contact_list_by_audience_segment = add_remove_contact_list_by_audience_segment

    def clear_contact_list_by_audience_segment(self, segment_id: str) -> None:
        """Remove every identifier (the segment stays): RM ``POST .../contact-list/clear``, MS ``DELETE``.

        Any 2xx counts (spec 204, docs 201, MS 200). Clearing twice is harmless: retried.
        """
        sid = self._path_id(segment_id)
        if self.is_retail_media:
            self.transport.request(
                "POST", f"{self._prefix()}/audience-segments/{sid}/contact-list/clear", idempotent=True
            )
        else:
            self.transport.request("DELETE", f"{self._prefix()}/audience-segments/{sid}/contact-list")

    delete_contact_list_by_audience_segment = clear_contact_list_by_audience_segment

    def get_audience_segment_contact_list_statistics(
        self, segment_id: str, owner_id: str | None = None
    ) -> dict[str, Any]:
        """Contact-list statistics: ``numberOfIdentifiers``, ``numberOfMatches``, ``matchRate``.

        RM ``GET /accounts/{account}/audience-segments/{id}/contact-list``; MS ``GET
        /audience-segments/{id}/contact-list/statistics`` (no account, a ``/statistics`` suffix).
        ``matchRate`` is returned as Criteo gives it (0-1 or percent is unverified).
        """
        sid = self._path_id(segment_id)
        if self.is_retail_media:
            path = f"{self._accounts_path(owner_id)}/audience-segments/{sid}/contact-list"
        else:
            path = f"{self._prefix()}/audience-segments/{sid}/contact-list/statistics"
        attributes = ((self._call("GET", path).get("data") or {}).get("attributes")) or {}
        return {
            "segment_id": str(segment_id),
            "number_of_identifiers": attributes.get("numberOfIdentifiers"),
            "number_of_matches": attributes.get("numberOfMatches"),
            "match_rate": attributes.get("matchRate"),
        }

    # -- audiences ------------------------------------------------------------------------------

    def _audiences_path(self, owner_id: str | None, action: str = "", *, write: bool = False) -> str:
        if self.is_retail_media:
            # Stable RM offers only search; every write goes to preview.
            version = PREVIEW if write else None
            return f"{self._accounts_path(owner_id, version)}/audiences{action}"
        return f"{self._prefix()}/audiences{action}"

    def search_audiences(
        self,
        *,
        owner_id: str | None = None,
        audience_ids: Iterable[str] | None = None,
        segment_ids: Iterable[str] | None = None,
        retailer_ids: Iterable[str] | None = None,
        ad_set_ids: Iterable[str] | None = None,
        page_size: int | None = None,
    ) -> list[dict[str, Any]]:
        """Search audiences, every page: ``POST .../audiences/search``."""
        attributes: dict[str, Any] = {}
        if audience_ids:
            attributes["audienceIds"] = [str(a) for a in audience_ids]
        if segment_ids:
            attributes["audienceSegmentIds"] = [str(s) for s in segment_ids]
        if self.is_retail_media:
            if retailer_ids:
                attributes["retailerIds"] = [str(r) for r in retailer_ids]
        else:
            attributes["advertiserIds"] = [self.advertiser(owner_id)]
            if ad_set_ids:
                attributes["adSetIds"] = [str(a) for a in ad_set_ids]
        body = {"data": {"type": AUDIENCE_TYPE[self.api], "attributes": attributes}}
        return list(self._paged(self._audiences_path(owner_id, "/search"), body, page_size))

    def find_audiences_by_name(self, name: str, *, owner_id: str | None = None) -> list[dict[str, Any]]:
        return [a for a in self.search_audiences(owner_id=owner_id) if (a.get("attributes") or {}).get("name") == name]

    def bulk_create_audience(self, audiences: Sequence[dict[str, Any]], owner_id: str | None = None) -> BulkResult:
        """Create audiences (RM preview / MS ``POST .../audiences/create``); algebras are validated first.

        :param audiences: ``{"name", "algebra", "description", "retailerId" (RM)}`` dicts.
        """
        items: list[dict[str, Any]] = []
        for audience in audiences:
            attributes = dict(audience)
            attributes["algebra"] = validate_algebra(attributes.get("algebra"))
            if not self.is_retail_media:
                attributes.setdefault("advertiserId", self.advertiser(owner_id))
            items.append({"type": AUDIENCE_TYPE[self.api], "attributes": attributes})
        names = [i["attributes"].get("name") for i in items]
        path = self._audiences_path(owner_id, "/create", write=True)

        def read_back() -> dict[str, Any] | None:
            existing = [a for a in self.search_audiences(owner_id=owner_id) if a["attributes"].get("name") in names]
            if len({a["attributes"]["name"] for a in existing}) == len(set(names)):
                return {"data": existing}
            return None

        body = call_with_read_back(
            lambda: self._call("POST", path, json={"data": items}),
            read_back,
            what="Creating Criteo audience(s)",
            transport=self.transport,
        )
        return map_partial_approval("create_audiences", items, body, match_by="name")

    create_audiences = bulk_create_audience

    def bulk_update_audience(self, updates: Sequence[dict[str, Any]], owner_id: str | None = None) -> BulkResult:
        """Update audiences (``PATCH .../audiences``): ``{"id", "name", "description", "algebra"}`` dicts."""
        items = []
        for update in updates:
            attributes = {k: v for k, v in update.items() if k != "id"}
            if "algebra" in attributes:
                attributes["algebra"] = validate_algebra(attributes["algebra"])
            if "description" in attributes and not isinstance(attributes["description"], dict):
                attributes["description"] = {"value": attributes["description"]}
            items.append({"id": str(update["id"]), "type": AUDIENCE_TYPE[self.api], "attributes": attributes})
        body = self._call("PATCH", self._audiences_path(owner_id, write=True), json={"data": items}, idempotent=True)
        return map_partial_approval("update_audiences", items, body)

    update_audiences = bulk_update_audience

    def bulk_delete_audiences(self, audience_ids: Sequence[str], owner_id: str | None = None) -> BulkResult:
        """Delete audiences (``POST .../audiences/delete``; 200 with ids, or 204)."""
        items = [{"id": str(a), "type": AUDIENCE_TYPE[self.api], "attributes": {}} for a in audience_ids]
        body = self._call(
            "POST", self._audiences_path(owner_id, "/delete", write=True), json={"data": items}, idempotent=True
        )
        if not body:  # 204: everything deleted
            body = {"data": [{"id": i["id"]} for i in items]}
        return map_partial_approval("delete_audiences", items, body)

    delete_audiences = bulk_delete_audiences

    def compute_audiences_sizes(
        self, audience_ids: Sequence[str], channel: str = "Offsite", owner_id: str | None = None
    ) -> list[dict[str, Any]]:
        """Sizes of audiences: RM preview (``channel``) or MS ``compute-sizes``."""
        if self.is_retail_media:
            body: dict[str, Any] = {
                "data": {"type": AUDIENCE_TYPE[self.api], "attributes": {"ids": list(audience_ids), "channel": channel}}
            }
        else:
            body = {"data": [{"id": str(a), "type": AUDIENCE_TYPE[self.api], "attributes": {}} for a in audience_ids]}
        path = self._audiences_path(owner_id, "/compute-sizes", write=True)
        return list(self._call("POST", path, json=body, idempotent=True).get("data") or [])

    def estimate_audience_size(
        self,
        algebra: dict[str, Any],
        *,
        retailer_id: str | None = None,
        channel: str = "Offsite",
        owner_id: str | None = None,
    ) -> dict[str, Any]:
        """Size of an unsaved algebra (RM preview ``estimate-size`` / MS ``estimate-size``)."""
        attributes: dict[str, Any] = {"algebra": validate_algebra(algebra)}
        if self.is_retail_media:
            if not retailer_id:
                raise AudienceValidationError(
                    "retailer_id is needed to estimate a Retail Media audience", vendor="criteo"
                )
            attributes.update(retailerId=str(retailer_id), channel=channel)
        else:
            attributes["advertiserId"] = self.advertiser(owner_id)
        body = {"data": {"type": AUDIENCE_TYPE[self.api], "attributes": attributes}}
        path = self._audiences_path(owner_id, "/estimate-size", write=True)
        return dict((self._call("POST", path, json=body, idempotent=True).get("data") or {}).get("attributes") or {})

    estimate_audiences_sizes = estimate_audience_size

    # -- line items (RM) and ad sets (MS) -------------------------------------------------------

    def _line_item_path(self, line_item_id: str, action: str = "") -> str:
        if not self.is_retail_media:
            raise AudienceConfigurationError("Line items exist in the Retail Media API only", vendor="criteo")
        return f"{self._prefix()}/preferred-line-items/{self._path_id(line_item_id)}/targeting/audiences{action}"

    @staticmethod
    def _targets(answer: dict[str, Any]) -> dict[str, Any]:
        attributes = (answer.get("data") or {}).get("attributes") or {}
        return {"scope": attributes.get("scope"), "audience_ids": [str(a) for a in attributes.get("audienceIds") or []]}

    def get_audience_targets_by_line_item_id(self, line_item_id: str) -> dict[str, Any]:
        """Audiences a preferred line item targets: ``{"scope", "audience_ids"}``."""
        return self._targets(self._call("GET", self._line_item_path(line_item_id)))

    def put_audience_targets_by_line_item_id(
        self, line_item_id: str, audience_ids: Sequence[str], scope: str = "include"
    ) -> dict[str, Any]:
        """Replace a line item's audience targeting (``scope`` include or exclude)."""
        body = {"data": {"type": "AudienceTarget", "attributes": {"scope": scope, "audienceIds": list(audience_ids)}}}
        return self._targets(self._call("PUT", self._line_item_path(line_item_id), json=body))

    def append_audience_targets_by_line_item_id(self, line_item_id: str, audience_ids: Sequence[str]) -> dict[str, Any]:
        """Attach audiences to a line item."""
        body = {"data": {"type": "AudienceTarget", "attributes": {"audienceIds": list(audience_ids)}}}
        return self._targets(
            self._call("POST", self._line_item_path(line_item_id, "/append"), json=body, idempotent=True)
        )

    def delete_audience_targets_by_line_item_id(self, line_item_id: str, audience_ids: Sequence[str]) -> dict[str, Any]:
        """Detach audiences from a line item."""
        body = {"data": {"type": "AudienceTarget", "attributes": {"audienceIds": list(audience_ids)}}}
        return self._targets(
            self._call("POST", self._line_item_path(line_item_id, "/delete"), json=body, idempotent=True)
        )

    def update_ad_set_audience(self, ad_set_id: str, audience_id: str) -> dict[str, Any]:
        """Marketing Solutions: link an audience to an ad set (``PUT /ad-sets/{id}/audience``)."""
        if self.is_retail_media:
            raise AudienceConfigurationError("Ad sets exist in the Marketing Solutions API only", vendor="criteo")
        body = {"data": {"type": "AdSetAudienceLink", "attributes": {"audienceId": str(audience_id)}}}
        answer = self._call("PUT", f"{self._prefix()}/ad-sets/{self._path_id(ad_set_id)}/audience", json=body)
        return dict(answer.get("data") or {})

    # -- waiting for the computation cycle -------------------------------------------------------

    def computation_status(
        self,
        uploaded_at: str,
        hours_utc: Sequence[float] = COMPUTATION_HOURS_UTC,
        interval_seconds: float | None = None,
        propagation_delay_seconds: float = PROPAGATION_DELAY.total_seconds(),
        segment_id: str | None = None,
        owner_id: str | None = None,
        min_identifiers: int | None = None,
    ) -> PollResult:
        """Whether changes uploaded by ``uploaded_at`` are live: time-based, optionally confirmed by stats.

        Live = the first computation window at or after ``uploaded_at`` plus the propagation delay
        (about 5 hours). With ``segment_id`` and ``min_identifiers``, the segment's contact-list statistics
        must also report at least that many identifiers (a confirmation Criteo does not document;
        statistics may lag, so this only adds a condition after the time has come).
        """
        window = next_computation_window(uploaded_at, hours_utc=hours_utc, interval_seconds=interval_seconds)
        live = window + timedelta(seconds=float(propagation_delay_seconds))
        data: dict[str, Any] = {
            "uploaded_at": _as_utc(uploaded_at).isoformat(),
            "computation_window": window.isoformat(),
            "live_at": live.isoformat(),
            "segment_id": segment_id,
        }
        now = datetime.now(UTC)
        if now < live:
            remaining = (live - now).total_seconds()
            return PollResult(
                Phase.RUNNING,
                "waiting_for_window" if now < window else "propagating",
                f"Criteo computes at {window.isoformat()}; live at {live.isoformat()} ({remaining:.0f} s left)",
                data,
            )
        if segment_id and min_identifiers is not None:
            stats = self.get_audience_segment_contact_list_statistics(segment_id, owner_id)
            data["statistics"] = stats
            count = stats.get("number_of_identifiers") or 0
            if count < int(min_identifiers):
                return PollResult(
                    Phase.RUNNING,
                    "statistics_pending",
                    f"Segment {segment_id} reports {count} identifiers, waiting for at least {min_identifiers}",
                    data,
                )
        return PollResult(
            Phase.DONE, "live", f"Changes uploaded at {data['uploaded_at']} are live since {data['live_at']}", data
        )

    # -- connection test ------------------------------------------------------------------------

    def probe(self) -> str:
        """``GET /{version}/{api}/me`` (a valid token, no scope needed), then the configured
        account or advertiser: a token alone does not say that the app may use it.

        * Retail Media with ``account_id``: a one-item segment search in the account (needs the
          account's consent and the Audience Read permission, as every call of the provider does).
        * Marketing Solutions with ``advertiser_id``: ``GET /{version}/advertisers/me`` (the
          advertisers that consented to the app) must list it.
        """
        answer = self._call("GET", f"{self._prefix()}/me")
        attributes = (answer.get("data") or {}).get("attributes") or {}
        app = attributes.get("name") or attributes.get("applicationId") or "?"
        message = f"Connected to Criteo {self.api} {self.api_version} as application {app}"
        settings = self.settings()
        if self.is_retail_media:
            account = settings.get_extra("account_id")
            if not account:
                return message + "; no account_id is configured, so no account was checked"
            path = f"{self._accounts_path(str(account))}/audience-segments/search"
            body = {"data": {"type": SEGMENT_TYPE[self.api], "attributes": {}}}
            self._call("POST", path, params={"offset": 0, "limit": 1}, json=body, idempotent=True)
            return message + f"; account {account} is reachable"
        advertiser = settings.get_extra("advertiser_id")
        if not advertiser:
            return message + "; no advertiser_id is configured, so no advertiser was checked"
        portfolio = self._call("GET", f"/{self.api_version}/advertisers/me")
        ids = [str(a.get("id")) for a in portfolio.get("data") or [] if isinstance(a, dict)]
        if str(advertiser) not in ids:
            raise AudiencePermissionError(
                f"Criteo advertiser {advertiser} (extra 'advertiser_id' of connection '{self.criteo_conn_id}') is "
                f"not among the advertisers that consented to application {app} ({', '.join(ids) or 'none'}); "
                + CONSENT_HINT,
                vendor="criteo",
                status=403,
            )
        return message + f"; advertiser {advertiser} is reachable"
