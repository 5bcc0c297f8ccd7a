"""Engine-level state guarantees: modes, journal recovery, lease, bad state files, periodic refresh."""

from __future__ import annotations

import json
import threading
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from contact_helpers import break_lease_writes, emails, sha

from airflow_audience_provider.identifiers import (
    DestinationLease,
    LeaseBusyError,
    LeaseLostError,
    StateFileError,
    SyncOptions,
    get_rule,
    lease_for,
    sync_contact_list,
)
from airflow_audience_provider.identifiers.errors import SendError
from airflow_audience_provider.identifiers.snapshot import PREPARED_HEADER_BYTES, SnapshotStore
from airflow_audience_provider.identifiers.testing import RecordingSender

RULE = get_rule("criteo", "email").with_options(max_ids_per_chunk=10)


def hashes(values: list[str]) -> set[str]:
    return {sha(v.strip().lower()) for v in values}


def run(values: list[str], sender: RecordingSender, base: Path, mode: str | None = None, **opts: Any) -> dict:
    options = SyncOptions(allow_mass_removal=True, allow_empty=True, lease_timeout=0, **opts)
    return sync_contact_list(
        values, RULE, sender, destination_key="seg", snapshot_base=base, mode=mode, options=options
    )


def state_dir(base: Path) -> Path:
    return SnapshotStore(RULE.vendor, "seg", base).directory


# ---- modes keep the state truthful -------------------------------------------------------------


def test_sync_replace_sync_converges(tmp_path: Path) -> None:
    vendor = RecordingSender()
    run(emails(30), vendor, tmp_path, "sync")
    replaced = run(emails(20, start=100), vendor, tmp_path, "replace")
    assert replaced["mode"] == "full_replace" and vendor.members == hashes(emails(20, start=100))
    again = run(emails(30), vendor, tmp_path, "sync")
    # The replace recorded its list: the sync sends the difference instead of a no-op.
    assert again["mode"] == "incremental" and vendor.members == hashes(emails(30))
    # Each run copied its snapshot while sending: the header line is the prepared blank one.
    with open(state_dir(tmp_path) / SnapshotStore.FILE_NAME, "rb") as fh:
        assert len(fh.readline()) == PREPARED_HEADER_BYTES


def test_add_and_remove_update_the_snapshot(tmp_path: Path) -> None:
    vendor = RecordingSender()
    run(emails(30), vendor, tmp_path, "sync")
    added = run(emails(5, start=200), vendor, tmp_path, "add")
    assert added["mode"] == "incremental" and added["counts"]["added"] == 5
    removed = run(emails(3), vendor, tmp_path, "remove")
    assert removed["counts"]["removed"] == 3
    expected = (hashes(emails(30)) | hashes(emails(5, start=200))) - hashes(emails(3))
    assert vendor.members == expected
    assert set(SnapshotStore(RULE.vendor, "seg", tmp_path).read_values()) == expected
    final = run(emails(30), vendor, tmp_path, "sync")
    assert final["counts"]["added"] == 3 and final["counts"]["removed"] == 5
    assert vendor.members == hashes(emails(30))


def test_add_without_state_keeps_the_state_unknown(tmp_path: Path) -> None:
    vendor = RecordingSender(members={"stale"})
    result = run(emails(5), vendor, tmp_path, "add")
    assert result["mode"] == "one_way" and vendor.members == {"stale"} | hashes(emails(5))
    assert not SnapshotStore(RULE.vendor, "seg", tmp_path).location.exists()
    assert run(emails(5), vendor, tmp_path, "sync")["mode"] == "full_replace"
    assert vendor.members == hashes(emails(5))


