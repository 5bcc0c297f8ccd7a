"""The compiled e-mail kernel (the ``fast`` extra) decides exactly what the exact rule decides."""

from __future__ import annotations

import hashlib
import logging

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kernel_helpers import assert_kernel_gives, forbid_process_pools, kernel_and_python, partition_values, read_batches
from test_contact_fast_paths import EMAIL, expected, values_strategy

from airflow_audience_provider.identifiers import fanout, kernel
from airflow_audience_provider.identifiers.hashing import (
    PARTITION_KEYS,
    _process_with_kernel,
    process_batch,
    uses_kernel,
)
from airflow_audience_provider.identifiers.normalise import InvalidIdentifier, normalise_email
from airflow_audience_provider.identifiers.rules import HashAlgorithm, IdentifierType, NormalisationProfile

pytest.importorskip("polars_hash", reason="the fast extra (polars, polars-hash) is not installed")
pytestmark = pytest.mark.usefixtures("fresh_kernel")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(values_strategy)
def test_kernel_accepts_exactly_what_the_exact_rule_accepts(values: list[str]) -> None:
    if not values:
        return
    want_out, want_invalid = expected(values)
    want_digests = sorted(hashlib.sha256(v.encode()).hexdigest() for v in want_out)
    assert_kernel_gives(_process_with_kernel(values), (want_digests, want_invalid))


def test_process_batch_uses_the_kernel_and_the_python_path_agrees(monkeypatch) -> None:
    values = [f" User{i}@Example.COM " if i % 9 else f"bad{i}" for i in range(500)] + ["\u00a0nbsp@example.com"]
    with_kernel, python = kernel_and_python(monkeypatch, EMAIL, values)
    assert partition_values(with_kernel) == partition_values(python) and len(partition_values(python)) == 445
    assert sorted(with_kernel.invalid) == python.invalid
    assert with_kernel.count == python.count


def test_md5_e_mails_and_phones_do_not_use_the_kernel() -> None:
    assert not uses_kernel(NormalisationProfile(IdentifierType.EMAIL, HashAlgorithm.MD5))
    assert not uses_kernel(NormalisationProfile(IdentifierType.PHONE, HashAlgorithm.MD5))


def test_a_batch_polars_cannot_hold_falls_back_to_python() -> None:
    values = ["a@example.com", "b\udcff@example.com", "C@Example.com"]  # a lone surrogate
    assert _process_with_kernel(values) is None
    out = process_batch(EMAIL, values)
    assert out.count == 2 and [reason for _, reason in out.invalid] == ["email_non_ascii"]


def test_a_kernel_that_fails_its_self_test_is_not_used(monkeypatch, caplog) -> None:
    def wrong(self, values):
        return kernel.KernelOutput("0" * 64, [0] * 256 + [1], [])

    monkeypatch.setattr(kernel.EmailKernel, "run", wrong)
    with caplog.at_level(logging.WARNING, logger=kernel.__name__):
        assert kernel.load_email_kernel() is None
    assert "self-test" in caplog.text
    assert process_batch(EMAIL, ["a@example.com"]).count == 1  # the Python path


def test_parallel_read_uses_threads_not_processes(monkeypatch) -> None:
    """With the kernel, workers are threads (no fork after polars started its pool), results in order."""
    forbid_process_pools(monkeypatch, 64)
    values = [f" User{i}@Example.COM " if i % 7 else f"bad{i}" for i in range(1000)]
    one = read_batches(values, (EMAIL,), batch_size=64, workers=1)
    assert len(one) == 16
    assert read_batches(values, (EMAIL,), batch_size=64, workers=2) == one


def test_process_pools_avoid_fork_once_polars_is_loaded() -> None:
    """polars' thread pool is not fork-safe: a forked child could inherit its locks held."""
    import multiprocessing

    assert kernel.load_email_kernel() is not None  # polars is imported now
    if "forkserver" in multiprocessing.get_all_start_methods():
        assert fanout.default_mp_context() == "forkserver"


@pytest.mark.parametrize(("preset", "expected"), [(None, "1 False"), ("2", "2 2")])
def test_polars_gets_a_one_thread_pool_unless_the_task_chose_one(preset, expected) -> None:
    """A fresh process: the kernel sizes polars' pool to one thread (read workers parallelise by
    batch) and leaves the environment as it found it; a size the task set is kept."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k not in (kernel.POLARS_THREADS_ENV, kernel.KERNEL_ENV)}
    if preset is not None:
        env[kernel.POLARS_THREADS_ENV] = preset
    probe = (
        "import os; from airflow_audience_provider.identifiers.kernel import load_email_kernel;"
        "assert load_email_kernel() is not None; import polars;"
        "print(polars.thread_pool_size(), os.environ.get('POLARS_MAX_THREADS', False))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True, timeout=120
    )
    assert out.stdout.split("\n")[-2] == expected


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(values_strategy)
def test_kernel_frame_is_unordered_and_digests_are_ordered_on_demand(values: list[str]) -> None:
    """The frame (the columnar path's input) holds each digest with its 60-bit prefix, in any order;
    ``digests`` and ``bounds`` (the Python plan's input) are the same digests ordered by prefix."""
    k = kernel.load_email_kernel()
    if k is None or not values:
        return
    out = k.run(values)
    frame_digests = out.frame.get_column("h").to_list()
    assert out.frame.get_column("p").to_list() == [int(h[: kernel.PREFIX_DIGITS], 16) for h in frame_digests]
    ordered = out.digests.split("\n") if out.digests else []
    assert sorted(ordered) == sorted(frame_digests)
    assert [h[: kernel.PREFIX_DIGITS] for h in ordered] == sorted(h[: kernel.PREFIX_DIGITS] for h in ordered)
    bounds = out.bounds
    assert len(bounds) == 257 and bounds[0] == 0 and bounds[-1] == len(ordered)
    for key, lo, hi in zip(PARTITION_KEYS, bounds, bounds[1:], strict=False):
        assert all(h[:2] == key for h in ordered[lo:hi])


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.text(alphabet=st.sampled_from(" \t\n\r\x0b\x0c\x1c\x1f\x85\xa0\u3000a.Z-@é"), max_size=12),
            st.integers(250, 260).map(lambda n: " " + "a" * n + "\t"),
            st.sampled_from(["", "   ", "n/a", "-", "a@b.c", "\x1ca@b.cc", "x" * 255]),
        ),
        max_size=20,
    )
)
def test_e_mail_reasons_decided_by_the_kernel_are_the_exact_rules(values: list[str]) -> None:
    """Rows the kernel refused and then decides itself (plain ASCII without ``@``) get ``normalise_email``'s reason."""
    left, invalid = kernel._email_reasons(values, list(range(len(values))))
    assert sorted(left + [i for i, _ in invalid]) == list(range(len(values)))
    for i, reason in invalid:
        with pytest.raises(InvalidIdentifier) as exc:
            normalise_email(values[i])
        assert exc.value.reason == reason
