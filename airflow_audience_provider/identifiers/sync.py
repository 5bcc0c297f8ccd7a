"""Plan and execute a contact-list sync for one destination: guards, dry run, sending, snapshot.

The vendor-neutral contract is :class:`ChunkSender`: the Criteo and Yandex.Audience senders
(:mod:`airflow_audience_provider.operators.senders`) implement it with their hooks; tests use
:class:`~airflow_audience_provider.identifiers.testing.RecordingSender`.

A run has three phases and sends nothing before its guards have passed:

1. **read** every row once: normalise, validate, hash, spill to disk by partition; count invalid
   rows; bad input (undecodable bytes, missing column, wrong identifier type) raises here;
2. **plan**: de-duplicate and diff against the snapshot partition by partition, writing the
   additions, removals and the new snapshot to local files; then the guards run (empty input,
   invalid share, vendor minimum, removal guard). A dry run stops here and returns the plan;
3. **send** the chunks (additions first, so the list never dips, then removals), and only when
   every chunk was accepted, store the new snapshot.

A full replace of a single destination overlaps 2 and 3: its guards depend only on how many
unique identifiers the list has, and more can only make them pass, so once the planned part
satisfies them a sender thread sends each chunk of the new list as the plan writes it (journal
record and lease check before each chunk, as always); the snapshot is stored after the plan
ended and every chunk was accepted. Incremental syncs (the removal guard needs every removal
counted), dry runs and fan-outs to several destinations send after the plan.

Around the send phase each destination's state directory (beside the snapshot, same storage)
holds a **lease** (:mod:`~airflow_audience_provider.identifiers.lease`: one run sends at a time,
fenced before every chunk) and a **journal** (:mod:`~airflow_audience_provider.identifiers.journal`:
what may be half applied, so the next run converges).

Modes (:data:`MODES`), each keeping the state truthful so that any sequence converges:

* ``sync``: the list becomes the input; only the difference against the last confirmed state
  (snapshot plus the uncertain identifiers of an unfinished run) is sent; a full replace when
  there is no usable state or ``full_refresh_every`` has passed;
* ``replace``: the list becomes the input by a full replace (clear, then additions); the new
  snapshot is the input;
* ``add`` / ``remove``: the input is added to / removed from the list; the snapshot becomes
  snapshot | input (snapshot - input). Without a usable snapshot the input is sent as it is and
  the state stays unknown (no snapshot), so the next ``sync`` is a full replace.

Which requests depend on which (a request whose outcome is unknown is never followed by one
that depends on it):

* Criteo: a full replace is ``clear`` then ``add`` chunks; the adds depend on the clear (a clear
  landing late would wipe them). The chunk sender confirms the clear: if any attempt's outcome
  was unknown (timeout, dropped connection, 5xx) it waits ``settle_seconds`` and clears again
  until one clear succeeds with no unknown attempt, or fails the run (the journal then marks
  the snapshot's identifiers uncertain). ``add``/``remove`` chunks of one run touch disjoint
  identifiers and do not depend on each other.
* Yandex.Audience: the first chunk of a full replace is ``modify_data replace`` (or
  upload + confirm for a new segment); later chunks (``addition``) depend on it.
* Across runs: an add and a later remove of the same identifier depend on each other; a run
  whose sender reports requests of unknown outcome (``unsettled_until``) keeps its lease until
  they have had ``settle_seconds`` to land, so the next run cannot be overtaken by them. A run
  that takes over the lease of a run that never released it (crashed, killed) sends nothing
  until the old lease's expiry plus ``max_clock_skew`` plus the landing window in the old lease
  record (the holder's longest read timeout and the settle time) have passed: the dead run's
  requests in flight land before this run's. Every attempt of a write, retries included, asks
  the lease first, so no attempt of a run starts after its lease's expiry.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from airflow_audience_provider.identifiers.chunking import Chunk
from airflow_audience_provider.identifiers.lease import DestinationLease
from airflow_audience_provider.identifiers.rules import VendorRule
from airflow_audience_provider.identifiers.snapshot import SnapshotStore
from airflow_audience_provider.identifiers.sources import open_source

if TYPE_CHECKING:
    from airflow_audience_provider.core.transport import Transport

log = logging.getLogger(__name__)

#: The modes of a contact-list upload (see the module docstring).
MODES = ("sync", "replace", "add", "remove")


@dataclass(frozen=True)
class ChunkResult:
    """What a destination said about one chunk.

    :param accepted: identifiers the destination accepted.
    :param rejected: identifiers it reported as invalid (e.g. Criteo ``nbInvalidIdentifiers``).
    :param detail: small JSON-serialisable vendor detail (request id...), never identifiers.
    """

    accepted: int
    rejected: int = 0
    detail: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class ChunkSender(Protocol):
    """Transport of one destination (one segment / one list). Raise on any failure.

    Each method is called with chunks already within the vendor's limits. Retries, rate limits
    and token refresh belong to the implementation (the shared HTTP core). Besides the four
    operations a sender states how the engine must pace, guard and wait for it, and which list it wrote to:
    :attr:`send_concurrency`, :attr:`transport`, :meth:`unsettled_until`, :meth:`landing_window` and
    :attr:`remote_id`.
    """

    @property
    def send_concurrency(self) -> int:
        """Chunks in flight at once unless :class:`SyncOptions` says otherwise; ``add`` and ``remove``
        are then called from that many threads (a plain class attribute satisfies this)."""
        ...

    @property
    def transport(self) -> Transport | None:
        """The HTTP transport its requests go through (None: an in-memory sender); while the
        engine holds the lease, every write attempt of it asks the lease first."""
        ...

    @property
    def remote_id(self) -> str | None:
        """The vendor's id of the list it wrote to; None when it does not know it or did not create the
        list (then the snapshot records :attr:`SyncOptions.remote_id`)."""
        ...

    def unsettled_until(self) -> float:
        """``time.monotonic()`` until which a request of unknown outcome may still land (0 = none).

        The engine sends nothing that depends on such a request, and keeps the lease, until then.
        """
        ...

    def landing_window(self) -> float:
        """Seconds after it was sent that a request may still be applied by the vendor (0 = at once).

        A run that took over the lease of a run that never released it waits this long past the
        old lease's expiry before it sends.
        """
        ...

    def add(self, chunk: Chunk) -> ChunkResult:
        """Add the chunk's identifiers to the list."""
        ...

    def remove(self, chunk: Chunk) -> ChunkResult:
        """Remove the chunk's identifiers from the list."""
        ...

    def replace(self, chunk: Chunk) -> ChunkResult:
        """Make the list exactly this chunk (Criteo: clear then add; Yandex: ``modify_data replace``).

        Further chunks of the same full replace arrive through :meth:`add`.
        """
        ...

    def clear(self) -> None:
        """Remove every identifier (only called when the task explicitly allowed an empty list)."""
        ...


