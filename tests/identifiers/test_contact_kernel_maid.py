"""The compiled kernel for mobile advertising ids and MAC addresses decides exactly what the exact rules decide."""

from __future__ import annotations

import hashlib

import pytest
from contact_helpers import Outcome, exact_outcome
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kernel_helpers import assert_kernel_gives, kernel_and_python, partition_values

from airflow_audience_provider.identifiers.hashing import _process_with_kernel, process_batch, uses_kernel
from airflow_audience_provider.identifiers.normalise import normalise_mac, normalise_maid
from airflow_audience_provider.identifiers.rules import HashAlgorithm, IdentifierType, NormalisationProfile, get_rule

pytest.importorskip("polars_hash", reason="the fast extra (polars, polars-hash) is not installed")
pytestmark = pytest.mark.usefixtures("fresh_kernel")

PROFILES = [
    get_rule("criteo", "maid").profile,
    get_rule("yandex_audience", "idfa").profile,
    get_rule("yandex_audience", "gaid").profile,
    NormalisationProfile(IdentifierType.MAID, HashAlgorithm.SHA256, maid_case="upper"),
]


HEX = "0123456789abcdefABCDEF"
#: Characters that sit near the edges: hex in both cases, look-alikes, separators, blanks.
EDGE = HEX + "gG-_ :\t\u00a0\u2007\uff10\uff21\u212a0"


def _uuid(draw_hex: str) -> str:
    h = draw_hex
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:32]}"


hex32 = st.text(alphabet=HEX, min_size=32, max_size=32)
maid_like = st.one_of(
    hex32.map(_uuid),  # the form the kernel takes
    hex32,  # the 32-digit form: the exact rule's
    st.just("00000000-0000-0000-0000-000000000000"),
    st.just("00000000000000000000000000000000"),
    st.tuples(hex32, st.integers(0, 35), st.sampled_from(EDGE)).map(  # one character changed
        lambda t: _uuid(t[0])[: t[1]] + t[2] + _uuid(t[0])[t[1] + 1 :]
    ),
    st.tuples(hex32, st.integers(0, 35)).map(lambda t: _uuid(t[0])[: t[1]] + _uuid(t[0])[t[1] + 1 :]),  # one dropped
    st.tuples(hex32, st.integers(0, 36), st.sampled_from(EDGE)).map(  # one inserted
        lambda t: _uuid(t[0])[: t[1]] + t[2] + _uuid(t[0])[t[1] :]
    ),
    st.text(alphabet=EDGE, max_size=40),
)
blank = st.sampled_from(["", " ", "\t", "  ", "\u00a0", "\n", "\r", "\x0b", "\u3000"])
value = st.tuples(blank, maid_like, blank).map("".join)


def expected(profile: NormalisationProfile, values: list[str]) -> Outcome:
    case = "upper" if profile.upper_case_maid else "lower"
    return exact_outcome(lambda v: hashlib.sha256(normalise_maid(v, case).encode()).hexdigest(), values)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(profile=st.sampled_from(PROFILES), values=st.lists(value, min_size=1, max_size=40))
def test_maid_kernel_gives_what_the_exact_rule_gives(profile: NormalisationProfile, values: list[str]) -> None:
    assert_kernel_gives(_process_with_kernel(values, profile), expected(profile, values))


def test_maid_profiles_use_the_kernel_and_the_python_path_agrees(monkeypatch) -> None:
    values = [_uuid(hashlib.md5(str(i).encode()).hexdigest()) for i in range(300)]
    values += [v.upper() for v in values[:50]] + ["bad", "00000000-0000-0000-0000-000000000000", "\u00a0" + values[7]]
    for profile in PROFILES:
        with_kernel, python = kernel_and_python(monkeypatch, profile, values)
        assert partition_values(with_kernel) == partition_values(python) and len(partition_values(python)) == 351
        assert sorted(with_kernel.invalid) == python.invalid == [(350, "maid_syntax"), (351, "maid_zero")]


