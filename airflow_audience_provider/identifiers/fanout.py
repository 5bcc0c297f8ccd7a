"""The engine: one read of a source feeding one or many destinations.

Destinations whose rules share a :class:`~airflow_audience_provider.identifiers.rules.NormalisationProfile`
(for example SHA-256 e-mails for Criteo and Yandex.Audience) share the normalise-and-hash work and
the spill files; each destination still gets its own accounting, guards, snapshot and sending.
Destinations with different profiles are computed from the same read.

See :mod:`airflow_audience_provider.identifiers.sync` for the phases of a run.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import itertools
import logging
import operator
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, TypeVar

from airflow_audience_provider.identifiers.accounting import Accounting
from airflow_audience_provider.identifiers.chunking import (
    ADD,
    REMOVE,
    REPLACE,
    Chunk,
    ChunkCounter,
    GrowingFile,
    ProgressLogger,
    iter_chunks_from_file,
    iter_growing_chunks,
)
from airflow_audience_provider.identifiers.errors import (
    ContactListError,
    EmptyInputError,
    InvalidShareError,
    MinimumEntriesError,
    RemovalGuardError,
    SendError,
    SyncCancelled,
    WrongIdentifierTypeError,
)
from airflow_audience_provider.identifiers.hashing import (
    BatchOutput,
    exact_share,
    kernel_takes_clear_text,
    partition_of,
    process_batch,
    process_text,
    uses_kernel,
)
from airflow_audience_provider.identifiers.journal import KIND_DIFF, KIND_REPLACE, Journal, new_run_id
from airflow_audience_provider.identifiers.kernel import load_email_kernel
from airflow_audience_provider.identifiers.lease import DestinationLease, takeover_safe_at
from airflow_audience_provider.identifiers.normalise import REASON_HINTS, detect_type
from airflow_audience_provider.identifiers.rules import NormalisationProfile
from airflow_audience_provider.identifiers.snapshot import (
    ColumnarSnapshotReader,
    PreparedSnapshot,
    SnapshotReader,
    SnapshotStore,
    rule_mismatch,
)
from airflow_audience_provider.identifiers.sorting import (
    DEFAULT_MAX_PARTITION_BYTES,
    DEFAULT_SPILL_BYTES,
    PREFIX_DIGITS,
    ColumnarSpill,
    CountingIterator,
    PartitionSpill,
    external_sorted_unique,
    merge_diff,
    sorted_unique_clear_frame,
    sorted_unique_rows,
)
from airflow_audience_provider.identifiers.sources import DEFAULT_BATCH_SIZE, IdentifierSource, RawBatch
from airflow_audience_provider.identifiers.state import is_local
from airflow_audience_provider.identifiers.sync import (
    ChunkResult,
    ChunkSender,
    Destination,
    sender_remote_id,
    summarise,
)

if TYPE_CHECKING:
    from airflow_audience_provider.identifiers.journal import Journal, Recovery

log = logging.getLogger(__name__)

_READ_PROGRESS_SECONDS = 30.0
_WRONG_TYPE_MIN_ROWS = 20
_WRONG_TYPE_INVALID_SHARE = 0.9

FULL_REPLACE = "full_replace"
INCREMENTAL = "incremental"
CLEAR = "clear"
NOOP = "noop"
#: ``add``/``remove`` mode without a usable snapshot: the input is sent as it is, the state stays unknown.
ONE_WAY = "one_way"


def _process_profiles(
    profiles: tuple[NormalisationProfile, ...], values: list[str], columnar: tuple[bool, ...] = ()
) -> list[BatchOutput]:
    """One batch through every profile (in this process); ``columnar[i]``: profile ``i``'s digests as a frame."""
    if not columnar:
        return [process_batch(p, values) for p in profiles]
    return [process_batch(p, values, columnar=c) for p, c in zip(profiles, columnar, strict=True)]


def process_profiles_text(
    profiles: tuple[NormalisationProfile, ...], text: str, n: int | None = None
) -> list[BatchOutput] | None:
    """Worker entry point: the batch arrives as its values joined by newlines.

    Pickling one string is a copy; pickling 8,192 small strings costs the parent process about as
    much as a tenth of the work it hands out. The parent does not scan the text: when it does not
    hold exactly ``n`` lines (a value contained a newline) this returns None and the parent
    processes that batch itself from its list of values.
    """
    if n is None:
        n = text.count("\n") + 1
    outs = []
    for p in profiles:
        out = process_text(p, text, n, strict=True)
        if out is None:
            return None
        outs.append(out)
    return outs


@dataclass
class _DestState:
    dest: Destination
    acc: Accounting = field(default_factory=Accounting)
    mode: str = FULL_REPLACE
    previous_count: int | None = None
    previous_rule: str | None = None
    adds_path: Path | None = None
    removes_path: Path | None = None
    snapshot_path: Path | None = None
    add_counter: ChunkCounter | None = None
    remove_counter: ChunkCounter | None = None
    blocked_by: list[dict[str, str]] = field(default_factory=list)
    status: str = "reading"
    error: str | None = None
    snapshot_meta: dict[str, Any] | None = None
    journal: Journal | None = None
    recovery: Recovery | None = None
    uncertain: dict[str, set[str]] | None = None
    inherited_path: Path | None = None
    lease: Any = None
    own_lease: bool = False
    full_replace_reason: str | None = None
    notes: list[str] = field(default_factory=list)

    def result(self, *, dry_run: bool) -> dict[str, Any]:
        add_chunks = self.add_counter.chunks if self.add_counter else 0
        remove_chunks = self.remove_counter.chunks if self.remove_counter else 0
        extra = 1 if self.mode in (FULL_REPLACE, CLEAR) else 0
        if self.mode == NOOP:
            extra = 0
        rule = self.dest.rule
        return {
            "destination": self.dest.name,
            "vendor": rule.vendor,
            "identifier_type": rule.identifier_type.value,
            "rule": rule.key,
            "mode": self.mode,
            "status": self.status,
            "dry_run": dry_run,
            "counts": self.acc.as_dict(),
            "chunks": {"add": add_chunks, "remove": remove_chunks, "total": add_chunks + remove_chunks},
            # The replace/clear call counts as one request on top of the chunks (an upper bound:
            # some vendors fold it into the first chunk).
            "estimated_requests": add_chunks + remove_chunks + extra,
            "snapshot": self.dest.snapshot.describe() if self.dest.snapshot is not None else None,
            "snapshot_previous_count": self.previous_count,
            "blocked_by": list(self.blocked_by),
            "error": self.error,
            "sync_mode": self.dest.mode,
            "state": {
                "recovered": self.recovery is not None,
                "uncertain": sum(len(v) for v in self.uncertain.values()) if self.uncertain else 0,
                "snapshot_uncertain": bool(self.recovery and self.recovery.snapshot_uncertain),
                "full_replace_reason": self.full_replace_reason,
                "lease_token": getattr(self.lease, "token", None) if self.lease is not None else None,
                "notes": list(self.notes),
            },
        }


def default_mp_context() -> str:
    """Start method of the read-phase worker processes.

    ``fork`` where the platform has it: workers start in milliseconds and only run
    :func:`~airflow_audience_provider.identifiers.hashing.process_batch` (pure computation, no
    logging, no locks), so the usual hazard of forking
    a threaded process does not bite. ``spawn`` would re-import the parent's ``__main__`` in
    every worker, which for an Airflow task is the Airflow CLI: seconds per worker. Override
    with ``mp_context="spawn"`` (or ``"forkserver"``) where fork is not wanted.

    Once polars is imported (the compiled kernel, or the task's own code) its thread pool may
    hold locks that a forked child would inherit locked; then ``forkserver`` is used, whose
    server process starts clean.
    """
    import multiprocessing
    import sys

    methods = multiprocessing.get_all_start_methods()
    if "polars" in sys.modules and "forkserver" in methods:
        return "forkserver"
    return "fork" if "fork" in methods else "spawn"


#: Rows per task handed to a worker process: large enough that the per-task cost in the parent
#: (pickling, the pool's queues, a result of 256 partition texts) is small per row.
MP_TASK_ROWS = 32768
#: Rows per batch for the compiled kernel: each call has a fixed cost (building frames, handing
#: results back) that 65,536 rows make small; measured with ``make bench``.
KERNEL_BATCH_ROWS = 65536
#: Rows per kernel batch with parallel workers: half, so a list of a few hundred thousand rows
#: still gives every worker several batches (200,000 rows in 65,536-row batches left two workers
#: three batches and a remainder, so one waited). CPU time per row measured the same either way.
KERNEL_PARALLEL_BATCH_ROWS = 32768
#: Above this share of the first batch left to the exact rule (it holds the GIL) processes beat threads (0.5-0.8).
PROCESSES_ABOVE_EXACT_SHARE = 0.6