def test_stateless_send_invalidates_the_snapshot(tmp_path: Path) -> None:
    vendor = RecordingSender()
    run(emails(30), vendor, tmp_path, "sync")
    options = SyncOptions(lease_timeout=0)
    sync_contact_list(
        emails(10, start=50), RULE, vendor, destination_key="seg", snapshot_base=tmp_path, incremental=False,
        options=options,
    )  # fmt: skip
    assert not SnapshotStore(RULE.vendor, "seg", tmp_path).location.exists()
    assert run(emails(30), vendor, tmp_path)["mode"] == "full_replace"


def test_unknown_mode_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="mode must be one of"):
        run(emails(3), RecordingSender(), tmp_path, "merge")


def test_full_refresh_every_forces_a_periodic_full_replace(tmp_path: Path) -> None:
    vendor = RecordingSender()
    first = run(emails(30), vendor, tmp_path, full_refresh_every=timedelta(days=7))
    assert first["mode"] == "full_replace"
    header = SnapshotStore(RULE.vendor, "seg", tmp_path).read_header()
    assert header is not None and header["full_replace_at"] > 0
    second = run(emails(31), vendor, tmp_path, full_refresh_every=timedelta(days=7))
    assert second["mode"] == "incremental"
    # Pretend the last full replace was 8 days ago.
    store = SnapshotStore(RULE.vendor, "seg", tmp_path)
    text = store.location.read_text().split("\n", 1)
    meta = json.loads(text[0][len("#aap-snapshot ") :])
    meta["full_replace_at"] -= 8 * 86400
    store.location.write_text("#aap-snapshot " + json.dumps(meta) + "\n" + text[1])
    third = run(emails(31), vendor, tmp_path, full_refresh_every=timedelta(days=7))
    assert third["mode"] == "full_replace" and "full_refresh_every" in third["state"]["full_replace_reason"]


# ---- journal: a failed run followed by another input converges ------------------------------------


@pytest.mark.parametrize("mode", ["sync", "replace"])
def test_failed_run_then_another_input_converges(tmp_path: Path, mode: str) -> None:
    vendor = RecordingSender()
    run(emails(50), vendor, tmp_path)
    # Removes 30 and adds 30 in chunks of 10; dies on the 5th call, after some chunks applied.
    vendor.fail_on_call = len(vendor.calls) + 5
    with pytest.raises(SendError):
        run(emails(50, start=30), vendor, tmp_path, mode)
    assert (state_dir(tmp_path) / "journal.json").exists()
    vendor.fail_on_call = None
    # The next input is the original list: a plain diff against the snapshot would be a no-op.
    result = run(emails(50), vendor, tmp_path)
    assert result["state"]["recovered"] and result["state"]["uncertain"] > 0
    assert vendor.members == hashes(emails(50))
    assert not (state_dir(tmp_path) / "journal.json").exists()
    assert run(emails(50), vendor, tmp_path)["mode"] == "noop"
    assert not list(state_dir(tmp_path).glob(".*.tmp"))  # the failed run's early snapshot copy is gone


def test_corrupt_journal_means_a_full_replace(tmp_path: Path) -> None:
    vendor = RecordingSender()
    run(emails(20), vendor, tmp_path)
    (state_dir(tmp_path) / "journal.json").write_text("{not json")
    vendor.members.add("left-by-someone")
    result = run(emails(20), vendor, tmp_path)
    assert result["mode"] == "full_replace" and "unusable" in result["state"]["notes"][0]
    assert vendor.members == hashes(emails(20))


@pytest.mark.parametrize("damage", ["short", "empty", "zeros", "torn line"])
def test_journal_whose_ids_file_lost_lines_means_a_full_replace(tmp_path: Path, damage: str) -> None:
    vendor = RecordingSender()
    run(emails(50), vendor, tmp_path)
    vendor.fail_on_call = len(vendor.calls) + 5  # 30 adds and 10 removes land, then the run dies
    with pytest.raises(SendError):
        run(emails(50, start=30), vendor, tmp_path)
    vendor.fail_on_call = None
    meta = json.loads((state_dir(tmp_path) / "journal.json").read_bytes())
    ids = state_dir(tmp_path) / meta["ids_file"]
    data = ids.read_bytes()
    # What a host crash can leave when the file system did not keep the synced bytes (or a hand edit).
    ids.write_bytes(
        {"short": data[: 65 * 7], "empty": b"", "zeros": b"\0" * len(data), "torn line": data[: 65 * 20 - 10]}[damage]
    )
    result = run(emails(50), vendor, tmp_path)
    assert vendor.members == hashes(emails(50))
    assert result["mode"] == "full_replace" and "identifier file" in result["state"]["notes"][0]


