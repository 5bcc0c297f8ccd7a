"""The FilterQL validator used by the Lytics fake: the grammar of Lytics' v1 segment-create reference
(``FILTER <phrase> [FROM <table>] [WITH ...] [ALIAS <slug>]``)."""

from __future__ import annotations

import pytest

from airflow_audience_provider.sandbox.filterql import FilterQLError, ast_to_ql, parse


@pytest.mark.parametrize(
    "text",
    [
        'FILTER AND (country = "US", visitct > 5, last_visit_ts > "now-30d") FROM user ALIAS us_active_30d',
        "FILTER AND (EXISTS email, NOT INCLUDE unsubscribed, scores.momentum >= 20) FROM user ALIAS engaged",
        'FILTER OR (channels INTERSECTS ("web", "email"), timewindow(visits, 5, 7)) FROM user',
        "FILTER *",
        "filter match_all from content",
        'FILTER country NOT IN ("US", "CA")',
        'FILTER email LIKE "*@example.com"',
        'FILTER tags NOT CONTAINS "vip"',
        "FILTER age BETWEEN 18 AND 65 -- adults only",
        "FILTER INCLUDE `0123456789abcdef0123456789abcdef`",
        """FILTER `actioncounts.Web hit` == 10 WITH name = "x", kind = "segment" ALIAS hits""",
        'FILTER geodistance(location, "52.52,13.40", 50km)',
        'FILTER (country != "US")',
    ],
)
def test_valid_statements_parse(text: str) -> None:
    parsed = parse(text)
    assert isinstance(parsed.ast, dict) and "op" in parsed.ast


def test_ast_shape_and_clauses() -> None:
    parsed = parse('FILTER AND (country == "US", NOT INCLUDE unsubscribed, x > "now-7d") FROM user ALIAS us')
    assert parsed.ast == {
        "op": "and",
        "args": [
            {"op": "=", "args": [{"ident": "country"}, {"val": "US"}]},
            {"op": "not", "args": [{"op": "include", "args": [{"ident": "unsubscribed"}]}]},
            {"op": ">", "args": [{"ident": "x"}, {"val": "now-7d"}]},
        ],
    }
    assert (parsed.table, parsed.alias) == ("user", "us")
    assert parsed.fields == ["country", "x"]
    assert parsed.includes == ["unsubscribed"]
    assert parsed.datemath is True


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "empty statement"),
        ('country = "US"', "expected FILTER"),
        ('FILTER AND (country = "US"', "expected ')'"),
        ('FILTER country = "US', "unterminated string"),
        ("FILTER country ~ 3", "unexpected character '~'"),
        ("FILTER country", "expected an operator"),
        ("FILTER AND country = 1", "'(' after AND"),
        ("FILTER x = 1 FROM", "expected a table name"),
        ("FILTER x = 1 ALIAS a ALIAS b", "ALIAS given twice"),
        ("FILTER x = 1 ORDER BY x", "expected FROM, WITH, ALIAS"),
        ("FILTER timewindow(visits, 3, 7)", "timewindow"),
        ("FILTER frobnicate(x, 1)", "unknown function"),
        ("FILTER x BETWEEN 1 2", "expected AND in BETWEEN"),
        ("FILTER x = 1)", "expected FROM, WITH, ALIAS or end of statement"),
    ],
)
def test_invalid_statements_name_the_problem(text: str, fragment: str) -> None:
    with pytest.raises(FilterQLError) as excinfo:
        parse(text)
    assert str(excinfo.value).startswith("Invalid SegmentQL: ")
    assert fragment in str(excinfo.value)


def test_ast_round_trips_to_text() -> None:
    original = parse('FILTER AND (country = "US", visits BETWEEN 1 AND 5, tags IN ("a", "b"), EXISTS email)')
    text = ast_to_ql(original.ast, table="user", alias="rt")
    again = parse(text)
    assert again.ast == original.ast
    assert (again.table, again.alias) == ("user", "rt")


def test_ast_to_ql_rejects_unknown_operators() -> None:
    with pytest.raises(FilterQLError):
        ast_to_ql({"op": "frobnicate", "args": []})
