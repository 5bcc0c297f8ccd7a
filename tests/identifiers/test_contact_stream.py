"""A full replace of one destination is sent while the plan still writes it; the journal keeps up."""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from contact_helpers import emails, normalised_emails, sha

from airflow_audience_provider.identifiers import SyncOptions, fanout, get_rule, sorting, sync_contact_list
from airflow_audience_provider.identifiers.chunking import Chunk
from airflow_audience_provider.identifiers.errors import RemovalGuardError, SendError
from airflow_audience_provider.identifiers.lease import LeaseLostError
from airflow_audience_provider.identifiers.snapshot import SnapshotStore
from airflow_audience_provider.identifiers.sync import ChunkResult
from airflow_audience_provider.identifiers.testing import RecordingSender

RULE = get_rule("criteo", "email").with_options(max_ids_per_chunk=10)


def hashes(n: int, start: int = 0) -> set[str]:
    return {sha(v) for v in normalised_emails(n, start)}


@dataclass
class JournalCheckingSender(RecordingSender):
    """Before applying a chunk, reads the journal from disk, as a run after a crash would.

    Every identifier of the chunk must be among the lines the journal marks as attempted.
    """

    state_dir: Path | None = None
    checked: int = 0
    threads: list[str] = field(default_factory=list)

    def _journaled(self, chunk: Chunk) -> None:
        assert self.state_dir is not None
        meta = json.loads((self.state_dir / "journal.json").read_text())
        ids = (self.state_dir / meta["ids_file"]).read_text().split("\n")
        attempted = set(ids[: meta["inherited"] + meta["attempted"]])
        assert set(chunk.identifiers) <= attempted, "a chunk was sent before the journal recorded it"
        self.checked += 1
        self.threads.append(threading.current_thread().name)

    def add(self, chunk: Chunk) -> ChunkResult:
        self._journaled(chunk)
        return super().add(chunk)

    def replace(self, chunk: Chunk) -> ChunkResult:
        self._journaled(chunk)
        return super().replace(chunk)


def run(values: list[str], sender: Any, base: Path, mode: str = "sync", **opts: Any) -> dict[str, Any]:
    options = SyncOptions(allow_mass_removal=True, lease_timeout=0, **opts)
    return sync_contact_list(
        values, RULE, sender, destination_key="seg", snapshot_base=base, mode=mode, options=options
    )


