"""Phone numbers in international form decided for a whole batch in polars, from ``phonenumbers``' own metadata.

:func:`~airflow_audience_provider.identifiers.normalise.normalise_phone` (``phonenumbers.parse``,
``is_valid_number``, ``format_number``) costs ~18 µs per number. For a number written ``+`` (or
``00``, which ``normalise_phone`` reads as ``+``) and digits (spaces, brackets and hyphens
allowed), or as 11-15 bare digits when the rule has no default region, that computation reduces to:

* the digits ``D`` (``phonenumbers`` drops that punctuation; no letter, ``#``, ``;`` or ``,``
  means no extension), the country code (the first 1, 2 or 3 digits that are a code, in that
  order) and the national significant number ``N`` (the rest, leading zeros kept);
* no national prefix stripped: rows whose ``N`` the main region's ``national_prefix_for_parsing``
  matches at the start are left to the exact rule;
* ``is_valid_number``: ``region_code_for_number``'s loop over the code's regions (``leading_digits``
  decides where a region has it, a full type check where not), then the chosen region's check:
  the general description and one number type (premium rate ... fixed line, mobile unless its
  pattern is fixed line's) each match when ``len(N)`` is a possible length and the national-number
  pattern matches all of ``N``;
* the output is ``+D`` (E.164) or ``D`` (digits).

Rows are grouped by country code and number of digits, so the length checks are decided once per
group, and a region's validity is two passes of polars' Rust regex engine over the group's digits
(the general pattern, and the types admitting that length as one alternation). Rows decided
valid are accepted; rows whose refusal and reason follow from the same reading (``parse`` would
raise, or takes the number as given and ``is_valid_number`` refuses it; see
:meth:`PhoneDecider.decide`) are decided invalid with ``normalise_phone``'s reason; every other
row goes to ``normalise_phone``. A country code whose metadata has a pattern the Rust engine does
not compile, or whose example numbers the emulation does not decide exactly as ``phonenumbers``
does, is never decided here (only its rows ``parse`` refuses are). Property tests compare both paths
(``tests/identifiers/test_contact_phone_fast.py``).
"""

from __future__ import annotations

import functools
import itertools
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from airflow_audience_provider.identifiers.normalise import InvalidIdentifier, normalise_phone

#: The values the fast path reads, after trimming ASCII blanks: an optional ``+``, then digits,
#: spaces, brackets and hyphens (all ``phonenumbers`` punctuation), at most 40 characters.
SHAPE = r"^\+?[0-9 ()\-]{1,40}$"
#: The blanks trimmed first: ASCII only (``str.strip`` trims more; such rows take the exact path).
ASCII_BLANKS = " \t\n\r\x0b\x0c"
#: Number types ``phonenumbers``' ``_number_type_helper`` tries, besides the general description.
_TYPES = (
    "premium_rate",
    "toll_free",
    "shared_cost",
    "voip",
    "personal_number",
    "pager",
    "uan",
    "voicemail",
    "fixed_line",
)


#: A number description: its possible lengths of ``N`` (empty: any) and its national-number pattern.
Desc = tuple[tuple[int, ...], str]


@dataclass(frozen=True)
class RegionCheck:
    """One region of a country code: when it is chosen, and when a number is valid in it."""

    region: str
    #: ``leading_digits`` (the region is chosen when it matches at the start of ``N``), or None.
    leading: str | None
    #: the general description; None when the region has none (never valid)
    general: Desc | None
    #: the number types a valid number matches one of
    types: tuple[Desc, ...]


