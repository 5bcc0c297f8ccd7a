"""A lease per destination: at most one run sends to a contact list at a time, across DAGs and hosts.

The lease is a directory of small files beside the destination's snapshot, on the same storage
(``<state dir>/lease/<token>.json``). Each acquisition creates the file of the next **fencing
token** with an exclusive create (see :mod:`~airflow_audience_provider.identifiers.state` for
what each backend guarantees), so of two runs that race for token ``n + 1`` exactly one wins.
The highest token is the current lease; its file holds the owner, the expiry and whether it
was released::

    {"format": 1, "token": 7, "owner": "worker-3:4121:9f2c...", "expires_at": 1765097000.0,
     "released": false, "landing_window": 240.0, ...}

* **Acquire** (:meth:`DestinationLease.try_acquire`): the newest lease is free when it was
  released or expired more than ``max_clock_skew`` seconds ago by our clock; then we create the
  next token's file. :meth:`DestinationLease.acquire` waits (polling) up to a timeout; operators
  that defer call ``try_acquire`` and defer when it returns False.
* **Hold**: a heartbeat thread rewrites our own token file with a later expiry every
  ``ttl / 3`` seconds; a renewal that fails is tried again every ``ttl / 12`` seconds until the
  lease expires, so a storage hiccup does not let the lease lapse under a chunk still in
  flight. Before each chunk the engine calls :meth:`DestinationLease.check`, which raises
  :class:`LeaseLostError` when a higher token exists, our file is gone, our own expiry passed,
  or the last renewal failed: a run whose lease was lost sends nothing more. A request already
  under way is retried by the transport (5xx, 429, timeouts), so the engine also guards every
  attempt of a write (:meth:`DestinationLease.may_send`, through
  :meth:`~airflow_audience_provider.core.transport.Transport.guard_sends`): no attempt starts once
  our expiry is less than one attempt's connect and read timeouts away (at most ``ttl / 2``; a
  late heartbeat is made up by renewing first), so a run whose renewals keep failing stops
  retrying before its lease can be taken over, and fails with :class:`LeaseLostError`.
* **Landing window**: the record carries ``landing_window``, the longest time after it was sent
  that a request of the holder may still be applied by the vendor (its read timeout plus the
  settle time). It is written when the lease is taken and rewritten before a request with a
  longer one starts (a large upload's read timeout grows with its file). A record without it
  (older versions) means the taker's own default.
* **Release**: our token file is rewritten with ``released: true`` (not before
  :func:`takeover_safe_at` of a lease taken over: see below). A run that crashed never
  releases; its lease expires after ``ttl`` and the next run takes it over (logged,
  ``took_over``); the engine then waits for the crashed run's requests in
  flight to settle before it sends: until the old expiry plus ``max_clock_skew`` plus the old
  record's ``landing_window`` (or its own, if longer): :func:`takeover_safe_at`, the one formula
  for that moment. Any attempt of the old holder started before its expiry, so it cannot land
  after that. A deferrable operator waits for that moment in the triggerer before it takes the
  lease (:meth:`DestinationLease.abandoned`), so the engine has nothing left to wait.

Durability (local storage): the file of a new token and every renewal are fsynced, file then
directory, before the lease counts as taken or renewed. Otherwise a host crash could lose them:
the next run would reuse the token without knowing a run had held it (and not wait for that
run's requests), or read an older expiry or a shorter landing window than the holder relied on.
A release is not synced: losing one only makes the next run wait as for a crashed holder.

Clock skew: expiry is written by the holder's clock and judged by the taker's. A taker waits
until ``expires_at + max_clock_skew`` by its own clock, and a holder stops sending once its own
clock passes ``expires_at``; so two runs never send together as long as the clocks of the hosts
differ by less than ``max_clock_skew`` (default 60 s; NTP keeps hosts within milliseconds).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

from airflow_audience_provider.identifiers.errors import ContactListError
from airflow_audience_provider.identifiers.state import (
    StateFileError,
    create_exclusive,
    default_owner,
    delete,
    dump_json,
    list_names,
    read_json,
    utc_iso,
    write_atomic,
)

log = logging.getLogger(__name__)

LEASE_FORMAT = 1
_SUFFIX = ".json"


def host_clock() -> float:
    """This host's wall clock in seconds since the epoch: what a lease's expiry is judged by by default."""
    return time.time()


def _host_clock() -> float:
    return host_clock()  # looked up at each call, so a test can shift the clock of every lease


class LeaseBusyError(ContactListError):
    """Another run holds the destination's lease (and the wait for it timed out); nothing was sent."""


class LeaseLostError(ContactListError):
    """This run's lease expired or was taken over; it sent nothing more."""


