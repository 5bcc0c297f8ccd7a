"""Segment rules without I/O: audience bodies, definition checks and "did it change?".

What an audience create, update, preview or schedule sends is built and checked here before a
call (and its rate budget) is spent: :func:`audience_body`, :func:`audience_changes`,
:func:`preview_options`, :func:`schedule_body`; the hook and the operators both use them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from airflow_audience_provider.core.errors import AudienceValidationError

VENDOR = "segment"
#: The audience types Segment creates.
AUDIENCE_TYPES = ("USERS", "ACCOUNTS", "LINKED")


def canonical_query(query: str | None) -> str:
    """A definition with whitespace folded, for "did it change?" comparisons."""
    return " ".join((query or "").split())


def check_definition(definition: str) -> str:
    """Syntax sanity of an audience query (balanced quotes and parentheses) before spending a call.

    Segment validates the language itself (422); this only catches what surely cannot parse.
    """
    if not isinstance(definition, str) or not definition.strip():
        raise AudienceValidationError(
            "The audience definition (query) is required", vendor=VENDOR, field="definition.query"
        )
    depth, quoted, escaped = 0, False, False
    for char in definition:
        if escaped:
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == "'":
            quoted = not quoted
        elif not quoted and char == "(":
            depth += 1
        elif not quoted and char == ")":
            depth -= 1
            if depth < 0:
                break
    if quoted or depth != 0:
        raise AudienceValidationError(
            "The audience definition has unbalanced " + ("quotes" if quoted else "parentheses"),
            vendor=VENDOR,
            field="definition.query",
        )
    return definition.strip()


def audience_type_name(value: str) -> str:
    """``value`` as one of ``USERS``, ``ACCOUNTS``, ``LINKED`` (upper case), or a validation error."""
    kind = str(value or "").strip().upper()
    if kind not in AUDIENCE_TYPES:
        raise AudienceValidationError(
            f"audience_type must be one of {', '.join(AUDIENCE_TYPES)}, got {value!r}",
            vendor=VENDOR,
            field="audienceType",
        )
    return kind


def definition_body(query: str, target_entity: str | None) -> dict[str, Any]:
    """An audience ``definition`` object: the checked query and, for LINKED audiences, the target entity."""
    definition: dict[str, Any] = {"query": check_definition(query)}
    if target_entity:
        definition["targetEntity"] = target_entity
    return definition


def audience_body(
    *,
    name: str,
    definition: str,
    audience_type: str = "USERS",
    enabled: bool | None = None,
    description: str | None = None,
    options: dict[str, Any] | None = None,
    target_entity: str | None = None,
) -> dict[str, Any]:
    """A ``CreateAudienceInput`` (v1/v1beta shape: top-level ``audienceType``)."""
    if not name or not str(name).strip():
        raise AudienceValidationError("An audience name is required", vendor=VENDOR, field="name")
    kind = audience_type_name(audience_type)
    if target_entity and kind != "LINKED":
        raise AudienceValidationError("target_entity applies to LINKED audiences only", vendor=VENDOR)
    body: dict[str, Any] = {
        "name": name,
        "audienceType": kind,
        "definition": definition_body(definition, target_entity),
    }
    if enabled is not None:
        body["enabled"] = bool(enabled)
    if description is not None:
        body["description"] = description
    if options:
        body["options"] = dict(options)
    return body


#: The fields of ``CreateAudiencePreviewOptions`` (SDK 73.2.0) and what each must be.
PREVIEW_OPTIONS = {"filterByExternalIds": "a list of strings", "backfillEventDataDays": "a number"}


def preview_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """Preview options checked against the SDK model before a preview (and its quota) is spent."""
    unknown = sorted(set(options) - set(PREVIEW_OPTIONS))
    if unknown:
        raise AudienceValidationError(
            f"Preview options {unknown} are not preview options; a preview takes {', '.join(PREVIEW_OPTIONS)}",
            vendor=VENDOR,
            field="options",
        )
    ids = options.get("filterByExternalIds")
    if ids is not None and (not isinstance(ids, list | tuple) or not all(isinstance(i, str) for i in ids)):
        raise AudienceValidationError(
            "options.filterByExternalIds must be a list of strings", vendor=VENDOR, field="options.filterByExternalIds"
        )
    days = options.get("backfillEventDataDays")
    if days is not None and (isinstance(days, bool) or not isinstance(days, int | float)):
        raise AudienceValidationError(
            "options.backfillEventDataDays must be a number", vendor=VENDOR, field="options.backfillEventDataDays"
        )
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in options.items() if v is not None}


SCHEDULE_INTERVALS = ("15m", "30m", "1h", "2h", "4h", "6h", "8h", "12h", "1d")


def schedule_body(strategy: str, config: dict[str, Any]) -> dict[str, Any]:
    """A schedule body, checked against the documented strategies (``PERIODIC``, ``SPECIFIC_DAYS``)."""
    strategy = str(strategy or "").upper()
    config = dict(config or {})
    if strategy == "PERIODIC":
        if config.get("interval") not in SCHEDULE_INTERVALS:
            raise AudienceValidationError(
                f"PERIODIC schedules need config.interval in {', '.join(SCHEDULE_INTERVALS)}", vendor=VENDOR
            )
    elif strategy == "SPECIFIC_DAYS":
        days, hours = config.get("days") or [], config.get("hours") or []
        if not days or not all(isinstance(d, int) and 0 <= d <= 6 for d in days):
            raise AudienceValidationError("SPECIFIC_DAYS needs config.days in 0 (Sunday) .. 6", vendor=VENDOR)
        if not hours or not all(isinstance(h, int) and 0 <= h <= 23 for h in hours):
            raise AudienceValidationError("SPECIFIC_DAYS needs config.hours in 0 .. 23", vendor=VENDOR)
        if not config.get("timezone"):
            raise AudienceValidationError("SPECIFIC_DAYS needs config.timezone (tz database name)", vendor=VENDOR)
    else:
        raise AudienceValidationError("strategy must be PERIODIC or SPECIFIC_DAYS", vendor=VENDOR)
    return {"strategy": strategy, "config": config}


def audience_changes(
    current: dict[str, Any],
    *,
    name: str | None = None,
    definition: str | None = None,
    description: str | None = None,
    enabled: bool | None = None,
    options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The ``UpdateAudienceForSpaceInput`` that brings ``current`` to the desired state (empty: unchanged).

    Definitions compare with whitespace folded; ``options`` compare key by key (Segment may echo
    defaults back, e.g. force ``includeHistoricalData``), so only the keys the user set count.
    """
    changes: dict[str, Any] = {}
    if name is not None and current.get("name") != name:
        changes["name"] = name
    if definition is not None and canonical_query((current.get("definition") or {}).get("query")) != canonical_query(
        definition
    ):
        changes["definition"] = {"query": check_definition(definition)}
    if description is not None and (current.get("description") or "") != description:
        changes["description"] = description
    if enabled is not None and bool(current.get("enabled")) != bool(enabled):
        changes["enabled"] = bool(enabled)
    if options:
        have = current.get("options") or {}
        if any(_canon_option(have.get(k)) != _canon_option(v) for k, v in options.items()):
            changes["options"] = {**have, **options}
    return changes


def pending_changes(current: dict[str, Any], fields: dict[str, Any]) -> dict[str, Any]:
    """The part of an update ``fields`` that ``current`` does not carry yet."""
    definition = fields.get("definition")
    return audience_changes(
        current,
        name=fields.get("name"),
        definition=definition.get("query") if isinstance(definition, dict) else None,
        description=fields.get("description"),
        enabled=fields.get("enabled"),
        options=fields.get("options"),
    )


def _canon_option(value: Any) -> Any:
    return sorted(map(str, value)) if isinstance(value, list) else value
