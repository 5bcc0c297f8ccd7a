"""Fake Criteo audience APIs (Retail Media stable + preview, Marketing Solutions).

Follows Criteo's OpenAPI specs and its developer portal (developers.criteo.com).

Behaviour worth knowing when writing clients:

* ``POST /oauth2/token`` (form ``client_id``, ``client_secret``, ``grant_type=client_credentials``)
  answers ``{"access_token", "token_type": "Bearer", "expires_in": 900, "refresh_token": null}``; a wrong
  pair answers 401 ``{"error": "invalid_client"}``. Tokens expire on the fake's clock
  (``token_lifetime_seconds``); :meth:`CriteoFake.revoke_tokens` invalidates every token. Every other
  path needs ``Authorization: Bearer <token>``, else 401 with ``errors[].code``
  ``authorization-token-expired`` / ``authorization-token-invalid``.
* Versions ``2026-07``, ``2027-01``, ``preview`` and ``2026-01``; the last answers with
  ``Deprecation: true`` and ``Sunset`` headers (it sunsets on 27 January 2027). Unknown versions: 404.
* Retail Media (account ``424242``, retailers ``311`` and ``312``) and Marketing Solutions (advertiser
  ``98765``) share nothing. Retail Media audience create/update/delete/sizes exist in ``preview`` only.
* Partial approval: bulk calls answer 200; refused items are left out of ``data`` and reported in
  ``warnings`` (create/update: ``name-must-not-be-empty``, ``name-must-be-unique`` within the
  account+retailer or advertiser, ``segment-not-found``, ``audience-not-found``) or in ``errors``
  (delete of a segment used by an audience: ``segment-must-not-be-used-in-audience``, the example
  of Criteo's "Audience Segments" page), each with ``instance`` ``@data/<index>``.
* Contact lists: at most ``max_identifiers`` (50,000) per add/remove, else 400; an identifier type
  other than the segment's: 400 ``identifier-type-mismatch`` (the real behaviour is unverified).
  Invalid identifiers (an e-mail that is neither a SHA-256 hex nor has an ``@``; a phone that is
  neither SHA-256 nor ``+digits``) are counted in ``nbInvalidIdentifiers``. Contact-list statistics
  show the identifiers as of the last computation window (00:00 / 12:00 UTC on the fake's clock)
  unless ``stats_after_window`` is 0; move the clock with :meth:`~.VendorFake.advance_time`.
* 250 calls per minute per client id (``calls_per_minute``, ``rate_window_seconds``): over it, 429 with
  ``x-ratelimit-limit``, ``x-ratelimit-remaining`` and ``x-ratelimit-reset`` (epoch seconds) and no
  ``Retry-After``. The window runs on the wall clock, not the movable one, so moving the clock
  never makes a client sleep for hours. It counts every call of the app to every list for the
  fake's whole life (a full sync of 1M identifiers is 21 calls: about 12 such syncs a minute);
  ``calls_per_minute`` 0 turns it off.
"""

from __future__ import annotations

import functools
import json
import re
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar
from urllib.parse import parse_qsl

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from airflow_audience_provider.lazy_strings import LazyStrings
from airflow_audience_provider.sandbox.base import (
    ApiError,
    ErrorReply,
    FakeRateLimiter,
    Quota,
    VendorFake,
    control_error,
    json_object_body,
    new_hex_id,
    request_id_of,
)

__all__ = ["CriteoFake"]

CLIENT_ID = "criteo-sandbox-client"
CLIENT_SECRET = "criteo-sandbox-secret+/=7e1"  # '+' on purpose: unencoded, Criteo answers invalid_client
ACCOUNT_ID = "424242"
RETAILER_IDS = ("311", "312")
ADVERTISER_ID = "98765"
VERSIONS = ("2026-07", "2027-01", "2026-01", "preview")
DEPRECATED = {"2026-01": "Wed, 27 Jan 2027 00:00:00 GMT"}
COMPUTATION_HOURS = (0, 12)

RM_SEGMENT_TYPES = ("Email", "UserIdentifier", "IdentityLink", "CustomerId", "PhoneNumber")
RM_AMENDMENT_TYPES = (*RM_SEGMENT_TYPES, "Gum")
MS_AMENDMENT_TYPES = ("email", "madid", "identityLink", "gum", "phoneNumber")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_PHONE = re.compile(r"^\+[1-9][0-9]{6,14}$")
_HEX_DIGITS = b"0123456789abcdef"
_DIGEST_ARRAY_KEY = b'"identifiers": ["'
# Stands in for the digest array while the rest of the body is parsed; a JSON escape, so a body
# without any backslash cannot hold this string itself.
_SPLICED = "\x00identifiers"


class DigestArray(LazyStrings):
    """Lower-case SHA-256 hex digests kept as the JSON array text they arrived in (``"<hex>", "<hex>"``).

    An amendment records them as they are; the strings are made when someone reads the list
    (:meth:`CriteoFake.members`), not for each request.
    """

    def __init__(self, text: bytes | bytearray, count: int) -> None:
        super().__init__(count)
        self.text = text

    def split(self) -> list[str]:
        return self.text[1:-1].decode("ascii").split('", "')


def split_digest_body(raw: bytes) -> tuple[dict[str, Any], DigestArray] | None:
    """``json.loads(raw)`` for an amendment body whose ``identifiers`` are lower-case SHA-256 hex digests.

    The array (``["<64 hex>", "<64 hex>", ...]``, as hashing clients write it) is checked with a
    few whole-buffer operations instead of a JSON parse; the rest of the body is parsed with the
    array replaced by a placeholder string. Returns ``(body, digests)`` where ``body`` is
    ``json.loads(raw)`` except that ``body["data"]["attributes"]["identifiers"]`` is ``digests``
    (the same strings); None whenever that cannot be shown (any other layout, a backslash
    anywhere, a key written twice): the caller then parses the whole body.
    """
    start = raw.find(_DIGEST_ARRAY_KEY)
    if start < 0 or b"\\" in raw:
        return None
    opening = start + len(_DIGEST_ARRAY_KEY) - 2  # the "["
    closing = raw.find(b"]", opening)
    if closing < 0:
        return None
    # The array's text is raw[first:closing]: n strings of 64 lower-case hex digits in quotes, each
    # but the last followed by ", ". Copied once (the copy is what the amendment keeps), then each
    # byte mapped to its class must give the cached pattern of n digests.
    first = opening + 1
    size = closing - first
    n = (size + 2) // 68
    if n < 1 or size != 68 * n - 2:
        return None
    with memoryview(raw) as view:
        text = bytearray(view[first:closing])
    # bytearray.translate without deletions: about 0.9 ms for 50,000 digests (the deleting
    # bytes.translate of the whole body it replaces: ~1.3 ms, plus strided checks).
    if text.translate(_DIGEST_MARKS) != _digest_pattern(n):
        return None
    try:
        body = json.loads(raw[:opening] + b'"\\u0000identifiers"' + raw[closing + 1 :])
    except ValueError:
        return None
    data = body.get("data") if isinstance(body, dict) else None
    attributes = data.get("attributes") if isinstance(data, dict) else None
    # The placeholder can only come from the splice: it stood where the value of identifiers is.
    if not isinstance(attributes, dict) or attributes.get("identifiers") != _SPLICED:
        return None
    digests = DigestArray(text, n)
    attributes["identifiers"] = digests
    return body, digests


#: Each byte to its class: lower-case hex digits to "0"; '"', "," and " " to themselves; the rest to ".".
_DIGEST_MARKS = bytes(0x30 if b in _HEX_DIGITS else b if b in b'", ' else 0x2E for b in range(256))


