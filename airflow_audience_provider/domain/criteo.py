"""Criteo rules without I/O: bulk answers mapped to their inputs, and the audience algebra.

Criteo answers bulk calls with *partial approval*: HTTP 200 with per-item problems in
``warnings`` and/or ``errors``, each pointing at its input through ``instance`` (``@data/<index>``).
:func:`map_partial_approval` turns such an answer into a :class:`BulkResult`, item by item; the
hook returns it and the operators decide whether it fails the task. The audience algebra (nested
``and``/``or``/``not`` over segment ids) is checked and compared here, before anything is sent.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from airflow_audience_provider.core.errors import AudienceValidationError

_INSTANCE = re.compile(r"@data/(\d+)")


# ---------------------------------------------------------------------------------------------
# Partial approval
# ---------------------------------------------------------------------------------------------


def problem_index(problem: dict[str, Any]) -> int | None:
    """The input index a problem points at (``instance`` ``@data/3`` -> 3), or None for the whole call."""
    match = _INSTANCE.search(str(problem.get("instance") or ""))
    return int(match.group(1)) if match else None


@dataclass
class BulkResult:
    """A bulk call's outcome, item by item.

    :ivar data: the resources Criteo answered with (the applied items).
    :ivar items: one entry per input item, in input order: ``index``, ``id``, ``name``, ``status``
        (``ok`` or ``failed``) and ``problems`` (code, title, detail, severity, trace id).
    :ivar problems: every problem of the answer, each with its ``index`` (None: the whole call).
    """

    operation: str
    data: list[dict[str, Any]]
    items: list[dict[str, Any]]
    problems: list[dict[str, Any]] = field(default_factory=list)

    @property
    def failed(self) -> list[dict[str, Any]]:
        return [item for item in self.items if item["status"] == "failed"]

    @property
    def ok(self) -> bool:
        return not self.failed

    def describe_failures(self) -> str:
        parts = []
        for item in self.failed:
            label = item.get("name") or item.get("id") or f"item {item['index']}"
            reasons = "; ".join(
                f"{p.get('code')}: {p.get('detail') or p.get('title') or ''}".rstrip(": ") for p in item["problems"]
            )
            parts.append(f"{label} (@data/{item['index']}): {reasons or 'not applied, no reason given'}")
        return " | ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        """Small JSON-safe form for XCom (no identifiers)."""
        return {
            "operation": self.operation,
            "ok": self.ok,
            "items": self.items,
            "ids": [r.get("id") for r in self.data],
        }


def _clean_problem(problem: dict[str, Any], severity: str) -> dict[str, Any]:
    return {
        "severity": severity,
        "code": problem.get("code"),
        "type": problem.get("type"),
        "title": problem.get("title"),
        "detail": problem.get("detail"),
        "instance": problem.get("instance"),
        "trace_id": problem.get("traceId") or problem.get("traceIdentifier"),
        "index": problem_index(problem),
    }


def answer_problems(body: dict[str, Any]) -> list[dict[str, Any]]:
    """Every problem of an answer (``warnings`` first, then ``errors``), each with its severity and input index."""
    problems = [_clean_problem(p, "warning") for p in body.get("warnings") or [] if isinstance(p, dict)]
    return problems + [_clean_problem(p, "error") for p in body.get("errors") or [] if isinstance(p, dict)]


def map_partial_approval(
    operation: str,
    inputs: Sequence[dict[str, Any]],
    body: dict[str, Any] | None,
    *,
    match_by: str = "id",
) -> BulkResult:
    """Map a bulk answer's ``data`` / ``warnings`` / ``errors`` back to the input items.

    :param inputs: the request's ``data`` items (the ``attributes`` name is used for labels).
    :param match_by: ``id`` (update/delete: answer items carry the input ids) or ``name`` (create:
        a new item is recognised by its name).
    """
    body = body or {}
    data = [r for r in (body.get("data") or []) if isinstance(r, dict)]
    problems = answer_problems(body)
    answered_ids = {str(r.get("id")) for r in data if r.get("id") is not None}
    answered_names = [str((r.get("attributes") or {}).get("name")) for r in data]
    whole_call = [p for p in problems if p["index"] is None]
    items = []
    for index, item in enumerate(inputs):
        attributes = item.get("attributes") or {}
        own = [p for p in problems if p["index"] == index]
        item_id = item.get("id")
        name = attributes.get("name")
        if match_by == "name":
            applied = name is not None and str(name) in answered_names
            if applied:
                matched = data[answered_names.index(str(name))]
                item_id = matched.get("id")
        else:
            applied = item_id is not None and str(item_id) in answered_ids
        # An item with its own problem failed; without one, it failed only when it is missing from
        # the answer and the answer had problems (empty data + problems = all failed).
        failed = bool(own) or (not applied and bool(problems))
        items.append(
            {
                "index": index,
                "id": None if item_id is None else str(item_id),
                "name": name,
                "status": "failed" if failed else "ok",
                "problems": own or (whole_call if failed else []),
            }
        )
    return BulkResult(operation, data, items, problems)


# ---------------------------------------------------------------------------------------------
# Algebra
# ---------------------------------------------------------------------------------------------

_ALGEBRA_KEYS = ("audienceSegmentId", "and", "or", "not")


def validate_algebra(node: Any, path: str = "algebra") -> dict[str, Any]:
    """Check an audience algebra and return it in Criteo's shape (ids as strings).

    Each node has exactly one of ``audienceSegmentId`` (a segment id), ``and`` / ``or`` (a non-empty
    list of nodes) or ``not`` (one node), as Criteo's algebra node types say. ``segment`` is accepted as a short form of
    ``audienceSegmentId``.

    :raises AudienceValidationError: naming the path of the first bad node.
    """
    if not isinstance(node, dict):
        raise AudienceValidationError(f"{path} must be an object, got {type(node).__name__}", vendor="criteo")
    node = dict(node)
    if "segment" in node and "audienceSegmentId" not in node:
        node["audienceSegmentId"] = node.pop("segment")
    unknown = sorted(set(node) - set(_ALGEBRA_KEYS))
    if unknown:
        raise AudienceValidationError(
            f"{path} has unknown key(s) {unknown}; a node has exactly one of {list(_ALGEBRA_KEYS)}", vendor="criteo"
        )
    present = [k for k in _ALGEBRA_KEYS if node.get(k) is not None]
    if len(present) != 1:
        raise AudienceValidationError(
            f"{path} must have exactly one of {list(_ALGEBRA_KEYS)}, has {present or 'none'}", vendor="criteo"
        )
    key = present[0]
    value = node[key]
    if key == "audienceSegmentId":
        if isinstance(value, bool) or not isinstance(value, str | int) or not str(value).strip():
            raise AudienceValidationError(f"{path}.audienceSegmentId must be a segment id", vendor="criteo")
        return {"audienceSegmentId": str(value).strip()}
    if key == "not":
        return {"not": validate_algebra(value, f"{path}.not")}
    if not isinstance(value, list) or not value:
        raise AudienceValidationError(f"{path}.{key} must be a non-empty list of nodes", vendor="criteo")
    return {key: [validate_algebra(child, f"{path}.{key}[{i}]") for i, child in enumerate(value)]}


def algebra_segment_ids(node: dict[str, Any]) -> set[str]:
    """Every segment id an algebra uses."""
    if "audienceSegmentId" in node:
        return {str(node["audienceSegmentId"])}
    if "not" in node:
        return algebra_segment_ids(node["not"])
    return set().union(*(algebra_segment_ids(child) for child in node.get("and") or node.get("or") or []))


def canonical_algebra(node: dict[str, Any] | None) -> Any:
    """A comparable form of an algebra (``and``/``or`` children are unordered)."""
    if not node:
        return None
    node = {k: v for k, v in node.items() if v is not None}
    if "audienceSegmentId" in node:
        return ("seg", str(node["audienceSegmentId"]))
    if "not" in node:
        return ("not", canonical_algebra(node["not"]))
    for key in ("and", "or"):
        if key in node:
            return (key, tuple(sorted((canonical_algebra(c) for c in node[key]), key=repr)))
    return None
