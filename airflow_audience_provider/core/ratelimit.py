"""Client-side rate limits: stay under each vendor's documented quotas instead of collecting 429s.

A :class:`RateLimit` is a set of sliding windows ("10 requests per second", "1000 per hour")
for one vendor and one endpoint class. Budgets live in a ledger backend chosen by configuration
(:func:`default_rate_limiter`):

* **file** (the default): a small JSON file per budget under ``$AIRFLOW_HOME/audience_ratelimits``,
  guarded by ``fcntl.flock``: every process on the host shares the budget, hosts do not;
* **redis**: sorted sets on a Redis server, changed by one Lua script per request, so workers on
  several hosts (e.g. CeleryExecutor workers sharing their broker) share one budget;
* **memory**: this process only.

A request may draw from several budgets at once (a per-minute window of its endpoint class plus a
daily budget shared by all classes); it takes a slot in all of them or in none. A vendor answer
saying a budget is used up (a remaining-count header of 0) puts a *hold* on the budget until the
vendor's reset time, which every client of the backend waits out.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import threading
import time
import uuid
import weakref
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

log = logging.getLogger(__name__)

#: Airflow configuration option naming the ledger backend (also ``AIRFLOW__AUDIENCE__RATE_LIMIT_BACKEND``).
CONFIG_SECTION, CONFIG_OPTION = "audience", "rate_limit_backend"

#: A client window stays closed this share of its length longer than the vendor's (see :attr:`Window.span`).
WINDOW_MARGIN_FRACTION = 0.02
#: The longest margin, in seconds, whatever the window's length.
WINDOW_MARGIN_MAX = 0.25


@dataclass(frozen=True)
class Window:
    """At most ``limit`` requests in any ``seconds``-long sliding window.

    By default a window counts the requests of its own endpoint class for one vendor account.
    ``scope`` names a budget shared by several endpoint classes instead (e.g. a daily request
    budget that reads and writes draw from alike); ``per_account=False`` makes it shared by
    every account of the vendor on this host (a per-IP limit). Every endpoint class naming the
    same scope must give it the same windows, in the same order.
    """

    limit: int
    seconds: float
    label: str = ""
    scope: str = ""
    per_account: bool = True

    def describe(self) -> str:
        return self.label or f"{self.limit} requests per {self.seconds:g} s"

    @property
    def span(self) -> float:
        """How long a stamp counts on the client: ``seconds`` plus a safety margin.

        The vendor's window starts when a request arrives, a network trip after our stamp; a
        slot freed exactly ``seconds`` after the stamp could reach the vendor before its own
        window has ended, and be answered 429. The margin is :data:`WINDOW_MARGIN_FRACTION` of
        the window, at most :data:`WINDOW_MARGIN_MAX` seconds (20 ms on a 1 s window, 0.25 s on
        a minute or longer).
        """
        return self.seconds + min(self.seconds * WINDOW_MARGIN_FRACTION, WINDOW_MARGIN_MAX)


@dataclass(frozen=True)
class RateLimit:
    """The windows that apply to one endpoint class of one vendor."""

    windows: tuple[Window, ...]
    #: If the wait for a free slot would exceed this, raise instead of sleeping (daily quotas).
    max_wait: float = 300.0

    @classmethod
    def per_second(cls, limit: int, **kwargs: float) -> RateLimit:
        return cls((Window(limit, 1.0),), **kwargs)


@dataclass(frozen=True)
class Budget:
    """One ledger: its key (vendor, account, endpoint class or scope) and the windows it enforces.

    A budget without windows only carries holds (see :meth:`RateLimiter.hold`).
    """

    key: str
    windows: tuple[Window, ...] = ()


#: The culprit reported when a hold, not a window, makes a request wait.
HOLD = Window(0, 0.0, "the vendor reported this budget used up until its reset")


@dataclass
class _Ledger:
    """Timestamps of recent requests per window, oldest first, and a hold set by the vendor's answer."""

    stamps: dict[int, deque[float]] = field(default_factory=dict)
    held_until: float = 0.0

    def wait_needed(self, windows: tuple[Window, ...], now: float) -> tuple[float, Window | None]:
        worst, culprit = 0.0, None
        for index, window in enumerate(windows):
            stamps = self.stamps.setdefault(index, deque())
            while stamps and stamps[0] <= now - window.span:
                stamps.popleft()
            if len(stamps) >= window.limit:
                wait = stamps[len(stamps) - window.limit] + window.span - now
                if wait > worst:
                    worst, culprit = wait, window
        if self.held_until - now > worst:
            worst, culprit = self.held_until - now, HOLD
        return worst, culprit

    def record(self, windows: tuple[Window, ...], now: float) -> None:
        for index, _window in enumerate(windows):
            self.stamps.setdefault(index, deque()).append(now)

    def to_json(self) -> str:
        stored: dict[str, Any] = {str(k): list(v) for k, v in self.stamps.items()}
        if self.held_until:
            stored["held_until"] = self.held_until
        return json.dumps(stored)

    @classmethod
    def from_json(cls, raw: str) -> _Ledger:
        try:
            stored = json.loads(raw) if raw else {}
            held = float(stored.pop("held_until", 0.0))
            return cls({int(k): deque(float(s) for s in v) for k, v in stored.items()}, held)
        except (TypeError, ValueError, AttributeError):
            return cls()  # a torn write from a killed process: start a fresh ledger


