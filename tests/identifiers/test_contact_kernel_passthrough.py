"""The compiled kernel for unhashed outputs (pre-hashed SHA-256, customer ids, Metrica ClientIDs)
decides exactly what the exact rules decide, and partitions like the Python path."""

from __future__ import annotations

import hashlib

import pytest
from contact_helpers import exact_outcome
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kernel_helpers import forbid_process_pools, kernel_and_python, partition_values, read_batches
from test_contact_client_id_block import value as client_id_value

from airflow_audience_provider.identifiers.fanout import iter_processed
from airflow_audience_provider.identifiers.hashing import (
    _process_passthrough_with_kernel,
    partition_of,
    process_batch,
    uses_kernel,
)
from airflow_audience_provider.identifiers.normalise import normaliser_for
from airflow_audience_provider.identifiers.rules import HashAlgorithm, IdentifierType, NormalisationProfile, get_rule
from airflow_audience_provider.identifiers.sources import IterableSource

pytest.importorskip("polars_hash", reason="the fast extra (polars, polars-hash) is not installed")
pytestmark = pytest.mark.usefixtures("fresh_kernel")

SHA256 = get_rule("criteo", "sha256").profile
CUSTOMER_ID = get_rule("criteo", "customer_id").profile
CLIENT_ID = get_rule("yandex_audience", "client_id").profile


def check(profile: NormalisationProfile, values: list[str]) -> None:
    want, want_invalid = exact_outcome(normaliser_for(profile), values)
    out = _process_passthrough_with_kernel(values, profile)
    assert out is not None
    assert partition_values(out) == want  # same values (with repeats)
    assert sorted(out.invalid) == want_invalid  # same rows, same reasons
    assert out.count == len(want)
    hashed = profile.hashed_output
    assert all(partition_of(v, hashed) == key for key, text in out.partitions.items() for v in text.split("\n"))


#: Every character ``str.strip`` removes, and a few that look like blanks but are not.
ALL_BLANKS = " \t\n\r\x0b\x0c\x1c\x1d\x1e\x1f\x85\xa0\u1680\u2000\u2005\u200a\u200b\u2028\u2029\u202f\u205f\u3000\ufeff"
blank = st.text(alphabet=ALL_BLANKS, max_size=3)