def iter_processed(
    source: IdentifierSource,
    profiles: tuple[NormalisationProfile, ...],
    batch_size: int = DEFAULT_BATCH_SIZE,
    workers: int = 1,
    mp_context: str | None = None,
    columnar: tuple[bool, ...] = (),
) -> Iterator[tuple[RawBatch, list[BatchOutput]]]:
    """Read the source once; run each batch through every profile, in order.

    This is the engine's read phase without the spilling. With ``workers > 1`` the batches (at
    least :data:`MP_TASK_ROWS` rows each) run in parallel: in threads of this process when every
    profile uses the compiled kernel (:func:`~airflow_audience_provider.identifiers.hashing.uses_kernel`;
    it releases the GIL), otherwise in a pool of worker processes that receive newline-joined text.
    Either way they come back in order as
    :class:`~airflow_audience_provider.identifiers.hashing.BatchOutput` (counts, invalid indices and the
    partitioned hex digests). With one worker and the kernel, that worker is one thread too, so
    the source's next batch is read (and the caller handles the last one) while it runs; without
    the kernel one worker runs in this thread.

    :param columnar: per profile, whether batches the kernel runs hand their digests over as a
        polars frame (:class:`~airflow_audience_provider.identifiers.sorting.ColumnarSpill`).
    """
    kernel = all(uses_kernel(p) for p in profiles)
    if kernel:
        batch_size = max(batch_size, KERNEL_BATCH_ROWS if workers <= 1 else KERNEL_PARALLEL_BATCH_ROWS)
    if workers <= 1 and not kernel:
        for batch in source.iter_batches(batch_size):
            yield batch, _process_profiles(profiles, batch.values, columnar)
        return
    batches: Iterator[RawBatch] = iter(source.iter_batches(batch_size if kernel else max(batch_size, MP_TASK_ROWS)))
    if kernel and workers > 1:
        first = next(batches, None)
        if first is None:
            return
        batches = itertools.chain([first], batches)
        kernel = read_in_threads(profiles, first.values)
    if kernel:
        # The compiled kernel releases the GIL: threads of this process run batches in parallel
        # without pickling, and no process is forked after polars started its thread pool. One
        # worker is one such thread too: this thread reads the next batch from the source (and
        # the caller takes the last one) while it runs.
        yield from _ordered_in_threads(
            ((batch, batch.values) for batch in batches),
            lambda values: _process_profiles(profiles, values, columnar),
            threads=workers,
            ahead=workers * 2 if workers > 1 else 1,
            name="identifiers",
        )
        return
    import multiprocessing

    ctx = multiprocessing.get_context(mp_context or default_mp_context())
    pending: collections.deque[tuple[RawBatch, Future[list[BatchOutput] | None]]] = collections.deque()
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
        # Bounded look-ahead keeps memory flat while every worker stays busy.
        for batch in batches:
            values = batch.values
            pending.append((batch, pool.submit(process_profiles_text, profiles, "\n".join(values), len(values))))
            while len(pending) > workers * 2:
                yield _result(profiles, *pending.popleft())
        while pending:
            yield _result(profiles, *pending.popleft())


def read_in_threads(profiles: tuple[NormalisationProfile, ...], first: list[str]) -> bool:
    """Whether parallel read workers for these kernel profiles are threads (else processes), from the first batch.

    The kernel releases the GIL, but rows its fast path leaves to the exact rule (phones written
    the national way) do not: above :data:`PROCESSES_ABOVE_EXACT_SHARE` of them, processes are faster.
    """
    share = sum(exact_share(p, first) for p in profiles) / len(profiles)
    threads = share <= PROCESSES_ABOVE_EXACT_SHARE
    if share:
        log.info(
            "Read workers: %s; the fast path left %.0f%% of the first batch to the exact rule",
            "threads" if threads else "processes",
            share * 100,
        )
    return threads


def _result(
    profiles: tuple[NormalisationProfile, ...], batch: RawBatch, fut: Future[list[BatchOutput] | None]
) -> tuple[RawBatch, list[BatchOutput]]:
    outs = fut.result()
    if outs is None:  # a value held a newline: the text was not one row per line
        outs = _process_profiles(profiles, batch.values)
    return batch, outs


_iter_processed = iter_processed


def _check_wrong_type(profile: NormalisationProfile, batch: RawBatch, out: BatchOutput) -> None:
    """Raise when the first batch looks like another identifier type than the rule expects."""
    n = len(batch.values)
    if n < _WRONG_TYPE_MIN_ROWS or len(out.invalid) < n * _WRONG_TYPE_INVALID_SHARE:
        return
    sample = [batch.values[i] for i, _ in out.invalid[:50]]
    guesses = collections.Counter(detect_type(v) for v in sample)
    guess, hits = guesses.most_common(1)[0]
    if guess is not None and guess is not profile.identifier_type.family and hits >= len(sample) * 0.8:
        first = out.invalid[0][0]
        raise WrongIdentifierTypeError(
            f"values look like {guess.value} identifiers, but the rule expects {profile.identifier_type.value}",
            origin=batch.origin,
            line=batch.line_of(first),
            column=batch.column if batch.column is not None else 1,
        )


def run_destinations(
    source: IdentifierSource,
    destinations: list[Destination],
    *,
    dry_run: bool = False,
    workers: int = 1,
    work_dir: str | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    spill_bytes: int = DEFAULT_SPILL_BYTES,
    max_partition_bytes: int = DEFAULT_MAX_PARTITION_BYTES,
    mp_context: str | None = None,
) -> dict[str, dict[str, Any]]:
    """Read ``source`` once and sync (or plan) every destination.

    Nothing is sent to any destination until every destination passed its guards. If one
    destination's sending fails, the others still run; a
    :class:`~airflow_audience_provider.identifiers.errors.SendError` is raised at the end
    with every destination's result in ``result``.

    :returns: destination name -> result dict (JSON-serialisable).
    """
    names = [d.name for d in destinations]
    if len(set(names)) != len(names):
        raise ValueError(f"destination names must be unique, got {names!r}")
    for d in destinations:
        if d.sender is None and not dry_run:
            raise ValueError(f"destination {d.name!r} has no sender; pass one or use dry_run=True")
    states = {d.name: _DestState(d) for d in destinations}
    groups: dict[NormalisationProfile, list[_DestState]] = {}
    for st in states.values():
        groups.setdefault(st.dest.rule.profile, []).append(st)
    profiles = tuple(groups)

    tmp = Path(tempfile.mkdtemp(prefix="aap-contacts-", dir=work_dir))
    spills: dict[NormalisationProfile, PartitionSpill | ColumnarSpill] = {}
    for i, p in enumerate(profiles):
        pl = _columnar_polars(p)
        name = f"p{i}"
        spills[p] = (
            PartitionSpill(tmp, name, spill_bytes)
            if pl is None
            else ColumnarSpill(pl, tmp, name, spill_bytes, clear=not p.hashed_output)
        )
    # One destination's full replace may start sending while the plan still writes it.
    stream = _Stream(next(iter(states.values()))) if len(states) == 1 and not dry_run else None
    try:
        try:
            _read_phase(source, groups, spills, batch_size, workers, mp_context)
            _check_after_read(states, dry_run)
            if not dry_run:
                # The state is read under the lease: another run may be writing it until then.
                _acquire_leases(states)
            _plan_phase(groups, spills, tmp, max_partition_bytes, stream, workers)
            _check_after_plan(states, dry_run)
            if stream is not None:
                stream.finish()
        except BaseException as exc:
            if stream is not None:
                stream.abort(exc)
            if isinstance(exc, ContactListError) and exc.result is None and len(states) == 1:
                exc.result = next(iter(states.values())).result(dry_run=dry_run)
            raise
        finally:
            for spill in spills.values():
                spill.close()
        if dry_run:
            for st in states.values():
                st.status = "blocked" if st.blocked_by else "planned"
            results = {n: st.result(dry_run=True) for n, st in states.items()}
            log.info("Contact-list plan (dry run, nothing sent):\n%s", summarise(results.values()))
            return results
        failures = []
        first_cause: Exception | None = None
        for st in states.values():
            try:
                if stream is not None and stream.started:
                    stream.join()
                else:
                    _send(st)
            except Exception as exc:
                first_cause = first_cause or exc
                st.status = "failed"
                # Bounded: the text goes to XCom. Senders must keep identifiers out of messages.
                st.error = f"{type(exc).__name__}: {exc}"[:500]
                failures.append(st.dest.name)
                log.error("Sending to %s failed; its snapshot was not advanced: %s", st.dest.name, st.error)
        results = {n: st.result(dry_run=False) for n, st in states.items()}
        log.info("Contact-list sync:\n%s", summarise(results.values()))
        for st in states.values():
            for note in st.notes:
                log.warning("%s: %s", st.dest.name, note)
        if failures:
            payload: dict[str, Any] = results[failures[0]] if len(states) == 1 else {"destinations": results}
            raise SendError(f"sending failed for {', '.join(failures)}", result=payload) from first_cause
        return results
    finally:
        if stream is not None:
            stream.stop()
        for st in states.values():
            _release(st)
        shutil.rmtree(tmp, ignore_errors=True)


