"""Client-side rate limits: stay under each vendor's documented quotas instead of collecting 429s.

A :class:`RateLimit` is a set of sliding windows ("10 requests per second", "1000 per hour")
for one vendor and one endpoint class. Budgets are shared by every hook in the process that
talks to the same vendor account, and, when a state directory is configured (the default is
``$AIRFLOW_HOME/audience_ratelimits``), by every process on the host through a small file
guarded by ``fcntl.flock``; a DAG with many parallel tasks on one worker then shares one
budget. Distributed workers on several hosts should add an Airflow pool per vendor as well;
the docs say so.
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
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)


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


@dataclass(frozen=True)
class RateLimit:
    """The windows that apply to one endpoint class of one vendor."""

    windows: tuple[Window, ...]
    #: If the wait for a free slot would exceed this, raise instead of sleeping (daily quotas).
    max_wait: float = 300.0

    @classmethod
    def per_second(cls, limit: int, **kwargs: float) -> RateLimit:
        return cls((Window(limit, 1.0),), **kwargs)


@dataclass
class _Ledger:
    """Timestamps of recent requests per window, oldest first."""

    stamps: dict[int, deque[float]] = field(default_factory=dict)

    def wait_needed(self, windows: tuple[Window, ...], now: float) -> tuple[float, Window | None]:
        worst, culprit = 0.0, None
        for index, window in enumerate(windows):
            stamps = self.stamps.setdefault(index, deque())
            while stamps and stamps[0] <= now - window.seconds:
                stamps.popleft()
            if len(stamps) >= window.limit:
                wait = stamps[len(stamps) - window.limit] + window.seconds - now
                if wait > worst:
                    worst, culprit = wait, window
        return worst, culprit

    def record(self, windows: tuple[Window, ...], now: float) -> None:
        for index, _window in enumerate(windows):
            self.stamps.setdefault(index, deque()).append(now)


class QuotaWouldBlock(Exception):
    """The next free slot is further away than the limit's ``max_wait``."""

    def __init__(self, wait: float, window: Window) -> None:
        self.wait = wait
        self.window = window
        super().__init__(f"quota {window.describe()} is used up; next slot in {wait:.0f} s")


class RateLimiter:
    """Process-wide (and optionally host-wide) sliding-window limiter keyed by budget name."""

    def __init__(
        self,
        state_dir: Path | None = None,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._state_dir = state_dir
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._ledgers: dict[str, _Ledger] = {}

    def acquire(self, key: str, limit: RateLimit) -> float:
        """Block until ``limit`` allows one more request under ``key``; return the seconds waited.

        :raises QuotaWouldBlock: when the wait would exceed ``limit.max_wait``.
        """
        waited = 0.0
        while True:
            with self._locked(key) as ledger:
                now = self._clock()
                wait, window = ledger.wait_needed(limit.windows, now)
                if wait <= 0:
                    ledger.record(limit.windows, now)
                    return waited
            assert window is not None
            if waited + wait > limit.max_wait:
                raise QuotaWouldBlock(wait, window)
            log.info("Client-side rate limit %s: waiting %.2f s before the next request", window.describe(), wait)
            self._sleep(wait)
            waited += wait

    @contextlib.contextmanager
    def _locked(self, key: str) -> Iterator[_Ledger]:
        with self._lock:
            if self._state_dir is None:
                yield self._ledgers.setdefault(key, _Ledger())
                return
            yield from self._file_ledger(key)

    def _file_ledger(self, key: str) -> Iterator[_Ledger]:
        assert self._state_dir is not None
        self._state_dir.mkdir(parents=True, exist_ok=True)
        # The key may name an account; hash it so the file name reveals nothing.
        path = self._state_dir / (hashlib.sha256(key.encode()).hexdigest()[:32] + ".json")
        with open(path, "a+", encoding="utf-8") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                handle.seek(0)
                raw = handle.read()
                try:
                    stored = json.loads(raw) if raw else {}
                except ValueError:
                    stored = {}  # a torn write from a killed process: start a fresh ledger
                ledger = _Ledger({int(k): deque(v) for k, v in stored.items()})
                yield ledger
                handle.seek(0)
                handle.truncate()
                handle.write(json.dumps({k: list(v) for k, v in ledger.stamps.items()}))
                handle.flush()
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)


_default_limiter: RateLimiter | None = None
_default_lock = threading.Lock()


def default_rate_limiter() -> RateLimiter:
    """The limiter shared by every hook of this process.

    Host-wide sharing through files is used when ``AUDIENCE_RATELIMIT_DIR`` is set, or under
    ``$AIRFLOW_HOME/audience_ratelimits`` when ``AIRFLOW_HOME`` is set; ``AUDIENCE_RATELIMIT_DIR=""``
    keeps budgets in memory only.
    """
    global _default_limiter
    with _default_lock:
        if _default_limiter is None:
            configured = os.environ.get("AUDIENCE_RATELIMIT_DIR")
            if configured is None and os.environ.get("AIRFLOW_HOME"):
                configured = os.path.join(os.environ["AIRFLOW_HOME"], "audience_ratelimits")
            _default_limiter = RateLimiter(Path(configured) if configured else None)
        return _default_limiter
