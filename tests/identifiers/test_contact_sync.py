"""Sync engine: accounting, guards, dry run, incremental sync across runs, snapshots, fan-out."""

from __future__ import annotations

import contextlib
import json
import logging
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from contact_helpers import emails, normalised_emails, sha
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from airflow_audience_provider.identifiers import (
    Destination,
    SyncOptions,
    get_rule,
    plan_contact_list_sync,
    sync_contact_list,
)
from airflow_audience_provider.identifiers.errors import (
    EmptyInputError,
    InvalidShareError,
    MinimumEntriesError,
    RemovalGuardError,
    SendError,
    SnapshotError,
    SyncCancelled,
    WrongIdentifierTypeError,
)
from airflow_audience_provider.identifiers.fanout import run_destinations
from airflow_audience_provider.identifiers.hashing import sort_key
from airflow_audience_provider.identifiers.normalise import InvalidIdentifier, normalise_email
from airflow_audience_provider.identifiers.rules import HashAlgorithm
from airflow_audience_provider.identifiers.snapshot import SnapshotStore
from airflow_audience_provider.identifiers.sources import IterableSource, RawBatch
from airflow_audience_provider.identifiers.sync import plan_allows, snapshot_for
from airflow_audience_provider.identifiers.testing import RecordingSender, SimulatedSendError

CRITEO = get_rule("criteo", "email")
SMALL_CHUNKS = CRITEO.with_options(max_ids_per_chunk=10)


def run(values: list[str], sender: RecordingSender | None, base: Path, **kw: Any) -> dict[str, Any]:
    rule = kw.pop("rule", SMALL_CHUNKS)
    if sender is None:
        return plan_contact_list_sync(values, rule, destination_key="seg-1", snapshot_base=base, **kw)
    return sync_contact_list(values, rule, sender, destination_key="seg-1", snapshot_base=base, **kw)


def stored(base: Path, rule: Any = SMALL_CHUNKS, key: str = "seg-1") -> list[str]:
    return SnapshotStore(rule.vendor, key, base).read_values()


# ---- accounting -------------------------------------------------------------------------------

row = st.one_of(
    st.integers(min_value=0, max_value=40).map(lambda i: f" User{i}@Example.com"),  # valid, often repeated
    st.integers(min_value=0, max_value=40).map(lambda i: f"user{i}@EXAMPLE.COM  "),  # same after normalising
    st.sampled_from(["", "nope", "a@b", "x@@y.com", "   "]),  # invalid
)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)
@given(values=st.lists(row, min_size=1, max_size=120))
def test_every_row_ends_in_exactly_one_bucket(values: list[str], tmp_path_factory: pytest.TempPathFactory) -> None:
    base = tmp_path_factory.mktemp("snap")
    sender = RecordingSender()
    opts = SyncOptions(max_invalid_share=1.0, allow_empty=True)
    result = run(values, sender, base, options=opts)
    c = result["counts"]
    assert c["unique"] + c["invalid"] + c["duplicate"] == c["rows"] == len(values)
    expected = set()
    for v in values:
        with contextlib.suppress(InvalidIdentifier):
            expected.add(sha(normalise_email(v)))
    assert c["unique"] == len(expected)
    assert sender.members == expected
    assert c["sent_add"] == len(expected) == c["added"]
    assert sum(c["invalid_reasons"].values()) == c["invalid"]
    assert stored(base) == sorted(expected)


def test_result_is_small_json_and_redacted(tmp_path: Path, sender: RecordingSender) -> None:
    values = [*emails(30), "john.doe@", "jane.roe@@example.com", *[f"bad{i}" for i in range(10)]]
    result = run(values, sender, tmp_path, options=SyncOptions(max_invalid_share=0.5))
    text = json.dumps(result)
    assert json.loads(text) == result
    assert len(text) < 3000
    assert len(result["counts"]["invalid_samples"]) == 5
    assert "john.doe" not in text and "jane.roe" not in text
    assert result["counts"]["invalid_samples"][0] == {
        "at": "<iterable>:31",
        "reason": "email_syntax",
        "value": "j***@***",
    }
    assert result["counts"]["invalid_reasons"] == {"email_no_at": 10, "email_syntax": 2}


