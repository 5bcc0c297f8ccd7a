"""Lytics rules without I/O: segment bodies, definition diffs and FilterQL reading.

What a create or update of a Lytics segment sends is decided here, before any call:
:func:`desired_segment_body` checks a definition against its slug and table,
:func:`segment_changes` compares it with the stored segment (by parsed form, since Lytics stores
its own rendering) and :func:`update_body` builds the whole object a PUT sends.
"""

from __future__ import annotations

import re
from typing import Any

from airflow_audience_provider.core.errors import AudienceValidationError

#: Fields the server owns; stripped before a PUT and when diffing.
SERVER_MANAGED_FIELDS = frozenset(
    {
        "id",
        "aid",
        "account_id",
        "author_id",
        "created",
        "updated",
        "ast",
        "fields",
        "field_changes_fields",
        "includes",
        "datemath_calc",
        "forward_datemath",
        "invalid",
        "invalid_reason",
        "deleted",
        "size",
        "last_evaluated",
        "public_name",
    }
)

_ALIAS = re.compile(r"\bALIAS\s+`?([A-Za-z0-9_\-]+)`?", re.IGNORECASE)
_FROM = re.compile(r"\bFROM\s+`?([A-Za-z0-9_\-]+)`?", re.IGNORECASE)
_INCLUDE = re.compile(r"\bINCLUDE\s+`?([A-Za-z0-9_\-]+)`?", re.IGNORECASE)
#: string literals and ``--`` comments, which may contain the words FROM, ALIAS or INCLUDE
_LITERALS_AND_COMMENTS = re.compile(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'|--[^\n]*')


def _code_only(segment_ql: str | None) -> str:
    """The statement without string literals and comments, for keyword searches.

    Each literal or comment becomes as many spaces as it had characters, so positions hold.
    """
    return _LITERALS_AND_COMMENTS.sub(lambda m: " " * len(m.group(0)), segment_ql or "")


_TRAILING_CLAUSE = re.compile(r"\b(WITH|ALIAS)\b", re.IGNORECASE)


def with_table(segment_ql: str, table: str) -> str:
    """The statement with ``FROM <table>`` when it names no table.

    Lytics reads a statement without ``FROM`` as ``FROM user``, and an update that changes the
    table creates another segment while answering success, so the segment's table is always written out.
    """
    code = _code_only(segment_ql)
    if _FROM.search(code):
        return segment_ql
    clause = _TRAILING_CLAUSE.search(code)
    if clause is None:
        return f"{segment_ql.rstrip()} FROM {table}"
    at = clause.start()
    return f"{segment_ql[:at].rstrip()} FROM {table} {segment_ql[at:]}"


_QL_TOKEN = re.compile(
    r"""\s+|--[^\n]*
    |(?P<str>"(?:\\.|[^"\\])*"|'(?:\\.|[^'\\])*')
    |(?P<bt>`[^`]*`)
    |(?P<op>==|!=|>=|<=|=|>|<)
    |(?P<punct>[(),*])
    |(?P<word>[^\s(),`"'=!<>]+)""",
    re.VERBOSE,
)
_QL_OPS = {"==": "=", "=": "=", "!=": "!=", ">": ">", ">=": ">=", "<": "<", "<=": "<="}
_QL_LIST_OPS = {"IN", "INTERSECTS"}
_QL_CLAUSES = {"FROM", "WITH", "ALIAS"}


class _QLUnsupported(ValueError):
    """A statement this small reader does not know how to turn into Lytics' parsed form."""


