"""What every vendor fake shares: state lock, clock, fault injection, request log, control API.

A vendor fake is a :class:`VendorFake` subclass that sets :attr:`VendorFake.name` and
:attr:`VendorFake.conn_id`, keeps its state in attributes guarded by ``VendorFake.lock``,
and implements

* :meth:`VendorFake.reset_state` - (re)build the initial state,
* :meth:`VendorFake.routes` - the vendor's HTTP API as Starlette routes,
* :meth:`VendorFake.error_envelope` - an error (:class:`ErrorReply`) in the vendor's envelope,
* :meth:`VendorFake.connection` - the Airflow connection (JSON form) that points at the fake,
* :meth:`VendorFake.state` - its vendor data as JSON, for ``GET /_sandbox/<name>/state``,

and optionally :meth:`VendorFake.check_request` (authentication before routing; it raises
:class:`ApiError` to refuse a request), :meth:`VendorFake.rate_limit_key`, :meth:`VendorFake.rate_account`
and :meth:`VendorFake.control_routes` (vendor specific ``/_sandbox/<name>/...`` endpoints).
:meth:`VendorFake.create_app` turns it into an ASGI app.

Every request that reaches a fake (answered, refused or faulted alike) is counted per account
for :meth:`VendorFake.request_rates` (``GET /_sandbox/rates``): the busiest sliding window seen,
so a test can check that clients on several workers together stayed within a vendor's limit.

Everything under ``/_sandbox`` is the sandbox's own control API: it needs no authentication,
is never faulted or rate limited, and is not written to the request log.
"""

from __future__ import annotations

import asyncio
import bisect
import hashlib
import json
import math
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, ClassVar
from urllib.parse import parse_qsl, urlencode

from starlette.applications import Starlette
from starlette.datastructures import Headers, MutableHeaders
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = [
    "CONTROL_PREFIX",
    "FAULT_KINDS",
    "ApiError",
    "ErrorReply",
    "FakeRateLimiter",
    "Fault",
    "FaultInjector",
    "Quota",
    "QuotaUse",
    "RequestRates",
    "VendorFake",
    "control_body",
    "control_call",
    "control_error",
    "new_hex_id",
    "request_id_of",
    "rfc3339",
]

#: Path prefix of the sandbox control API (no auth, no faults, not logged).
CONTROL_PREFIX = "/_sandbox"
#: Fault kinds understood by :meth:`FaultInjector.inject`.
FAULT_KINDS = ("status", "drop", "slow", "lost", "late")
#: Query parameters whose values are secrets and are redacted in the request log.
SECRET_QUERY_PARAMS = frozenset({"access_token", "key", "token", "api_key", "apikey", "client_secret"})

_REQUEST_ID_KEY = "sandbox.request_id"


