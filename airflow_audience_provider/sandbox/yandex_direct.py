"""Fake Yandex Direct API v5 (RetargetingLists, AudienceTargets) and v4 Live GetRetargetingGoals.

Follows Direct's API v5 and v4 Live reference (yandex.ru/dev/direct) and recorded real traffic; what a
client should expect from it:

* ``POST /json/v5/<service>`` (and ``/json/v501/<service>``) with ``{"method", "params"}``; the
  service name is case-sensitive (``retargetinglists``, ``audiencetargets``): anything else is 404.
* Auth: ``Authorization: Bearer <token>``. The advertiser token acts for ``sandbox-advertiser``
  (``Client-Login`` optional; another login: 54). The agency token needs ``Client-Login`` naming one of
  its clients (missing: 8000 "specify Client-Login"; not its client: 8800). A bad token is 53, a
  missing or non-Bearer one 8000.
* **Request-level errors come back with HTTP 200** as ``{"error": {"request_id", "error_code",
  "error_string", "error_detail"}}``; injected faults keep their HTTP status and carry the same
  envelope (5xx: 1000, 429: 506).
* Every answer after authentication has ``RequestId`` and ``Units: spent/remaining/daily_limit`` (per
  advertiser, ``units_daily_limit`` per day) and ``Units-Used-Login``. Prices: ``get`` 2 (1 when
  empty); a write 10 + 2 per item + 20 per failed item; a request-level error 2. When the remaining
  points cannot pay for a call: error 152 (nothing is executed). :meth:`YandexDirectFake.set_units`
  sets the remaining points.
* Concurrency: at most ``max_concurrent`` (5) requests per advertiser at once, else error 506. With
  ``request_seconds`` > 0 each request holds its slot that long (to provoke 506 in tests).
* Write methods answer one ``ActionResult`` per input item in input order; empty ``Errors`` and
  ``Warnings`` are omitted (as the real sandbox does). Item codes: 5000/5001/5005/5008/5009, 6000
  (list not usable in targets; ALL/ANY vs NONE-only change), 7000 (rule limits 50 rules / 250
  arguments, our assumption), 7001 (2000 lists, 50 targets per group), 8301 (list used by targets,
  code assumed), 8800 (not found), 9801 (target for this group and list exists); warnings 10242/10243.
* ``get`` pages with ``Page.Limit``/``Offset`` and answers ``LimitedBy`` (ordinal of the last object
  returned) when more remain; nothing found is ``{"result": {}}``. ``AudienceTargets.get`` needs an id
  filter (none: 8000; ``{}``: 4001). ``update`` with ``Type``: 8000. setBids mixing id kinds: 4005.
* Goals (``GetRetargetingGoals``, ``POST /live/v4/json/``, errors in the v4 top-level shape with
  ``error_str``): two Metrica goals (``Type: "goal"``) plus one goal per **processed**
  Yandex.Audience segment that the Direct login owns or holds a grant on, with
  ``GoalID = 2_000_000_000 + segment id`` (our assumption; ``audience_goal_numbering=0`` numbers
  them unrelated to the id) and ``Type: "segment"`` (strings unverified: by default the fake does
  not say "audience"; ``audience_goal_type_named=1`` does). The segments come from a goal source:
  by default the fake's own seeded segments (``1001`` "CRM buyers 2026", ``1002`` "Converted
  customers" processed, ``1003`` "Newsletter signups" still ``is_processed``; granted to both
  Direct logins of the fake); :meth:`YandexDirectFake.use_audience_fake` reads them from the
  Yandex.Audience fake instead, per Direct login (owner or grant).
* ``Dictionaries.get`` (``POST /json/v5/dictionaries``) answers ``AudienceInterests``,
  ``AudienceDemographicProfiles`` and ``AudienceCriteriaTypes``. Direct
  does not validate ``ExternalId`` at add time: a list naming an unknown goal is created
  with ``IsAvailable: "NO"``; ``MembershipLifeSpan`` of a segment reads back as ``null``
  (Direct ignores it for segments).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Container, Iterable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import BaseRoute, Route

from airflow_audience_provider.sandbox.base import ErrorReply, VendorFake, control_call, request_id_of

__all__ = ["Account", "YandexDirectFake"]

SANDBOX_TOKEN = "direct-sandbox-token-7d1e"
AGENCY_TOKEN = "direct-agency-token-3b9a"
ADVERTISER = "sandbox-advertiser"
AGENCY = "sandbox-agency"
AGENCY_CLIENTS = ("sandbox-client",)
AUDIENCE_GOAL_OFFSET = 2_000_000_000
#: Base of the GoalIDs of Audience segments when the fake numbers them unrelated to the segment id.
OPAQUE_GOAL_BASE = 3_100_000_000
SERVICES = {
    "retargetinglists": ("add", "get", "update", "delete"),
    "audiencetargets": ("add", "get", "delete", "suspend", "resume", "setBids"),
    "dictionaries": ("get",),
}
#: Dictionaries.get catalogues. Items carry the fields clients were seen reading (``Id``, ``InterestType``); the rest of
#: Direct's item fields are unverified, so the fake adds only a ``Name`` and ``ParentId`` of its own.
DICTIONARIES: dict[str, list[dict[str, Any]]] = {
    "AudienceInterests": [
        {"Id": 2499000001, "ParentId": 0, "Name": "Travel", "InterestType": "LONG_TERM"},
        {"Id": 2499000002, "ParentId": 2499000001, "Name": "Air travel", "InterestType": "SHORT_TERM"},
    ],
    "AudienceDemographicProfiles": [
        {"Id": 2499001001, "Type": "GENDER", "Name": "Female"},
        {"Id": 2499001002, "Type": "AGE", "Name": "25-34"},
    ],
    "AudienceCriteriaTypes": [
        {
            "Id": 2499002001,
            "Type": "SOCIAL_DEMO",
            "BlockElementType": "GENDER",
            "Name": "Gender",
            "CanSelect": "ONE",
        },
    ],
}
LIST_FIELDS = (
    "Id",
    "Name",
    "Type",
    "Description",
    "Rules",
    "IsAvailable",
    "Scope",
    "AvailableForTargetsInAdGroupTypes",
)
TARGET_FIELDS = (
    "Id",
    "AdGroupId",
    "CampaignId",
    "RetargetingListId",
    "InterestId",
    "ContextBid",
    "StrategyPriority",
    "State",
)
MAX_RULES, MAX_ARGUMENTS, MAX_LISTS, MAX_TARGETS_PER_GROUP = 50, 250, 2000, 50
TARGETABLE_GROUPS = ("TEXT_AD_GROUP", "MOBILE_APP_AD_GROUP")
SEED_SEGMENTS = (
    {"id": 1001, "name": "CRM buyers 2026", "status": "processed"},
    {"id": 1002, "name": "Converted customers", "status": "processed"},
    {"id": 1003, "name": "Newsletter signups", "status": "is_processed"},
)
SEED_GOALS = (
    {"GoalID": 12345678, "Name": "Purchase", "GoalDomain": "shop.example", "Type": "goal"},
    {"GoalID": 12345679, "Name": "Visited checkout", "GoalDomain": "shop.example", "Type": "goal"},
)
SEED_AD_GROUPS = (
    {"Id": 5757000001, "CampaignId": 700001, "Type": "TEXT_AD_GROUP"},
    {"Id": 5757000002, "CampaignId": 700001, "Type": "TEXT_AD_GROUP"},
    {"Id": 5757000003, "CampaignId": 700002, "Type": "MOBILE_APP_AD_GROUP"},
    {"Id": 5757000004, "CampaignId": 700002, "Type": "DYNAMIC_TEXT_AD_GROUP"},
)


class DirectError(Exception):
    """A request-level error: answered with HTTP 200 in the v5 envelope."""

    def __init__(self, code: int, text: str, detail: str = "") -> None:
        super().__init__(text)
        self.code, self.text, self.detail = code, text, detail


def _note(code: int, message: str, details: str = "") -> dict[str, Any]:
    note: dict[str, Any] = {"Code": code, "Message": message}
    if details:
        note["Details"] = details
    return note


def _not_found(what: str, object_id: Any) -> dict[str, Any]:
    """The result of an id that names no object (``what``: e.g. ``"Audience target"``)."""
    return {"Errors": [_note(8800, "Object not found", f"{what} {object_id}")]}


@dataclass
class Account:
    """One advertiser's objects and points."""

    login: str
    lists: dict[int, dict[str, Any]] = field(default_factory=dict)
    targets: dict[int, dict[str, Any]] = field(default_factory=dict)
    ad_groups: dict[int, dict[str, Any]] = field(default_factory=dict)
    units_spent: int = 0
    in_flight: int = 0


