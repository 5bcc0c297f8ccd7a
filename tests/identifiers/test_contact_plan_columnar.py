"""The columnar plan (digests kept as polars frames from the kernel to the plan) equals the Python plan.

With the ``fast`` extra, hex digests stay columnar: the kernel's frames are buffered or spilled as
Arrow IPC by :class:`~airflow_audience_provider.identifiers.sorting.ColumnarSpill`, and each of its
buckets is de-duplicated by :func:`~airflow_audience_provider.identifiers.sorting.sorted_unique_frame`.
Without it (or with ``AUDIENCE_IDENTIFIERS_KERNEL=python``) the text spill and the Python plan run.
Both must send the same chunks, write the same snapshot and count the same rows, for any input,
spill threshold, batch size, previous snapshot and mode.
"""

from __future__ import annotations

import hashlib
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from airflow_audience_provider.identifiers import fanout, get_rule, kernel, sorting
from airflow_audience_provider.identifiers.chunking import Chunk
from airflow_audience_provider.identifiers.fanout import run_destinations
from airflow_audience_provider.identifiers.hashing import PARTITION_KEYS, partition_of, sort_key
from airflow_audience_provider.identifiers.rules import VendorRule
from airflow_audience_provider.identifiers.snapshot import SnapshotStore
from airflow_audience_provider.identifiers.sorting import (
    ColumnarSpill,
    hex_frame,
    sort_by_prefix,
    sorted_unique_frame,
    sorted_unique_rows,
)
from airflow_audience_provider.identifiers.sources import IterableSource
from airflow_audience_provider.identifiers.sync import ChunkResult, Destination, SyncOptions

pytestmark = pytest.mark.skipif(kernel.load_email_kernel() is None, reason="needs the fast extra (polars)")


@dataclass
class ChunkLog:
    """Records every call with its identifiers in order (the chunks themselves must be equal)."""

    calls: list[tuple[str, int, tuple[str, ...]]] = field(default_factory=list)
    send_concurrency = 1
    transport = None
    remote_id = None

    def unsettled_until(self) -> float:
        return 0.0

    def landing_window(self) -> float:
        return 0.0

    def add(self, chunk: Chunk) -> ChunkResult:
        return self._log("add", chunk)

    def remove(self, chunk: Chunk) -> ChunkResult:
        return self._log("remove", chunk)

    def replace(self, chunk: Chunk) -> ChunkResult:
        return self._log("replace", chunk)

    def clear(self) -> None:
        self.calls.append(("clear", 0, ()))

    def _log(self, op: str, chunk: Chunk) -> ChunkResult:
        self.calls.append((op, chunk.total, tuple(chunk.identifiers)))
        return ChunkResult(len(chunk))


def _dress(i: int, style: int) -> str:
    """One e-mail in a raw form: the same address is written several ways (duplicates after normalising)."""
    forms = [
        f"user{i}@example.com",
        f"  USER{i}@Example.COM\t",
        f"\xa0user{i}@example.com",  # a no-break space: the kernel refuses it, the exact rule takes it
        f"user{i}.example.com",  # invalid
    ]
    return forms[style % len(forms)]


ROWS = st.lists(st.tuples(st.integers(0, 400), st.integers(0, 7)), max_size=300)


def _sync(
    rule: VendorRule, values: list[str], base: Path, work: Path, mode: str, spill_bytes: int, workers: int
) -> tuple[dict[str, Any], list[Any], list[str]]:
    sender = ChunkLog()
    options = SyncOptions(
        allow_mass_removal=True, allow_below_minimum=True, allow_empty=True, max_invalid_share=1.0, lease_timeout=0
    )
    dest = Destination(
        "d", rule, sender, SnapshotStore(rule.vendor, "seg", base), mode=mode, options=options, keep_state=True
    )
    result = run_destinations(
        IterableSource(values), [dest], workers=workers, work_dir=str(work), spill_bytes=spill_bytes, batch_size=16
    )["d"]
    result.pop("snapshot")
    result["state"].pop("lease_token")
    return result, sender.calls, SnapshotStore(rule.vendor, "seg", base).read_values()


