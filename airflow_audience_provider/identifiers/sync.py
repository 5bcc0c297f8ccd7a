"""Plan and execute a contact-list sync for one destination: guards, dry run, sending, snapshot.

The vendor-neutral contract is :class:`ChunkSender`: the Criteo and Yandex.Audience hooks
implement it with their HTTP transport; tests use
:class:`~airflow_audience_provider.identifiers.testing.RecordingSender`.

A run has three phases and sends nothing before the third:

1. **read** every row once: normalise, validate, hash, spill to disk by partition; count invalid
   rows; bad input (undecodable bytes, missing column, wrong identifier type) raises here;
2. **plan**: de-duplicate and diff against the snapshot partition by partition, writing the
   additions, removals and the new snapshot to local files; then the guards run (empty input,
   invalid share, vendor minimum, removal guard). A dry run stops here and returns the plan;
3. **send** the chunks (additions first, so the list never dips, then removals), and only when
   every chunk was accepted, store the new snapshot.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from airflow_audience_provider.identifiers.chunking import Chunk
from airflow_audience_provider.identifiers.rules import VendorRule
from airflow_audience_provider.identifiers.snapshot import SnapshotStore

log = logging.getLogger(__name__)


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
    and token refresh belong to the implementation (the shared HTTP core).
    """

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
    :param send_concurrency: chunks in flight at once (threads). 1 = one after the other. Raise it
        only where the vendor's quotas allow (Criteo: 250 calls/minute per app; Yandex.Audience:
        10 writes/minute per login, so keep 1 there).
    :param progress_every_chunks: log a progress line every this many chunks...
    :param progress_every_seconds: ...or this many seconds, whichever comes first.
    :param cancel: when set (an operator's ``on_kill`` sets it), no further chunk is sent and the
        sync fails with :class:`~airflow_audience_provider.identifiers.errors.SyncCancelled`;
        chunks already sent stay applied and the snapshot is not advanced.
    """

    allow_empty: bool = False
    max_invalid_share: float = 0.1
    max_removal_share: float = 0.2
    allow_mass_removal: bool = False
    allow_below_minimum: bool = False
    full_replace: bool = False
    send_concurrency: int = 1
    progress_every_chunks: int = 20
    progress_every_seconds: float = 30.0
    cancel: threading.Event | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.send_concurrency < 1:
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
    """

    name: str
    rule: VendorRule
    sender: ChunkSender | None = None
    snapshot: SnapshotStore | None = None
    options: SyncOptions = field(default_factory=SyncOptions)


def snapshot_for(rule: VendorRule, destination_key: str, base: Any = None) -> SnapshotStore:
    """The default snapshot store of a destination: ``<base>/<vendor>/<destination_key>/``."""
    return SnapshotStore(rule.vendor, destination_key, base)


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
    **source_options: Any,
) -> dict[str, Any]:
    """Sync a contact list to one destination. This is what vendor operators call.

    :param source: a path / URL / ObjectStoragePath, an upstream XCom value (path or
        ``{"path", "format", "column"}`` dict), an :class:`IdentifierSource`, or an iterable of values.
    :param rule: the vendor rule, e.g. ``get_rule("criteo", "email")``.
    :param sender: the vendor transport (:class:`ChunkSender`); may be None when ``dry_run``.
    :param destination_key: identifies the list (segment id); names the snapshot directory.
    :param snapshot_base: base location of snapshots (default under ``$AIRFLOW_HOME``).
    :param incremental: keep a snapshot and send only the difference; False = full replace, no snapshot.
    :param dry_run: plan only; nothing is sent and no snapshot is written.
    :param options: guards and switches (:class:`SyncOptions`).
    :param workers: parallel read-phase workers (normalise + hash); 1 = in this thread. Threads
        when the compiled kernel handles every rule (the ``fast`` extra), processes otherwise.
    :param work_dir: where spill files go (default: the system temp dir).
    :param mp_context: start method of worker processes (default: see ``fanout.default_mp_context``).
    :param source_options: ``format``, ``column``, ``encoding``, ``delimiter``, ``has_header`` for
        path sources.
    :returns: a small JSON-serialisable result (see :func:`result_dict`).
    :raises ContactListError: subclasses for bad input and guards; the exception's ``result``
        holds the counts so far.
    """
    from airflow_audience_provider.identifiers.fanout import run_destinations
    from airflow_audience_provider.identifiers.sources import open_source

    if sender is None and not dry_run:
        raise ValueError("a sender is needed unless dry_run=True")
    dest = Destination(
        name=destination_key,
        rule=rule,
        sender=sender,
        snapshot=snapshot_for(rule, destination_key, snapshot_base) if incremental else None,
        options=options or SyncOptions(),
    )
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
