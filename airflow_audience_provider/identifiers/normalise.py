"""Normalisers and validators, one per identifier type.

Each normaliser takes one raw string and returns the normalised string, or raises
:class:`InvalidIdentifier` with a short machine reason (``"email_syntax"``...). The reason goes
into the accounting histogram; the raw value never goes into the exception text.

:func:`normalise_batch` is the hot path: for e-mail, MAID and pre-hashed input it validates a
whole batch with one regular-expression pass in C and only falls back to the per-value functions
when the batch holds at least one value the fast pattern rejects. The fast pattern accepts
exactly the values the per-value function accepts (a property test checks this), so results do
not depend on which path ran.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from airflow_audience_provider.identifiers.rules import IdentifierType, NormalisationProfile, PhoneFormat


class InvalidIdentifier(ValueError):
    """A value failed validation; ``reason`` is a short machine code without personal data."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# Characters RFC 5322 allows unquoted in a local part (dot-atom), lower-case only because the
# value is lower-cased first. Quoted local parts and IP-literal domains are not accepted: no
# ad platform matches them.
_LOCAL = r"[a-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[a-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
_DOMAIN = r"(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z](?:[a-z0-9-]{0,61}[a-z0-9])?"
_EMAIL_CORE = rf"{_LOCAL}@{_DOMAIN}"
_EMAIL_RE = re.compile(_EMAIL_CORE)
# Block patterns match one line each, consecutively: "blanks, value, blanks, end of line".
# Without ^/$ anchors the regex engine does not retry at every character, which makes the
# pass about a third faster; the price is that a bad line could match partly (a valid-looking
# tail), which _block_values() detects by length. Only ASCII blanks are trimmed here; anything
# else (NBSP, \x1c...) makes the batch fall back to the per-value path, which trims with
# str.strip().
_WS = r"[ \t\r\f\v]*"
_EOL = r"(?:\n|\Z)"
_EMAIL_BLOCK_RE = re.compile(rf"{_WS}({_EMAIL_CORE}){_WS}{_EOL}".encode())

_UUID_CORE = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
_UUID_RE = re.compile(_UUID_CORE)
_UUID_BLOCK_RE = re.compile(rf"{_WS}({_UUID_CORE}){_WS}{_EOL}".encode())
_HEX32_RE = re.compile(r"[0-9a-f]{32}")
_SHA256_RE = re.compile(r"[0-9a-f]{64}")
_SHA256_BLOCK_RE = re.compile(rf"{_WS}([0-9a-f]{{64}}){_WS}{_EOL}".encode())
_ZERO_UUID = "00000000-0000-0000-0000-000000000000"
_MAX_EMAIL = 254  # RFC 5321 path limit; longer values cannot be delivered, nor matched
_MAX_OPAQUE = 512
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")
_PHONE_CHARS_RE = re.compile(r"[0-9+()\-.\s/]+(?:(?:ext|x|#)\.?\s*\d+)?", re.I)


def normalise_email(value: str) -> str:
    """Trim and lower-case an e-mail address, then check its syntax.

    Criteo (criteo.md §5.7) and Yandex.Audience (yandex_audience.md §6.3) both ask for trimmed,
    lower-case addresses. Non-ASCII addresses are rejected (``email_non_ascii``): Yandex asks for
    "lower-case Latin", and neither vendor documents how it hashes internationalised addresses.

    :raises InvalidIdentifier: ``empty``, ``email_too_long``, ``email_non_ascii``, ``email_no_at``,
        ``email_syntax``.
    """
    v = value.strip().lower()
    if not v:
        raise InvalidIdentifier("empty")
    if len(v) > _MAX_EMAIL:
        raise InvalidIdentifier("email_too_long")
    if _EMAIL_RE.fullmatch(v):
        return v
    if not v.isascii():
        raise InvalidIdentifier("email_non_ascii")
    if v.count("@") != 1:
        raise InvalidIdentifier("email_no_at" if "@" not in v else "email_syntax")
    raise InvalidIdentifier("email_syntax")