def _use(monkeypatch: pytest.MonkeyPatch, path: str) -> None:
    monkeypatch.setenv(kernel.KERNEL_ENV, path)
    kernel.load_email_kernel.cache_clear()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    first=ROWS,
    second=ROWS,
    mode=st.sampled_from(["sync", "add", "remove", "replace"]),
    spill_bytes=st.sampled_from([1, 700, 5000, 32 << 20]),
    workers=st.sampled_from([1, 2]),
    block_rows=st.sampled_from([8, 65536]),
)
def test_columnar_plan_sends_and_stores_what_the_python_plan_does(
    tmp_path_factory: pytest.TempPathFactory,
    monkeypatch: pytest.MonkeyPatch,
    first: list[tuple[int, int]],
    second: list[tuple[int, int]],
    mode: str,
    spill_bytes: int,
    workers: int,
    block_rows: int,
) -> None:
    """A first sync (no snapshot) and a second one in ``mode`` (against the first's snapshot), both ways.

    With two workers the columnar plan computes blocks in two threads; small blocks give many of them.
    """
    monkeypatch.setattr(sorting, "COLUMNAR_BLOCK_ROWS", block_rows)
    rule = get_rule("criteo", "email")
    # Small kernel batches: many frames per list, duplicates across batches, spills between them.
    monkeypatch.setattr(fanout, "KERNEL_BATCH_ROWS", 16)
    monkeypatch.setattr(fanout, "KERNEL_PARALLEL_BATCH_ROWS", 16)
    planned = []
    monkeypatch.setattr(
        fanout, "sorted_unique_rows", lambda pl, frame: planned.append(1) or sorted_unique_rows(pl, frame)
    )
    runs = {}
    for path in ("python", "auto"):
        _use(monkeypatch, path)
        root = tmp_path_factory.mktemp(path)
        base, work = root / "state", root / "work"
        work.mkdir()
        one = _sync(
            rule, [_dress(i, s) for i, s in first], base, work, "sync", spill_bytes, 1 if path == "python" else workers
        )
        two = _sync(
            rule, [_dress(i, s) for i, s in second], base, work, mode, spill_bytes, 1 if path == "python" else workers
        )
        runs[path] = (one, two)
    monkeypatch.delenv(kernel.KERNEL_ENV)
    kernel.load_email_kernel.cache_clear()
    assert runs["auto"] == runs["python"]
    assert planned  # the columnar plan ran


@pytest.mark.parametrize(
    ("rule_key", "make"),
    [
        (("yandex_audience", "sha256"), lambda i: hashlib.sha256(str(i % 150).encode()).hexdigest().upper()),
        (("yandex_audience", "mac"), lambda i: f"ae:12:34:56:{i % 150 // 256:02x}:{i % 150 % 256:02x}"),
        (("criteo", "maid"), lambda i: f"6d92078a-8246-4ba4-ae5b-{i % 150:012x}"),
        # phones: the kernel decides some invalid rows itself (with the exact rule's reason)
        (("criteo", "phone"), lambda i: f"+7 999 {i % 150:03d}-45-67" if i % 9 else f"+7 12{i % 150}"),
    ],
)
def test_columnar_plan_of_other_digest_rules(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, rule_key: tuple[str, str], make: Any
) -> None:
    """Pre-hashed values, MACs and MAIDs (with duplicates and spills) give the same plan both ways."""
    rule = get_rule(*rule_key)
    monkeypatch.setattr(fanout, "KERNEL_BATCH_ROWS", 32)
    values = [make(i) for i in range(400)] + ["not valid"]
    runs = {}
    for path in ("python", "auto"):
        _use(monkeypatch, path)
        (tmp_path / path / "work").mkdir(parents=True)
        runs[path] = _sync(rule, values, tmp_path / path / "state", tmp_path / path / "work", "sync", 3000, 1)
    monkeypatch.delenv(kernel.KERNEL_ENV)
    kernel.load_email_kernel.cache_clear()
    assert runs["auto"] == runs["python"]
    assert runs["auto"][0]["counts"]["duplicate"] > 200