def _settle(sender: ChunkSender) -> None:
    """Wait until requests of unknown outcome (timeouts) have had time to land at the vendor.

    Until the sender's ``unsettled_until()`` (a ``time.monotonic()`` deadline) a request it gave
    up on may still be applied, so nothing that depends on it may follow, and the lease is kept
    until then so the next run is not overtaken by it.
    """
    delay = sender.unsettled_until() - time.monotonic()
    if delay > 0:
        log.info("Waiting %.1f s for requests of unknown outcome to settle before going on", delay)
        time.sleep(delay)


@contextlib.contextmanager
def _lease_guards_sends(st: _DestState) -> Iterator[None]:
    """While inside, every attempt of a write by the sender's transport asks the lease first.

    The lease is checked before each chunk, but the transport retries a request it was handed
    (5xx, 429, timeouts) possibly for minutes: each attempt, retries included, must start while
    the lease is ours and far enough from its expiry (:meth:`DestinationLease.may_send`), or the
    run fails with LeaseLostError instead of writing under a lease another run may hold.
    """
    lease, transport = st.lease, st.dest.sender.transport if st.dest.sender is not None else None
    may_send = getattr(lease, "may_send", None)
    if transport is None or not callable(may_send):
        yield
        return

    def guard(timeouts: Any, landing: float) -> None:
        may_send(float(timeouts.connect) + float(timeouts.read), landing)

    with transport.guard_sends(guard):
        yield


def _takeover_wait_until(st: _DestState) -> float | None:
    """Wall-clock time before which a run that took over an unreleased lease must not send (None: no wait).

    :func:`~airflow_audience_provider.identifiers.lease.takeover_safe_at` of the record taken over,
    with this run's own landing window: the moment a deferrable operator waited for in the
    triggerer before it took the lease, so then there is nothing left to wait here.
    """
    took_over = getattr(st.lease, "took_over", None)
    if took_over is None or st.dest.sender is None:
        return None
    skew = float(getattr(st.lease, "max_clock_skew", 0.0))
    return takeover_safe_at(took_over, max_clock_skew=skew, landing_window=st.dest.sender.landing_window())


def _outwait_lost_holder(st: _DestState, cancel: threading.Event | None) -> None:
    """Before the first request of a run that took over a lease its holder never released: wait
    until the requests that holder sent before its lease expired can no longer land.

    A crashed or killed run cannot keep its lease until its abandoned requests settle (as a live
    one does); one that lands after this run's opposite request would undo it while this run
    reports success.
    """
    until = _takeover_wait_until(st)
    if until is None:
        return
    delay = until - float(getattr(st.lease, "now", time.time)())  # by the clock the lease is judged by
    if delay <= 0:
        return
    log.warning(
        "%s: waiting %.1f s before sending, until requests of the run whose lease was taken over can no longer land",
        st.dest.name,
        delay,
    )
    st.notes.append(f"waited {delay:.0f} s for the requests of the run whose lease was taken over to settle")
    if cancel is not None:
        cancel.wait(delay)
        _check_cancel(cancel)
    else:
        time.sleep(delay)


def _acquire_leases(states: dict[str, _DestState]) -> None:
    # One order for every run, so two fan-outs over the same destinations cannot hold one each.
    ordered = sorted(states.values(), key=lambda s: str(s.dest.snapshot.location) if s.dest.snapshot else s.dest.name)
    for st in ordered:
        _acquire_lease(st)
        took_over = getattr(st.lease, "took_over", None)
        if took_over is not None:
            st.notes.append(
                f"took over the lease of a run that did not release it ({took_over.describe()}): "
                "it crashed or was killed"
            )


def _acquire_lease(st: _DestState) -> None:
    dest, opts = st.dest, st.dest.options
    if dest.lease is not None:
        # Acquired by the caller (e.g. with try_acquire before deferring) or not yet: the engine
        # holds it through the send and releases it at the end either way.
        st.lease = dest.lease
        st.own_lease = True
        if st.lease.token is None:
            if getattr(st.lease, "landing_window", 0.0) is None and dest.sender is not None:
                st.lease.landing_window = dest.sender.landing_window()  # in the record it writes
            st.lease.acquire(opts.lease_timeout, opts.lease_poll_interval)
        return
    if dest.snapshot is None or not opts.use_lease:
        return
    st.lease = DestinationLease(
        dest.snapshot.directory / "lease",
        ttl=opts.lease_ttl,
        max_clock_skew=opts.max_clock_skew,
        landing_window=dest.sender.landing_window() if dest.sender is not None else None,
    )
    st.own_lease = True
    try:
        st.lease.acquire(opts.lease_timeout, opts.lease_poll_interval)
    except ContactListError:
        st.status = "blocked"
        st.lease = None
        raise


def _release(st: _DestState) -> None:
    if st.lease is None:
        return
    if st.status not in ("reading", "blocked", "planned") and st.dest.sender is not None:
        with contextlib.suppress(BaseException):
            _settle(st.dest.sender)
    if st.own_lease:
        st.lease.release()


def _read_phase(
    source: IdentifierSource,
    groups: dict[NormalisationProfile, list[_DestState]],
    spills: dict[NormalisationProfile, PartitionSpill | ColumnarSpill],
    batch_size: int,
    workers: int,
    mp_context: str | None,
) -> None:
    profiles = tuple(groups)
    first = True
    rows = 0
    started = last_log = time.monotonic()
    columnar = tuple(isinstance(spills[p], ColumnarSpill) for p in profiles)
    for batch, outputs in _iter_processed(source, profiles, batch_size, workers, mp_context, columnar):
        n = len(batch.values)
        rows += n
        for profile, out in zip(profiles, outputs, strict=True):
            if first:
                _check_wrong_type(profile, batch, out)
            spill = spills[profile]
            if out.frame is not None and isinstance(spill, ColumnarSpill):
                spill.add_frame(out.frame, out.count)
            else:
                spill.add(out.partitions, out.count)
            for st in groups[profile]:
                acc = st.acc
                acc.rows += n
                if out.invalid:
                    # Reasons for all, redacted samples for the first few only.
                    if len(acc.invalid_samples) >= 5:
                        acc.invalid += len(out.invalid)
                        acc.invalid_reasons.update(r for _, r in out.invalid)
                    else:
                        for i, reason in out.invalid:
                            acc.record_invalid(reason, batch.values[i], batch.location(i))
        first = False
        now = time.monotonic()
        if now - last_log >= _READ_PROGRESS_SECONDS:
            log.info("Read %d rows from %s (%.0f rows/s)", rows, source.origin, rows / (now - started))
            last_log = now
    for spill in spills.values():
        if isinstance(spill, ColumnarSpill):
            spill.finish()


def _check_after_read(states: dict[str, _DestState], dry_run: bool) -> None:
    """Guards that need only the counts: empty input, invalid share.

    In a dry run they are recorded in the plan's ``blocked_by`` instead of raised.
    """
    first_error: ContactListError | None = None
    for st in states.values():
        opts, acc = st.dest.options, st.acc
        error: ContactListError | None = None
        if acc.rows == 0 and not opts.allow_empty:
            error = EmptyInputError(
                f"{st.dest.name}: the input has no rows; pass allow_empty=True to clear the list on purpose"
            )
        elif acc.rows and acc.invalid_share > opts.max_invalid_share:
            error = InvalidShareError(
                f"{st.dest.name}: {acc.invalid} of {acc.rows} rows ({acc.invalid_share:.1%}) are invalid, "
                f"more than the allowed {opts.max_invalid_share:.1%}; nothing was sent. "
                f"Reasons: {dict(acc.invalid_reasons.most_common(5))}"
                + "".join(f". {REASON_HINTS[r]}" for r in sorted(acc.invalid_reasons) if r in REASON_HINTS)
            )
        if error is not None:
            st.blocked_by.append({"guard": type(error).__name__, "message": str(error)})
            st.status = "blocked"
            first_error = first_error or error
    if first_error is not None and not dry_run:
        _attach_results(first_error, states)
        raise first_error


def _attach_results(error: ContactListError, states: dict[str, _DestState]) -> None:
    if len(states) == 1:
        error.result = next(iter(states.values())).result(dry_run=False)
    else:
        error.result = {"destinations": {n: s.result(dry_run=False) for n, s in states.items()}}


def _open_out(path: Path) -> IO[str]:
    return open(path, "w", encoding="utf-8", errors="surrogatepass", newline="\n")