def normalise_maid(value: str, case: str = "lower") -> str:
    """Normalise a mobile advertising id (IDFA or GAID) to the hyphenated UUID form.

    Accepts upper or lower case, and the 32-digit form without hyphens. The all-zero id is what
    devices report when the user limited ad tracking; it identifies nobody and is rejected.

    :param case: ``"lower"`` (GAID form, the default) or ``"upper"`` (IDFA form).
    :raises InvalidIdentifier: ``empty``, ``maid_syntax``, ``maid_zero``.
    """
    v = value.strip().lower()
    if not v:
        raise InvalidIdentifier("empty")
    if not _UUID_RE.fullmatch(v):
        if _HEX32_RE.fullmatch(v):
            v = f"{v[:8]}-{v[8:12]}-{v[12:16]}-{v[16:20]}-{v[20:]}"
        else:
            raise InvalidIdentifier("maid_syntax")
    if v == _ZERO_UUID:
        raise InvalidIdentifier("maid_zero")
    return v.upper() if case == "upper" else v


def normalise_opaque(value: str) -> str:
    """Trim an opaque id (customer id, IdentityLink, GUM...); nothing else is changed.

    :raises InvalidIdentifier: ``empty``, ``opaque_control_chars`` (a newline or other control
        character would corrupt a file upload), ``opaque_too_long`` (over 512 characters).
    """
    v = value.strip()
    if not v:
        raise InvalidIdentifier("empty")
    if len(v) > _MAX_OPAQUE:
        raise InvalidIdentifier("opaque_too_long")
    if _CONTROL_RE.search(v):
        raise InvalidIdentifier("opaque_control_chars")
    return v


def normalise_sha256(value: str) -> str:
    """Validate an already hashed value: 64 hex digits, returned lower-case.

    :raises InvalidIdentifier: ``empty``, ``hash_length`` (wrong number of characters, e.g. an MD5
        digest), ``hash_not_hex``.
    """
    v = value.strip().lower()
    if not v:
        raise InvalidIdentifier("empty")
    if len(v) != 64:
        raise InvalidIdentifier("hash_length")
    if not _SHA256_RE.fullmatch(v):
        raise InvalidIdentifier("hash_not_hex")
    return v


def normalise_phone(value: str, fmt: PhoneFormat = PhoneFormat.E164, default_region: str | None = None) -> str:
    """Normalise a phone number to E.164 with the ``phonenumbers`` library.

    Numbers written without a country code are read in ``default_region``. Without a default
    region, a value of 11 to 15 bare digits is read as international (Yandex's own examples are
    written that way: ``79995551111``, yandex_audience.md §6.3).

    :param fmt: :attr:`PhoneFormat.E164` (``+79995551111``) or :attr:`PhoneFormat.DIGITS`
        (``79995551111``).
    :param default_region: ISO 3166 alpha-2 region, e.g. ``"RU"``.
    :raises InvalidIdentifier: ``empty``, ``phone_syntax``, ``phone_no_country``, ``phone_invalid``.
    """
    import phonenumbers  # heavy (metadata for every region): only when phones are normalised

    v = value.strip()
    if not v:
        raise InvalidIdentifier("empty")
    if not _PHONE_CHARS_RE.fullmatch(v):
        raise InvalidIdentifier("phone_syntax")
    candidate = v
    region = default_region
    if not v.startswith("+") and region is None:
        digits = re.sub(r"\D", "", v)
        if v.startswith("00"):
            candidate = "+" + digits[2:]
        elif 11 <= len(digits) <= 15:
            candidate = "+" + digits
        else:
            raise InvalidIdentifier("phone_no_country")
    try:
        number = phonenumbers.parse(candidate, region)
    except phonenumbers.NumberParseException:
        raise InvalidIdentifier("phone_syntax") from None
    if not phonenumbers.is_valid_number(number):
        raise InvalidIdentifier("phone_invalid")
    e164 = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
    return e164[1:] if fmt is PhoneFormat.DIGITS else e164


