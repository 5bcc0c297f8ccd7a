"""Normalisers and validators, one per identifier type.

Each normaliser takes one raw string and returns the normalised string, or raises
:class:`InvalidIdentifier` with a short machine reason (``"email_syntax"``...). The reason goes
into the accounting histogram; the raw value never goes into the exception text.

:func:`normalise_batch` is the hot path: for e-mail, MAID and pre-hashed input it validates a
whole batch with one regular-expression pass in C and sends only the values the fast pattern
refuses through the per-value functions, which decide and give the reason. The fast pattern
accepts only values the per-value function accepts, with the same output (property tests check
this), so results do not depend on which path ran.
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


# The syntax we accept: an RFC 5322 dot-atom local part (lower-case, as values are lower-cased
# first), "@", and a domain of at least two labels made of letters, digits and inner hyphens.
# Quoted local parts and IP-literal domains are refused: no ad platform matches them. Label
# lengths are not checked (the whole address is limited to 254 characters instead).
# Possessive quantifiers (++, *+) never backtrack: the character classes at each boundary are
# disjoint, so backtracking could not find another match anyway, and the regex runs twice as fast.
_ATEXT = r"[a-z0-9!#$%&'*+/=?^_`{|}~-]"
_LOCAL = rf"{_ATEXT}++(?:\.{_ATEXT}++)*+"
_LABEL = r"[a-z0-9]++(?:-++[a-z0-9]++)*+"
_EMAIL_CORE = rf"{_LOCAL}@{_LABEL}(?:\.{_LABEL})++"
_EMAIL_RE = re.compile(_EMAIL_CORE)
# Block patterns: one match per line, consecutively. A line is either "blanks, valid value,
# blanks, newline" (group 1 = the value) or anything else up to the newline (group 1 empty).
# Because the second alternative always matches at a line start, the search never resumes in
# the middle of a line, so a bad line cannot match partly; and because a line has exactly one
# match, position i of the result is row i. Only ASCII blanks are trimmed here; a line with
# other blanks (NBSP, \x1c...) lands in the "anything else" branch and goes through the
# per-value normaliser, which trims with str.strip().
_WS = r"[ \t\r\f\v]*"


def _block_pattern(core: str) -> re.Pattern[bytes]:
    return re.compile(rf"{_WS}({core}){_WS}\n|[^\n]*\n".encode())


_EMAIL_BLOCK_RE = _block_pattern(_EMAIL_CORE)
# Run pattern of the e-mail fast path (see :func:`_email_block`): one match covers a run of
# consecutive valid lines (ASCII blanks around the value allowed), then ``()`` marks where the run
# stopped and ``[^\n]*\n`` swallows the one line that did not match. Every match starts at a line
# start and each iteration of the run consumes a whole line, so the run cannot accept part of a
# line; the line after a run is exactly a line the exact pattern does not fullmatch (after trim).
_WSP = r"[ \t\r\f\v]*+"
_EMAIL_RUN_RE = re.compile(rf"(?:{_WSP}{_EMAIL_CORE}{_WSP}\n)*+(?:()[^\n]*\n)?".encode())

_UUID_CORE = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
_UUID_RE = re.compile(_UUID_CORE)
_UUID_BLOCK_RE = _block_pattern(_UUID_CORE)
_HEX32_RE = re.compile(r"[0-9a-f]{32}")
_SHA256_RE = re.compile(r"[0-9a-f]{64}")
_SHA256_BLOCK_RE = _block_pattern("[0-9a-f]{64}")
_ZERO_UUID = "00000000-0000-0000-0000-000000000000"
_MAX_EMAIL = 254  # RFC 5321 path limit; longer values cannot be delivered, nor matched
_MAX_OPAQUE = 512
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")
_MAC_SEPARATORS = str.maketrans("", "", ":-. ")
_HEX12_RE = re.compile(r"[0-9A-F]{12}")
#: MAC addresses written with separators (lower-case input): 6 pairs or 3 groups of 4 digits.
_MAC_WRITTEN_RE = re.compile(
    r"[0-9a-f]{2}(?:([:-])[0-9a-f]{2})(?:\1[0-9a-f]{2}){4}"  # AE:12:34:56:D0:A1, ae-12-34-56-d0-a1
    r"|[0-9a-f]{4}\.[0-9a-f]{4}\.[0-9a-f]{4}"  # ae12.3456.d0a1
)
#: all-zero and broadcast addresses identify no device
_MAC_RESERVED = frozenset({"000000000000", "FFFFFFFFFFFF"})
_UINT64_MAX = 2**64 - 1
_PHONE_CHARS_RE = re.compile(r"[0-9+()\-.\s/]+(?:(?:ext|x|#)\.?\s*\d+)?", re.I)


def normalise_email(value: str) -> str:
    """Trim and lower-case an e-mail address, then check its syntax.

    Criteo and Yandex.Audience both ask for trimmed,
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


