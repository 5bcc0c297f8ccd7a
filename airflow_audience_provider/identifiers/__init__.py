"""Vendor-neutral contact-list engine: read, normalise, validate, hash, chunk and sync identifiers.

Vendor operators call :func:`~airflow_audience_provider.identifiers.sync.sync_contact_list` (or
:func:`~airflow_audience_provider.identifiers.sync.plan_contact_list_sync` for a dry
run, :func:`~airflow_audience_provider.identifiers.fanout.run_destinations` for one read feeding
several destinations) with a rule from
:func:`~airflow_audience_provider.identifiers.rules.get_rule` and a
:class:`~airflow_audience_provider.identifiers.sync.ChunkSender` of the vendor
(:mod:`airflow_audience_provider.operators.senders`)::

    from airflow_audience_provider.identifiers import SyncOptions, get_rule, sync_contact_list

    result = sync_contact_list(
        "s3://crm-exports/loyal/2026-11-25.csv",  # or a path, an XCom reference, an iterable
        get_rule("criteo", "email"),
        sender,  # CriteoChunkSender(hook, "730011223344")
        destination_key="730011223344",  # names the snapshot directory
        column="email",
        options=SyncOptions(max_invalid_share=0.05, max_removal_share=0.2),
    )
    # result: small JSON-serialisable dict for XCom (counts, invalid reasons, redacted samples,
    # chunks, estimated requests, snapshot location, guards that blocked)

A sender implements ``add``, ``remove``, ``replace`` (the list becomes exactly this chunk) and
``clear``; each receives a :class:`~airflow_audience_provider.identifiers.chunking.Chunk` within
the vendor's limits. Request-based vendors use
``chunk.identifiers``; file-based vendors stream ``chunk.write_to(fh)`` (header included).

Importing this package is cheap: names are resolved on first use, and nothing here imports
Airflow, pyarrow or phonenumbers at module level.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS: dict[str, str] = {
    # rules
    "IdentifierType": "rules",
    "HashAlgorithm": "rules",
    "PhoneFormat": "rules",
    "NormalisationProfile": "rules",
    "VendorRule": "rules",
    "get_rule": "rules",
    "list_rules": "rules",
    "register_rule": "rules",
    # normalise / hash
    "InvalidIdentifier": "normalise",
    "normalise_email": "normalise",
    "normalise_phone": "normalise",
    "normalise_maid": "normalise",
    "normalise_opaque": "normalise",
    "normalise_sha256": "normalise",
    "hash_value": "hashing",
    # accounting
    "Accounting": "accounting",
    "redact": "accounting",
    # sources
    "CsvSource": "sources",
    "TextSource": "sources",
    "JsonLinesSource": "sources",
    "ParquetSource": "sources",
    "IterableSource": "sources",
    "IdentifierSource": "sources",
    "open_source": "sources",
    # chunking
    "Chunk": "chunking",
    "render_file": "chunking",
    # snapshots
    "SnapshotStore": "snapshot",
    "default_snapshot_base": "snapshot",
    # sync
    "ChunkSender": "sync",
    "ChunkResult": "sync",
    "Destination": "sync",
    "SyncOptions": "sync",
    "sync_contact_list": "sync",
    "plan_contact_list_sync": "sync",
    "plan_allows": "sync",
    "snapshot_for": "sync",
    "lease_for": "sync",
    "MODES": "sync",
    "run_destinations": "fanout",
    # state: lease and journal
    "DestinationLease": "lease",
    "LeaseBusyError": "lease",
    "LeaseLostError": "lease",
    "Journal": "journal",
    "StateFileError": "state",
    # errors
    "ContactListError": "errors",
    "SourceError": "errors",
    "WrongIdentifierTypeError": "errors",
    "EmptyInputError": "errors",
    "InvalidShareError": "errors",
    "MinimumEntriesError": "errors",
    "RemovalGuardError": "errors",
    "SnapshotError": "errors",
    "SendError": "errors",
    "SyncCancelled": "errors",
}

__all__ = [
    "MODES",
    "Accounting",
    "Chunk",
    "ChunkResult",
    "ChunkSender",
    "ContactListError",
    "CsvSource",
    "Destination",
    "DestinationLease",
    "EmptyInputError",
    "HashAlgorithm",
    "IdentifierSource",
    "IdentifierType",
    "InvalidIdentifier",
    "InvalidShareError",
    "IterableSource",
    "Journal",
    "JsonLinesSource",
    "LeaseBusyError",
    "LeaseLostError",
    "MinimumEntriesError",
    "NormalisationProfile",
    "ParquetSource",
    "PhoneFormat",
    "RemovalGuardError",
    "SendError",
    "SnapshotError",
    "SnapshotStore",
    "SourceError",
    "StateFileError",
    "SyncCancelled",
    "SyncOptions",
    "TextSource",
    "VendorRule",
    "WrongIdentifierTypeError",
    "default_snapshot_base",
    "get_rule",
    "hash_value",
    "lease_for",
    "list_rules",
    "normalise_email",
    "normalise_maid",
    "normalise_opaque",
    "normalise_phone",
    "normalise_sha256",
    "open_source",
    "plan_allows",
    "plan_contact_list_sync",
    "redact",
    "register_rule",
    "render_file",
    "run_destinations",
    "snapshot_for",
    "sync_contact_list",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return list(__all__)


if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    from airflow_audience_provider.identifiers.accounting import Accounting, redact
    from airflow_audience_provider.identifiers.chunking import Chunk, render_file
    from airflow_audience_provider.identifiers.errors import (
        ContactListError,
        EmptyInputError,
        InvalidShareError,
        MinimumEntriesError,
        RemovalGuardError,
        SendError,
        SnapshotError,
        SourceError,
        SyncCancelled,
        WrongIdentifierTypeError,
    )
    from airflow_audience_provider.identifiers.fanout import run_destinations
    from airflow_audience_provider.identifiers.hashing import hash_value
    from airflow_audience_provider.identifiers.journal import Journal
    from airflow_audience_provider.identifiers.lease import DestinationLease, LeaseBusyError, LeaseLostError
    from airflow_audience_provider.identifiers.normalise import (
        InvalidIdentifier,
        normalise_email,
        normalise_maid,
        normalise_opaque,
        normalise_phone,
        normalise_sha256,
    )
    from airflow_audience_provider.identifiers.rules import (
        HashAlgorithm,
        IdentifierType,
        NormalisationProfile,
        PhoneFormat,
        VendorRule,
        get_rule,
        list_rules,
        register_rule,
    )
    from airflow_audience_provider.identifiers.snapshot import SnapshotStore, default_snapshot_base
    from airflow_audience_provider.identifiers.sources import (
        CsvSource,
        IdentifierSource,
        IterableSource,
        JsonLinesSource,
        ParquetSource,
        TextSource,
        open_source,
    )
    from airflow_audience_provider.identifiers.state import StateFileError
    from airflow_audience_provider.identifiers.sync import (
        MODES,
        ChunkResult,
        ChunkSender,
        Destination,
        SyncOptions,
        lease_for,
        plan_allows,
        plan_contact_list_sync,
        snapshot_for,
        sync_contact_list,
    )