def normaliser_for(profile: NormalisationProfile) -> Callable[[str], str]:
    """Return the per-value normaliser of a profile."""
    t = profile.identifier_type
    if t is IdentifierType.EMAIL:
        return normalise_email
    if t is IdentifierType.MAID:
        case = profile.maid_case
        return lambda v: normalise_maid(v, case)
    if t is IdentifierType.CUSTOMER_ID:
        return normalise_opaque
    if t is IdentifierType.SHA256:
        return normalise_sha256
    if t is IdentifierType.PHONE:
        fmt, region = profile.phone_format, profile.default_region
        return lambda v: normalise_phone(v, fmt, region)
    raise ValueError(f"no normaliser for {t!r}")  # pragma: no cover - enum is exhaustive


_BLOCK_PATTERNS: dict[IdentifierType, re.Pattern[bytes]] = {
    IdentifierType.EMAIL: _EMAIL_BLOCK_RE,
    IdentifierType.MAID: _UUID_BLOCK_RE,
    IdentifierType.SHA256: _SHA256_BLOCK_RE,
}


def normalise_batch(
    profile: NormalisationProfile, values: list[str]
) -> tuple[list[bytes] | list[str], list[tuple[int, str]]]:
    """Normalise a batch of raw values.

    :returns: ``(normalised, invalid)`` where ``normalised`` holds the valid values in input order
        (UTF-8 ``bytes`` on the fast path, ``str`` otherwise) and ``invalid`` lists
        ``(index in values, reason)``.
    """
    pattern = _BLOCK_PATTERNS.get(profile.identifier_type)
    if pattern is not None and values:
        text = "\n".join(values)
        # A value containing a newline would shift every later row: use the per-value path.
        if text.count("\n") == len(values) - 1:
            found = _block_values(pattern, text.encode("utf-8", "surrogatepass").lower(), len(values))
            if found is not None and _fast_path_extra_ok(profile, found):
                if profile.identifier_type is IdentifierType.MAID and profile.maid_case == "upper":
                    found = [f.upper() for f in found]
                return found, []
    fn = normaliser_for(profile)
    out: list[str] = []
    invalid: list[tuple[int, str]] = []
    append = out.append
    for i, raw in enumerate(values):
        try:
            append(fn(raw))
        except InvalidIdentifier as exc:
            invalid.append((i, exc.reason))
    return out, invalid


def _block_values(pattern: re.Pattern[bytes], data: bytes, lines: int) -> list[bytes] | None:
    """Values of a block when every line matched in full, else None.

    Each match lies within one line (values hold no blanks or newlines), so one match per line
    plus "the values, the blanks and the newlines add up to the whole block" proves no line
    was matched only in part.
    """
    found = pattern.findall(data)
    if len(found) != lines:
        return None
    blanks = sum(data.count(c) for c in (b" ", b"\t", b"\r", b"\f", b"\v"))
    if len(b"".join(found)) + blanks + lines - 1 != len(data):
        return None
    return found


def _fast_path_extra_ok(profile: NormalisationProfile, found: list[Any]) -> bool:
    """Checks the block pattern cannot express cheaply: e-mail length, the all-zero MAID."""
    t = profile.identifier_type
    if t is IdentifierType.EMAIL:
        return max(map(len, found)) <= _MAX_EMAIL
    if t is IdentifierType.MAID:
        return _ZERO_UUID.encode() not in found
    return True


def detect_type(value: str) -> IdentifierType | None:
    """Guess which identifier type a raw value is, for "wrong column" errors. None if unclear."""
    v = value.strip()
    low = v.lower()
    if _EMAIL_RE.fullmatch(low):
        return IdentifierType.EMAIL
    if _SHA256_RE.fullmatch(low):
        return IdentifierType.SHA256
    if _UUID_RE.fullmatch(low):
        return IdentifierType.MAID
    digits = re.sub(r"\D", "", v)
    if 7 <= len(digits) <= 15 and _PHONE_CHARS_RE.fullmatch(v) and len(digits) >= len(v) * 0.6:
        return IdentifierType.PHONE
    return None