def test_journal_of_clear_text_values_whose_ids_file_lost_lines_means_a_full_replace(tmp_path: Path) -> None:
    rule = get_rule("criteo", "customer_id").with_options(max_ids_per_chunk=10)
    vendor = RecordingSender()
    ids = [f"cust-{i}" for i in range(50)]

    def sync(values: list[str]) -> dict:
        options = SyncOptions(allow_mass_removal=True, lease_timeout=0)
        return sync_contact_list(values, rule, vendor, destination_key="seg", snapshot_base=tmp_path, options=options)

    sync(ids)
    vendor.fail_on_call = len(vendor.calls) + 5
    with pytest.raises(SendError):
        sync([f"cust-{i}" for i in range(30, 80)])
    vendor.fail_on_call = None
    directory = SnapshotStore(rule.vendor, "seg", tmp_path).directory
    journal_ids = directory / json.loads((directory / "journal.json").read_bytes())["ids_file"]
    journal_ids.write_bytes(journal_ids.read_bytes()[:40])
    result = sync(ids)
    assert vendor.members == set(ids)
    assert result["mode"] == "full_replace" and "identifier file" in result["state"]["notes"][0]


def test_journal_from_a_newer_version_is_refused(tmp_path: Path) -> None:
    vendor = RecordingSender()
    run(emails(20), vendor, tmp_path)
    (state_dir(tmp_path) / "journal.json").write_text(json.dumps({"format": 99}))
    with pytest.raises(StateFileError, match=r"newer version.*upgrade"):
        run(emails(20), vendor, tmp_path)


# ---- lease --------------------------------------------------------------------------------------


def test_lease_is_exclusive_and_fenced(tmp_path: Path) -> None:
    now = [1000.0]
    first = DestinationLease(tmp_path / "lease", ttl=30, max_clock_skew=5, clock=lambda: now[0])
    second = DestinationLease(tmp_path / "lease", ttl=30, max_clock_skew=5, clock=lambda: now[0])
    assert first.try_acquire() and first.token == 1
    assert not second.try_acquire()
    assert second.wait_seconds() == pytest.approx(35)
    now[0] += 31  # expired by the holder's clock: it stops sending...
    with pytest.raises(LeaseLostError, match="expired"):
        first.check()
    assert not second.try_acquire()  # ...but the skew margin is not over yet
    now[0] += 5
    assert second.try_acquire() and second.token == 2 and second.took_over is not None
    now[0] -= 30  # even with its clock back in time, the old holder sees the higher token
    with pytest.raises(LeaseLostError, match="taken over"):
        first.check()
    first.release()  # does not release someone else's lease
    assert not DestinationLease(tmp_path / "lease", clock=lambda: now[0]).try_acquire()
    now[0] += 30  # past the moment the first holder's requests can land: the takeover may be released
    second.release()
    third = DestinationLease(tmp_path / "lease", clock=lambda: now[0])
    assert third.try_acquire() and third.token == 3 and third.took_over is None
    third.release()


def test_only_one_of_racing_runs_gets_the_lease(tmp_path: Path) -> None:
    leases = [DestinationLease(tmp_path / "lease", ttl=60) for _ in range(8)]
    barrier = threading.Barrier(len(leases))
    won: list[bool] = []

    def race(lease: DestinationLease) -> None:
        barrier.wait()
        won.append(lease.try_acquire())

    threads = [threading.Thread(target=race, args=(lease,)) for lease in leases]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert won.count(True) == 1
    for lease in leases:
        lease.release()