def _plan_phase(
    groups: dict[NormalisationProfile, list[_DestState]],
    spills: dict[NormalisationProfile, PartitionSpill | ColumnarSpill],
    tmp: Path,
    max_partition_bytes: int,
    stream: _Stream | None = None,
    workers: int = 1,
) -> None:
    for gi, (profile, group) in enumerate(groups.items()):
        spill = spills[profile]
        if isinstance(spill, ColumnarSpill) and spill.text_spill is not None:
            spill = spill.text_spill  # a clear-text value polars cannot hold: the Python plan
        readers: dict[str, SnapshotReader | None] = {}
        handles: list[IO[str]] = []
        outs: dict[str, tuple[IO[str], IO[str], IO[str]]] = {}
        try:
            for di, st in enumerate(group):
                reader = _open_state(st, handles, tmp / f"g{gi}d{di}.inherited")
                readers[st.dest.name] = reader
                base = tmp / f"g{gi}d{di}"
                st.adds_path, st.removes_path, st.snapshot_path = (
                    base.with_suffix(".adds"),
                    base.with_suffix(".removes"),
                    base.with_suffix(".snapshot"),
                )
                outs[st.dest.name] = (_open_out(st.adds_path), _open_out(st.removes_path), _open_out(st.snapshot_path))
                st.add_counter = ChunkCounter(st.dest.rule)
                st.remove_counter = ChunkCounter(st.dest.rule)
            columns: dict[str, ColumnarSnapshotReader] = {}
            if isinstance(spill, ColumnarSpill):
                for st in group:
                    reader = readers[st.dest.name]
                    if reader is not None and _diffs_in_columns(st, reader):
                        columns[st.dest.name] = ColumnarSnapshotReader(spill.polars, reader)
                joins = any(readers[st.dest.name] is None or st.dest.name in columns for st in group)
                for keys, block in _columnar_blocks(spill, joins, max(workers, plan_threads())):
                    _plan_block_columnar(keys, block, group, readers, outs, columns)
                    if stream is not None:
                        stream.poll(outs)
            else:
                for key in spill.partition_keys():
                    if spill.partition_bytes(key) <= max_partition_bytes:
                        _diff_in_memory(key, spill.read(key), group, readers, outs)
                    else:
                        _diff_streaming(key, spill, group, readers, outs, tmp)
                    if stream is not None:
                        stream.poll(outs)
            for st in group:
                diff_base = columns.get(st.dest.name) or readers[st.dest.name]
                if diff_base is not None:
                    diff_base.finish()
                st.acc.check()
        finally:
            for triple in outs.values():
                for fh in triple:
                    fh.close()
            for fh in handles:
                fh.close()


def _diffs_in_columns(st: _DestState, reader: SnapshotReader) -> bool:
    """Whether the columnar plan diffs this destination against its snapshot in polars.

    That is an incremental ``sync`` of hex digests with no uncertain identifier: the new list is
    the target, and each value is an addition, a removal or unchanged. Every other case (``add``
    and ``remove`` modes, identifiers an unfinished run left uncertain) goes through
    :func:`_diff_sorted` partition by partition.
    """
    recovery = st.recovery
    return (
        st.mode == INCREMENTAL
        and st.dest.mode == "sync"
        and reader.hashed
        and not st.uncertain
        and not (recovery is not None and recovery.snapshot_uncertain)
    )


def _columnar_polars(profile: NormalisationProfile) -> Any:
    """polars when this profile's outputs stay columnar from the kernel through the plan, else None.

    That is for hex digests (hashed outputs of a fixed length) and for the clear-text ids the kernel
    decides (customer ids, ClientIDs) with the ``fast`` extra; ``AUDIENCE_IDENTIFIERS_KERNEL=python``
    turns it off with the kernel (the pure-Python path).
    """
    length = profile.output_length
    if kernel_takes_clear_text(profile):
        pass
    elif not profile.hashed_output or length is None or length < PREFIX_DIGITS or not uses_kernel(profile):
        return None
    kernel = load_email_kernel()
    return kernel.polars if kernel is not None else None


def _other_list(meta: dict[str, Any], remote_id: str | None) -> str | None:
    """Why a snapshot does not describe the remote list ``remote_id`` (None: it does, or nothing is checked)."""
    if remote_id is None:
        return None
    recorded = meta.get("remote_id")
    if recorded is None:
        return f"does not record which remote list it describes (now {remote_id}; written by an older version)"
    if str(recorded) != str(remote_id):
        return f"describes remote list {recorded}, the destination is now {remote_id} (deleted and created again?)"
    return None


def _open_state(st: _DestState, handles: list[IO[str]], inherited_path: Path) -> SnapshotReader | None:
    """Read the destination's snapshot and journal; choose the engine mode; return the diff base.

    The base is the snapshot's reader (None = no usable confirmed state). Uncertain identifiers
    of an unfinished run go to ``st.uncertain`` (by partition) and ``inherited_path``.
    """
    dest = st.dest
    store = dest.snapshot
    reader = None
    if store is not None and dest.keep_state:
        reader, meta, fh = store.open(dest.rule)
        if fh is not None:
            handles.append(fh)
        if meta is not None:
            st.previous_count = int(meta.get("count", 0))
            st.previous_rule = meta.get("rule")
            st.snapshot_meta = meta
            if reader is None:
                st.full_replace_reason = f"the snapshot {rule_mismatch(meta, dest.rule)}"
            elsewhere = _other_list(meta, dest.options.remote_id)
            if dest.options.new_list:
                # The list it describes is gone and the new one is empty: nothing in it to keep or remove.
                elsewhere = "describes a remote list that does not exist any more (the destination does not exist yet)"
                st.previous_count = None
            if reader is not None and elsewhere is not None:
                log.warning("Snapshot %s %s: this run does not diff against it.", store.describe(), elsewhere)
                st.full_replace_reason = f"the snapshot {elsewhere}"
                reader = None
    if store is not None and dest.keep_state:
        st.journal = Journal(store.directory)
        rec = st.journal.recover(dest.rule.key, dest.rule.profile.output_length, dest.rule.fingerprint)
        st.recovery = rec
        if rec is not None and rec.unusable:
            st.notes.append(
                f"the journal of an unfinished run is unusable ({rec.unusable}); this run is a full replace"
            )
            st.full_replace_reason = "unusable journal"
            reader = None
        elif rec is not None:
            hashed = dest.rule.profile.hashed_output
            parts: dict[str, set[str]] = {}
            for v in rec.values:
                parts.setdefault(partition_of(v, hashed), set()).add(v)
            st.uncertain = parts
            with _open_out(inherited_path) as out:
                _write(out, sorted(rec.values))
            st.inherited_path = inherited_path
            st.notes.append(
                f"an earlier run did not finish ({rec.previous.get('state')}, run {rec.previous.get('run')}): "
                f"{len(rec.values)} identifier(s) are uncertain"
                + (" and so is every identifier of the snapshot (its clear may land)" if rec.snapshot_uncertain else "")
                + "; this run re-sends them so the list converges"
            )
    if not dest.keep_state:
        reader = None
    opts, mode = dest.options, dest.mode
    # Adding to a list that does not exist yet makes it the input: a full replace, whose state is then known.
    new_add = opts.new_list and mode == "add"
    full = mode == "replace" or opts.full_replace or new_add
    if full:
        st.full_replace_reason = st.full_replace_reason or (
            "mode replace" if mode == "replace" else "the destination does not exist yet" if new_add else "full_replace"
        )
    elif mode == "sync" and reader is None:
        full = True
        st.full_replace_reason = st.full_replace_reason or "no snapshot"
    elif mode == "sync" and opts.full_refresh_every is not None and st.snapshot_meta is not None:
        last = st.snapshot_meta.get("full_replace_at")
        if not isinstance(last, (int, float)) or time.time() - last >= opts.full_refresh_every.total_seconds():
            full = True
            st.full_replace_reason = f"full_refresh_every ({opts.full_refresh_every}) has passed"
    if mode in ("add", "remove") and reader is None and not new_add:
        st.mode = ONE_WAY
        return None
    if full:
        st.mode = FULL_REPLACE
        return None
    st.mode = INCREMENTAL
    return reader


def _write(fh: IO[str], values: list[str]) -> None:
    if values:
        fh.write("\n".join(values))
        fh.write("\n")


def sorted_unique(values: list[str]) -> list[str]:
    """``sorted(set(values))``, computed without hashing: sort, then drop each value equal to its predecessor.

    Partitions reach the plan phase as a few sorted runs (the compiled kernel sorts each batch),
    which the sort merges in a few comparisons per value; neighbours in sorted order are compared
    by C loops (``map``/``compress``), with no Python bytecode per value.
    """
    ordered = sorted(values)
    if len(ordered) < 2:
        return ordered
    rest = itertools.islice(ordered, 1, None)
    keep = map(operator.ne, ordered, itertools.islice(ordered, 1, None))
    return [ordered[0], *itertools.compress(rest, keep)]


@dataclass
class _ColumnarBlock:
    """One block of the columnar plan, computed in a plan thread (:func:`_columnar_block`).

    :param unique: the block's rows (``p``, ``h``), sorted (by partition, then value, for clear
        text) and without duplicate values.
    :param count: the block's values before de-duplication.
    :param joined: the values' lines (:func:`_joined`), when a destination writes them whole.
    :param starts: clear text: the offsets in ``unique`` of the 256 partitions, and its length.
    :param sizes: clear text: the cumulative UTF-8 bytes of the values (``sizes[j]``: of the
        first ``j``), for the chunk counters.
    """

    unique: Any
    count: int
    joined: bytes | None = None
    starts: list[int] | None = None
    sizes: Any = None