def normalise_mac(value: str) -> str:
    """Normalise a MAC address to 12 upper-case hex digits without separators.

    Yandex.Audience wants a bare hex string, case free; exports often
    write ``AE:12:34:56:D0:A1``, ``ae-12-34-56-d0-a1`` or ``ae12.3456.d0a1``, so ``:``, ``-``,
    ``.`` and blanks are removed first. The all-zero and broadcast addresses are rejected: they
    identify no device. Hashing goes over the 6 bytes the digits spell
    (:meth:`~airflow_audience_provider.identifiers.rules.NormalisationProfile.hash_input`).

    :raises InvalidIdentifier: ``empty``, ``mac_syntax``, ``mac_reserved``.
    """
    v = value.strip()
    if not v:
        raise InvalidIdentifier("empty")
    v = v.translate(_MAC_SEPARATORS).upper()
    if not _HEX12_RE.fullmatch(v):
        raise InvalidIdentifier("mac_syntax")
    if v in _MAC_RESERVED:
        raise InvalidIdentifier("mac_reserved")
    return v


def normalise_client_id(value: str) -> str:
    """Normalise a Yandex Metrica ClientID: a decimal unsigned 64-bit number, without leading zeros.

    Assumption (the Audience API reference does not give the format): Metrica's Logs API types ClientID as UInt64,
    so a value is 1 to 20 decimal digits and at most 2**64-1; 0 identifies nobody.

    :raises InvalidIdentifier: ``empty``, ``client_id_syntax`` (not only digits),
        ``client_id_range`` (zero, or above 2**64-1).
    """
    v = value.strip()
    if not v:
        raise InvalidIdentifier("empty")
    if not (v.isascii() and v.isdigit()):
        raise InvalidIdentifier("client_id_syntax")
    if len(v) > 25:  # far too long for a UInt64: refuse before converting
        raise InvalidIdentifier("client_id_range")
    number = int(v)
    if number == 0 or number > _UINT64_MAX:
        raise InvalidIdentifier("client_id_range")
    return str(number)


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


#: Reason codes whose fix is an option, with the hint the "too many invalid rows" error gives.
REASON_HINTS: dict[str, str] = {
    "phone_no_country": (
        "phone_no_country: numbers written without a country code (8 999 555-11-11, 999 555 11 11) "
        "cannot be read without a region; set default_region (e.g. 'RU') on the operator or in the "
        "connection's extra"
    ),
}