def test_second_run_fails_before_sending_while_the_lease_is_held(tmp_path: Path) -> None:
    vendor = RecordingSender()
    holder = lease_for(RULE, "seg", tmp_path)
    assert holder.try_acquire()
    try:
        with pytest.raises(LeaseBusyError, match="another run is sending"):
            run(emails(20), vendor, tmp_path)
        assert vendor.calls == []
    finally:
        holder.release()
    run(emails(20), vendor, tmp_path)
    assert vendor.members == hashes(emails(20))


def test_acquired_lease_can_be_passed_in(tmp_path: Path) -> None:
    vendor = RecordingSender()
    lease = lease_for(RULE, "seg", tmp_path)
    assert lease.try_acquire()
    sync_contact_list(emails(20), RULE, vendor, destination_key="seg", snapshot_base=tmp_path, lease=lease)
    assert lease.token is None  # released by the engine at the end
    assert lease_for(RULE, "seg", tmp_path).try_acquire()


def test_run_whose_lease_is_lost_sends_nothing_more(tmp_path: Path) -> None:
    stolen = {"done": False}

    def steal(op: str) -> None:
        if len(vendor.calls) == 2 and not stolen["done"]:
            stolen["done"] = True
            # Another run creates the next token (as after an expiry).
            lease_dir = state_dir(tmp_path) / "lease"
            newest = max(int(p.stem) for p in lease_dir.glob("*.json"))
            (lease_dir / f"{newest + 1:012d}.json").write_text(
                json.dumps({"format": 1, "token": newest + 1, "owner": "other", "expires_at": 9e12})
            )

    vendor = RecordingSender(before_call=steal)
    with pytest.raises(SendError) as caught:
        run(emails(50), vendor, tmp_path)
    assert isinstance(caught.value.__cause__, LeaseLostError)
    assert len(vendor.calls) == 2  # the chunk in hand when it was stolen, none after


