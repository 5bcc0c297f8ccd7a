"""The journal of a destination: what a run is about to send, so a run that did not finish is repaired.

Before the first chunk a run writes, beside the snapshot on the same storage:

* ``journal-ids-<run>.txt``: every identifier this run may touch, in send order (the uncertain
  identifiers it inherited from an unfinished run first, then its additions, then its removals);
* ``journal.json``: ``{"format", "run", "rule", "kind", "inherited", "attempted", "acked", ...}``.

Before each chunk ``attempted`` moves to the end of that chunk's lines; after the vendor
acknowledged it, ``acked`` follows (one small write per chunk). When the run completes, the
snapshot is written first and the journal removed after; a failed run leaves its journal
(``state: "failed"``), a killed one leaves it as it was.

On local storage ``journal.json`` is created by a rename and then rewritten in place: each record
is one ``pwrite`` at offset 0 of at most one page, padded with spaces to the file's size (JSON
ignores them), so a killed process leaves the old record or the new one, never a mix. No file is
created or renamed per chunk: those wait behind a concurrent ``fsync`` on ext4 (the snapshot's),
a write in place does not.

**Durability on local storage.** A killed process loses nothing written (the page cache
survives it); a host crash or power loss loses what was not synced, so everything recovery reads
is on disk before the request it guards is sent: the ids file's bytes (``fdatasync`` at
:meth:`Journal.begin`, and of each growing part's new lines before the record counting them),
``journal.json`` when it is created (``fdatasync``, rename, then an ``fsync`` of the directory,
which also makes the ids file's name durable), and each ``attempting``/``clearing`` record (one
``fdatasync`` in place: the file's size rarely changes, so this is one page's data flush, not a
metadata commit). Between the syncs of a growing ids file, the lines the engine appended are
handed to writeback (Linux ``sync_file_range``, not a durability step), so the next sync finds them
written. ``acked`` and ``failed`` records are informational and not synced: a crash can only
make the next run re-send a chunk that had landed. At completion the snapshot is fsynced and
renamed, then the directory is fsynced before the journal is removed: a crash leaves the old
snapshot with its journal, or the new snapshot with or without it, never the old snapshot alone.
Object storage needs none of this (each upload is durable when it returns).

A run that finds a journal treats as **uncertain** the first ``inherited + attempted`` lines of
the ids file, and, when that run was a full replace whose clear may have landed (``kind:
"replace"``) or had itself inherited such a snapshot (``snapshot_uncertain``), every identifier
of the snapshot too. Both carry over from one unfinished run to the next until a run completes.
It then plans against "last confirmed state + uncertain set": uncertain identifiers that belong
in the list are (re)added, the others are (re)removed, so the vendor equals the new target
whatever the interrupted runs had applied.

Unusable journals: a corrupt one, one whose ids file is missing or holds fewer well-formed lines
than ``inherited + attempted`` (complete lines, no NUL byte, digests of the rule's length: a crash
the file system did not keep the synced bytes through, zeros left by one, a hand edit), or one
made with another rule make the run a full replace (logged with the reason); one written by a
newer provider version is refused with instructions.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from airflow_audience_provider.identifiers.state import (
    StateFileError,
    delete,
    dump_json,
    is_local,
    read_json,
    sync_data,
    sync_directory,
    write_atomic,
    write_back,
)

log = logging.getLogger(__name__)

JOURNAL_FORMAT = 1
JOURNAL_FILE = "journal.json"
KIND_DIFF = "diff"
KIND_REPLACE = "replace"


@dataclass
class Recovery:
    """What an unfinished run left: the uncertain identifiers, or why they cannot be known.

    :param values: the uncertain identifiers (held in memory: the chunks the unfinished runs attempted).
    :param snapshot_uncertain: the interrupted run, or one it inherited from, was a full replace
        that may have cleared the list: every identifier of the snapshot is uncertain too.
    :param unusable: why the journal cannot be used (the run becomes a full replace), or None.
    :param previous: the journal's metadata (for the result and logs).
    """

    values: set[str] = field(default_factory=set)
    snapshot_uncertain: bool = False
    unusable: str | None = None
    previous: dict[str, Any] = field(default_factory=dict)


class Journal:
    """The journal of one destination.

    :param directory: the destination's state directory (``Path`` or ``ObjectStoragePath``).
    """

    def __init__(self, directory: Any) -> None:
        self.directory = directory
        self.meta: dict[str, Any] | None = None
        self._ids_name: str | None = None
        self._growing: _GrowingPart | None = None
        self._ids_sync: _SyncedFile | None = None
        self._ids_base = 0
        self._growing_width_value: int | None = None
        self._record: _InPlaceRecord | None = None

    @property
    def location(self) -> Any:
        return self.directory / JOURNAL_FILE

    # -- reading what a previous run left ---------------------------------------------------

    def recover(
        self, rule_key: str, output_length: int | None = None, rule_fingerprint: str | None = None
    ) -> Recovery | None:
        """Read an unfinished run's journal; None when there is none.

        :param output_length: the fixed length of the rule's values (hex digests), None when they vary;
            an ids file whose counted lines are not all such values is unusable.
        :param rule_fingerprint: the rule's settings fingerprint; a journal that records another one
            (the rule re-registered under the same version) is unusable.
        :raises StateFileError: written by a newer provider version (refused: upgrade first).
        """
        fix = "delete it to make the next run a full replace"
        try:
            meta = read_json(self.location, what="journal", fmt=JOURNAL_FORMAT, fix=fix)
        except StateFileError as exc:
            if "newer version" in str(exc):
                raise
            return Recovery(unusable=str(exc))
        if meta is None:
            return None
        previous = {k: meta.get(k) for k in ("run", "kind", "state", "attempted", "acked", "started_at", "owner")}
        if meta.get("rule") != rule_key:
            return Recovery(
                unusable=f"the unfinished run's journal was made with rule {meta.get('rule')!r}, this run uses "
                f"{rule_key!r}; its identifiers are not comparable",
                previous=previous,
            )
        recorded = meta.get("rule_fingerprint")
        if rule_fingerprint is not None and recorded is not None and recorded != rule_fingerprint:
            return Recovery(
                unusable=f"the unfinished run's journal was made with other settings of rule {rule_key!r} "
                f"(fingerprint {recorded}, now {rule_fingerprint}); its identifiers are not comparable",
                previous=previous,
            )
        try:
            limit = int(meta.get("inherited", 0)) + int(meta.get("attempted", 0))
            name = str(meta["ids_file"])
        except (KeyError, TypeError, ValueError):
            return Recovery(unusable=f"the journal {self.location} misses fields", previous=previous)
        # A run that itself inherited an uncertain snapshot and failed leaves it uncertain.
        snapshot_uncertain = bool(meta.get("snapshot_uncertain")) or (
            meta.get("kind") == KIND_REPLACE and bool(meta.get("clear_attempted") or int(meta.get("attempted", 0)) > 0)
        )
        values: set[str] = set()
        if limit > 0:
            src = self.directory / name
            try:
                fh = open(src, "rb") if is_local(src) else src.open("rb")  # noqa: SIM115 - closed below
            except FileNotFoundError:
                return Recovery(unusable=f"the journal's identifier file {src} is missing", previous=previous)
            with fh:
                problem = _read_ids(fh, limit, output_length, values)
            if problem is not None:
                # Fewer or malformed lines (a host crash the file system did not keep the synced bytes
                # through, zeros left by one, a hand edit): some uncertain identifiers are unknown.
                return Recovery(unusable=f"the journal's identifier file {src} {problem}", previous=previous)
        return Recovery(values=values, snapshot_uncertain=snapshot_uncertain, previous=previous)

    # -- writing this run's journal ---------------------------------------------------------

    def begin(
        self,
        *,
        run: str,
        owner: str,
        rule_key: str,
        kind: str,
        parts: list[Path | None],
        inherited: int,
        token: int | None,
        growing: tuple[Path, int] | None = None,
        snapshot_uncertain: bool = False,
        rule_fingerprint: str | None = None,
    ) -> None:
        """Store the identifiers this run may touch (``parts`` concatenated) and open the journal.

        :param growing: ``(path, line width)`` of a last part the engine is still writing (a full
            replace that sends while it plans; local state only). Its lines reach the ids file
            before :meth:`attempting` counts them: the ids file is a hard link of it when it is the
            only part, else its new bytes are appended before each ``attempting``.
        :param snapshot_uncertain: the run inherited a snapshot whose every identifier is uncertain (an
            unfinished full replace may have cleared it); the journal keeps saying so until a run completes.
        :param rule_fingerprint: the rule's settings fingerprint (see ``VendorRule.fingerprint``).
        """
        old = self._read_quietly()
        self._ids_name = f"journal-ids-{run}.txt"
        target = self.directory / self._ids_name
        self._growing = None
        self._close()
        if growing is not None and not is_local(target):
            raise ValueError("a journal can follow a growing file on local storage only")
        self._growing_width_value = growing[1] if growing is not None else None
        if is_local(target):
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f".{target.name}.tmp")
            if growing is not None:
                if any(_present(p) for p in parts) or not _link_single([growing[0]], tmp):
                    with open(tmp, "wb") as out:
                        _concat(parts, out)
                    self._growing = _GrowingPart(growing[0], growing[1], inherited, target)
                    self._ids_base = tmp.stat().st_size
                else:
                    self._ids_base = 0
            elif not _link_single(parts, tmp):
                with open(tmp, "wb") as out:
                    _concat(parts, out)
            os.replace(tmp, target)
            # Its bytes reach the disk before the journal points at them; its name with the journal's (below).
            self._ids_sync = _SyncedFile(target)
            if growing is None:  # complete: nothing more to sync
                self._ids_sync.close()
                self._ids_sync = None
        else:
            with target.open("wb") as out:
                _concat(parts, out)
        self.meta = {
            "format": JOURNAL_FORMAT,
            "run": run,
            "owner": owner,
            "rule": rule_key,
            "rule_fingerprint": rule_fingerprint,
            "kind": kind,
            "ids_file": self._ids_name,
            "inherited": inherited,
            "attempted": 0,
            "acked": 0,
            "state": "sending",
            "lease_token": token,
            "started_at": time.time(),
        }
        if snapshot_uncertain:
            self.meta["snapshot_uncertain"] = True
        self._write(sync=True)  # a new file: its data, then its name and the ids file's (one directory sync)
        if old is not None and old.get("ids_file") and old.get("ids_file") != self._ids_name:
            delete(self.directory / str(old["ids_file"]))

    def _growing_width(self) -> int:
        assert self._growing_width_value is not None
        return self._growing_width_value

    def _read_quietly(self) -> dict[str, Any] | None:
        try:
            return read_json(self.location, what="journal", fmt=JOURNAL_FORMAT, fix="")
        except StateFileError:
            return None

    def _write(self, *, sync: bool = False) -> None:
        """Store the record; ``sync``: on disk before returning (a record recovery relies on).

        A new local file is always synced with its directory entry; object storage is durable per upload.
        """
        assert self.meta is not None
        self.meta["updated_at"] = time.time()
        data = dump_json(self.meta)
        if self._record is not None and self._record.write(data):
            if sync:
                sync_data(self._record.fd)
            return
        if self._record is not None:
            self._record.close()
            self._record = None
        location = self.location
        if is_local(location) and hasattr(os, "pwrite"):
            self._record = _InPlaceRecord.create(location, data)
        else:
            write_atomic(location, data)

    def _close(self) -> None:
        if self._record is not None:
            self._record.close()
            self._record = None
        if self._ids_sync is not None:
            self._ids_sync.close()
            self._ids_sync = None

    def attempting(self, lines_through: int) -> None:
        """Before a chunk: the identifiers up to line ``lines_through`` (of this run's part) may change."""
        if self.meta is not None and lines_through > self.meta["attempted"]:
            if self._growing is not None:
                self._growing.copy_through(lines_through)
            if self._ids_sync is not None:  # a growing ids file: its lines are on disk before the record counts them
                self._ids_sync.sync_through(self._ids_base + lines_through * self._growing_width())
            self.meta["attempted"] = lines_through
            self._write(sync=True)

    def clearing(self) -> None:
        """Before a clear (or a replace): every identifier of the snapshot becomes uncertain."""
        if self.meta is not None and not self.meta.get("clear_attempted"):
            self.meta["clear_attempted"] = True
            self._write(sync=True)

    def acked(self, lines: int) -> None:
        """After a chunk: ``lines`` more identifiers were acknowledged (informational: not synced)."""
        if self.meta is not None:
            self.meta["acked"] += lines
            self._write()

    def failed(self, reason: str) -> None:
        """The run stops with its journal in place: the next run repairs what it may have applied."""
        if self.meta is not None:
            self.meta["state"] = "failed"
            self.meta["error"] = reason[:300]
            try:
                self._write()
            except Exception as exc:
                log.warning("Could not mark the journal %s failed: %s", self.location, exc)
        self._close()

    def finish(self) -> None:
        """The run completed and its snapshot is stored: remove the journal."""
        ids = self._ids_name or (self.meta or {}).get("ids_file")
        self._close()
        if is_local(self.location):
            # The snapshot's rename is on disk before the journal's removal can be: else a host crash
            # could keep the removal and lose the rename, and the next run would trust the old snapshot.
            sync_directory(self.directory)
        delete(self.location)
        if ids:
            delete(self.directory / str(ids))
        self.meta = None

    def clear_stale(self) -> None:
        """Remove a journal this run has made redundant (e.g. it completed a full replace)."""
        old = self._read_quietly()
        self._close()
        delete(self.location)
        if old is not None and old.get("ids_file"):
            delete(self.directory / str(old["ids_file"]))


class _InPlaceRecord:
    """A local journal file whose record is replaced by one write at offset 0 (see the module docstring).

    A write of at most one page at offset 0 is never torn by a kill (the kernel copies a page at a
    time and checks for a fatal signal only between pages). Records longer than that, or a
    failed write, make :meth:`write` return False: the caller then renames a new file in.
    """

    #: The largest record written in place: one page (a kill cannot split it).
    limit = min(4096, os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096)

    def __init__(self, fd: int, size: int) -> None:
        self.fd = fd
        self.size = size

    @classmethod
    def create(cls, location: Path, data: bytes) -> _InPlaceRecord:
        """Write ``data`` to a new file renamed over ``location``; keep it open for records in place."""
        location.parent.mkdir(parents=True, exist_ok=True)
        tmp = location.with_name(f".{location.name}.{uuid.uuid4().hex[:8]}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            sync_data(fd)
            os.replace(tmp, location)
            sync_directory(location.parent)
        except BaseException:
            os.close(fd)
            tmp.unlink(missing_ok=True)
            raise
        return cls(fd, len(data))

    def write(self, data: bytes) -> bool:
        """Replace the record with ``data`` in place; False when it must be written by a rename."""
        if len(data) > self.limit or self.size > self.limit:
            return False
        padded = data.ljust(self.size, b" ")  # never shorter than the file: no truncate, no stale tail
        try:
            written = os.pwrite(self.fd, padded, 0)
        except OSError:
            return False
        if written != len(padded):
            return False
        self.size = len(padded)
        return True

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.fd)


class _SyncedFile:
    """The journal's ids file, synced to disk once at :meth:`Journal.begin` and then as it grows.

    Between syncs, the bytes the engine appended meanwhile are handed to writeback (not a durability
    step), so the next sync finds them written instead of flushing tens of MB at once.
    """

    def __init__(self, path: Path) -> None:
        self.fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        self.synced = 0
        self.written_back = 0
        self.sync_through(1)

    def sync_through(self, size: int) -> None:
        """Make the file's first ``size`` bytes durable (one ``fdatasync`` unless an earlier one covered them)."""
        present = os.fstat(self.fd).st_size
        if size <= self.synced:
            if present > self.written_back:
                write_back(self.fd, self.written_back, present - self.written_back)
                self.written_back = present
            return
        sync_data(self.fd)
        self.synced = present
        self.written_back = max(self.written_back, present)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.fd)


