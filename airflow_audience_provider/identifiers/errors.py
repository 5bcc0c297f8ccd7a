"""Exceptions of the contact-list engine.

Messages never contain a full identifier: they name the file, line and column, and at most a
redacted sample (see :func:`airflow_audience_provider.identifiers.accounting.redact`).
"""

from __future__ import annotations

from typing import Any


class ContactListError(Exception):
    """Base class for every error raised by the contact-list engine.

    :param message: human readable text, free of personal data.
    :param result: the accounting of the run so far (a small JSON-serialisable dict), so a failed
        task can still report how many rows were read, rejected or sent.
    """

    def __init__(self, message: str, *, result: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.result = result


class SourceError(ContactListError):
    """The input cannot be read as asked: undecodable bytes, a missing column, bad JSON.

    :param message: what is wrong.
    :param origin: the file (or a description of the source).
    :param line: the line, when known.
    :param column: the column (number or name), when known.
    :param result: the run's counts so far.

    The message reads ``"<origin>, line <line>, column <column>: <message>"``, e.g.
    ``"users.csv, line 17, column email: ..."``.
    """

    def __init__(
        self,
        message: str,
        *,
        origin: str,
        line: int | None = None,
        column: int | str | None = None,
        result: dict[str, Any] | None = None,
    ) -> None:
        where = origin
        if line is not None:
            where += f", line {line}"
        if column is not None:
            where += f", column {column}"
        super().__init__(f"{where}: {message}", result=result)
        self.origin = origin
        self.line = line
        self.column = column


class WrongIdentifierTypeError(SourceError):
    """The column holds another kind of identifier than the rule expects (e.g. phones for e-mail)."""


class EmptyInputError(ContactListError):
    """The input has no usable identifier and the task did not allow an empty list."""


class InvalidShareError(ContactListError):
    """More rows were invalid than the configured maximum share; nothing was sent."""


class MinimumEntriesError(ContactListError):
    """The list is smaller than the vendor's minimum (e.g. 100 entries for Yandex.Audience)."""


class RemovalGuardError(ContactListError):
    """The sync would remove too large a share of the current list (or empty it); nothing was sent."""


class SnapshotError(ContactListError):
    """The stored snapshot is unreadable or not in the expected order; we refuse to guess a diff."""


class SendError(ContactListError):
    """A destination refused or failed a chunk; the snapshot was not advanced."""


class SyncCancelled(ContactListError):
    """The sync was cancelled (the task was stopped) between two chunks; the snapshot was not advanced."""
