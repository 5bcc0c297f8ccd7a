"""The one shape of an audience Asset event's ``extra``, shared by every vendor.

Every operator and sensor builds the ``extra`` of the Asset events it emits with
:func:`audience_event_extra` (through ``AssetEmitterMixin.emit_asset_event``), so downstream DAGs
and the Audiences view read the same keys whatever the vendor. Version 1:

=======================  =========================================================================
key                      meaning
=======================  =========================================================================
audience_extra_version   ``1``; bumped when a key changes meaning (always present)
vendor                   the Asset URI scheme: ``lytics``, ``criteo``, ``segment``, ... (always)
account                  the account part of the URI (Lytics account, Segment space, Criteo
                         advertiser, Yandex login) (always)
kind                     ``segment``, ``audience``, ``retargeting-list`` (always)
object_id                the vendor object's id (always)
object_name              its name or slug
action                   what the task did: ``created``, ``updated``, ``synced``, ``reevaluated``...
state                    the vendor's state of the object after the task, e.g. ``is_processed``
mode                     the upload mode (``sync``, ``replace``, ``add``, ``remove``, ...)
rows                     input rows read
valid                    rows that passed validation (``rows - invalid``)
invalid                  ``{reason: count}`` of rows rejected as invalid
duplicates               valid rows that repeated an earlier row
added                    identifiers sent as additions and acknowledged
removed                  identifiers sent as removals and acknowledged
snapshot_size            identifiers in the list after the sync, by our count
vendor_size              the object's size as the vendor reports it
match_rate               the vendor's match rate, 0.0 to 1.0
drift                    ``vendor_size - snapshot_size`` when both are known
link                     the object's page in the vendor's web app (http or https)
live_at                  ISO time the vendor serves the uploaded data (Criteo's cycle)
=======================  =========================================================================

All keys but the first five are optional and left out when unknown. Counts only: never an
identifier, a sample or a token.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote

AUDIENCE_EXTRA_VERSION = 1
#: XCom key under which a task keeps the shapes it recorded, announced as Asset events or not.
AUDIENCE_EVENTS_XCOM = "audience_events"

#: keys taken from the Asset URI, present in every event.
REQUIRED_KEYS = ("audience_extra_version", "vendor", "account", "kind", "object_id")
_TEXT_KEYS = ("object_name", "action", "state", "mode", "link", "live_at")
_COUNT_KEYS = ("rows", "valid", "duplicates", "added", "removed", "snapshot_size", "vendor_size")
#: every key of version 1, in display order.
EXTRA_KEYS = (
    *REQUIRED_KEYS,
    "object_name",
    "action",
    "state",
    "mode",
    "rows",
    "valid",
    "invalid",
    "duplicates",
    "added",
    "removed",
    "snapshot_size",
    "vendor_size",
    "match_rate",
    "drift",
    "link",
    "live_at",
)
_MAX_TEXT = 300


def parse_asset_uri(uri: str) -> dict[str, str]:
    """``<vendor>://<account>/<kind>/<id>`` -> ``{"vendor", "account", "kind", "object_id"}``."""
    scheme, sep, rest = str(uri).partition("://")
    account, _, path = rest.partition("/")
    kind, _, object_id = path.partition("/")
    if not sep or not scheme or not kind or not object_id or "/" in object_id:
        raise ValueError(f"not an audience Asset URI (<vendor>://<account>/<kind>/<id>): {uri!r}")
    return {"vendor": scheme, "account": unquote(account), "kind": kind, "object_id": unquote(object_id)}