def rfc3339(ts: float) -> str:
    """Format a POSIX timestamp as RFC 3339 UTC with millisecond precision (``...T10:00:00.123Z``)."""
    dt = datetime.fromtimestamp(ts, tz=UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


async def json_object_body(
    request: Request,
    bad_json: Any,
    not_an_object: Any,
    empty: bytes = b"{}",
) -> dict[str, Any]:
    """The request's JSON object body, or the vendor's error for anything else.

    :param bad_json: ``callable(detail) -> Exception`` for a body that is not JSON.
    :param not_an_object: ``callable() -> Exception`` for JSON that is not an object.
    :param empty: what an empty body means (``b"{}"``, or ``b"null"`` where the vendor refuses it).
    """
    raw = await request.body()
    try:
        body = json.loads(raw or empty)
    except ValueError as exc:
        raise bad_json(str(exc)) from None
    if not isinstance(body, dict):
        raise not_an_object()
    return body


def new_hex_id() -> str:
    """A random 32-character lowercase hex id."""
    return uuid.uuid4().hex


def request_id_of(request: Request) -> str:
    """The request id the sandbox middleware assigned to ``request`` (also sent as ``X-Request-Id``)."""
    return str(request.scope.get(_REQUEST_ID_KEY) or "")


class ApiError(Exception):
    """Raise from a vendor route or :meth:`VendorFake.check_request` to answer an error in the vendor's envelope.

    :param status: HTTP status.
    :param message: human-readable message.
    :param code: vendor error code (the fake picks a default per status when ``None``).
    :param headers: extra response headers (e.g. ``Retry-After``).
    :param details: vendor-specific fields of the envelope (e.g. Yandex.Audience's ``location``).
    """

    def __init__(
        self, status: int, message: str, code: str | None = None, headers: dict[str, str] | None = None, **details: Any
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.headers = headers or {}
        self.details = details


@dataclass(frozen=True)
class ErrorReply:
    """An error a fake answers with, before it is written in the vendor's envelope."""

    path: str
    status: int
    message: str
    request_id: str
    code: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class Fault:
    """One injected fault, applied to the next ``count`` matching requests."""

    kind: str
    count: int = 1
    path_prefix: str | None = None
    method: str | None = None
    status: int = 503
    retry_after: float | None = None
    delay: float = 0.0

    def matches(self, method: str, path: str) -> bool:
        """Whether a request with ``method`` and ``path`` is subject to this fault."""
        if self.method and self.method.upper() != method.upper():
            return False
        return not (self.path_prefix and not path.startswith(self.path_prefix))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return asdict(self)


class FaultInjector:
    """Thread-safe queue of injected faults; the first matching fault is consumed per request."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._faults: list[Fault] = []

    def inject(
        self,
        kind: str,
        count: int = 1,
        path_prefix: str | None = None,
        method: str | None = None,
        status: int = 503,
        retry_after: float | None = None,
        delay: float = 0.0,
    ) -> Fault:
        """Make the next ``count`` requests matching ``path_prefix``/``method`` misbehave.

        :param kind: ``"status"`` - answer ``status`` in the vendor's error envelope (with a
            ``Retry-After: <retry_after>`` header when given); ``"drop"`` - close the connection
            without answering (clients see a connection error); ``"slow"`` - wait ``delay``
            seconds, then answer normally (to trip client read timeouts); ``"lost"`` - apply the
            request, then close the connection without answering (the outcome the client cannot know;
            its log entry gets ``"applied": True`` once applied);
            ``"late"`` - answer ``status`` at once (a gateway that gave up, e.g. 504) and apply the
            request ``delay`` seconds later anyway (the backend went on); its log entry gets
            ``"applied": True`` then.
        :param count: how many matching requests are affected (>= 1).
        :param path_prefix: only requests whose path starts with this; ``None`` = any path.
        :param method: only this HTTP method; ``None`` = any method.
        :raises ValueError: on an unknown kind or out-of-range values.
        """
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {kind!r}; expected one of {', '.join(FAULT_KINDS)}")
        count = int(count)
        if count < 1:
            raise ValueError("count must be >= 1")
        status = int(status)
        if not 100 <= status <= 599:
            raise ValueError("status must be an HTTP status code (100-599)")
        delay = float(delay)
        if delay < 0:
            raise ValueError("delay must be >= 0")
        if kind in ("slow", "late") and delay == 0:
            raise ValueError(f"a {kind!r} fault needs delay > 0")
        if retry_after is not None:
            retry_after = float(retry_after)
            if retry_after < 0:
                raise ValueError("retry_after must be >= 0")
        fault = Fault(
            kind=kind,
            count=count,
            path_prefix=path_prefix or None,
            method=method.upper() if method else None,
            status=status,
            retry_after=retry_after,
            delay=delay,
        )
        with self._lock:
            self._faults.append(fault)
        return fault

    def take(self, method: str, path: str) -> Fault | None:
        """Consume one use of the first fault matching the request, if any."""
        with self._lock:
            for index, fault in enumerate(self._faults):
                if fault.matches(method, path):
                    fault.count -= 1
                    if fault.count <= 0:
                        del self._faults[index]
                    return Fault(**{**asdict(fault), "count": 1})
        return None

    def pending(self) -> list[dict[str, Any]]:
        """Faults not used up yet (with their remaining counts)."""
        with self._lock:
            return [fault.to_dict() for fault in self._faults]

    def clear(self) -> None:
        """Forget every pending fault."""
        with self._lock:
            self._faults.clear()


@dataclass(frozen=True)
class Quota:
    """At most ``limit`` hits of ``key`` in any sliding window of ``seconds`` (``limit=None``: counted, not limited).

    ``message`` is the fake's wording of a refusal by this quota, for the vendor's error answer.
    """

    key: str
    limit: float | None
    seconds: float
    message: str = ""


@dataclass(frozen=True)
class QuotaUse:
    """A quota's window at a check: the hits in it, and when its oldest hit leaves it (``now + seconds`` when empty)."""

    quota: Quota
    count: int
    resets_at: float


class FakeRateLimiter:
    """Sliding-window quotas per key (thread-safe): a hit drops the hits older than a window, is
    refused when a window is full, else recorded in every window.

    The fakes keep their vendors' answers (status, body, headers); this class only counts.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._hits: dict[str, deque[float]] = {}

    def allow(self, key: str, per_second: float, now: float) -> bool:
        """Record a hit for ``key`` unless ``per_second`` hits already happened in the last second."""
        return self.hit(now, Quota(key, per_second, 1.0)) is None

    def hit(self, now: float, *quotas: Quota) -> QuotaUse | None:
        """Record a hit at ``now`` in every quota's window, unless one is full (``limit`` hits or more).

        :returns: ``None`` when the hit is recorded; else the first full window (nothing is recorded).
        """
        with self._lock:
            for quota in quotas:
                use = self._use(quota, now)
                if quota.limit is not None and use.count >= quota.limit:
                    return use
            for quota in quotas:
                self._hits[quota.key].append(now)
        return None

    def use(self, quota: Quota, now: float) -> QuotaUse:
        """The hits of ``quota`` in its window at ``now`` (without recording one)."""
        with self._lock:
            return self._use(quota, now)

    def _use(self, quota: Quota, now: float) -> QuotaUse:
        hits = self._hits.setdefault(quota.key, deque())
        while hits and hits[0] <= now - quota.seconds:
            hits.popleft()
        return QuotaUse(quota, len(hits), (hits[0] if hits else now) + quota.seconds)

    def clear(self) -> None:
        """Forget all hits."""
        with self._lock:
            self._hits.clear()


class RequestRates:
    """Arrival times of requests per account, and the busiest sliding window among them (thread-safe).

    Times are the sandbox's monotonic clock at arrival (not the fake's adjustable clock), so
    :meth:`VendorFake.advance_time` does not distort them. At most ``keep`` arrivals are kept per account.
    """

    def __init__(self, keep: int = 200_000) -> None:
        self._lock = threading.Lock()
        self._keep = keep
        self._arrivals: dict[str, deque[float]] = {}

    def record(self, account: str, at: float | None = None) -> None:
        with self._lock:
            arrivals = self._arrivals.get(account)
            if arrivals is None:
                arrivals = self._arrivals[account] = deque(maxlen=self._keep)
            arrivals.append(time.monotonic() if at is None else at)

    def clear(self) -> None:
        with self._lock:
            self._arrivals.clear()

    @staticmethod
    def peak(arrivals: list[float], window: float) -> int:
        """The most arrivals within any half-open interval ``(t - window, t]``."""
        best = 0
        for index, at in enumerate(arrivals):
            first = bisect.bisect_right(arrivals, at - window, 0, index + 1)
            best = max(best, index + 1 - first)
        return best

    def report(self, window: float) -> dict[str, Any]:
        """``{"window_seconds", "total": {"requests", "peak"}, "accounts": {account: {"requests", "peak"}}}``."""
        if not window > 0 or math.isinf(window):
            raise ValueError("window must be a positive number of seconds")
        with self._lock:
            per_account = {account: sorted(arrivals) for account, arrivals in self._arrivals.items()}
        everything = sorted(at for arrivals in per_account.values() for at in arrivals)
        return {
            "window_seconds": window,
            "total": {"requests": len(everything), "peak": self.peak(everything, window)},
            "accounts": {
                account: {"requests": len(arrivals), "peak": self.peak(arrivals, window)}
                for account, arrivals in sorted(per_account.items())
            },
        }


def _redact_query(query_string: str) -> str:
    pairs = parse_qsl(query_string, keep_blank_values=True)
    return urlencode([(k, "***" if k.lower() in SECRET_QUERY_PARAMS else v) for k, v in pairs])


class VendorFake:
    """Base class of the vendor fakes. See the module docstring for what a subclass provides.

    :param processing_seconds: how long asynchronous vendor work takes (overrides the default).
    :param config: other initial settings; keys must exist in :attr:`default_config`.

    The initial configuration is what :meth:`reset` returns to.
    """

    #: Vendor name used on the command line and in :class:`~.server.SandboxServer` (e.g. ``"lytics"``).
    name: ClassVar[str] = ""
    #: Airflow connection id the sandbox's connection is generated for (e.g. ``"lytics_default"``).
    conn_id: ClassVar[str] = ""
    #: Settings changeable at run time (``configure`` / ``POST /_sandbox/config``). Every value is a
    #: non-negative number or ``None`` (= off). A fake extends these two, which every fake has:
    #: ``{**VendorFake.default_config, "processing_seconds": ..., <its own settings>}``.
    default_config: ClassVar[dict[str, float | None]] = {
        "processing_seconds": 2.0,
        "rate_limit_per_second": None,
    }

    def __init__(self, processing_seconds: float | None = None, **config: float | None) -> None:
        #: Guards every piece of the fake's state (re-entrant).
        self.lock = threading.RLock()
        #: Injected faults (:meth:`FaultInjector.inject`), also set through ``POST /_sandbox/faults``.
        self.faults = FaultInjector()
        self.base_url: str | None = None
        self._requests: list[dict[str, Any]] = []
        self._rate_limiter = FakeRateLimiter()
        self.rates = RequestRates()
        self._clock_offset = 0.0
        initial: dict[str, float | None] = dict(self.default_config)
        if processing_seconds is not None:
            config = {**config, "processing_seconds": processing_seconds}
        initial.update(self._validated_config(config))
        self._initial_config = initial
        self.config: dict[str, float | None] = dict(initial)
        self.reset_state()

    # ------------------------------------------------------------------ state and clock
    def reset(self) -> None:
        """Back to the initial state: vendor data, faults, request log, configuration and clock."""
        with self.lock:
            self.faults.clear()
            self._requests.clear()
            self._rate_limiter.clear()
            self.rates.clear()
            self._clock_offset = 0.0
            self.config = dict(self._initial_config)
            self.reset_state()

    def reset_state(self) -> None:
        """(Re)build the vendor's initial data. Called under ``lock``."""
        raise NotImplementedError

    def now(self) -> float:
        """The fake's clock (wall clock plus :meth:`advance_time` offsets), POSIX seconds."""
        return time.time() + self._clock_offset

    def advance_time(self, seconds: float) -> float:
        """Move the fake's clock forward (asynchronous work completes sooner); returns :meth:`now`."""
        if seconds < 0:
            raise ValueError("the sandbox clock only moves forward")
        with self.lock:
            self._clock_offset += seconds
            return self.now()

    @property
    def processing_seconds(self) -> float:
        """How long asynchronous work takes from now on."""
        return float(self.config.get("processing_seconds") or 0.0)

    def _validated_config(self, updates: dict[str, Any]) -> dict[str, float | None]:
        clean: dict[str, float | None] = {}
        for key, value in updates.items():
            if key not in self.default_config:
                raise ValueError(
                    f"unknown {self.name} sandbox setting {key!r}; known: {', '.join(sorted(self.default_config))}"
                )
            if value is None:
                clean[key] = None
                continue
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"setting {key!r} must be a number or null, not {value!r}")
            if value < 0 or math.isnan(value):
                raise ValueError(f"setting {key!r} must be >= 0")
            clean[key] = float(value)
        return clean

    def configure(self, **updates: float | None) -> dict[str, float | None]:
        """Change settings (see :attr:`default_config`); returns the whole configuration.

        :raises ValueError: on an unknown key or a bad value (nothing is changed then).
        """
        clean = self._validated_config(updates)
        with self.lock:
            self.config.update(clean)
            return dict(self.config)

    # ------------------------------------------------------------------ request log
    @property
    def requests(self) -> list[dict[str, Any]]:
        """Snapshot of the request log, oldest first.

        Each entry: ``method``, ``path``, ``query`` (secrets redacted), ``status`` (``None`` when
        the connection was dropped or no answer was sent yet), ``authorization`` (whether an
        ``Authorization`` header was present - its value is never logged), ``content_type``,
        ``user_agent``, ``request_id``, ``fault`` (kind of injected fault or ``None``), ``time``.
        Bodies are never logged.
        """
        with self.lock:
            return [dict(entry) for entry in self._requests]

    def clear_requests(self) -> None:
        """Empty the request log."""
        with self.lock:
            self._requests.clear()

    def _log_request(self, entry: dict[str, Any]) -> None:
        with self.lock:
            self._requests.append(entry)

    def _update_log(self, entry: dict[str, Any], **changes: Any) -> None:
        with self.lock:
            entry.update(changes)

    # ------------------------------------------------------------------ vendor hooks
    def new_request_id(self) -> str:
        """A fresh request id (vendors may override the format)."""
        return new_hex_id()

    def routes(self) -> list[BaseRoute]:
        """The vendor API as Starlette routes."""
        raise NotImplementedError

    def control_routes(self) -> list[BaseRoute]:
        """Vendor-specific control routes; by convention under ``/_sandbox/<name>/``."""
        return []

    def state(self) -> dict[str, Any]:
        """The vendor data as JSON, answered by ``GET /_sandbox/<name>/state``."""
        raise NotImplementedError

    def error_response(
        self,
        path: str,
        status: int,
        message: str,
        request_id: str,
        *,
        code: str | None = None,
        headers: dict[str, str] | None = None,
        **details: Any,
    ) -> Response:
        """An error in the vendor's envelope for a request to ``path`` (``details``: vendor-specific fields)."""
        return self.error_envelope(ErrorReply(path, status, message, request_id, code, dict(headers or {}), details))

    def api_error_response(self, request: Request, error: ApiError) -> Response:
        """``error``, raised while answering ``request``, in the vendor's envelope."""
        return self.error_response(
            request.url.path,
            error.status,
            error.message,
            request_id_of(request),
            code=error.code,
            headers=error.headers,
            **error.details,
        )

    def error_envelope(self, error: ErrorReply) -> Response:
        """``error`` as the vendor writes it."""
        raise NotImplementedError

    def check_request(self, request: Request) -> None:
        """Checks done before routing (authentication); raise :class:`ApiError` to reject the request."""

    def rate_limit_key(self, request: Request) -> str | None:
        """Key of the general rate limit (default: the ``Authorization`` header); ``None`` = not limited."""
        return request.headers.get("authorization")

    def rate_account(self, request: Request) -> str:
        """Which account a request counts for in :meth:`request_rates`; never a secret in clear.

        Default: a short hash of the credentials (:meth:`rate_limit_key`, else the ``Authorization``
        header), ``"anonymous"`` without any. Fakes whose vendor counts per app or login override it.
        """
        credentials = self.rate_limit_key(request) or request.headers.get("authorization")
        if not credentials:
            return "anonymous"
        return "credentials-" + hashlib.sha256(credentials.encode()).hexdigest()[:12]

    def request_rates(self, window: float = 1.0) -> dict[str, Any]:
        """The busiest ``window``-second sliding window per account and over all requests.

        Every request to the vendor API counts, whatever the answer (429s and injected faults
        included: the client sent them). See :class:`RequestRates.report` for the shape.
        """
        return {"vendor": self.name, **self.rates.report(window)}

    def connection(self, base_url: str) -> dict[str, Any]:
        """The Airflow connection (JSON form) that points at this fake served at ``base_url``.

        Only Connection fields may appear at top level: ``conn_type``, ``host``, ``port``, ``login``,
        ``password``, ``schema``, ``extra``, ``description``.
        """
        raise NotImplementedError

    # ------------------------------------------------------------------ ASGI
    def create_app(self) -> ASGIApp:
        """The ASGI app serving the vendor API plus the ``/_sandbox`` control API."""

        async def http_error(request: Request, exc: Exception) -> Response:
            assert isinstance(exc, HTTPException)
            headers = dict(exc.headers or {})
            return self.error_response(
                request.url.path, exc.status_code, str(exc.detail), request_id_of(request), headers=headers
            )

        async def api_error(request: Request, exc: Exception) -> Response:
            assert isinstance(exc, ApiError)
            return self.api_error_response(request, exc)

        async def server_error(request: Request, exc: Exception) -> Response:
            return self.error_response(
                request.url.path, 500, f"internal error: {type(exc).__name__}", request_id_of(request)
            )

        app = Starlette(
            routes=[*_control_routes(self), *self.control_routes(), *self.routes()],
            exception_handlers={ApiError: api_error, HTTPException: http_error, Exception: server_error},
        )
        return _SandboxMiddleware(self, app)


