"""The one HTTP transport every vendor hook uses.

What it does, once for all vendors:

* a ``requests`` session per hook with a ``User-Agent`` naming this package and its version;
* default (connect, read) timeouts, overridable from the connection and from operators;
* retries with tenacity on connection errors, timeouts, 5xx and 429: exponential backoff with
  jitter, ``Retry-After`` (seconds or HTTP date) and vendor reset headers honoured, bounded by
  attempts *and* total time, each retry logged without secrets or bodies;
* non-idempotent calls (POST by default) are retried only when the vendor surely did not apply
  them (connection never established, 429); anything ambiguous raises so that the caller reads
  back first (see :func:`call_with_read_back`);
* one refresh-and-retry on 401 for OAuth2 client-credentials auth;
* the client-side rate limiter (:mod:`.ratelimit`) per vendor and endpoint class;
* typed errors (:mod:`airflow_audience_provider.core.errors`) carrying the HTTP status, vendor code and request id;
* send guards (:meth:`Transport.guard_sends`): checks run before every attempt of a write, retries
  included, that stop the call by raising (the contact-list engine's lease: a run that may no
  longer write sends no further attempt).

A vendor supplies a :class:`VendorProfile`: how to read its error envelope and request ids,
its reset headers and its documented quotas. Triggers use :meth:`Transport.arequest`, which
runs the same code in a worker thread so the event loop never blocks.
"""

from __future__ import annotations

import email.utils
import functools
import itertools
import json as _json
import logging
import math
import random
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC
from typing import Any, TypeVar

import requests
from tenacity import RetryCallState, Retrying, retry_if_exception_type

from airflow_audience_provider import __version__
from airflow_audience_provider.core.auth import OAuth2ClientCredentials
from airflow_audience_provider.core.errors import (
    AudienceAuthenticationError,
    AudienceError,
    AudiencePermissionError,
    AudienceRateLimitError,
    AudienceServerError,
    AudienceTransportError,
    AudienceValidationError,
    error_class_for_status,
)
from airflow_audience_provider.core.offload import to_thread
from airflow_audience_provider.core.ratelimit import (
    Budget,
    QuotaWouldBlock,
    RateLimit,
    RateLimiter,
    Window,
    default_rate_limiter,
)
from airflow_audience_provider.lazy_strings import LazyStrings

log = logging.getLogger(__name__)

T = TypeVar("T")

IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
#: Methods that change nothing at the vendor.
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


class JsonStrings(LazyStrings):
    """Hex strings kept as the text they were read from: the transport writes their JSON array from it.

    For the digests of a chunk read from a work file, the array is the text with its newlines
    replaced by ``", "``: no per-string object or escaping, and no per-string object at all unless
    someone indexes the sequence. :meth:`reading` defers the read to :func:`encode_json`, which
    reads the text straight into the request body's buffer and checks it there.

    :param lines: the strings as ASCII bytes, each followed by a newline (see :meth:`from_lines`).
    :param count: how many strings.
    """

    def __init__(self, lines: bytes, count: int) -> None:
        super().__init__(count)
        self._lines: bytes | None = lines
        #: Bytes of the text (newlines included).
        self.nbytes = len(lines)
        self._read_into: Callable[[memoryview], None] | None = None

    @classmethod
    def from_lines(cls, lines: bytes, count: int) -> JsonStrings | None:
        """From ``count`` hex strings, one per line; None when the bytes hold anything else."""
        # Deleting the hex digits must leave exactly the count newlines.
        if not lines.endswith(b"\n") or lines.translate(None, _HEX) != b"\n" * count:
            return None
        return cls(lines, count)

    @classmethod
    def reading(cls, nbytes: int, count: int, read_into: Callable[[memoryview], None]) -> JsonStrings:
        """``count`` strings, one per line in ``nbytes`` bytes that ``read_into(view)`` writes into ``view``.

        Nothing is read here: :func:`encode_json` reads the text into the body and checks there that
        it is hex strings, one per line (else the body is written from the strings as any list).
        """
        strings = cls(b"", count)
        strings._lines, strings.nbytes, strings._read_into = None, nbytes, read_into
        return strings

    @property
    def lines(self) -> bytes:
        """The text: the strings, each followed by a newline."""
        if self._lines is None:
            assert self._read_into is not None
            buffer = bytearray(self.nbytes)
            self._read_into(memoryview(buffer))
            self._lines = bytes(buffer)
        return self._lines

    def read_into(self, view: memoryview) -> None:
        """Write the text into ``view`` (``nbytes`` long)."""
        if self._lines is None and self._read_into is not None:
            self._read_into(view)
        else:
            view[:] = self.lines

    def json_parts(self) -> list[bytes | memoryview]:
        """The JSON array, in pieces to be joined (a view drops the last separator without a copy)."""
        if not len(self):
            return [b"[]"]
        return [b'["', memoryview(self.lines.replace(b"\n", b'", "'))[:-4], b'"]']

    def split(self) -> list[str]:
        return self.lines.decode("utf-8", "surrogatepass").split("\n")[:-1]