def _columnar_block(pl: Any, frame: Any, join: bool, edges: Any = None) -> _ColumnarBlock:
    """One block's sorted unique rows, its count of values, and (``join``) the values as one text.

    :param edges: clear text: the first ``p`` of each partition (``ColumnarSpill.partition_edges``).
    """
    if edges is None:
        unique = sorted_unique_rows(pl, frame)
        return _ColumnarBlock(unique, frame.height, _joined(pl, unique.get_column("h")) if join else None)
    unique = sorted_unique_clear_frame(pl, frame, edges)
    values = unique.get_column("h")
    starts: list[int] = unique.get_column("p").search_sorted(edges, "left").to_list()
    starts.append(len(values))
    sizes = pl.concat([pl.Series([0], dtype=pl.Int64), values.str.len_bytes().cast(pl.Int64).cum_sum()])
    return _ColumnarBlock(unique, frame.height, _joined(pl, values) if join else None, starts, sizes)


def _joined(pl: Any, unique: Any) -> bytes:
    """The values joined by newlines, as the bytes of the work files (hex digits are ASCII).

    Taken as bytes: writing the text polars returns through the work file's text layer cost 3x as
    much (15 against 5 ms per 200,000 digests).
    """
    return unique.str.join("\n").cast(pl.Binary).item() if len(unique) else b""


#: Threads the columnar plan computes its blocks in when the read had one worker (and the machine
#: has a second CPU): the sorting and joining run in polars without the GIL, so a second core
#: takes half of them while this thread writes. ``workers`` counts read workers only.
PLAN_THREADS = 2


