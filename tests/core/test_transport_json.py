"""The transport's JSON body encoding: the same text as ``json.dumps``, faster for lists of plain ids."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from airflow_audience_provider.core.transport import JsonStrings, encode_json

_ids = st.text(alphabet="0123456789abcdefXYZ", min_size=0, max_size=70)
_awkward = st.text(min_size=0, max_size=6)
_lists = st.one_of(
    st.lists(st.text(alphabet="0123456789abcdefXYZ", min_size=1, max_size=70), min_size=15, max_size=40),
    st.lists(st.one_of(_ids, _awkward), min_size=15, max_size=40),
    st.lists(st.one_of(_ids, st.integers(), st.none()), min_size=15, max_size=40),
)
_json_values = st.recursive(
    st.one_of(
        st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False, allow_infinity=False), _awkward, _lists
    ),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(_awkward, inner, max_size=4)),
    max_leaves=12,
)


@settings(max_examples=150, deadline=None)
@given(_json_values)
def test_encoding_is_exactly_json_dumps(value):
    assert encode_json(value) == json.dumps(value, allow_nan=False).encode("utf-8")


def test_ids_that_need_escaping_are_escaped():
    ids = ["a" * 64] * 20 + ['quote"d', "back\\slash", "new\nline", "caf\u00e9", 'a", "b']
    assert json.loads(encode_json({"identifiers": ids})) == {"identifiers": ids}


def test_nan_is_refused_like_requests_does():
    with pytest.raises(ValueError):
        encode_json({"x": [math.nan]})


@settings(max_examples=100, deadline=None)
@given(st.lists(st.text(alphabet="0123456789abcdefABCDEF", min_size=1, max_size=70), min_size=1, max_size=40))
def test_json_strings_are_written_as_the_json_of_their_list(values):
    lines = "".join(f"{v}\n" for v in values).encode()
    strings = JsonStrings.from_lines(lines, len(values))
    assert strings is not None and list(strings) == values and len(strings) == len(values)
    body = {"data": {"attributes": {"operation": "add", "identifiers": strings, "note": "\x00"}}}
    plain = {"data": {"attributes": {"operation": "add", "identifiers": values, "note": "\x00"}}}
    assert encode_json(body) == json.dumps(plain).encode()


@pytest.mark.parametrize(
    ("lines", "count"),
    [(b"ab\ncd", 2), (b'ab\n"c\n', 2), (b"ab\ncd\n", 3), (b"ab\n\\u0041\n", 2), (b"caf\xc3\xa9\n", 1)],
)
def test_json_strings_refuse_anything_but_hex_lines_of_the_announced_count(lines, count):
    assert JsonStrings.from_lines(lines, count) is None


def _reading(lines: bytes, count: int) -> JsonStrings:
    return JsonStrings.reading(len(lines), count, lambda view: view.__setitem__(slice(None), lines))


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.text(alphabet="0123456789abcdefABCDEF", min_size=0, max_size=70), min_size=1, max_size=40),
    _awkward,
)
def test_json_strings_read_into_the_body_are_written_as_the_json_of_their_list(values, note):
    """The text is read into the body's buffer (reused between bodies of one size) and checked there."""
    lines = "".join(f"{v}\n" for v in values).encode()
    for strings in (_reading(lines, len(values)), JsonStrings(lines, len(values))):
        body = {"data": {"attributes": {"operation": "add", "identifiers": strings, "note": note}}}
        plain = {"data": {"attributes": {"operation": "add", "identifiers": values, "note": note}}}
        assert encode_json(body) == json.dumps(plain).encode()


@pytest.mark.parametrize(
    ("lines", "count"),
    [(b'ab\n"c\n', 2), (b"ab\n\\u0041\n", 2), (b"caf\xc3\xa9\n", 1), (b"AB x\n", 1)],
)
def test_json_strings_read_into_the_body_that_are_not_hex_lines_are_written_as_their_list(lines, count):
    """Read text that is not hex strings, one per line, gives the JSON of the list of its strings."""
    body = {"identifiers": _reading(lines, count), "n": 1}
    values = lines.decode("utf-8").split("\n")[:-1]
    assert encode_json(body) == json.dumps({"identifiers": values, "n": 1}).encode()


@pytest.mark.parametrize(("lines", "count"), [(b"ab\ncd\n", 3), (b"ab\ncd", 2)])
def test_json_strings_read_into_the_body_refuse_a_wrong_count(lines, count):
    with pytest.raises(ValueError):
        encode_json({"identifiers": _reading(lines, count)})


@settings(max_examples=200, deadline=None)
@given(
    st.integers(min_value=0, max_value=70),
    st.integers(min_value=1, max_value=30),
    st.lists(st.tuples(st.integers(min_value=0), st.sampled_from('0aF\ng"\\ xZ')), max_size=3),
)
def test_json_strings_of_one_width_read_into_the_body(width, count, edits):
    """Lines of one width take the pattern check: same JSON as the list of the strings, or the same refusal."""
    lines = bytearray(("0123456789abcdefABCDEF" * 4)[:width].encode() + b"\n") * count
    for position, char in edits:
        lines[position % len(lines)] = ord(char)
    lines = bytes(lines)
    body = {"identifiers": _reading(lines, count), "n": 1}
    values = lines.decode("ascii").split("\n")[:-1] if lines.endswith(b"\n") else None
    if values is None or len(values) != count:
        with pytest.raises(ValueError):
            encode_json(body)
        return
    assert encode_json(body) == json.dumps({"identifiers": values, "n": 1}).encode()