@functools.lru_cache(maxsize=4)
def _digest_pattern(n: int) -> bytes:
    """What :data:`_DIGEST_MARKS` makes of the text of an array of ``n`` digests (brackets excluded)."""
    digest = b'"' + b"0" * 64 + b'"'
    return b", ".join([digest] * n)


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _last_window(ts: float) -> float:
    """The latest computation window at or before ``ts``."""
    moment = datetime.fromtimestamp(ts, UTC)
    midnight = moment.replace(hour=0, minute=0, second=0, microsecond=0)
    candidates = [midnight + timedelta(days=d, hours=h) for d in (-1, 0) for h in COMPUTATION_HOURS]
    return max(c for c in candidates if c <= moment).timestamp()


#: The title Criteo gives each per-item problem code.
_PROBLEM_TITLES = {
    "name-must-not-be-empty": "Name must not be empty",
    "name-must-be-unique": "Name must be unique",
    "retailer-not-found": "Retailer not found",
    "segment-not-found": "Segment not found",
    "audience-not-found": "Audience not found",
    "invalid-algebra": "Invalid algebra",
    "segment-must-not-be-used-in-audience": "Segment must not be used in an audience",
    "segment-type-not-supported": "Only contact-list segments can be created",
}


class _Outcome:
    """A bulk answer being built: its ``data`` and the per-item ``warnings`` and ``errors``."""

    def __init__(self, request_id: str) -> None:
        self.request_id = request_id
        self.data: list[dict[str, Any]] = []
        self.warnings: list[dict[str, Any]] = []
        self.errors: list[dict[str, Any]] = []

    def warn(self, index: int, code: str, detail: str, title: str | None = None) -> None:
        self.warnings.append(self.problem(index, code, detail, title))

    def error(self, index: int, code: str, detail: str, title: str | None = None) -> None:
        self.errors.append(self.problem(index, code, detail, title))

    def problem(self, index: int, code: str, detail: str, title: str | None = None) -> dict[str, Any]:
        """A problem about item ``index`` of the request, in Criteo's shape (``title``: the code's usual one)."""
        return {
            "traceId": self.request_id,
            "traceIdentifier": self.request_id,
            "type": "validation",
            "code": code,
            "instance": f"@data/{index}",
            "title": title or _PROBLEM_TITLES[code],
            "detail": detail,
        }

    def body(self) -> dict[str, Any]:
        return {"data": self.data, "warnings": self.warnings, "errors": self.errors}


