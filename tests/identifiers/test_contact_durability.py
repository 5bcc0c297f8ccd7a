"""What recovery reads is on disk (fsynced) before the request it guards is sent, not only in the page cache.

A spy wraps the real ``os.fdatasync``/``os.fsync`` and records, per call, what that call made
durable (the file's bytes by inode, or a directory's names); the sender checks, before applying
each request, that the journal and the ids file recovery would read are all among them.
"""

from __future__ import annotations

import json
import os
import stat
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from contact_helpers import emails, normalised_emails, sha

from airflow_audience_provider.identifiers import SyncOptions, get_rule, sync_contact_list
from airflow_audience_provider.identifiers.chunking import Chunk
from airflow_audience_provider.identifiers.errors import SendError
from airflow_audience_provider.identifiers.snapshot import SnapshotStore
from airflow_audience_provider.identifiers.sync import ChunkResult
from airflow_audience_provider.identifiers.testing import RecordingSender

RULE = get_rule("criteo", "email").with_options(max_ids_per_chunk=10)


class DiskSpy:
    """Records, in call order, what each real fsync/fdatasync made durable."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.lock = threading.Lock()
        self.events: list[tuple[str, Any]] = []
        self.durable_bytes: dict[int, bytes] = {}  # inode -> its bytes at its last sync
        self.durable_names: dict[Path, dict[str, int]] = {}  # directory -> name -> inode at its last sync
        real_fdatasync, real_fsync = os.fdatasync, os.fsync

        def spy(real: Any) -> Any:
            def synced(fd: int) -> None:
                real(fd)
                st = os.fstat(fd)
                path = Path(os.readlink(f"/proc/self/fd/{fd}"))
                with self.lock:
                    if stat.S_ISDIR(st.st_mode):
                        self.durable_names[path] = {p.name: p.stat().st_ino for p in path.iterdir() if p.is_file()}
                        self.events.append(("dir", path))
                    else:
                        with open(f"/proc/self/fd/{fd}", "rb") as fh:
                            self.durable_bytes[st.st_ino] = fh.read()
                        self.events.append(("file", path.name))

            return synced

        monkeypatch.setattr(os, "fdatasync", spy(real_fdatasync))
        monkeypatch.setattr(os, "fsync", spy(real_fsync))

    def recoverable(self, state: Path) -> set[str]:
        """The identifiers a run after a host crash now would treat as attempted, from durable data only."""
        with self.lock:
            names = self.durable_names.get(state, {})
            journal = state / "journal.json"
            assert names.get("journal.json") == journal.stat().st_ino, "the journal's name is not durable"
            meta = json.loads(self.durable_bytes[journal.stat().st_ino])
            ids_path = state / meta["ids_file"]
            assert names.get(meta["ids_file"]) == ids_path.stat().st_ino, "the ids file's name is not durable"
            lines = self.durable_bytes.get(ids_path.stat().st_ino, b"").decode().split("\n")
            limit = meta["inherited"] + meta["attempted"]
            assert len(lines) > limit or (len(lines) == limit and lines[-1]), "ids file bytes not durable"
            return set(lines[:limit])


@dataclass
class DurabilityCheckingSender(RecordingSender):
    """Before applying a chunk: it is among what recovery would read from durable data."""

    spy: DiskSpy | None = None
    state: Path | None = None
    checked: int = 0
    order: list[str] = field(default_factory=list)

    def _durable(self, chunk: Chunk) -> None:
        assert self.spy is not None and self.state is not None
        assert set(chunk.identifiers) <= self.spy.recoverable(self.state), "sent before its record was durable"
        with self.spy.lock:
            self.spy.events.append(("send", chunk.operation))
            self.checked += 1

    def add(self, chunk: Chunk) -> ChunkResult:
        self._durable(chunk)
        return super().add(chunk)

    def remove(self, chunk: Chunk) -> ChunkResult:
        self._durable(chunk)
        return super().remove(chunk)

    def replace(self, chunk: Chunk) -> ChunkResult:
        self._durable(chunk)
        return super().replace(chunk)


def run(values: list[str], sender: Any, base: Path, mode: str = "sync", **opts: Any) -> dict[str, Any]:
    options = SyncOptions(allow_mass_removal=True, lease_timeout=0, **opts)
    return sync_contact_list(
        values, RULE, sender, destination_key="seg", snapshot_base=base, mode=mode, options=options
    )


@pytest.mark.parametrize("concurrency", [1, 2])
def test_every_attempting_record_is_synced_before_its_request(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, concurrency: int
) -> None:
    spy = DiskSpy(monkeypatch)
    state = SnapshotStore(RULE.vendor, "seg", tmp_path).directory
    vendor: set[str] = set()
    # A streamed full replace (the ids file links the growing list) that fails after three requests.
    first = DurabilityCheckingSender(members=vendor, fail_on_call=4, spy=spy, state=state)
    with pytest.raises(SendError):
        run(emails(500), first, tmp_path, send_concurrency=concurrency)
    # A streamed replace that inherits the uncertain lines (the ids file copies the growing list after them).
    second = DurabilityCheckingSender(members=first.members, fail_on_call=5, spy=spy, state=state)
    with pytest.raises(SendError):
        run(emails(400, start=300), second, tmp_path, mode="replace", send_concurrency=concurrency)
    # An incremental sync with additions and removals (the ids file is complete at its start); it completes.
    third = DurabilityCheckingSender(members=second.members, spy=spy, state=state)
    result = run(emails(450, start=100), third, tmp_path, send_concurrency=concurrency)
    assert result["status"] == "sent" and result["mode"] == "full_replace"
    assert third.members == {sha(v) for v in normalised_emails(450, 100)}
    fourth = DurabilityCheckingSender(members=third.members, spy=spy, state=state)
    result = run(emails(440, start=120), fourth, tmp_path, send_concurrency=concurrency)
    assert result["mode"] == "incremental" and {"add", "remove"} <= set(fourth.operations)
    assert fourth.members == {sha(v) for v in normalised_emails(440, 120)}
    assert min(first.checked, second.checked, third.checked, fourth.checked) >= 3
    # Each request has its own sync of the journal's record before it (the "acked" records are not synced).
    records = sends = 0
    for kind, what in spy.events:
        if kind == "file" and str(what).lstrip(".").startswith("journal.json"):
            records += 1
        elif kind == "send":
            sends += 1
            assert records >= sends


def test_the_snapshot_rename_is_durable_before_the_journal_is_removed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run(emails(100), RecordingSender(), tmp_path)
    spy = DiskSpy(monkeypatch)
    state = SnapshotStore(RULE.vendor, "seg", tmp_path).directory
    real_unlink = os.unlink
    seen: dict[str, Any] = {}

    def unlink(path: Any, *args: Any, **kwargs: Any) -> None:
        if Path(path).name == "journal.json":
            with spy.lock:
                seen["names"] = dict(spy.durable_names.get(state, {}))
        real_unlink(path, *args, **kwargs)

    monkeypatch.setattr(os, "unlink", unlink)
    run(emails(110), RecordingSender(), tmp_path)
    snapshot = state / SnapshotStore.FILE_NAME
    assert seen["names"].get(SnapshotStore.FILE_NAME) == snapshot.stat().st_ino
    assert not (state / "journal.json").exists()


def test_a_stateless_send_syncs_the_snapshot_away_before_it_sends(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run(emails(30), RecordingSender(), tmp_path)
    spy = DiskSpy(monkeypatch)
    state = SnapshotStore(RULE.vendor, "seg", tmp_path).directory
    seen: list[bool] = []

    class Checking(RecordingSender):
        def replace(self, chunk: Chunk) -> ChunkResult:
            with spy.lock:
                seen.append(SnapshotStore.FILE_NAME not in spy.durable_names.get(state, {SnapshotStore.FILE_NAME: 0}))
            return super().replace(chunk)

    options = SyncOptions(lease_timeout=0)
    sync_contact_list(
        emails(5, start=100), RULE, Checking(), destination_key="seg", snapshot_base=tmp_path, incremental=False,
        options=options,
    )  # fmt: skip
    assert seen == [True]


def test_a_file_system_that_cannot_sync_a_directory_is_skipped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import errno

    real_fsync = os.fsync

    def no_directory_sync(fd: int) -> None:
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "Invalid argument")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", no_directory_sync)
    vendor = RecordingSender()
    assert run(emails(30), vendor, tmp_path)["status"] == "sent"
    assert vendor.members == {sha(v) for v in normalised_emails(30, 0)}


def test_a_platform_without_fdatasync_syncs_files_with_fsync(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # macOS has no fdatasync: the journal's records and ids file are then synced with fsync.
    monkeypatch.delattr(os, "fdatasync")
    real_fsync = os.fsync
    files: list[int] = []

    def fsync(fd: int) -> None:
        if stat.S_ISREG(os.fstat(fd).st_mode):
            files.append(fd)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    sender = RecordingSender()
    run(emails(100), sender, tmp_path)
    assert sender.calls
    assert len(files) >= 2  # at least the new journal and its one record before the request
