"""The ClientID batch fast path (one regex pass over the batch) gives exactly what ``normalise_client_id`` gives."""

from __future__ import annotations

from contact_helpers import Outcome, exact_outcome
from hypothesis import given, settings
from hypothesis import strategies as st

from airflow_audience_provider.identifiers.hashing import process_batch
from airflow_audience_provider.identifiers.normalise import normalise_batch, normalise_client_id
from airflow_audience_provider.identifiers.rules import get_rule

PROFILE = get_rule("yandex_audience", "client_id").profile

digits = st.text(alphabet="0123456789", min_size=1, max_size=22)
client_id = st.one_of(
    digits,
    st.integers(min_value=0, max_value=2**64 + 5).map(str),
    st.sampled_from(["18446744073709551615", "18446744073709551616", "9999999999999999999", "0", "00", "01"]),
    st.text(alphabet="0123456789 +-x\u0660\uff11\u00b2", max_size=12),  # signs, Arabic-Indic and full-width digits
)
blank = st.sampled_from(["", " ", "\t", "\r", "\x0b", "\x0c", "\u00a0", "\x1c", "\u3000"])
value = st.tuples(blank, client_id, blank).map("".join)


def exact(values: list[str]) -> Outcome:
    return exact_outcome(normalise_client_id, values, sort=False)


@settings(max_examples=400)
@given(st.lists(value, min_size=1, max_size=40))
def test_block_path_gives_what_the_exact_rule_gives(values: list[str]) -> None:
    normalised, invalid = normalise_batch(PROFILE, values)
    got = [v.decode() if isinstance(v, bytes) else v for v in normalised]
    want, want_invalid = exact(values)
    assert got == want  # same values, in input order
    assert sorted(invalid) == want_invalid  # same rows, same reasons
    out = process_batch(PROFILE, values)
    assert sorted(v for text in out.partitions.values() for v in text.split("\n")) == sorted(want)


def test_a_value_with_a_newline_takes_the_per_value_path() -> None:
    normalised, invalid = normalise_batch(PROFILE, ["123", "45\n6", "0789"])
    assert [v.decode() if isinstance(v, bytes) else v for v in normalised] == ["123", "789"]
    assert invalid == [(1, "client_id_syntax")]