class YandexDirectFake(VendorFake):
    """In-memory Direct advertisers (``sandbox-advertiser`` and the agency's ``sandbox-client``).

    Python API for tests: ``accounts``, :meth:`account`, :meth:`set_units`,
    :meth:`add_audience_segment`, :meth:`set_segment_status`, :meth:`set_goal_source`,
    :meth:`use_audience_fake`, :meth:`goals`, plus the base class' faults, request log, config, reset.
    """

    name: ClassVar[str] = "yandex_direct"
    conn_id: ClassVar[str] = "yandex_direct_default"
    default_config: ClassVar[dict[str, float | None]] = {
        **VendorFake.default_config,
        "processing_seconds": 0.0,  # Direct itself is synchronous; kept for the shared CLI flag
        "units_daily_limit": 160000.0,
        "max_concurrent": 5.0,
        "request_seconds": 0.0,
        #: 1: an Audience segment's GoalID is 2_000_000_000 + its id (our assumption); 0: unrelated
        "audience_goal_numbering": 1.0,
        #: 1: Audience goals have Type "audience"; 0: "segment", like Metrica segments (strings unverified)
        "audience_goal_type_named": 0.0,
    }

    def reset_state(self) -> None:
        # Direct login -> its Account (points spent, retargeting lists, ad groups).
        self.accounts: dict[str, Account] = {}
        for login in (ADVERTISER, *AGENCY_CLIENTS):
            account = Account(login)
            account.ad_groups = {int(str(g["Id"])): dict(g) for g in SEED_AD_GROUPS}
            self.accounts[login] = account
        self.accounts[AGENCY] = Account(AGENCY)  # only its points are used (Use-Operator-Units)
        self._segments: list[dict[str, Any]] = [dict(s) for s in SEED_SEGMENTS]
        self._goal_source: Callable[..., Iterable[Any]] = lambda: list(self._segments)
        self._source_takes_login = False
        self._next_list_id = 41500001
        self._next_target_id = 104000001
        self._request_counter = 8695244274068600000

    def new_request_id(self) -> str:
        """Direct-style numeric request id."""
        with self.lock:
            self._request_counter += 1
            return str(self._request_counter)

    # ------------------------------------------------------------------ test API
    def account(self, login: str = ADVERTISER) -> Account:
        """The state of one Direct login."""
        return self.accounts[login]

    def set_units(self, remaining: int, login: str = ADVERTISER) -> None:
        """Make ``remaining`` points left today for ``login``."""
        with self.lock:
            account = self.accounts[login]
            account.units_spent = max(0, self.daily_limit - int(remaining))

    @property
    def daily_limit(self) -> int:
        return int(self.config.get("units_daily_limit") or 0)

    def add_audience_segment(
        self, segment_id: int, name: str, status: str = "processed", logins: Iterable[str] | None = None
    ) -> None:
        """A Yandex.Audience segment in the fake's own goal source.

        :param logins: the Direct logins that own it or hold a grant (None: every login of the fake).
        """
        with self.lock:
            segment: dict[str, Any] = {"id": int(segment_id), "name": name, "status": status}
            if logins is not None:
                segment["logins"] = list(logins)
            self._segments.append(segment)

    def set_segment_status(self, segment_id: int, status: str) -> None:
        """Set the status of a segment of the fake's own goal source (``processed``, ``is_processed``...)."""
        with self.lock:
            for segment in self._segments:
                if segment["id"] == int(segment_id):
                    segment["status"] = status

    def set_goal_source(self, source: Callable[..., Iterable[Any]]) -> None:
        """Where Audience segments come from: a callable returning segments (dicts or objects with
        ``id``, ``name`` and optionally ``status``); only ``processed`` ones become goals.

        A callable with a parameter is given the Direct login and must return only the segments
        that login may use (it owns them or holds a grant); one without lists them for every login.
        """
        import inspect

        try:
            takes_login = bool(inspect.signature(source).parameters)
        except (TypeError, ValueError):
            takes_login = False
        with self.lock:
            self._goal_source = source
            self._source_takes_login = takes_login

    def use_audience_fake(self, audience_fake: Any) -> bool:
        """Read segments from the Yandex.Audience fake (its ``processed_segments()`` or ``segments``).

        :returns: whether the Audience fake offered something to read.
        """
        processed = getattr(audience_fake, "processed_segments", None)
        if callable(processed):
            # Direct lists a segment only to a login that owns it or holds a grant.
            self.set_goal_source(lambda login: processed(for_login=login))
            return True
        for attr in ("segments",):
            source = getattr(audience_fake, attr, None)
            if callable(source):
                self.set_goal_source(source)
                return True
            if source is not None:
                name = attr

                def read(fake: Any = audience_fake, attribute: str = name) -> Iterable[Any]:
                    return getattr(fake, attribute)  # type: ignore[no-any-return]

                self.set_goal_source(read)
                return True
        return False

    def audience_goal_id(self, segment_id: int) -> int:
        """The GoalID Direct lists for an Audience segment: ``2_000_000_000 + id`` (our assumption), or
        with ``audience_goal_numbering=0`` a number unrelated to the segment id (the stricter reading)."""
        if self.config.get("audience_goal_numbering"):
            return AUDIENCE_GOAL_OFFSET + int(segment_id)
        return OPAQUE_GOAL_BASE + (int(segment_id) * 7919) % 1_000_000_000

    def goals(self, login: str = ADVERTISER) -> list[dict[str, Any]]:
        """What GetRetargetingGoals lists for ``login`` now."""
        return [{k: v for k, v in g.items() if not k.startswith("_")} for g in self._goals(login)]

    def _goals(self, login: str) -> list[dict[str, Any]]:
        goals = [{**g, "Login": login} for g in SEED_GOALS]
        try:
            source = self._goal_source(login) if self._source_takes_login else self._goal_source()
            segments = list(source.values() if isinstance(source, dict) else source or [])
        except Exception:  # the peer fake changed shape: no segments rather than a crash
            segments = []
        for segment in segments:
            fields = segment if isinstance(segment, dict) else vars(segment) if hasattr(segment, "__dict__") else {}
            status = fields.get("status")
            if status not in (None, "processed"):
                continue
            logins = fields.get("logins")
            if logins is not None and login not in logins:
                continue  # neither owned by nor granted to this Direct login
            try:
                segment_id = int(str(fields.get("id")))
            except (TypeError, ValueError):
                continue
            goals.append(
                {
                    "GoalID": self.audience_goal_id(segment_id),
                    "Name": str(fields.get("name") or ""),
                    "GoalDomain": "",
                    # Type strings are unverified: the fake does not say "audience" by default.
                    "Type": "audience" if self.config.get("audience_goal_type_named") else "segment",
                    "Login": login,
                    "_audience": True,
                }
            )
        return goals

    def connection(self, base_url: str) -> dict[str, Any]:
        """``{"conn_type": "yandex_direct", "host", "password", "extra": {"client_login", ...}}``."""
        return {
            "conn_type": "yandex_direct",
            "host": base_url,
            "password": SANDBOX_TOKEN,
            "extra": {"client_login": ADVERTISER, "web_ui_url": f"{base_url}/web"},
        }

    # ------------------------------------------------------------------ envelopes
    def error_envelope(self, reply: ErrorReply) -> Response:
        """v5 ``{"error": {...}}`` (v4 Live: top-level ``error_code``/``error_str``) with ``RequestId``."""
        code, status, message = reply.code, reply.status, reply.message
        number = int(code) if code and str(code).isdigit() else (506 if status == 429 else 1000)
        headers = {**reply.headers, "RequestId": reply.request_id}
        if reply.path.startswith("/live/"):
            body: dict[str, Any] = {"error_code": number, "error_str": message, "error_detail": ""}
        else:
            body = {
                "error": {
                    "request_id": reply.request_id,
                    "error_code": number,
                    "error_string": message,
                    "error_detail": "",
                }
            }
        return JSONResponse(body, status_code=status, headers=headers)

    def _authenticate(self, request: Request, body_token: str | None = None) -> tuple[Account, str]:
        """The account the request acts for, and the login whose points it spends."""
        header = request.headers.get("authorization")
        token = None
        if header:
            scheme, _, value = header.partition(" ")
            if scheme != "Bearer" or not value:
                raise DirectError(8000, "Invalid request", "Authorization header must be 'Bearer <OAuth token>'")
            token = value
        token = token or body_token
        if not token:
            raise DirectError(8000, "Invalid request", "OAuth token is missing")
        login = request.headers.get("client-login")
        if token == SANDBOX_TOKEN:
            if login and login != ADVERTISER:
                raise DirectError(54, "No rights", f"No rights to act for client {login}")
            return self.accounts[ADVERTISER], ADVERTISER
        if token == AGENCY_TOKEN:
            if not login:
                raise DirectError(8000, "Invalid request", "Specify the advertiser login in the Client-Login header")
            if login not in AGENCY_CLIENTS:
                raise DirectError(8800, "Object not found", f"Client {login} is not a client of this agency")
            payer = AGENCY if request.headers.get("use-operator-units") == "true" else login
            return self.accounts[login], payer
        raise DirectError(53, "Authorization error", "Invalid or expired OAuth token")

    def _units_header(self, account: Account, spent: int) -> dict[str, str]:
        remaining = max(0, self.daily_limit - account.units_spent)
        return {"Units": f"{spent}/{remaining}/{self.daily_limit}"}

    # ------------------------------------------------------------------ routes
    def routes(self) -> list[BaseRoute]:
        return [
            Route("/json/{version}/{service}", self._h_v5, methods=["POST"]),
            Route("/live/v4/json/", self._h_v4, methods=["POST"]),
            Route("/live/v4/json", self._h_v4, methods=["POST"]),
        ]

    async def _h_v5(self, request: Request) -> Response:
        request_id = request_id_of(request)
        version, service = request.path_params["version"], request.path_params["service"]
        if version not in ("v5", "v501") or service not in SERVICES:
            return PlainTextResponse("Not Found", status_code=404, headers={"RequestId": request_id})
        account: Account | None = None
        wallet: Account | None = None  # whose points pay: the advertiser's, or the agency's
        headers = {"RequestId": request_id}
        holding = False
        try:
            account, payer = self._authenticate(request)
            wallet = self.accounts[payer]
            headers["Units-Used-Login"] = payer
            with self.lock:
                if account.in_flight >= int(self.config.get("max_concurrent") or 5):
                    raise DirectError(506, "Too many simultaneous connections", "Retry later")
                account.in_flight += 1
                holding = True
            if self.config.get("request_seconds"):
                await asyncio.sleep(float(self.config["request_seconds"] or 0))
            try:
                body = json.loads(await request.body() or b"null")
            except ValueError:
                raise DirectError(8000, "Invalid request", "Request body is not valid JSON") from None
            if not isinstance(body, dict) or "method" not in body:
                raise DirectError(8000, "Invalid request", "Field method is required")
            unknown = set(body) - {"method", "params"}
            if unknown:
                raise DirectError(8000, "Invalid request", f"Unknown field {sorted(unknown)[0]}")
            method, params = body["method"], body.get("params")
            if method not in SERVICES[service]:
                raise DirectError(55, "Method not found", f"Unknown method {method!r} of {service}")
            if not isinstance(params, dict):
                raise DirectError(8000, "Invalid request", "Field params is required")
            with self.lock:
                result, cost = getattr(self, f"_{service}_{method.lower()}")(account, params)
                if self.daily_limit - wallet.units_spent < cost:
                    raise DirectError(152, "Not enough units", "Daily points limit reached")
                self._commit(account)
                wallet.units_spent += cost
                headers.update(self._units_header(wallet, cost))
            return JSONResponse({"result": result}, headers=headers)
        except DirectError as exc:
            if wallet is not None:
                with self.lock:
                    self._rollback(wallet)
                    cost = 0 if exc.code in (152, 506) else min(2, max(0, self.daily_limit - wallet.units_spent))
                    wallet.units_spent += cost
                    headers.update(self._units_header(wallet, cost))
            error = {
                "request_id": request_id,
                "error_code": exc.code,
                "error_string": exc.text,
                "error_detail": exc.detail,
            }
            return JSONResponse({"error": error}, headers=headers)  # HTTP 200, as Direct does
        finally:
            if holding and account is not None:
                with self.lock:
                    account.in_flight -= 1

    async def _h_v4(self, request: Request) -> Response:
        request_id = request_id_of(request)
        try:
            body = json.loads(await request.body() or b"null")
        except ValueError:
            body = None
        try:
            if not isinstance(body, dict) or body.get("method") != "GetRetargetingGoals":
                raise DirectError(55, "Method not found" if isinstance(body, dict) else "Invalid request")
            try:
                account, _payer = self._authenticate(request, body.get("token"))
            except DirectError as exc:
                if exc.code == 8000 and "Client-Login" in exc.detail:
                    # v4 names clients in param.Logins instead of the header
                    account = None
                else:
                    raise
            param = body.get("param") or {}
            logins = param.get("Logins")
            token = (request.headers.get("authorization") or "").partition(" ")[2] or body.get("token")
            if token == AGENCY_TOKEN:
                if not logins:
                    raise DirectError(71, "Required parameter missing", "Logins is required for agencies")
                foreign = [login for login in logins if login not in AGENCY_CLIENTS]
                if foreign:
                    raise DirectError(54, "No rights", f"Not a client of this agency: {foreign[0]}")
                targets = list(logins)
            else:
                targets = [account.login if account else ADVERTISER]
            with self.lock:
                data = [goal for login in targets for goal in self.goals(login)]
            return JSONResponse({"data": data}, headers={"RequestId": request_id})
        except DirectError as exc:
            return JSONResponse(
                {"error_code": exc.code, "error_str": exc.text, "error_detail": exc.detail},
                headers={"RequestId": request_id},
            )

    # ------------------------------------------------------------------ transactions
    # A call either fully applies (result + points) or not at all (152): handlers stage writes here.
    def _stage(self, account: Account, kind: str, key: int, value: dict[str, Any] | None) -> None:
        self._staged.append((account, kind, key, value))

    _staged: list[tuple[Account, str, int, dict[str, Any] | None]]

    def _commit(self, account: Account) -> None:
        for acct, kind, key, value in getattr(self, "_staged", []):
            store = getattr(acct, kind)
            if value is None:
                store.pop(key, None)
            else:
                store[key] = value
        self._staged = []

    def _rollback(self, account: Account) -> None:
        self._staged = []

    def _begin(self) -> None:
        self._staged = []

    # ------------------------------------------------------------------ helpers
    @staticmethod
    def _write_cost(results: list[dict[str, Any]]) -> int:
        failed = sum(1 for r in results if r.get("Errors"))
        return 10 + 2 * len(results) + 20 * failed

    @staticmethod
    def _page(params: dict[str, Any], items: list[dict[str, Any]], key: str) -> tuple[dict[str, Any], int]:
        page = params.get("Page") or {}
        if not isinstance(page, dict):
            raise DirectError(4002, "Invalid page", "Page must be an object")
        limit, offset = page.get("Limit", 10000), page.get("Offset", 0)
        if not isinstance(limit, int) or not 1 <= limit <= 10000 or not isinstance(offset, int) or offset < 0:
            raise DirectError(4002, "Invalid page", "Limit must be 1-10000 and Offset >= 0")
        chunk = items[offset : offset + limit]
        if not chunk:
            return {}, 1
        result: dict[str, Any] = {key: chunk}
        if offset + limit < len(items):
            result["LimitedBy"] = offset + len(chunk)
        return result, 2

    @staticmethod
    def _array(params: dict[str, Any], key: str, at_most: int | None = None, what: str = "objects") -> list[Any]:
        """``params[key]``: a non-empty array (else error 8000) of at most ``at_most`` ``what`` (else 9300)."""
        items = params.get(key)
        if not isinstance(items, list) or not items:
            raise DirectError(8000, "Invalid request", f"Field {key} is required")
        if at_most is not None and len(items) > at_most:
            raise DirectError(9300, "Too many objects in request", f"At most {at_most} {what} per call")
        return items

    @classmethod
    def _names(cls, params: dict[str, Any], key: str, allowed: Container[str]) -> list[str]:
        """``params[key]``: a non-empty array of names, each one of ``allowed``."""
        names = cls._array(params, key)
        bad = [n for n in names if n not in allowed]
        if bad:
            raise DirectError(8000, "Invalid request", f"Unknown value {bad[0]!r} in {key}")
        return names

    @staticmethod
    def _ids(params: dict[str, Any]) -> list[Any]:
        criteria = params.get("SelectionCriteria")
        if not isinstance(criteria, dict) or not isinstance(criteria.get("Ids"), list) or not criteria["Ids"]:
            raise DirectError(8000, "Invalid request", "Field SelectionCriteria.Ids is required")
        return criteria["Ids"]

    def _each_id(self, params: dict[str, Any], result_of: Callable[[Any], dict[str, Any]]) -> list[dict[str, Any]]:
        """A write by ``SelectionCriteria.Ids``: ``result_of(id)`` for each id, in order."""
        self._begin()
        return [result_of(object_id) for object_id in self._ids(params)]

    def _dictionaries_get(self, account: Account, params: dict[str, Any]) -> tuple[dict[str, Any], int]:
        names = self._names(params, "DictionaryNames", DICTIONARIES)
        return {name: [dict(i) for i in DICTIONARIES[name]] for name in names}, 1

    def _metrica_goal_ids(self, account: Account) -> set[int]:
        return {g["GoalID"] for g in self.goals(account.login) if g["Type"] == "goal"}

    def _goal_ids(self, account: Account) -> set[int]:
        return {g["GoalID"] for g in self._goals(account.login)}

    def _segment_goal_ids(self, account: Account) -> set[int]:
        return {g["GoalID"] for g in self._goals(account.login) if g.get("_audience")}

    @staticmethod
    def _rule_errors(rules: Any, metrica_goals: frozenset[int] | set[int] = frozenset()) -> list[dict[str, Any]]:
        if not isinstance(rules, list) or not rules:
            return [_note(5000, "Required field not specified", "Rules")]
        if len(rules) > MAX_RULES:
            return [_note(7000, "Number of elements exceeded", f"At most {MAX_RULES} rules per list")]
        total = 0
        for rule in rules:
            if not isinstance(rule, dict) or rule.get("Operator") not in ("ALL", "ANY", "NONE"):
                return [_note(5005, "Invalid value", "Operator must be ALL, ANY or NONE")]
            arguments = rule.get("Arguments")
            if not isinstance(arguments, list) or not arguments:
                return [_note(7000, "Number of elements exceeded or zero", "A rule needs arguments")]
            total += len(arguments)
            seen = set()
            for argument in arguments:
                external_id = argument.get("ExternalId") if isinstance(argument, dict) else None
                if not isinstance(external_id, int) or external_id <= 0:
                    return [_note(5005, "Invalid value", "ExternalId must be a positive number")]
                if external_id in seen:
                    return [_note(9802, "Element appears more than once", str(external_id))]
                seen.add(external_id)
                span = argument.get("MembershipLifeSpan")
                if span is None and external_id in metrica_goals:
                    return [_note(5000, "Required field not specified", f"MembershipLifeSpan of goal {external_id}")]
                if span is not None and (not isinstance(span, int) or not 1 <= span <= 540):
                    return [_note(5005, "Invalid value", "MembershipLifeSpan must be 1-540")]
        if total > MAX_ARGUMENTS:
            return [_note(7000, "Number of elements exceeded", f"At most {MAX_ARGUMENTS} goals and segments")]
        return []

    def _list_view(self, account: Account, item: dict[str, Any], names: list[str]) -> dict[str, Any]:
        goal_ids, segment_ids = self._goal_ids(account), self._segment_goal_ids(account)
        referenced = [a["ExternalId"] for r in item["Rules"] for a in r["Arguments"]]
        only_none = all(r["Operator"] == "NONE" for r in item["Rules"])
        view = {
            "Id": item["Id"],
            "Name": item["Name"],
            "Type": item["Type"],
            "Description": item.get("Description"),
            "Rules": [
                {
                    "Operator": r["Operator"],
                    "Arguments": [
                        {
                            "ExternalId": a["ExternalId"],
                            "MembershipLifeSpan": None
                            if a["ExternalId"] in segment_ids
                            else a.get("MembershipLifeSpan"),
                        }
                        for a in r["Arguments"]
                    ],
                }
                for r in item["Rules"]
            ],
            "IsAvailable": "YES" if all(g in goal_ids for g in referenced) else "NO",
            "Scope": "FOR_ADJUSTMENTS_ONLY" if only_none else "FOR_TARGETS_AND_ADJUSTMENTS",
            "AvailableForTargetsInAdGroupTypes": None if only_none else {"Items": list(TARGETABLE_GROUPS)},
        }
        return {k: view[k] for k in names}

    # ------------------------------------------------------------------ RetargetingLists
    def _retargetinglists_add(self, account: Account, params: dict[str, Any]) -> tuple[dict[str, Any], int]:
        self._begin()
        items = self._array(params, "RetargetingLists", at_most=1000, what="lists")
        results: list[dict[str, Any]] = []
        count = len(account.lists)
        for item in items:
            if not isinstance(item, dict):
                raise DirectError(8000, "Invalid request", "RetargetingLists items must be objects")
            unknown = set(item) - {"Name", "Type", "Description", "Rules"}
            if unknown:
                raise DirectError(8000, "Invalid request", f"Unknown field {sorted(unknown)[0]}")
            errors = self._list_errors(item, require=True, account=account)
            if not errors and count >= MAX_LISTS:
                errors = [_note(7001, "Maximum number of objects reached", f"At most {MAX_LISTS} lists")]
            if errors:
                results.append({"Errors": errors})
                continue
            list_id = self._next_list_id
            self._next_list_id += 1
            count += 1
            stored = {
                "Id": list_id,
                "Name": item["Name"],
                "Type": item.get("Type", "RETARGETING"),
                "Description": item.get("Description"),
                "Rules": _copy_rules(item["Rules"]),
            }
            self._stage(account, "lists", list_id, stored)
            results.append({"Id": list_id})
        return {"AddResults": results}, self._write_cost(results)

    def _list_errors(self, item: dict[str, Any], require: bool, account: Account | None = None) -> list[dict[str, Any]]:
        name = item.get("Name")
        if require or "Name" in item:
            if not isinstance(name, str) or not name.strip():
                return [_note(5000, "Required field not specified", "Name")]
            if len(name) > 250:
                return [_note(5001, "Length limit exceeded", "Name is longer than 250 characters")]
        description = item.get("Description")
        if description is not None and (not isinstance(description, str) or len(description) > 4096):
            return [_note(5001, "Length limit exceeded", "Description is longer than 4096 characters")]
        if "Type" in item and item["Type"] not in ("RETARGETING", "AUDIENCE"):
            return [_note(5005, "Invalid value", "Type must be RETARGETING or AUDIENCE")]
        if require or "Rules" in item:
            return self._rule_errors(item.get("Rules"), self._metrica_goal_ids(account) if account else set())
        return []

    def _retargetinglists_get(self, account: Account, params: dict[str, Any]) -> tuple[dict[str, Any], int]:
        names = self._names(params, "FieldNames", LIST_FIELDS)
        criteria = params.get("SelectionCriteria") or {}
        ids, types = criteria.get("Ids"), criteria.get("Types")
        items = [
            item
            for item in sorted(account.lists.values(), key=lambda x: x["Id"])
            if (not ids or item["Id"] in ids) and (not types or item["Type"] in types)
        ]
        return self._page(params, [self._list_view(account, i, names) for i in items], "RetargetingLists")

    def _retargetinglists_update(self, account: Account, params: dict[str, Any]) -> tuple[dict[str, Any], int]:
        self._begin()
        items = self._array(params, "RetargetingLists")
        for item in items:
            if not isinstance(item, dict) or "Id" not in item:
                raise DirectError(8000, "Invalid request", "Field Id is required")
            unknown = set(item) - {"Id", "Name", "Description", "Rules"}
            if unknown:  # Type is immutable and not part of the update item
                raise DirectError(8000, "Invalid request", f"Unknown field {sorted(unknown)[0]}")
        results = []
        for item in items:
            current = account.lists.get(item["Id"])
            errors = [_note(8800, "Object not found", f"Retargeting list {item['Id']}")] if current is None else []
            errors = errors or self._list_errors(item, require=False, account=account)
            if not errors and "Rules" in item:
                was_none = all(r["Operator"] == "NONE" for r in current["Rules"])  # type: ignore[index]
                now_none = all(r["Operator"] == "NONE" for r in item["Rules"])
                if was_none != now_none:
                    errors = [_note(6000, "Inconsistent object state", "ALL/ANY lists must keep an ALL/ANY rule")]
            if errors:
                results.append({"Errors": errors})
                continue
            updated = dict(current)  # type: ignore[arg-type]
            for key in ("Name", "Description"):
                if key in item:
                    updated[key] = item[key]
            if "Rules" in item:
                updated["Rules"] = _copy_rules(item["Rules"])
            self._stage(account, "lists", item["Id"], updated)
            results.append({"Id": item["Id"]})
        return {"UpdateResults": results}, self._write_cost(results)

    def _retargetinglists_delete(self, account: Account, params: dict[str, Any]) -> tuple[dict[str, Any], int]:
        def delete(list_id: Any) -> dict[str, Any]:
            if list_id not in account.lists:
                return _not_found("Retargeting list", list_id)
            if any(t["RetargetingListId"] == list_id for t in account.targets.values()):
                return {"Errors": [_note(8301, "Cannot delete object", "The list is used by audience targets")]}
            self._stage(account, "lists", list_id, None)
            return {"Id": list_id}

        results = self._each_id(params, delete)
        return {"DeleteResults": results}, self._write_cost(results)

    # ------------------------------------------------------------------ AudienceTargets
    def _audiencetargets_add(self, account: Account, params: dict[str, Any]) -> tuple[dict[str, Any], int]:
        self._begin()
        items = self._array(params, "AudienceTargets", at_most=1000, what="targets")
        results = []
        pending: list[dict[str, Any]] = []
        for item in items:
            if not isinstance(item, dict):
                raise DirectError(8000, "Invalid request", "AudienceTargets items must be objects")
            errors = self._target_errors(account, item, pending)
            if errors:
                results.append({"Errors": errors})
                continue
            group = account.ad_groups[item["AdGroupId"]]
            target = {
                "Id": self._next_target_id,
                "AdGroupId": item["AdGroupId"],
                "CampaignId": group["CampaignId"],
                "RetargetingListId": item.get("RetargetingListId"),
                "InterestId": item.get("InterestId"),
                "ContextBid": item.get("ContextBid", 300000),
                "StrategyPriority": item.get("StrategyPriority", "NORMAL"),
                "State": "ON",
            }
            self._next_target_id += 1
            pending.append(target)
            self._stage(account, "targets", target["Id"], target)
            results.append({"Id": target["Id"]})
        return {"AddResults": results}, self._write_cost(results)

    def _target_errors(
        self, account: Account, item: dict[str, Any], pending: list[dict[str, Any]]
    ) -> list[dict[str, Any]]:
        group_id = item.get("AdGroupId")
        if not isinstance(group_id, int):
            return [_note(5000, "Required field not specified", "AdGroupId")]
        has_list, has_interest = item.get("RetargetingListId") is not None, item.get("InterestId") is not None
        if not has_list and not has_interest:
            return [_note(5008, "None of the required fields given", "RetargetingListId or InterestId")]
        if has_list and has_interest:
            return [_note(5009, "Mutually exclusive fields given", "RetargetingListId and InterestId")]
        group = account.ad_groups.get(group_id)
        if group is None:
            return [_note(8800, "Object not found", f"Ad group {group_id}")]
        if group["Type"] not in TARGETABLE_GROUPS:
            return [_note(6001, "Wrong object type", f"Audience targets are not allowed in {group['Type']}")]
        bid = item.get("ContextBid")
        if bid is not None and (not isinstance(bid, int) or bid <= 0):
            return [_note(5005, "Invalid value", "ContextBid must be a positive number of micros")]
        if item.get("StrategyPriority") not in (None, "LOW", "NORMAL", "HIGH"):
            return [_note(5005, "Invalid value", "StrategyPriority must be LOW, NORMAL or HIGH")]
        in_group = [t for t in [*account.targets.values(), *pending] if t["AdGroupId"] == group_id]
        if has_list:
            list_id = item["RetargetingListId"]
            stored = account.lists.get(list_id)
            if stored is None:
                return [_note(8800, "Object not found", f"Retargeting list {list_id}")]
            if all(r["Operator"] == "NONE" for r in stored["Rules"]):
                return [_note(6000, "Inconsistent object state", "A NONE-only list is for bid adjustments only")]
            if any(t["RetargetingListId"] == list_id for t in in_group):
                return [_note(9801, "Object already exists", f"Ad group {group_id} already targets list {list_id}")]
        if len(in_group) >= MAX_TARGETS_PER_GROUP:
            return [_note(7001, "Maximum number of objects reached", "At most 50 audience targets per ad group")]
        return []

    def _audiencetargets_get(self, account: Account, params: dict[str, Any]) -> tuple[dict[str, Any], int]:
        criteria = params.get("SelectionCriteria")
        if criteria is None:
            raise DirectError(8000, "Invalid request", "Field SelectionCriteria is required")
        filters = {
            k: criteria.get(k) for k in ("Ids", "AdGroupIds", "CampaignIds", "RetargetingListIds", "InterestIds")
        }
        if not isinstance(criteria, dict) or not any(filters.values()):
            raise DirectError(4001, "Invalid SelectionCriteria", "Give Ids, AdGroupIds, CampaignIds or list ids")
        names = self._names(params, "FieldNames", TARGET_FIELDS)
        keys = {
            "Ids": "Id",
            "AdGroupIds": "AdGroupId",
            "CampaignIds": "CampaignId",
            "RetargetingListIds": "RetargetingListId",
            "InterestIds": "InterestId",
        }
        states = criteria.get("States")
        items = [
            {k: t[k] for k in names}
            for t in sorted(account.targets.values(), key=lambda x: x["Id"])
            if all(not values or t[keys[k]] in values for k, values in filters.items())
            and (not states or t["State"] in states)
        ]
        return self._page(params, items, "AudienceTargets")

    def _audiencetargets_delete(self, account: Account, params: dict[str, Any]) -> tuple[dict[str, Any], int]:
        def delete(target_id: Any) -> dict[str, Any]:
            if target_id not in account.targets:
                return _not_found("Audience target", target_id)
            self._stage(account, "targets", target_id, None)
            return {"Id": target_id}

        results = self._each_id(params, delete)
        return {"DeleteResults": results}, self._write_cost(results)

    def _switch(self, account: Account, params: dict[str, Any], state: str) -> list[dict[str, Any]]:
        def switch(target_id: Any) -> dict[str, Any]:
            target = account.targets.get(target_id)
            if target is None:
                return _not_found("Audience target", target_id)
            if target["State"] == state:
                code, text = (
                    (10242, "Audience target already suspended")
                    if state == "SUSPENDED"
                    else (10243, "Audience target not suspended")
                )
                return {"Id": target_id, "Warnings": [_note(code, text)]}
            self._stage(account, "targets", target_id, {**target, "State": state})
            return {"Id": target_id}

        return self._each_id(params, switch)

    def _audiencetargets_suspend(self, account: Account, params: dict[str, Any]) -> tuple[dict[str, Any], int]:
        results = self._switch(account, params, "SUSPENDED")
        return {"SuspendResults": results}, self._write_cost(results)

    def _audiencetargets_resume(self, account: Account, params: dict[str, Any]) -> tuple[dict[str, Any], int]:
        results = self._switch(account, params, "ON")
        return {"ResumeResults": results}, self._write_cost(results)

    def _audiencetargets_setbids(self, account: Account, params: dict[str, Any]) -> tuple[dict[str, Any], int]:
        self._begin()
        bids = self._array(params, "Bids")
        kinds = {k for b in bids if isinstance(b, dict) for k in ("Id", "AdGroupId", "CampaignId") if k in b}
        if len(kinds) > 1:
            raise DirectError(4005, "Mixed id kinds", "Use only one of Id, AdGroupId, CampaignId per request")
        results = []
        field_of = {"Id": "Id", "AdGroupId": "AdGroupId", "CampaignId": "CampaignId"}
        for bid in bids:
            kind = next((k for k in ("Id", "AdGroupId", "CampaignId") if k in bid), None)
            if kind is None:
                results.append({"Errors": [_note(5008, "None of the required fields given", "Id")]})
                continue
            answer: dict[str, Any] = {kind: bid[kind]}
            if bid.get("ContextBid") is None and bid.get("StrategyPriority") is None:
                answer["Errors"] = [_note(4003, "None of the required parameters given", "ContextBid")]
            elif bid.get("ContextBid") is not None and (
                not isinstance(bid["ContextBid"], int) or bid["ContextBid"] <= 0
            ):
                answer["Errors"] = [_note(5005, "Invalid value", "ContextBid must be a positive number of micros")]
            else:
                matched = [t for t in account.targets.values() if t[field_of[kind]] == bid[kind]]
                if not matched:
                    answer["Errors"] = [_note(8800, "Object not found", f"{kind} {bid[kind]}")]
                for target in matched:
                    changed = dict(target)
                    for key in ("ContextBid", "StrategyPriority"):
                        if bid.get(key) is not None:
                            changed[key] = bid[key]
                    self._stage(account, "targets", target["Id"], changed)
            results.append(answer)
        return {"SetBidsResults": results}, self._write_cost(results)

    # ------------------------------------------------------------------ control API
    def state(self) -> dict[str, Any]:
        """Per login: its retargeting lists, audience targets and units spent."""
        with self.lock:
            return {
                login: {
                    "lists": list(a.lists.values()),
                    "targets": list(a.targets.values()),
                    "units_spent": a.units_spent,
                }
                for login, a in self.accounts.items()
            }

    def control_routes(self) -> list[BaseRoute]:
        """``POST /_sandbox/yandex_direct/units`` ``{"remaining", "login"?}``, ``.../segments``
        ``{"id", "name", "status"?}``."""

        async def units(request: Request) -> Response:
            return await control_call(
                request,
                lambda body: self.set_units(int(body["remaining"]), body.get("login", ADVERTISER)),
                "{'remaining': int}",
            )

        async def segments(request: Request) -> Response:
            return await control_call(
                request,
                lambda body: self.add_audience_segment(
                    int(body["id"]), str(body["name"]), str(body.get("status", "processed"))
                ),
                "{'id': int, 'name': str}",
            )

        prefix = "/_sandbox/yandex_direct"
        return [
            Route(f"{prefix}/units", units, methods=["POST"]),
            Route(f"{prefix}/segments", segments, methods=["POST"]),
        ]


def _copy_rules(rules: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {
            "Operator": r["Operator"],
            "Arguments": [
                {
                    "ExternalId": a["ExternalId"],
                    **({"MembershipLifeSpan": a["MembershipLifeSpan"]} if a.get("MembershipLifeSpan") else {}),
                }
                for a in r["Arguments"]
            ],
        }
        for r in rules
    ]