_HEX = b"0123456789abcdefABCDEF"
_scratch = threading.local()


def _scratch_buffer(size: int) -> bytearray:
    """This thread's buffer of ``size`` bytes for building a body: reused while sizes repeat.

    The chunks of a sync are mostly of one size, so a sender thread writes each body into memory
    it touched already instead of fresh pages (whose first-touch faults cost as much as the copy).
    """
    buffer: bytearray | None = getattr(_scratch, "buffer", None)
    if buffer is None or len(buffer) != size:
        buffer = _scratch.buffer = bytearray(size)
    return buffer


def encode_json(value: Any) -> bytes | bytearray:
    """``json.dumps(value, allow_nan=False)`` as UTF-8 bytes, what ``requests`` sends for ``json=``.

    A list of ASCII letters-and-digits strings (hashed identifiers, numeric ids) needs no escaping
    and is written with one ``join`` instead of escaping each string, and :class:`JsonStrings`
    with one ``replace`` of their text: the same JSON text, at a fraction of the cost for a
    50,000-identifier chunk. A body holding one :class:`JsonStrings` is built in one buffer (its
    text read into it, checked, then one ``replace``) and returned as a ``bytearray``.
    """
    raw: list[JsonStrings] = []
    text = _encode(value, raw)
    if not raw:
        return text.encode("utf-8")
    # Each JsonStrings left a "\x00<n>\x00" mark (json.dumps never writes a raw NUL): splice its bytes in.
    pieces = text.split("\x00")
    if len(raw) == 1:
        body = _spliced(pieces[0].encode("utf-8"), raw[0], pieces[2].encode("utf-8"))
        if body is not None:
            return body
    if any(JsonStrings.from_lines(strings.lines, len(strings)) is None for strings in raw if len(strings)):
        # Text that is not hex strings, one per line: written as the list of its strings.
        return _json.dumps(_plain(value), allow_nan=False).encode("utf-8")
    out: list[bytes | memoryview] = []
    for i, piece in enumerate(pieces):
        if i % 2:
            out.extend(raw[int(piece)].json_parts())
        else:
            out.append(piece.encode("utf-8"))
    return b"".join(out)


def _spliced(head: bytes, strings: JsonStrings, tail: bytes) -> bytearray | None:
    """``head``, the JSON array of ``strings``, ``tail``; None unless the text is hex strings, one per line.

    The text is read into a buffer between ``head + '["'`` and ``']' + tail``, its last newline
    becomes the closing quote, and one ``replace`` turns the other newlines into ``", "`` (JSON
    text has no raw newline, so only the text's newlines are replaced).
    """
    count, nbytes = len(strings), strings.nbytes
    if count == 0 or nbytes == 0 or b"\n" in head or b"\n" in tail:
        return None
    start = len(head) + 2
    end = start + nbytes
    buffer = _scratch_buffer(end + 1 + len(tail))
    with memoryview(buffer) as view:
        view[:start] = head + b'["'
        strings.read_into(view[start:end])
        view[end] = 0x5D  # "]"
        view[end + 1 :] = tail
    if buffer[end - 1] != 0x0A:
        return None
    width = nbytes // count
    # Lines of one width (digests): each byte mapped to "0" (hex digit), "\n" or "." must give the
    # cached pattern; one translate without deletions, about half the cost of the check below.
    fixed = width * count == nbytes and buffer.translate(_HEX_MARKS).startswith(_hex_lines(width, count), start)
    buffer[end - 1] = 0x22  # the text's last newline becomes the closing quote
    if not fixed:
        # Deleting the hex digits leaves what it leaves of head and tail, and count - 1 newlines between.
        expected = head.translate(None, _HEX) + b'["' + b"\n" * (count - 1) + b'"]' + tail.translate(None, _HEX)
        if buffer.translate(None, _HEX) != expected:
            return None
    return buffer.replace(b"\n", b'", "')