class QuotaWouldBlock(Exception):
    """The next free slot is further away than the limit's ``max_wait``."""

    def __init__(self, wait: float, window: Window) -> None:
        self.wait = wait
        self.window = window
        super().__init__(f"quota {window.describe()} is used up; next slot in {wait:.0f} s")


class LedgerBackend(Protocol):
    """Where budgets live. Both methods are atomic over every budget they are given."""

    def try_acquire(self, budgets: Sequence[Budget], now: float) -> tuple[float, Window | None]:
        """Take one slot in every budget and return ``(0, None)``; or take none and return the
        seconds until the fullest one frees up and the window responsible."""
        ...

    def hold(self, key: str, seconds: float, now: float) -> None:
        """Hold ``key`` for ``seconds`` from ``now`` (replacing any hold); ``seconds <= 0`` lifts it."""
        ...


class MemoryBackend:
    """Budgets of this process only."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ledgers: dict[str, _Ledger] = {}

    def try_acquire(self, budgets: Sequence[Budget], now: float) -> tuple[float, Window | None]:
        with self._lock:
            return _decide({b.key: self._ledgers.setdefault(b.key, _Ledger()) for b in budgets}, budgets, now)

    def hold(self, key: str, seconds: float, now: float) -> None:
        with self._lock:
            self._ledgers.setdefault(key, _Ledger()).held_until = now + seconds if seconds > 0 else 0.0


class FileBackend:
    """Budgets shared by every process of the host: one JSON file per budget, ``fcntl.flock``-ed.

    Several budgets are locked in the order of their file names, so two processes taking the same
    budgets cannot deadlock. File names are hashes: they do not reveal the account.

    Each budget's file stays open in this process (reopened after a fork, since a forked child's
    copy would share the parent's lock, and when the file was removed meanwhile). A ledger is
    rewritten in place and padded with spaces to the file's size (JSON ignores them): a request
    costs a lock, a read and a write, no open, truncate or close.
    """

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = Path(state_dir)
        self._lock = threading.Lock()  # flock is per open file, not per thread: serialise threads too
        self._fds: dict[str, int] = {}
        self._pid = os.getpid()
        weakref.finalize(self, _close_all, self._fds)  # a backend dropped (tests make many) leaves no descriptor open

    def try_acquire(self, budgets: Sequence[Budget], now: float) -> tuple[float, Window | None]:
        with self._locked([b.key for b in budgets]) as ledgers:
            return _decide(ledgers, budgets, now)

    def hold(self, key: str, seconds: float, now: float) -> None:
        with self._locked([key]) as ledgers:
            ledgers[key].held_until = now + seconds if seconds > 0 else 0.0

    def _path(self, key: str) -> Path:
        return self.state_dir / (hashlib.sha256(key.encode()).hexdigest()[:32] + ".json")

    def _open(self, key: str) -> int:
        """This process's descriptor of the budget's file (under ``self._lock``)."""
        if self._pid != os.getpid():  # a forked child: the parent's descriptors share its locks
            _close_all(self._fds)
            self._pid = os.getpid()
        fd = self._fds.get(key)
        if fd is None:
            self.state_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(self._path(key), os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o666)
            self._fds[key] = fd
        return fd

    def _lock_file(self, key: str) -> tuple[int, int]:
        """Lock the budget's file; ``(descriptor, size)``. A file removed meanwhile is reopened by its name."""
        for _ in range(3):
            fd = self._open(key)
            fcntl.flock(fd, fcntl.LOCK_EX)
            info = os.fstat(fd)
            if info.st_nlink > 0:
                return fd, info.st_size
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(self._fds.pop(key))
        raise OSError(f"the rate-limit ledger {self._path(key)} keeps being removed")

    @contextlib.contextmanager
    def _locked(self, keys: list[str]) -> Iterator[dict[str, _Ledger]]:
        ordered = sorted(set(keys), key=lambda k: self._path(k).name)
        with self._lock, contextlib.ExitStack() as stack:
            files: dict[str, tuple[int, int]] = {}
            for key in ordered:
                fd, size = self._lock_file(key)
                stack.callback(fcntl.flock, fd, fcntl.LOCK_UN)
                files[key] = (fd, size)
            ledgers = {}
            for key, (fd, size) in files.items():
                raw = os.pread(fd, size, 0) if size else b""
                ledgers[key] = _Ledger.from_json(raw.decode("utf-8", "replace"))
            yield ledgers
            for key, (fd, size) in files.items():
                data = ledgers[key].to_json().encode()
                os.pwrite(fd, data.ljust(size, b" "), 0)  # never shorter than the file: no truncate