class CriteoFake(VendorFake):
    """In-memory Criteo Retail Media account and Marketing Solutions advertiser, served over HTTP.

    Python API for tests: :attr:`segments`, :attr:`audiences`, :meth:`members`, :meth:`recount`, :meth:`add_segment`,
    :meth:`add_audience`, :meth:`revoke_tokens`, :meth:`rotate_secret`, :meth:`line_item_targets`,
    plus the base class' faults, request log, configure, advance_time and reset.
    """

    name: ClassVar[str] = "criteo"
    conn_id: ClassVar[str] = "criteo_default"
    default_config: ClassVar[dict[str, float | None]] = {
        **VendorFake.default_config,
        "processing_seconds": 0.0,
        "token_lifetime_seconds": 900.0,
        "calls_per_minute": 250.0,
        "rate_window_seconds": 60.0,
        "max_identifiers": 50_000.0,
        # 1 = statistics show the list as of the last 0h/12h window; 0 = at once.
        "stats_after_window": 1.0,
    }

    client_id: str = CLIENT_ID
    account_id: str = ACCOUNT_ID
    advertiser_id: str = ADVERTISER_ID

    # ------------------------------------------------------------------ state
    def reset_state(self) -> None:
        self._secret = CLIENT_SECRET
        self._issued = 0
        self._tokens: dict[str, float] = {}
        self._quotas = FakeRateLimiter()
        self._segments: dict[str, dict[str, Any]] = {}
        self._audiences: dict[str, dict[str, Any]] = {}
        # (time, operation, identifiers): the set is built when :meth:`members` is asked, not per request.
        self._ops: dict[str, list[tuple[float, str, Sequence[str]]]] = {}
        # Per list, and apart for "now" and "as of a time": the members after its first n operations (n, set),
        # brought forward as later ones are asked for, so a count costs the operations since the last one
        # asked, not the list's whole history.
        self._views: dict[tuple[str, bool], tuple[int, set[str]]] = {}
        self._targets: dict[str, dict[str, Any]] = {}
        self._ad_sets: dict[str, str] = {}
        self._amendments = 0
        self._amendment_faults: list[tuple[int, int]] = []  # (after this many amendments, status), one each
        self._short_answers: list[tuple[int, bool]] = []  # (identifiers dropped, omit the invalid count), one each
        self._next_id = {
            "rm_segment": 730011223344,
            "ms_segment": 120001,
            "rm_audience": 830011220001,
            "ms_audience": 220001,
        }
        seeded = self.now() - 30 * 86400
        # An exclusion list every example can use, already computed and used by no audience.
        self.add_segment("Opted-out customers", retailer_id="311", identifier_type="Email", at=seeded)
        self.add_segment("All shoppers (events)", retailer_id="311", kind="Events", at=seeded)
        self.add_segment("Newsletter readers", api="marketing_solutions", at=seeded)

    def _new_id(self, kind: str) -> str:
        value = self._next_id[kind]
        self._next_id[kind] = value + 1
        return str(value)

    def _new_record(
        self, kind: str, api: str, retailer_id: str, name: str, description: str | None, at: float, **fields: Any
    ) -> dict[str, Any]:
        """A stored segment or audience (``kind``): what both hold, with ``fields`` before the times."""
        rm = api == "retail_media"
        return {
            "id": self._new_id(f"{'rm' if rm else 'ms'}_{kind}"),
            "api": api,
            "owner": self.account_id if rm else self.advertiser_id,
            "retailerId": retailer_id if rm else None,
            "name": name,
            "description": description,
            **fields,
            "createdAt": at,
            "updatedAt": at,
        }

    def add_segment(
        self,
        name: str,
        *,
        api: str = "retail_media",
        retailer_id: str = "311",
        identifier_type: str = "Email",
        kind: str = "ContactList",
        description: str | None = None,
        at: float | None = None,
    ) -> dict[str, Any]:
        """Create a segment directly (e.g. an Events segment, which the API cannot create)."""
        with self.lock:
            now = self.now() if at is None else at
            rm = api == "retail_media"
            seg = self._new_record(
                "segment",
                api,
                retailer_id,
                name,
                description,
                now,
                type=kind,
                identifierType=identifier_type if (rm and kind == "ContactList") else None,
            )
            self._segments[seg["id"]] = seg
            self._ops[seg["id"]] = []
            return self._render_segment(seg)

    def add_audience(
        self, name: str, algebra: dict[str, Any], *, api: str = "retail_media", retailer_id: str = "311"
    ) -> dict[str, Any]:
        """Create an audience directly."""
        with self.lock:
            aud = self._new_record("audience", api, retailer_id, name, None, self.now(), algebra=algebra)
            self._audiences[aud["id"]] = aud
            return self._render_audience(aud)

    @property
    def segments(self) -> list[dict[str, Any]]:
        """Every audience segment, as the API renders it."""
        with self.lock:
            return [self._render_segment(s) for s in self._segments.values()]

    @property
    def audiences(self) -> list[dict[str, Any]]:
        """Every audience, as the API renders it."""
        with self.lock:
            return [self._render_audience(a) for a in self._audiences.values()]

    def members(self, segment_id: str, *, as_of: float | None = None) -> set[str]:
        """The identifiers in a contact list now (or as of a time on the fake's clock)."""
        with self.lock:
            return set(self._members_view(str(segment_id), as_of))

    def recount(self, segment_id: str, *, as_of: float | None = None) -> int:
        """The list's size replayed from its first operation (what :meth:`members` maintains), for tests."""
        with self.lock:
            return len(self._replay(self._ops.get(str(segment_id), []), 0, set(), as_of)[1])

    @staticmethod
    def _replay(
        ops: list[tuple[float, str, Sequence[str]]], start: int, members: set[str], as_of: float | None
    ) -> tuple[int, set[str]]:
        """Apply ``ops[start:]`` up to ``as_of`` to ``members`` (changed in place): (operations applied, set)."""
        index = start
        for at, op, ids in ops[start:]:
            if as_of is not None and at > as_of:
                break
            if op == "add":
                members.update(ids)
            elif op == "remove":
                members.difference_update(ids)
            else:
                members.clear()
            index += 1
        return index, members

    def _members_view(self, segment_id: str, as_of: float | None) -> set[str]:
        """The list's members as of ``as_of``; call it under the lock, and do not change the set.

        The kept view moves forward only: a time before its last operation replays from the start.
        """
        ops = self._ops.get(segment_id, [])
        key = (segment_id, as_of is None)
        applied, members = self._views.get(key, (0, set()))
        if applied > len(ops) or (applied and as_of is not None and ops[applied - 1][0] > as_of):
            applied, members = 0, set()
        applied, members = self._replay(ops, applied, members, as_of)
        if segment_id in self._ops:
            self._views[key] = (applied, members)
        return members

    def fail_amendments(self, after: int, count: int = 1, status: int = 500) -> None:
        """Deterministic mid-upload faults: once ``after`` add/remove calls succeeded, the next ``count``
        answer ``status`` (without applying anything)."""
        with self.lock:
            self._amendment_faults.extend([(int(after), int(status))] * int(count))

    def short_count_amendments(self, dropped: int, count: int = 1, *, omit_invalid_count: bool = False) -> None:
        """The next ``count`` add/remove calls leave their last ``dropped`` valid identifiers out and count
        only what they applied: ``nbValidIdentifiers`` + ``nbInvalidIdentifiers`` is less than was sent.

        Criteo documents both counts as optional and does not say they add up to what was sent (nor
        how it treats duplicates), so such an answer is allowed; the fake takes the strict reading:
        the identifiers not counted were not applied. ``omit_invalid_count``: the answer has no
        ``nbInvalidIdentifiers`` at all.
        """
        with self.lock:
            self._short_answers.extend([(int(dropped), bool(omit_invalid_count))] * int(count))

    def revoke_tokens(self) -> None:
        """Every issued token stops working (a 401 ``authorization-token-invalid`` follows)."""
        with self.lock:
            self._tokens.clear()

    def rotate_secret(self, secret: str) -> None:
        """The app's secret changes: the old one gets ``invalid_client``."""
        with self.lock:
            self._secret = secret
            self._tokens.clear()

    def line_item_targets(self, line_item_id: str) -> dict[str, Any]:
        """A line item's audience targeting: ``{"scope", "audienceIds"}``."""
        with self.lock:
            return dict(self._targets.get(str(line_item_id), {"scope": "include", "audienceIds": []}))

    @property
    def tokens_issued(self) -> int:
        with self.lock:
            return self._issued

    # ------------------------------------------------------------------ connection, envelopes
    def connection(self, base_url: str) -> dict[str, Any]:
        return {
            "conn_type": "criteo",
            "host": base_url,
            "login": self.client_id,
            "password": self._secret,
            "extra": {
                "api_version": "2026-07",
                "api": "retail_media",
                "account_id": self.account_id,
                "advertiser_id": self.advertiser_id,
                "ui_url": f"{base_url}/ui",
            },
        }

    def error_envelope(self, reply: ErrorReply) -> Response:
        status = reply.status
        if reply.path == "/oauth2/token" and status in (400, 401):
            body = {"error": reply.code or "invalid_client", "error_description": reply.message}
            return JSONResponse(body, status, headers=reply.headers)
        kind = {400: "validation", 401: "authentication", 403: "authorization", 404: "validation", 429: "quota"}
        default_code = {
            400: "validation-error",
            401: "authorization-token-invalid",
            403: "forbidden",
            404: "resource-not-found",
            410: "version-decommissioned",
            429: "too-many-requests",
        }
        problem = {
            "traceId": reply.request_id,
            "traceIdentifier": reply.request_id,
            "type": kind.get(status, "availability" if status >= 500 else "unknown"),
            "code": reply.code or default_code.get(status, "internal-error" if status >= 500 else "error"),
            "instance": reply.path,
            "title": reply.message,
            "detail": reply.message,
        }
        return JSONResponse({"errors": [problem], "warnings": []}, status, headers=reply.headers)

    def check_request(self, request: Request) -> None:
        if request.url.path == "/oauth2/token":
            return
        header = request.headers.get("authorization") or ""
        token = header[7:] if header.lower().startswith("bearer ") else ""
        with self.lock:
            expires = self._tokens.get(token)
            if expires is None:
                raise ApiError(401, "Invalid token", "authorization-token-invalid")
            if self.now() >= expires:
                raise ApiError(401, "Expired token", "authorization-token-expired")
            limit = int(self.config.get("calls_per_minute") or 0)
            window = float(self.config.get("rate_window_seconds") or 60.0)
            full = self._quotas.hit(time.time(), Quota("calls", limit or None, window))
            if full is not None:
                raise ApiError(
                    429,
                    f"API rate limit exceeded: {limit} calls per {window:g} s",
                    headers={
                        "x-ratelimit-limit": str(limit),
                        "x-ratelimit-remaining": "0",
                        "x-ratelimit-reset": f"{full.resets_at:.3f}",
                    },
                )

    def rate_limit_key(self, request: Request) -> str | None:
        return None  # the per-minute quota above replaces the base's per-second one

    def rate_account(self, request: Request) -> str:
        """Criteo counts calls per app: every request with a token this fake issued is the app's."""
        header = request.headers.get("authorization") or ""
        with self.lock:
            if header[7:] in self._tokens:
                return f"app-{self.client_id}"
        return super().rate_account(request)

    # ------------------------------------------------------------------ helpers
    def _answer(self, body: Any, version: str, status: int = 200) -> Response:
        headers = {}
        if version in DEPRECATED:
            headers = {"Deprecation": "true", "Sunset": DEPRECATED[version]}
        if status == 204:
            return Response(status_code=204, headers=headers)
        return JSONResponse(body, status, headers=headers)

    @staticmethod
    def _version(request: Request) -> str:
        version = request.path_params["version"]
        if version not in VERSIONS:
            raise ApiError(404, f"API version {version!r} does not exist", "version-not-found")
        return version

    @staticmethod
    async def _body(request: Request) -> dict[str, Any]:
        return await json_object_body(
            request,
            lambda detail: ApiError(400, "The request body is not valid JSON", "invalid-json"),
            lambda: ApiError(400, "The request body must be a JSON object", "invalid-json"),
        )

    @staticmethod
    def _items(body: dict[str, Any]) -> list[dict[str, Any]]:
        data = body.get("data")
        if not isinstance(data, list) or not all(isinstance(i, dict) for i in data):
            raise ApiError(400, "'data' must be an array of resources", "validation-error")
        return data

    @staticmethod
    def _single(body: dict[str, Any]) -> dict[str, Any]:
        data = body.get("data")
        if data is None:
            return {}
        if not isinstance(data, dict):
            raise ApiError(400, "'data' must be an object", "validation-error")
        attributes = data.get("attributes") or {}
        if not isinstance(attributes, dict):
            raise ApiError(400, "'data.attributes' must be an object", "validation-error")
        return attributes

    def _account(self, request: Request) -> None:
        if request.path_params.get("account") != self.account_id:
            raise ApiError(403, "The application has no consent for this account", "forbidden")

    @staticmethod
    def _attributes(obj: dict[str, Any], **fields: Any) -> dict[str, Any]:
        """What a rendered segment and audience share: name, description, ``fields``, times and owner."""
        attributes: dict[str, Any] = {
            "name": obj["name"],
            "description": obj["description"],
            **fields,
            "createdAt": _iso(obj["createdAt"]),
            "updatedAt": _iso(obj["updatedAt"]),
        }
        if obj["api"] == "retail_media":
            attributes.update(
                accountId=obj["owner"], retailerId=obj["retailerId"], channels=["Onsite", "Offsite"], createdById=None
            )
        else:
            attributes["advertiserId"] = obj["owner"]
        return attributes

    def _render_segment(self, seg: dict[str, Any]) -> dict[str, Any]:
        rm = seg["api"] == "retail_media"
        attributes = self._attributes(seg, type=seg["type"])
        if rm:
            attributes.update(
                contactList=(
                    {"identifierType": seg["identifierType"], "isReadOnly": False, "sharingStatus": "NotShared"}
                    if seg["type"] == "ContactList"
                    else None
                ),
                events=(
                    {"shopperActivity": "Buy", "lookbackDays": "Last30Days", "categoryIds": [], "brandIds": []}
                    if seg["type"] == "Events"
                    else None
                ),
            )
        else:
            attributes["contactList"] = {"isReadOnly": False}
        return {
            "id": seg["id"],
            "type": "RetailMediaAudienceSegment" if rm else "AudienceSegment",
            "attributes": attributes,
        }

    def _render_audience(self, aud: dict[str, Any]) -> dict[str, Any]:
        rm = aud["api"] == "retail_media"
        attributes = self._attributes(aud, algebra=aud["algebra"])
        if not rm:
            attributes["adSetIds"] = sorted(k for k, v in self._ad_sets.items() if v == aud["id"])
        return {"id": aud["id"], "type": "RetailMediaAudience" if rm else "Audience", "attributes": attributes}

    def _owned(self, store: dict[str, dict[str, Any]], api: str, owner: str) -> list[dict[str, Any]]:
        return [o for o in store.values() if o["api"] == api and o["owner"] == owner]

    @staticmethod
    def _page(request: Request, items: list[dict[str, Any]], max_limit: int) -> dict[str, Any]:
        try:
            offset = int(request.query_params.get("offset", 0))
            limit = int(request.query_params.get("limit", 50))
        except ValueError:
            raise ApiError(400, "offset and limit must be integers", "validation-error") from None
        if offset < 0 or not 0 <= limit <= max_limit:
            raise ApiError(400, f"limit must be between 0 and {max_limit}", "validation-error")
        return {
            "data": items[offset : offset + limit],
            "meta": {"limit": limit, "offset": offset, "totalItems": len(items)},
            "warnings": [],
            "errors": [],
        }

    def _algebra_problem(self, node: Any, api: str, owner: str) -> str | None:
        """Why an algebra is invalid, or None (each node: exactly one of the four keys)."""
        if not isinstance(node, dict):
            return "algebra nodes must be objects"
        present = [k for k in ("audienceSegmentId", "and", "or", "not") if node.get(k) is not None]
        if len(present) != 1:
            return f"an algebra node must have exactly one of audienceSegmentId, and, or, not (has {present})"
        key = present[0]
        if key == "audienceSegmentId":
            seg = self._segments.get(str(node[key]))
            if seg is None or seg["api"] != api or seg["owner"] != owner:
                return f"segment {node[key]} not found"
            return None
        if key == "not":
            return self._algebra_problem(node["not"], api, owner)
        if not isinstance(node[key], list) or not node[key]:
            return f"'{key}' must be a non-empty array"
        for child in node[key]:
            problem = self._algebra_problem(child, api, owner)
            if problem:
                return problem
        return None

    def _uses(self, node: dict[str, Any]) -> set[str]:
        if node.get("audienceSegmentId") is not None:
            return {str(node["audienceSegmentId"])}
        if node.get("not") is not None:
            return self._uses(node["not"])
        return set().union(*(self._uses(c) for c in (node.get("and") or node.get("or") or [])))

    def _visible_members(self, segment_id: str) -> set[str]:
        """What statistics and sizes show (under the lock; the caller must not change the set)."""
        as_of = _last_window(self.now()) if self.config.get("stats_after_window") else None
        return self._members_view(segment_id, as_of)

    def _evaluate(self, node: dict[str, Any], universe: set[str]) -> set[str]:
        if node.get("audienceSegmentId") is not None:
            return self._visible_members(str(node["audienceSegmentId"]))
        if node.get("not") is not None:
            return universe - self._evaluate(node["not"], universe)
        children = [self._evaluate(c, universe) for c in (node.get("and") or node.get("or") or [])]
        if node.get("and"):
            return set.intersection(*children) if children else set()
        return set().union(*children)

    # ------------------------------------------------------------------ routes
    def routes(self) -> list[BaseRoute]:
        rm = "/{version}/retail-media"
        acc = rm + "/accounts/{account}"
        ms = "/{version}/marketing-solutions"
        return [
            Route("/oauth2/token", self._token, methods=["POST"]),
            Route(rm + "/me", self._me, methods=["GET"]),
            Route(ms + "/me", self._me, methods=["GET"]),
            Route("/{version}/advertisers/me", self._advertisers_me, methods=["GET"]),
            # Retail Media segments
            Route(acc + "/audience-segments/create", self._seg_create, methods=["POST"]),
            Route(acc + "/audience-segments", self._seg_update, methods=["PATCH"]),
            Route(acc + "/audience-segments/delete", self._seg_delete, methods=["POST"]),
            Route(acc + "/audience-segments/search", self._seg_search, methods=["POST"]),
            Route(acc + "/audience-segments/compute-sizes", self._seg_sizes, methods=["POST"]),
            Route(acc + "/audience-segments/estimate-size", self._rm_seg_estimate, methods=["POST"]),
            Route(acc + "/audience-segments/{segment}/contact-list", self._stats, methods=["GET"]),
            Route(rm + "/audience-segments/{segment}/contact-list/add-remove", self._amend, methods=["POST"]),
            Route(rm + "/audience-segments/{segment}/contact-list/clear", self._clear, methods=["POST"]),
            # Retail Media audiences (search stable, the rest preview)
            Route(acc + "/audiences/search", self._aud_search, methods=["POST"]),
            Route(acc + "/audiences/create", self._aud_create, methods=["POST"]),
            Route(acc + "/audiences", self._aud_update, methods=["PATCH"]),
            Route(acc + "/audiences/delete", self._aud_delete, methods=["POST"]),
            Route(acc + "/audiences/compute-sizes", self._aud_sizes, methods=["POST"]),
            Route(acc + "/audiences/estimate-size", self._aud_estimate, methods=["POST"]),
            # Retail Media line-item targeting
            Route(
                rm + "/preferred-line-items/{line_item}/targeting/audiences", self._targeting, methods=["GET", "PUT"]
            ),
            Route(
                rm + "/preferred-line-items/{line_item}/targeting/audiences/append",
                self._targeting_append,
                methods=["POST"],
            ),
            Route(
                rm + "/preferred-line-items/{line_item}/targeting/audiences/delete",
                self._targeting_delete,
                methods=["POST"],
            ),
            # Marketing Solutions
            Route(ms + "/audience-segments/create", self._seg_create, methods=["POST"]),
            Route(ms + "/audience-segments", self._seg_update, methods=["PATCH"]),
            Route(ms + "/audience-segments/delete", self._seg_delete, methods=["POST"]),
            Route(ms + "/audience-segments/search", self._seg_search, methods=["POST"]),
            Route(ms + "/audience-segments/compute-sizes", self._seg_sizes, methods=["POST"]),
            Route(ms + "/audience-segments/estimate-size", self._seg_estimate, methods=["POST"]),
            Route(ms + "/audience-segments/in-market-brands", self._in_market_brands, methods=["GET"]),
            Route(ms + "/audience-segments/in-market-interests", self._in_market_interests, methods=["GET"]),
            Route(ms + "/audience-segments/{segment}/contact-list/statistics", self._stats, methods=["GET"]),
            Route(ms + "/audience-segments/{segment}/contact-list", self._amend, methods=["PATCH"]),
            Route(ms + "/audience-segments/{segment}/contact-list", self._clear, methods=["DELETE"]),
            Route(ms + "/audiences/search", self._aud_search, methods=["POST"]),
            Route(ms + "/audiences/create", self._aud_create, methods=["POST"]),
            Route(ms + "/audiences", self._aud_update, methods=["PATCH"]),
            Route(ms + "/audiences/delete", self._aud_delete, methods=["POST"]),
            Route(ms + "/audiences/compute-sizes", self._aud_sizes, methods=["POST"]),
            Route(ms + "/audiences/estimate-size", self._aud_estimate, methods=["POST"]),
            Route(ms + "/ad-sets/{ad_set}/audience", self._ad_set_audience, methods=["PUT"]),
        ]

    def state(self) -> dict[str, Any]:
        """Segments, audiences and how many tokens were issued."""
        return {"segments": self.segments, "audiences": self.audiences, "tokens_issued": self.tokens_issued}

    def control_routes(self) -> list[BaseRoute]:
        """``/_sandbox/criteo/{revoke_tokens,members/{segment}}``."""

        async def revoke(request: Request) -> Response:
            self.revoke_tokens()
            return JSONResponse({"revoked": True})

        async def members(request: Request) -> Response:
            try:
                return JSONResponse({"count": len(self.members(request.path_params["segment"]))})
            except KeyError as exc:
                return control_error(str(exc), 404)

        p = f"/_sandbox/{self.name}"
        return [
            Route(p + "/revoke_tokens", revoke, methods=["POST"]),
            Route(p + "/members/{segment}", members, methods=["GET"]),
        ]

    @staticmethod
    def _api_of(request: Request) -> str:
        return "retail_media" if "/retail-media" in request.url.path else "marketing_solutions"

    # -- auth and /me
    async def _token(self, request: Request) -> Response:
        form = dict(parse_qsl((await request.body()).decode("utf-8", "replace")))
        if form.get("grant_type") != "client_credentials":
            raise ApiError(400, "grant_type must be client_credentials", "unsupported_grant_type")
        with self.lock:
            if form.get("client_id") != self.client_id or form.get("client_secret") != self._secret:
                raise ApiError(401, "Client authentication failed", "invalid_client")
            lifetime = float(self.config.get("token_lifetime_seconds") or 900)
            token = "crt-" + new_hex_id()
            self._tokens[token] = self.now() + lifetime
            self._issued += 1
        return JSONResponse(
            {"access_token": token, "token_type": "Bearer", "expires_in": int(lifetime), "refresh_token": None}
        )

    async def _me(self, request: Request) -> Response:
        version = self._version(request)
        service = "RetailMedia" if self._api_of(request) == "retail_media" else "MarketingSolutions"
        body = {
            "data": {
                "type": "Application",
                "attributes": {
                    "applicationId": 4711,
                    "name": "airflow-audience-sandbox",
                    "organizationId": 42,
                    "criteoService": service,
                    "description": "Criteo sandbox app",
                },
            },
            "warnings": [],
            "errors": [],
        }
        return self._answer(body, version)

    # -- segments
    def _owner_of(self, request: Request, attributes: dict[str, Any] | None = None) -> tuple[str, str]:
        api = self._api_of(request)
        if api == "retail_media":
            self._account(request)
            return api, self.account_id
        return api, str((attributes or {}).get("advertiserId") or self.advertiser_id)

    async def _bulk_items(
        self, request: Request, *, preview_only: bool = False
    ) -> tuple[str, list[dict[str, Any]], _Outcome]:
        """A bulk write's API version and items, and its answer to fill (preview-only operations refused first)."""
        version = self._version(request)
        if preview_only:
            self._preview_only(request, version)
        return version, self._items(await self._body(request)), _Outcome(request_id_of(request))

    def _each_item(
        self, version: str, items: list[dict[str, Any]], bulk: _Outcome, write: Callable[[int, dict[str, Any]], None]
    ) -> Response:
        """``write(index, item)`` for every item of a bulk write, under the lock; then the partial-approval answer."""
        with self.lock:
            for index, item in enumerate(items):
                write(index, item)
        return self._answer(bulk.body(), version)

    async def _seg_create(self, request: Request) -> Response:
        version, items, bulk = await self._bulk_items(request)

        def create(index: int, item: dict[str, Any]) -> None:
            attributes = item.get("attributes") or {}
            api, owner = self._owner_of(request, attributes)
            name = str(attributes.get("name") or "").strip()
            retailer = str(attributes.get("retailerId") or "") if api == "retail_media" else None
            if not name:
                bulk.warn(index, "name-must-not-be-empty", "Segment name property must not be empty")
                return
            if api == "retail_media" and retailer not in RETAILER_IDS:
                bulk.warn(index, "retailer-not-found", f"Retailer {retailer!r} is not linked to account {owner}")
                return
            if api == "marketing_solutions" and owner != self.advertiser_id:
                raise ApiError(403, f"No consent for advertiser {owner}", "insufficient-advertisers-permissions")
            if attributes.get("events") is not None or attributes.get("contactList") is None:
                bulk.warn(
                    index, "segment-type-not-supported", "Only contact-list segments can be created through the API"
                )
                return
            id_type = (attributes.get("contactList") or {}).get("identifierType") or "Email"
            if api == "retail_media" and id_type not in RM_SEGMENT_TYPES:
                raise ApiError(400, f"Unknown identifierType {id_type!r}", "validation-error")
            taken = any(
                s["name"] == name and s["retailerId"] == retailer for s in self._owned(self._segments, api, owner)
            )
            if taken:
                bulk.warn(index, "name-must-be-unique", f"Segment name {name!r} is already used")
                return
            seg = self.add_segment(
                name,
                api=api,
                retailer_id=retailer or "",
                identifier_type=id_type,
                description=attributes.get("description"),
            )
            bulk.data.append(seg)

        return self._each_item(version, items, bulk, create)

    async def _seg_update(self, request: Request) -> Response:
        version, items, bulk = await self._bulk_items(request)
        api, owner = self._owner_of(request)

        def update(index: int, item: dict[str, Any]) -> None:
            seg = self._segments.get(str(item.get("id")))
            attributes = item.get("attributes") or {}
            if seg is None or seg["api"] != api or (api == "retail_media" and seg["owner"] != owner):
                bulk.warn(index, "segment-not-found", f"Segment {item.get('id')} is not found")
                return
            if "name" in attributes:
                name = str(attributes.get("name") or "").strip()
                if not name:
                    bulk.warn(index, "name-must-not-be-empty", "Segment name property must not be empty")
                    return
                if any(
                    s["name"] == name and s["id"] != seg["id"] and s["retailerId"] == seg["retailerId"]
                    for s in self._owned(self._segments, api, seg["owner"])
                ):
                    bulk.warn(index, "name-must-be-unique", f"Segment name {name!r} is already used")
                    return
                seg["name"] = name
            if "description" in attributes:
                wrapper = attributes["description"]
                if wrapper is not None and not isinstance(wrapper, dict):
                    raise ApiError(400, "description must be an object {'value': ...}", "validation-error")
                seg["description"] = (wrapper or {}).get("value")
            seg["updatedAt"] = self.now()
            bulk.data.append(self._render_segment(seg))

        return self._each_item(version, items, bulk, update)

    async def _seg_delete(self, request: Request) -> Response:
        version, items, bulk = await self._bulk_items(request)
        api, owner = self._owner_of(request)

        def delete(index: int, item: dict[str, Any]) -> None:
            sid = str(item.get("id"))
            seg = self._segments.get(sid)
            if seg is None or seg["api"] != api or (api == "retail_media" and seg["owner"] != owner):
                bulk.warn(index, "segment-not-found", f"Segment {sid} is not found")
                return
            if any(sid in self._uses(a["algebra"]) for a in self._audiences.values()):
                bulk.error(
                    index,
                    "segment-must-not-be-used-in-audience",
                    "The segment must be removed from all audiences to be able to delete it",
                )
                return
            del self._segments[sid]
            self._ops.pop(sid, None)
            self._views.pop((sid, True), None)
            self._views.pop((sid, False), None)
            bulk.data.append({"id": sid, "type": item.get("type") or "AudienceSegment", "attributes": {}})

        return self._each_item(version, items, bulk, delete)

    def _search_pool(
        self, request: Request, api: str, attributes: dict[str, Any], table: dict[str, dict[str, Any]]
    ) -> list[dict[str, Any]]:
        """What a search may see in ``table``: the RM account's objects, or those of the MS advertisers asked for."""
        if api == "retail_media":
            self._account(request)
            return self._owned(table, api, self.account_id)
        owners = {str(a) for a in attributes.get("advertiserIds") or [self.advertiser_id]}
        return [o for o in table.values() if o["api"] == api and o["owner"] in owners]

    async def _search(
        self,
        request: Request,
        table: dict[str, dict[str, Any]],
        narrow: Callable[[list[dict[str, Any]], dict[str, Any]], list[dict[str, Any]]],
        render: Callable[[dict[str, Any]], dict[str, Any]],
    ) -> Response:
        """A search of ``table``: what the caller may see, ``narrow``-ed by the filters, rendered by id, paged."""
        version = self._version(request)
        attributes = self._single(await self._body(request))
        api = self._api_of(request)
        with self.lock:
            pool = narrow(self._search_pool(request, api, attributes, table), attributes)
            rendered = [render(o) for o in sorted(pool, key=lambda o: int(o["id"]))]
        return self._answer(self._page(request, rendered, 500 if api == "retail_media" else 100), version)

    async def _seg_search(self, request: Request) -> Response:
        def narrow(pool: list[dict[str, Any]], attributes: dict[str, Any]) -> list[dict[str, Any]]:
            if attributes.get("audienceSegmentIds"):
                wanted = {str(i) for i in attributes["audienceSegmentIds"]}
                pool = [s for s in pool if s["id"] in wanted]
            if attributes.get("retailerIds"):
                pool = [s for s in pool if s["retailerId"] in {str(r) for r in attributes["retailerIds"]}]
            if attributes.get("audienceSegmentTypes"):
                pool = [s for s in pool if s["type"] in attributes["audienceSegmentTypes"]]
            return pool

        return await self._search(request, self._segments, narrow, self._render_segment)

    async def _seg_sizes(self, request: Request) -> Response:
        version = self._version(request)
        body = await self._body(request)
        api = self._api_of(request)
        if api == "retail_media":
            if version != "preview":
                raise ApiError(404, "compute-sizes exists in the preview version only", "resource-not-found")
            ids = [str(i) for i in self._single(body).get("ids") or []]
        else:
            ids = [str(i.get("id")) for i in self._items(body)]
        with self.lock:
            data = []
            for sid in ids:
                if sid in self._segments:
                    size = len(self._visible_members(sid))
                    data.append({"id": sid, "type": "AudienceSegmentSize", "attributes": {"size": size}})
        return self._answer({"data": data, "warnings": [], "errors": []}, version)

    # -- Marketing Solutions in-market lookups and size estimation
    #: A small fixed catalogue per country; sizes are deterministic so tests can assert them.
    _IN_MARKET_BRANDS: ClassVar[dict[str, list[tuple[str, str, int]]]] = {
        "FR": [("101", "Acme", 120_000), ("102", "Globex", 80_000)],
        "US": [("201", "Initech", 300_000), ("202", "Umbrella", 150_000)],
    }
    _IN_MARKET_INTERESTS: ClassVar[dict[str, list[tuple[str, str, str | None]]]] = {
        "FR": [("1", "Home", None), ("12", "Home > Kitchen", "1")],
        "US": [("2", "Sports", None), ("21", "Sports > Running", "2")],
    }

    def _lookup_query(self, request: Request) -> tuple[str, str]:
        advertiser = request.query_params.get("advertiser-id")
        country = (request.query_params.get("country") or "").upper()
        if not advertiser or not country:
            raise ApiError(400, "advertiser-id and country are required", "validation-error")
        if advertiser != self.advertiser_id:
            raise ApiError(403, f"Advertiser {advertiser} is not accessible", "forbidden")
        return advertiser, country

    async def _advertisers_me(self, request: Request) -> Response:
        """``GET /{version}/advertisers/me`` (ListAdvertisers): the advertisers that consented to the app."""
        version = self._version(request)
        data = [
            {"type": "advertiser", "id": self.advertiser_id, "attributes": {"advertiserName": "Sandbox advertiser"}}
        ]
        return self._answer({"data": data, "warnings": [], "errors": []}, version)

    async def _in_market_brands(self, request: Request) -> Response:
        version = self._version(request)
        _, country = self._lookup_query(request)
        data = [
            {"id": bid, "type": "InMarketAudienceSegmentBrand", "attributes": {"name": name, "size": size}}
            for bid, name, size in self._IN_MARKET_BRANDS.get(country, [])
        ]
        return self._answer({"data": data, "warnings": [], "errors": []}, version)

    async def _in_market_interests(self, request: Request) -> Response:
        version = self._version(request)
        _, country = self._lookup_query(request)
        data = [
            # Criteo's document gives an interest a parentId only: no name is invented here.
            {"id": iid, "type": "InMarketAudienceSegmentInterest", "attributes": {"parentId": parent}}
            for iid, _name, parent in self._IN_MARKET_INTERESTS.get(country, [])
        ]
        return self._answer({"data": data, "warnings": [], "errors": []}, version)

    async def _rm_seg_estimate(self, request: Request) -> Response:
        version = self._version(request)
        self._preview_only(request, version)
        attributes = self._single(await self._body(request))
        self._owner_of(request, attributes)
        events = attributes.get("events")
        if not attributes.get("retailerId") or attributes.get("channel") not in ("Onsite", "Offsite"):
            raise ApiError(400, "retailerId and channel (Onsite or Offsite) are required", "validation-error")
        if not isinstance(events, dict) or not events.get("shopperActivity") or not events.get("lookbackDays"):
            raise ApiError(400, "events.shopperActivity and events.lookbackDays are required", "validation-error")
        days = int("".join(ch for ch in str(events["lookbackDays"]) if ch.isdigit()) or 0)
        size = days * 1_000 * (1 + len(events.get("categoryIds") or []) + len(events.get("brandIds") or []))
        with self.lock:  # the members' views are the fake's state
            universe = max(len(self._universe("retail_media")), 1)
        body = {
            "data": {
                "type": "AudienceSegmentSizeEstimation",
                "attributes": {"size": size, "relativeSize": round(min(size / (universe * 1_000), 1.0), 4)},
            },
            "warnings": [],
            "errors": [],
        }
        return self._answer(body, version)

    async def _seg_estimate(self, request: Request) -> Response:
        version = self._version(request)
        attributes = self._single(await self._body(request))
        if str(attributes.get("advertiserId") or "") != self.advertiser_id:
            raise ApiError(403, f"Advertiser {attributes.get('advertiserId')} is not accessible", "forbidden")
        in_market, location = attributes.get("inMarket"), attributes.get("location")
        if (in_market is None) == (location is None):
            raise ApiError(400, "Exactly one of inMarket or location is required", "validation-error")
        if in_market is not None:
            if not isinstance(in_market, dict) or not in_market.get("country"):
                raise ApiError(400, "inMarket.country is required", "validation-error")
            brands = self._IN_MARKET_BRANDS.get(str(in_market["country"]).upper(), [])
            wanted = set(in_market.get("brandIds") or [b[0] for b in brands])
            size = sum(s for bid, _, s in brands if bid in wanted) // (2 if in_market.get("gender") else 1)
        else:
            if not isinstance(location, dict) or not location.get("pointsOfInterest") or "radiusInKm" not in location:
                raise ApiError(
                    400, "location.pointsOfInterest and location.radiusInKm are required", "validation-error"
                )
            size = len(location["pointsOfInterest"]) * int(location["radiusInKm"]) * 1_000
        body = {
            "data": {"type": "AudienceSegmentSizeEstimation", "attributes": {"size": size}},
            "warnings": [],
            "errors": [],
        }
        return self._answer(body, version)

    def _segment_for_list(self, request: Request) -> dict[str, Any]:
        api = self._api_of(request)
        sid = request.path_params["segment"]
        seg = self._segments.get(sid)
        if seg is None or seg["api"] != api:
            raise ApiError(404, f"Segment {sid} is not found", "segment-not-found")
        if seg["type"] != "ContactList":
            raise ApiError(400, f"Segment {sid} is not a contact list", "segment-not-contact-list")
        return seg

    async def _stats(self, request: Request) -> Response:
        version = self._version(request)
        with self.lock:
            if self._api_of(request) == "retail_media":
                self._account(request)
            seg = self._segment_for_list(request)
            count = len(self._visible_members(seg["id"]))
            matches = (count * 68) // 100
            attributes = {
                "numberOfIdentifiers": count,
                "numberOfMatches": matches,
                "matchRate": round(matches / count, 4) if count else 0.0,
            }
        body = {
            "data": {"id": seg["id"], "type": "ContactListStatistics", "attributes": attributes},
            "warnings": [],
            "errors": [],
        }
        return self._answer(body, version)

    @staticmethod
    def _valid_identifier(value: str, id_type: str) -> bool:
        if not isinstance(value, str) or not value.strip():
            return False
        kind = id_type.lower()
        if kind == "email":
            return bool(_SHA256.match(value)) or ("@" in value and " " not in value.strip())
        if kind == "phonenumber":
            return bool(_SHA256.match(value) or _PHONE.match(value))
        return True

    @classmethod
    def _valid_identifiers(cls, identifiers: list[Any], id_type: str) -> list[Any]:
        """The identifiers :meth:`_valid_identifier` accepts, in order.

        A list made only of lower-case SHA-256 hex digests (what hashing clients send) is valid as
        a whole for every type, and is recognised by whole-list checks instead of a regex per value.
        """
        try:
            digests = set(map(type, identifiers)) == {str} and set(map(len, identifiers)) == {64}
            joined = "".join(identifiers).encode("ascii") if digests else b"-"
        except UnicodeEncodeError:
            joined = b"-"
        if not joined.translate(None, _HEX_DIGITS):
            return identifiers
        return [v for v in identifiers if cls._valid_identifier(v, id_type)]

    async def _amend(self, request: Request) -> Response:
        version = self._version(request)
        # Digests as hashing clients send them: checked whole and split, not parsed string by string.
        split = split_digest_body(await request.body())
        body, digests = split if split is not None else (await self._body(request), None)
        api = self._api_of(request)
        data = body.get("data")
        if not isinstance(data, dict) or not isinstance(data.get("attributes"), dict):
            raise ApiError(400, "'data.attributes' is required", "validation-error")
        if api == "marketing_solutions" and not data.get("type"):
            raise ApiError(400, "'data.type' is required", "validation-error")
        attributes = data["attributes"]
        operation = attributes.get("operation")
        identifiers = attributes.get("identifiers")
        if operation not in ("add", "remove"):
            raise ApiError(400, "operation must be add or remove", "validation-error")
        if digests is None and not isinstance(identifiers, list):
            raise ApiError(400, "identifiers must be an array", "validation-error")
        limit = int(self.config.get("max_identifiers") or 50_000)
        if len(identifiers) > limit:
            raise ApiError(
                400, f"At most {limit} identifiers per request, got {len(identifiers)}", "too-many-identifiers"
            )
        allowed = RM_AMENDMENT_TYPES if api == "retail_media" else MS_AMENDMENT_TYPES
        id_type = attributes.get("identifierType") or ("Email" if api == "retail_media" else "email")
        if id_type not in allowed:
            raise ApiError(400, f"identifierType must be one of {list(allowed)}", "validation-error")
        with self.lock:
            if self._amendment_faults and self._amendments >= self._amendment_faults[0][0]:
                _, status = self._amendment_faults.pop(0)
                raise ApiError(status, "Injected failure of a contact-list amendment", "internal-error")
            seg = self._segment_for_list(request)
            if api == "retail_media" and seg["identifierType"].lower() != id_type.lower():
                raise ApiError(
                    400,
                    f"Segment {seg['id']} holds {seg['identifierType']} identifiers, not {id_type}",
                    "identifier-type-mismatch",
                )
            # Lower-case SHA-256 digests are valid for every identifier type.
            valid = digests if digests is not None else self._valid_identifiers(identifiers, id_type)
            invalid = len(identifiers) - len(valid)
            dropped, omit_invalid = self._short_answers.pop(0) if self._short_answers else (0, False)
            if dropped:
                valid = list(valid)[: max(len(valid) - dropped, 0)]
            now = self.now()
            self._ops[seg["id"]].append((now, operation, valid))
            self._amendments += 1
        fields = {
            "contactListId": int(seg["id"]),
            "operation": operation,
            "requestDate": _iso(now),
            "identifierType": id_type,
            "nbValidIdentifiers": len(valid),
            "nbInvalidIdentifiers": invalid,
            "sampleInvalidIdentifiers": ["<redacted>"] * min(invalid, 3),
        }
        if omit_invalid:
            del fields["nbInvalidIdentifiers"]
        if api == "retail_media":
            answer = {"type": "AddRemoveContactlistResult", "data": fields, "errors": [], "warnings": []}
        else:
            answer = {"data": {"type": "ContactlistAmendment", "attributes": fields}, "errors": [], "warnings": []}
        return self._answer(answer, version)

    async def _clear(self, request: Request) -> Response:
        version = self._version(request)
        with self.lock:
            seg = self._segment_for_list(request)
            self._ops[seg["id"]].append((self.now(), "clear", []))
        if self._api_of(request) == "retail_media":
            return self._answer(None, version, 204)
        body = {
            "data": {
                "id": seg["id"],
                "type": "AudienceSegment",
                "attributes": {"name": seg["name"], "description": seg["description"]},
            },
            "errors": [],
            "warnings": [],
        }
        return self._answer(body, version)

    # -- audiences
    def _preview_only(self, request: Request, version: str) -> None:
        if self._api_of(request) == "retail_media" and version != "preview":
            raise ApiError(404, "This audience operation exists in the preview version only", "resource-not-found")

    async def _aud_search(self, request: Request) -> Response:
        def narrow(pool: list[dict[str, Any]], attributes: dict[str, Any]) -> list[dict[str, Any]]:
            if attributes.get("audienceIds"):
                pool = [a for a in pool if a["id"] in {str(i) for i in attributes["audienceIds"]}]
            if attributes.get("audienceSegmentIds"):
                wanted = {str(i) for i in attributes["audienceSegmentIds"]}
                pool = [a for a in pool if self._uses(a["algebra"]) & wanted]
            if attributes.get("retailerIds"):
                pool = [a for a in pool if a["retailerId"] in {str(r) for r in attributes["retailerIds"]}]
            return pool

        return await self._search(request, self._audiences, narrow, self._render_audience)

    async def _aud_create(self, request: Request) -> Response:
        version, items, bulk = await self._bulk_items(request, preview_only=True)

        def create(index: int, item: dict[str, Any]) -> None:
            attributes = item.get("attributes") or {}
            api, owner = self._owner_of(request, attributes)
            name = str(attributes.get("name") or "").strip()
            if not name:
                bulk.warn(index, "name-must-not-be-empty", "Audience name must not be empty")
                return
            if any(a["name"] == name for a in self._owned(self._audiences, api, owner)):
                bulk.warn(index, "name-must-be-unique", f"Audience name {name!r} is already used")
                return
            problem = self._algebra_problem(attributes.get("algebra"), api, owner)
            if problem:
                code = "segment-not-found" if "not found" in problem else "invalid-algebra"
                bulk.warn(index, code, problem, title="Invalid algebra")
                return
            aud = self.add_audience(
                name, attributes["algebra"], api=api, retailer_id=str(attributes.get("retailerId") or "")
            )
            self._audiences[aud["id"]]["description"] = attributes.get("description")
            bulk.data.append(self._render_audience(self._audiences[aud["id"]]))

        return self._each_item(version, items, bulk, create)

    async def _aud_update(self, request: Request) -> Response:
        version, items, bulk = await self._bulk_items(request, preview_only=True)
        api, _ = self._owner_of(request)

        def update(index: int, item: dict[str, Any]) -> None:
            aud = self._audiences.get(str(item.get("id")))
            attributes = item.get("attributes") or {}
            if aud is None or aud["api"] != api:
                bulk.warn(index, "audience-not-found", f"Audience {item.get('id')} is not found")
                return
            if "algebra" in attributes:
                problem = self._algebra_problem(attributes["algebra"], api, aud["owner"])
                if problem:
                    bulk.warn(index, "invalid-algebra", problem)
                    return
                aud["algebra"] = attributes["algebra"]
            if "name" in attributes:
                if not str(attributes["name"] or "").strip():
                    bulk.warn(index, "name-must-not-be-empty", "Audience name must not be empty")
                    return
                aud["name"] = str(attributes["name"]).strip()
            if "description" in attributes:
                aud["description"] = (attributes["description"] or {}).get("value")
            aud["updatedAt"] = self.now()
            bulk.data.append(self._render_audience(aud))

        return self._each_item(version, items, bulk, update)

    async def _aud_delete(self, request: Request) -> Response:
        version, items, bulk = await self._bulk_items(request, preview_only=True)
        api, _ = self._owner_of(request)

        def delete(index: int, item: dict[str, Any]) -> None:
            aid = str(item.get("id"))
            aud = self._audiences.get(aid)
            if aud is None or aud["api"] != api:
                bulk.warn(index, "audience-not-found", f"Audience {aid} is not found")
                return
            del self._audiences[aid]
            for target in self._targets.values():
                target["audienceIds"] = [a for a in target["audienceIds"] if a != aid]
            bulk.data.append({"id": aid, "type": item.get("type") or "Audience", "attributes": {}})

        return self._each_item(version, items, bulk, delete)

    def _universe(self, api: str) -> set[str]:
        return set().union(*(self._visible_members(s["id"]) for s in self._segments.values() if s["api"] == api))

    async def _aud_sizes(self, request: Request) -> Response:
        version = self._version(request)
        self._preview_only(request, version)
        body = await self._body(request)
        api = self._api_of(request)
        ids = (
            [str(i) for i in self._single(body).get("ids") or []]
            if api == "retail_media"
            else [str(i.get("id")) for i in self._items(body)]
        )
        with self.lock:
            universe = self._universe(api)
            data = []
            for aid in ids:
                aud = self._audiences.get(aid)
                if aud is not None:
                    size = len(self._evaluate(aud["algebra"], universe))
                    attributes: dict[str, Any] = {"size": size}
                    if api == "retail_media":
                        attributes["relativeSize"] = round(size / len(universe), 4) if universe else 0.0
                    data.append({"id": aid, "type": "AudienceSize", "attributes": attributes})
        return self._answer({"data": data, "warnings": [], "errors": []}, version)

    async def _aud_estimate(self, request: Request) -> Response:
        version = self._version(request)
        self._preview_only(request, version)
        attributes = self._single(await self._body(request))
        api, owner = self._owner_of(request, attributes)
        with self.lock:
            problem = self._algebra_problem(attributes.get("algebra"), api, owner)
            if problem:
                raise ApiError(400, problem, "invalid-algebra")
            universe = self._universe(api)
            size = len(self._evaluate(attributes["algebra"], universe))
        out: dict[str, Any] = {"size": size}
        if api == "retail_media":
            out["relativeSize"] = round(size / len(universe), 4) if universe else 0.0
        return self._answer(
            {"data": {"type": "AudienceSizeEstimation", "attributes": out}, "warnings": [], "errors": []}, version
        )

    # -- line items and ad sets
    def _target_answer(self, line_item: str, version: str) -> Response:
        target = self._targets.setdefault(line_item, {"scope": "include", "audienceIds": []})
        body = {"data": {"type": "AudienceTarget", "attributes": dict(target)}, "warnings": [], "errors": []}
        return self._answer(body, version)

    def _known_audiences(self, ids: Any) -> list[str]:
        if not isinstance(ids, list):
            raise ApiError(400, "audienceIds must be an array", "validation-error")
        unknown = [str(i) for i in ids if str(i) not in self._audiences]
        if unknown:
            raise ApiError(400, f"Unknown audience ids {unknown}", "audience-not-found")
        return [str(i) for i in ids]

    async def _targeting(self, request: Request) -> Response:
        version = self._version(request)
        line_item = request.path_params["line_item"]
        with self.lock:
            if request.method == "PUT":
                attributes = self._single(await self._body(request))
                if attributes.get("scope") not in ("include", "exclude"):
                    raise ApiError(400, "scope must be include or exclude", "validation-error")
                self._targets[line_item] = {
                    "scope": attributes["scope"],
                    "audienceIds": self._known_audiences(attributes.get("audienceIds")),
                }
            return self._target_answer(line_item, version)

    async def _targeting_append(self, request: Request) -> Response:
        return await self._retarget(request, append=True)

    async def _targeting_delete(self, request: Request) -> Response:
        return await self._retarget(request, append=False)

    async def _retarget(self, request: Request, *, append: bool) -> Response:
        """Append known audiences to a line item's targeting, or take audiences out of it."""
        version = self._version(request)
        attributes = self._single(await self._body(request))
        line_item = request.path_params["line_item"]
        with self.lock:
            if append:
                ids = self._known_audiences(attributes.get("audienceIds"))
            else:
                ids = [str(i) for i in attributes.get("audienceIds") or []]
            target = self._targets.setdefault(line_item, {"scope": "include", "audienceIds": []})
            current = target["audienceIds"]
            if append:
                target["audienceIds"] = current + [i for i in ids if i not in current]
            else:
                target["audienceIds"] = [i for i in current if i not in ids]
            return self._target_answer(line_item, version)

    async def _ad_set_audience(self, request: Request) -> Response:
        version = self._version(request)
        attributes = self._single(await self._body(request))
        ad_set = request.path_params["ad_set"]
        with self.lock:
            audience_id = str(attributes.get("audienceId") or "")
            if audience_id not in self._audiences:
                raise ApiError(400, f"Unknown audience {audience_id!r}", "audience-not-found")
            self._ad_sets[ad_set] = audience_id
        body = {
            "data": {"id": ad_set, "type": "AdSetAudienceLink", "attributes": {"audienceId": audience_id}},
            "warnings": [],
            "errors": [],
        }
        return self._answer(body, version)