@dataclass(frozen=True)
class CodeCheck:
    """A country calling code's validity check, in ``region_code_for_number``'s region order."""

    code: str
    #: the main region's ``national_prefix_for_parsing``: rows it matches at the start of ``N`` go to the exact rule
    national_prefix: str | None
    regions: tuple[RegionCheck, ...]
    #: the fewest digits of ``N`` any region's general description admits (None: a region admits any length)
    shortest: int | None = None
    #: whether the main region rewrites ``N`` when it strips a national prefix (its ``national_prefix_transform_rule``)
    transforms: bool = True

    @functools.cache  # noqa: B019 - a few checks per process, kept for its lifetime anyway
    def patterns(self, length: int) -> list[tuple[str | None, str | None]]:
        """Per region, for digits ``D`` of ``length`` (code included): ``(leading, valid)`` patterns.

        ``leading`` is the region's ``leading_digits`` (matched at the start of ``N``); ``valid`` (the
        types admitting that length, as one alternation, see ``_valid``) is None when no number of
        that length is valid in the region. The length checks are decided here, so the patterns are
        plain matches of all of ``N``.
        """
        nsn = length - len(self.code)
        out: list[tuple[str | None, str | None]] = []
        for region in self.regions:
            valid: str | None = None
            if region.general is not None and _admits(region.general, nsn):
                alternatives = [desc[1] for desc in region.types if _admits(desc, nsn)]
                if alternatives:
                    # G and one type: (?=G) is not in Rust's engine, so G runs as its own pattern (see _valid_mask)
                    valid = "|".join(f"(?:{p})" for p in alternatives)
            out.append((region.leading, valid))
        return out

    def _at_start(self, pattern: str) -> str:
        """``pattern`` matching at the start of ``N``, over ``+D``."""
        return f"^\\+{self.code}(?:{pattern})"


def _admits(desc: Desc, nsn: int) -> bool:
    return not desc[0] or nsn in desc[0]


def _desc(desc: Any) -> Desc | None:
    """``_is_number_matching_desc``'s inputs, or None when the description can never match."""
    if desc is None or not desc.national_number_pattern:
        return None
    lengths = tuple(desc.possible_length)
    if lengths and not any(n >= 0 for n in lengths):
        return None
    return lengths, desc.national_number_pattern


def _region_check(region: str, metadata: Any, multi: bool) -> RegionCheck:
    names = list(_TYPES)
    if not metadata.same_mobile_and_fixed_line_pattern:
        names.append("mobile")
    types = tuple(d for d in (_desc(getattr(metadata, name, None)) for name in names) if d is not None)
    return RegionCheck(region, metadata.leading_digits if multi else None, _desc(metadata.general_desc), types)


def build_code_check(code: int) -> CodeCheck | None:
    """The check of one country calling code from ``phonenumbers``' metadata (None: unknown code)."""
    import phonenumbers
    from phonenumbers.phonemetadata import PhoneMetadata

    regions = phonenumbers.COUNTRY_CODE_TO_REGION_CODE.get(code)
    if not regions:
        return None
    main = PhoneMetadata.metadata_for_region_or_calling_code(code, regions[0])
    if main is None:
        return None
    checks: list[RegionCheck] = []
    if len(regions) == 1:
        # region_code_for_number takes the only region without looking at the number
        checks.append(_region_check(regions[0], main, multi=False))
    else:
        for region in regions:
            metadata = PhoneMetadata.metadata_for_region(region.upper(), None)
            if metadata is not None:
                checks.append(_region_check(region, metadata, multi=True))
    lengths = [r.general[0] for r in checks if r.general is not None]
    shortest = min(min(n for n in ls if n >= 0) for ls in lengths) if lengths and all(lengths) else None
    transforms = bool(main.national_prefix_transform_rule)
    return CodeCheck(str(code), main.national_prefix_for_parsing or None, tuple(checks), shortest, transforms)


def _code_of_prefix() -> dict[str, str]:
    """Country code of every 3-digit start of ``D``: ``_extract_country_code`` tries 1, 2, then 3 digits."""
    import phonenumbers

    codes = {str(c) for c in phonenumbers.COUNTRY_CODE_TO_REGION_CODE}
    out: dict[str, str] = {}
    for i in range(1000):
        start = f"{i:03d}"
        if start[0] == "0":
            continue
        code = next((start[:w] for w in (1, 2, 3) if start[:w] in codes), None)
        if code is not None:
            out[start] = code
    return out


#: International form without punctuation (most rows): ``+`` and 3 to 40 digits.
PLAIN = r"^\+[0-9]{3,40}$"


#: The exact rule's reasons the fast path gives (``normalise_phone``'s).
EMPTY, SYNTAX, NO_COUNTRY, INVALID = "empty", "phone_syntax", "phone_no_country", "phone_invalid"