def sender_remote_id(sender: ChunkSender, options: SyncOptions) -> str | None:
    """The vendor's id of the list the sender wrote to: its ``remote_id`` (a sender that may create
    the list knows it), else the one the options name."""
    remote = sender.remote_id
    return str(remote) if remote is not None else options.remote_id


@dataclass
class SyncOptions:
    """Safety and behaviour switches of one destination's sync.

    :param allow_empty: an input with no valid identifier clears the list instead of failing.
    :param max_invalid_share: fail before sending when more rows than this share are invalid.
    :param max_removal_share: fail before sending when the diff would remove more than this share
        of the list recorded in the snapshot.
    :param allow_mass_removal: let a sync remove any share (the removal guard is off).
    :param allow_below_minimum: send even if the list is below the vendor minimum (Yandex: 100).
    :param full_replace: ignore the snapshot and replace the whole list.
    :param send_concurrency: chunks in flight at once (threads); 1 = one after the other. None
        (default): what the sender declares (:attr:`ChunkSender.send_concurrency`: 2 for Criteo,
        whose quota is 250 calls/minute per app; 1 for Yandex.Audience). Raise it only where the
        vendor's quotas allow (Yandex.Audience: 10 writes/minute per login, so keep 1 there). The
        replace (or clear) goes alone, before any addition, and removals start only after every
        addition.
    :param progress_every_chunks: log a progress line every this many chunks...
    :param progress_every_seconds: ...or this many seconds, whichever comes first.
    :param cancel: when set (an operator's ``on_kill`` sets it), no further chunk is sent and the
        sync fails with :class:`~airflow_audience_provider.identifiers.errors.SyncCancelled`;
        chunks already sent stay applied and the snapshot is not advanced.
    :param use_lease: take the destination's lease before sending (one run at a time).
    :param lease_timeout: seconds to wait for another run's lease before failing with
        :class:`~airflow_audience_provider.identifiers.lease.LeaseBusyError` (nothing is sent);
        0 = fail at once (deferrable operators use ``try_acquire`` and defer instead).
    :param lease_poll_interval: seconds between two looks at a busy lease while waiting.
    :param lease_ttl: seconds a lease lasts without renewal; a heartbeat renews it every third of
        that, so only a crashed run's lease expires.
    :param max_clock_skew: assumed bound (seconds) on the clock difference between the hosts
        that write one destination; an expired lease is taken over only this much later.
    :param full_refresh_every: in ``sync`` mode, force a full replace when the last one is older
        than this (the time is kept in the snapshot); None = only when needed.
    :param remote_id: the vendor's id of the list this destination key names now (a destination
        keyed by something the user can reuse, e.g. a segment name). The snapshot records the id it
        was written for; a snapshot of another list, or one that records none, is not diffed
        against (a full replace, or in ``add``/``remove`` a send that keeps no state). None = the
        key itself identifies the list (nothing is checked).
    :param new_list: the remote list does not exist yet; this run creates it with its first request.
        It is empty, so a snapshot under this key describes a list that is gone: it is neither diffed
        against nor counted by the removal guard, and in ``add`` mode the run makes the new list the
        input (what adding to an empty list does) and records it, like a full replace.
    """

    allow_empty: bool = False
    max_invalid_share: float = 0.1
    max_removal_share: float = 0.2
    allow_mass_removal: bool = False
    allow_below_minimum: bool = False
    full_replace: bool = False
    send_concurrency: int | None = None
    progress_every_chunks: int = 20
    progress_every_seconds: float = 30.0
    cancel: threading.Event | None = field(default=None, compare=False, repr=False)
    use_lease: bool = True
    lease_timeout: float = 300.0
    lease_poll_interval: float = 5.0
    lease_ttl: float = 120.0
    max_clock_skew: float = 60.0
    full_refresh_every: timedelta | None = None
    remote_id: str | None = None
    new_list: bool = False

    def __post_init__(self) -> None:
        if self.lease_timeout < 0 or self.lease_ttl <= 0 or self.max_clock_skew < 0:
            raise ValueError("lease_timeout and max_clock_skew must be >= 0 and lease_ttl > 0")
        if self.full_refresh_every is not None and self.full_refresh_every <= timedelta(0):
            raise ValueError(f"full_refresh_every must be positive, got {self.full_refresh_every!r}")
        if self.send_concurrency is not None and self.send_concurrency < 1:
            raise ValueError(f"send_concurrency must be at least 1, got {self.send_concurrency!r}")
        for name in ("max_invalid_share", "max_removal_share"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1, got {value!r}")


@dataclass
class Destination:
    """One place a contact list is synced to.

    :param name: key of this destination in results (e.g. ``"criteo:730011223344"``).
    :param rule: the vendor rule.
    :param sender: the transport; may be None for a dry run.
    :param snapshot: where the last sent state is kept; None = always a full replace.
    :param options: guards and switches.
    :param mode: ``sync``, ``replace``, ``add`` or ``remove`` (see :data:`MODES`).
    :param lease: the destination's lease; None = one is made beside the snapshot when
        ``options.use_lease`` (pass one already acquired, e.g. by a deferrable operator).
    """

    name: str
    rule: VendorRule
    sender: ChunkSender | None = None
    snapshot: SnapshotStore | None = None
    options: SyncOptions = field(default_factory=SyncOptions)
    mode: str = "sync"
    lease: Any = None
    #: False = a send that keeps no snapshot (the legacy ``incremental=False``): it invalidates one.
    keep_state: bool = True

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")


def snapshot_for(rule: VendorRule, destination_key: str, base: Any = None) -> SnapshotStore:
    """The default snapshot store of a destination: ``<base>/<vendor>/<destination_key>/``."""
    return SnapshotStore(rule.vendor, destination_key, base)


def lease_for(rule: VendorRule, destination_key: str, base: Any = None, options: SyncOptions | None = None) -> Any:
    """The lease of a destination (``<state dir>/lease``), not yet acquired.

    A deferrable operator calls ``lease.try_acquire()`` and defers while it returns False, then
    passes the acquired lease to :func:`sync_contact_list` (``lease=``).
    """
    opts = options or SyncOptions()
    return DestinationLease(
        snapshot_for(rule, destination_key, base).directory / "lease",
        ttl=opts.lease_ttl,
        max_clock_skew=opts.max_clock_skew,
    )


def sync_contact_list(
    source: Any,
    rule: VendorRule,
    sender: ChunkSender | None,
    *,
    destination_key: str,
    snapshot_base: Any = None,
    incremental: bool = True,
    dry_run: bool = False,
    options: SyncOptions | None = None,
    workers: int = 1,
    work_dir: str | None = None,
    mp_context: str | None = None,
    mode: str | None = None,
    lease: Any = None,
    **source_options: Any,
) -> dict[str, Any]:
    """Sync a contact list to one destination. This is what vendor operators call.

    :param source: a path / URL / ObjectStoragePath, an upstream XCom value (path or
        ``{"path", "format", "column"}`` dict), an
        :class:`~airflow_audience_provider.identifiers.sources.IdentifierSource`, or an iterable of values.
    :param rule: the vendor rule, e.g. ``get_rule("criteo", "email")``.
    :param sender: the vendor transport (:class:`ChunkSender`); may be None when ``dry_run``.
    :param destination_key: identifies the list (segment id); names the snapshot directory.
    :param snapshot_base: base location of snapshots (default under ``$AIRFLOW_HOME``).
    :param incremental: keep a snapshot and send only the difference; False = full replace that
        keeps no state (an existing snapshot is deleted, so the next sync is a full replace).
        Ignored when ``mode`` is given.
    :param dry_run: plan only; nothing is sent and no snapshot is written.
    :param options: guards and switches (:class:`SyncOptions`).
    :param workers: parallel read-phase workers (normalise + hash); 1 = in this thread. Threads
        when the compiled kernel handles every rule (the ``fast`` extra), processes otherwise.
    :param work_dir: where spill files go (default: the system temp dir).
    :param mp_context: start method of worker processes (default: see ``fanout.default_mp_context``).
    :param mode: ``sync``, ``replace``, ``add`` or ``remove`` (:data:`MODES`); every mode keeps the
        destination's state truthful. None = ``sync`` (or the stateless replace of ``incremental=False``).
    :param lease: an already acquired :class:`~airflow_audience_provider.identifiers.lease.DestinationLease`
        (from :func:`lease_for`); None = acquire one here, waiting up to ``options.lease_timeout``.
    :param source_options: ``format``, ``column``, ``encoding``, ``delimiter``, ``has_header`` for
        path sources.
    :returns: a small JSON-serialisable result (counts, rule, mode, status).
    :raises ContactListError: subclasses for bad input and guards; the exception's ``result``
        holds the counts so far.
    """
    # fanout imports this module: a cycle at the top
    from airflow_audience_provider.identifiers.fanout import run_destinations

    if sender is None and not dry_run:
        raise ValueError("a sender is needed unless dry_run=True")
    stateless = mode is None and not incremental
    dest = Destination(
        name=destination_key,
        rule=rule,
        sender=sender,
        snapshot=snapshot_for(rule, destination_key, snapshot_base),
        options=options or SyncOptions(),
        mode=mode or ("replace" if stateless else "sync"),
        lease=lease,
    )
    if stateless:
        dest.keep_state = False
    results = run_destinations(
        open_source(source, **source_options),
        [dest],
        dry_run=dry_run,
        workers=workers,
        work_dir=work_dir,
        mp_context=mp_context,
    )
    return results[destination_key]


def plan_contact_list_sync(
    source: Any,
    rule: VendorRule,
    *,
    destination_key: str,
    snapshot_base: Any = None,
    incremental: bool = True,
    options: SyncOptions | None = None,
    workers: int = 1,
    work_dir: str | None = None,
    **source_options: Any,
) -> dict[str, Any]:
    """Dry run of :func:`sync_contact_list`: the plan dict, nothing sent, no snapshot written.

    Guards that would stop the real run do not raise here; they are listed in ``blocked_by`` so
    an approval step can show them.
    """
    return sync_contact_list(
        source,
        rule,
        None,
        destination_key=destination_key,
        snapshot_base=snapshot_base,
        incremental=incremental,
        dry_run=True,
        options=options,
        workers=workers,
        work_dir=work_dir,
        **source_options,
    )


def plan_allows(plan: dict[str, Any], *, max_removed: int | None = None, max_added: int | None = None) -> bool:
    """Decide from a plan whether to go on (for a short-circuit approval step).

    :returns: False when a guard would block, or when removals / additions exceed the limits given.
    """
    if plan.get("blocked_by"):
        return False
    counts = plan.get("counts", {})
    if max_removed is not None and counts.get("removed", 0) > max_removed:
        return False
    return not (max_added is not None and counts.get("added", 0) > max_added)


def summarise(results: Iterable[dict[str, Any]]) -> str:
    """One log line per destination result; counts only, no identifiers."""
    lines = []
    for r in results:
        c = r["counts"]
        lines.append(
            f"{r['destination']} ({r['rule']}, {r['mode']}, {r['status']}): rows={c['rows']} "
            f"unique={c['unique']} invalid={c['invalid']} duplicate={c['duplicate']} added={c['added']} "
            f"removed={c['removed']} unchanged={c['unchanged']} chunks={c['chunks_sent']}/{c['chunks_total']}"
        )
    return "\n".join(lines)
