"""Yandex Direct rules without I/O: retargeting-list rules and per-item results.

Direct charges points for refused calls too, so :func:`validate_rules` checks ``Rules`` before
anything is sent; :func:`rules_signature` compares rules for "did anything change?";
:func:`item_results` maps a write method's per-item answers back to the inputs and
:func:`describe_outcome` writes one line per item for logs and errors.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from airflow_audience_provider.core.errors import AudienceServerError, AudienceValidationError

VENDOR = "yandex_direct"

RULE_OPERATORS = ("ALL", "ANY", "NONE")
LIST_TYPES = ("RETARGETING", "AUDIENCE")
#: Rules per list and arguments per list: the web UI's limits; the API's are UNVERIFIED.
MAX_RULES = 50
MAX_ARGUMENTS = 250
MAX_NAME = 250
MAX_DESCRIPTION = 4096
LIFE_SPAN_DAYS = (1, 540)
#: Days a Metrica goal counts when the rule does not say (our default; Direct requires a value).
DEFAULT_LIFE_SPAN = 90


# -- per-item results ----------------------------------------------------------------------


def _notifications(value: Any) -> list[dict[str, Any]]:
    if not isinstance(value, list):
        return []
    return [
        {"code": n.get("Code"), "message": n.get("Message"), "details": n.get("Details")}
        for n in value
        if isinstance(n, dict)
    ]


def item_results(result: Mapping[str, Any], key: str, inputs: Sequence[Any]) -> list[dict[str, Any]]:
    """Map a write method's ``<key>`` (``AddResults``, ...) back to its inputs, by position.

    Each outcome: ``{"index", "input", "id", "ok", "errors", "warnings"}`` (plus ``AdGroupId`` /
    ``CampaignId`` when Direct names them, as ``setBids`` does). ``Errors``/``Warnings`` may be absent
    or empty (production sends ``[]``, the sandbox omits them).
    """
    answers = result.get(key)
    if answers is None:
        answers = []
    if not isinstance(answers, list) or len(answers) != len(inputs):
        raise AudienceServerError(
            f"Yandex Direct answered {len(answers) if isinstance(answers, list) else 'no'} {key} "
            f"for {len(inputs)} items; cannot map the results to the input",
            vendor=VENDOR,
        )
    outcomes = []
    for index, (raw, item) in enumerate(zip(answers, inputs, strict=True)):
        answer = raw if isinstance(raw, dict) else {}
        errors = _notifications(answer.get("Errors"))
        outcome: dict[str, Any] = {
            "index": index,
            "input": item,
            "id": answer.get("Id"),
            "ok": not errors,
            "errors": errors,
            "warnings": _notifications(answer.get("Warnings")),
        }
        for extra in ("AdGroupId", "CampaignId"):
            if answer.get(extra) is not None:
                outcome[extra] = answer[extra]
        outcomes.append(outcome)
    return outcomes


def describe_outcome(outcome: Mapping[str, Any]) -> str:
    """One line per item for logs and error messages (never ids of people, only Direct object ids)."""
    notes = outcome.get("errors") or outcome.get("warnings") or []
    text = "; ".join(
        f"{n.get('code')} {n.get('message')}" + (f" ({n.get('details')})" if n.get("details") else "") for n in notes
    )
    state = "failed" if outcome.get("errors") else ("warning" if outcome.get("warnings") else "ok")
    return f"item {outcome.get('index')} {outcome.get('input')!r}: {state}" + (f": {text}" if text else "")


# -- rules ---------------------------------------------------------------------------------


def validate_rules(
    rules: Sequence[Mapping[str, Any]],
    *,
    max_rules: int = MAX_RULES,
    max_arguments: int = MAX_ARGUMENTS,
    metrica_goals: Iterable[int] = (),
) -> None:
    """Check Direct ``Rules`` locally before anything is sent (points are charged for errors too).

    :param metrica_goals: ids of Metrica goals in the rules: each needs a ``MembershipLifeSpan``
        (Direct requires it for goals; it ignores it for segments).
    :raises AudienceValidationError: naming the rule and the limit, for: no rules, too many rules or
        arguments, an unknown operator, an empty rule, a repeated goal in one rule, a missing or bad
        ``MembershipLifeSpan`` (1-540 days).
    """
    needs_span = {int(g) for g in metrica_goals}
    if not rules:
        raise AudienceValidationError("A retargeting list needs at least one rule", vendor=VENDOR, field="Rules")
    if len(rules) > max_rules:
        raise AudienceValidationError(
            f"A retargeting list may have at most {max_rules} rules, got {len(rules)}", vendor=VENDOR, field="Rules"
        )
    total = 0
    for number, rule in enumerate(rules, start=1):
        operator = rule.get("Operator")
        if operator not in RULE_OPERATORS:
            raise AudienceValidationError(
                f"Rule {number}: operator must be one of {', '.join(RULE_OPERATORS)}, got {operator!r}",
                vendor=VENDOR,
                field="Operator",
            )
        arguments = rule.get("Arguments") or []
        if not arguments:
            raise AudienceValidationError(
                f"Rule {number} ({operator}) has no segments or goals", vendor=VENDOR, field="Arguments"
            )
        seen: set[int] = set()
        for argument in arguments:
            external_id = argument.get("ExternalId")
            if not isinstance(external_id, int) or isinstance(external_id, bool) or external_id <= 0:
                raise AudienceValidationError(
                    f"Rule {number}: ExternalId must be a positive integer, got {external_id!r}",
                    vendor=VENDOR,
                    field="ExternalId",
                )
            if external_id in seen:
                raise AudienceValidationError(
                    f"Rule {number}: goal {external_id} appears twice", vendor=VENDOR, field="ExternalId"
                )
            seen.add(external_id)
            span = argument.get("MembershipLifeSpan")
            if span is None and external_id in needs_span:
                raise AudienceValidationError(
                    f"Rule {number}: Metrica goal {external_id} needs a membership life span "
                    f"({LIFE_SPAN_DAYS[0]}-{LIFE_SPAN_DAYS[1]} days)",
                    vendor=VENDOR,
                    field="MembershipLifeSpan",
                )
            if span is not None and not (
                isinstance(span, int) and LIFE_SPAN_DAYS[0] <= span <= LIFE_SPAN_DAYS[1] and not isinstance(span, bool)
            ):
                raise AudienceValidationError(
                    f"Rule {number}: membership life span of goal {external_id} must be "
                    f"{LIFE_SPAN_DAYS[0]}-{LIFE_SPAN_DAYS[1]} days, got {span!r}",
                    vendor=VENDOR,
                    field="MembershipLifeSpan",
                )
        total += len(arguments)
    if total > max_arguments:
        raise AudienceValidationError(
            f"A retargeting list may reference at most {max_arguments} goals and segments in total, got {total}",
            vendor=VENDOR,
            field="Arguments",
        )


def rules_signature(rules: Iterable[Mapping[str, Any]], compare_life_span: Iterable[int] = ()) -> list[Any]:
    """A canonical form of ``Rules`` for "did anything change?".

    Rule order and argument order do not matter. ``MembershipLifeSpan`` is compared only for the goal
    ids in ``compare_life_span`` (Metrica goals the caller set it for): Direct ignores it for segments
    and may read it back as ``null``, which must not look like drift.
    """
    keep = set(compare_life_span)
    canonical = []
    for rule in rules or []:
        arguments = sorted(
            (
                int(a.get("ExternalId")),
                a.get("MembershipLifeSpan") if int(a.get("ExternalId")) in keep else None,
            )
            for a in rule.get("Arguments") or []
        )
        canonical.append((str(rule.get("Operator")), arguments))
    return sorted(canonical, key=json.dumps)