#: Digests that share their first PREFIX_DIGITS hex digits (the columnar sort key) and differ after it.
COLLIDING = st.lists(
    st.tuples(
        st.sampled_from([c * kernel.PREFIX_DIGITS for c in "07f"]),
        st.text(alphabet="0123456789abcdef", min_size=64 - kernel.PREFIX_DIGITS, max_size=64 - kernel.PREFIX_DIGITS),
    ),
    max_size=40,
).map(lambda pairs: [a + b for a, b in pairs])
HEX = st.integers(0, 200).map(lambda i: hashlib.sha256(str(i).encode()).hexdigest())


@settings(max_examples=200)
@given(st.lists(HEX, max_size=60), COLLIDING)
def test_sorted_unique_frame_is_sorted_set(values: list[str], colliding: list[str]) -> None:
    """Exact even where different digests share the 48-bit prefix the frame is sorted by."""
    pl = kernel.load_email_kernel().polars  # type: ignore[union-attr]
    values = values + colliding + colliding[:3]
    assert sorted_unique_frame(pl, hex_frame(pl, values)).to_list() == sorted(set(values))
    rows = sorted_unique_rows(pl, hex_frame(pl, values))
    assert rows.get_column("p").to_list() == [int(h[: kernel.PREFIX_DIGITS], 16) for h in sorted(set(values))]


@settings(max_examples=200)
@given(
    st.lists(st.one_of(HEX, COLLIDING.map(lambda v: v[0] if v else "0" * 64)), max_size=80),
    st.sampled_from([0, 1, 2, 7, 255]),
)
def test_sort_by_prefix_is_a_stable_sort_by_p(values: list[str], partitions: int) -> None:
    """The packed integer sort of the read workers orders rows as a stable sort by ``p`` would,
    for digest prefixes (equal ones too) and for clear-text partition numbers (few distinct ``p``)."""
    pl = kernel.load_email_kernel().polars  # type: ignore[union-attr]
    digests = pl.DataFrame(
        [
            pl.Series("p", [int(v[: kernel.PREFIX_DIGITS], 16) for v in values], dtype=pl.Int64),
            pl.Series("h", values, dtype=pl.String),
        ]
    )
    clear = pl.DataFrame(
        [
            pl.Series(
                "p",
                [(i * 37 % (partitions + 1)) << sorting.PARTITION_SHIFT for i in range(len(values))],
                dtype=pl.Int64,
            ),
            pl.Series("h", [f"id{i}" for i in range(len(values))], dtype=pl.String),
        ]
    )
    for frame in (digests, clear):
        got = sort_by_prefix(pl, frame)
        assert got.rows() == frame.sort("p", maintain_order=True).rows()
        assert got.schema == frame.schema


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    batches=st.lists(st.lists(HEX, max_size=50), max_size=8),
    spill_bytes=st.sampled_from([1, 2000, 32 << 20]),
    keep_bytes=st.sampled_from([None, 0, 5000]),
    block_rows=st.sampled_from([1, 20, 65536]),
    reverse=st.booleans(),
    workers=st.sampled_from([1, 2, 3]),
)
def test_spill_blocks_give_back_every_value_once_in_key_order(
    tmp_path_factory: pytest.TempPathFactory,
    monkeypatch: pytest.MonkeyPatch,
    batches: list[list[str]],
    spill_bytes: int,
    keep_bytes: int | None,
    block_rows: int,
    reverse: bool,
    workers: int,
) -> None:
    """Whatever was spilled or kept, and in whatever order a batch's rows came (the kernel does not
    order them), however many plan threads the blocks are cut for: blocks cover the 256 partitions
    once, in order, each value in its partition."""
    pl = kernel.load_email_kernel().polars  # type: ignore[union-attr]
    monkeypatch.setattr(sorting, "COLUMNAR_BLOCK_ROWS", block_rows)
    spill = ColumnarSpill(pl, tmp_path_factory.mktemp("spill"), "p", spill_bytes, keep_bytes)
    try:
        for values in batches:
            frame = hex_frame(pl, values)
            spill.add_frame(frame.reverse() if reverse else frame, len(values))
        spill.finish()
        keys: list[str] = []
        got: list[str] = []
        for block_keys, frame in spill.blocks(workers):
            assert frame.height <= block_rows or len(block_keys) == 1
            assert all(h[:2] in block_keys for h in frame.get_column("h").to_list())
            keys.extend(block_keys)
            got.extend(frame.get_column("h").to_list())
        assert tuple(keys) == PARTITION_KEYS
        assert sorted(got) == sorted(v for values in batches for v in values)
        assert spill.count == sum(map(len, batches))
    finally:
        spill.close()


