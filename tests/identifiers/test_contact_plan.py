"""The plan phase's building blocks: the spill files and the de-duplicating sort (property-based).

``sorted_unique`` replaces ``sorted(set(values))`` in the plan phase, and the spill keeps one
segment file per spill instead of one file per partition; both must give exactly what the simple
forms give, on any strings (including non-ASCII and lone surrogates, which the engine writes
with ``surrogatepass``) and for runs that arrive pre-sorted, as the compiled kernel hands them.
"""

from __future__ import annotations

import collections
import hashlib
import itertools
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from airflow_audience_provider.identifiers.fanout import sorted_unique
from airflow_audience_provider.identifiers.hashing import PARTITION_KEYS, partition_of, sort_key
from airflow_audience_provider.identifiers.sorting import PartitionSpill

#: Lines as the engine stores them: no newline inside, anything else allowed.
LINE = st.text(alphabet=st.characters(blacklist_characters="\n", codec=None), max_size=12)
HEX = st.integers(min_value=0, max_value=300).map(lambda i: hashlib.sha256(str(i).encode()).hexdigest())


@settings(max_examples=300)
@given(st.lists(st.one_of(LINE, HEX), max_size=60))
def test_sorted_unique_is_sorted_set(values: list[str]) -> None:
    assert sorted_unique(values) == sorted(set(values))


@settings(max_examples=200)
@given(st.lists(st.lists(HEX, max_size=30), max_size=8))
def test_sorted_unique_of_presorted_runs(runs: list[list[str]]) -> None:
    """Partitions reach the plan as concatenated sorted runs (one per kernel batch)."""
    values = [v for run in runs for v in sorted(run)]
    assert sorted_unique(values) == sorted(set(values))


def _batches(values: list[str], size: int) -> list[dict[str, str]]:
    out = []
    for start in range(0, len(values), max(size, 1)):
        groups: dict[str, list[str]] = {}
        for v in values[start : start + size]:
            groups.setdefault(PARTITION_KEYS[len(v.encode("utf-8", "surrogatepass")) % 7], []).append(v)
        out.append({k: "\n".join(g) for k, g in groups.items()})
    return out


@settings(max_examples=150, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    values=st.lists(st.one_of(LINE, HEX), max_size=80),
    batch=st.integers(min_value=1, max_value=20),
    spill_bytes=st.integers(min_value=1, max_value=400),
    block=st.integers(min_value=1, max_value=64),
)
def test_spill_gives_back_every_value(
    tmp_path_factory, values: list[str], batch: int, spill_bytes: int, block: int
) -> None:
    """Whatever the spill threshold: every value comes back once per time it was added, in its partition,
    both from ``read`` and from ``iter_lines`` (read in blocks that cut lines and UTF-8 sequences)."""
    values = [v for v in values if v]  # the engine never stores an empty output
    directory = Path(tmp_path_factory.mktemp("spill"))
    spill = PartitionSpill(directory, "p", spill_bytes)
    try:
        for part in _batches(values, batch):
            spill.add(part, sum(t.count("\n") + 1 for t in part.values()))
        expected: dict[str, collections.Counter[str]] = {}
        for v in values:
            key = PARTITION_KEYS[len(v.encode("utf-8", "surrogatepass")) % 7]
            expected.setdefault(key, collections.Counter())[v] += 1
        assert spill.count == len(values)
        for key in spill.partition_keys():
            want = expected.get(key, collections.Counter())
            assert collections.Counter(spill.read(key)) == want
            assert collections.Counter(spill.iter_lines(key, block=block)) == want
            assert (spill.partition_bytes(key) > 0) == bool(want)
        # One segment file per spill, not one file per partition.
        assert len(list(directory.iterdir())) <= max(1, len(values))
    finally:
        spill.close()


def test_spill_writes_one_file_per_spill(tmp_path: Path) -> None:
    spill = PartitionSpill(tmp_path, "p", spill_bytes=1)  # every batch spills
    try:
        for i in range(3):
            spill.add({key: f"{key}-{i}" for key in PARTITION_KEYS}, 256)
        assert sorted(p.name for p in tmp_path.iterdir()) == ["p-0.spill", "p-1.spill", "p-2.spill"]
        assert spill.read("3f") == ["3f-0", "3f-1", "3f-2"]
        assert list(spill.iter_lines("ff", block=3)) == ["ff-0", "ff-1", "ff-2"]
    finally:
        spill.close()


def _reference_partitions(lines: list[str], blocks: list[tuple[str, ...]], count: int) -> Any:
    """What a clear-text snapshot reader must give: each block's values (checked value by value), or "refused"."""
    keyed = [(partition_of(v, False), v) for v in lines]
    if not all(lines) or any(a >= b for a, b in itertools.pairwise(keyed)) or len(lines) != count:
        return "refused"
    got, i = [], 0
    for keys in blocks:
        block = []
        for key in keys:
            while i < len(keyed) and keyed[i][0] == key:
                block.append(keyed[i][1])
                i += 1
            if i < len(keyed) and keyed[i][0] < key:
                return "refused"
        got.append(block)
    return got


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    values=st.lists(LINE.filter(bool), min_size=2, max_size=80, unique=True),
    damage=st.sampled_from(["none", "swap", "blank", "duplicate", "truncated", "extra"]),
    at=st.integers(0, 10_000),
    read_bytes=st.sampled_from([5, 40, 1 << 20]),
    cuts=st.lists(st.integers(1, 255), max_size=6),
)
def test_clear_text_snapshot_reader_gives_each_partition_and_refuses_damage(
    tmp_path_factory, monkeypatch, values: list[str], damage: str, at: int, read_bytes: int, cuts: list[int]
) -> None:
    """The reader takes each block's partition keys once and finds a partition by bisection: the
    values and refusals of the value-by-value rule, whatever the read blocks cut (surrogates too)."""
    from airflow_audience_provider.identifiers import snapshot

    monkeypatch.setattr(snapshot, "_READ_BYTES", read_bytes)
    lines = sorted(values, key=lambda v: sort_key(v, False))
    i = at % (len(lines) - 1)
    count = len(lines)
    if damage == "swap":
        lines[i], lines[i + 1] = lines[i + 1], lines[i]
    elif damage == "blank":
        lines.insert(i, "")
    elif damage == "duplicate":
        lines.insert(i, lines[i])
    elif damage == "truncated":
        count += 1
    elif damage == "extra":
        count -= 1
    edges = sorted(set(cuts))
    blocks = [PARTITION_KEYS[lo:hi] for lo, hi in zip([0, *edges], [*edges, 256], strict=True)]
    path = tmp_path_factory.mktemp("snap") / "s.txt"
    path.write_bytes("".join(f"{v}\n" for v in lines).encode("utf-8", "surrogatepass"))
    with open(path, encoding="utf-8", errors="surrogatepass", newline="\n") as fh:
        reader = snapshot.SnapshotReader(fh, hashed=False, origin="s", expected_count=count)
        try:
            got: Any = [[v for key in keys for v in reader.iter_partition(key)] for keys in blocks]
            reader.finish()
        except snapshot.SnapshotError:
            got = "refused"
    assert got == _reference_partitions(lines, blocks, count)
