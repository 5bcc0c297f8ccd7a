"""Yandex Direct API v5 hook: retargeting lists and audience targets built on Yandex.Audience segments.

Method names follow Direct's service and method names (``RetargetingLists.add`` is
:meth:`YandexDirectHook.add_retargeting_lists`, ``AudienceTargets.setBids`` is
:meth:`YandexDirectHook.set_bids_audience_targets`, the v4 Live ``GetRetargetingGoals`` is
:meth:`YandexDirectHook.get_retargeting_goals`), so Direct's reference is the index.

The protocol, once, in :meth:`YandexDirectHook.call` (Direct API v5 reference, yandex.ru/dev/direct):

* every call is ``POST /json/v5/<service>`` with ``{"method": ..., "params": ...}``;
* request-level errors come back **with HTTP 200** as ``{"error": {"error_code", "error_string",
  "error_detail", "request_id"}}``; :func:`direct_body_error` turns them into typed errors and marks
  the transient ones (52, 506, 1000-1002) for the shared transport's retries. Authentication and
  permission errors are never retried. A write (anything but ``get``) is resent by the transport only
  when Direct surely refused it (506, too many concurrent requests); other ambiguous failures of a
  write are reconciled by reading back first (:func:`~airflow_audience_provider.core.transport.call_with_read_back`);
* write methods answer one ``ActionResult`` per input item, in input order:
  :func:`~airflow_audience_provider.domain.yandex_direct.item_results` maps them back to the
  inputs (``Id``, ``Warnings``, ``Errors``), the caller decides fail or warn;
* ``get`` is paged transparently (``Page.Limit``/``Offset``, continue at ``LimitedBy``); an empty
  answer is ``{"result": {}}``;
* the ``Units`` header (``spent/remaining/daily limit``) and ``RequestId`` of every answer, errors
  included, are recorded (:attr:`YandexDirectHook.units`, ``units_spent``);
  a call whose estimated price would dip below the remaining points (minus the connection's
  ``units_reserve``) is not sent: :class:`YandexDirectUnitsError` says how many points are left.

**From an Audience segment to a goal id** (UNVERIFIED mapping: Direct's docs only say to take the
ids from ``GetRetargetingGoals``): the ids usable in rules come from ``GetRetargetingGoals`` (v4
Live). This hook never assumes that an Audience segment id is a goal id, nor that the ``Type`` of an
Audience goal says "audience". A segment named by *name* is the listed item with that name. A
segment given by *id* is the listed goal numbered ``audience_goal_id_offset + segment id``
(connection extra, default 2 000 000 000, our assumption about Direct's numbering), else an item
field naming the segment id, else a non-Metrica goal numbered with the id itself, else its name when
given along. An explicit ``{"goal_id": ...}`` bypasses all that. In every case the goal must be
listed by Direct (the segment is ``processed`` and owned by or granted to the Direct login),
otherwise a clear :class:`YandexDirectGoalNotFoundError` (not retried by Airflow) names what is
missing and lists what Direct does list; :meth:`YandexDirectHook.audience_goals_status` is the
status function of the wait until Direct lists a fresh segment.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar
from urllib.parse import quote, urlsplit

import requests

from airflow_audience_provider.connections import YANDEX_DIRECT
from airflow_audience_provider.core.auth import TokenHeaderAuth
from airflow_audience_provider.core.errors import (
    AudienceAuthenticationError,
    AudienceConfigurationError,
    AudienceError,
    AudienceNonRetryableError,
    AudienceNotFoundError,
    AudiencePermissionError,
    AudienceRateLimitError,
    AudienceServerError,
    AudienceValidationError,
)
from airflow_audience_provider.core.hook import AudienceHook, ConnectionSettings
from airflow_audience_provider.core.paging import paginate
from airflow_audience_provider.core.results import Phase, PollResult
from airflow_audience_provider.core.transport import ErrorInfo, VendorProfile
from airflow_audience_provider.domain.yandex_direct import item_results, validate_rules

log = logging.getLogger(__name__)

VENDOR = "yandex_direct"
PRODUCTION_HOST = "https://api.direct.yandex.com"
SANDBOX_HOST = "https://api-sandbox.direct.yandex.com"
LIVE4_PATH = "/live/v4/json/"

STRATEGY_PRIORITIES = ("LOW", "NORMAL", "HIGH")
#: The Crypta catalogues of ``Dictionaries.get`` used by ``AUDIENCE`` lists and interest targets.
AUDIENCE_DICTIONARIES = ("AudienceInterests", "AudienceDemographicProfiles", "AudienceCriteriaTypes")
#: Items per call (Direct's documented per-call limits); suspend/resume are UNVERIFIED and use the delete limit.
BATCH = {
    ("retargetinglists", "add"): 1000,
    ("retargetinglists", "update"): 1000,
    ("retargetinglists", "delete"): 1000,
    ("audiencetargets", "add"): 1000,
    ("audiencetargets", "delete"): 10000,
    ("audiencetargets", "suspend"): 10000,
    ("audiencetargets", "resume"): 10000,
}
PAGE_LIMIT = 10000
#: AudienceTargets.get filter sizes (documented limits).
TARGET_FILTER_LIMITS = {"Ids": 10000, "AdGroupIds": 1000, "CampaignIds": 100, "RetargetingListIds": 1000}

RETARGETING_LIST_FIELDS = (
    "Id",
    "Name",
    "Type",
    "Description",
    "Rules",
    "IsAvailable",
    "Scope",
    "AvailableForTargetsInAdGroupTypes",
)
AUDIENCE_TARGET_FIELDS = (
    "Id",
    "AdGroupId",
    "CampaignId",
    "RetargetingListId",
    "InterestId",
    "ContextBid",
    "StrategyPriority",
    "State",
)

#: Request-level codes Direct's error list marks transient: OAuth server down, too many concurrent
#: requests, internal errors. 152 (out of points) is not retried in the task: points come back hourly.
TRANSIENT_CODES = frozenset({52, 506, 1000, 1001, 1002})
_CLASS_BY_CODE: dict[int, type[AudienceError]] = {
    53: AudienceAuthenticationError,
    54: AudiencePermissionError,
    55: AudienceValidationError,
    58: AudiencePermissionError,
    71: AudienceConfigurationError,  # v4 Live: a required parameter is missing (agency without Logins)
    513: AudiencePermissionError,
    3000: AudiencePermissionError,
    3001: AudiencePermissionError,
    3500: AudienceValidationError,
    3600: AudiencePermissionError,
    4000: AudienceValidationError,
    4001: AudienceValidationError,
    4002: AudienceValidationError,
    4003: AudienceValidationError,
    4004: AudienceValidationError,
    4005: AudienceValidationError,
    4006: AudienceValidationError,
    8000: AudienceValidationError,
    8800: AudienceNotFoundError,
    9300: AudienceValidationError,
    9301: AudienceValidationError,
}


class YandexDirectGoalNotFoundError(AudienceNotFoundError, AudienceNonRetryableError):
    """Direct lists no goal for a Yandex.Audience segment or Metrica goal named in the rules.

    Not retried by Airflow: Direct lists a segment as soon as Audience reports it ``processed`` and it
    is owned by or granted to the Direct login (Direct help), so a missing one is a wrong id or name, or a
    missing grant; wait for processing with the Audience sensor before this task instead.
    """


class YandexDirectUnitsError(AudienceRateLimitError):
    """Direct's points ("units") are used up (error 152), or too few are left for the next call.

    Points come back hourly; a task retry an hour later can succeed, so this is not a
    non-retryable error. ``units`` carries the last ``Units`` header seen, if any.
    """

    def __init__(self, message: str, *, units: Units | None = None, **kwargs: Any) -> None:
        self.units = units
        kwargs.setdefault("vendor", VENDOR)
        if kwargs.get("retry_after") is None:  # the transport passes None: Direct sends no wait hint
            kwargs["retry_after"] = 3600.0
        super().__init__(message, **kwargs)


@dataclass(frozen=True)
class Units:
    """One ``Units`` header: points spent by the call, remaining, and the daily limit."""

    spent: int
    remaining: int
    daily_limit: int

    @classmethod
    def parse(cls, value: str | None) -> Units | None:
        """``"12/151407/168000"`` -> Units; a missing or malformed header is unknown (None), not zero."""
        if not value:
            return None
        parts = value.strip().split("/")
        if len(parts) != 3:
            return None
        try:
            spent, remaining, limit = (int(p.strip()) for p in parts)
        except ValueError:
            return None
        return cls(spent, remaining, limit)

    def to_dict(self) -> dict[str, int]:
        return {"spent": self.spent, "remaining": self.remaining, "daily_limit": self.daily_limit}


def estimate_units(service: str, method: str, items: int = 1) -> int:
    """A floor for the price of a call, used only to stop before a call Direct would refuse (152).

    From prices observed in recorded traffic (UNVERIFIED: Direct's price list for these services was
    not found): ``get`` 2, a write 10 + 2 per object; failed items cost more, so the estimate can
    only be too low, never block a call that would pass.
    """
    if method in ("get", "GetRetargetingGoals"):
        return 2
    return 10 + 2 * max(1, items)


# -- errors --------------------------------------------------------------------------------


def _loads(response: requests.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


def _error_info(code: Any, text: Any, detail: Any, request_id: Any) -> ErrorInfo:
    try:
        number = int(code)
    except (TypeError, ValueError):
        number = None
    message = " - ".join(str(p) for p in (text, detail) if p) or "error"
    if number == 8000 and "client-login" in message.lower():
        message += " (agency tokens must name the client: set 'client_login' in the connection or the task)"
    if number == 152:
        message += " (Direct points are used up; they come back hourly, see the Units header)"
    cls: type[AudienceError] | None
    if number == 152:
        cls = YandexDirectUnitsError
    elif number == 506:
        # Refused before execution: safe to resend, writes included (the transport does so for rate limits).
        cls = AudienceRateLimitError
    elif number is not None and number in TRANSIENT_CODES:
        cls = AudienceServerError
    else:
        cls = _CLASS_BY_CODE.get(number or -1, AudienceError)
    return ErrorInfo(
        message=message,
        code=str(number) if number is not None else (str(code) if code else None),
        request_id=str(request_id) if request_id else None,
        error_class=cls,
        retryable=number in TRANSIENT_CODES if number is not None else None,
        details={"error_code": number, "error_string": text, "error_detail": detail},
    )


def direct_body_error(response: requests.Response) -> ErrorInfo | None:
    """The error inside an HTTP 200 answer: v5 ``{"error": {...}}`` or v4 Live top-level ``error_code``."""
    body = _loads(response)
    if not isinstance(body, dict):
        return None
    error = body.get("error")
    if isinstance(error, dict):
        return _error_info(
            error.get("error_code"),
            error.get("error_string"),
            error.get("error_detail"),
            error.get("request_id") or response.headers.get("RequestId"),
        )
    if "error_code" in body:  # v4 Live: error_str, not error_string
        return _error_info(
            body.get("error_code"),
            body.get("error_str"),
            body.get("error_detail"),
            response.headers.get("RequestId"),
        )
    return None


def parse_direct_error(response: requests.Response) -> ErrorInfo:
    """Non-2xx answers: the same envelopes if present; gateway HTML/empty bodies leave it to the status."""
    info = direct_body_error(response)
    if info is None:
        return ErrorInfo(request_id=response.headers.get("RequestId"))
    if response.status_code >= 500:
        info.error_class = None  # a gateway 5xx: judged by status (retried for reads)
        info.retryable = None
    return info


# -- the hook ------------------------------------------------------------------------------


class YandexDirectHook(AudienceHook):
    """Talk to the Yandex Direct API v5 (RetargetingLists, AudienceTargets) and v4 Live goals.

    :param yandex_direct_conn_id: Airflow connection of type ``yandex_direct``
        (:ref:`howto/connection:yandex_direct`).
    :param client_login: advertiser login for the ``Client-Login`` header, overriding the connection's.
    """

    spec = YANDEX_DIRECT
    default_host = PRODUCTION_HOST
    profile: ClassVar[VendorProfile] = VendorProfile(
        name=VENDOR,
        parse_error=parse_direct_error,
        request_id_headers=("RequestId",),
        body_error=direct_body_error,
        # No client-side windows: Direct meters points (Units header, checked before each call) and
        # concurrency (5 per advertiser, answered with 506 and retried); use an Airflow pool for the latter.
        rate_limits={},
    )

    def __init__(
        self,
        yandex_direct_conn_id: str = YANDEX_DIRECT.default_conn_name,
        *,
        client_login: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(yandex_direct_conn_id, **kwargs)
        self.yandex_direct_conn_id = yandex_direct_conn_id
        self._client_login_override = client_login or None
        #: the last ``Units`` header seen, and the points spent by this hook (one task) in total
        self.units: Units | None = None
        self.units_spent = 0
        self.calls = 0
        self.last_request_id: str | None = None
        self._units_lock = threading.Lock()

    # -- connection -------------------------------------------------------------------------

    def base_url(self, settings: ConnectionSettings) -> str:
        if not settings.host and _flag(settings.get_extra("sandbox")):
            settings = dataclasses.replace(settings, host=SANDBOX_HOST)
        return super().base_url(settings)

    def build_auth(self, settings: ConnectionSettings, session: requests.Session) -> requests.auth.AuthBase:
        token = settings.require(settings.password, "OAuth token (password field)")
        for prefix in ("bearer ", "oauth "):
            if token.lower().startswith(prefix):
                token = token[len(prefix) :]  # Direct v5 wants exactly "Bearer <token>"
        return TokenHeaderAuth(token.strip(), scheme="Bearer")

    def budget_key(self, settings: ConnectionSettings) -> str:
        return f"{self.base_url(settings)}|{self.client_login or ''}"

    @property
    def client_login(self) -> str | None:
        value = self._client_login_override or self.settings().get_extra("client_login")
        return str(value).strip() or None if value else None

    def extra_headers(self, settings: ConnectionSettings) -> dict[str, str]:
        if _flag(settings.get_extra("is_agency")) and not (
            self._client_login_override or settings.get_extra("client_login")
        ):
            raise AudienceConfigurationError(
                f"Airflow connection '{settings.conn_id}' is an agency token but names no client: set the "
                "extra 'client_login' or the task's client_login (Direct would refuse with error 8000)",
                vendor=VENDOR,
            )
        headers = {
            "Content-Type": "application/json; charset=utf-8",
            "Accept-Language": str(settings.get_extra("accept_language", "en")),
        }
        login = self._client_login_override or settings.get_extra("client_login")
        if login:
            headers["Client-Login"] = str(login).strip()
        if _flag(settings.get_extra("use_operator_units")):
            headers["Use-Operator-Units"] = "true"
        return headers

    @property
    def api_version(self) -> str:
        return str(self.settings().get_extra("api_version", "v5"))

    def observe_response(self, response: requests.Response, endpoint_class: str) -> None:
        """Record ``Units`` and ``RequestId`` of every answer (errors included) and log the price.

        ``endpoint_class`` is the call (``service.method``) that was answered. The log line uses
        only this answer's values, so calls of one hook on several threads are reported apart.
        """
        request_id = response.headers.get("RequestId")
        units = Units.parse(response.headers.get("Units"))
        with self._units_lock:
            self.calls += 1
            self.last_request_id = request_id or self.last_request_id
            if units is not None:
                self.units = units
                self.units_spent += units.spent
        if units is None:
            log.info("Yandex Direct %s: no Units header [RequestId=%s]", endpoint_class, request_id)
            return
        log.info(
            "Yandex Direct %s: %d units spent, %d of %d left [RequestId=%s, units used by %s]",
            endpoint_class,
            units.spent,
            units.remaining,
            units.daily_limit,
            request_id,
            response.headers.get("Units-Used-Login") or "?",
        )

    def units_report(self) -> dict[str, Any]:
        """What this hook spent, for logs and XCom: ``{"spent", "remaining", "daily_limit", "calls"}``."""
        report: dict[str, Any] = {"spent": self.units_spent, "calls": self.calls}
        if self.units is not None:
            report.update(remaining=self.units.remaining, daily_limit=self.units.daily_limit)
        return report

    def _check_units(self, service: str, method: str, items: int) -> None:
        if self.units is None:
            return  # unknown until the first answer: never guess zero
        reserve = int(float(self.settings().get_extra("units_reserve", 0) or 0))
        need = estimate_units(service, method, items)
        if self.units.remaining - need < reserve:
            raise YandexDirectUnitsError(
                f"Not calling Yandex Direct {service}.{method}: it costs at least {need} units and only "
                f"{self.units.remaining} of {self.units.daily_limit} are left"
                + (f" (reserve {reserve})" if reserve else "")
                + "; points come back hourly",
                units=self.units,
                code="units_low",
            )

    # -- the v5 envelope --------------------------------------------------------------------

    def call(
        self,
        service: str,
        method: str,
        params: Mapping[str, Any],
        *,
        items: int = 1,
        idempotent: bool | None = None,
    ) -> dict[str, Any]:
        """Send one v5 request ``{"method", "params"}`` to ``/json/<version>/<service>``; return ``result``.

        :param service: lower-case service name (the URL is case-sensitive), e.g. ``retargetinglists``.
        :param items: how many objects the call carries (for the points estimate).
        :param idempotent: whether resending is harmless; default: only ``get``.
        :raises YandexDirectUnitsError: before sending when too few points are left, or on error 152.
        """
        service = service.lower()
        self.get_conn()
        self._check_units(service, method, items)
        response = self.transport.request(
            "POST",
            f"/json/{self.api_version}/{service}",
            json={"method": method, "params": dict(params)},
            idempotent=method == "get" if idempotent is None else idempotent,
            endpoint_class=f"{service}.{method}",
        )
        body = _loads(response)
        result = body.get("result") if isinstance(body, dict) else None
        if not isinstance(result, dict):
            raise AudienceServerError(
                f"Yandex Direct {service}.{method} answered without a result object",
                vendor=VENDOR,
                status=response.status_code,
                request_id=response.headers.get("RequestId"),
            )
        return result

    def get_all(
        self,
        service: str,
        collection: str,
        params: Mapping[str, Any],
        *,
        page_limit: int = PAGE_LIMIT,
    ) -> list[dict[str, Any]]:
        """``get`` every page: ``Page.Offset`` continues at ``LimitedBy`` until Direct stops sending it."""

        def page_at(offset: int) -> tuple[list[dict[str, Any]], int | None]:
            result = self.call(service, "get", {**params, "Page": {"Limit": page_limit, "Offset": offset}})
            page = result.get(collection) or []  # {"result": {}}, no collection key, when nothing matches
            limited_by = result.get("LimitedBy")
            return page, None if limited_by is None or not page else int(limited_by)

        return list(paginate(page_at, 0, endpoint=f"{service}.get", vendor=VENDOR))

    def write(
        self,
        service: str,
        method: str,
        items: Sequence[Any],
        *,
        params_key: str,
        result_key: str,
        selection: bool = False,
        idempotent: bool = False,
    ) -> list[dict[str, Any]]:
        """A write method over ``items`` in batches of the documented size; outcomes in input order.

        :param params_key: where the items go (``RetargetingLists``, ``Bids``; ``Ids`` with ``selection``).
        :param selection: items are ids sent as ``SelectionCriteria.Ids``.
        """
        items = list(items)
        size = BATCH.get((service, method), 1000)
        outcomes: list[dict[str, Any]] = []
        for start in range(0, len(items), size):
            batch = items[start : start + size]
            params = {"SelectionCriteria": {params_key: batch}} if selection else {params_key: batch}
            result = self.call(service, method, params, items=len(batch), idempotent=idempotent)
            for outcome in item_results(result, result_key, batch):
                outcome["index"] += start
                outcomes.append(outcome)
        return outcomes

    # -- RetargetingLists -------------------------------------------------------------------

    def get_retargeting_lists(
        self,
        ids: Sequence[int] | None = None,
        types: Sequence[str] | None = None,
        field_names: Sequence[str] = RETARGETING_LIST_FIELDS,
    ) -> list[dict[str, Any]]:
        """RetargetingLists.get (all lists of the advertiser when no criteria are given)."""
        criteria: dict[str, Any] = {}
        if ids:
            criteria["Ids"] = [int(i) for i in ids]
        if types:
            criteria["Types"] = list(types)
        params: dict[str, Any] = {"FieldNames": list(field_names)}
        if criteria:
            params["SelectionCriteria"] = criteria
        return self.get_all("retargetinglists", "RetargetingLists", params)

    def get_retargeting_list(self, list_id: int) -> dict[str, Any]:
        """One list by id. :raises AudienceNotFoundError: when the advertiser has no such list."""
        found = self.get_retargeting_lists(ids=[int(list_id)])
        if not found:
            raise AudienceNotFoundError(
                f"Yandex Direct retargeting list {list_id} does not exist for {self.client_login or 'this login'}",
                vendor=VENDOR,
            )
        return found[0]

    def find_retargeting_lists_by_name(self, name: str) -> list[dict[str, Any]]:
        """Lists with exactly this name (Direct does not keep names unique)."""
        return [item for item in self.get_retargeting_lists() if item.get("Name") == name]

    def add_retargeting_lists(self, lists: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """RetargetingLists.add; one outcome per list. Not idempotent: see the operator's read-back."""
        for item in lists:
            validate_rules(item.get("Rules") or [])
        return self.write(
            "retargetinglists", "add", list(lists), params_key="RetargetingLists", result_key="AddResults"
        )

    def update_retargeting_lists(self, lists: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """RetargetingLists.update. ``Type`` is immutable and is refused locally (Direct: 8000)."""
        for item in lists:
            if "Type" in item:
                raise AudienceValidationError(
                    "A retargeting list's Type cannot be changed; create a new list instead",
                    vendor=VENDOR,
                    field="Type",
                )
            if "Rules" in item:
                validate_rules(item["Rules"] or [])
        # Replacing rules/name with the same values twice is harmless: safe to resend.
        return self.write(
            "retargetinglists",
            "update",
            list(lists),
            params_key="RetargetingLists",
            result_key="UpdateResults",
            idempotent=True,
        )

    def delete_retargeting_lists(self, ids: Sequence[int]) -> list[dict[str, Any]]:
        """RetargetingLists.delete; a list still used by audience targets fails per item."""
        return self.write(
            "retargetinglists",
            "delete",
            [int(i) for i in ids],
            params_key="Ids",
            result_key="DeleteResults",
            selection=True,
            idempotent=True,
        )

    # -- AudienceTargets --------------------------------------------------------------------

    def get_audience_targets(
        self,
        *,
        ids: Sequence[int] | None = None,
        ad_group_ids: Sequence[int] | None = None,
        campaign_ids: Sequence[int] | None = None,
        retargeting_list_ids: Sequence[int] | None = None,
        states: Sequence[str] | None = None,
        field_names: Sequence[str] = AUDIENCE_TARGET_FIELDS,
    ) -> list[dict[str, Any]]:
        """AudienceTargets.get. At least one id filter is required (else Direct answers 8000); long ones are split."""
        filters = {
            "Ids": ids,
            "AdGroupIds": ad_group_ids,
            "CampaignIds": campaign_ids,
            "RetargetingListIds": retargeting_list_ids,
        }
        given = {k: [int(i) for i in v] for k, v in filters.items() if v}
        if not given:
            raise AudienceValidationError(
                "AudienceTargets.get needs ids, ad group ids, campaign ids or retargeting list ids",
                vendor=VENDOR,
                field="SelectionCriteria",
            )
        # One filter may exceed its documented size: split on it, the others ride along.
        key, values = max(given.items(), key=lambda kv: len(kv[1]) / TARGET_FILTER_LIMITS[kv[0]])
        size = TARGET_FILTER_LIMITS[key]
        seen: dict[Any, dict[str, Any]] = {}
        for start in range(0, len(values), size):
            criteria: dict[str, Any] = {**given, key: values[start : start + size]}
            if states:
                criteria["States"] = list(states)
            for target in self.get_all(
                "audiencetargets",
                "AudienceTargets",
                {"SelectionCriteria": criteria, "FieldNames": list(field_names)},
            ):
                seen[target.get("Id")] = target
        return list(seen.values())

    def add_audience_targets(self, targets: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """AudienceTargets.add; one outcome per target. Not idempotent: see the operator's read-back."""
        for number, target in enumerate(targets, start=1):
            if ("RetargetingListId" in target) == ("InterestId" in target):
                raise AudienceValidationError(
                    f"Audience target {number}: give exactly one of RetargetingListId and InterestId",
                    vendor=VENDOR,
                )
            if target.get("StrategyPriority") not in (None, *STRATEGY_PRIORITIES):
                raise AudienceValidationError(
                    f"Audience target {number}: StrategyPriority must be one of {', '.join(STRATEGY_PRIORITIES)}",
                    vendor=VENDOR,
                    field="StrategyPriority",
                )
        return self.write(
            "audiencetargets", "add", list(targets), params_key="AudienceTargets", result_key="AddResults"
        )

    def delete_audience_targets(self, ids: Sequence[int]) -> list[dict[str, Any]]:
        """AudienceTargets.delete."""
        return self._by_ids("delete", "DeleteResults", ids)

    def suspend_audience_targets(self, ids: Sequence[int]) -> list[dict[str, Any]]:
        """AudienceTargets.suspend (already suspended: warning 10242)."""
        return self._by_ids("suspend", "SuspendResults", ids)

    def resume_audience_targets(self, ids: Sequence[int]) -> list[dict[str, Any]]:
        """AudienceTargets.resume (not suspended: warning 10243)."""
        return self._by_ids("resume", "ResumeResults", ids)

    def _by_ids(self, method: str, result_key: str, ids: Sequence[int]) -> list[dict[str, Any]]:
        return self.write(
            "audiencetargets",
            method,
            [int(i) for i in ids],
            params_key="Ids",
            result_key=result_key,
            selection=True,
            idempotent=True,
        )

    def set_bids_audience_targets(self, bids: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """AudienceTargets.setBids. Every item names the same kind of id (``Id``, ``AdGroupId`` or
        ``CampaignId``; mixing them is Direct's error 4005, refused here first). ``ContextBid`` is in
        micros of the account currency."""
        kinds = set()
        for number, bid in enumerate(bids, start=1):
            named = [k for k in ("Id", "AdGroupId", "CampaignId") if bid.get(k) is not None]
            if len(named) != 1:
                raise AudienceValidationError(
                    f"Bid {number}: name exactly one of Id, AdGroupId, CampaignId", vendor=VENDOR, field="Bids"
                )
            if bid.get("ContextBid") is None and bid.get("StrategyPriority") is None:
                raise AudienceValidationError(
                    f"Bid {number}: give ContextBid (micros) and/or StrategyPriority", vendor=VENDOR, field="Bids"
                )
            kinds.add(named[0])
        if len(kinds) > 1:
            raise AudienceValidationError(
                f"One setBids call must use one kind of id, got {', '.join(sorted(kinds))}",
                vendor=VENDOR,
                field="Bids",
            )
        size = {"Id": 10000, "AdGroupId": 1000, "CampaignId": 100}[kinds.pop()] if bids else 10000
        outcomes: list[dict[str, Any]] = []
        bids = list(bids)
        for start in range(0, len(bids), size):
            batch = bids[start : start + size]
            result = self.call("audiencetargets", "setBids", {"Bids": batch}, items=len(batch), idempotent=True)
            for outcome in item_results(result, "SetBidsResults", batch):
                outcome["index"] += start
                outcomes.append(outcome)
        return outcomes

    # -- Dictionaries ---------------------------------------------------------------------------

    def get_dictionaries(self, names: Sequence[str] = AUDIENCE_DICTIONARIES) -> dict[str, list[dict[str, Any]]]:
        """``Dictionaries.get``: the Crypta catalogues ``AUDIENCE`` lists and interest targets refer to.

        :param names: ``AudienceInterests`` (interest ids: ``ExternalId`` of AUDIENCE rules and
            ``InterestId`` of audience targets), ``AudienceDemographicProfiles``, ``AudienceCriteriaTypes``;
            other dictionary names of Direct are passed through.
        :returns: one list of items per name asked for (items as Direct sends them; beyond ``Id``
            their fields are not documented in what we read).
        """
        wanted = [str(n) for n in names]
        if not wanted:
            raise AudienceValidationError("Name at least one dictionary", vendor=VENDOR, field="DictionaryNames")
        result = self.call("dictionaries", "get", {"DictionaryNames": wanted})
        return {name: [i for i in result.get(name) or [] if isinstance(i, dict)] for name in wanted}

    # -- GetRetargetingGoals (v4 Live) --------------------------------------------------------

    def live4_url(self) -> str:
        configured = self.settings().get_extra("live4_url")
        if configured:
            return str(configured)
        parts = urlsplit(self.transport.base_url)
        return f"{parts.scheme}://{parts.netloc}{LIVE4_PATH}"

    def get_retargeting_goals(self, logins: Sequence[str] | None = None) -> list[dict[str, Any]]:
        """v4 Live ``GetRetargetingGoals``: goals and segments (Metrica, Audience) usable in rules.

        Agencies must name client logins (default: the Client-Login); advertisers need none.
        Each item: ``{"GoalID", "Name", "GoalDomain", "Type", "Login"}``.
        """
        self.get_conn()
        url = self.live4_url()
        if urlsplit(url).netloc.startswith("api-sandbox.direct.yandex."):
            raise AudienceConfigurationError(
                "Yandex Direct's own sandbox does not support GetRetargetingGoals (v4 Live answers it with "
                "error 500, and real Audience segments do not exist there), so segments cannot be resolved "
                "to goal ids against it: give goal ids directly ({'goal_id': ...}), point the connection's "
                "'live4_url' at production, or test against this provider's sandbox",
                vendor=VENDOR,
            )
        self._check_units("live4", "GetRetargetingGoals", 1)
        settings = self.settings()
        param: dict[str, Any] = {}
        names = list(logins or ([self.client_login] if self.client_login else []))
        if names:
            param["Logins"] = names[:100]
        body = {
            "method": "GetRetargetingGoals",
            "param": param,
            "locale": str(settings.get_extra("accept_language", "en")),
            # v4 Live documents the token in the body; the Bearer header is sent as well.
            "token": settings.password,
        }
        response = self.transport.request(
            "POST", url, json=body, idempotent=True, endpoint_class="v4 GetRetargetingGoals"
        )
        data = _loads(response)
        goals = data.get("data") if isinstance(data, dict) else None
        if not isinstance(goals, list):
            raise AudienceServerError("Yandex Direct GetRetargetingGoals answered without data", vendor=VENDOR)
        return [g for g in goals if isinstance(g, dict)]

    # -- Audience segments -> goal ids ------------------------------------------------------

    @property
    def audience_goal_id_offset(self) -> int:
        return int(float(self.settings().get_extra("audience_goal_id_offset", 2_000_000_000)))

    @staticmethod
    def is_metrica_goal(goal: Mapping[str, Any]) -> bool:
        """Whether a GetRetargetingGoals item says it is a Metrica goal (``Type`` ``goal``; strings unverified)."""
        return str(goal.get("Type") or "").strip().lower() == "goal"

    @staticmethod
    def is_audience_goal(goal: Mapping[str, Any], offset: int) -> bool:
        """Whether a GetRetargetingGoals item looks like a Yandex.Audience segment.

        Only a hint for choosing among equal names and for error messages: the ``Type`` strings are
        UNVERIFIED, so a type mentioning "audience", or an id in this connection's
        Audience id range, counts.
        """
        kind = str(goal.get("Type") or "").lower()
        if "audience" in kind:
            return True
        try:
            return offset <= int(str(goal.get("GoalID"))) < offset + 1_000_000_000
        except (TypeError, ValueError):
            return False

    def _segment_matches(self, spec: Mapping[str, Any], goals: Sequence[Mapping[str, Any]], offset: int) -> list[Any]:
        """The goals a segment spec may be, best evidence first (each list holds one kind of evidence)."""
        if "goal_id" in spec:
            return [g for g in goals if _goal_id(g) == spec["goal_id"]]
        if "segment_id" in spec:
            sid = spec["segment_id"]
            # 1. the numbering this connection assumes; 2. a field of the item naming the segment id;
            # 3. a goal numbered like the segment itself (not a Metrica goal); 4. the segment's name.
            for found in (
                [g for g in goals if _goal_id(g) == offset + sid],
                [g for g in goals if any(str(g.get(k)) == str(sid) for k in SEGMENT_ID_FIELDS if g.get(k) is not None)],
                [g for g in goals if _goal_id(g) == sid and not self.is_metrica_goal(g)],
            ):
                if found:
                    return found
            if not spec.get("name"):
                return []
        named = [g for g in goals if str(g.get("Name") or "") == spec["name"]]
        if len(named) > 1:
            # Equal names: keep the ones that look like Audience segments, if that tells them apart.
            audience = [g for g in named if self.is_audience_goal(g, offset) or not self.is_metrica_goal(g)]
            named = audience or named
        return named

    def match_audience_segments(
        self, segments: Sequence[Any], goals: Sequence[Mapping[str, Any]]
    ) -> tuple[list[dict[str, Any]], list[Any]]:
        """Goal ids of the segments Direct lists, and the segments it does not list (in input order).

        :raises AudienceValidationError: for a segment that matches several goals.
        """
        offset = self.audience_goal_id_offset
        resolved, missing = [], []
        for raw in segments:
            spec = _segment_spec(raw)
            matches = self._segment_matches(spec, goals, offset)
            if len(matches) > 1:
                raise AudienceValidationError(
                    f"Yandex.Audience segment {raw!r} matches several Direct goals "
                    f"({_describe_goals(matches)}); give it as {{'goal_id': ...}} instead",
                    vendor=VENDOR,
                )
            if not matches:
                missing.append(raw)
                continue
            goal = matches[0]
            resolved.append({"input": raw, "goal_id": _goal_id(goal), "name": goal.get("Name")})
        return resolved, missing

    def _not_listed_message(self, missing: Sequence[Any], goals: Sequence[Mapping[str, Any]]) -> str:
        candidates = [g for g in goals if not self.is_metrica_goal(g)]
        return (
            f"Yandex Direct lists no goal for the Yandex.Audience segment(s) {list(missing)!r} "
            f"(login {self.client_login or 'of the token'}): a segment appears only once it is processed and owned "
            "by or granted to this Direct login (a fresh grant may take a while to show). Segments and other "
            f"non-goal items Direct lists now: {_describe_goals(candidates) or 'none'}. A segment given by id is "
            f"matched as goal {self.audience_goal_id_offset:_} + id (extra 'audience_goal_id_offset'), by an id "
            "field of the item, or as a goal with its own id; add its name ({'segment_id': ..., 'name': ...}) or "
            "give {'goal_id': ...} when Direct numbers it otherwise"
        )

    def resolve_audience_segments(
        self, segments: Sequence[Any], goals: Sequence[Mapping[str, Any]] | None = None
    ) -> list[dict[str, Any]]:
        """Goal ids of Audience segments given by id, by name, or as ``{"goal_id": n}``.

        How a segment is recognised in the ``GetRetargetingGoals`` answer (the mapping is not
        documented): by id, the goal numbered ``audience_goal_id_offset + id``, else an item field
        naming the segment id, else a goal (not a Metrica goal) numbered with the id itself, else
        the segment's name when given (``{"segment_id": ..., "name": ...}``); by name, the item with
        that ``Name`` (among equal names, the ones that look like Audience segments).

        :param segments: ints or digit strings (segment ids), other strings (segment names), or dicts
            with one of ``segment_id`` (optionally with ``name``), ``name``, ``goal_id``.
        :param goals: a GetRetargetingGoals answer to reuse (saves a call).
        :returns: ``[{"input", "goal_id", "name"}]`` in input order.
        :raises YandexDirectGoalNotFoundError: naming every segment Direct does not list, and listing
            what Direct does list (not processed yet, not shared with this Direct login, or a wrong id/name).
        :raises AudienceValidationError: for a segment that matches several goals.
        """
        goals = list(goals) if goals is not None else self.get_retargeting_goals()
        resolved, missing = self.match_audience_segments(segments, goals)
        if missing:
            raise YandexDirectGoalNotFoundError(self._not_listed_message(missing, goals), vendor=VENDOR)
        return resolved

    def audience_goals_status(self, segments: list[Any], client_login: str | None = None) -> PollResult:
        """Whether Direct lists every segment yet (the status function of the "segments visible" wait).

        A segment granted to the Direct login a moment ago, or processed a moment ago, may not be
        listed at once; this is what a task waits on. Costs one ``GetRetargetingGoals`` call.

        :param segments: as for :meth:`resolve_audience_segments`.
        :param client_login: the task's ``Client-Login`` override (a trigger builds its own hook).
        """
        if client_login and not self._client_login_override:
            self._client_login_override = client_login
        goals = self.get_retargeting_goals()
        resolved, missing = self.match_audience_segments(segments, goals)
        if missing:
            return PollResult(
                Phase.RUNNING, "not_listed", self._not_listed_message(missing, goals), {"missing": list(missing)}
            )
        found = ", ".join(f"{r['input']!r} = goal {r['goal_id']}" for r in resolved)
        return PollResult(Phase.DONE, "listed", f"Yandex Direct lists every segment: {found}", {"goals": resolved})

    def resolve_goals(
        self, goal_ids: Sequence[int], goals: Sequence[Mapping[str, Any]] | None = None
    ) -> list[dict[str, Any]]:
        """Check Metrica goal ids against GetRetargetingGoals (Direct accepts unknown ids at add time).

        :raises YandexDirectGoalNotFoundError: naming the goals Direct does not list for this login.
        """
        goals = list(goals) if goals is not None else self.get_retargeting_goals()
        by_id = {int(g["GoalID"]): g for g in goals if str(g.get("GoalID", "")).lstrip("-").isdigit()}
        missing = [g for g in goal_ids if int(g) not in by_id]
        if missing:
            raise YandexDirectGoalNotFoundError(
                f"Yandex Direct lists no goal {missing!r} for login {self.client_login or 'of the token'}",
                vendor=VENDOR,
            )
        return [{"goal_id": int(g), "name": by_id[int(g)].get("Name")} for g in goal_ids]

    # -- links, probe -----------------------------------------------------------------------

    def retargeting_list_url(self, list_id: Any) -> str:
        """Link to the list in the Direct web interface (the "Retargeting and audiences" library).

        Assumption (not in Direct's documentation): the library opens at ``<web_ui_url>/dna/retargeting``
        and ``ulogin`` selects the client for agencies; the list id is passed along for reference.
        """
        base = str(self.settings().get_extra("web_ui_url", "https://direct.yandex.ru")).rstrip("/")
        url = f"{base}/dna/retargeting?retargeting_list_id={quote(str(list_id), safe='')}"
        return f"{url}&ulogin={quote(self.client_login, safe='')}" if self.client_login else url

    def probe(self) -> str:
        """One cheap authenticated read: the first retargeting list (2 points)."""
        result = self.call("retargetinglists", "get", {"FieldNames": ["Id"], "Page": {"Limit": 1, "Offset": 0}})
        seen = len(result.get("RetargetingLists") or [])
        units = f"; {self.units.remaining} of {self.units.daily_limit} units left" if self.units else ""
        return f"Connected to Yandex Direct as {self.client_login or 'the token owner'} ({seen} list seen{units})"


#: Fields of a GetRetargetingGoals item that might carry the Audience segment id (none is documented).
SEGMENT_ID_FIELDS = ("SegmentID", "SegmentId", "AudienceSegmentId", "AudienceSegmentID")


def _goal_id(goal: Mapping[str, Any]) -> int | None:
    try:
        return int(str(goal.get("GoalID")))
    except (TypeError, ValueError):
        return None


def _describe_goals(goals: Sequence[Mapping[str, Any]], limit: int = 20) -> str:
    shown = [f"{g.get('GoalID')} {str(g.get('Name') or '')!r} (Type {g.get('Type')!r})" for g in goals[:limit]]
    more = f" and {len(goals) - limit} more" if len(goals) > limit else ""
    return ", ".join(shown) + more


def _flag(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return bool(value)


def _segment_spec(raw: Any) -> dict[str, Any]:
    if isinstance(raw, Mapping):
        if raw.get("goal_id") not in (None, ""):
            return {"goal_id": _positive_int(raw["goal_id"], "goal_id")}
        if raw.get("segment_id") not in (None, ""):
            spec: dict[str, Any] = {"segment_id": _positive_int(raw["segment_id"], "segment_id")}
            if raw.get("name"):
                spec["name"] = str(raw["name"])
            return spec
        if raw.get("name"):
            return {"name": str(raw["name"])}
        raise AudienceValidationError(
            f"A segment must be given as an id, a name, or a dict with segment_id, name or goal_id: {raw!r}",
            vendor=VENDOR,
        )
    if isinstance(raw, bool):
        raise AudienceValidationError(f"Not a segment id or name: {raw!r}", vendor=VENDOR)
    if isinstance(raw, int) or (isinstance(raw, str) and raw.strip().isdigit()):
        return {"segment_id": _positive_int(raw, "segment id")}
    if isinstance(raw, str) and raw.strip():
        return {"name": raw.strip()}
    raise AudienceValidationError(f"Not a segment id or name: {raw!r}", vendor=VENDOR)


def _positive_int(value: Any, what: str) -> int:
    try:
        number = int(str(value).strip())
    except ValueError:
        raise AudienceValidationError(f"{what} must be a positive integer, got {value!r}", vendor=VENDOR) from None
    if number <= 0:
        raise AudienceValidationError(f"{what} must be a positive integer, got {value!r}", vendor=VENDOR)
    return number
