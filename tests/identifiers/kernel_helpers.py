"""Helpers shared by the compiled-kernel tests: exact-rule oracles and runs through both paths."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from contact_helpers import Outcome

from airflow_audience_provider.identifiers import fanout, kernel
from airflow_audience_provider.identifiers.fanout import iter_processed
from airflow_audience_provider.identifiers.hashing import BatchOutput, process_batch, uses_kernel
from airflow_audience_provider.identifiers.rules import NormalisationProfile
from airflow_audience_provider.identifiers.sources import IterableSource

#: Per batch: its first line, then per profile (count, invalid rows, outputs sorted)
Batches = list[tuple[int, list[tuple[int, list[tuple[int, str]], list[str]]]]]


def partition_values(out: BatchOutput, *, skip_empty: bool = False) -> list[str]:
    """Every output of a batch's partitions, sorted."""
    return sorted(v for text in out.partitions.values() for v in text.split("\n") if v or not skip_empty)


def assert_kernel_gives(out: BatchOutput | None, want: Outcome, *, skip_empty: bool = False) -> None:
    """The kernel took the batch and gave the exact rule's outputs, invalid rows and count, partitioned by prefix."""
    want_out, want_invalid = want
    assert out is not None
    assert partition_values(out, skip_empty=skip_empty) == want_out
    assert sorted(out.invalid) == want_invalid  # same rows, same reasons
    assert out.count == len(want_out)
    assert all(h[:2] == key for key, text in out.partitions.items() for h in text.split("\n"))


def kernel_and_python(
    monkeypatch: pytest.MonkeyPatch, profile: NormalisationProfile, values: list[str]
) -> tuple[BatchOutput, BatchOutput]:
    """``process_batch`` with the kernel, then with it switched off (``KERNEL_ENV=python``); then back on."""
    assert uses_kernel(profile)
    with_kernel = process_batch(profile, values)
    monkeypatch.setenv(kernel.KERNEL_ENV, "python")
    kernel.load_email_kernel.cache_clear()
    assert not uses_kernel(profile)
    python = process_batch(profile, values)
    monkeypatch.delenv(kernel.KERNEL_ENV)
    kernel.load_email_kernel.cache_clear()
    return with_kernel, python


def forbid_process_pools(monkeypatch: pytest.MonkeyPatch, batch_rows: int) -> None:
    """Make starting a process pool fail the test, and cut kernel batches to ``batch_rows``."""

    def no_processes(*args, **kwargs):
        raise AssertionError("a process pool was started")

    monkeypatch.setattr(fanout, "ProcessPoolExecutor", no_processes)
    monkeypatch.setattr(fanout, "KERNEL_BATCH_ROWS", batch_rows)
    monkeypatch.setattr(fanout, "KERNEL_PARALLEL_BATCH_ROWS", batch_rows)


def read_batches(values: list[str], profiles: Sequence[NormalisationProfile], batch_size: int, workers: int) -> Batches:
    """What ``iter_processed`` gives, batch by batch, in a form two runs can be compared by."""
    return [
        (b.first_line, [(o.count, o.invalid, partition_values(o)) for o in outs])
        for b, outs in iter_processed(IterableSource(values), tuple(profiles), batch_size=batch_size, workers=workers)
    ]