def normalise_phone(value: str, fmt: PhoneFormat = PhoneFormat.E164, default_region: str | None = None) -> str:
    """Normalise a phone number to E.164 with the ``phonenumbers`` library.

    A number starting with ``+`` or ``00`` (``007 999 ...``) is international. Other numbers are
    read in ``default_region`` (``8 (999) 555-11-11`` with ``"RU"`` is ``+79995551111``); a value of
    11 to 15 digits that is not a valid number there is then tried as international
    (``79995551111`` is Yandex's own example). Without a default region
    only that international reading is tried, and a number it does not explain is refused as
    ``phone_no_country``: it is probably written the national way (``8 999 ...`` in Russia) and
    needs ``default_region``.

    :param fmt: ``PhoneFormat.E164`` (``+79995551111``) or ``PhoneFormat.DIGITS``
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
    if v.startswith("00"):
        # 00 is the international call prefix in most of the world, whatever the default region.
        v = "+" + v[2:].lstrip()
    if v.startswith("+"):
        number = _parse_phone(phonenumbers, v, None)
        if number is None:
            raise InvalidIdentifier("phone_syntax")
        if not phonenumbers.is_valid_number(number):
            raise InvalidIdentifier("phone_invalid")
        return _format_phone(phonenumbers, number, fmt)
    digits = re.sub(r"\D", "", v)
    if default_region is not None:
        number = _parse_phone(phonenumbers, v, default_region)
        if number is not None and phonenumbers.is_valid_number(number):
            return _format_phone(phonenumbers, number, fmt)
    if 11 <= len(digits) <= 15:
        number = _parse_phone(phonenumbers, "+" + v, None)
        if number is not None and phonenumbers.is_valid_number(number):
            return _format_phone(phonenumbers, number, fmt)
    if default_region is None:
        raise InvalidIdentifier("phone_no_country")
    if _parse_phone(phonenumbers, v, default_region) is None:
        raise InvalidIdentifier("phone_syntax")
    raise InvalidIdentifier("phone_invalid")


def _parse_phone(phonenumbers: Any, text: str, region: str | None) -> Any:
    try:
        return phonenumbers.parse(text, region)
    except phonenumbers.NumberParseException:
        return None


def _format_phone(phonenumbers: Any, number: Any, fmt: PhoneFormat) -> str:
    e164: str = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
    return e164[1:] if fmt is PhoneFormat.DIGITS else e164


def normaliser_for(profile: NormalisationProfile) -> Callable[[str], str]:
    """Return the per-value normaliser of a profile."""
    t = profile.identifier_type
    if t is IdentifierType.EMAIL:
        return normalise_email
    if t.family is IdentifierType.MAID:
        case = "upper" if profile.upper_case_maid else "lower"
        return lambda v: normalise_maid(v, case)
    if t is IdentifierType.CUSTOMER_ID:
        return normalise_opaque
    if t is IdentifierType.SHA256:
        return normalise_sha256
    if t is IdentifierType.PHONE:
        fmt, region = profile.phone_format, profile.default_region
        return lambda v: normalise_phone(v, fmt, region)
    if t is IdentifierType.MAC:
        return normalise_mac
    if t is IdentifierType.CLIENT_ID:
        return normalise_client_id
    raise ValueError(f"no normaliser for {t!r}")  # pragma: no cover - enum is exhaustive


#: A ClientID ``normalise_client_id`` returns unchanged: no leading zero, at most 19 digits (so below
#: 2**64); 20-digit values and leading zeros go through the per-value rule.
_CLIENT_ID_BLOCK_RE = _block_pattern("[1-9][0-9]{0,18}")

_BLOCK_PATTERNS: dict[IdentifierType, re.Pattern[bytes]] = {
    IdentifierType.CLIENT_ID: _CLIENT_ID_BLOCK_RE,
    IdentifierType.EMAIL: _EMAIL_BLOCK_RE,
    IdentifierType.MAID: _UUID_BLOCK_RE,
    IdentifierType.IDFA: _UUID_BLOCK_RE,
    IdentifierType.GAID: _UUID_BLOCK_RE,
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
        if profile.identifier_type is IdentifierType.EMAIL:
            fast = _email_block(text, len(values))
            if fast is not None:
                good, rescued, invalid = fast
                if not rescued:
                    return good, invalid
                return _merge_rescued(good, rescued, invalid, len(values)), invalid
        # A value containing a newline would shift every later row: use the per-value path.
        elif text.count("\n") == len(values) - 1:
            return _normalise_block(profile, pattern, values, text)
    return _normalise_each(normaliser_for(profile), values)


def email_text_unordered(text: str, n: int) -> tuple[list[bytes], list[tuple[int, str]]] | None:
    """E-mails of a batch given as its ``n`` values joined by newlines; valid ones in no order.

    Same results as :func:`normalise_batch` except that the valid values come in no particular
    order, which saves putting the rare values rescued by the per-value normaliser back in place
    (callers that only hash and partition do not care). Returns None when ``text`` does not hold
    exactly ``n`` lines (a value contained a newline): use :func:`normalise_batch` then.
    """
    if n == 0:
        return [], []
    fast = _email_block(text, n)
    if fast is None:
        return None
    good, rescued, invalid = fast
    if rescued:
        good.extend(v for _, v in rescued)
    return good, invalid


def _email_block(text: str, n: int) -> tuple[list[bytes], list[tuple[int, bytes]], list[tuple[int, str]]] | None:
    """The e-mail fast path: whole-batch C operations, Python only for the lines they refuse.

    1. ``text`` (the ``n`` values joined by newlines) is encoded and lower-cased, one call each;
    2. one regex pass (:data:`_EMAIL_RUN_RE`) walks runs of valid lines and reports each line it
       refuses: invalid values, and the few valid values in a form it does not cover (non-ASCII
       blanks around, a non-ASCII letter that lower-cases to ASCII...);
    3. the refused lines are cut out and ``bytes.split()`` (ASCII whitespace, the set the pattern
       trims) yields the trimmed value of every accepted line, in order;
    4. each refused line goes through :func:`normalise_email`, which decides and gives the reason.
       It gets the line as decoded from the lower-cased bytes; ``normalise_email`` trims and
       lower-cases first, so that is the same as giving it the raw value.

    The pattern uses ``_EMAIL_CORE``, which :func:`normalise_email` applies with ``fullmatch``, so a
    line the pattern accepts is one the per-value function accepts, with the same output (property
    tests compare the two paths). The 254-character limit is checked on the accepted values; an
    over-long one is handed to the per-value function like a refused line.

    :returns: ``(good, rescued, invalid)``: trimmed lower-case values of the accepted lines in
        input order; ``(index, value)`` of refused lines the per-value function accepted;
        ``(index, reason)`` of the invalid ones (both in input order). None if ``text`` does not
        hold exactly ``n`` lines.
    """
    tb = text.encode("utf-8", "surrogatepass").lower() + b"\n"
    spans: list[tuple[int, int]] = []  # (start, end) of refused lines, end after the newline
    for m in _EMAIL_RUN_RE.finditer(tb):
        bad = m.start(1)
        if bad >= 0:
            spans.append((bad, m.end()))
    if spans:
        pieces: list[bytes] = []
        pos = 0
        for start, end in spans:
            pieces.append(tb[pos:start])
            pos = end
        pieces.append(tb[pos:])
        good = b"".join(pieces).split()
    else:
        good = tb.split()
    if len(good) + len(spans) != n:  # a value held a newline: lines are not rows
        return None
    misses: list[int] = []
    line = 0
    pos = 0
    for start, _ in spans:
        line += tb.count(b"\n", pos, start)
        misses.append(line)
        pos = start
    if good and max(map(len, good)) > _MAX_EMAIL:
        good, misses, spans = _drop_long(tb, good, misses, spans, n)
    rescued: list[tuple[int, bytes]] = []
    invalid: list[tuple[int, str]] = []
    for i, (start, end) in zip(misses, spans, strict=True):
        raw = tb[start : end - 1].decode("utf-8", "surrogatepass")
        try:
            rescued.append((i, normalise_email(raw).encode("utf-8", "surrogatepass")))
        except InvalidIdentifier as exc:
            invalid.append((i, exc.reason))
    return good, rescued, invalid


def _drop_long(
    tb: bytes, good: list[bytes], misses: list[int], spans: list[tuple[int, int]], n: int
) -> tuple[list[bytes], list[int], list[tuple[int, int]]]:
    """Move accepted values over the length limit to the refused lines (rare: Python loops)."""
    line_spans: list[tuple[int, int]] = []
    pos = 0
    for _ in range(n):
        end = tb.index(b"\n", pos) + 1
        line_spans.append((pos, end))
        pos = end
    missed = set(misses)
    keep: list[bytes] = []
    accepted = (i for i in range(n) if i not in missed)
    for i, v in zip(accepted, good, strict=True):
        if len(v) > _MAX_EMAIL:
            missed.add(i)
        else:
            keep.append(v)
    order = sorted(missed)
    return keep, order, [line_spans[i] for i in order]


def _merge_rescued(
    good: list[bytes], rescued: list[tuple[int, bytes]], invalid: list[tuple[int, str]], n: int
) -> list[bytes]:
    """Put rescued values back at their input positions among the accepted ones (rare path)."""
    rescued_at = dict(rescued)
    skip = {i for i, _ in invalid}
    accepted = iter(good)
    return [rescued_at[i] if i in rescued_at else next(accepted) for i in range(n) if i not in skip]


def _normalise_each(fn: Callable[[str], str], values: list[str]) -> tuple[list[str], list[tuple[int, str]]]:
    out: list[str] = []
    invalid: list[tuple[int, str]] = []
    append = out.append
    for i, raw in enumerate(values):
        try:
            append(fn(raw))
        except InvalidIdentifier as exc:
            invalid.append((i, exc.reason))
    return out, invalid


def _normalise_block(
    profile: NormalisationProfile, pattern: re.Pattern[bytes], values: list[str], text: str
) -> tuple[list[bytes] | list[str], list[tuple[int, str]]]:
    """The fast path: one regex pass in C; only lines it did not accept go through Python."""
    found: list[bytes] = pattern.findall(text.encode("utf-8", "surrogatepass").lower() + b"\n")
    t = profile.identifier_type
    if t is IdentifierType.EMAIL and found and max(map(len, found)) > _MAX_EMAIL:
        found = [b"" if len(v) > _MAX_EMAIL else v for v in found]
    elif t.family is IdentifierType.MAID:
        zero = _ZERO_UUID.encode()
        if zero in found:
            found = [b"" if v == zero else v for v in found]
    # Rows the pattern did not accept (list.index runs in C; usually a handful per batch).
    misses: list[int] = []
    i = -1
    try:
        while True:
            i = found.index(b"", i + 1)
            misses.append(i)
    except ValueError:
        pass
    case_upper = profile.upper_case_maid
    if not misses:
        return ([v.upper() for v in found] if case_upper else found), []
    # The per-value normaliser decides the misses: most are invalid (and give the reason), a few
    # are valid in a form the pattern does not cover (NBSP around, a MAID without hyphens...).
    fn = normaliser_for(profile)
    invalid: list[tuple[int, str]] = []
    rescued = False
    for i in misses:
        try:
            found[i] = fn(values[i]).encode("utf-8", "surrogatepass")
            rescued = True
        except InvalidIdentifier as exc:
            invalid.append((i, exc.reason))
    if rescued and case_upper:
        return [v.upper() for v in found if v], invalid
    out = list(filter(None, found))
    return ([v.upper() for v in out] if case_upper else out), invalid


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
    if _MAC_WRITTEN_RE.fullmatch(low) or (_HEX12_RE.fullmatch(v.upper()) and not v.isdigit()):
        return IdentifierType.MAC
    digits = re.sub(r"\D", "", v)
    if 7 <= len(digits) <= 15 and _PHONE_CHARS_RE.fullmatch(v) and len(digits) >= len(v) * 0.6:
        return IdentifierType.PHONE
    return None