def plan_threads() -> int:
    """Threads of the columnar plan at least (:data:`PLAN_THREADS`, at most the CPUs this process may use)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return max(1, min(PLAN_THREADS, cpus))


def _columnar_blocks(
    spill: ColumnarSpill, join: bool, workers: int
) -> Iterator[tuple[tuple[str, ...], _ColumnarBlock]]:
    """:func:`_columnar_block` of each of the spill's blocks, in order.

    With ``workers > 1`` the blocks are computed in that many threads, a few blocks ahead of the
    caller (who writes them in order): polars releases the GIL, so the plan uses every core the
    read phase used (and a second one after a one-worker read, see :data:`PLAN_THREADS`).
    """
    pl = spill.polars
    edges = spill.partition_edges if spill.clear else None
    if workers <= 1:
        for keys, frame in spill.blocks():
            yield keys, _columnar_block(pl, frame, join, edges)
        return
    yield from _ordered_in_threads(
        spill.blocks(workers),
        lambda frame: _columnar_block(pl, frame, join, edges),
        threads=workers,
        ahead=workers,
        name="contact-plan",
    )


K = TypeVar("K")
A = TypeVar("A")
R = TypeVar("R")


def _ordered_in_threads(
    items: Iterable[tuple[K, A]], fn: Callable[[A], R], *, threads: int, ahead: int, name: str
) -> Iterator[tuple[K, R]]:
    """``(key, fn(arg))`` for each ``(key, arg)``, in order, computed in ``threads`` threads.

    At most ``ahead`` results wait beyond the one being yielded, so memory stays bounded while the
    caller consumes them; an error of ``fn`` is raised where its item would have been yielded.
    """
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix=name) as pool:
        pending: collections.deque[tuple[K, Future[R]]] = collections.deque()
        for key, arg in items:
            pending.append((key, pool.submit(fn, arg)))
            while len(pending) > ahead:
                done, fut = pending.popleft()
                yield done, fut.result()
        while pending:
            done, fut = pending.popleft()
            yield done, fut.result()


def _plan_block_columnar(
    keys: tuple[str, ...],
    block: _ColumnarBlock,
    group: list[_DestState],
    readers: dict[str, SnapshotReader | None],
    outs: dict[str, tuple[IO[str], IO[str], IO[str]]],
    columns: dict[str, ColumnarSnapshotReader] | None = None,
) -> None:
    """:func:`_diff_in_memory` for a block of consecutive partitions (``keys``) planned in polars.

    :param block: the block's sorted unique rows, its count of values and, if computed already,
        its values' lines.
    :param columns: destinations diffed in polars (:func:`_diffs_in_columns`), with their snapshot's reader.

    A full replace (no diff base) writes the block as one text joined in polars, and so does an
    incremental sync diffed in polars (:func:`_diff_block_columnar`); any other diff against the
    snapshot goes partition by partition through :func:`_diff_sorted`, as in the Python plan.
    """
    prefixes, unique = block.unique.get_column("p"), block.unique.get_column("h")
    count, joined = block.count, block.joined
    n = len(unique)
    diffed: list[_DestState] = []
    for st in group:
        column = columns.get(st.dest.name) if columns else None
        if column is not None:
            if joined is None:
                joined = _joined(column.polars, unique)
            _diff_block_columnar(st, keys, unique, prefixes, count, joined, column, outs[st.dest.name])
            continue
        if readers[st.dest.name] is not None:
            diffed.append(st)
            continue
        acc = st.acc
        acc.duplicate += count - n
        acc.unique += n
        assert st.add_counter is not None and st.remove_counter is not None
        if joined is None:
            joined = _joined(load_email_kernel().polars, unique)  # type: ignore[union-attr]
        _, removes_fh, snap_fh = outs[st.dest.name]
        _write_bytes(snap_fh, joined)
        counter = st.add_counter
        if st.mode == ONE_WAY and st.dest.mode == "remove":
            acc.removed += n
            _write_bytes(removes_fh, joined)
            counter = st.remove_counter
        else:
            # Full replace: the additions are the new snapshot; _send reads that file instead.
            acc.added += n
        if block.sizes is not None:
            counter.feed_sizes(block.sizes)
        else:
            counter.feed_count(n)
    if not diffed:
        return
    if block.starts is not None:  # clear text: partitions located by their numbers
        first = int(keys[0], 16)
        starts = block.starts[first : first + len(keys) + 1]
    else:  # digests begin with their partition's key
        starts = unique.search_sorted(type(unique)(keys, dtype=unique.dtype), "left").to_list()
        starts.append(n)
    duplicates = count - n  # counted once, with the block's first partition
    for i, key in enumerate(keys):
        values = unique.slice(starts[i], starts[i + 1] - starts[i]).to_list()
        _diff_sorted(key, values, duplicates, diffed, readers, outs)
        duplicates = 0


def _diff_block_columnar(
    st: _DestState,
    keys: tuple[str, ...],
    unique: Any,
    prefixes: Any,
    count: int,
    joined: bytes,
    column: ColumnarSnapshotReader,
    files: tuple[IO[str], IO[str], IO[str]],
) -> None:
    """:func:`_diff_sorted` of a block for an incremental ``sync``, in polars: the same files and counts.

    Both lists are sorted and without duplicates, so a value is in the other list exactly where a
    binary search for it lands on an equal value.
    """
    pl = column.polars
    old = column.take(keys)
    n = len(unique)
    acc = st.acc
    acc.duplicate += count - n
    acc.unique += n
    adds, removes = _merge_diff_columns(unique, prefixes, old)
    acc.unchanged += n - len(adds)
    acc.added += len(adds)
    acc.removed += len(removes)
    adds_fh, removes_fh, snap_fh = files
    _write_bytes(adds_fh, joined if len(adds) == n else _joined(pl, adds))
    _write_bytes(removes_fh, _joined(pl, removes))
    _write_bytes(snap_fh, joined)
    assert st.add_counter is not None and st.remove_counter is not None
    st.add_counter.feed_count(len(adds))
    st.remove_counter.feed_count(len(removes))


def _merge_diff_columns(new: Any, p_new: Any, old: Any) -> tuple[Any, Any]:
    """:func:`~airflow_audience_provider.identifiers.sorting.merge_diff` of two sorted String Series
    of hex digests without duplicates: the values only in ``new`` and those only in ``old``, each sorted.

    Values are matched by their 48-bit prefixes (``p_new`` for ``new``; integers, where looking up
    the strings reads scattered memory), then the matched pairs' strings are compared. Where two
    values of one list share a prefix, or two different values of the two lists do, the strings
    are searched instead.
    """
    if not len(new) or not len(old):
        return new, old
    # The same function of the value gives both lists' prefixes (the kernel's).
    p_old = old.str.slice(0, PREFIX_DIGITS).str.to_integer(base=16, strict=False)
    if not p_old.null_count() and _strictly_increasing(p_new) and _strictly_increasing(p_old):
        in_old, in_new = p_new.is_in(p_old.implode()), p_old.is_in(p_new.implode())
        # Prefixes are unique in each list and both lists are in their order: the matched rows pair up.
        if (new.filter(in_old) == old.filter(in_new)).all():
            return new.filter(~in_old), old.filter(~in_new)
    return new.filter(~_found_in(new, old)), old.filter(~_found_in(old, new))


def _found_in(values: Any, other: Any) -> Any:
    """Per value of ``values``, whether ``other`` holds it (both sorted String Series, ``other`` not empty)."""
    at = other.search_sorted(values, "left").clip(0, len(other) - 1)
    return other.gather(at) == values


def _strictly_increasing(keys: Any) -> bool:
    return len(keys) < 2 or bool((keys.slice(1) > keys.slice(0, len(keys) - 1)).all())


def _write_bytes(fh: IO[str], data: bytes) -> None:
    """Append ``data`` and a newline to a work file opened as text (after what its text layer holds)."""
    if data:
        fh.flush()
        fh.buffer.write(data)  # type: ignore[attr-defined]
        fh.buffer.write(b"\n")  # type: ignore[attr-defined]


def _diff_in_memory(
    key: str,
    values: list[str],
    group: list[_DestState],
    readers: dict[str, SnapshotReader | None],
    outs: dict[str, tuple[IO[str], IO[str], IO[str]]],
) -> None:
    new_sorted = sorted_unique(values)
    _diff_sorted(key, new_sorted, len(values) - len(new_sorted), group, readers, outs)


def _diff_sorted(
    key: str,
    new_sorted: list[str],
    duplicates: int,
    group: list[_DestState],
    readers: dict[str, SnapshotReader | None],
    outs: dict[str, tuple[IO[str], IO[str], IO[str]]],
) -> None:
    """Plan one partition of the new list (sorted, without duplicates) for each destination of ``group``."""
    unique_set: set[str] | None = None
    for st in group:
        acc = st.acc
        acc.duplicate += duplicates
        acc.unique += len(new_sorted)
        adds_fh, removes_fh, snap_fh = outs[st.dest.name]
        reader = readers[st.dest.name]
        if reader is None:
            _write(snap_fh, new_sorted)
        assert st.add_counter is not None and st.remove_counter is not None
        if st.mode == ONE_WAY and st.dest.mode == "remove":
            acc.removed += len(new_sorted)
            _write(removes_fh, new_sorted)
            st.remove_counter.feed(new_sorted)
            continue
        if reader is None:
            # Full replace: the additions are the new snapshot; _send reads that file instead.
            acc.added += len(new_sorted)
            st.add_counter.feed(new_sorted)
            continue
        if unique_set is None:
            unique_set = set(new_sorted)
        unique = unique_set
        old = set(reader.iter_partition(key))
        unc = st.uncertain.get(key) if st.uncertain else None
        if st.dest.mode != "sync" or unc or (st.recovery is not None and st.recovery.snapshot_uncertain):
            _diff_generic(st, unique, old, unc or set(), snap_fh, adds_fh, removes_fh)
            continue
        adds = sorted(unique - old) if old else new_sorted
        removes = sorted(old - unique)
        acc.unchanged += len(unique) - len(adds)
        _record_diff(st, adds_fh, removes_fh, snap_fh, adds, removes, new_sorted)


def _sort_one(
    v: str,
    mode: str,
    in_new: bool,
    in_old: bool,
    uncertain: bool,
    snap: list[str],
    adds: list[str],
    removes: list[str],
) -> bool:
    """Put one identifier in the target list (``snap``), the adds or the removes; True when it is unchanged.

    The target is the input (``sync``), the snapshot plus the input (``add``) or the snapshot
    minus the input (``remove``). An identifier is sent when the confirmed state differs from the
    target, or when its state is uncertain (an unfinished run may have changed it).
    """
    if mode == "add":
        target = in_old or in_new
    elif mode == "remove":
        target = in_old and not in_new
    else:
        target = in_new
    if target:
        snap.append(v)
        if not in_old or uncertain:
            adds.append(v)
            return False
    elif in_old or uncertain:
        removes.append(v)
        return False
    return in_new


def _diff_generic(
    st: _DestState,
    new: set[str],
    old: set[str],
    unc: set[str],
    snap_fh: IO[str],
    adds_fh: IO[str],
    removes_fh: IO[str],
) -> None:
    """The diff of one partition in any mode, with uncertain identifiers (see :func:`_sort_one`)."""
    acc, mode = st.acc, st.dest.mode
    all_old_uncertain = st.recovery is not None and st.recovery.snapshot_uncertain
    snap: list[str] = []
    adds: list[str] = []
    removes: list[str] = []
    for v in sorted(new | old | unc):
        in_old = v in old
        if _sort_one(v, mode, v in new, in_old, v in unc or (in_old and all_old_uncertain), snap, adds, removes):
            acc.unchanged += 1
    _record_diff(st, adds_fh, removes_fh, snap_fh, adds, removes, snap)


def _diff_streaming(
    key: str,
    spill: PartitionSpill,
    group: list[_DestState],
    readers: dict[str, SnapshotReader | None],
    outs: dict[str, tuple[IO[str], IO[str], IO[str]]],
    tmp: Path,
) -> None:
    """Same as :func:`_diff_in_memory` for a partition too large for memory: external sort + merge."""
    counted = CountingIterator(spill.iter_lines(key))
    sorted_path = tmp / f"sorted-{key}.txt"
    unique_count = 0
    with _open_out(sorted_path) as fh:
        for v in external_sorted_unique(counted, tmp):
            fh.write(v)
            fh.write("\n")
            unique_count += 1
    duplicates = counted.count - unique_count
    for st in group:
        acc = st.acc
        acc.duplicate += duplicates
        acc.unique += unique_count
        adds_fh, removes_fh, snap_fh = outs[st.dest.name]
        reader = readers[st.dest.name]
        assert st.add_counter is not None and st.remove_counter is not None
        with open(sorted_path, encoding="utf-8", errors="surrogatepass", newline="\n") as fh:
            new_iter = (line[:-1] for line in fh)
            old_iter = reader.iter_partition(key) if reader is not None else iter(())
            add_buf: list[str] = []
            rem_buf: list[str] = []
            snap_buf: list[str] = []
            mode = st.dest.mode
            unc = set(st.uncertain.get(key, ())) if st.uncertain else set()
            all_old_uncertain = st.recovery is not None and st.recovery.snapshot_uncertain
            one_way_remove = st.mode == ONE_WAY and mode == "remove"
            generic = reader is not None and (mode != "sync" or unc or all_old_uncertain)
            for sign, v in merge_diff(new_iter, old_iter):
                if one_way_remove:
                    rem_buf.append(v)
                elif generic:
                    in_old = sign <= 0
                    uncertain = v in unc or (in_old and all_old_uncertain)
                    unc.discard(v)
                    if _sort_one(v, mode, sign >= 0, in_old, uncertain, snap_buf, add_buf, rem_buf):
                        acc.unchanged += 1
                else:
                    if sign >= 0:
                        snap_buf.append(v)
                    if sign > 0:
                        add_buf.append(v)
                    elif sign < 0:
                        rem_buf.append(v)
                    else:
                        acc.unchanged += 1
                if len(snap_buf) + len(rem_buf) >= 50_000:
                    _record_diff(st, adds_fh, removes_fh, snap_fh, add_buf, rem_buf, snap_buf)
                    add_buf, rem_buf, snap_buf = [], [], []
            if generic:
                # Uncertain identifiers in neither list are not in the target: remove them again.
                rem_buf.extend(sorted(unc))
            _record_diff(st, adds_fh, removes_fh, snap_fh, add_buf, rem_buf, snap_buf)
    sorted_path.unlink(missing_ok=True)


def _record_diff(
    st: _DestState,
    adds_fh: IO[str],
    removes_fh: IO[str],
    snap_fh: IO[str],
    adds: list[str],
    removes: list[str],
    snap: list[str],
) -> None:
    """Write a diff's adds, removes and target list, count them and feed the chunk counters."""
    assert st.add_counter is not None and st.remove_counter is not None
    st.acc.added += len(adds)
    st.acc.removed += len(removes)
    _write(adds_fh, adds)
    _write(removes_fh, removes)
    _write(snap_fh, snap)
    st.add_counter.feed(adds)
    st.remove_counter.feed(removes)


def _check_after_plan(states: dict[str, _DestState], dry_run: bool) -> None:
    """Guards that need the diff. In a dry run they are recorded in the plan instead of raised."""
    first_error: ContactListError | None = None
    for st in states.values():
        opts, acc, rule = st.dest.options, st.acc, st.dest.rule
        name = st.dest.name
        checks: list[ContactListError] = []
        one_way = st.dest.mode in ("add", "remove")
        if acc.unique == 0:
            if opts.allow_empty and one_way:
                pass  # nothing to add or remove (uncertain identifiers may still be repaired)
            elif opts.allow_empty:
                # One clear call instead of removal chunks.
                st.mode = CLEAR
                st.remove_counter = ChunkCounter(rule)
            elif not st.blocked_by:  # not already reported by the read-phase guards
                checks.append(
                    EmptyInputError(
                        f"{name}: no valid identifier in {acc.rows} rows; pass allow_empty=True to clear the list"
                    )
                )
        elif acc.unique < rule.min_entries and not opts.allow_below_minimum and not one_way:
            checks.append(
                MinimumEntriesError(
                    f"{name}: {acc.unique} identifiers, {rule.vendor} needs at least {rule.min_entries} "
                    f"({rule.source}); pass allow_below_minimum=True to send anyway"
                )
            )
        if st.mode in (INCREMENTAL, ONE_WAY) and acc.added == 0 and acc.removed == 0:
            st.mode = NOOP
        previous = st.previous_count or 0
        if previous and not opts.allow_mass_removal and not one_way:
            # Full replace (rule changed, or forced): estimate from the old list's size.
            going = acc.removed if st.mode in (INCREMENTAL, NOOP) else max(previous - acc.unique, 0)
            emptying = acc.unique == 0
            too_many = going > previous * opts.max_removal_share
            if (emptying and not opts.allow_empty) or (too_many and not emptying):
                checks.append(
                    RemovalGuardError(
                        f"{name}: the sync would remove {going} of {previous} identifiers "
                        f"({going / previous:.1%}), more than the allowed {opts.max_removal_share:.0%}"
                        f"{' (it would empty the list)' if emptying else ''}; nothing was sent. "
                        "Pass allow_mass_removal=True (or raise max_removal_share) if this is intended."
                    )
                )
        for err in checks:
            st.blocked_by.append({"guard": type(err).__name__, "message": str(err)})
        if checks:
            st.status = "blocked"
            if first_error is None:
                first_error = checks[0]
    if first_error is not None and not dry_run:
        _attach_results(first_error, states)
        raise first_error