def test_a_string_polars_cannot_hold_goes_to_the_python_path() -> None:
    profile = PROFILES[0]
    values = ["6d92078a-8246-4ba4-ae5b-76104861e7dc", "\ud800"]
    assert _process_with_kernel(values, profile) is None  # the kernel refuses the batch...
    out = process_batch(profile, values)  # ...and the exact path decides it
    assert out.count == 1 and out.invalid == [(1, "maid_syntax")]


def test_md5_maids_do_not_use_the_kernel() -> None:
    assert not uses_kernel(NormalisationProfile(IdentifierType.MAID, HashAlgorithm.MD5))


# ---- MAC addresses: hashed over the 6 bytes the digits spell ---------------------------------------

MAC = get_rule("yandex_audience", "mac").profile
MAC_EDGE = HEX + ":-. \t_/gG\u00a0\uff21\ufb00"
hex12 = st.text(alphabet=HEX, min_size=12, max_size=12)
mac_like = st.one_of(
    hex12,
    st.tuples(hex12, st.sampled_from([":", "-", ".", " ", ""])).map(
        lambda t: t[1].join(t[0][k : k + 2] for k in range(0, 12, 2))
    ),
    hex12.map(lambda h: f"{h[:4]}.{h[4:8]}.{h[8:]}"),
    st.sampled_from(["000000000000", "FF:FF:FF:FF:FF:FF", "ff-ff-ff-ff-ff-ff", "00:00:00:00:00:00"]),
    st.tuples(hex12, st.integers(0, 11), st.sampled_from(MAC_EDGE)).map(lambda t: t[0][: t[1]] + t[2] + t[0][t[1] :]),
    st.tuples(hex12, st.integers(0, 11)).map(lambda t: t[0][: t[1]] + t[0][t[1] + 1 :]),
    st.text(alphabet=MAC_EDGE, max_size=20),
)
mac_value = st.tuples(blank, mac_like, blank).map("".join)


def expected_mac(values: list[str]) -> Outcome:
    return exact_outcome(lambda v: hashlib.sha256(bytes.fromhex(normalise_mac(v))).hexdigest(), values)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(values=st.lists(mac_value, min_size=1, max_size=40))
def test_mac_kernel_gives_what_the_exact_rule_gives(values: list[str]) -> None:
    assert_kernel_gives(_process_with_kernel(values, MAC), expected_mac(values))


line_blank = st.sampled_from(["", " ", "\t", "  ", "\u00a0", "\r", "\x0b", "\u3000"])
#: Hex digits around the 12 a MAC has (the kernel decodes them and keeps only 6 bytes).
mac_length_edges = st.one_of(
    st.text(alphabet=HEX, min_size=10, max_size=14),
    st.tuples(
        st.lists(st.text(alphabet=HEX, min_size=2, max_size=2), min_size=5, max_size=7), st.sampled_from(":-")
    ).map(lambda t: t[1].join(t[0])),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    values=st.lists(
        st.tuples(line_blank, st.one_of(mac_like, mac_length_edges), line_blank).map("".join), min_size=1, max_size=40
    )
)
def test_mac_kernel_on_batches_without_newlines_gives_what_the_exact_rule_gives(values: list[str]) -> None:
    """Batches whose values hold no newline take the kernel's whole-text separator removal."""
    assert_kernel_gives(_process_with_kernel(values, MAC), expected_mac(values))


def test_mac_profile_uses_the_kernel_and_the_python_path_agrees(monkeypatch) -> None:
    values = [":".join(f"{(i * 7919 + k) % 256:02x}" for k in range(6)) for i in range(1, 400)]
    values += ["zz:12", "FF-FF-FF-FF-FF-FF", "\u00a0AE:12:34:56:D0:A1"]
    with_kernel, python = kernel_and_python(monkeypatch, MAC, values)
    assert partition_values(with_kernel) == partition_values(python) and len(partition_values(python)) == 400
    assert sorted(with_kernel.invalid) == python.invalid == [(399, "mac_syntax"), (400, "mac_reserved")]