@dataclass(frozen=True)
class LeaseInfo:
    """The newest lease of a destination as read from storage."""

    token: int
    owner: str
    expires_at: float
    released: bool
    acquired_at: float
    #: seconds after it was sent that a request of the holder may still land (None: not recorded)
    landing_window: float | None = None

    def describe(self) -> str:
        state = "released" if self.released else f"expires {utc_iso(self.expires_at)}"
        return f"token {self.token} held by {self.owner} since {utc_iso(self.acquired_at)} ({state})"


def takeover_safe_at(info: LeaseInfo, *, max_clock_skew: float, landing_window: float | None) -> float:
    """Wall-clock time after which no request of the run that held ``info`` and never released it can land.

    The old lease's expiry, plus ``max_clock_skew``, plus the longest time after it was sent that a
    request of the old holder may still be applied: the window its record carries (a large
    upload's), or the taker's own ``landing_window`` if longer or not recorded (older versions).
    The old holder started no attempt after its expiry (see :meth:`DestinationLease.may_send`).
    """
    recorded = info.landing_window if info.landing_window is not None else 0.0
    own = landing_window if landing_window is not None else 0.0
    return float(info.expires_at) + float(max_clock_skew) + max(float(recorded), float(own))


class DestinationLease:
    """The lease of one destination.

    :param directory: the lease directory (``Path`` or ``ObjectStoragePath``), usually
        ``<state dir>/lease``.
    :param ttl: seconds a lease lasts without renewal (the heartbeat renews every ``ttl / 3``).
    :param max_clock_skew: assumed bound on the clock difference between hosts (seconds).
    :param owner: text naming this run in the lease file (default: host, pid, random suffix).
    :param clock: wall clock (seconds since the epoch; default :func:`host_clock`); tests pass their own.
    :param landing_window: seconds after it was sent that a request of this run may still be applied
        by the vendor, written in the record (the engine sets it from the sender's transport;
        :meth:`may_send` raises it before a longer request).
    """

    def __init__(
        self,
        directory: Any,
        *,
        ttl: float = 120.0,
        max_clock_skew: float = 60.0,
        owner: str | None = None,
        clock: Any = None,
        landing_window: float | None = None,
    ) -> None:
        if ttl <= 0:
            raise ValueError(f"lease ttl must be positive, got {ttl!r}")
        self.directory = directory
        self.ttl = float(ttl)
        self.max_clock_skew = float(max_clock_skew)
        self.owner = owner or default_owner()
        self.landing_window = landing_window
        self._clock = clock if clock is not None else _host_clock
        self.token: int | None = None
        self._expires_at = 0.0
        self._acquired_at = 0.0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._heartbeat: threading.Thread | None = None
        self._renew_error: BaseException | None = None
        #: the lease this run took over from a run that had not released it (crashed), if any
        self.took_over: LeaseInfo | None = None
        self._takeover_safe_at = 0.0  # before it, a lease taken over is not marked released

    # -- reading ----------------------------------------------------------------------------

    def _path(self, token: int) -> Any:
        return self.directory / f"{token:012d}{_SUFFIX}"

    def _tokens(self) -> list[int]:
        tokens = []
        for name in list_names(self.directory):
            stem = name[: -len(_SUFFIX)] if name.endswith(_SUFFIX) else None
            if stem is not None and stem.isdigit():
                tokens.append(int(stem))
        return sorted(tokens)

    def _read(self, token: int) -> LeaseInfo | None:
        fix = (
            f"if no run is writing this destination now, delete the directory {self.directory} "
            "(the next run then starts with a fresh lease and its journal makes it converge)"
        )
        meta = read_json(self._path(token), what="lease", fmt=LEASE_FORMAT, fix=fix)
        if meta is None:
            return None
        try:
            window = meta.get("landing_window")
            return LeaseInfo(
                token=int(meta["token"]),
                owner=str(meta["owner"]),
                expires_at=float(meta["expires_at"]),
                released=bool(meta.get("released", False)),
                acquired_at=float(meta.get("acquired_at", 0.0)),
                landing_window=float(window) if window is not None else None,
            )
        except (KeyError, TypeError, ValueError):
            raise StateFileError(f"the lease file {self._path(token)} misses a field; {fix}") from None

    def current(self) -> LeaseInfo | None:
        """The newest lease (held, expired or released), or None when there never was one."""
        for token in reversed(self._tokens()):
            info = self._read(token)
            if info is not None:
                return info
        return None

    def _is_free(self, info: LeaseInfo | None, now: float) -> bool:
        return info is None or info.released or now > info.expires_at + self.max_clock_skew

    def now(self) -> float:
        """The time by this lease's clock: expiry and the wait after a takeover are judged by it."""
        return float(self._clock())

    def abandoned(self, info: LeaseInfo | None, now: float | None = None) -> bool:
        """True when ``info`` was never released and expired more than ``max_clock_skew`` ago.

        Its holder crashed or was killed: :meth:`try_acquire` would take it over now, and the taker
        must not send before :func:`takeover_safe_at`.
        """
        if info is None or info.released:
            return False
        return self._is_free(info, self.now() if now is None else now)

    def takeover_safe_at(self, info: LeaseInfo) -> float:
        """:func:`takeover_safe_at` for ``info`` with this lease's skew and landing window."""
        return takeover_safe_at(info, max_clock_skew=self.max_clock_skew, landing_window=self.landing_window)

    # -- acquiring --------------------------------------------------------------------------

    def try_acquire(self) -> bool:
        """Take the lease if it is free, without waiting. True = this run holds it now."""
        if self.token is not None:
            return True
        info = self.current()
        now = self._clock()
        if not self._is_free(info, now):
            return False
        token = (info.token if info is not None else 0) + 1
        expires = now + self.ttl
        window = self.landing_window
        if info is not None and not info.released and info.landing_window is not None:
            # Taking over: a run taking over from this one in turn waits for the dead run's requests too.
            window = max(window or 0.0, info.landing_window)
        body = {
            "format": LEASE_FORMAT,
            "token": token,
            "owner": self.owner,
            "acquired_at": now,
            "expires_at": expires,
            "released": False,
        }
        if window is not None:
            body["landing_window"] = window
        if not create_exclusive(self._path(token), dump_json(body), durable=True):
            return False  # another run created this token first
        self.token, self._expires_at, self._acquired_at = token, expires, now
        self.landing_window = window
        if info is not None and not info.released:
            self.took_over = info
            self._takeover_safe_at = self.takeover_safe_at(info)
            log.warning(
                "Took over the expired lease of %s (%s): that run stopped without releasing it "
                "(crashed or killed); its journal tells this run what may be half applied.",
                self.directory,
                info.describe(),
            )
        for old in self._tokens():
            if old < token - 1:
                delete(self._path(old))
        self._start_heartbeat()
        return True

    def acquire(self, timeout: float = 0.0, poll_interval: float = 5.0) -> None:
        """Take the lease, waiting up to ``timeout`` seconds for the current holder to finish.

        :raises LeaseBusyError: still held when the timeout passed; names the holder.
        """
        deadline = time.monotonic() + max(timeout, 0.0)
        while not self.try_acquire():
            left = deadline - time.monotonic()
            if left <= 0:
                info = self.current()
                holder = info.describe() if info is not None else "another run"
                raise LeaseBusyError(
                    f"another run is sending to this destination ({holder}); waited {timeout:.0f} s for "
                    f"its lease {self.directory}; nothing was sent. Retry later, raise lease_timeout, or "
                    "make the operator deferrable so it waits without holding a worker slot."
                )
            time.sleep(min(poll_interval, left))

    def wait_seconds(self) -> float | None:
        """Seconds until the current lease can be taken over (0 = free now), None when held indefinitely."""
        info = self.current()
        now = self._clock()
        if self._is_free(info, now):
            return 0.0
        assert info is not None
        return max(info.expires_at + self.max_clock_skew - now, 0.0)

    # -- holding ----------------------------------------------------------------------------

    def _write_own(self, *, released: bool = False) -> None:
        assert self.token is not None
        now = self._clock()
        expires = now + self.ttl
        body = {
            "format": LEASE_FORMAT,
            "token": self.token,
            "owner": self.owner,
            "acquired_at": self._acquired_at,
            "expires_at": now if released else expires,
            "released": released,
            "renewed_at": now,
        }
        if self.landing_window is not None:
            body["landing_window"] = self.landing_window
        # A lost release only makes the next run wait: not worth a sync.
        write_atomic(self._path(self.token), dump_json(body), durable=not released)
        if not released:
            self._expires_at = expires

    def renew(self) -> None:
        """Extend our lease by ``ttl`` (the heartbeat calls this); raises LeaseLostError if lost.

        A write that fails is recorded (no chunk starts until a renewal succeeds) and raised.
        """
        with self._lock:
            self._check_locked(renewing=True)
            self._write_own_recorded()

    def _write_own_recorded(self) -> None:
        # The write and its outcome are one change under the lock: the newest renewal's result
        # stands, and a failure cannot overwrite a later success.
        try:
            self._write_own()
        except Exception as exc:
            self._renew_error = exc
            raise
        self._renew_error = None

    def _check_locked(self, *, renewing: bool = False) -> None:
        if self.token is None:
            raise LeaseLostError(f"this run does not hold the lease {self.directory}")
        if self._renew_error is not None and not renewing:
            raise LeaseLostError(
                f"the lease {self.directory} could not be renewed ({self._renew_error}); no further chunk is sent"
            )
        if self._clock() >= self._expires_at:
            raise LeaseLostError(
                f"the lease {self.directory} (token {self.token}) expired at {utc_iso(self._expires_at)} before "
                "it was renewed; another run may be sending, so this run sends nothing more"
            )
        tokens = self._tokens()
        if self.token not in tokens or tokens[-1] > self.token:
            newest = tokens[-1] if tokens else "?"
            raise LeaseLostError(
                f"the lease {self.directory} (token {self.token}) was taken over by token {newest} or removed; "
                "this run sends nothing more"
            )

    def check(self) -> None:
        """Fencing check before a chunk: raise :class:`LeaseLostError` unless we still hold the lease."""
        with self._lock:
            self._check_locked()

    def may_send(self, reach: float, landing: float) -> None:
        """Check before each attempt of a write (retries too): raise :class:`LeaseLostError` unless it may start.

        The attempt may start while our expiry is more than ``min(reach, ttl / 2)`` seconds away
        (a renewal is made here first when the heartbeat is late). Before an attempt that may land
        later than the record's ``landing_window`` says, the record is rewritten with ``landing``,
        so a run taking the lease over waits for it. No storage access otherwise.

        A taker waits ``landing`` (read timeout + settle) past our expiry plus skew; an attempt
        started ``margin`` before our expiry is sent within its connect timeout, so that covers it
        while the connect timeout is at most ``margin`` (``ttl / 2``: 60 s against 10 s by default).

        :param reach: seconds the client may wait for the attempt (connect plus read timeout).
        :param landing: seconds after it was sent that the vendor may still apply it.
        """
        with self._lock:
            margin = min(reach, self.ttl / 2)
            longer = landing > (self.landing_window or 0.0)
            if longer or self._clock() >= self._expires_at - margin:
                previous = self.landing_window
                try:
                    self._check_locked(renewing=True)
                    self.landing_window = max(landing, previous or 0.0)
                    self._write_own_recorded()
                except LeaseLostError:
                    self.landing_window = previous
                    raise
                except Exception as exc:
                    self.landing_window = previous
                    raise LeaseLostError(
                        f"the lease {self.directory} could not be renewed before a request ({exc}); "
                        "the request was not sent"
                    ) from exc
            if self._clock() >= self._expires_at - margin:
                raise LeaseLostError(
                    f"the lease {self.directory} (token {self.token}) expires at {utc_iso(self._expires_at)}, "
                    f"within {margin:.1f} s of a request that may take that long; it was not sent"
                )

    def _start_heartbeat(self) -> None:
        self._stop.clear()
        self._heartbeat = threading.Thread(target=self._beat, name="contact-list-lease", daemon=True)
        self._heartbeat.start()

    def _beat(self) -> None:
        # A failed renewal is tried again (sooner) until the lease expires: a chunk still in flight
        # must not outlive the lease. No chunk starts while the last renewal failed.
        while not self._stop.wait(self.ttl / 3 if self._renew_error is None else self.ttl / 12):
            failing = self._renew_error is not None
            try:
                self.renew()
            except LeaseLostError:
                return
            except Exception as exc:  # recorded by renew(), under the lock
                if not failing:
                    log.error("Renewing the lease %s failed (trying again until it expires): %s", self.directory, exc)
                continue
            if failing:
                log.warning("Renewed the lease %s again after a failed renewal", self.directory)

    def release(self) -> None:
        """Give the lease up (idempotent). Leaves it alone if it was taken over meanwhile.

        A lease taken over from a run that never released it is not marked released before
        :meth:`takeover_safe_at` (a run stopped during its wait): that would tell the next run that
        nothing of the dead run is in flight. It expires by itself, and its record carries the dead
        run's landing window, so the next run waits as after a crash.
        """
        self._stop.set()
        if self._heartbeat is not None:
            self._heartbeat.join(timeout=5)
            self._heartbeat = None
        with self._lock:
            if self.token is None:
                return
            if self.now() < self._takeover_safe_at:
                log.warning(
                    "Left the lease %s to expire unreleased: requests of the run whose lease it took over may "
                    "still land until %s",
                    self.directory,
                    utc_iso(self._takeover_safe_at),
                )
                self.token = None
                return
            try:
                tokens = self._tokens()
                if tokens and tokens[-1] == self.token:
                    self._write_own(released=True)
            except Exception as exc:
                log.warning("Could not release the lease %s (it expires by itself): %s", self.directory, exc)
            self.token = None

    def __enter__(self) -> DestinationLease:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
