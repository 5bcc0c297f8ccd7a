"""The batch fast paths give exactly what the per-value rules give (property-based).

The e-mail fast path validates a whole batch with one regex pass over the joined text and trims
with ``bytes.split()``; everything it refuses goes through :func:`normalise_email`. These tests
compare it with the per-value function on inputs built to hit the grammar's edges: dots and
hyphens next to each other and to ``@``, special characters, ASCII and non-ASCII blanks, upper
case that lower-cases to ASCII (the Kelvin sign), over-long values and embedded newlines.
"""

from __future__ import annotations

import contextlib
import hashlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from airflow_audience_provider.identifiers.chunking import FixedWidthChunker
from airflow_audience_provider.identifiers.fanout import iter_processed, process_profiles_text
from airflow_audience_provider.identifiers.hashing import _FAST_HASHERS, process_batch, process_text
from airflow_audience_provider.identifiers.normalise import (
    InvalidIdentifier,
    email_text_unordered,
    normalise_batch,
    normalise_email,
)
from airflow_audience_provider.identifiers.rules import HashAlgorithm, IdentifierType, NormalisationProfile, get_rule
from airflow_audience_provider.identifiers.sources import IterableSource

EMAIL = NormalisationProfile(IdentifierType.EMAIL)


@pytest.fixture(autouse=True)
def python_path(monkeypatch):
    """This module tests the pure-Python path (and its worker processes) even where the ``fast``
    extra is installed; tests/identifiers/test_contact_kernel.py covers the compiled kernel."""
    from airflow_audience_provider.identifiers import kernel

    monkeypatch.setenv(kernel.KERNEL_ENV, "python")
    kernel.load_email_kernel.cache_clear()
    yield
    kernel.load_email_kernel.cache_clear()


EMAIL_MD5 = NormalisationProfile(IdentifierType.EMAIL, HashAlgorithm.MD5)

# Few characters, so that adjacent pairs like ".-", "-.", "..", ".@", "@-" come up often.
_EDGE = "ab9.-@_+ \t\r\x0b\x0c\u00a0\x1cA\u212a\u00e9'"
edgy = st.text(alphabet=_EDGE, max_size=24)


@st.composite
def near_valid(draw: st.DrawFn) -> str:
    """Addresses that are valid or one edit away from it."""
    local = draw(st.text(alphabet="aZ9._-+!'", min_size=0, max_size=8))
    labels = draw(st.lists(st.text(alphabet="aB9-", min_size=0, max_size=6), min_size=1, max_size=4))
    value = f"{local}@{'.'.join(labels)}"
    pad = st.sampled_from(["", " ", "\t", "  \r", "\u00a0", "\x1c", "\x0b"])
    return draw(pad) + value + draw(pad)


long_values = st.integers(min_value=240, max_value=270).map(lambda n: "a" * (n - len("@example.com")) + "@example.com")
values_strategy = st.lists(st.one_of(edgy, near_valid(), long_values, st.emails()), max_size=40)


def expected(values: list[str]) -> tuple[list[str], list[tuple[int, str]]]:
    out: list[str] = []
    invalid: list[tuple[int, str]] = []
    for i, v in enumerate(values):
        try:
            out.append(normalise_email(v))
        except InvalidIdentifier as exc:
            invalid.append((i, exc.reason))
    return out, invalid


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(values_strategy)
def test_fast_email_batch_accepts_exactly_what_the_exact_rule_accepts(values: list[str]) -> None:
    want_out, want_invalid = expected(values)
    out, invalid = normalise_batch(EMAIL, values)
    assert [v.decode() if isinstance(v, bytes) else v for v in out] == want_out
    assert invalid == want_invalid
    fast = email_text_unordered("\n".join(values), len(values))
    if any("\n" in v for v in values):
        return
    assert fast is not None
    unordered, invalid2 = fast
    assert sorted(v.decode() for v in unordered) == sorted(want_out)
    assert invalid2 == want_invalid