def parse_segment_ql(segment_ql: str) -> dict[str, Any] | None:
    """The parsed form (``models.Expr``: ``op``/``args``/``ident``/``val``) of the ``FILTER`` part,
    in the shape of Lytics' ``ast`` (API v2 spec, ``models.Expr``), or None when the statement uses
    something this reader does not cover (functions, ``WITH`` settings): callers then fall back
    to comparing text, which at worst costs an unneeded update, never a missed one.
    """
    tokens: list[tuple[str, str]] = []
    for match in _QL_TOKEN.finditer(segment_ql or ""):
        kind = match.lastgroup
        if kind is None:
            continue
        value = match.group(kind)
        if kind == "str":
            value = re.sub(r"\\(.)", r"\1", value[1:-1])
        elif kind == "bt":
            value = value[1:-1]
        tokens.append((kind, value))
    tokens.append(("eof", ""))
    position = 0

    def peek(ahead: int = 0) -> tuple[str, str]:
        return tokens[min(position + ahead, len(tokens) - 1)]

    def take() -> tuple[str, str]:
        nonlocal position
        token = tokens[position]
        position += 1
        return token

    def keyword(token: tuple[str, str], *words: str) -> bool:
        return token[0] == "word" and token[1].upper() in words

    def expect(char: str) -> None:
        if take() != ("punct", char):
            raise _QLUnsupported(char)

    def literal() -> str:
        kind, value = take()
        if kind not in ("str", "word"):
            raise _QLUnsupported(value)
        return value

    def ident() -> dict[str, Any]:
        kind, value = take()
        if kind not in ("bt", "word") or (kind == "word" and value.upper() in _QL_CLAUSES):
            raise _QLUnsupported(value)
        return {"ident": value}

    def phrase() -> dict[str, Any]:
        token = peek()
        if keyword(token, "AND", "OR") and peek(1) == ("punct", "("):
            take()
            take()
            args = [phrase()]
            while peek() == ("punct", ","):
                take()
                args.append(phrase())
            expect(")")
            return {"op": token[1].lower(), "args": args}
        if keyword(token, "NOT"):
            take()
            return {"op": "not", "args": [phrase()]}
        if token == ("punct", "("):
            take()
            inner = phrase()
            expect(")")
            return inner
        if keyword(token, "EXISTS"):
            take()
            return {"op": "exists", "args": [ident()]}
        if keyword(token, "INCLUDE"):
            take()
            return {"op": "include", "args": [ident()]}
        if peek(1) == ("punct", "("):
            raise _QLUnsupported("function")
        field = ident()
        kind, value = peek()
        if kind == "op":
            take()
            return {"op": _QL_OPS[value], "args": [field, {"val": literal()}]}
        negated = keyword((kind, value), "NOT")
        if negated:
            take()
            kind, value = peek()
        word = value.upper() if kind == "word" else ""
        if word in _QL_LIST_OPS:
            take()
            expect("(")
            values = [literal()]
            while peek() == ("punct", ","):
                take()
                values.append(literal())
            expect(")")
            node: dict[str, Any] = {"op": word.lower(), "args": [field, *({"val": v} for v in values)]}
        elif word in ("CONTAINS", "LIKE"):
            take()
            node = {"op": word.lower(), "args": [field, {"val": literal()}]}
        else:
            raise _QLUnsupported(value)
        return {"op": "not", "args": [node]} if negated else node

    try:
        if not keyword(take(), "FILTER"):
            return None
        if peek() == ("punct", "*") or keyword(peek(), "MATCH_ALL"):
            take()
            ast: dict[str, Any] = {"op": "*"}
        else:
            ast = phrase()
        while peek()[0] != "eof":
            clause = take()
            if keyword(clause, "FROM", "ALIAS"):
                take()
            else:
                return None
    except (_QLUnsupported, IndexError, KeyError):
        return None
    return ast


def segment_references(segment_ql: str | None) -> set[str]:
    """Slugs or ids a FilterQL statement includes (``INCLUDE``)."""
    return set(_INCLUDE.findall(_code_only(segment_ql)))