def test_the_first_chunk_is_sent_before_the_plan_ends(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first_sent = threading.Event()
    seen = {}
    plan_partition = fanout._diff_in_memory
    plan_block = fanout._plan_block_columnar  # the plan with the fast extra: blocks of partitions

    def last_partition_waits(key: str, *args: Any) -> None:
        if key == "ff":  # the plan cannot end before the sender got its first chunk
            seen["sent_during_plan"] = first_sent.wait(10)
        plan_partition(key, *args)

    def last_block_waits(keys: tuple[str, ...], *args: Any) -> None:
        if "ff" in keys:
            seen["sent_during_plan"] = first_sent.wait(10)
        plan_block(keys, *args)

    monkeypatch.setattr(fanout, "_diff_in_memory", last_partition_waits)
    monkeypatch.setattr(fanout, "_plan_block_columnar", last_block_waits)
    monkeypatch.setattr(sorting, "COLUMNAR_BLOCK_ROWS", 100)  # several blocks of 2,000 values, as of 1M
    sender = RecordingSender(before_call=lambda op: first_sent.set())
    result = run(emails(2000), sender, tmp_path)
    assert seen == {"sent_during_plan": True}
    assert result["status"] == "sent" and result["mode"] == "full_replace"
    assert sender.members == hashes(2000) and sender.operations[0] == "replace"
    assert sum(sender.chunk_sizes) == 2000 and result["counts"]["chunks_total"] == 200
    assert set(SnapshotStore(RULE.vendor, "seg", tmp_path).read_values()) == hashes(2000)


def test_every_streamed_chunk_is_journaled_before_it_is_sent_and_failed_runs_converge(tmp_path: Path) -> None:
    state = SnapshotStore(RULE.vendor, "seg", tmp_path).directory
    vendor: set[str] = set()
    # Run 1 fails after two chunks; its journal links the growing list.
    first = JournalCheckingSender(members=vendor, fail_on_call=3, state_dir=state)
    with pytest.raises(SendError):
        run(emails(500), first, tmp_path)
    assert first.checked == 3 and "contact-list-stream" in first.threads
    # Run 2 inherits run 1's uncertain identifiers, so its journal copies the growing list after them.
    second = JournalCheckingSender(members=first.members, fail_on_call=6, state_dir=state)
    with pytest.raises(SendError):
        run(emails(400, start=300), second, tmp_path, mode="replace")
    assert second.checked == 6 and "contact-list-stream" in second.threads
    meta = json.loads((state / "journal.json").read_text())
    assert meta["inherited"] > 0 and meta["state"] == "failed"
    # Run 3 completes: the list is exactly its input, and so is the snapshot.
    third = JournalCheckingSender(members=second.members, state_dir=state)
    result = run(emails(450, start=100), third, tmp_path)
    assert result["status"] == "sent"
    assert third.members == hashes(450, start=100)
    assert set(SnapshotStore(RULE.vendor, "seg", tmp_path).read_values()) == hashes(450, start=100)
    assert not (state / "journal.json").exists()


def test_a_guard_that_blocks_the_full_replace_stops_it_before_any_chunk(tmp_path: Path) -> None:
    sender = RecordingSender()
    run(emails(100), sender, tmp_path)
    calls = len(sender.calls)
    bumped = RULE.with_options(version="2")  # another rule version: a full replace, guarded by size
    options = SyncOptions(lease_timeout=0)
    with pytest.raises(RemovalGuardError):
        sync_contact_list(emails(79), bumped, sender, destination_key="seg", snapshot_base=tmp_path, options=options)
    assert len(sender.calls) == calls
    result = sync_contact_list(
        emails(80), bumped, sender, destination_key="seg", snapshot_base=tmp_path, options=options
    )
    assert result["mode"] == "full_replace" and sender.members == hashes(80)


@pytest.mark.parametrize("kernel_copy", ["available", "refused", "missing"])
def test_a_snapshot_commit_stores_the_whole_list_whichever_way_it_copies(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kernel_copy: str
) -> None:
    import os

    if kernel_copy == "refused":

        def refuse(*args: Any) -> int:
            raise OSError(18, "Invalid cross-device link")

        monkeypatch.setattr(os, "copy_file_range", refuse, raising=False)
    elif kernel_copy == "missing":
        monkeypatch.delattr(os, "copy_file_range", raising=False)
    values = sorted(hashes(3000))
    data = tmp_path / "work.txt"
    data.write_text("".join(f"{v}\n" for v in values))
    store = SnapshotStore(RULE.vendor, "seg", tmp_path / "state")
    store.commit(data, rule=RULE, count=len(values))
    assert store.read_values() == values and store.read_header()["count"] == 3000


def _chunks(n: int) -> list[Chunk]:
    return [Chunk(operation="add", index=i, total=n, rule=RULE, values=[sha(f"{i}@x.com")]) for i in range(1, n + 1)]


@pytest.mark.parametrize("stop_at", [1, 2, 3])
def test_chunks_in_flight_are_counted_when_the_chunk_source_stops(stop_at: int) -> None:
    # Two in flight: the next chunk is taken (and journaled) while they are, so a source that stops
    # (cancelled, lease lost, the plan failed) stops with requests in flight; they are still counted.
    chunks = _chunks(3)
    sender = RecordingSender()
    done: list[int] = []

    def source() -> Any:
        yield from chunks[: stop_at - 1]
        raise fanout.SyncCancelled("stopped")

    with pytest.raises(fanout.SyncCancelled):
        fanout._send_phase(sender, source(), 2, lambda chunk, res: done.append(chunk.index))
    assert sorted(done) == list(range(1, stop_at)) and len(sender.calls) == stop_at - 1


def test_the_fence_runs_before_each_chunk_is_handed_to_the_sender() -> None:
    chunks = _chunks(4)
    sender = RecordingSender()
    fenced: list[int] = []

    def fence() -> None:
        fenced.append(len(sender.calls))
        if len(fenced) == 3:
            raise LeaseLostError("lost")

    with pytest.raises(LeaseLostError):
        fanout._send_phase(sender, iter(chunks), 2, lambda chunk, res: None, fence)
    assert len(sender.calls) == 2  # the third chunk was taken but never sent