def _count(key: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0 or value != int(value):
        raise ValueError(f"audience event {key} must be a non-negative whole number, not {value!r}")
    return int(value)


def audience_event_extra(
    uri: str,
    *,
    invalid: Mapping[str, int] | int | None = None,
    match_rate: float | None = None,
    **fields: Any,
) -> dict[str, Any]:
    """The ``extra`` of an Asset event for the vendor object at ``uri``, in the version-1 shape.

    :param uri: the object's Asset URI; vendor, account, kind and id are taken from it.
    :param invalid: ``{reason: count}`` of invalid rows (an int is recorded as ``{"invalid": n}``).
    :param match_rate: the vendor's match rate, 0.0 to 1.0.
    :param fields: any other key of the shape (see the module docstring); None values are left out.
    :raises ValueError: for a key outside the shape or a value of the wrong type.
    """
    unknown = sorted(set(fields) - {*_TEXT_KEYS, *_COUNT_KEYS})
    if unknown:
        raise ValueError(f"not settable keys of the audience event shape: {', '.join(unknown)}")
    extra: dict[str, Any] = {"audience_extra_version": AUDIENCE_EXTRA_VERSION, **parse_asset_uri(uri)}
    for key in _TEXT_KEYS:
        value = fields.get(key)
        if value is None or value == "":
            continue
        text = str(value)[:_MAX_TEXT]
        if key == "link" and not text.startswith(("https://", "http://")):
            continue
        extra[key] = text
    for key in _COUNT_KEYS:
        if fields.get(key) is not None:
            extra[key] = _count(key, fields[key])
    if isinstance(invalid, Mapping):
        extra["invalid"] = {str(reason)[:80]: _count("invalid", n) for reason, n in invalid.items()}
    elif invalid is not None:
        total = _count("invalid", invalid)
        extra["invalid"] = {"invalid": total} if total else {}
    if match_rate is not None:
        rate = float(match_rate)
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"audience event match_rate must be between 0 and 1, not {match_rate!r}")
        extra["match_rate"] = rate
    if "vendor_size" in extra and "snapshot_size" in extra:
        extra["drift"] = extra["vendor_size"] - extra["snapshot_size"]
    return {key: extra[key] for key in EXTRA_KEYS if key in extra}


def upload_counts(counts: Mapping[str, Any], *, mode: str | None = None) -> dict[str, Any]:
    """Shape fields from the contact-list engine's ``counts`` (``Accounting.as_dict()``).

    ``added``/``removed`` are what the vendor acknowledged; ``snapshot_size`` (the identifiers in
    the list after the sync) is known for a full replace or an incremental sync, not for one-way
    ``add``/``remove`` uploads, which do not know the list's other members.
    """
    rows = int(counts.get("rows", 0))
    invalid_total = int(counts.get("invalid", 0))
    reasons = dict(counts.get("invalid_reasons") or {})
    if invalid_total and not reasons:
        reasons = {"invalid": invalid_total}
    fields: dict[str, Any] = {
        "rows": rows,
        "valid": rows - invalid_total,
        "invalid": reasons,
        "duplicates": int(counts.get("duplicate", 0)),
        "added": int(counts.get("sent_add", 0)),
        "removed": int(counts.get("sent_remove", 0)),
    }
    if mode is None or mode in ("sync", "replace", "full_replace", "incremental"):
        fields["snapshot_size"] = int(counts.get("unique", 0))
    return fields


def read_audience_extra(extra: Any) -> dict[str, Any] | None:
    """The version-1 fields of a stored event's ``extra``, type-checked; None when it is not one.

    The Audiences view shows only what this returns, so a foreign key in an event never reaches it.
    """
    if not isinstance(extra, Mapping) or extra.get("audience_extra_version") != AUDIENCE_EXTRA_VERSION:
        return None
    out: dict[str, Any] = {}
    for key in ("vendor", "account", "kind", "object_id", *_TEXT_KEYS):
        value = extra.get(key)
        if isinstance(value, str) and value:
            out[key] = value[:_MAX_TEXT]
    if len([k for k in REQUIRED_KEYS[1:] if k in out]) != 4:
        return None
    if "link" in out and not out["link"].startswith(("https://", "http://")):
        del out["link"]
    for key in (*_COUNT_KEYS, "drift"):
        value = extra.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            out[key] = value
    rate = extra.get("match_rate")
    if isinstance(rate, int | float) and not isinstance(rate, bool) and 0 <= rate <= 1:
        out["match_rate"] = float(rate)
    invalid = extra.get("invalid")
    if isinstance(invalid, Mapping):
        out["invalid"] = {str(k)[:80]: v for k, v in invalid.items() if isinstance(v, int) and not isinstance(v, bool)}
    return out