def _unless_cancelled(
    chunks: Iterable[Chunk], cancel: threading.Event | None, before: Callable[[Chunk], None] | None = None
) -> Iterator[Chunk]:
    """The chunks, checking before each one that the sync was not cancelled (``SyncOptions.cancel``).

    ``before`` runs just before a chunk is handed to the sender (the lease's fencing check and the
    journal's "attempting" record).
    """
    for chunk in chunks:
        _check_cancel(cancel)
        if before is not None:
            before(chunk)
        yield chunk


def _check_cancel(cancel: threading.Event | None) -> None:
    if cancel is not None and cancel.is_set():
        raise SyncCancelled("the sync was cancelled (the task was stopped); no further chunk was sent")


def _call(sender: ChunkSender, chunk: Chunk) -> ChunkResult:
    if chunk.operation == REMOVE:
        return sender.remove(chunk)
    if chunk.operation == REPLACE:
        return sender.replace(chunk)
    return sender.add(chunk)


def _send_phase(
    sender: ChunkSender,
    chunks: Iterable[Chunk],
    concurrency: int,
    done: Callable[[Chunk, ChunkResult], None],
    fence: Callable[[], None] | None = None,
) -> None:
    """Send chunks, at most ``concurrency`` at a time; stop at the first failure and re-raise it.

    Results are recorded (``done``) in this thread, so accounting needs no lock. On a failure no
    new chunk is started; chunks already in flight finish and are counted. With several in flight,
    the next chunk is taken from ``chunks`` (which writes its journal record) while the others are
    in flight, so it starts as soon as a slot frees; ``fence`` (the cancel and lease checks) runs
    just before each chunk is handed to the sender.
    """
    if concurrency <= 1:
        for chunk in chunks:  # taken (checked and journaled) just before it is sent
            done(chunk, _call(sender, chunk))
        return
    error: BaseException | None = None
    stopped: BaseException | None = None  # raised by the chunk source or the fence: no further chunk
    source = iter(chunks)

    def take() -> Chunk | None:
        nonlocal stopped
        try:
            return next(source, None)
        except BaseException as exc:
            stopped = exc
            return None

    with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="contact-list-send") as pool:
        in_flight: dict[Future[ChunkResult], Chunk] = {}

        def collect(futures: Iterable[Future[ChunkResult]]) -> None:
            nonlocal error
            for fut in futures:
                chunk = in_flight.pop(fut)
                exc = fut.exception()
                if exc is not None:
                    error = error or exc
                else:
                    done(chunk, fut.result())

        nxt = take()
        finished: set[Future[ChunkResult]] = set()
        while nxt is not None and not any(f.exception() is not None for f in finished):
            try:
                if fence is not None:
                    fence()
            except BaseException as exc:
                stopped = exc
                break
            in_flight[pool.submit(_call, sender, nxt)] = nxt
            collect(finished)  # the answers that freed the slot: recorded once the next chunk is on its way
            nxt = take()  # ready (and journaled) before a slot frees
            finished = set()
            if nxt is not None and len(in_flight) >= concurrency:
                finished, _ = wait(in_flight, return_when=FIRST_COMPLETED)
        collect(finished)
        collect(list(in_flight))  # Future.exception() waits for each
    if error is not None:
        raise error
    if stopped is not None:
        raise stopped


def _guards_settled(st: _DestState) -> bool:
    """True when the guards of :func:`_check_after_plan` pass for this full replace whatever the rest of the plan adds.

    For a full replace every guard depends only on the unique count, and more identifiers can
    only make it pass: not empty, at least the vendor minimum, and few enough of the previous
    list gone.
    """
    opts, acc, rule = st.dest.options, st.acc, st.dest.rule
    if st.mode != FULL_REPLACE or st.dest.mode not in ("sync", "replace") or acc.unique == 0:
        return False
    if acc.unique < rule.min_entries and not opts.allow_below_minimum:
        return False
    previous = st.previous_count or 0
    if previous and not opts.allow_mass_removal:
        return max(previous - acc.unique, 0) <= previous * opts.max_removal_share
    return True


class _Stream:
    """A full replace of one destination sent while the plan still writes its list.

    The plan writes the new list (the snapshot file) in its final order, partition after
    partition. Once :func:`_guards_settled` holds, no guard can stop the run any more, so a
    sender thread runs :func:`_send` on that file while it grows: each chunk goes out as soon as
    its bytes are written, with the lease check and the journal record before it as always (the
    journal's ids file follows the growing file, see ``Journal.begin``). The last, partial chunk
    and the snapshot commit wait until the plan ended and its guards were checked
    (:meth:`finish`). Runs that can be stopped by the diff (incremental syncs, whose removal guard
    needs every removal counted), dry runs, fan-outs and values of varying length send after the
    plan as before.
    """

    def __init__(self, st: _DestState) -> None:
        self.st = st
        self.growing = GrowingFile()
        self.thread: threading.Thread | None = None
        self.error: BaseException | None = None

    @property
    def started(self) -> bool:
        return self.thread is not None

    def _eligible(self) -> bool:
        st = self.st
        journal = st.journal
        return (
            st.dest.sender is not None
            and st.dest.rule.profile.output_length is not None
            and st.snapshot_path is not None
            and (journal is None or is_local(journal.directory))
            and _guards_settled(st)
        )

    def poll(self, outs: dict[str, tuple[IO[str], IO[str], IO[str]]]) -> None:
        """After each planned partition: publish the written bytes; start sending once the guards settled."""
        if self.thread is None and not self._eligible():
            return
        snap_fh = outs[self.st.dest.name][2]
        snap_fh.flush()
        self.growing.publish(os.fstat(snap_fh.fileno()).st_size)
        if self.thread is None:
            self.thread = threading.Thread(target=self._run, name="contact-list-stream", daemon=True)
            self.thread.start()

    def _run(self) -> None:
        try:
            _send(self.st, self.growing)
        except BaseException as exc:
            self.error = exc

    def finish(self) -> None:
        """The plan ended and its guards passed: the list is complete."""
        if self.thread is not None:
            assert self.st.add_counter is not None and self.st.remove_counter is not None
            self.st.acc.chunks_total = self.st.add_counter.chunks + self.st.remove_counter.chunks
            assert self.st.snapshot_path is not None
            self.growing.finish(os.path.getsize(self.st.snapshot_path))

    def abort(self, error: BaseException) -> None:
        """The plan failed: the sender stops before its next chunk (its journal stays, as for any failed send)."""
        self.growing.abort(SyncCancelled(f"the plan failed while sending: {type(error).__name__}"))
        self.stop()

    def join(self) -> None:
        """Wait for the sender; raise what it raised."""
        assert self.thread is not None
        self.thread.join()
        if self.error is not None:
            raise self.error

    def stop(self) -> None:
        """Make sure the sender thread ended (it stops at its next chunk when the plan did not finish)."""
        if self.thread is not None and self.thread.is_alive():
            self.growing.abort(SyncCancelled("the sync stopped before its plan ended"))
            self.thread.join()