class _GrowingPart:
    """Appends a growing work file's new bytes to the journal's ids file (copied, not linked)."""

    def __init__(self, source: Path, width: int, inherited: int, ids_file: Path) -> None:
        self.source = source
        self.width = width
        self.inherited = inherited
        self.ids_file = ids_file
        self.copied = 0

    def copy_through(self, lines: int) -> None:
        """Make the ids file hold this run's first ``lines`` lines (after the inherited ones)."""
        needed = lines * self.width
        if needed <= self.copied:
            return
        with open(self.source, "rb") as src, open(self.ids_file, "ab") as out:
            src.seek(self.copied)
            data = src.read(needed - self.copied)
            out.write(data)
        self.copied += len(data)
        if self.copied < needed:
            raise OSError(f"work file {self.source} holds fewer lines than the journal must record")


def _read_ids(fh: IO[bytes], limit: int, width: int | None, values: set[str]) -> str | None:
    """Add the first ``limit`` lines of an ids file to ``values``; what is wrong with them, or None.

    Every counted line must be complete (newline-terminated), not blank, without NUL bytes, and, for
    values of a fixed ``width`` (hex digests), exactly that many hex digits.
    """
    if width is not None:
        data = fh.read(limit * (width + 1))
        lines = data.count(b"\n")
        if len(data) < limit * (width + 1) or lines < limit:
            return f"holds fewer identifiers than the {limit} the journal counts"
        digits = data.replace(b"\n", b"")
        try:
            ok = len(digits) == limit * width and data[width :: width + 1] == b"\n" * limit
            ok = ok and len(bytes.fromhex(digits.decode("ascii"))) * 2 == len(digits)
        except (UnicodeDecodeError, ValueError):
            ok = False
        if not ok:
            return f"holds lines that are not {width}-digit hex values"
        values.update(data.decode("ascii").split("\n")[:-1])
        return None
    count = 0
    for line in fh:
        if count >= limit:
            break
        if not line.endswith(b"\n") or len(line) < 2 or b"\0" in line:
            return f"holds fewer complete identifiers than the {limit} the journal counts"
        values.add(line[:-1].decode("utf-8", "surrogatepass"))
        count += 1
    if count < limit:
        return f"holds fewer identifiers than the {limit} the journal counts"
    return None


def _present(part: Path | None) -> bool:
    return part is not None and part.exists() and part.stat().st_size > 0


def _link_single(parts: list[Path | None], target: Path) -> bool:
    """Hard-link ``target`` to the only non-empty part, instead of copying it; False where that is not possible.

    A full replace journals the whole new list (tens of MB): the engine's work file is complete
    and never written again, so a second name for it holds the same bytes as a copy, at no cost.
    Fails (and the caller copies) when the parts are on another file system than the journal.
    """
    present = [p for p in parts if p is not None and p.exists() and p.stat().st_size > 0]
    if len(present) != 1:
        return False
    target.unlink(missing_ok=True)
    try:
        os.link(present[0], target)
    except OSError:
        return False
    return True


def _concat(parts: list[Path | None], out: IO[bytes]) -> None:
    for part in parts:
        if part is not None and part.exists():
            with open(part, "rb") as src:
                shutil.copyfileobj(src, out, 1 << 20)


def new_run_id() -> str:
    """A run id: the UTC time to the second and 8 random hex digits (``20261208T023000-1a2b3c4d``)."""
    return f"{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{uuid.uuid4().hex[:8]}"


__all__ = ["Journal", "Recovery", "new_run_id"]