HEX = "0123456789abcdefABCDEF"
HASH_EDGE = HEX + "gG \t\u00a0\uff10\uff21\u212a\u0130"
hex64 = st.text(alphabet=HEX, min_size=64, max_size=64)
edge = st.sampled_from(HASH_EDGE)
sha_like = st.one_of(
    hex64,
    st.tuples(hex64, st.integers(0, 63), edge).map(lambda t: t[0][: t[1]] + t[2] + t[0][t[1] + 1 :]),  # one changed
    st.tuples(hex64, st.integers(0, 63)).map(lambda t: t[0][: t[1]] + t[0][t[1] + 1 :]),  # one dropped
    st.tuples(hex64, st.integers(0, 64), edge).map(lambda t: t[0][: t[1]] + t[2] + t[0][t[1] :]),  # one inserted
    st.text(alphabet=HEX, min_size=30, max_size=34),  # an MD5-sized value
    st.text(alphabet=HASH_EDGE, max_size=8),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(values=st.lists(st.tuples(blank, sha_like, blank).map("".join), min_size=1, max_size=40))
def test_sha256_kernel_gives_what_the_exact_rule_gives(values: list[str]) -> None:
    check(SHA256, values)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(values=st.lists(client_id_value, min_size=1, max_size=40))
def test_client_id_kernel_gives_what_the_exact_rule_gives(values: list[str]) -> None:
    check(CLIENT_ID, values)


#: Customer ids: printable ASCII, non-ASCII letters and look-alike blanks, controls inside.
OPAQUE_CHARS = "aZ09-_./:@ \t\u00e9\u00df\u0130\u212a\u4e2d\U0001f600\x00\x07\x1b\x7f\x85\xa0\u2007\u3000\ufeff\u200b"
opaque_like = st.one_of(
    st.text(alphabet=OPAQUE_CHARS, max_size=12),
    st.from_regex(r"CUST-[0-9]{6,12}", fullmatch=True),
    st.integers(505, 516).map(lambda n: "x" * n),  # around the 512-character limit
    st.integers(505, 516).map(lambda n: "\u00e9" * n),  # the limit counts characters, not bytes
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(values=st.lists(st.tuples(blank, opaque_like, blank).map("".join), min_size=1, max_size=40))
def test_customer_id_kernel_gives_what_the_exact_rule_gives(values: list[str]) -> None:
    check(CUSTOMER_ID, values)


def test_partitions_are_sorted_runs_with_the_python_path_keys(monkeypatch) -> None:
    """Partition keys are the CRC-32 ones of the Python path (the snapshot order); each arrives sorted."""
    values = [f"CUST-{i * 7919 % 100000:06d}" for i in range(3000)] + ["", " \u00a0CUST-1\u3000", "a\x00b"]
    with_kernel, python = kernel_and_python(monkeypatch, CUSTOMER_ID, values)
    assert {k: sorted(t.split("\n")) for k, t in with_kernel.partitions.items()} == {
        k: sorted(t.split("\n")) for k, t in python.partitions.items()
    }
    assert sorted(with_kernel.invalid) == python.invalid == [(3000, "empty"), (3002, "opaque_control_chars")]
    rescued = partition_of("CUST-1", False)
    for key, text in with_kernel.partitions.items():
        lines = text.split("\n")
        if key != rescued:  # a rescued value is appended after the kernel's run
            assert lines == sorted(lines)


@pytest.mark.parametrize(
    ("profile", "values", "reason"),
    [
        (SHA256, [hashlib.sha256(b"a").hexdigest(), "\ud800"], "hash_length"),
        (CUSTOMER_ID, ["CUST-1", "CUST-\ud800"], None),
        (CLIENT_ID, ["123", "\ud800"], "client_id_syntax"),
    ],
)
def test_a_string_polars_cannot_hold_goes_to_the_python_path(profile, values, reason) -> None:
    assert _process_passthrough_with_kernel(values, profile) is None  # the kernel refuses the batch...
    out = process_batch(profile, values)  # ...and the exact path decides it
    assert [r for _, r in out.invalid] == ([reason] if reason else [])
    assert out.count == len(values) - len(out.invalid)


def test_only_unhashed_profiles_of_these_types_pass_through_the_kernel() -> None:
    assert all(uses_kernel(p) for p in (SHA256, CUSTOMER_ID, CLIENT_ID))
    # a customised rule that hashes customer ids takes the Python path
    assert not uses_kernel(NormalisationProfile(IdentifierType.CUSTOMER_ID, HashAlgorithm.SHA256))
    assert not uses_kernel(NormalisationProfile(IdentifierType.SHA256, HashAlgorithm.SHA256))


@pytest.mark.parametrize("profile", [SHA256, CUSTOMER_ID, CLIENT_ID])
def test_parallel_read_uses_threads_not_processes(monkeypatch, profile) -> None:
    """These types no longer start a process pool per sync with two workers."""
    forbid_process_pools(monkeypatch, 64)
    if profile is SHA256:
        values = [hashlib.sha256(str(i).encode()).hexdigest() if i % 7 else f"bad{i}" for i in range(1000)]
    else:
        values = [f" {i + 1}" if i % 7 else f"x{i}\x01" for i in range(1000)]
    one = read_batches(values, (profile,), batch_size=64, workers=1)
    assert len(one) == 16
    assert read_batches(values, (profile,), batch_size=64, workers=2) == one


def test_parallel_workers_get_smaller_kernel_batches() -> None:
    """Two workers get 32,768-row batches, so a mid-sized list still gives each several batches."""
    values = [f"CUST-{i}" for i in range(70_000)]

    def sizes(workers: int) -> list[int]:
        return [len(b.values) for b, _ in iter_processed(IterableSource(values), (CUSTOMER_ID,), workers=workers)]

    assert sizes(1) == [65_536, 4_464]
    assert sizes(2) == [32_768, 32_768, 4_464]