@pytest.mark.parametrize(
    ("rows", "workers", "blocks"), [(3000, 2, 6), (2000, 2, 4), (3000, 3, 6), (1000, 2, 2), (3000, 1, 5)]
)
def test_spill_blocks_of_a_short_list_balance_the_plan_threads(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, rows: int, workers: int, blocks: int
) -> None:
    """A list of a few blocks is cut into a multiple of the threads' count of blocks of about equal
    size (within a partition or two), not into full blocks and a remainder; one thread keeps full blocks."""
    pl = kernel.load_email_kernel().polars  # type: ignore[union-attr]
    monkeypatch.setattr(sorting, "COLUMNAR_BLOCK_ROWS", 700)
    values = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(rows)]
    spill = ColumnarSpill(pl, tmp_path, "p", 32 << 20, None)
    try:
        spill.add_frame(hex_frame(pl, values), len(values))
        spill.finish()
        sizes = [frame.height for _, frame in spill.blocks(workers)]
    finally:
        spill.close()
    assert len(sizes) == blocks and sum(sizes) == rows
    if workers > 1:
        assert max(sizes) - min(sizes) <= 2 * 3 * rows // 256  # a partition holds ~rows/256 values


def test_spill_keeps_a_list_below_its_budget_in_memory_and_spills_the_rest_in_segments(tmp_path: Path) -> None:
    """Nothing reaches disk while the list is below ``keep_bytes``; past it, segments of ``spill_bytes``."""
    pl = kernel.load_email_kernel().polars  # type: ignore[union-attr]
    values = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(100)]
    batches = [values[i : i + 10] for i in range(0, 100, 10)]
    kept = ColumnarSpill(pl, tmp_path / "kept", "p", spill_bytes=65 * 20, keep_bytes=65 * 200)
    spilled = ColumnarSpill(pl, tmp_path / "spilled", "p", spill_bytes=65 * 20, keep_bytes=65 * 55)
    for spill in (kept, spilled):
        spill.directory.mkdir()
        try:
            for i, batch in enumerate(batches):
                spill.add_frame(hex_frame(pl, batch), len(batch))
                if spill is spilled and i == 4:  # 50 values, below 55
                    assert not list(spill.directory.iterdir())
            spill.finish()
            files = sorted(spill.directory.iterdir())
            got = [h for _, frame in spill.blocks() for h in sorted(frame.get_column("h").to_list())]
            assert got == sorted(values)
        finally:
            spill.close()
        # the first spill (60 values) in segments of 20, then the last 40 values in two more
        assert len(files) == (0 if spill is kept else 5)