#: Every byte to "." except hex digits (to "0") and the newline.
_HEX_MARKS = bytes(0x30 if chr(b) in "0123456789abcdefABCDEF" else 0x0A if b == 0x0A else 0x2E for b in range(256))


@functools.lru_cache(maxsize=4)
def _hex_lines(width: int, count: int) -> bytes:
    """What :data:`_HEX_MARKS` makes of ``count`` hex strings of ``width - 1`` digits, one per line."""
    return (b"0" * (width - 1) + b"\n") * count


def _plain(value: Any) -> Any:
    """``value`` with each :class:`JsonStrings` as the list of its strings."""
    if isinstance(value, JsonStrings):
        return list(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _encode(value: Any, raw: list[JsonStrings]) -> str:
    if isinstance(value, JsonStrings):
        raw.append(value)
        return f"\x00{len(raw) - 1}\x00"
    if type(value) is dict and all(type(k) is str for k in value):
        return "{" + ", ".join(f"{_json.dumps(k)}: {_encode(v, raw)}" for k, v in value.items()) + "}"
    if type(value) is list and len(value) > 16 and set(map(type, value)) == {str}:
        text = "".join(value)
        if text.isascii() and text.encode("ascii").isalnum() and all(value):
            # One join writes the brackets too: a second copy of megabytes costs its page faults again.
            inner = itertools.islice(value, 1, len(value) - 1)
            return '", "'.join(itertools.chain(('["' + value[0],), inner, (value[-1] + '"]',)))
    return _json.dumps(value, allow_nan=False)


@dataclass(frozen=True)
class Timeouts:
    """Seconds to wait for the TCP connection and for each read of the answer."""

    connect: float = 10.0
    read: float = 60.0

    def as_requests(self) -> tuple[float, float]:
        return (self.connect, self.read)


@dataclass(frozen=True)
class RetryPolicy:
    """When and how long to retry. ``max_elapsed`` bounds the whole call, waits included."""

    max_attempts: int = 5
    max_elapsed: float = 300.0
    backoff_initial: float = 1.0
    backoff_max: float = 60.0
    retry_statuses: frozenset[int] = frozenset({429, 500, 502, 503, 504})
    #: A Retry-After longer than this is not slept on: the call fails with AudienceRateLimitError.
    max_retry_after: float = 300.0

    def with_overrides(self, **overrides: Any) -> RetryPolicy:
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})