def desired_segment_body(
    *,
    name: str,
    slug_name: str,
    segment_ql: str,
    table: str = "user",
    kind: str = "segment",
    description: str | None = None,
    is_public: bool | None = None,
    tags: list[str] | None = None,
    extra_fields: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The Segment body for a create or update, checked first for what Lytics would misread.

    * an ``ALIAS`` in the definition must equal ``slug_name`` (else the slug changes);
    * a ``FROM`` in the definition must equal ``table`` (else another segment is made);
      a definition without ``FROM`` gets ``FROM <table>`` written out.
    """
    problems = []
    if not slug_name or not re.fullmatch(r"[A-Za-z0-9_\-]+", slug_name):
        problems.append(f"slug_name {slug_name!r} must be letters, digits, '_' or '-'")
    if not name:
        problems.append("name is required")
    if not segment_ql or not segment_ql.strip():
        problems.append("segment_ql (the FilterQL definition) is required")
    code = _code_only(segment_ql)  # a string like "email from partner" is no FROM clause
    alias = _ALIAS.search(code)
    if alias and alias.group(1) != slug_name:
        problems.append(f"ALIAS {alias.group(1)!r} in segment_ql differs from slug_name {slug_name!r}")
    source = _FROM.search(code)
    if source and source.group(1) != table:
        problems.append(f"FROM {source.group(1)!r} in segment_ql differs from table {table!r}")
    if problems:
        raise AudienceValidationError("Invalid Lytics segment: " + "; ".join(problems), vendor="lytics")
    body: dict[str, Any] = {
        "name": name,
        "slug_name": slug_name,
        "segment_ql": with_table(segment_ql.strip(), table),
        "table": table,
        "kind": kind,
    }
    for key, value in (("description", description), ("is_public", is_public), ("tags", tags)):
        if value is not None:
            body[key] = value
    body.update(extra_fields or {})
    return body


def same_definition(current: dict[str, Any], segment_ql: str) -> bool:
    """Whether ``current`` already holds the definition ``segment_ql``.

    Lytics may store its own rendering of a statement (e.g. back-ticks dropped), so the text alone would
    differ on every run: the statement's parsed form is compared with the server's ``ast``
    (and its table with the segment's). Where the statement cannot be read here, the text is
    compared, whitespace and back-ticks folded.
    """
    have_text = current.get("segment_ql")
    if isinstance(have_text, str) and _fold(have_text) == _fold(segment_ql):
        return True
    wanted, have = parse_segment_ql(segment_ql), current.get("ast")
    if wanted is None or not isinstance(have, dict):
        return False
    source = _FROM.search(_code_only(segment_ql))
    table = source.group(1) if source else "user"
    return table == current.get("table", "user") and _canon_ast(wanted) == _canon_ast(have)


def _fold(segment_ql: str) -> str:
    return " ".join(segment_ql.replace("`", "").split())


def _canon_ast(node: Any) -> Any:
    """An ``ast`` without empty keys, operators lower-case (so equal forms compare equal)."""
    if isinstance(node, dict):
        out = {k: _canon_ast(v) for k, v in node.items() if v not in (None, "", [])}
        if isinstance(out.get("op"), str):
            out["op"] = out["op"].lower()
        return out
    if isinstance(node, list):
        return [_canon_ast(item) for item in node]
    return str(node) if isinstance(node, int | float) and not isinstance(node, bool) else node


def segment_changes(current: dict[str, Any], desired: dict[str, Any]) -> dict[str, Any]:
    """Fields of ``desired`` that differ from ``current`` (definitions by :func:`same_definition`)."""

    def canon(value: Any) -> Any:
        return sorted(map(str, value)) if isinstance(value, list) else value

    changes = {}
    for key, value in desired.items():
        if key == "segment_ql" and isinstance(value, str):
            if not same_definition(current, value):
                changes[key] = value
        elif canon(current.get(key)) != canon(value):
            changes[key] = value
    return changes


def update_body(current: dict[str, Any], desired: dict[str, Any]) -> dict[str, Any]:
    """The full object for a PUT: the current segment minus server fields, with the changes applied.

    Whether a Lytics segment PUT resets omitted fields is unverified (a job PUT does), so the
    whole object is sent.
    """
    body = {k: v for k, v in current.items() if k not in SERVER_MANAGED_FIELDS}
    body.update(desired)
    table = str(current.get("table") or body.get("table") or "user")
    if isinstance(body.get("segment_ql"), str):
        body["segment_ql"] = with_table(body["segment_ql"], table)  # never let the table reset to user
    return body