# ---------------------------------------------------------------------- control API
async def control_body(request: Request) -> dict[str, Any]:
    """The JSON object body of a control request (``{}`` when empty); ``ValueError`` for anything else."""
    raw = await request.body()
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except ValueError as exc:
        raise ValueError(f"body is not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise ValueError("body must be a JSON object")
    return body


def control_error(message: str, status: int = 400) -> JSONResponse:
    """Error answer of the control API."""
    return JSONResponse({"error": message}, status_code=status)


async def control_call(request: Request, call: Callable[[dict[str, Any]], object], need: str) -> Response:
    """A vendor control endpoint: ``call(body)``, then ``{"ok": true}``; a bad body is a 400 saying what is needed."""
    try:
        call(await control_body(request))
    except (KeyError, TypeError, ValueError) as exc:
        return control_error(f"need {need}: {exc}")
    return JSONResponse({"ok": True})


def _control_routes(fake: VendorFake) -> list[BaseRoute]:
    async def health(request: Request) -> Response:
        return JSONResponse({"vendor": fake.name, "status": "ok", "base_url": fake.base_url})

    async def reset(request: Request) -> Response:
        fake.reset()
        return JSONResponse({"vendor": fake.name, "status": "reset"})

    async def faults(request: Request) -> Response:
        if request.method == "GET":
            return JSONResponse({"faults": fake.faults.pending()})
        if request.method == "DELETE":
            fake.faults.clear()
            return JSONResponse({"faults": []})
        try:
            body = await control_body(request)
            allowed = {"kind", "count", "path_prefix", "method", "status", "retry_after", "delay"}
            unknown = set(body) - allowed
            if unknown:
                raise ValueError(f"unknown fault fields: {', '.join(sorted(unknown))}")
            if "kind" not in body:
                raise ValueError("'kind' is required")
            fault = fake.faults.inject(**body)
        except (TypeError, ValueError) as exc:
            return control_error(str(exc))
        return JSONResponse({"fault": fault.to_dict(), "faults": fake.faults.pending()})

    async def requests_log(request: Request) -> Response:
        if request.method == "DELETE":
            fake.clear_requests()
            return JSONResponse({"requests": []})
        return JSONResponse({"requests": fake.requests})

    async def rates(request: Request) -> Response:
        if request.method == "DELETE":
            fake.rates.clear()
            return JSONResponse({"vendor": fake.name, "cleared": True})
        try:
            window = float(request.query_params.get("window", "1"))
            return JSONResponse(fake.request_rates(window))
        except ValueError as exc:
            return control_error(f"window: {exc}")

    async def config(request: Request) -> Response:
        if request.method == "GET":
            return JSONResponse({"config": dict(fake.config)})
        try:
            return JSONResponse({"config": fake.configure(**await control_body(request))})
        except ValueError as exc:
            return control_error(str(exc))

    async def clock(request: Request) -> Response:
        if request.method == "POST":
            try:
                body = await control_body(request)
                fake.advance_time(float(body.get("advance", 0)))
            except (TypeError, ValueError) as exc:
                return control_error(str(exc))
        return JSONResponse({"now": rfc3339(fake.now())})

    async def vendor_state(request: Request) -> Response:
        with fake.lock:  # rendered under the lock: a fake's state may hold its live records
            return JSONResponse(fake.state())

    p = CONTROL_PREFIX
    return [
        Route(f"{p}/health", health, methods=["GET"]),
        Route(f"{p}/reset", reset, methods=["POST"]),
        Route(f"{p}/faults", faults, methods=["GET", "POST", "DELETE"]),
        Route(f"{p}/requests", requests_log, methods=["GET", "DELETE"]),
        Route(f"{p}/rates", rates, methods=["GET", "DELETE"]),
        Route(f"{p}/config", config, methods=["GET", "POST"]),
        Route(f"{p}/clock", clock, methods=["GET", "POST"]),
        Route(f"{p}/{fake.name}/state", vendor_state, methods=["GET"]),
    ]


# ---------------------------------------------------------------------- middleware
class _SandboxMiddleware:
    """Outermost ASGI layer: request ids, request log, faults, pre-routing checks, rate limit."""

    def __init__(self, fake: VendorFake, app: ASGIApp) -> None:
        self.fake = fake
        self.app = app
        #: requests answered with an error that are still to be applied ("late" faults)
        self._late: set[asyncio.Future[None]] = set()

    async def _apply_late(
        self, scope: Scope, receive: Receive, delay: float, fake: VendorFake, entry: dict[str, Any] | None
    ) -> None:
        """Apply a request already answered with an error, ``delay`` seconds later (a "late" fault)."""
        await asyncio.sleep(delay)
        await self._apply_unanswered(scope, receive, fake, entry)

    async def _apply_unanswered(
        self, scope: Scope, receive: Receive, fake: VendorFake, entry: dict[str, Any] | None
    ) -> None:
        """Apply a request whose answer the client never gets; its log entry is marked ``applied``."""

        async def discard(message: Any) -> None:
            return None

        try:
            await self.app(scope, receive, discard)
        finally:
            if entry is not None:
                fake._update_log(entry, applied=True)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        fake = self.fake
        request_id = fake.new_request_id()
        scope[_REQUEST_ID_KEY] = request_id
        path: str = scope["path"]
        method: str = scope["method"]

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                if "x-request-id" not in headers:
                    headers["X-Request-Id"] = request_id
                if entry is not None:
                    fake._update_log(entry, status=message["status"])
            await send(message)

        entry: dict[str, Any] | None = None
        if path == CONTROL_PREFIX or path.startswith(CONTROL_PREFIX + "/"):
            await self.app(scope, receive, send_with_id)
            return

        headers = Headers(scope=scope)
        entry = {
            "method": method,
            "path": path,
            "query": _redact_query(scope.get("query_string", b"").decode("latin-1")),
            "status": None,
            "authorization": "authorization" in headers,
            "content_type": headers.get("content-type"),
            "user_agent": headers.get("user-agent"),
            "request_id": request_id,
            "fault": None,
            "time": rfc3339(fake.now()),
        }
        fake._log_request(entry)
        fake.rates.record(fake.rate_account(Request(scope)))

        fault = fake.faults.take(method, path)
        if fault is not None:
            fake._update_log(entry, fault=fault.kind)
            if fault.kind == "drop":
                await _drop_connection(send)
                return
            if fault.kind == "slow":
                # The request is read whole before the delay: a client that gives up meanwhile does not
                # undo it, as on a real server (the request is applied, its answer comes too late).
                receive = await _buffered(receive)
                await asyncio.sleep(fault.delay)
            elif fault.kind == "late":
                receive = await _buffered(receive)
                response = fake.error_response(path, fault.status, _reason(fault.status), request_id)
                await response(scope, receive, send_with_id)
                later = asyncio.ensure_future(self._apply_late(scope, receive, fault.delay, fake, entry))
                self._late.add(later)
                later.add_done_callback(self._late.discard)
                return
            elif fault.kind == "status":
                extra = {}
                if fault.retry_after is not None:
                    retry_after = fault.retry_after
                    extra["Retry-After"] = str(int(retry_after) if retry_after.is_integer() else retry_after)
                response = fake.error_response(path, fault.status, _reason(fault.status), request_id, headers=extra)
                await response(scope, receive, send_with_id)
                return

        request = Request(scope, receive)
        rejection: Response | None = None
        try:
            fake.check_request(request)
        except ApiError as exc:
            rejection = fake.api_error_response(request, exc)
        else:
            limit = fake.config.get("rate_limit_per_second")
            key = fake.rate_limit_key(request)
            if limit is not None and key is not None and not fake._rate_limiter.allow(key, limit, fake.now()):
                rejection = fake.error_response(path, 429, "Too Many Requests", request_id)
        if rejection is not None:
            await rejection(scope, receive, send_with_id)
            return
        if fault is not None and fault.kind == "lost":
            await self._apply_unanswered(scope, receive, fake, entry)
            await _drop_connection(send)
            return
        await self.app(scope, receive, send_with_id)


async def _buffered(receive: Receive) -> Receive:
    """Read the whole request body now; the returned ``receive`` replays it, then defers to the original."""
    chunks = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    body = b"".join(chunks)
    replayed = False

    async def replay() -> Message:
        nonlocal replayed
        if not replayed:
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


def _reason(status: int) -> str:
    from http import HTTPStatus

    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return f"HTTP {status}"


async def _drop_connection(send: Send) -> None:
    """Close the client connection without sending a byte of response.

    uvicorn's ``send`` is a bound method of its request-response cycle, which holds the
    transport. Closing it makes the client see "connection closed without response"
    (``requests.ConnectionError``); waiting for uvicorn to notice stops it from trying to
    answer afterwards.
    """
    cycle = getattr(send, "__self__", None)
    transport = getattr(cycle, "transport", None)
    if transport is None:  # not served by uvicorn (e.g. an in-process test client)
        raise RuntimeError("sandbox: cannot drop the connection under this server")
    transport.close()
    for _ in range(200):
        if getattr(cycle, "disconnected", True):
            return
        await asyncio.sleep(0.005)