def test_a_failed_lease_renewal_is_tried_again_so_the_lease_does_not_lapse(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A storage hiccup on one renewal must not let the lease expire under a chunk still in flight
    (another run could take it over while that chunk's requests go on)."""
    from airflow_audience_provider.identifiers import lease as lease_module

    real_write = lease_module.write_atomic
    lock = threading.Lock()
    writes: list[int] = []
    renewed_after_the_failure = threading.Event()

    def flaky_write(location: Any, data: bytes, **kw: Any) -> None:
        with lock:
            writes.append(1)
            number = len(writes)
        if number == 1:
            raise OSError("the storage did not answer")
        real_write(location, data, **kw)
        renewed_after_the_failure.set()

    monkeypatch.setattr(lease_module, "write_atomic", flaky_write)
    lease = DestinationLease(tmp_path / "lease", ttl=6.0, max_clock_skew=0.0)
    assert lease.try_acquire()
    try:
        assert renewed_after_the_failure.wait(10), "the heartbeat gave up after one failed renewal"
        lease.check()  # renewed again: the lease never lapsed, so the run may go on
    finally:
        lease.release()


def test_no_attempt_starts_within_one_attempt_of_the_lease_expiry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``may_send`` (asked before every attempt of a write) passes while the expiry is more than the
    attempt's reach away, renews first when the heartbeat is late, and refuses when it cannot."""

    now = [1000.0]
    broken = break_lease_writes(monkeypatch)
    lease = DestinationLease(tmp_path / "lease", ttl=300, max_clock_skew=5, clock=lambda: now[0], landing_window=20)
    assert lease.try_acquire()  # expires at 1300
    try:
        lease.may_send(reach=70, landing=20)  # 300 s left: no storage access needed
        now[0] = 1240.0  # 60 s left, less than the attempt's 70: renewed first, then it may start
        lease.may_send(reach=70, landing=20)
        assert json.loads(lease._path(lease.token).read_text())["expires_at"] == 1540.0
        now[0] = 1380.0  # 160 s left: a 1000 s upload may start (the margin is at most ttl / 2)
        lease.may_send(reach=1000, landing=20)
        assert json.loads(lease._path(lease.token).read_text())["expires_at"] == 1540.0  # no renewal needed
        broken.set()
        now[0] = 1480.0  # 60 s left and the renewal fails: refused
        with pytest.raises(LeaseLostError, match="could not be renewed before a request"):
            lease.may_send(reach=70, landing=20)
        lease.may_send(reach=10, landing=20)  # a short one may still go
        now[0] = 1541.0
        with pytest.raises(LeaseLostError, match="expired"):
            lease.may_send(reach=10, landing=20)
    finally:
        broken.clear()
        lease.release()


def test_the_lease_record_carries_the_longest_landing_window(tmp_path: Path) -> None:
    now = [1000.0]
    holder = DestinationLease(tmp_path / "lease", ttl=30, max_clock_skew=5, clock=lambda: now[0], landing_window=24)
    assert holder.try_acquire()
    path = holder._path(holder.token)
    assert json.loads(path.read_text())["landing_window"] == 24
    holder.may_send(reach=5, landing=400)  # a large upload: recorded before it starts
    assert json.loads(path.read_text())["landing_window"] == 400
    holder.may_send(reach=5, landing=24)
    holder.renew()
    assert json.loads(path.read_text())["landing_window"] == 400  # kept by renewals
    holder._stop.set()  # the holder dies without releasing
    now[0] += 100
    taker = DestinationLease(tmp_path / "lease", ttl=30, max_clock_skew=5, clock=lambda: now[0])
    assert taker.try_acquire()
    assert taker.took_over is not None and taker.took_over.landing_window == 400
    taker.release()


def test_a_lease_never_released_is_abandoned_once_expired_past_the_skew(tmp_path: Path) -> None:
    from airflow_audience_provider.identifiers.lease import takeover_safe_at

    now = [1000.0]
    holder = DestinationLease(tmp_path / "lease", ttl=30, max_clock_skew=5, clock=lambda: now[0], landing_window=40)
    other = DestinationLease(tmp_path / "lease", ttl=30, max_clock_skew=5, clock=lambda: now[0], landing_window=24)
    assert holder.try_acquire()
    assert not other.abandoned(other.current())  # live
    holder._stop.set()  # killed: never released
    now[0] += 35
    assert not other.abandoned(other.current())  # expired, but within the skew margin
    now[0] += 1
    record = other.current()
    assert record is not None and other.abandoned(record)
    # the recorded window (40) is longer than the taker's own (24); an unrecorded one counts as 0
    assert other.takeover_safe_at(record) == 1030.0 + 5 + 40
    assert takeover_safe_at(record, max_clock_skew=5, landing_window=50) == 1030.0 + 5 + 50
    assert takeover_safe_at(record, max_clock_skew=5, landing_window=None) == 1030.0 + 5 + 40
    assert other.try_acquire() and other.took_over == record
    now[0] = 1075.0  # released once the dead run's requests can no longer land (not before)
    other.release()
    assert not other.abandoned(other.current())  # released: nothing of a dead run in flight


def test_a_lease_record_of_an_older_version_is_read_without_a_landing_window(tmp_path: Path) -> None:
    lease_dir = tmp_path / "lease"
    lease_dir.mkdir()
    old = {"format": 1, "token": 3, "owner": "old-worker", "acquired_at": 1.0, "expires_at": 2.0, "released": False}
    (lease_dir / "000000000003.json").write_text(json.dumps(old))
    taker = DestinationLease(lease_dir, ttl=30, max_clock_skew=5)
    assert taker.try_acquire() and taker.token == 4
    assert taker.took_over is not None and taker.took_over.landing_window is None
    taker.release()


def test_corrupt_lease_is_refused_with_instructions(tmp_path: Path) -> None:
    lease_dir = state_dir(tmp_path) / "lease"
    lease_dir.mkdir(parents=True)
    (lease_dir / "000000000001.json").write_text("garbage")
    with pytest.raises(StateFileError, match=r"corrupt.*delete the directory"):
        run(emails(20), RecordingSender(), tmp_path)


def test_lease_on_object_storage() -> None:
    import fsspec
    from airflow.sdk import ObjectStoragePath
    from airflow.sdk.io import attach

    attach("memory", fs=fsspec.filesystem("memory"))
    base = ObjectStoragePath("memory://audience-tests/leases")
    first = DestinationLease(base / "seg" / "lease", ttl=30)
    second = DestinationLease(base / "seg" / "lease", ttl=30)
    assert first.try_acquire() and not second.try_acquire()
    first.check()
    first.release()
    assert second.try_acquire() and second.token == 2
    second.release()


def test_journal_and_lease_on_object_storage() -> None:
    import fsspec
    from airflow.sdk import ObjectStoragePath
    from airflow.sdk.io import attach

    attach("memory", fs=fsspec.filesystem("memory"))
    base = ObjectStoragePath("memory://audience-tests/journal-state")
    vendor = RecordingSender()
    run(emails(40), vendor, base)  # type: ignore[arg-type]
    vendor.fail_on_call = len(vendor.calls) + 3
    with pytest.raises(SendError):
        run(emails(40, start=25), vendor, base)  # type: ignore[arg-type]
    directory = SnapshotStore(RULE.vendor, "seg", base).directory
    assert (directory / "journal.json").exists()
    vendor.fail_on_call = None
    result = run(emails(40), vendor, base)  # type: ignore[arg-type]
    assert result["state"]["recovered"] and vendor.members == hashes(emails(40))
    assert not (directory / "journal.json").exists()
    assert [p.name for p in (directory / "lease").iterdir()]  # the lease lives beside the snapshot


# ---- the journal's copy of the identifiers ----------------------------------------------------------


def test_journal_links_a_single_part_and_copies_several(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    from airflow_audience_provider.identifiers.journal import Journal

    one, two, empty = tmp_path / "one.txt", tmp_path / "two.txt", tmp_path / "empty.txt"
    one.write_text("a\nb\n")
    two.write_text("c\n")
    empty.write_text("")
    journal = Journal(tmp_path / "state")

    def begin(parts: list[Path | None]) -> Path:
        journal.begin(run="r", owner="o", rule_key=RULE.key, kind="replace", parts=parts, inherited=0, token=None)
        return tmp_path / "state" / "journal-ids-r.txt"

    ids = begin([None, one, empty])
    assert ids.read_text() == "a\nb\n" and ids.stat().st_ino == one.stat().st_ino  # a second name, no copy
    one.unlink()  # the engine removes its work directory: the journal keeps the identifiers
    assert ids.read_text() == "a\nb\n"
    one.write_text("a\nb\n")
    ids = begin([one, two])
    assert ids.read_text() == "a\nb\nc\n" and ids.stat().st_ino != one.stat().st_ino

    def cross_device(src: object, dst: object) -> None:
        raise OSError(18, "Invalid cross-device link")

    monkeypatch.setattr(os, "link", cross_device)  # parts on another file system: copied
    ids = begin([one])
    assert ids.read_text() == "a\nb\n" and ids.stat().st_ino != one.stat().st_ino


def test_journal_records_are_rewritten_in_place(tmp_path: Path) -> None:
    """Per-chunk records reuse the file and stay valid JSON: no create or rename (they wait behind an fsync)."""
    from airflow_audience_provider.identifiers.journal import Journal

    directory = tmp_path / "state"
    part = tmp_path / "adds.txt"
    part.write_text("".join(sha(str(i)) + "\n" for i in range(40)))
    journal = Journal(directory)
    journal.begin(run="r", owner="o", rule_key=RULE.key, kind="diff", parts=[part], inherited=0, token=None)
    location = directory / "journal.json"
    inode = location.stat().st_ino
    for lines in (10, 20, 30):
        journal.attempting(lines)
        journal.acked(10)
        meta = json.loads(location.read_bytes())
        assert (meta["attempted"], meta["acked"]) == (lines, lines)
        assert location.stat().st_ino == inode
    recovery = journal.recover(RULE.key, RULE.profile.output_length)
    assert recovery is not None and recovery.values == {sha(str(i)) for i in range(30)}
    # A shorter record leaves spaces behind it; a record over a page is renamed in, then written in place again.
    assert journal.meta is not None
    journal.meta["owner"] = ""
    journal.acked(0)
    assert json.loads(location.read_bytes())["owner"] == "" and location.read_bytes().endswith(b" ")
    journal.meta["note"] = "y" * 5000
    journal.acked(0)
    assert json.loads(location.read_bytes())["note"] == "y" * 5000 and location.stat().st_ino != inode
    del journal.meta["note"]
    journal.acked(0)
    inode = location.stat().st_ino
    journal.attempting(40)
    assert json.loads(location.read_bytes())["attempted"] == 40 and location.stat().st_ino == inode
    journal.failed("x" * 300)
    assert json.loads(location.read_bytes())["state"] == "failed"
    journal.finish()
    assert not location.exists() and [p.name for p in directory.iterdir()] == []


def test_failed_full_replace_is_recovered_from_the_linked_journal(tmp_path: Path) -> None:
    vendor = RecordingSender()
    vendor.fail_on_call = 3  # the replace and one chunk of additions land, then the run dies
    with pytest.raises(SendError):
        run(emails(50), vendor, tmp_path)
    assert (state_dir(tmp_path) / "journal.json").exists()
    vendor.fail_on_call = None
    vendor.members.add("left-by-someone")
    result = run(emails(40), vendor, tmp_path)
    assert result["state"]["recovered"]
    assert vendor.members == hashes(emails(40))


# ---- the snapshot copied while the last chunks are sent ----------------------------------------


@pytest.mark.parametrize("extra", [None, {"full_replace_at": 1765000000.123456}, {"note": "x" * 600}])
def test_prepared_snapshot_commits_the_same_snapshot(tmp_path: Path, extra: dict[str, Any] | None) -> None:
    values = sorted(sha(e) for e in emails(40))
    data = tmp_path / "list.txt"
    data.write_text("".join(v + "\n" for v in values))
    plain, early = SnapshotStore("criteo", "plain", tmp_path), SnapshotStore("criteo", "early", tmp_path)
    plain.commit(data, rule=RULE, count=len(values), extra=extra)
    prepared = early.prepare(data)
    assert prepared is not None and prepared.path.parent == early.directory
    early.commit(data, rule=RULE, count=len(values), extra=extra, prepared=prepared)
    assert early.read_values() == plain.read_values() == values
    assert early.read_header() == {**plain.read_header(), "written_at": early.read_header()["written_at"]}
    reader, meta, fh = early.open(RULE)
    assert reader is not None and fh is not None and meta is not None and meta["count"] == 40
    fh.close()
    assert not list(early.directory.glob(".*.tmp")) and not prepared.path.exists()


def test_commit_removes_copies_left_by_killed_runs(tmp_path: Path) -> None:
    data = tmp_path / "list.txt"
    data.write_text(sha("a@x.com") + "\n")
    store = SnapshotStore("criteo", "seg", tmp_path)
    left = store.prepare(data)  # a run killed before its commit leaves this behind
    assert left is not None and left.path.exists()
    store.commit(data, rule=RULE, count=1, prepared=store.prepare(data))
    assert not list(store.directory.glob(".*.tmp")) and store.read_values() == [sha("a@x.com")]


@pytest.mark.parametrize("write_back", ["available", "missing"])
@pytest.mark.parametrize("kernel_copy", ["available", "refused"])
def test_a_snapshot_prepared_in_written_back_steps_holds_the_whole_list(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, write_back: str, kernel_copy: str
) -> None:
    import itertools
    import os

    from airflow_audience_provider.identifiers import snapshot, state

    monkeypatch.setattr(snapshot, "WRITE_BACK_STEP", 4096 + 3 * 65)  # steps that cut lines
    monkeypatch.setattr(snapshot, "WRITE_BACK_QUEUE", 2)
    ranges: list[tuple[int, int, bool]] = []
    real = state.write_back

    def recording(fd: int, offset: int, nbytes: int, *, wait: bool = False) -> bool:
        ranges.append((offset, nbytes, wait))
        return real(fd, offset, nbytes, wait=wait) if write_back == "available" else False

    monkeypatch.setattr(snapshot, "write_back", recording)
    if kernel_copy == "refused":

        def refuse(*args: Any) -> int:
            raise OSError(18, "Invalid cross-device link")

        monkeypatch.setattr(os, "copy_file_range", refuse, raising=False)
    values = sorted(sha(e) for e in emails(1000))
    data = tmp_path / "list.txt"
    data.write_text("".join(v + "\n" for v in values))
    store = SnapshotStore("criteo", "seg", tmp_path)
    store.commit(data, rule=RULE, count=len(values), prepared=store.prepare(data))
    assert store.read_values() == values and store.read_header()["count"] == 1000
    if kernel_copy == "available" and hasattr(os, "copy_file_range"):
        # Every step handed to writeback once, in order, and waited for once more than the queue holds.
        started = [(o, n) for o, n, wait in ranges if not wait]
        assert started[0][0] == PREPARED_HEADER_BYTES and sum(n for _, n in started) == 65 * 1000
        assert all(a[0] + a[1] == b[0] for a, b in itertools.pairwise(started))
        assert [(o, n) for o, n, wait in ranges if wait] == started[: max(len(started) - 2, 0)]
    else:
        assert ranges == []  # copied by hand: nothing to write back early


def test_write_back_starts_writeback_or_says_it_cannot(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import os
    import sys

    from airflow_audience_provider.identifiers import state

    path = tmp_path / "f"
    path.write_bytes(b"x" * 10000)
    fd = os.open(path, os.O_RDONLY)
    try:
        assert state.write_back(fd, 0, 0) is False
        assert state.write_back(fd, 0, 10000, wait=True) is sys.platform.startswith("linux")
        monkeypatch.setattr(state, "_sync_file_range", False)  # a platform without it
        assert state.write_back(fd, 0, 10000) is False
    finally:
        os.close(fd)


def test_a_growing_ids_file_is_written_back_between_its_syncs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    from airflow_audience_provider.identifiers import journal

    started: list[tuple[int, int]] = []
    synced: list[int] = []
    monkeypatch.setattr(journal, "write_back", lambda fd, offset, nbytes, **_: started.append((offset, nbytes)))
    monkeypatch.setattr(journal, "sync_data", lambda fd: synced.append(os.fstat(fd).st_size))
    path = tmp_path / "ids.txt"
    path.write_bytes(b"a\n" * 10)
    ids = journal._SyncedFile(path)
    try:
        assert synced == [20] and started == []
        with path.open("ab") as out:
            out.write(b"b\n" * 5)
        ids.sync_through(20)  # already durable: the new bytes only go to writeback
        ids.sync_through(20)
        assert synced == [20] and started == [(20, 10)]
        ids.sync_through(30)  # a record counts them: a real sync
        assert synced == [20, 30] and ids.synced == 30
    finally:
        ids.close()