def test_fan_out_and_batches_the_kernel_cannot_hold_plan_the_same_both_ways(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two destinations of one profile (one diffed against its snapshot, one full replace), and a batch
    with a lone surrogate (the kernel raises, the batch takes the Python path and reaches the columnar
    spill as text)."""
    monkeypatch.setattr(fanout, "KERNEL_BATCH_ROWS", 32)
    first = [_dress(i, i) for i in range(300)]
    second = [_dress(i, i // 3) for i in range(100, 420)] + ["b\udcff@example.com"]
    options = SyncOptions(allow_mass_removal=True, max_invalid_share=1.0, lease_timeout=0)
    texts: list[int] = []
    add_text = ColumnarSpill.add
    monkeypatch.setattr(
        ColumnarSpill, "add", lambda self, parts, count: texts.append(1) or add_text(self, parts, count)
    )
    runs = {}
    for path in ("python", "auto"):
        _use(monkeypatch, path)
        work = tmp_path / path / "work"
        work.mkdir(parents=True)
        outcome = []
        for values in (first, second):
            senders = {"criteo": ChunkLog(), "yandex": ChunkLog()}
            dests = [
                Destination(
                    "criteo",
                    get_rule("criteo", "email"),
                    senders["criteo"],
                    SnapshotStore("criteo", "seg", tmp_path / path / "state"),
                    options=options,
                ),
                Destination("yandex", get_rule("yandex_audience", "email"), senders["yandex"], None, options=options),
            ]
            results = run_destinations(IterableSource(values), dests, work_dir=str(work), spill_bytes=2000)
            for r in results.values():
                r.pop("snapshot")
                r["state"].pop("lease_token")
            outcome.append((results, {k: s.calls for k, s in senders.items()}))
        outcome.append(SnapshotStore("criteo", "seg", tmp_path / path / "state").read_values())
        runs[path] = outcome
    monkeypatch.delenv(kernel.KERNEL_ENV)
    kernel.load_email_kernel.cache_clear()
    assert runs["auto"] == runs["python"]
    assert runs["auto"][1][0]["criteo"]["mode"] == "incremental"
    assert runs["auto"][1][0]["yandex"]["mode"] == "full_replace"
    assert texts == [1]  # the surrogate's batch reached the columnar spill as text


@settings(max_examples=200)
@given(
    st.lists(HEX, max_size=60),
    st.lists(HEX, max_size=60),
    COLLIDING,
    COLLIDING,
)
def test_columnar_diff_is_the_set_difference(
    new: list[str], old: list[str], more_new: list[str], more_old: list[str]
) -> None:
    """Values only in the new list and only in the old one, also where different digests share the
    48-bit prefix the lists are matched by (in one list, or across the two)."""
    pl = kernel.load_email_kernel().polars  # type: ignore[union-attr]
    a, b = sorted(set(new + more_new)), sorted(set(old + more_old))
    rows = sorted_unique_rows(pl, hex_frame(pl, a))
    adds, removes = fanout._merge_diff_columns(
        rows.get_column("h"), rows.get_column("p"), pl.Series(b, dtype=pl.String)
    )
    assert adds.to_list() == sorted(set(a) - set(b))
    assert removes.to_list() == sorted(set(b) - set(a))


def _snapshot_text(values: list[str]) -> str:
    return "".join(f"{v}\n" for v in values)


SNAPSHOT_DAMAGE = st.sampled_from(["none", "swap", "blank", "duplicate", "outside", "short", "truncated", "extra"])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    values=st.lists(HEX, min_size=2, max_size=80, unique=True).map(sorted),
    damage=SNAPSHOT_DAMAGE,
    at=st.integers(0, 10_000),
    read_bytes=st.sampled_from([7, 65, 200, 4 << 20]),
    cuts=st.lists(st.integers(1, 255), max_size=6),
)
def test_columnar_snapshot_reader_reads_and_refuses_what_the_python_reader_does(
    tmp_path_factory: pytest.TempPathFactory,
    monkeypatch: pytest.MonkeyPatch,
    values: list[str],
    damage: str,
    at: int,
    read_bytes: int,
    cuts: list[int],
) -> None:
    """Blocks of partitions read in polars give each partition's values; a damaged snapshot (out of
    order, a blank line, a value in no partition, fewer values than the header says) is refused."""
    from airflow_audience_provider.identifiers import snapshot

    pl = kernel.load_email_kernel().polars  # type: ignore[union-attr]
    monkeypatch.setattr(snapshot, "_COLUMNAR_READ_BYTES", read_bytes)
    lines = list(values)
    i = at % (len(lines) - 1)
    count = len(lines)
    if damage == "swap":
        lines[i], lines[i + 1] = lines[i + 1], lines[i]
    elif damage == "blank":
        lines.insert(i, "")
    elif damage == "duplicate":
        lines.insert(i, lines[i])
    elif damage == "outside":  # between two partitions' keys: no partition holds it
        lines.append("fg" + "0" * 62)
    elif damage == "short":
        lines.insert(0, "0")
    elif damage == "truncated":
        count += 1
    elif damage == "extra":
        lines.append("zz")
    path = tmp_path_factory.mktemp("snap") / "s.txt"
    path.write_text(_snapshot_text(lines))
    edges = sorted(set(cuts))
    blocks = [PARTITION_KEYS[lo:hi] for lo, hi in zip([0, *edges], [*edges, 256], strict=True)]

    def read(columnar: bool) -> Any:
        with open(path, encoding="utf-8", errors="surrogatepass", newline="\n") as fh:
            reader = snapshot.SnapshotReader(fh, hashed=True, origin="s", expected_count=count)
            try:
                if columnar:
                    col = snapshot.ColumnarSnapshotReader(pl, reader)
                    got = [col.take(keys).to_list() for keys in blocks]
                    col.finish()
                else:
                    got = [[v for key in keys for v in reader.iter_partition(key)] for keys in blocks]
                    reader.finish()
            except snapshot.SnapshotError:
                return "refused"
        return got

    python = read(False)
    assert read(True) == python
    assert (python == "refused") == (damage != "none")


# --- clear text (customer ids, ClientIDs): the columnar plan sorts by partition, then by value ---

#: Ids that share long prefixes, are prefixes of one another, hold non-ASCII characters of 2 to 4
#: UTF-8 bytes, and differ only in their last characters.
CLEAR_ID = st.one_of(
    st.text(alphabet="aAz09-\u00e9\u0436\u4e2d\U0001f600", min_size=1, max_size=6),
    st.text(alphabet="0123456789", max_size=4).map(lambda s: "CUST-0000" + s),
    st.text(alphabet="\u00e9\u00ea\U0001f600", min_size=1, max_size=3).map(lambda s: "\u0436" + s),
)


def _dress_clear(value: str, style: int) -> str:
    """One id in a raw form: blanks around (a duplicate once trimmed), a no-break space (the kernel
    refuses it, the exact rule trims it), or invalid (empty, a control character)."""
    forms = [value, value, f"  {value}\t", f"\xa0{value}", "", f"{value}\x01"]
    return forms[style % len(forms)]


CLEAR_ROWS = st.lists(st.tuples(CLEAR_ID, st.integers(0, 11)), max_size=120)
CLEAR_ENDS = ("", "0", "00", "\u00e9", "\U0001f600", "a")


@dataclass
class IndexedChunkLog(ChunkLog):
    """:class:`ChunkLog` that also records each chunk's index."""

    def _log(self, op: str, chunk: Chunk) -> ChunkResult:
        self.calls.append((op, chunk.index, chunk.total, tuple(chunk.identifiers)))  # type: ignore[arg-type]
        return ChunkResult(len(chunk))