def _close_all(fds: dict[str, int]) -> None:
    for fd in fds.values():
        with contextlib.suppress(OSError):
            os.close(fd)
    fds.clear()


def _decide(ledgers: dict[str, _Ledger], budgets: Sequence[Budget], now: float) -> tuple[float, Window | None]:
    """All budgets have room: record the request in each. Otherwise record nothing anywhere."""
    worst, culprit = 0.0, None
    for budget in budgets:
        wait, window = ledgers[budget.key].wait_needed(budget.windows, now)
        if wait > worst:
            worst, culprit = wait, window
    if worst > 0:
        return worst, culprit
    for budget in budgets:
        ledgers[budget.key].record(budget.windows, now)
    return 0.0, None


# One round trip per request: trim every window, check them and the holds, then record in all or none.
# Windows run on the Redis server's clock, so workers whose clocks disagree still share one window.
# KEYS: one sorted set per window, then one hold key per budget.
# ARGV: member, number of windows, number of holds, then limit and span (seconds plus margin) of each window.
_REDIS_ACQUIRE = """
if redis.replicate_commands then pcall(redis.replicate_commands) end
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local windows, holds = tonumber(ARGV[2]), tonumber(ARGV[3])
local worst, culprit = 0, 0
for i = 1, windows do
  local limit, seconds = tonumber(ARGV[2 + 2 * i]), tonumber(ARGV[3 + 2 * i])
  redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', now - seconds)
  local count = redis.call('ZCARD', KEYS[i])
  if count >= limit then
    local oldest = redis.call('ZRANGE', KEYS[i], count - limit, count - limit, 'WITHSCORES')
    local wait = tonumber(oldest[2]) + seconds - now
    if wait > worst then worst, culprit = wait, i end
  end
end
for j = 1, holds do
  local held = redis.call('GET', KEYS[windows + j])
  if held and tonumber(held) - now > worst then worst, culprit = tonumber(held) - now, -j end
end
if worst > 0 then return {tostring(worst), culprit} end
for i = 1, windows do
  redis.call('ZADD', KEYS[i], now, ARGV[1] .. ':' .. i)
  redis.call('PEXPIRE', KEYS[i], math.ceil(tonumber(ARGV[3 + 2 * i]) * 1000) + 1000)
end
return {'0', 0}
"""

# KEYS: the hold key. ARGV: seconds to hold (<= 0 lifts the hold).
_REDIS_HOLD = """
if redis.replicate_commands then pcall(redis.replicate_commands) end
local seconds = tonumber(ARGV[1])
if seconds <= 0 then return redis.call('DEL', KEYS[1]) end
local t = redis.call('TIME')
local until_ = tonumber(t[1]) + tonumber(t[2]) / 1000000 + seconds
redis.call('SET', KEYS[1], tostring(until_), 'PX', math.ceil(seconds * 1000) + 1000)
return 1
"""