@dataclass
class ErrorInfo:
    """What a vendor's error envelope says, in our terms. Every field is optional."""

    message: str | None = None
    code: str | None = None
    field: str | None = None
    request_id: str | None = None
    #: A vendor-specific error class (e.g. a quota error answered with HTTP 200); None = by status.
    error_class: type[AudienceError] | None = None
    #: Whether the vendor marks this error transient (None: decide by HTTP status).
    retryable: bool | None = None
    details: Any = None
    #: What to check, replacing the connection's credentials hint (e.g. a consent, not the secret).
    hint: str | None = None


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` value: delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        # "nan"/"inf" parse as floats but are no wait a server can mean: treat them as garbage.
        return max(0.0, seconds) if math.isfinite(seconds) else None
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    if when.tzinfo is None:  # HTTP dates are always GMT; never read one as local time
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def default_retry_after(response: requests.Response) -> float | None:
    """``Retry-After`` first; then the common reset headers (epoch seconds or delta seconds)."""
    wait = parse_retry_after(response.headers.get("Retry-After"))
    if wait is not None:
        return wait
    for name in ("X-RateLimit-Reset", "RateLimit-Reset", "X-Rate-Limit-Reset"):
        raw = response.headers.get(name)
        if not raw:
            continue
        try:
            number = float(raw)
        except ValueError:
            continue
        # Epoch timestamps are large; small numbers are delta-seconds (RFC draft RateLimit-Reset).
        return max(0.0, number - time.time()) if number > 1_000_000_000 else max(0.0, number)
    return None


def _no_error_info(response: requests.Response) -> ErrorInfo:
    return ErrorInfo()


@dataclass
class VendorProfile:
    """What one vendor plugs into the transport. Everything else is shared."""

    name: str
    parse_error: Callable[[requests.Response], ErrorInfo] = _no_error_info
    request_id_headers: tuple[str, ...] = ("X-Request-Id", "Request-Id", "X-Correlation-Id")
    retry_after: Callable[[requests.Response], float | None] = default_retry_after
    #: endpoint class -> documented quota; "default" applies when a call names no class.
    rate_limits: Mapping[str, RateLimit] = field(default_factory=dict)
    #: Inspect a 2xx answer and return an ErrorInfo if it is really an error (HTTP-200 errors).
    body_error: Callable[[requests.Response], ErrorInfo | None] | None = None
    #: For vendors that report a budget's state in every answer: seconds until the endpoint class'
    #: budget frees up when the answer says it is used up, 0 when it says some is left, None when
    #: it says nothing. The rate limiter then holds the budget for every client (see RateLimiter.hold).
    budget_spent: Callable[[requests.Response], float | None] | None = None
    #: A reported hold longer than this is ignored: the call goes ahead and the vendor's 429 decides.
    max_budget_pause: float = 60.0


#: ``guard(timeouts, landing)``, called before each attempt of a write with the attempt's timeouts and
#: the seconds after its start during which the vendor may still apply it; it raises to stop the call.
SendGuard = Callable[[Timeouts, float], None]


class _RetryableAttempt(Exception):
    """Internal: one attempt failed in a way worth retrying; carries the final error to raise."""

    def __init__(self, error: AudienceError, wait_hint: float | None = None) -> None:
        self.error = error
        self.wait_hint = wait_hint
        super().__init__(error.message)


def _reached_server(exc: requests.RequestException) -> bool:
    """False only when the request certainly never reached the vendor (safe to resend a POST)."""
    if isinstance(exc, requests.exceptions.ConnectTimeout):
        return False
    text = repr(exc)
    return not ("NewConnectionError" in text or "Connection refused" in text or "NameResolutionError" in text)


class Transport:
    """An authenticated, retried, rate-limited HTTP client for one vendor connection."""

    def __init__(
        self,
        profile: VendorProfile,
        base_url: str,
        auth: requests.auth.AuthBase | None,
        *,
        timeouts: Timeouts | None = None,
        retry: RetryPolicy | None = None,
        budget_key: str = "",
        limiter: RateLimiter | None = None,
        user_agent: str | None = None,
        headers: Mapping[str, str] | None = None,
        session: requests.Session | None = None,
        sleep: Callable[[float], None] = time.sleep,
        credentials_hint: str | None = None,
    ) -> None:
        self.profile = profile
        self.base_url = base_url.rstrip("/")
        self.auth = auth
        self.timeouts = timeouts or Timeouts()
        self.retry = retry or RetryPolicy()
        self.budget_key = budget_key
        self.limiter = limiter or default_rate_limiter()
        self.session = session or requests.Session()
        self.session.headers["User-Agent"] = user_agent or _default_user_agent()
        if headers:
            self.session.headers.update(headers)
        self._sleep = sleep
        #: Count of HTTP requests actually sent (retries included); handy in logs and tests.
        self.requests_sent = 0
        #: Guards the two counters above and below against requests sent from several threads.
        self._counters = threading.Lock()
        #: Endpoints already reported as deprecated (one warning per endpoint and transport).
        self.deprecations_seen: dict[str, dict[str, str]] = {}
        #: Appended to authentication and permission errors, e.g. which connection field to fix.
        self.credentials_hint = credentials_hint
        #: Called as ``observer(response, endpoint_class)`` with every HTTP response received, success
        #: or error, before it is judged: for vendors that report quotas in headers on every answer
        #: (e.g. Yandex Direct ``Units``). The endpoint class is the one the call named, so observers
        #: need no state on the hook and calls may run on threads. An observer must not raise; if
        #: one does, the error is logged and the call goes on.
        self.response_observers: list[Callable[[requests.Response, str], None]] = []
        #: ``time.monotonic()`` of the last attempt abandoned after it may have reached the vendor
        #: (read timeout, dropped connection): that request may still be applied later.
        self.last_unknown_outcome: float | None = None
        #: ``time.monotonic()`` of the last write (not GET/HEAD/OPTIONS) answered with a 5xx: behind a
        #: gateway that gave up (504) the vendor may still apply it. Not part of :meth:`unsettled_until`;
        #: callers whose next request depends on such a write read it (the contact-list chunk senders).
        self.last_server_error: float | None = None
        #: Seconds such a request may still be applied by the vendor (assumption); None = 3 of that
        #: request's read timeouts (an upload's own, larger timeout counts, not the connection's).
        self.settle_seconds: float | None = None
        #: The latest ``abandoned at + 3 read timeouts`` of the abandoned requests (0 = none).
        self._settle_deadline: float = 0.0
        #: Seconds between read-backs of a write whose answer was lost, while it may still land.
        self.read_back_interval: float = 5.0
        #: Checks run before every attempt of a write (see :meth:`guard_sends`).
        self._send_guards: list[SendGuard] = []

    # -- public API -------------------------------------------------------------------------

    @contextmanager
    def guard_sends(self, guard: SendGuard) -> Iterator[None]:
        """Run ``guard(timeouts, landing)`` before every attempt of a write (not GET/HEAD/OPTIONS) while inside.

        It runs after the rate limiter's wait, just before the request is sent, on first attempts
        and retries alike; ``landing`` is :meth:`landing_window` of the attempt's timeouts. An
        exception it raises stops the call unsent and propagates unchanged (it is never retried).
        """
        with self._counters:
            self._send_guards.append(guard)
        try:
            yield
        finally:
            with self._counters:
                self._send_guards.remove(guard)

    def landing_window(self, timeouts: Timeouts | None = None) -> float:
        """Seconds after it was sent that a request with ``timeouts`` may still be applied by the vendor.

        Its read timeout (the client gives up), then the settle time of an abandoned request:
        ``settle_seconds``, else three read timeouts (as :meth:`unsettled_until` assumes).
        """
        read = float((timeouts or self.timeouts).read)
        return read + (self.settle_seconds if self.settle_seconds is not None else 3 * read)

    def url(self, path: str) -> str:
        if path.startswith(("http://", "https://")):
            return path
        return f"{self.base_url}/{path.lstrip('/')}"

    def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | Iterable[tuple[str, Any]] | None = None,
        json: Any = None,
        data: Any = None,
        files: Any = None,
        headers: Mapping[str, str] | None = None,
        endpoint_class: str = "default",
        idempotent: bool | None = None,
        timeouts: Timeouts | None = None,
        allowed_statuses: Iterable[int] = (),
    ) -> requests.Response:
        """Send one logical request; retry what may be retried; raise a typed error otherwise.

        :param endpoint_class: which of the vendor's quotas this call counts against.
        :param idempotent: whether resending cannot apply the change twice; defaults by method.
        :param allowed_statuses: non-2xx statuses returned to the caller instead of raised.
        """
        method = method.upper()
        if json is not None and data is None and files is None:
            # Encoded once for every attempt; same bytes as requests' own json= encoding.
            data = encode_json(json)
            headers = {"Content-Type": "application/json", **(headers or {})}
            json = None
        if idempotent is None:
            idempotent = method in IDEMPOTENT_METHODS
        allowed = frozenset(allowed_statuses)
        policy = self.retry
        url = self.url(path)
        label = f"{self.profile.name} {method} {_path_only(path)}"
        auth_refreshed = False

        def attempt() -> requests.Response:
            nonlocal auth_refreshed
            self._throttle(endpoint_class, label)
            if method not in _SAFE_METHODS and self._send_guards:
                attempt_timeouts = timeouts or self.timeouts
                landing = self.landing_window(attempt_timeouts)
                with self._counters:
                    guards = list(self._send_guards)
                for guard in guards:
                    guard(attempt_timeouts, landing)
            try:
                with self._counters:
                    self.requests_sent += 1
                response = self.session.request(
                    method,
                    url,
                    params=params,
                    json=json,
                    data=data,
                    files=files,
                    headers=dict(headers or {}),
                    auth=self.auth,
                    timeout=(timeouts or self.timeouts).as_requests(),
                )
            except requests.RequestException as exc:
                if _reached_server(exc):
                    read_timeout = float((timeouts or self.timeouts).read)
                    with self._counters:  # keep the latest: two threads may store out of order
                        now = time.monotonic()
                        self.last_unknown_outcome = max(now, self.last_unknown_outcome or now)
                        self._settle_deadline = max(self._settle_deadline, now + 3 * read_timeout)
                ambiguous = not idempotent and _reached_server(exc)
                error = AudienceTransportError(
                    f"{label} failed: {type(exc).__name__}"
                    + ("; the vendor may have applied it, read back before resending" if ambiguous else ""),
                    vendor=self.profile.name,
                )
                if not ambiguous:
                    raise _RetryableAttempt(error) from exc
                raise error from exc
            self._observe(response, endpoint_class)
            status = response.status_code
            if status >= 500 and method not in _SAFE_METHODS:
                with self._counters:
                    self.last_server_error = max(time.monotonic(), self.last_server_error or 0.0)
            self._warn_deprecation(response, label)
            if 200 <= status < 300 and self.profile.body_error is not None:
                info = self.profile.body_error(response)
                if info is not None:
                    self._raise_or_retry(response, info, label, idempotent)
            if 200 <= status < 300 or status in allowed:
                return response
            if status == 401 and isinstance(self.auth, OAuth2ClientCredentials) and not auth_refreshed:
                # A token revoked or expired early: mint a new one once, then resend.
                auth_refreshed = True
                self.auth.invalidate(_bearer_of(response))
                raise _RetryableAttempt(self._error_for(response, self._parse(response), label), 0.0)
            self._raise_or_retry(response, self._parse(response), label, idempotent)
            raise AssertionError("unreachable")  # pragma: no cover

        retrying = Retrying(
            retry=retry_if_exception_type(_RetryableAttempt),
            wait=lambda state: self._wait(state, policy),
            stop=lambda state: self._stop(state, policy),
            before_sleep=lambda state: self._log_retry(state, policy, label),
            sleep=self._sleep,
            reraise=True,
        )
        try:
            return retrying(attempt)
        except _RetryableAttempt as final:
            raise final.error from final.__cause__

    def settle_window(self) -> float:
        """Seconds a request of unknown outcome may still land: ``settle_seconds``, else three read timeouts."""
        return self.settle_seconds if self.settle_seconds is not None else 3 * float(self.timeouts.read)

    def unsettled_until(self) -> float:
        """``time.monotonic()`` until which an abandoned request of this transport may still land (0 = none)."""
        if self.last_unknown_outcome is None:
            return 0.0
        if self.settle_seconds is not None:
            return self.last_unknown_outcome + self.settle_seconds
        with self._counters:
            return max(self._settle_deadline, self.last_unknown_outcome + self.settle_window())

    def json(self, method: str, path: str, **kwargs: Any) -> Any:
        """:meth:`request` and decode the JSON answer; ``None`` for an empty body (204)."""
        response = self.request(method, path, **kwargs)
        if not response.content or response.status_code == 204:
            return None
        try:
            return response.json()
        except ValueError as exc:
            raise AudienceServerError(
                f"{self.profile.name} {method} {_path_only(path)} answered {response.status_code} "
                "with a body that is not JSON",
                vendor=self.profile.name,
                status=response.status_code,
                request_id=self._request_id(response, ErrorInfo()),
            ) from exc

    async def arequest(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        """:meth:`request` for triggers: runs in a worker thread, never blocking the event loop."""
        return await to_thread(self.request, method, path, **kwargs)

    async def ajson(self, method: str, path: str, **kwargs: Any) -> Any:
        return await to_thread(self.json, method, path, **kwargs)

    def close(self) -> None:
        self.session.close()

    # -- internals --------------------------------------------------------------------------

    def _ledger_key(self, scope: str, per_account: bool = True) -> str:
        owner = self.budget_key if per_account else "*"
        return f"{self.profile.name}:{owner}:{scope}"

    def _throttle(self, endpoint_class: str, label: str) -> None:
        limit = self.profile.rate_limits.get(endpoint_class) or self.profile.rate_limits.get("default")
        # Windows of a shared scope (a daily budget, a per-IP limit) have their own ledger.
        groups: dict[tuple[str, bool], list[Window]] = {}
        for window in limit.windows if limit is not None else ():
            groups.setdefault((window.scope or endpoint_class, window.per_account), []).append(window)
        if self.profile.budget_spent is not None:
            groups.setdefault((endpoint_class, True), [])  # where the vendor's "used up" holds live
        if not groups:
            return
        budgets = [
            Budget(self._ledger_key(scope, per_account), tuple(ws)) for (scope, per_account), ws in groups.items()
        ]
        max_wait = limit.max_wait if limit is not None else self.profile.max_budget_pause
        try:
            self.limiter.acquire_all(budgets, max_wait)
        except QuotaWouldBlock as exc:
            raise AudienceRateLimitError(
                f"{label} not sent: client-side quota {exc.window.describe()} is used up "
                f"for this {self.profile.name} account; it frees up in {exc.wait:.0f} s",
                vendor=self.profile.name,
                retry_after=exc.wait,
                code="client_quota",
            ) from exc

    def _observe(self, response: requests.Response, endpoint_class: str) -> None:
        if self.profile.budget_spent is not None:
            try:
                spent = self.profile.budget_spent(response)
                if spent is not None and spent <= self.profile.max_budget_pause:
                    self.limiter.hold(self._ledger_key(endpoint_class), spent)
            except Exception:
                log.warning("Could not record the %s budget state", self.profile.name, exc_info=True)
        for observer in self.response_observers:
            try:
                observer(response, endpoint_class)
            except Exception:  # bookkeeping must never turn an answer into a failure
                log.warning("A %s response observer failed", self.profile.name, exc_info=True)

    def _warn_deprecation(self, response: requests.Response, label: str) -> None:
        """Warn once per endpoint when the vendor marks it deprecated (RFC 9745 / RFC 8594 headers).

        ``Deprecation`` and ``Sunset`` announce that the API version stops working soon; the
        connection's version setting should be raised before the sunset date.
        """
        deprecation = response.headers.get("Deprecation")
        sunset = response.headers.get("Sunset")
        if not (deprecation or sunset) or label in self.deprecations_seen:
            return
        self.deprecations_seen[label] = {"deprecation": deprecation or "", "sunset": sunset or ""}
        log.warning(
            "%s: the vendor marks this endpoint deprecated (Deprecation: %s, Sunset: %s); "
            "move to a newer API version before the sunset date",
            label,
            deprecation or "-",
            sunset or "-",
        )

    def _parse(self, response: requests.Response) -> ErrorInfo:
        try:
            return self.profile.parse_error(response)
        except Exception:  # a malformed error body must not hide the HTTP status
            log.debug("Could not parse the %s error body", self.profile.name, exc_info=True)
            return ErrorInfo()

    def _request_id(self, response: requests.Response, info: ErrorInfo) -> str | None:
        if info.request_id:
            return info.request_id
        for name in self.profile.request_id_headers:
            if response.headers.get(name):
                return response.headers[name]
        return None

    def _error_for(self, response: requests.Response, info: ErrorInfo, label: str) -> AudienceError:
        status = response.status_code
        cls = info.error_class or error_class_for_status(status)
        message = f"{label} failed with HTTP {status}"
        if info.message:
            message += f": {info.message}"
        hint = info.hint if info.hint is not None else self.credentials_hint
        if hint and issubclass(cls, (AudienceAuthenticationError, AudiencePermissionError)):
            message += f"; {hint}"
        kwargs: dict[str, Any] = {
            "vendor": self.profile.name,
            "status": status,
            "code": info.code,
            "request_id": self._request_id(response, info),
            "details": info.details,
        }
        if issubclass(cls, AudienceRateLimitError):
            kwargs["retry_after"] = self.profile.retry_after(response)
        if issubclass(cls, AudienceValidationError):
            kwargs["field"] = info.field
        return cls(message, **kwargs)

    def _raise_or_retry(self, response: requests.Response, info: ErrorInfo, label: str, idempotent: bool) -> None:
        error = self._error_for(response, info, label)
        status = response.status_code
        transient = info.retryable if info.retryable is not None else status in self.retry.retry_statuses
        rate_limited = isinstance(error, AudienceRateLimitError) or status == 429
        if not transient:
            raise error
        wait_hint = self.profile.retry_after(response)
        if wait_hint is not None and wait_hint > self.retry.max_retry_after:
            raise AudienceRateLimitError(
                f"{label}: the vendor asks to wait {wait_hint:.0f} s, longer than the "
                f"{self.retry.max_retry_after:.0f} s this task may wait",
                vendor=self.profile.name,
                status=status,
                code=info.code,
                request_id=error.request_id,
                retry_after=wait_hint,
            )
        # A rate-limited request was refused, so resending cannot apply it twice.
        if rate_limited or idempotent:
            raise _RetryableAttempt(error, wait_hint)
        raise error

    def _wait(self, state: RetryCallState, policy: RetryPolicy) -> float:
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, _RetryableAttempt) and exc.wait_hint is not None:
            # Honour the vendor's hint, with a little jitter so parallel tasks do not stampede.
            return exc.wait_hint + random.uniform(0, min(1.0, policy.backoff_initial))
        ceiling = min(policy.backoff_max, policy.backoff_initial * 2 ** (state.attempt_number - 1))
        return random.uniform(ceiling / 2, ceiling)  # "equal jitter" exponential backoff

    @staticmethod
    def _stop(state: RetryCallState, policy: RetryPolicy) -> bool:
        if state.attempt_number >= policy.max_attempts:
            return True
        return (state.seconds_since_start or 0.0) + (state.upcoming_sleep or 0.0) > policy.max_elapsed

    def _log_retry(self, state: RetryCallState, policy: RetryPolicy, label: str) -> None:
        exc = state.outcome.exception() if state.outcome else None
        reason = exc.error.message if isinstance(exc, _RetryableAttempt) else repr(exc)
        request_id = exc.error.request_id if isinstance(exc, _RetryableAttempt) else None
        log.warning(
            "%s (attempt %d of %d); retrying in %.1f s%s",
            reason,
            state.attempt_number,
            policy.max_attempts,
            state.upcoming_sleep,
            f" [request_id={request_id}]" if request_id else "",
        )


def call_with_read_back(
    send: Callable[[], T],
    read_back: Callable[[], T | None],
    *,
    attempts: int = 3,
    what: str = "request",
    transport: Transport | None = None,
) -> T:
    """Safely repeat a non-idempotent call: after an ambiguous failure, look before resending.

    ``send`` performs the write (e.g. create a segment); ``read_back`` looks for its effect
    (e.g. the segment by slug) and returns it, or None if the write did not happen. Ambiguous
    failures are 5xx answers and transport errors after the request may have reached the vendor.
    With ``transport``, a write not found yet is read back again every ``read_back_interval``
    seconds while the unanswered request may still land (:meth:`Transport.unsettled_until`), and
    resent only after that: a request that lands after its read timeout is not doubled.
    """
    last: AudienceError | None = None
    for attempt in range(1, attempts + 1):
        try:
            return send()
        except (AudienceServerError, AudienceTransportError) as exc:
            last = exc
            found = read_back()
            while found is None and transport is not None:
                left = transport.unsettled_until() - time.monotonic()
                if left <= 0:
                    break
                log.info("%s not found yet; reading back again while it may still land (%.0f s)", what, left)
                time.sleep(min(left, transport.read_back_interval))
                found = read_back()
            if found is not None:
                log.warning("%s failed ambiguously (%s) but had been applied; using it", what, exc.message)
                return found
            log.warning("%s failed (%s) and was not applied (attempt %d of %d)", what, exc.message, attempt, attempts)
    assert last is not None
    raise last


def _bearer_of(response: requests.Response) -> str | None:
    """The bearer token a refused request carried, so only that token is forgotten."""
    header = str(response.request.headers.get("Authorization", "")) if response.request is not None else ""
    return header[7:] if header.lower().startswith("bearer ") else None


def _path_only(path: str) -> str:
    """The path without its query string, for logs (queries may carry filters)."""
    return path.split("?", 1)[0]


def _default_user_agent() -> str:
    return f"airflow-audience-provider/{__version__} (+https://pypi.org/project/airflow-audience-provider/)"
