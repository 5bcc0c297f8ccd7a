"""Accounting (every input row ends in exactly one bucket) and redaction of personal data.

Row buckets, per destination:

* ``invalid`` — the value failed validation (with a reason);
* ``duplicate`` — the normalised output equals an earlier row's output;
* ``unique`` — the first row of each distinct output: this identifier is in the list after the
  sync. Under a full replace it was sent; under an incremental sync it was either sent as an
  addition (``added``) or was already in the list (``unchanged``).

Invariant: ``unique + invalid + duplicate == rows`` and ``added + unchanged == unique``.
``sent_add`` and ``sent_remove`` count identifiers the destination acknowledged; they are updated
chunk by chunk, so a run failing part way still reports how far it got.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

MAX_SAMPLES = 5


#: most characters of any one part (local part, domain name, top-level domain, digits) a redaction keeps
REDACT_KEEP = 3


def printable(text: str) -> str:
    """``text`` with every character that is not printable (CR, LF, tab, NUL, U+2028...) as ``?``,
    so a value can never start a new line in a log or forge one."""
    return "".join(c if c.isprintable() else "?" for c in text)


def redact(value: str) -> str:
    """Mask a raw identifier so it can appear in logs and XCom.

    E-mail: ``j***@e***.com``; phone-like: ``+7******67``; anything else: first character and
    length, e.g. ``a***(12)``. Keeps at most three characters of any part (one of the local part and
    of the domain name, three of the top-level domain, three digits of a phone), and never passes a
    CR, LF or other unprintable character through (it becomes ``?``).
    """
    v = value.strip()
    if not v:
        return "<empty>"
    if "@" in v:
        local, _, domain = v.rpartition("@")
        dom, dot, tld = domain.rpartition(".")
        head = printable(local[:1]) or "?"
        if dot and dom:
            return f"{head}***@{printable(dom[:1])}***.{printable(tld[:REDACT_KEEP])}"
        return f"{head}***@{printable(domain[:1])}***"
    digits = [c for c in v if c.isdigit()]
    if len(digits) >= 7 and len(digits) >= len(v) * 0.6:
        prefix = "+" if v.startswith("+") else ""
        # str.isdigit also holds for other scripts' digits; they are printable, so kept as they are.
        return f"{prefix}{digits[0]}{'*' * (len(digits) - 3)}{''.join(digits[-2:])}"
    return f"{printable(v[:1])}***({len(v)})"


@dataclass
class Accounting:
    """Counters of one destination's run. Mutable; read with :meth:`as_dict` at any time."""

    rows: int = 0
    invalid: int = 0
    duplicate: int = 0
    unique: int = 0
    added: int = 0
    removed: int = 0
    unchanged: int = 0
    sent_add: int = 0
    sent_remove: int = 0
    vendor_rejected: int = 0
    #: identifiers sent that the vendor's answers neither accepted nor reported invalid
    vendor_unaccounted: int = 0
    chunks_sent: int = 0
    chunks_total: int = 0
    invalid_reasons: Counter[str] = field(default_factory=Counter)
    invalid_samples: list[dict[str, Any]] = field(default_factory=list)

    def record_invalid(self, reason: str, raw: str, location: str) -> None:
        """Count an invalid row; keep a redacted sample for the first few."""
        self.invalid += 1
        self.invalid_reasons[reason] += 1
        if len(self.invalid_samples) < MAX_SAMPLES:
            sample = {"at": printable(location)[:200], "reason": printable(reason), "value": redact(raw)}
            self.invalid_samples.append(sample)

    @property
    def invalid_share(self) -> float:
        """Share of rows that were invalid (0.0 for no rows)."""
        return self.invalid / self.rows if self.rows else 0.0

    def check(self) -> None:
        """Assert the accounting invariant; raises AssertionError naming the counts."""
        if self.unique + self.invalid + self.duplicate != self.rows:
            raise AssertionError(f"accounting broken: {self.as_dict()}")

    def as_dict(self) -> dict[str, Any]:
        """Small JSON-serialisable view for XCom and logs."""
        return {
            "rows": self.rows,
            "unique": self.unique,
            "invalid": self.invalid,
            "duplicate": self.duplicate,
            "added": self.added,
            "removed": self.removed,
            "unchanged": self.unchanged,
            "sent_add": self.sent_add,
            "sent_remove": self.sent_remove,
            "vendor_rejected": self.vendor_rejected,
            "vendor_unaccounted": self.vendor_unaccounted,
            "chunks_sent": self.chunks_sent,
            "chunks_total": self.chunks_total,
            "invalid_reasons": dict(sorted(self.invalid_reasons.items())),
            "invalid_samples": list(self.invalid_samples),
        }
