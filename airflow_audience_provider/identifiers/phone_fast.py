"""Phone numbers in international form decided for a whole batch in polars, from ``phonenumbers``' own metadata.

:func:`~airflow_audience_provider.identifiers.normalise.normalise_phone` (``phonenumbers.parse``,
``is_valid_number``, ``format_number``) costs ~18 µs per number. For a number written ``+`` and
digits (spaces, brackets and hyphens allowed), or as 11-15 bare digits when the rule has no
default region, that computation reduces to:

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
import threading
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

    @functools.cache  # noqa: B019 - a few checks per process, kept for its lifetime anyway
    def patterns(self, length: int) -> list[tuple[str | None, str | None]]:
        """Per region, for digits ``D`` of ``length`` (code included): ``(leading, valid)`` patterns over ``D``.

        ``valid`` is None when no number of that length is valid in the region; the length checks
        are decided here, so the patterns are plain ``^code(?:...)$`` matches.
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
            leading = self._at_start(region.leading) if region.leading is not None else None
            out.append((leading, valid))
        return out

    def _at_start(self, pattern: str) -> str:
        return f"^{self.code}(?:{pattern})"


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
    return CodeCheck(str(code), main.national_prefix_for_parsing or None, tuple(checks))


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
        self._lock = threading.Lock()
        self._checks: dict[str, CodeCheck | None] = {}

    def decide(self, values: list[str], *, digits_only: bool, default_region: str | None) -> PhoneDecision:
        """Accept the valid numbers of a batch, decide the invalid rows whose reason is certain, refuse the rest.

        Rows read as ``+`` and digits (or as 11-15 bare digits without a default region) are
        ``phone_syntax`` (``phone_no_country`` when bare) when ``parse`` would raise: fewer than 3
        digits, no country code at the start, fewer than 2 digits after it, or more than 17 with no
        national prefix for parsing at the start; and ``phone_invalid`` (``phone_no_country``) when
        ``parse`` takes them as given and ``is_valid_number`` refuses them. Without a default region,
        bare digits not starting ``00`` and not 11-15 digits long are ``phone_no_country``, and blank
        rows are ``empty``. Everything else not accepted is refused (left to the exact rule).
        """
        pl = self._pl
        col = pl.col
        n_rows = len(values)
        frame = pl.DataFrame({"t": pl.Series(values, dtype=pl.String).str.strip_chars(ASCII_BLANKS)})
        frame = frame.with_row_index("i")
        plain = frame.get_column("t").str.contains(PLAIN)
        parts = [frame.filter(plain).select("i", col("t").str.slice(1).alias("d"), pl.lit(True).alias("plus"))]
        early: list[Any] = []  # (i, r): rows decided invalid before grouping
        rest = frame.filter(~plain)
        if len(rest):
            early.append(rest.filter(col("t") == "").select("i", pl.lit(EMPTY).alias("r")))
            digits = col("t")
            for mark in "+ ()-":  # what SHAPE allows besides digits: literal removal is ~3x a regex replace
                digits = digits.str.replace_all(mark, "", literal=True)
            rest = rest.filter(col("t").str.contains(SHAPE)).with_columns(
                digits.alias("d"), col("t").str.starts_with("+").alias("plus")
            )
            parts.append(rest.filter(col("plus")).select("i", "d", "plus"))
            if default_region is None:
                # without a region, bare digits are read as international when 11-15 digits long, and
                # are otherwise phone_no_country; "00" starts an international prefix (exact rule)
                bare = rest.filter(~col("plus") & ~col("t").str.starts_with("00"))
                length = col("d").str.len_bytes()
                international = (length >= 11) & (length <= 15)
                parts.append(bare.filter(international).select("i", "d", "plus"))
                early.append(bare.filter(~international).select("i", pl.lit(NO_COUNTRY).alias("r")))
        candidates = pl.concat(parts).with_columns(
            col("d").str.len_bytes().alias("n"),
            col("d").str.slice(0, 3).replace_strict(self._code_of, default=None, return_dtype=pl.String).alias("cc"),
        )
        # parse raises: under 3 digits, no country code, or under 2 digits after the code
        parsed = col("cc").is_not_null() & (col("n") >= 3) & (col("n") - col("cc").str.len_bytes() >= 2)
        early.append(candidates.filter(~parsed).select("i", _reason(pl, SYNTAX)))
        accepted: list[Any] = []
        decided: list[Any] = []  # (i, plus): rows parse takes as given, so valid or phone_invalid
        for (code, length), part in candidates.filter(parsed).partition_by("cc", "n", as_dict=True).items():
            check = self.check(code)
            if check is None:
                continue
            try:
                given = self._as_given(check, part)
                if length - len(code) > 17:  # too long, and no national prefix to strip
                    early.append(given.select("i", _reason(pl, SYNTAX)))
                    continue
                valid = self._valid_rows(check, length, given)
            except Exception:  # a pattern the Rust engine refuses: the exact rule decides these rows
                continue
            accepted.append(valid)
            decided.append(given.select("i", "plus"))
        return self._decision(n_rows, accepted, decided, early, digits_only=digits_only)

    def _decision(
        self, n: int, accepted: list[Any], decided: list[Any], early: list[Any], *, digits_only: bool
    ) -> PhoneDecision:
        pl = self._pl
        numbers, ok = self._assemble(n, accepted, digits_only=digits_only)
        if decided:
            # rows decided but not accepted are phone_invalid (phone_no_country when written bare)
            rows = pl.concat(decided)
            rows = rows.filter(~ok.gather(rows.get_column("i")))
            early.append(rows.select("i", _reason(pl, INVALID)))
        bad = pl.concat(early).sort("i") if early else None
        known = ok
        invalid: list[tuple[int, str]] = []
        if bad is not None and len(bad):
            known = ok.clone().scatter(bad.get_column("i"), True)  # scatter writes in place
            invalid = list(zip(bad.get_column("i").to_list(), bad.get_column("r").to_list(), strict=True))
        return PhoneDecision(numbers, ok, invalid, known.not_().arg_true().to_list())

    def _as_given(self, check: CodeCheck, part: Any) -> Any:
        """The rows ``parse`` takes as given: no national prefix for parsing at the start of ``N``."""
        if check.national_prefix is None:
            return part
        return part.filter(~self._pl.col("d").str.contains(check._at_start(check.national_prefix)))

    def _valid_rows(self, check: CodeCheck, length: int, part: Any) -> Any:
        """The rows (``i``, ``d``) of one code and length, taken as given by ``parse``, that are valid."""
        pl = self._pl
        col = pl.col
        valid: list[Any] = []
        for region, (leading, pattern) in zip(check.regions, check.patterns(length), strict=True):
            if not len(part):
                break
            if leading is not None:
                mask = part.get_column("d").str.contains(leading)
                if pattern is not None:
                    chosen = part.filter(mask)
                    if len(chosen):
                        valid.append(chosen.filter(_valid_mask(col, check, region, pattern)))
            elif pattern is not None:
                mask = part.select(_valid_mask(col, check, region, pattern)).to_series()
                valid.append(part.filter(mask))
            else:
                continue
            part = part.filter(~mask)
        if not valid:
            return part.clear().select("i", "d")
        return pl.concat([v.select("i", "d") for v in valid])

    def decide_code(self, check: CodeCheck, values: list[str]) -> tuple[Any, Any]:
        """:meth:`decide` of ``+`` and digits of one country code with a given check (the self-check)."""
        pl = self._pl
        col = pl.col
        frame = pl.DataFrame({"d": pl.Series([v.lstrip("+") for v in values], dtype=pl.String)}).with_row_index("i")
        frame = frame.filter(col("d").str.starts_with(check.code)).with_columns(col("d").str.len_bytes().alias("n"))
        accepted = []
        for (length,), part in frame.partition_by("n", as_dict=True).items():
            if 2 <= length - len(check.code) <= 17:
                accepted.append(self._valid_rows(check, length, self._as_given(check, part)))
        return self._assemble(len(values), accepted, digits_only=False)

    def _assemble(self, n: int, accepted: list[Any], *, digits_only: bool) -> tuple[Any, Any]:
        pl = self._pl
        ok = pl.repeat(False, n, dtype=pl.Boolean, eager=True).alias("ok")
        rows = pl.concat(accepted) if accepted else None
        if rows is None or not len(rows):
            return pl.Series("v", [], dtype=pl.String), ok
        ok = ok.scatter(rows.get_column("i"), True)
        digits = rows.get_column("d")
        return (digits if digits_only else "+" + digits).alias("v"), ok

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


def _reason(pl: Any, reason: str) -> Any:
    """``reason`` for rows written with ``+``, ``phone_no_country`` for bare digits (read without a region)."""
    return pl.when(pl.col("plus")).then(pl.lit(reason)).otherwise(pl.lit(NO_COUNTRY)).alias("r")


def _valid_mask(col: Any, check: CodeCheck, region: RegionCheck, types: str) -> Any:
    """The general description and one of the types admitting this length both match all of ``N``."""
    assert region.general is not None
    general = col("d").str.contains(f"^{check.code}(?:{region.general[1]})$")
    return general & col("d").str.contains(f"^{check.code}(?:{types})$")


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