def test_identifiers_never_reach_the_logs(
    tmp_path: Path, sender: RecordingSender, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    values = [*emails(25), "secret.person@hidden.org", "not-an-email"]
    run(values, sender, tmp_path, options=SyncOptions(max_invalid_share=0.5))
    log_text = caplog.text.lower()
    assert "user1.name" not in log_text and "secret.person" not in log_text and "not-an-email" not in log_text
    assert not any(sha("user1.name@example1.com") in r.getMessage() for r in caplog.records)
    assert "chunk 3 of 3" in caplog.text  # progress lines are there


# ---- bad input and guards: fail before sending -------------------------------------------------


def test_invalid_share_of_national_phones_names_default_region(tmp_path: Path, sender: RecordingSender) -> None:
    """A Russian CRM list written 8 (999) ... fails with a hint at the option, not only a reason code."""
    rule = get_rule("yandex_audience", "phone").with_options(min_entries=1)
    values = [f"8 (999) 555-{i // 100 % 100:02d}-{i % 100:02d}" for i in range(20)]
    with pytest.raises(InvalidShareError) as exc:
        run(values, sender, tmp_path, rule=rule)
    assert sender.calls == []
    assert "phone_no_country" in str(exc.value) and "default_region" in str(exc.value)
    result = run(values, sender, tmp_path, rule=rule.with_options(default_region="RU"))
    assert result["counts"]["invalid"] == 0


def test_invalid_share_fails_before_sending(tmp_path: Path, sender: RecordingSender) -> None:
    values = [*emails(8), "bad1", "bad2"]
    with pytest.raises(InvalidShareError) as exc:
        run(values, sender, tmp_path, options=SyncOptions(max_invalid_share=0.1))
    assert sender.calls == []
    assert exc.value.result is not None and exc.value.result["counts"]["invalid"] == 2
    assert "20.0%" in str(exc.value)
    assert stored(tmp_path) == []


def test_empty_input_is_an_error_unless_allowed(tmp_path: Path, sender: RecordingSender) -> None:
    with pytest.raises(EmptyInputError, match="no rows"):
        run([], sender, tmp_path)
    assert sender.calls == []
    sender.members = {"old"}
    result = run([], sender, tmp_path, options=SyncOptions(allow_empty=True))
    assert result["mode"] == "clear" and sender.operations == ["clear"] and sender.members == set()


def test_wrong_identifier_type_names_line_and_column(tmp_path: Path, sender: RecordingSender) -> None:
    csv_path = tmp_path / "crm.csv"
    csv_path.write_text("id,contact\n" + "".join(f"{i},+7 999 555 {i:02d} {i:02d}\n" for i in range(30)))
    with pytest.raises(WrongIdentifierTypeError) as exc:
        sync_contact_list(csv_path, CRITEO, sender, destination_key="seg-1", snapshot_base=tmp_path, column="contact")
    assert exc.value.line == 2 and exc.value.column == "contact"
    assert "look like phone" in str(exc.value)
    assert sender.calls == []


def test_undecodable_input_fails_before_sending(tmp_path: Path, sender: RecordingSender) -> None:
    p = tmp_path / "ids.txt"
    p.write_bytes(("\n".join(normalised_emails(20)) + "\n").encode() + b"bad\xfe@x.com\n")
    with pytest.raises(Exception, match=r"line 21, column 4"):
        sync_contact_list(p, CRITEO, sender, destination_key="seg-1", snapshot_base=tmp_path)
    assert sender.calls == []


def test_vendor_minimum_entries(tmp_path: Path, sender: RecordingSender) -> None:
    yandex = get_rule("yandex_audience", "email")
    with pytest.raises(MinimumEntriesError, match="at least 100"):
        run(emails(99), sender, tmp_path, rule=yandex)
    assert sender.calls == []
    result = run(emails(99), sender, tmp_path, rule=yandex, options=SyncOptions(allow_below_minimum=True))
    assert result["status"] == "sent" and len(sender.members) == 99


def test_removal_guard_blocks_before_sending(tmp_path: Path, sender: RecordingSender) -> None:
    run(emails(100), sender, tmp_path)
    before = stored(tmp_path)
    calls = len(sender.calls)
    with pytest.raises(RemovalGuardError) as exc:
        run(emails(70), sender, tmp_path)  # 30 of 100 would go
    assert "remove 30 of 100" in str(exc.value)
    assert len(sender.calls) == calls and stored(tmp_path) == before
    # Exactly at the limit is fine; explicit permission lets a bigger removal through.
    result = run(emails(80), sender, tmp_path)
    assert result["counts"]["removed"] == 20
    result = run(emails(40), sender, tmp_path, options=SyncOptions(allow_mass_removal=True))
    assert result["counts"]["removed"] == 40
    assert sender.members == {sha(v) for v in normalised_emails(40)}


def test_emptying_the_list_needs_explicit_permission(tmp_path: Path, sender: RecordingSender) -> None:
    run(emails(20), sender, tmp_path)
    opts = SyncOptions(max_invalid_share=1.0)
    with pytest.raises((RemovalGuardError, EmptyInputError)):
        run(["bad"] * 5, sender, tmp_path, options=opts)
    assert len(sender.members) == 20
    result = run([], sender, tmp_path, options=SyncOptions(allow_empty=True))
    assert result["mode"] == "clear" and sender.members == set() and stored(tmp_path) == []


def test_rule_version_change_means_full_replace_but_guard_still_counts(tmp_path: Path, sender: RecordingSender) -> None:
    run(emails(50), sender, tmp_path)
    bumped = SMALL_CHUNKS.with_options(version="2")
    with pytest.raises(RemovalGuardError):
        run(emails(10), sender, tmp_path, rule=bumped)
    result = run(emails(50), sender, tmp_path, rule=bumped)
    assert result["mode"] == "full_replace" and sender.calls[-5][0] == "replace"
    assert stored(tmp_path, bumped) == sorted(sha(v) for v in normalised_emails(50))


# ---- dry run ------------------------------------------------------------------------------------


def test_dry_run_sends_nothing_and_writes_no_snapshot(tmp_path: Path, sender: RecordingSender) -> None:
    run(emails(100), sender, tmp_path)
    snap_before = stored(tmp_path)
    plan = run([*emails(60, start=10), *emails(5, start=10), "bad"], None, tmp_path)
    assert json.loads(json.dumps(plan)) == plan
    assert plan["status"] == "blocked" and plan["dry_run"] is True
    c = plan["counts"]
    assert (c["added"], c["removed"], c["unchanged"], c["invalid"], c["duplicate"]) == (0, 40, 60, 1, 5)
    assert plan["chunks"] == {"add": 0, "remove": 4, "total": 4}
    assert plan["estimated_requests"] == 4
    assert plan["blocked_by"][0]["guard"] == "RemovalGuardError"  # reported, not raised
    assert plan_allows(plan) is False
    assert stored(tmp_path) == snap_before
    assert len(sender.calls) == 10  # only the first real run's chunks


def test_dry_run_reports_input_guards_instead_of_raising(tmp_path: Path) -> None:
    plan = run([*emails(5), "bad1", "bad2"], None, tmp_path)
    assert plan["status"] == "blocked"
    assert [b["guard"] for b in plan["blocked_by"]] == ["InvalidShareError"]
    assert plan["counts"]["unique"] == 5  # the plan is still complete
    empty = run([], None, tmp_path)
    assert [b["guard"] for b in empty["blocked_by"]] == ["EmptyInputError"]
    clean = run(emails(5), None, tmp_path)
    assert clean["status"] == "planned" and clean["blocked_by"] == [] and plan_allows(clean)


def test_plan_allows_on_numbers() -> None:
    plan = {"blocked_by": [], "counts": {"added": 10, "removed": 3}}
    assert plan_allows(plan)
    assert not plan_allows(plan, max_removed=2)
    assert not plan_allows(plan, max_added=9)


# ---- incremental sync across runs ------------------------------------------------------------------


def test_incremental_sync_across_runs_with_a_failed_middle_run(tmp_path: Path) -> None:
    sender = RecordingSender()
    list_a = emails(100)
    first = run(list_a, sender, tmp_path)
    assert first["mode"] == "full_replace"
    assert sender.operations == ["replace"] + ["add"] * 9
    snapshot_a = stored(tmp_path)
    assert snapshot_a == sorted(sha(v) for v in normalised_emails(100))

    # Run 2: 15 leave, 25 join. The vendor fails on the second add chunk.
    list_b = emails(85, start=15) + emails(25, start=1000)
    sender.calls.clear()
    sender.fail_on_call = 2
    with pytest.raises(SendError) as exc:
        run(list_b, sender, tmp_path)
    partial = exc.value.result
    assert isinstance(exc.value.__cause__, SimulatedSendError)  # the vendor's error is kept
    assert partial is not None
    assert partial["status"] == "failed" and partial["counts"]["chunks_sent"] == 1
    assert partial["counts"]["sent_add"] == 10 and partial["counts"]["added"] == 25
    assert stored(tmp_path) == snapshot_a  # nothing recorded that was not fully sent

    # Run 3: same input; diff is still against run 1's snapshot, so everything is resent.
    sender.fail_on_call = None
    sender.calls.clear()
    third = run(list_b, sender, tmp_path)
    c = third["counts"]
    assert (c["added"], c["removed"], c["unchanged"]) == (25, 15, 85)
    assert (c["sent_add"], c["sent_remove"]) == (25, 15)
    assert sender.operations == ["add", "add", "add", "remove", "remove"]
    expected = {sha(normalise_email(v)) for v in list_b}
    assert sender.members == expected
    assert stored(tmp_path) == sorted(expected)

    # Run 4: nothing changed, nothing sent.
    sender.calls.clear()
    fourth = run(list(reversed(list_b)), sender, tmp_path)
    assert fourth["mode"] == "noop" and sender.calls == [] and fourth["estimated_requests"] == 0


def test_a_cancelled_sync_stops_between_chunks_and_keeps_the_old_snapshot(tmp_path: Path) -> None:
    sender = RecordingSender()
    run(emails(100), sender, tmp_path)
    snapshot = stored(tmp_path)
    cancel = threading.Event()
    # The task is stopped (on_kill) while the second chunk is being sent.
    sender.calls.clear()
    sender.before_call = lambda op: cancel.set() if len(sender.calls) == 2 else None
    with pytest.raises(SendError) as exc:
        run(emails(100, start=50), sender, tmp_path, options=SyncOptions(cancel=cancel, allow_mass_removal=True))
    assert isinstance(exc.value.__cause__, SyncCancelled)
    assert sender.operations == ["add", "add"]  # the chunk in flight finished; no third one started
    assert exc.value.result["counts"]["chunks_sent"] == 2
    assert stored(tmp_path) == snapshot
    # The next run sends the whole difference again.
    sender.calls.clear()
    sender.before_call = None
    again = run(emails(100, start=50), sender, tmp_path, options=SyncOptions(allow_mass_removal=True))
    assert (again["counts"]["sent_add"], again["counts"]["sent_remove"]) == (50, 50)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    runs=st.lists(st.sets(st.integers(min_value=0, max_value=60), max_size=40), min_size=1, max_size=5),
    customer_ids=st.booleans(),
)
def test_any_sequence_of_syncs_converges(
    runs: list[set[int]], customer_ids: bool, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """After every run the list and the snapshot equal exactly the latest input, and only the
    difference was sent (hashed e-mails, and clear-text ids with their CRC partitioning)."""
    base = tmp_path_factory.mktemp("snap")
    rule = get_rule("criteo", "customer_id") if customer_ids else CRITEO
    rule = rule.with_options(max_ids_per_chunk=4)
    sender = RecordingSender()
    opts = SyncOptions(allow_mass_removal=True, allow_empty=True)
    previous: set[str] = set()
    for number, members in enumerate(runs):
        raw = [f" User{i}@Example.com " if not customer_ids else f" C-{i} " for i in sorted(members)]
        expected = {f"C-{i}" for i in members} if customer_ids else {sha(f"user{i}@example.com") for i in members}
        calls_before = len(sender.calls)
        run(raw, sender, base, rule=rule, options=opts)
        assert sender.members == expected
        assert stored(base, rule) == sorted(expected, key=lambda v: sort_key(v, not customer_ids))
        new_calls = sender.calls[calls_before:]
        sent = sum(n for op, n in new_calls if op in ("add", "remove"))
        replaced = sum(n for op, n in new_calls if op == "replace")
        if not expected:  # emptying (allowed here) is one explicit clear
            assert [op for op, _ in new_calls] == ["clear"]
        elif number == 0:  # no snapshot yet: a full replace of everything
            assert sent + replaced == len(expected)
        else:  # afterwards exactly the difference, never a replace
            assert replaced == 0 and sent == len(expected ^ previous)
        previous = expected


def test_lost_snapshot_means_full_replace(tmp_path: Path, sender: RecordingSender) -> None:
    run(emails(30), sender, tmp_path)
    SnapshotStore("criteo", "seg-1", tmp_path).location.unlink()
    sender.calls.clear()
    result = run(emails(30), sender, tmp_path)
    assert result["mode"] == "full_replace" and sender.operations[0] == "replace"


def test_corrupt_snapshot_is_refused(tmp_path: Path, sender: RecordingSender) -> None:
    run(emails(30), sender, tmp_path)
    loc = SnapshotStore("criteo", "seg-1", tmp_path).location
    lines = loc.read_text().splitlines()
    loc.write_text("\n".join([lines[0], *reversed(lines[1:])]) + "\n")
    with pytest.raises(SnapshotError, match="not in sorted order"):
        run(emails(30), sender, tmp_path)
    loc.write_text("\n".join(lines[:-3]) + "\n")
    with pytest.raises(SnapshotError, match="truncated"):
        run(emails(30), sender, tmp_path)


def test_vendor_rejected_identifiers_are_counted(tmp_path: Path) -> None:
    bad_hash = sha("user3.name@example3.com")
    sender = RecordingSender(reject=lambda h: h == bad_hash)
    result = run(emails(20), sender, tmp_path)
    assert result["counts"]["vendor_rejected"] == 1 and result["counts"]["sent_add"] == 19


def test_clear_text_customer_ids_sync_incrementally(tmp_path: Path, sender: RecordingSender) -> None:
    rule = get_rule("criteo", "customer_id").with_options(max_ids_per_chunk=7)
    ids = [f" CUST-{i:05d} " for i in range(60)]
    run(ids, sender, tmp_path, rule=rule)
    assert sender.members == {f"CUST-{i:05d}" for i in range(60)}  # retailer ids are sent as given
    result = run([*ids[5:], " NEW-1"], sender, tmp_path, rule=rule)
    assert (result["counts"]["added"], result["counts"]["removed"]) == (1, 5)
    assert sender.members == {f"CUST-{i:05d}" for i in range(5, 60)} | {"NEW-1"}


@pytest.mark.parametrize("workers", [1, 2])
def test_spilled_and_external_sort_paths_give_the_same_answer(tmp_path: Path, workers: int) -> None:
    values = emails(3000) + emails(500)  # 500 duplicates
    rule = SMALL_CHUNKS.with_options(max_ids_per_chunk=1000)

    def dest(sender: RecordingSender, base: Path) -> Destination:
        return Destination("seg", rule, sender, snapshot_for(rule, "seg", base))

    plain = RecordingSender()
    r1 = run_destinations(IterableSource(values), [dest(plain, tmp_path / "a")])["seg"]
    forced = RecordingSender()
    r2 = run_destinations(
        IterableSource(values),
        [dest(forced, tmp_path / "b")],
        workers=workers,
        batch_size=256,
        spill_bytes=4096,  # many spills
        max_partition_bytes=100,  # every partition through the external sort
    )["seg"]
    assert r1["counts"] == r2["counts"]
    assert r1["counts"]["duplicate"] == 500
    assert plain.members == forced.members
    assert stored(tmp_path / "a", rule, "seg") == stored(tmp_path / "b", rule, "seg")
    # second run through the streaming diff
    r3 = run_destinations(IterableSource(values[100:3000]), [dest(forced, tmp_path / "b")], max_partition_bytes=100)[
        "seg"
    ]
    assert (r3["counts"]["added"], r3["counts"]["removed"]) == (0, 100)


def test_snapshot_on_object_storage(sender: RecordingSender) -> None:
    import fsspec
    from airflow.sdk import ObjectStoragePath
    from airflow.sdk.io import attach

    attach("memory", fs=fsspec.filesystem("memory"))
    base = ObjectStoragePath("memory://audience-tests/snapshots")
    run(emails(30), sender, base)  # type: ignore[arg-type]
    store = SnapshotStore("criteo", "seg-1", "memory://audience-tests/snapshots")
    # Airflow 3.1 renders memory URLs with an empty host ("memory:///..."); both name the same object.
    assert str(store.location).replace(":///", "://") == "memory://audience-tests/snapshots/criteo/seg-1/snapshot.txt"
    assert store.read_values() == sorted(sha(v) for v in normalised_emails(30))
    result = run(emails(28), sender, base)  # type: ignore[arg-type]
    assert result["mode"] == "incremental" and result["counts"]["removed"] == 2


def test_default_snapshot_base_is_under_airflow_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("AIRFLOW__AUDIENCE__SNAPSHOT_BASE_PATH", raising=False)
    monkeypatch.setenv("AIRFLOW_HOME", str(tmp_path))
    store = SnapshotStore("criteo", "segment 42/x")
    assert str(store.location).startswith(str(tmp_path / "audience_snapshots" / "criteo" / "segment_42_x-"))
    monkeypatch.setenv("AIRFLOW__AUDIENCE__SNAPSHOT_BASE_PATH", str(tmp_path / "custom"))
    assert SnapshotStore("criteo", "42").location == tmp_path / "custom" / "criteo" / "42" / "snapshot.txt"


# ---- bounded concurrency ------------------------------------------------------------------------


def test_chunks_are_sent_concurrently_when_allowed(tmp_path: Path) -> None:
    # Three add calls must be open at the same time to pass the barrier: proof of concurrency
    # without timing anything (the timeout only keeps a broken engine from hanging the suite).
    barrier = threading.Barrier(3, timeout=10)
    lock = threading.Lock()
    held = {"adds": 0}

    def hold_first_adds(op: str) -> None:
        with lock:  # send threads: an update lost between them would send a 4th add to wait alone
            hold = op == "add" and held["adds"] < 3
            if hold:
                held["adds"] += 1
        if hold:
            barrier.wait()

    sender = RecordingSender(before_call=hold_first_adds)
    result = run(emails(100), sender, tmp_path, options=SyncOptions(send_concurrency=3))
    assert sender.operations[0] == "replace"  # the replace lands before any addition
    assert sender.operations.count("add") == 9
    assert sender.members == {sha(v) for v in normalised_emails(100)}
    assert result["counts"]["chunks_sent"] == 10 and result["counts"]["sent_add"] == 100
    # Removals start only after the additions.
    sender.before_call = None
    run(emails(90, start=10) + emails(5, start=500), sender, tmp_path, options=SyncOptions(send_concurrency=3))
    ops = sender.operations[10:]
    assert ops == ["add", "remove"]


def test_concurrent_failure_stops_and_keeps_the_snapshot(tmp_path: Path) -> None:
    sender = RecordingSender(fail_when=lambda c: c.index == 4)
    with pytest.raises(SendError) as exc:
        run(emails(100), sender, tmp_path, options=SyncOptions(send_concurrency=2))
    counts = exc.value.result["counts"]  # type: ignore[index]
    assert counts["chunks_sent"] < 10 and counts["sent_add"] == 10 * counts["chunks_sent"]
    assert stored(tmp_path) == []


# ---- one read, many destinations ----------------------------------------------------------------


class CountingSource(IterableSource):
    reads = 0

    def iter_batches(self, batch_size: int = 8192) -> Iterator[RawBatch]:
        type(self).reads += 1
        return super().iter_batches(batch_size)


def test_one_read_feeds_several_destinations(tmp_path: Path) -> None:
    criteo, yandex, broken = RecordingSender(), RecordingSender(), RecordingSender(fail_on_call=1)
    clear_sender = RecordingSender()
    yandex_rule = get_rule("yandex_audience", "email")
    clear_rule = CRITEO.with_options(hash_algorithm=HashAlgorithm.NONE)
    dests = [
        Destination("criteo", CRITEO, criteo, snapshot_for(CRITEO, "c1", tmp_path)),
        Destination("yandex", yandex_rule, yandex, snapshot_for(yandex_rule, "y1", tmp_path)),
        Destination("broken", CRITEO, broken, snapshot_for(CRITEO, "c2", tmp_path)),
        # A different profile (clear text, as a vendor option could ask) is fed from the same read.
        Destination("clear", clear_rule, clear_sender, None),
    ]
    CountingSource.reads = 0
    with pytest.raises(SendError, match="broken") as exc:
        run_destinations(CountingSource(emails(150)), dests)
    assert CountingSource.reads == 1
    results = exc.value.result["destinations"]  # type: ignore[index]
    assert results["criteo"]["status"] == results["yandex"]["status"] == "sent"
    assert results["broken"]["status"] == "failed"
    assert clear_sender.members == set(normalised_emails(150))
    # SHA-256 e-mails agree between Criteo and Yandex: same hashes, separate snapshots.
    assert criteo.members == yandex.members and len(criteo.members) == 150
    assert SnapshotStore("criteo", "c1", tmp_path).read_values() == sorted(criteo.members)
    assert SnapshotStore("yandex_audience", "y1", tmp_path).read_values() == sorted(criteo.members)
    assert not SnapshotStore("criteo", "c2", tmp_path).location.exists()


def test_a_blocked_destination_stops_all_before_any_send(tmp_path: Path) -> None:
    a, b = RecordingSender(), RecordingSender()
    yandex_rule = get_rule("yandex_audience", "email")
    dests = [
        Destination("criteo", CRITEO, a, None),
        Destination("yandex", yandex_rule, b, None),  # 50 < 100 entries
    ]
    with pytest.raises(MinimumEntriesError):
        run_destinations(IterableSource(emails(50)), dests)
    assert a.calls == [] and b.calls == []


# ---- the remote list a snapshot describes -------------------------------------------------------


def test_a_snapshot_of_another_remote_list_is_not_diffed_against(tmp_path: Path, sender: RecordingSender) -> None:
    run(emails(30), sender, tmp_path, options=SyncOptions(remote_id="A"))
    store = SnapshotStore(SMALL_CHUNKS.vendor, "seg-1", tmp_path)
    assert store.read_header()["remote_id"] == "A"  # type: ignore[index]
    # The key now names another list (deleted and created again), holding something else.
    other = RecordingSender(members={sha("stranger@example.com")})
    result = run(emails(31), other, tmp_path, options=SyncOptions(remote_id="B"))
    assert result["mode"] == "full_replace"
    assert "describes remote list A, the destination is now B" in result["state"]["full_replace_reason"]
    assert other.members == set(stored(tmp_path)) == {sha(e.strip().lower()) for e in emails(31)}
    assert store.read_header()["remote_id"] == "B"  # type: ignore[index]
    # add to a third list: the input is sent as it is and the state is unknown (no snapshot)
    third = RecordingSender()
    result = run(emails(3, start=100), third, tmp_path, mode="add", options=SyncOptions(remote_id="C"))
    assert result["mode"] == "one_way" and len(third.members) == 3
    assert store.read_header() is None
    assert run(emails(31), third, tmp_path, options=SyncOptions(remote_id="C"))["mode"] == "full_replace"
    # Without a remote id (the key is the vendor's id) nothing is checked.
    assert run(emails(31), third, tmp_path)["mode"] == "noop"


# ---- rule settings recorded beside the rule key ---------------------------------------------------


def _drop_fingerprint(base: Path, rule: Any) -> None:
    """Make the snapshot look written before fingerprints were recorded."""
    path = SnapshotStore(rule.vendor, "seg-1", base).location
    header, rest = path.read_text().split("\n", 1)
    prefix = "#aap-snapshot "
    meta = json.loads(header[len(prefix) :])
    assert meta.pop("rule_fingerprint") == rule.fingerprint
    path.write_text(prefix + json.dumps(meta, sort_keys=True) + "\n" + rest)


def test_a_rule_re_registered_with_other_settings_under_its_version_is_a_full_replace(
    tmp_path: Path, sender: RecordingSender
) -> None:
    import dataclasses

    run(emails(30), sender, tmp_path)
    edited = dataclasses.replace(
        SMALL_CHUNKS, profile=dataclasses.replace(SMALL_CHUNKS.profile, hash_algorithm=HashAlgorithm.MD5)
    )
    assert edited.key == SMALL_CHUNKS.key and edited.fingerprint != SMALL_CHUNKS.fingerprint
    # chunk limits change no value: same fingerprint
    assert dataclasses.replace(SMALL_CHUNKS, max_ids_per_chunk=3).fingerprint == SMALL_CHUNKS.fingerprint
    result = run(emails(30), sender, tmp_path, rule=edited)
    assert result["mode"] == "full_replace"
    assert "other settings under the same key" in result["state"]["full_replace_reason"]
    assert sender.members == set(stored(tmp_path, edited)) and all(len(v) == 32 for v in sender.members)


def test_a_snapshot_without_a_fingerprint_is_trusted_only_for_a_shipped_rule(
    tmp_path: Path, sender: RecordingSender
) -> None:
    import dataclasses

    assert SMALL_CHUNKS.shipped  # the package's rule with options
    run(emails(30), sender, tmp_path)
    _drop_fingerprint(tmp_path, SMALL_CHUNKS)
    assert run(emails(30), sender, tmp_path)["mode"] == "noop"
    # A rule of the user's own (here: another vendor key) may have changed before the upgrade.
    custom = dataclasses.replace(SMALL_CHUNKS, vendor="acme")
    assert not custom.shipped
    other = tmp_path / "custom"
    run(emails(30), sender, other, rule=custom)
    _drop_fingerprint(other, custom)
    result = run(emails(30), sender, other, rule=custom)
    assert (
        result["mode"] == "full_replace" and "records no settings fingerprint" in result["state"]["full_replace_reason"]
    )
    assert run(emails(30), sender, other, rule=custom)["mode"] == "noop"


def test_a_list_that_does_not_exist_yet_is_neither_diffed_against_nor_guarded_by_its_old_snapshot(
    tmp_path: Path, sender: RecordingSender
) -> None:
    """``new_list``: the snapshot under this key is of a list that is gone; the new one is empty."""
    run(emails(30), sender, tmp_path, options=SyncOptions(remote_id="A"))
    # add to the new list: all of the input goes, as a full replace whose state is recorded
    created = RecordingSender()
    result = run(emails(30), created, tmp_path, mode="add", options=SyncOptions(new_list=True))
    assert result["mode"] == "full_replace" and result["state"]["full_replace_reason"]
    assert created.members == set(stored(tmp_path)) == {sha(e.strip().lower()) for e in emails(30)}
    assert result["snapshot_previous_count"] is None
    # a sync of a much smaller list into a new list removes nothing: the removal guard does not count the old one
    fresh = RecordingSender()
    result = run(emails(3, start=100), fresh, tmp_path, options=SyncOptions(new_list=True, full_replace=True))
    assert result["mode"] == "full_replace" and len(fresh.members) == 3