class RedisBackend:
    """Budgets shared by every host that reaches one Redis server (``redis://``, ``rediss://``, ``unix://``).

    Each window is a sorted set of request stamps; one Lua script checks and records a request in
    every budget it draws from, atomically. Keys are hashes under one hash tag
    (``{audience-ratelimit}``), so a Redis Cluster keeps them on one node and scripts may touch
    several. Keys expire with their longest window. The ``redis`` package is imported on first use
    (``pip install 'airflow-audience-provider[redis]'``).

    If the server cannot be reached, the request goes ahead on this process' own budget and a
    warning is logged (at most once a minute): a rate-limit outage should not stop pipelines, and
    the vendor's 429 answers, which the transport retries, remain the last line.
    """

    PREFIX = "{audience-ratelimit}"

    def __init__(self, url: str, client: Any = None) -> None:
        self.url = url
        self._client = client
        self._scripts: tuple[Any, Any] | None = None
        self._fallback = MemoryBackend()
        self._lock = threading.Lock()
        self._last_warning = 0.0

    def _redis(self) -> tuple[Any, Any]:
        with self._lock:
            if self._scripts is None:
                if self._client is None:
                    self._client = redis_from_url(self.url, CONFIG_OPTION)
                self._scripts = (
                    self._client.register_script(_REDIS_ACQUIRE),
                    self._client.register_script(_REDIS_HOLD),
                )
            return self._scripts

    def _key(self, key: str, suffix: str) -> str:
        return f"{self.PREFIX}:{hashlib.sha256(key.encode()).hexdigest()[:32]}:{suffix}"

    def try_acquire(self, budgets: Sequence[Budget], now: float) -> tuple[float, Window | None]:
        acquire, _ = self._redis()
        windows = [(b, i, w) for b in budgets for i, w in enumerate(b.windows)]
        keys = [self._key(b.key, f"w{i}") for b, i, _w in windows] + [self._key(b.key, "hold") for b in budgets]
        args: list[Any] = [uuid.uuid4().hex, len(windows), len(budgets)]
        for _b, _i, window in windows:
            args += [window.limit, repr(float(window.span))]
        try:
            wait, culprit = acquire(keys=keys, args=args)
        except Exception as exc:
            if is_redis_error(exc):
                self._warn(exc)
                return self._fallback.try_acquire(budgets, now)
            raise
        wait, culprit = float(wait), int(culprit)
        if wait <= 0:
            return 0.0, None
        return wait, (windows[culprit - 1][2] if culprit > 0 else HOLD)

    def hold(self, key: str, seconds: float, now: float) -> None:
        _, hold = self._redis()
        try:
            hold(keys=[self._key(key, "hold")], args=[repr(float(seconds))])
        except Exception as exc:
            if not is_redis_error(exc):
                raise
            self._warn(exc)
            self._fallback.hold(key, seconds, now)

    def _warn(self, exc: Exception) -> None:
        if time.monotonic() - self._last_warning < 60 and self._last_warning:
            return
        self._last_warning = time.monotonic()
        log.warning(
            "Rate-limit backend Redis at %s cannot be reached (%s); budgets are kept per process until it "
            "answers again",
            redacted_url(self.url),
            type(exc).__name__,
        )

    def __repr__(self) -> str:
        return f"RedisBackend({redacted_url(self.url)!r})"


def redis_from_url(url: str, option: str) -> Any:
    """A Redis client for ``url`` (``redis://``, ``rediss://``, ``unix://``) with bounded timeouts.

    Shared by the Redis backends of ``[audience] <option>``; the ``redis`` package is imported here,
    on first use (``pip install 'airflow-audience-provider[redis]'``).
    """
    try:
        import redis
    except ImportError as exc:
        # core.errors imports Airflow, and this module imports none
        from airflow_audience_provider.core.errors import AudienceConfigurationError

        raise AudienceConfigurationError(
            f"[{CONFIG_SECTION}] {option} = redis://... needs the redis package: "
            "pip install 'airflow-audience-provider[redis]'"
        ) from exc
    return redis.Redis.from_url(url, socket_timeout=5.0, socket_connect_timeout=5.0, health_check_interval=30)


def is_redis_error(exc: Exception) -> bool:
    """The server cannot be reached or answer in time (not: a script or protocol error, which is a bug)."""
    if isinstance(exc, OSError):
        return True
    return any(
        cls.__module__.startswith("redis") and cls.__name__ in ("ConnectionError", "TimeoutError", "BusyLoadingError")
        for cls in type(exc).__mro__
    )


def redacted_url(url: str) -> str:
    """The URL without its password, for logs."""
    scheme, sep, rest = url.partition("://")
    if "@" in rest:
        rest = "***@" + rest.rsplit("@", 1)[1]
    return f"{scheme}{sep}{rest}"