@dataclass(frozen=True)
class PhoneDecision:
    """One batch through :meth:`PhoneDecider.decide`.

    :param numbers: the accepted rows' normalised numbers (a polars String Series, in no particular order).
    :param ok: a polars Boolean Series, one entry per row, True for the accepted rows.
    :param invalid: rows decided invalid, as ``(index, reason)`` in index order, with the exact rule's reason.
    :param refused: indices of the rows left to the exact rule (neither accepted nor decided invalid).
    """

    numbers: Any
    ok: Any
    invalid: list[tuple[int, str]]
    refused: list[int]


class PhoneDecider:
    """Decides batches of phone numbers in polars (see the module docstring); one per process."""

    def __init__(self, pl: Any, *, self_check: bool = True) -> None:
        self._pl = pl
        self._self_check = self_check
        self._code_of = _code_of_prefix()
        packed: list[int | None] = [None] * 1000
        for start, code in self._code_of.items():
            packed[int(start)] = int(code) * 64 + len(code) + 2
        #: per 3-digit start of D: its country code * 64 + the fewest digits parse takes with it
        self._packed_codes = pl.Series(packed, dtype=pl.Int32)
        self._lock = threading.Lock()
        self._checks: dict[str, CodeCheck | None] = {}

    def decide(self, values: list[str], *, digits_only: bool, default_region: str | None) -> PhoneDecision:
        """Accept the valid numbers of a batch, decide the invalid rows whose reason is certain, refuse the rest.

        Rows read as ``+`` and digits (written ``+`` or ``00`` and digits, or as 11-15 bare digits
        without a default region) are ``phone_syntax`` (``phone_no_country`` when bare) when
        ``parse`` would raise: fewer than 3 digits, no country code at the start, fewer than 2
        digits after it, or more than 17 with no national prefix for parsing at the start; and
        ``phone_invalid`` (``phone_no_country``) when ``parse`` takes them as given, or every
        reading it can make is shorter than any number of the code, and ``is_valid_number``
        refuses them. Without a default region, other bare digits are ``phone_no_country``; blank
        rows are ``empty``. Everything else not accepted is refused (left to the exact rule).

        Every step is one polars call over a one-chunk Series or a single expression: those run in
        the calling thread with the GIL released, where calls over several columns or chunks run
        on polars' thread pool, which the read workers share.
        """
        pl = self._pl
        t = pl.Series("t", values, dtype=pl.String).str.strip_chars(ASCII_BLANKS)
        plain = t.str.contains(PLAIN)
        if plain.all():
            found, early = _Rows(pl.int_range(len(values), dtype=pl.UInt32, eager=True), t, plain), list[_Rows]()
        else:
            found, early = self._read_rest(t, plain, default_region)
        return self._decide_found(found, early, plain & False, self.check, digits_only=digits_only)

    def _read_rest(self, t: Any, plain: Any, default_region: str | None) -> tuple[_Rows, list[_Rows]]:
        """The rows read as ``+D`` (``found``), and rows decided invalid before that."""
        pl = self._pl
        rows = pl.int_range(len(t), dtype=pl.UInt32, eager=True)
        rest_rows, rest = rows.filter(~plain), t.filter(~plain)
        early: list[_Rows] = []
        blank = rest == ""
        if blank.any():
            early.append(_Rows(rest_rows.filter(blank), reason=EMPTY))
        shaped = rest.str.contains(SHAPE)
        rest_rows, rest = rest_rows.filter(shaped), rest.filter(shaped)
        text = pl.col("t")
        for mark in " ()-":  # what SHAPE allows besides + and digits: literal removal is ~3x a regex replace
            text = text.str.replace_all(mark, "", literal=True)
        text = rest.to_frame().select(text).to_series()  # +D, or D for bare digits
        plus = rest.str.starts_with("+")
        found = [_Rows(rows.filter(plain), t.filter(plain), plain.filter(plain))]
        found.append(_Rows(rest_rows.filter(plus), text.filter(plus), plus.filter(plus)))
        idd = rest.str.starts_with("00")  # read as "+" and the rest, whatever the default region
        if idd.any():
            found.append(_Rows(rest_rows.filter(idd), "+" + text.filter(idd).str.slice(2), idd.filter(idd)))
        if default_region is None:
            # without a region, bare digits are read as international when 11-15 digits long, and
            # are otherwise phone_no_country
            bare = ~plus & ~idd
            length = text.str.len_bytes()
            international = (length >= 11) & (length <= 15)
            take = bare & international
            if take.any():
                found.append(_Rows(rest_rows.filter(take), "+" + text.filter(take), plus.filter(take)))
            other = bare & ~international
            if other.any():
                early.append(_Rows(rest_rows.filter(other), reason=NO_COUNTRY))
        return _Rows.concat(pl, found), early

    def _decide_found(
        self,
        found: _Rows,
        early: list[_Rows],
        zeros: Any,
        checks: Callable[[str], CodeCheck | None],
        *,
        digits_only: bool,
    ) -> PhoneDecision:
        """Decide the rows read as ``+D`` (``found``), grouped by country code and length.

        :param zeros: a new all-False Boolean Series, one entry per row of the batch.
        :param checks: the check of a country code (a string), or None when it cannot be decided here.
        """
        pl = self._pl
        text = found.text
        # The code and its length (packed as code * 64 + length + 2) from the first 3 digits as an
        # index into a table: 1 or 2 digits, or a leading 0, index a row of "0xx", which is null.
        packed = self._packed_codes.gather(text.str.slice(1, 3).str.to_integer(strict=False))
        n = text.str.len_bytes().cast(pl.Int32) - 1
        shortest = packed % 64
        # parse raises: under 3 digits, no country code, or under 2 digits after the code
        parsed = (n >= shortest).fill_null(False)
        keys = packed - shortest + n  # code * 64 + number of digits
        bad = list(early)
        if not parsed.all():
            bad.append(found.filter(~parsed).with_reason(SYNTAX))
            found, keys = found.filter(parsed), keys.filter(parsed)
        accepted: list[_Rows] = []
        for key, group in self._groups(found, keys):
            check = checks(str(key // 64))
            if check is None:
                continue
            try:
                valid, invalid, syntax = self._decide_group(check, key % 64, group)
            except Exception:  # a pattern the Rust engine refuses: the exact rule decides these rows
                continue
            accepted += [valid] if valid is not None else []
            bad += [invalid.with_reason(INVALID)] if invalid is not None else []
            bad += [syntax.with_reason(SYNTAX)] if syntax is not None else []
        taken = _Rows.concat(pl, accepted) if accepted else found.slice(0, 0)
        numbers = taken.text.str.slice(1) if digits_only else taken.text
        ok = zeros.scatter(taken.rows, True)
        bad = [part for part in bad if len(part.rows)]
        if not bad:
            return PhoneDecision(numbers.alias("v"), ok, [], (~ok).arg_true().to_list())
        known = ok.clone().scatter(pl.concat([part.rows for part in bad]), True)  # scatter writes in place
        # few rows (the invalid ones): their reasons are put together in Python
        reasons = sorted(itertools.chain.from_iterable(part.reasons_by_row() for part in bad))
        return PhoneDecision(numbers.alias("v"), ok, reasons, (~known).arg_true().to_list())

    def _groups(self, found: _Rows, keys: Any) -> list[tuple[int, _Rows]]:
        """The rows of each key (country code * 64 + number of digits)."""
        if not len(keys):
            return []
        low, high = keys.min(), keys.max()
        if low == high:  # the usual batch: one country and one length
            return [(low, found)]
        distinct = keys.unique().sort()
        if len(distinct) <= 8:
            return [(key, found.filter(keys == key)) for key in distinct.to_list()]
        order = keys.arg_sort()
        found, keys = found.gather(order), keys.gather(order)
        starts = keys.search_sorted(distinct, "left").to_list()
        ends = [*starts[1:], len(keys)]
        return [(k, found.slice(a, b - a)) for k, a, b in zip(distinct.to_list(), starts, ends, strict=True)]

    def _decide_group(
        self, check: CodeCheck, length: int, group: _Rows
    ) -> tuple[_Rows | None, _Rows | None, _Rows | None]:
        """The rows of one code and length: ``(valid, invalid, too long)``, None for none.

        Rows whose ``N`` starts with a national prefix for parsing are in none (exact rule), unless
        ``N`` is shorter than any number of the code: stripping a prefix (without a transform rule)
        only shortens it, so every reading ``parse`` can make is invalid.
        """
        if check.shortest is not None and length - len(check.code) < check.shortest and not check.transforms:
            return None, group, None
        if check.national_prefix is not None:
            given = ~_starts_with(group.text, check.code, check.national_prefix)
            if not given.all():
                group = group.filter(given)
        if not len(group.rows):
            return None, None, None
        if length - len(check.code) > 17:  # too long, and no national prefix to strip
            return None, None, group
        valid = self._valid_mask(check, length, group.text)
        if valid is None:
            return None, group, None
        if valid.all():
            return group, None, None
        return group.filter(valid), group.filter(~valid), None

    def _valid_mask(self, check: CodeCheck, length: int, text: Any) -> Any | None:
        """Mask of the valid rows of one code and length (``+D``), taken as given; None when none is."""
        pl = self._pl
        steps = [(r, lead, p) for r, (lead, p) in zip(check.regions, check.patterns(length), strict=True)]
        if all(p is None for _, _, p in steps):
            return None  # no region has a number of this length
        mask = None  # valid rows decided by the first region (over all rows)
        later: list[Any] = []  # positions of valid rows decided by later regions
        rest, positions = text, None
        for region, leading, pattern in steps:
            if leading is None and pattern is None:
                continue  # region_code_for_number passes over a region it cannot type
            if not len(rest):
                break
            valid = None if pattern is None else _valid(check, region, pattern, rest)
            chosen: Any = valid if leading is None else _starts_with(rest, check.code, leading)
            if valid is not None:
                valid = valid if leading is None else valid & chosen
                if positions is None:
                    mask = valid
                else:
                    later.append(positions.filter(valid))
            if chosen.all():
                break
            positions = chosen.not_().arg_true() if positions is None else positions.filter(~chosen)
            rest = rest.filter(~chosen)
        if mask is None:
            if not later:
                return None
            mask = text.str.len_bytes() < 0  # all False
        if later:
            mask = mask.clone().scatter(pl.concat(later), True)  # scatter writes in place
        return mask

    def decide_code(self, check: CodeCheck, values: list[str]) -> tuple[Any, Any]:
        """:meth:`decide` of ``+`` and digits of one country code with a given check (the self-check)."""
        pl = self._pl
        text = pl.Series("t", values, dtype=pl.String)
        mine = text.str.starts_with("+" + check.code)
        rows = pl.int_range(len(values), dtype=pl.UInt32, eager=True)
        found = _Rows(rows.filter(mine), text.filter(mine), mine.filter(mine))
        decision = self._decide_found(
            found, [], mine & False, lambda code: check if code == check.code else None, digits_only=False
        )
        return decision.numbers, decision.ok

    def check(self, code: str) -> CodeCheck | None:
        """The country code's check, built once, or None when it cannot be decided here."""
        with self._lock:
            if code in self._checks:
                return self._checks[code]
        check = build_code_check(int(code))
        if check is not None and not self._usable(check):
            check = None
        with self._lock:
            self._checks[code] = check
        return check

    def _usable(self, check: CodeCheck) -> bool:
        """True when Rust compiles every pattern and the examples are decided as ``phonenumbers`` does."""
        pl = self._pl
        patterns = [check.national_prefix] if check.national_prefix else []
        for region in check.regions:
            patterns += [region.leading] if region.leading is not None else []
            patterns += [desc[1] for desc in (region.general, *region.types) if desc is not None]
        try:
            probe = pl.Series(["0"], dtype=pl.String)
            for pattern in patterns:
                probe.str.contains(check._at_start(pattern))
        except Exception:
            return False
        return not self._self_check or _examples_agree(self, check)


def _starts_with(text: Any, code: str, pattern: str) -> Any:
    """Over ``+D``: whether ``pattern`` matches at the start of ``N`` (a literal compare for plain digits)."""
    if pattern.isascii() and pattern.isdigit():  # most national prefixes ("0", "8"): ~5x faster than a regex
        return text.str.starts_with(f"+{code}{pattern}")
    return text.str.contains(f"^\\+{code}(?:{pattern})")


def _valid(check: CodeCheck, region: RegionCheck, types: str, text: Any) -> Any:
    """Over ``+D``: the general description and one of the types admitting this length both match all of ``N``."""
    assert region.general is not None
    general = text.str.contains(f"^\\+{check.code}(?:{region.general[1]})$")
    return general & text.str.contains(f"^\\+{check.code}(?:{types})$")


@dataclass(frozen=True)
class _Rows:
    """Rows of a batch (indices) read as ``+D`` and whether written with ``+``; or decided invalid, with a reason."""

    rows: Any
    text: Any = None
    plus: Any = None
    #: the reason of rows decided invalid (``phone_no_country`` instead for those not written with ``+``)
    reason: str | None = None

    @staticmethod
    def concat(pl: Any, parts: list[_Rows]) -> _Rows:
        """Rows read as ``+D``, one after the other."""
        parts = [p for p in parts if len(p.rows)] or parts[:1]
        if len(parts) == 1:
            return parts[0]

        def joined(name: str) -> Any:
            # one chunk: polars runs some expressions over a many-chunk column chunk by chunk on its
            # thread pool, which the read workers share (the SHA-256 of the numbers among them)
            return pl.concat([getattr(p, name) for p in parts], rechunk=True)

        return _Rows(joined("rows"), joined("text"), joined("plus"))

    def filter(self, mask: Any) -> _Rows:
        return _Rows(self.rows.filter(mask), self.text.filter(mask), self.plus.filter(mask))

    def gather(self, order: Any) -> _Rows:
        return _Rows(self.rows.gather(order), self.text.gather(order), self.plus.gather(order))

    def slice(self, offset: int, length: int) -> _Rows:
        return _Rows(self.rows.slice(offset, length), self.text.slice(offset, length), self.plus.slice(offset, length))

    def with_reason(self, reason: str) -> _Rows:
        """These rows, decided invalid: ``reason`` when written with ``+``, else ``phone_no_country``."""
        return _Rows(self.rows, plus=self.plus, reason=reason)

    def reasons_by_row(self) -> list[tuple[int, str]]:
        assert self.reason is not None
        if self.plus is None:
            return [(i, self.reason) for i in self.rows.to_list()]
        reasons = (NO_COUNTRY, self.reason)
        return [(i, reasons[p]) for i, p in zip(self.rows.to_list(), self.plus.to_list(), strict=True)]


def _examples_agree(decider: PhoneDecider, check: CodeCheck) -> bool:
    """Decide the code's example numbers (and each with its last digit dropped or doubled) both ways."""
    import phonenumbers
    from phonenumbers.phonemetadata import PhoneMetadata

    code = int(check.code)
    samples: list[str] = []
    for region in phonenumbers.COUNTRY_CODE_TO_REGION_CODE.get(code, ()):
        metadata = PhoneMetadata.metadata_for_region_or_calling_code(code, region)
        if metadata is None:
            continue
        for name in (*_TYPES, "mobile", "general_desc"):
            desc = getattr(metadata, name, None)
            example = getattr(desc, "example_number", None) if desc is not None else None
            if example:
                base = f"+{code}{example}"
                samples += [base, base[:-1], base + base[-1]]
    if not samples:
        return True
    numbers, ok = decider.decide_code(check, samples)
    decided = sorted(numbers.to_list())
    want: list[str] = []
    for raw, taken in zip(samples, ok.to_list(), strict=True):
        if taken:
            try:
                want.append(normalise_phone(raw))
            except InvalidIdentifier:
                return False
    return decided == sorted(want)


@functools.cache
def phone_decider(pl: Any) -> PhoneDecider:
    """The process's decider (country-code checks are built on first use and kept)."""
    return PhoneDecider(pl)