def _sync_clear(
    rule: VendorRule, values: list[str], base: Path, work: Path, mode: str, spill_bytes: int, workers: int
) -> tuple[dict[str, Any], list[Any], bytes]:
    """One sync; its result, the sender's calls and the stored snapshot's bytes after the header."""
    sender = IndexedChunkLog()
    options = SyncOptions(
        allow_mass_removal=True, allow_below_minimum=True, allow_empty=True, max_invalid_share=1.0, lease_timeout=0
    )
    store = SnapshotStore(rule.vendor, "seg", base)
    dest = Destination("d", rule, sender, store, mode=mode, options=options, keep_state=True)
    result = run_destinations(
        IterableSource(values), [dest], workers=workers, work_dir=str(work), spill_bytes=spill_bytes, batch_size=16
    )["d"]
    result.pop("snapshot")
    result["state"].pop("lease_token")
    data = store.location.read_bytes().split(b"\n", 1)[1] if store.location.exists() else b""
    return result, sender.calls, data


def _both_ways(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path_factory: pytest.TempPathFactory,
    rule: VendorRule,
    lists: list[tuple[list[str], str]],
    spill_bytes: int,
    workers: int,
) -> dict[str, list[Any]]:
    """The syncs of ``lists`` (values, mode) one after the other, on the Python path and on the kernel's."""
    runs = {}
    for path in ("python", "auto"):
        _use(monkeypatch, path)
        root = tmp_path_factory.mktemp(path)
        (root / "work").mkdir()
        runs[path] = [
            _sync_clear(
                rule, values, root / "state", root / "work", mode, spill_bytes, 1 if path == "python" else workers
            )
            for values, mode in lists
        ]
    monkeypatch.delenv(kernel.KERNEL_ENV)
    kernel.load_email_kernel.cache_clear()
    return runs


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    first=CLEAR_ROWS,
    second=CLEAR_ROWS,
    first_mode=st.sampled_from(["sync", "add", "remove"]),
    mode=st.sampled_from(["sync", "add", "remove", "replace"]),
    spill_bytes=st.sampled_from([1, 300, 32 << 20]),
    workers=st.sampled_from([1, 2]),
    block_rows=st.sampled_from([8, 65536]),
    limits=st.sampled_from([(None, None), (3, None), (None, 40), (5, 60)]),
)
def test_clear_text_columnar_plan_sends_and_stores_what_the_python_plan_does(
    tmp_path_factory: pytest.TempPathFactory,
    monkeypatch: pytest.MonkeyPatch,
    first: list[tuple[str, int]],
    second: list[tuple[str, int]],
    first_mode: str,
    mode: str,
    spill_bytes: int,
    workers: int,
    block_rows: int,
    limits: tuple[int | None, int | None],
) -> None:
    """Customer ids: a first sync without a snapshot (full replace, or one-way add/remove that keeps
    none), then one in ``mode``; the same results, chunks (with their indices) and snapshot bytes."""
    monkeypatch.setattr(sorting, "COLUMNAR_BLOCK_ROWS", block_rows)
    monkeypatch.setattr(sorting, "CRC_COLUMN_MIN_ROWS", 0)  # partitions taken in polars, as in large batches
    monkeypatch.setattr(fanout, "KERNEL_BATCH_ROWS", 16)
    monkeypatch.setattr(fanout, "KERNEL_PARALLEL_BATCH_ROWS", 16)
    planned: list[int] = []
    plan = sorting.sorted_unique_clear_frame
    monkeypatch.setattr(fanout, "sorted_unique_clear_frame", lambda *a: planned.append(1) or plan(*a))
    max_ids, max_bytes = limits
    rule = get_rule("criteo", "customer_id").with_options(max_ids_per_chunk=max_ids, max_bytes_per_chunk=max_bytes)
    # each row gives a family of ids (prefixes of one another), so partitions hold several values
    lists = [
        ([_dress_clear(v + end, s) for v, s in rows for end in CLEAR_ENDS], m)
        for rows, m in ((first, first_mode), (second, mode))
    ]
    runs = _both_ways(monkeypatch, tmp_path_factory, rule, lists, spill_bytes, workers)
    assert runs["auto"] == runs["python"]
    assert planned or not any(r[0]["counts"]["unique"] for r in runs["auto"])  # the columnar plan ran


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    first=st.lists(st.tuples(st.integers(0, 10**20), st.integers(0, 4)), max_size=120),
    second=st.lists(st.tuples(st.integers(0, 10**20), st.integers(0, 4)), max_size=120),
    spill_bytes=st.sampled_from([1, 32 << 20]),
)
def test_client_id_columnar_plan_sends_and_stores_what_the_python_plan_does(
    tmp_path_factory: pytest.TempPathFactory,
    monkeypatch: pytest.MonkeyPatch,
    first: list[tuple[int, int]],
    second: list[tuple[int, int]],
    spill_bytes: int,
) -> None:
    """ClientIDs of every length (leading zeros and zero go to the exact rule), in files of a few values."""
    monkeypatch.setattr(fanout, "KERNEL_BATCH_ROWS", 16)
    monkeypatch.setattr(sorting, "CRC_COLUMN_MIN_ROWS", 0)
    rule = get_rule("yandex_audience", "client_id").with_options(max_bytes_per_chunk=80)

    def dress(n: int, style: int) -> str:
        return [str(n), str(n), f" {n} ", f"0{n}", f"x{n}"][style]

    lists = [([dress(n, s) for n, s in rows], "sync") for rows in (first, second)]
    runs = _both_ways(monkeypatch, tmp_path_factory, rule, lists, spill_bytes, 2)
    assert runs["auto"] == runs["python"]


