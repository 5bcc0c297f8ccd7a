"""A small, real parser of Lytics FilterQL (SegmentQL) for the Lytics fake.

Grammar (Lytics' v1 API segment-create description and its agent-skills FilterQL grammar)::

    FILTER <phrase> [FROM <table>] [WITH name = "...", ...] [ALIAS <slug>]
    phrase     := AND ( phrase, ... ) | OR ( phrase, ... ) | NOT phrase | ( phrase ) | expression
    expression := ident <op> literal                 op: = == != > >= < <=
                | EXISTS ident
                | ident [NOT] IN ( lit, ... )
                | ident [NOT] CONTAINS lit
                | ident LIKE "pat*"
                | ident INTERSECTS ( lit, ... )
                | ident BETWEEN lit AND lit
                | INCLUDE <slug> | INCLUDE `<32-hex id>`
                | timewindow(field, X, Y)            X in 1,5,10,25,50,100; Y in 7,30
                | geodistance(field, "lat,lon", km)
    FILTER * and FILTER match_all match everything. Keywords are case-insensitive;
    ``--`` starts a comment; back-ticks quote identifiers.

:func:`parse` returns the AST in the spec's ``models.Expr`` shape (``op``/``args``/``ident``/``val``,
literals always as strings) plus the table, alias, fields, included segments; it raises
:class:`FilterQLError` with a message that names the position.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

__all__ = ["FilterQLError", "ParsedQL", "ast_to_ql", "parse"]

KEYWORDS = frozenset(
    {
        "FILTER", "FROM", "WITH", "ALIAS", "AND", "OR", "NOT", "EXISTS", "INCLUDE",
        "IN", "CONTAINS", "LIKE", "INTERSECTS", "BETWEEN",
    }
)  # fmt: skip
COMPARISONS = {"=": "=", "==": "=", "!=": "!=", ">": ">", ">=": ">=", "<": "<", "<=": "<="}
TIMEWINDOW_X = {"1", "5", "10", "25", "50", "100"}
TIMEWINDOW_Y = {"7", "30"}
FUNCTIONS = {"timewindow": 3, "geodistance": 3}

_TOKEN_RE = re.compile(
    r"""
    (?P<ws>\s+|--[^\n]*)
  | (?P<num>-?\d+(?:\.\d+)?[A-Za-z]*)
  | (?P<ident>[A-Za-z_$][A-Za-z0-9_.$-]*)
  | (?P<op>==|!=|>=|<=|=|>|<)
  | (?P<punct>[(),*])
    """,
    re.VERBOSE,
)


class FilterQLError(ValueError):
    """The statement does not parse; ``str(exc)`` is the vendor-style message."""

    def __init__(self, message: str, position: int | None = None) -> None:
        self.position = position
        where = f" at position {position}" if position is not None else ""
        super().__init__(f"Invalid SegmentQL: {message}{where}")


@dataclass
class _Token:
    kind: str  # str, bt, num, ident, op, punct, eof
    value: str
    pos: int

    def describe(self) -> str:
        if self.kind == "eof":
            return "end of statement"
        if self.kind == "str":
            return f'"{self.value}"'
        return repr(self.value)

    def is_kw(self, *words: str) -> bool:
        return self.kind == "ident" and self.value.upper() in words


@dataclass
class ParsedQL:
    """Result of :func:`parse`."""

    ast: dict[str, Any]
    table: str | None = None
    alias: str | None = None
    withs: dict[str, str] = field(default_factory=dict)
    fields: list[str] = field(default_factory=list)
    includes: list[str] = field(default_factory=list)
    datemath: bool = False


def _tokenize(text: str) -> list[_Token]:
    tokens: list[_Token] = []
    pos = 0
    while pos < len(text):
        char = text[pos]
        if char in "\"'`":
            end = pos + 1
            chunks: list[str] = []
            while end < len(text) and text[end] != char:
                if text[end] == "\\" and end + 1 < len(text):
                    chunks.append(text[end + 1])
                    end += 2
                    continue
                chunks.append(text[end])
                end += 1
            if end >= len(text):
                what = "identifier" if char == "`" else "string"
                raise FilterQLError(f"unterminated {what} starting with {char}", pos)
            tokens.append(_Token("bt" if char == "`" else "str", "".join(chunks), pos))
            pos = end + 1
            continue
        match = _TOKEN_RE.match(text, pos)
        if not match:
            raise FilterQLError(f"unexpected character {char!r}", pos)
        kind = match.lastgroup or ""
        if kind != "ws":
            tokens.append(_Token(kind, match.group(), pos))
        pos = match.end()
    tokens.append(_Token("eof", "", len(text)))
    return tokens


class _Parser:
    def __init__(self, text: str) -> None:
        self.tokens = _tokenize(text)
        self.index = 0
        self.fields: list[str] = []
        self.includes: list[str] = []
        self.datemath = False

    # -------------------------------------------------------------- helpers
    @property
    def tok(self) -> _Token:
        return self.tokens[self.index]

    def peek(self, ahead: int = 1) -> _Token:
        return self.tokens[min(self.index + ahead, len(self.tokens) - 1)]

    def advance(self) -> _Token:
        token = self.tok
        if token.kind != "eof":
            self.index += 1
        return token

    def fail(self, expected: str) -> FilterQLError:
        return FilterQLError(f"expected {expected} but found {self.tok.describe()}", self.tok.pos)

    def expect_punct(self, char: str) -> None:
        if not (self.tok.kind == "punct" and self.tok.value == char):
            raise self.fail(f"'{char}'")
        self.advance()

    def identifier(self, what: str = "a field name") -> str:
        token = self.tok
        if token.kind == "bt" or (token.kind == "ident" and token.value.upper() not in KEYWORDS):
            self.advance()
            return token.value
        raise self.fail(what)

    def literal(self) -> str:
        token = self.tok
        if token.kind in ("str", "num") or (token.kind == "ident" and token.value.upper() not in KEYWORDS):
            self.advance()
            if token.kind == "str" and token.value.lower().startswith("now"):
                self.datemath = True
            return token.value
        raise self.fail("a value")

    def literal_list(self) -> list[str]:
        self.expect_punct("(")
        values = [self.literal()]
        while self.tok.kind == "punct" and self.tok.value == ",":
            self.advance()
            values.append(self.literal())
        self.expect_punct(")")
        return values

    def use_field(self, name: str) -> dict[str, Any]:
        if name not in self.fields:
            self.fields.append(name)
        return {"ident": name}

    # -------------------------------------------------------------- grammar
    def statement(self) -> ParsedQL:
        if not self.tok.is_kw("FILTER"):
            if self.tok.kind == "eof":
                raise FilterQLError("empty statement; expected FILTER")
            raise self.fail("FILTER")
        self.advance()
        if (self.tok.kind == "punct" and self.tok.value == "*") or (
            self.tok.kind == "ident" and self.tok.value.lower() == "match_all"
        ):
            self.advance()
            ast: dict[str, Any] = {"op": "*"}
        else:
            ast = self.phrase()
        result = ParsedQL(ast=ast)
        seen: set[str] = set()
        while self.tok.kind != "eof":
            if not self.tok.is_kw("FROM", "WITH", "ALIAS"):
                raise self.fail("FROM, WITH, ALIAS or end of statement")
            clause = self.advance().value.upper()
            if clause in seen:
                raise FilterQLError(f"{clause} given twice", self.tokens[self.index - 1].pos)
            seen.add(clause)
            if clause == "FROM":
                result.table = self.identifier("a table name")
            elif clause == "ALIAS":
                if self.tok.kind == "str":
                    result.alias = self.advance().value
                else:
                    result.alias = self.identifier("an alias (slug)")
            else:
                while True:
                    name = self.identifier("a WITH setting name")
                    if not (self.tok.kind == "op" and self.tok.value == "="):
                        raise self.fail("'='")
                    self.advance()
                    result.withs[name] = self.literal()
                    if not (self.tok.kind == "punct" and self.tok.value == ","):
                        break
                    self.advance()
        result.fields = self.fields
        result.includes = self.includes
        result.datemath = self.datemath
        return result

    def phrase(self) -> dict[str, Any]:
        token = self.tok
        if token.is_kw("AND", "OR") and self.peek().kind == "punct" and self.peek().value == "(":
            self.advance()
            self.advance()
            args = [self.phrase()]
            while self.tok.kind == "punct" and self.tok.value == ",":
                self.advance()
                args.append(self.phrase())
            self.expect_punct(")")
            return {"op": token.value.lower(), "args": args}
        if token.is_kw("AND", "OR"):
            self.advance()
            raise self.fail(f"'(' after {token.value.upper()}")
        if token.is_kw("NOT"):
            self.advance()
            return {"op": "not", "args": [self.phrase()]}
        if token.kind == "punct" and token.value == "(":
            self.advance()
            inner = self.phrase()
            self.expect_punct(")")
            return inner
        return self.expression()

    def expression(self) -> dict[str, Any]:
        token = self.tok
        if token.is_kw("EXISTS"):
            self.advance()
            return {"op": "exists", "args": [self.use_field(self.identifier())]}
        if token.is_kw("INCLUDE"):
            self.advance()
            ref = self.identifier("a segment slug or `id` after INCLUDE")
            if ref not in self.includes:
                self.includes.append(ref)
            return {"op": "include", "args": [{"ident": ref}]}
        if token.kind == "ident" and self.peek().kind == "punct" and self.peek().value == "(":
            return self.function()
        if token.kind == "eof":
            raise self.fail("an expression")
        name = self.identifier("an expression")
        node = self.use_field(name)
        op = self.tok
        if op.kind == "op":
            self.advance()
            return {"op": COMPARISONS[op.value], "args": [node, {"val": self.literal()}]}
        negate = False
        if op.is_kw("NOT") and self.peek().is_kw("IN", "CONTAINS"):
            self.advance()
            negate = True
            op = self.tok
        if op.is_kw("IN", "INTERSECTS"):
            self.advance()
            result = {"op": op.value.lower(), "args": [node] + [{"val": v} for v in self.literal_list()]}
        elif op.is_kw("CONTAINS", "LIKE"):
            self.advance()
            result = {"op": op.value.lower(), "args": [node, {"val": self.literal()}]}
        elif op.is_kw("BETWEEN"):
            self.advance()
            low = self.literal()
            if not self.tok.is_kw("AND"):
                raise self.fail("AND in BETWEEN")
            self.advance()
            result = {"op": "between", "args": [node, {"val": low}, {"val": self.literal()}]}
        else:
            raise FilterQLError(
                f"expected an operator (= != > >= < <= IN CONTAINS LIKE INTERSECTS BETWEEN) after {name!r} "
                f"but found {op.describe()}",
                op.pos,
            )
        return {"op": "not", "args": [result]} if negate else result

    def function(self) -> dict[str, Any]:
        token = self.advance()
        name = token.value.lower()
        if name not in FUNCTIONS:
            raise FilterQLError(f"unknown function {token.value!r}", token.pos)
        self.expect_punct("(")
        target = self.use_field(self.identifier())
        args: list[str] = []
        while self.tok.kind == "punct" and self.tok.value == ",":
            self.advance()
            args.append(self.literal())
        self.expect_punct(")")
        if len(args) + 1 != FUNCTIONS[name]:
            raise FilterQLError(f"{name}() takes {FUNCTIONS[name]} arguments, got {len(args) + 1}", token.pos)
        if name == "timewindow" and (args[0] not in TIMEWINDOW_X or args[1] not in TIMEWINDOW_Y):
            raise FilterQLError("timewindow(field, X, Y) needs X in 1,5,10,25,50,100 and Y in 7,30", token.pos)
        return {"op": name, "args": [target] + [{"val": v} for v in args]}


def parse(text: str) -> ParsedQL:
    """Parse a FilterQL statement.

    :raises FilterQLError: when it does not parse (message names what was expected and where).
    """
    if not isinstance(text, str):
        raise FilterQLError("segment_ql must be a string")
    return _Parser(text).statement()


# ---------------------------------------------------------------------- AST -> text
def _quote(value: str) -> str:
    if re.fullmatch(r"-?\d+(?:\.\d+)?", value):
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _ident(name: str) -> str:
    if re.fullmatch(r"[A-Za-z_$][A-Za-z0-9_.$-]*", name) and name.upper() not in KEYWORDS:
        return name
    return f"`{name}`"


def _node_to_ql(node: Any) -> str:
    if not isinstance(node, dict):
        raise FilterQLError("every ast node must be an object")
    op = str(node.get("op", "")).lower()
    args = node.get("args") or []
    if not isinstance(args, list):
        raise FilterQLError("ast args must be a list")

    def leaf(arg: Any, key: str) -> str:
        if not isinstance(arg, dict) or not isinstance(arg.get(key), str):
            raise FilterQLError(f"ast operator {op!r} needs an argument with {key!r}")
        return arg[key]

    if op == "*":
        return "*"
    if op in ("and", "or"):
        if not args:
            raise FilterQLError(f"ast {op!r} needs arguments")
        return f"{op.upper()} (" + ", ".join(_node_to_ql(a) for a in args) + ")"
    if op == "not" and len(args) == 1:
        return "NOT " + _node_to_ql(args[0])
    if op == "exists" and len(args) == 1:
        return "EXISTS " + _ident(leaf(args[0], "ident"))
    if op == "include" and len(args) == 1:
        return "INCLUDE " + _ident(leaf(args[0], "ident"))
    if op in COMPARISONS and len(args) == 2:
        return f"{_ident(leaf(args[0], 'ident'))} {COMPARISONS[op]} {_quote(leaf(args[1], 'val'))}"
    if op in ("in", "intersects") and len(args) >= 2:
        values = ", ".join(_quote(leaf(a, "val")) for a in args[1:])
        return f"{_ident(leaf(args[0], 'ident'))} {op.upper()} ({values})"
    if op in ("contains", "like") and len(args) == 2:
        return f"{_ident(leaf(args[0], 'ident'))} {op.upper()} {_quote(leaf(args[1], 'val'))}"
    if op == "between" and len(args) == 3:
        low, high = _quote(leaf(args[1], "val")), _quote(leaf(args[2], "val"))
        return f"{_ident(leaf(args[0], 'ident'))} BETWEEN {low} AND {high}"
    if op in FUNCTIONS and len(args) == FUNCTIONS[op]:
        rest = ", ".join(_quote(leaf(a, "val")) for a in args[1:])
        return f"{op}({_ident(leaf(args[0], 'ident'))}, {rest})"
    raise FilterQLError(f"unsupported ast operator {op!r} with {len(args)} arguments")


def ast_to_ql(ast: Any, table: str | None = None, alias: str | None = None) -> str:
    """Render an AST (``models.Expr`` shape) as a FilterQL statement.

    :raises FilterQLError: when the AST has an unknown operator or malformed arguments.
    """
    text = "FILTER " + _node_to_ql(ast)
    if table:
        text += f" FROM {table}"
    if alias:
        text += f" ALIAS {alias}"
    return text