class RateLimiter:
    """Sliding-window limiter keyed by budget name, on a ledger backend.

    :param state_dir: share budgets through files in this directory (:class:`FileBackend`);
        without it and without ``backend`` budgets stay in memory.
    :param backend: any :class:`LedgerBackend`, e.g. :class:`RedisBackend`.
    """

    def __init__(
        self,
        state_dir: Path | None = None,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        backend: LedgerBackend | None = None,
    ) -> None:
        if backend is None:
            backend = FileBackend(Path(state_dir)) if state_dir is not None else MemoryBackend()
        self.backend = backend
        self._clock = clock
        self._sleep = sleep

    def acquire(self, key: str, limit: RateLimit) -> float:
        """Block until ``limit`` allows one more request under ``key``; return the seconds waited.

        :raises QuotaWouldBlock: when the wait would exceed ``limit.max_wait``.
        """
        return self.acquire_all([Budget(key, limit.windows)], limit.max_wait)

    def acquire_all(self, budgets: Sequence[Budget], max_wait: float) -> float:
        """Block until every budget allows one more request, then take a slot in each of them.

        A slot is taken in all budgets at once or in none, so a budget that refuses (or makes the
        caller wait) never leaves a slot used in another. Returns the seconds waited.

        :raises QuotaWouldBlock: when the wait would exceed ``max_wait``; no slot is taken then.
        """
        waited = 0.0
        while True:
            wait, window = self.backend.try_acquire(budgets, self._clock())
            if wait <= 0:
                return waited
            assert window is not None
            if waited + wait > max_wait:
                raise QuotaWouldBlock(wait, window)
            log.info("Client-side rate limit (%s): waiting %.2f s before the next request", window.describe(), wait)
            self._sleep(wait)
            waited += wait

    def hold(self, key: str, seconds: float) -> None:
        """The vendor says budget ``key`` is used up for ``seconds``: every client of the backend waits.

        ``seconds <= 0`` lifts the hold (the vendor reports budget left again).
        """
        self.backend.hold(key, seconds, self._clock())


_default_limiter: RateLimiter | None = None
_default_lock = threading.Lock()


def configured_setting(option: str) -> str | None:
    """``[audience] <option>`` from the environment or the Airflow configuration, if set."""
    configured = os.environ.get(f"AIRFLOW__{CONFIG_SECTION.upper()}__{option.upper()}")
    if configured is None:
        try:
            from airflow.configuration import conf  # lazy: importing Airflow is slow

            configured = conf.get(CONFIG_SECTION, option, fallback=None)
        except Exception:  # Airflow missing or misconfigured: the default
            configured = None
    return configured.strip() if configured and configured.strip() else None


def configured_backend() -> str | None:
    """``[audience] rate_limit_backend`` from the environment or the Airflow configuration, if set."""
    return configured_setting(CONFIG_OPTION)


def limiter_from_setting(setting: str | None) -> RateLimiter:
    """A limiter for a backend setting: ``redis://...``, ``rediss://...``, ``unix://...``, ``memory``,
    ``file`` (the default directory), ``file:///path`` or a directory path; ``None`` = the default.

    The default is the file backend under ``AUDIENCE_RATELIMIT_DIR`` if set (``""`` = memory),
    else under ``$AIRFLOW_HOME/audience_ratelimits`` (``~/airflow`` when ``AIRFLOW_HOME`` is unset, as in Airflow).
    """
    if setting and setting.startswith(("redis://", "rediss://", "unix://")):
        return RateLimiter(backend=RedisBackend(setting))
    if setting == "memory":
        return RateLimiter()
    if setting and setting != "file":
        path = setting[len("file://") :] if setting.startswith("file://") else setting
        if "://" in path:
            # core.errors imports Airflow, and this module imports none
            from airflow_audience_provider.core.errors import AudienceConfigurationError

            raise AudienceConfigurationError(
                f"[{CONFIG_SECTION}] {CONFIG_OPTION}: unknown backend {redacted_url(setting)!r}; "
                "use redis://host:port/db, memory, file or a directory"
            )
        return RateLimiter(Path(path))
    directory = os.environ.get("AUDIENCE_RATELIMIT_DIR")
    if directory is None:
        # Airflow's own default home when AIRFLOW_HOME is unset, so task processes still share budgets.
        home = os.environ.get("AIRFLOW_HOME") or os.path.expanduser("~/airflow")
        directory = os.path.join(home, "audience_ratelimits")
    return RateLimiter(Path(directory) if directory else None)


def default_rate_limiter() -> RateLimiter:
    """The limiter shared by every hook of this process, on the configured backend.

    ``[audience] rate_limit_backend`` (or ``AIRFLOW__AUDIENCE__RATE_LIMIT_BACKEND``) chooses it;
    see :func:`limiter_from_setting`.
    """
    global _default_limiter
    with _default_lock:
        if _default_limiter is None:
            _default_limiter = limiter_from_setting(configured_backend())
        return _default_limiter