@settings(max_examples=200, deadline=None)
@given(st.lists(CLEAR_ID, max_size=80), st.integers(0, 3))
def test_sorted_unique_clear_frame_is_the_snapshot_order(values: list[str], pieces: int) -> None:
    """By partition (the CRC-32 of the UTF-8 bytes), then by code point, each value once, whatever
    order and however many pieces the rows come in."""
    pl = kernel.load_email_kernel().polars  # type: ignore[union-attr]
    values = values + values[: len(values) // 2]
    frames = [sorting.clear_frame(pl, values[i :: pieces + 1]) for i in range(pieces + 1)]
    edges = pl.Series([k << sorting.PARTITION_SHIFT for k in range(256)], dtype=pl.Int64)
    got = sorting.sorted_unique_clear_frame(pl, pl.concat(frames), edges)
    want = sorted(set(values), key=lambda v: sort_key(v, False))
    assert got.get_column("h").to_list() == want
    assert [int(p) >> sorting.PARTITION_SHIFT for p in got.get_column("p").to_list()] == [
        int(partition_of(v, False), 16) for v in want
    ]


@pytest.mark.parametrize("spill_bytes", [1, 32 << 20])
@pytest.mark.parametrize("where", ["first batch", "last batch", "kernel refused"])
def test_clear_text_polars_cannot_hold_goes_to_the_python_plan(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch, spill_bytes: int, where: str
) -> None:
    """A customer id with a lone surrogate (the exact rule keeps it; polars cannot hold it) moves
    what the columnar spill holds, in memory or spilled, to the text spill: the Python plan runs."""
    monkeypatch.setattr(fanout, "KERNEL_BATCH_ROWS", 16)
    odd = "\xa0id\udcff" if where == "kernel refused" else "id\udcff"
    values = [f"c{i % 70}" for i in range(200)]
    values.insert(0 if where == "first batch" else len(values), odd)
    moved: list[int] = []
    to_text = ColumnarSpill._to_text
    monkeypatch.setattr(ColumnarSpill, "_to_text", lambda self: moved.append(1) or to_text(self))
    rule = get_rule("criteo", "customer_id").with_options(max_ids_per_chunk=40)
    second = values[50:] if odd in values[50:] else [odd, *values[50:]]
    runs = _both_ways(monkeypatch, tmp_path_factory, rule, [(values, "sync"), (second, "sync")], spill_bytes, 1)
    assert runs["auto"] == runs["python"]
    assert moved == [1, 1]
    assert runs["auto"][0][2].decode("utf-8", "surrogatepass").count("id\udcff") == 1


def test_clear_text_without_the_fast_extra(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where polars cannot be imported the kernel is off and the Python plan gives the same sync."""
    values = [f" c{i % 90}\xe9 " for i in range(300)] + ["", "CUST-1", "CUST-10"]
    rule = get_rule("criteo", "customer_id").with_options(max_ids_per_chunk=25)
    runs = {}
    for name in ("without polars", "auto"):
        with monkeypatch.context() as m:
            if name == "without polars":
                m.setitem(sys.modules, "polars", None)  # import polars raises ImportError
            kernel.load_email_kernel.cache_clear()
            assert (kernel.load_email_kernel() is None) is (name == "without polars")
            root = tmp_path_factory.mktemp("extra")
            (root / "work").mkdir()
            runs[name] = [
                _sync_clear(rule, vals, root / "state", root / "work", "sync", 500, 1)
                for vals in (values, [*values[:50], "new"])
            ]
    kernel.load_email_kernel.cache_clear()
    assert runs["auto"] == runs["without polars"]
    assert runs["auto"][1][0]["mode"] == "incremental"