@settings(max_examples=150, deadline=None)
@given(values_strategy, st.sampled_from([EMAIL, EMAIL_MD5]))
def test_process_batch_hashes_exactly_the_valid_values(values: list[str], profile: NormalisationProfile) -> None:
    want_out, want_invalid = expected(values)
    out = process_batch(profile, values)
    algo = profile.hash_algorithm.value
    hashes = [h for text in out.partitions.values() for h in text.split("\n")]
    assert sorted(hashes) == sorted(hashlib.new(algo, v.encode()).hexdigest() for v in want_out)
    assert out.count == len(want_out)
    assert out.invalid == want_invalid
    assert all(h[:2] == key for key, text in out.partitions.items() for h in text.split("\n"))


def test_embedded_newline_falls_back_to_the_value_list() -> None:
    values = ["a@b.com", "c@\nd.com", "E@F.org"]
    assert email_text_unordered("\n".join(values), len(values)) is None
    assert process_profiles_text((EMAIL,), "\n".join(values), len(values)) is None
    with pytest.raises(ValueError, match="lines"):
        process_text(EMAIL, "\n".join(values), len(values))
    out = process_text(EMAIL, "\n".join(values), len(values), values)
    assert out.count == 2 and out.invalid == [(1, "email_syntax")]
    # The engine's read path (here with worker processes) gives the same answer.
    rows = [
        (b.values, outs[0].count, outs[0].invalid)
        for b, outs in iter_processed(IterableSource(values), (EMAIL,), batch_size=8, workers=2)
    ]
    assert rows == [(values, 2, [(1, "email_syntax")])]


@given(st.binary(max_size=300))
def test_builtin_hashers_agree_with_hashlib(data: bytes) -> None:
    for algo, ctor in _FAST_HASHERS.items():
        assert ctor(data).hexdigest() == hashlib.new(algo.value, data).hexdigest()


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.integers(min_value=0, max_value=40), max_size=12),
    st.integers(min_value=1, max_value=17),
)
def test_fixed_width_chunker_cuts_every_value_once_in_order(sizes: list[int], max_ids: int) -> None:
    rule = get_rule("criteo", "email").with_options(max_ids_per_chunk=max_ids)
    counter = iter(range(10**6))
    texts = ["\n".join(f"{next(counter):064x}" for _ in range(n)) for n in sizes]
    chunker = FixedWidthChunker(rule)
    chunks = []
    for i in range(0, len(texts), 3):
        chunks.extend(chunker.feed(texts[i : i + 3]))
    chunks.extend(chunker.finish())
    got = [v for c in chunks for v in c.identifiers]
    assert got == [f"{i:064x}" for i in range(sum(sizes))]
    assert all(len(c) == max_ids for c in chunks[:-1])
    assert all(0 < len(c) <= max_ids and len(c) == len(c.identifiers) for c in chunks)
    assert [c.index for c in chunks] == list(range(1, len(chunks) + 1))
    for c in chunks:
        with contextlib.closing(__import__("io").BytesIO()) as fh:
            assert c.write_to(fh) == c.file_size == len(fh.getvalue())


@pytest.mark.parametrize("source_kind", ["list", "generator"])
def test_worker_read_path_matches_one_process(source_kind: str) -> None:
    """Worker processes give what one process gives (values to convert, a newline inside a value)."""
    values: list[object] = [f" User{i}@Example.COM " if i % 7 else f"bad{i}" for i in range(300)]
    values[5] = b"Bytes@Example.com"  # converted like IterableSource does
    values[9] = "new@\nline.com"

    def run(workers: int) -> list[tuple[int, int, list[tuple[int, str]], list[str]]]:
        src = IterableSource(values if source_kind == "list" else iter(values))
        return [
            (b.first_line, o[0].count, o[0].invalid, sorted(h for t in o[0].partitions.values() for h in t.split("\n")))
            for b, o in iter_processed(src, (EMAIL,), batch_size=64, workers=workers)
        ]

    from airflow_audience_provider.identifiers import fanout

    old = fanout.MP_TASK_ROWS
    fanout.MP_TASK_ROWS = 64
    try:
        one = run(1)
        assert [r[:3] for r in run(2)] == [r[:3] for r in one]
        assert run(2) == one
    finally:
        fanout.MP_TASK_ROWS = old
