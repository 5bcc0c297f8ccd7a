"""Benchmark of the contact-list engine (``make bench``).

Run: ``.venv/bin/python benchmarks/bench_contact_list.py`` (add ``--quick`` for a smoke run).

Synthetic data (generated here, deterministic): e-mails in mixed case with blanks around them,
about 1% invalid rows and 1% duplicates (same address, other case and blanks). Reports:

1. throughput as a ratio to a bare ``hashlib.sha256(s.encode()).hexdigest()`` loop over the same
   strings, measured in the same run (interleaved, best of several repeats, so a busy machine
   slows both sides alike):

   * *pipeline*: normalise, validate, hash, chunk (read phase of the engine plus cutting the
     hashes into 50,000-identifier chunks), one worker and ``--workers`` workers;
   * *full engine*: the same plus de-duplication, snapshot diff, the snapshot file and handing
     every chunk to a no-op sender (everything a real sync does except the network);

   each for the engine as installed (the compiled kernel of the ``fast`` extra when polars and
   polars-hash are importable; parallel workers are then threads of one process) and for the
   pure-Python path (``AUDIENCE_IDENTIFIERS_KERNEL=python``; parallel workers are processes);

2. peak memory (``VmHWM`` of a fresh subprocess per size) of a full engine run over 1M and
   10M rows streamed from a generator, and the ratio of the two;
3. incremental sync of a 1M list where 1% of the members were replaced: identifiers sent divided
   by the true difference.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from airflow_audience_provider.identifiers import kernel
from airflow_audience_provider.identifiers.chunking import Chunk, FixedWidthChunker
from airflow_audience_provider.identifiers.fanout import iter_processed, run_destinations
from airflow_audience_provider.identifiers.hashing import process_batch, uses_kernel
from airflow_audience_provider.identifiers.rules import get_rule
from airflow_audience_provider.identifiers.sources import DEFAULT_BATCH_SIZE, IterableSource
from airflow_audience_provider.identifiers.sync import ChunkResult, Destination, snapshot_for

RULE = get_rule("criteo", "email")
_FIRST = ["anna", "Boris", "CLARA", "dmitry", "Eve", "fedor", "Galina", "ivan", "Julia", "KIRILL"]
_DOMAINS = ["example.com", "Mail.RU", "yandex.ru", "GMAIL.com", "corp.example.org", "Inbox.Lv"]
_PAD = ["", " ", "  ", "\t", " \t"]


def synthetic_emails(n: int, start: int = 0) -> Iterator[str]:
    """Deterministic raw e-mails: ~1% invalid, ~1% duplicates, mixed case, blanks around."""
    for i in range(start, start + n):
        r = i % 100
        if r == 37:
            yield f"{_FIRST[i % 10]}.{i}.example.com"  # no @: invalid
            continue
        j = i - 50 if r == 73 and i >= 50 else i  # duplicate of an earlier row, dressed differently
        name = _FIRST[j % 10]
        local = f"{name}.{j}" if i == j else f"{name.upper()}.{j}"
        yield f"{_PAD[i % 5]}{local}@{_DOMAINS[j % 6]}{_PAD[(i + 2) % 5]}"


class NullSender:
    """Accepts every chunk and counts; keeps no identifiers (so memory shows the engine only)."""

    def __init__(self) -> None:
        self.added = 0
        self.removed = 0
        self.requests = 0

    def add(self, chunk: Chunk) -> ChunkResult:
        self.added += len(chunk)
        self.requests += 1
        return ChunkResult(len(chunk))

    def replace(self, chunk: Chunk) -> ChunkResult:
        return self.add(chunk)

    def remove(self, chunk: Chunk) -> ChunkResult:
        self.removed += len(chunk)
        self.requests += 1
        return ChunkResult(len(chunk))

    def clear(self) -> None:
        self.requests += 1


def bare_loop(values: list[str]) -> None:
    for s in values:
        hashlib.sha256(s.encode()).hexdigest()


def pipeline(values: list[str], workers: int) -> int:
    """Normalise, validate, hash, chunk: the engine's read phase plus cutting its output in chunks.

    Both modes run the engine's own read path (``fanout.iter_processed``: source batches, then
    ``hashing.process_batch`` in this thread or in ``workers`` parallel workers, which are threads
    with the compiled kernel and processes without; outputs partitioned by hash prefix) and cut
    the hashes into vendor chunks of 50,000 with the engine's chunker for fixed-length values
    (offsets into the text, as for the engine's file-backed chunks).
    No de-duplication or snapshot diff: that is what ``full_engine`` adds.
    """
    chunker = FixedWidthChunker(RULE)
    chunks = 0
    for _batch, outs in iter_processed(IterableSource(values), (RULE.profile,), DEFAULT_BATCH_SIZE, workers):
        for _chunk in chunker.feed(outs[0].partitions.values()):
            chunks += 1
    for _chunk in chunker.finish():
        chunks += 1
    return chunks


def full_engine(values: Any, workers: int, work_dir: str) -> dict[str, Any]:
    sender = NullSender()
    dest = Destination("bench", RULE, sender, None)
    result = run_destinations(IterableSource(values), [dest], workers=workers, work_dir=work_dir)["bench"]
    return result


def best_time(fn: Callable[[], Any], repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def set_kernel(choice: str) -> bool:
    """Select the per-batch step (``auto`` or ``python``); True when the compiled kernel is in use."""
    os.environ[kernel.KERNEL_ENV] = choice
    kernel.load_email_kernel.cache_clear()
    return uses_kernel(RULE.profile)


def measure_throughput(n: int, workers: int, repeat: int, work_dir: str) -> dict[str, Any]:
    values = list(synthetic_emails(n))
    timings: dict[str, float] = {}
    paths = {"installed": "auto", "python": "python"}
    kernel_in_use = set_kernel("auto")
    if not kernel_in_use:
        paths.pop("python")  # without the fast extra the installed engine is the Python path
    cases: dict[str, tuple[str, Callable[[], Any]]] = {"bare_sha256_loop": ("auto", lambda: bare_loop(values))}
    for label, choice in paths.items():
        prefix = "" if label == "installed" else "python_path."
        cases[f"{prefix}pipeline_1_worker"] = (choice, lambda: pipeline(values, 1))
        cases[f"{prefix}pipeline_{workers}_workers"] = (choice, lambda: pipeline(values, workers))
        cases[f"{prefix}full_engine_1_worker"] = (choice, lambda: full_engine(values, 1, work_dir))
        cases[f"{prefix}full_engine_{workers}_workers"] = (choice, lambda: full_engine(values, workers, work_dir))
    # Interleave the cases so load from other processes on the machine hits all of them.
    for _ in range(repeat):
        for name, (choice, fn) in cases.items():
            set_kernel(choice)
            timings[name] = min(timings.get(name, float("inf")), best_time(fn, 1))
    set_kernel("auto")
    base = timings["bare_sha256_loop"]
    return {
        "rows": n,
        "engine": "compiled kernel (polars + polars-hash), parallel workers are threads"
        if kernel_in_use
        else "pure Python, parallel workers are processes",
        "seconds": {k: round(v, 3) for k, v in timings.items()},
        "ratio_to_bare_loop": {k: round(base / v, 2) for k, v in timings.items() if k != "bare_sha256_loop"},
    }


def _proc_status_mib(field: str) -> float | None:
    """A memory field of /proc/self/status (Linux) in MiB, or None elsewhere."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return None


def child_memory(n: int, workers: int) -> None:
    """Run in a fresh process: one full engine run over n streamed rows; print peak memory.

    ``VmHWM`` (peak RSS of this process image) is used where available: ``ru_maxrss`` survives
    ``exec`` on Linux and would report the parent's size if the parent was bigger.
    """
    before = _proc_status_mib("VmRSS")
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        result = full_engine(synthetic_emails(n), workers, tmp)
        seconds = time.perf_counter() - t
    peak = _proc_status_mib("VmHWM")
    if peak is None:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    report = {
        "rows": n,
        "peak_rss_mib": round(peak, 1),
        "rss_before_run_mib": round(before, 1) if before is not None else None,
        "seconds": round(seconds, 1),
        "unique": result["counts"]["unique"],
    }
    print(json.dumps(report))


def measure_memory(sizes: list[int], workers: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for n in sizes:
        proc = subprocess.run(
            [sys.executable, __file__, "--child-memory", str(n), "--workers", str(workers)],
            check=True,
            capture_output=True,
            text=True,
        )
        out[str(n)] = json.loads(proc.stdout.strip().splitlines()[-1])
    if len(sizes) >= 2:
        small, big = out[str(sizes[0])], out[str(sizes[-1])]
        out["ratio_peak_largest_to_smallest"] = round(big["peak_rss_mib"] / small["peak_rss_mib"], 2)
    return out


def measure_incremental(n: int, work_dir: str) -> dict[str, Any]:
    """Full sync of n rows, then a sync where 1% of the members were replaced by new ones."""
    base = Path(work_dir) / "snapshots"
    rule = RULE
    first = NullSender()
    run_destinations(
        IterableSource(synthetic_emails(n)),
        [Destination("seg", rule, first, snapshot_for(rule, "bench", base))],
        work_dir=work_dir,
    )
    changed = n // 100
    # Drop the first `changed` rows, append `changed` rows never seen before.
    second_input = _chain(synthetic_emails(n - changed, start=changed), synthetic_emails(changed, start=10 * n))
    second = NullSender()
    t = time.perf_counter()
    result = run_destinations(
        IterableSource(second_input),
        [Destination("seg", rule, second, snapshot_for(rule, "bench", base))],
        work_dir=work_dir,
    )["seg"]
    seconds = time.perf_counter() - t
    true_added = len(_unique_hashes(synthetic_emails(changed, start=10 * n)))
    old = _unique_hashes(synthetic_emails(n))
    new = _unique_hashes(_chain(synthetic_emails(n - changed, start=changed), synthetic_emails(changed, start=10 * n)))
    true_diff = len(new - old) + len(old - new)
    assert len(new - old) == true_added
    sent = second.added + second.removed
    return {
        "members": len(old),
        "true_difference": true_diff,
        "sent": sent,
        "ratio_sent_to_true_difference": round(sent / true_diff, 3),
        "requests": second.requests,
        "seconds": round(seconds, 2),
        "counts": {k: result["counts"][k] for k in ("added", "removed", "unchanged", "invalid", "duplicate")},
    }


def _chain(*its: Iterator[str]) -> Iterator[str]:
    for it in its:
        yield from it


def _unique_hashes(values: Iterator[str]) -> set[str]:
    out: set[str] = set()
    batch: list[str] = []
    for v in values:
        batch.append(v)
        if len(batch) == DEFAULT_BATCH_SIZE:
            out.update(h for text in process_batch(RULE.profile, batch).partitions.values() for h in text.split("\n"))
            batch = []
    if batch:
        out.update(h for text in process_batch(RULE.profile, batch).partitions.values() for h in text.split("\n"))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, one repeat: a smoke run")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--child-memory", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--skip-memory", action="store_true")
    args = parser.parse_args()
    if args.child_memory:
        child_memory(args.child_memory, args.workers)
        return
    throughput_rows, repeat = (100_000, 1) if args.quick else (1_000_000, 3)
    memory_sizes = [100_000, 1_000_000] if args.quick else [1_000_000, 10_000_000]
    incremental_rows = 100_000 if args.quick else 1_000_000
    report: dict[str, Any] = {"python": sys.version.split()[0], "cpus": os.cpu_count(), "quick": args.quick}
    with tempfile.TemporaryDirectory(prefix="aap-bench-") as tmp:
        # Memory first, while this parent process is still small.
        if not args.skip_memory:
            print(f"peak memory for {memory_sizes} rows (fresh process each) ...", file=sys.stderr)
            report["memory"] = measure_memory(memory_sizes, 1)
            print(json.dumps(report["memory"], indent=2))
        print(f"throughput over {throughput_rows:,} rows ...", file=sys.stderr)
        report["throughput"] = measure_throughput(throughput_rows, args.workers, repeat, tmp)
        print(json.dumps(report["throughput"], indent=2))
        print(f"incremental sync of {incremental_rows:,} members, 1% replaced ...", file=sys.stderr)
        report["incremental"] = measure_incremental(incremental_rows, tmp)
        print(json.dumps(report["incremental"], indent=2))
    t = report["throughput"]["ratio_to_bare_loop"]
    w = args.workers
    checks = {
        "pipeline_1_worker >= 0.6": t["pipeline_1_worker"] >= 0.6,
        f"pipeline_{w}_workers > 1.0": t[f"pipeline_{w}_workers"] > 1.0,
        "incremental sent <= 1.05 x true difference": report["incremental"]["ratio_sent_to_true_difference"] <= 1.05,
    }
    # In --quick mode the small size stays under the 32 MiB spill threshold, so its peak is not
    # the engine's steady state and the ratio says nothing about the 1M/10M target.
    if not args.quick and "memory" in report and "ratio_peak_largest_to_smallest" in report["memory"]:
        checks["peak memory largest <= 1.25 x smallest"] = report["memory"]["ratio_peak_largest_to_smallest"] <= 1.25
    print("\nTargets:")
    for name, ok in checks.items():
        print(f"  {'PASS' if ok else 'MISS'}  {name}")


if __name__ == "__main__":
    main()