def _send(st: _DestState, growing: GrowingFile | None = None) -> None:
    """Send a destination's planned chunks, then store its snapshot and close its journal.

    :param growing: the plan is still writing the full replace's list (:class:`_Stream`): its
        chunks are sent as they are complete; the snapshot is stored only after the plan ended.
    """
    dest, acc = st.dest, st.acc
    sender = dest.sender
    assert sender is not None
    assert st.adds_path is not None and st.removes_path is not None and st.snapshot_path is not None
    assert st.add_counter is not None and st.remove_counter is not None
    st.status = "sending"
    total = st.add_counter.chunks + st.remove_counter.chunks
    if growing is None:
        acc.chunks_total = total  # else set by the plan when it ends
    progress = ProgressLogger(
        f"{dest.name} ({dest.rule.key})",
        total,
        acc.added + acc.removed,
        every_chunks=dest.options.progress_every_chunks,
        every_seconds=dest.options.progress_every_seconds,
    )
    journal, lease, store = st.journal, st.lease, dest.snapshot
    sent_lines = 0

    def before(chunk: Chunk) -> None:
        nonlocal sent_lines
        if lease is not None:
            lease.check()  # fencing: a run whose lease was lost sends nothing more
        sent_lines += len(chunk)
        if journal is not None:
            journal.attempting(sent_lines)

    def fence() -> None:
        _check_cancel(cancel)
        if lease is not None:
            lease.check()

    def done(chunk: Chunk, res: ChunkResult) -> None:
        if chunk.operation == REMOVE:
            acc.sent_remove += res.accepted
        else:
            acc.sent_add += res.accepted
        acc.vendor_rejected += res.rejected
        acc.vendor_unaccounted += max(len(chunk) - res.accepted - res.rejected, 0)
        acc.chunks_sent += 1
        if growing is not None and growing.finished and progress.total_chunks != acc.chunks_total:
            progress.total_chunks, progress.total_ids = acc.chunks_total, acc.added + acc.removed
        progress.update(len(chunk))
        if journal is not None:
            journal.acked(len(chunk))

    concurrency = dest.options.send_concurrency or sender.send_concurrency
    cancel = dest.options.cancel
    # A full replace sends the whole new list: that is the new snapshot file.
    whole_input = st.mode == FULL_REPLACE or (st.mode == ONE_WAY and dest.mode == "add")
    adds_path = st.snapshot_path if whole_input else st.adds_path
    _check_cancel(cancel)
    if st.mode != NOOP:
        _outwait_lost_holder(st, cancel)
    if store is not None and (not dest.keep_state or st.mode == ONE_WAY) and st.mode != NOOP:
        # What this run sends is not tracked: the next sync must not trust the old snapshot.
        if store.invalidate():
            st.notes.append("the snapshot was deleted (this send keeps no state); the next sync is a full replace")
        if journal is not None:
            journal.clear_stale()
        journal = st.journal = None
    if journal is not None and st.mode != NOOP:
        width = (dest.rule.profile.output_length or 0) + 1
        journal.begin(
            run=new_run_id(),
            owner=getattr(lease, "owner", ""),
            rule_key=dest.rule.key,
            kind=KIND_REPLACE if st.mode in (FULL_REPLACE, CLEAR) else KIND_DIFF,
            parts=[st.inherited_path] if growing is not None else [st.inherited_path, adds_path, st.removes_path],
            inherited=len(st.recovery.values) if st.recovery is not None else 0,
            token=getattr(lease, "token", None),
            growing=(adds_path, width) if growing is not None else None,
            snapshot_uncertain=st.recovery is not None and st.recovery.snapshot_uncertain,
            rule_fingerprint=dest.rule.fingerprint,
        )
    # The new snapshot is copied beside the old one while the chunks go out (once the plan ended).
    prep = (
        _SnapshotCopy(store, st.snapshot_path, growing)
        if store is not None and dest.keep_state and st.mode in (FULL_REPLACE, INCREMENTAL)
        else None
    )
    guarded = contextlib.ExitStack()
    guarded.enter_context(_lease_guards_sends(st))  # every attempt of a write, retries too, asks the lease
    try:
        if st.mode == CLEAR:
            if lease is not None:
                lease.check()
            if journal is not None:
                journal.clearing()
            sender.clear()
            acc.sent_remove = acc.removed
        elif st.mode in (FULL_REPLACE, INCREMENTAL, ONE_WAY):
            add_chunks = (
                iter_growing_chunks(adds_path, dest.rule, ADD, growing)
                if growing is not None
                else iter_chunks_from_file(adds_path, dest.rule, ADD, total=total, bounds=st.add_counter.file_chunks)
            )
            adds = _unless_cancelled(add_chunks, cancel, before)
            if st.mode == FULL_REPLACE:
                # The replace must land before any addition, or it would wipe them.
                if journal is not None:
                    journal.clearing()
                first = next(adds, None)
                if first is not None:
                    replace_chunk = dataclasses.replace(first, operation=REPLACE)
                    done(replace_chunk, sender.replace(replace_chunk))
                    # The additions depend on the replace: a replace request of unknown outcome
                    # could still land and wipe them, so wait until it cannot.
                    _settle(sender)
            _send_phase(sender, adds, concurrency, done, fence)
            # Removals after every addition: the list never dips below the new size.
            total = st.add_counter.chunks + st.remove_counter.chunks  # final: the additions are all sent
            removes = _unless_cancelled(
                iter_chunks_from_file(
                    st.removes_path,
                    dest.rule,
                    REMOVE,
                    first_index=st.add_counter.chunks + 1,
                    total=total,
                    bounds=st.remove_counter.file_chunks,
                ),
                cancel,
                before,
            )
            _send_phase(sender, removes, concurrency, done, fence)
        if st.mode != NOOP:
            _settle(sender)
            if lease is not None:
                lease.check()  # still ours: nobody else sent meanwhile, so the snapshot is true
        # Some identifiers may be missing when the vendor's answers account for fewer than were sent:
        # the snapshot then records this run's target with its journal left as a failed run's, so every
        # identifier it sent stays uncertain against that target and the next run, in any mode, sends
        # it again as that run's target says. (Against the old snapshot, a green remove would be undone
        # by the next add, and a green add by the next remove.) Without a journal nothing is recorded.
        partial = acc.vendor_unaccounted > 0
        if store is not None and dest.keep_state and st.mode not in (NOOP, ONE_WAY) and (journal or not partial):
            # Only now, with every chunk acknowledged, may the snapshot say these identifiers were sent.
            meta = st.snapshot_meta or {}
            full = st.mode in (FULL_REPLACE, CLEAR)
            same_rule = st.previous_rule == dest.rule.key
            last_full = time.time() if full else meta.get("full_replace_at") if same_rule else None
            store.commit(
                st.snapshot_path,
                rule=dest.rule,
                count=_count_lines(st.snapshot_path, dest.rule.profile.output_length),
                extra=_snapshot_extra(last_full, sender_remote_id(sender, dest.options)),
                prepared=prep.take() if prep is not None else None,
            )
        if partial:
            reason = f"the vendor's answers accounted for {acc.vendor_unaccounted} identifier(s) fewer than were sent"
            kept = "they stay uncertain" if journal is not None else "the snapshot was not advanced"
            st.notes.append(f"{reason}: {kept}; the next run sends them again")
            if journal is not None:
                journal.failed(reason)
            st.status = "partial"
            return
        if journal is not None:
            if st.mode == NOOP:
                journal.clear_stale()
            else:
                journal.finish()
    except BaseException as exc:
        if journal is not None:
            journal.failed(f"{type(exc).__name__}: {exc}")
        raise
    finally:
        guarded.close()
        if prep is not None:
            prep.discard()
    st.status = "sent"


def _snapshot_extra(last_full: float | None, remote_id: str | None) -> dict[str, Any] | None:
    """The snapshot header's fields besides the rule and count: last full replace, remote list id."""
    extra: dict[str, Any] = {}
    if last_full is not None:
        extra["full_replace_at"] = last_full
    if remote_id is not None:
        extra["remote_id"] = remote_id
    return extra or None


class _SnapshotCopy:
    """:meth:`SnapshotStore.prepare` in a thread, once the plan has written the whole list.

    The copy (tens of MB for a million digests) runs in the kernel while the last chunks are
    sent; :meth:`take` waits for it, :meth:`discard` drops it when the run does not commit.
    """

    def __init__(self, store: SnapshotStore, path: Path, growing: GrowingFile | None) -> None:
        self._lock = threading.Lock()
        self._result: PreparedSnapshot | None = None
        self._dropped = False
        self._thread = threading.Thread(
            target=self._run, args=(store, path, growing), name="contact-list-snapshot", daemon=True
        )
        self._thread.start()

    def _run(self, store: SnapshotStore, path: Path, growing: GrowingFile | None) -> None:
        try:
            if growing is not None:
                growing.wait_for(sys.maxsize)  # returns once the plan finished the list, raises if it failed
            prepared = store.prepare(path)
        except BaseException as exc:  # the commit copies the list itself
            log.debug("The snapshot was not copied ahead of the commit: %s", exc)
            return
        with self._lock:
            if self._dropped:
                if prepared is not None:
                    prepared.discard()
                return
            self._result = prepared

    def take(self) -> PreparedSnapshot | None:
        """The copy, once made (None if it could not be)."""
        self._thread.join()
        with self._lock:
            result, self._result = self._result, None
        return result

    def discard(self) -> None:
        """Drop the copy, now or when it is made."""
        with self._lock:
            self._dropped = True
            result, self._result = self._result, None
        if result is not None:
            result.discard()


def _count_lines(path: Path, width: int | None = None) -> int:
    """Lines of a work file; from its size alone when every value has ``width`` characters."""
    if width is not None:
        size = os.path.getsize(path)
        if size % (width + 1) == 0:
            return size // (width + 1)
    with open(path, "rb") as fh:
        return sum(block.count(b"\n") for block in iter(lambda: fh.read(1 << 20), b""))
