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

Each length check and pattern is one regular expression over ``LLN`` (``N`` after its length in two
digits), so a region's validity is two passes of polars' Rust regex engine over the column. Only
rows decided valid are accepted: every other row (invalid ones too, so the reasons are the exact
rule's) goes to ``normalise_phone``. A country code whose metadata has a pattern the Rust engine
does not compile, or whose example numbers the emulation does not decide exactly as
``phonenumbers`` does, is never decided here. Property tests compare both paths
(``tests/identifiers/test_contact_phone_fast.py``).
"""

from __future__ import annotations

import functools
import threading
from dataclasses import dataclass
from typing import Any

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


@dataclass(frozen=True)
class RegionCheck:
    """One region of a country code: when it is chosen, and when a number is valid in it.

    Patterns run over the row's key ``LLD``: the digits ``D`` (country code first) after their
    count in two digits, so ``N``'s possible lengths are alternatives of ``LL`` before the code.
    """

    region: str
    #: ``leading_digits`` at the start of ``N`` (the region is chosen when it matches), or None.
    leading: str | None
    #: the general description (lengths and pattern)
    general: str
    #: any number type (lengths and pattern), or None when the region has no type at all
    any_type: str | None


@dataclass(frozen=True)
class CodeCheck:
    """A country calling code's validity check, in ``region_code_for_number``'s region order."""

    code: str
    #: ``national_prefix_for_parsing`` of the main region at the start of ``N``: rows it matches go to the exact rule
    national_prefix: str | None
    regions: tuple[RegionCheck, ...]


def _desc_pattern(desc: Any, code: str) -> str | None:
    """``LL`` + code + ``(?:pattern)`` for one number description, or None when it cannot match."""
    if desc is None or not desc.national_number_pattern:
        return None
    width = len(code)
    lengths = tuple(desc.possible_length)
    if lengths:
        usable = [f"{n + width:02d}" for n in lengths if 0 <= n + width <= 99]
        if not usable:
            return None
        prefix = "(?:" + "|".join(usable) + ")"
    else:
        prefix = "[0-9]{2}"
    return f"{prefix}{code}(?:{desc.national_number_pattern})"


def _at_start_of_nsn(pattern: str, code: str) -> str:
    """``re.match(pattern, N)`` as a search over the key."""
    return f"^[0-9]{{2}}{code}(?:{pattern})"


def _region_check(region: str, metadata: Any, code: str, multi: bool) -> RegionCheck | None:
    general = _desc_pattern(metadata.general_desc, code)
    if general is None:
        return None
    names = list(_TYPES)
    if not metadata.same_mobile_and_fixed_line_pattern:
        names.append("mobile")
    parts = [p for p in (_desc_pattern(getattr(metadata, name, None), code) for name in names) if p is not None]
    leading = metadata.leading_digits if multi else None
    return RegionCheck(
        region=region,
        leading=_at_start_of_nsn(leading, code) if leading is not None else None,
        general=f"^(?:{general})$",
        any_type="^(?:" + "|".join(parts) + ")$" if parts else None,
    )


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
    text = str(code)
    checks: list[RegionCheck] = []
    if len(regions) == 1:
        # region_code_for_number takes the only region without looking at the number
        check = _region_check(regions[0], main, text, multi=False)
        if check is not None:
            checks.append(check)
    else:
        for region in regions:
            metadata = PhoneMetadata.metadata_for_region(region.upper(), None)
            if metadata is None:
                continue
            check = _region_check(region, metadata, text, multi=True)
            if check is None:
                if metadata.leading_digits is not None:
                    # chosen by its leading digits, and then never valid: a row it would take is refused
                    checks.append(RegionCheck(region, _at_start_of_nsn(metadata.leading_digits, text), "^$", None))
                continue
            checks.append(check)
    prefix = main.national_prefix_for_parsing
    return CodeCheck(text, _at_start_of_nsn(prefix, text) if prefix else None, tuple(checks))


def _country_code_pattern() -> str:
    """The country code at the start of the key, tried with 1, 2 then 3 digits (``_extract_country_code``)."""
    import phonenumbers

    codes = sorted((str(c) for c in phonenumbers.COUNTRY_CODE_TO_REGION_CODE), key=lambda c: (len(c), c))
    return "^[0-9]{2}(" + "|".join(codes) + ")"


#: International form without punctuation (most rows): ``+`` and 3 to 40 digits.
PLAIN = r"^\+[0-9]{3,40}$"


class PhoneDecider:
    """Decides batches of phone numbers in polars (see the module docstring); one per process."""

    def __init__(self, pl: Any, *, self_check: bool = True) -> None:
        self._pl = pl
        self._self_check = self_check
        self._code_pattern = _country_code_pattern()
        self._lock = threading.Lock()
        self._checks: dict[str, CodeCheck | None] = {}

    def decide(self, values: list[str], *, digits_only: bool, default_region: str | None) -> tuple[Any, Any]:
        """The numbers decided valid, and a mask of their rows.

        :returns: ``(numbers, ok)``: a polars Series of the accepted rows' normalised numbers (``+D``,
            or ``D`` with ``digits_only``; in no particular order) and a Boolean Series with one
            entry per value, True for the accepted rows.
        """
        pl = self._pl
        col = pl.col
        frame = pl.DataFrame({"t": pl.Series(values, dtype=pl.String).str.strip_chars(ASCII_BLANKS)})
        frame = frame.with_row_index("i")
        plain = frame.get_column("t").str.contains(PLAIN)
        parts = [frame.filter(plain).select("i", col("t").str.slice(1).alias("d"))]
        rest = frame.filter(~plain)
        if len(rest):
            rest = rest.filter(col("t").str.contains(SHAPE)).with_columns(
                col("t").str.replace_all("[^0-9]", "").alias("d")
            )
            plus = col("t").str.starts_with("+")
            if default_region is None:
                # 11-15 bare digits are read as international when no default region is set
                length = col("d").str.len_bytes()
                plus = plus | ((length >= 11) & (length <= 15))
            parts.append(rest.filter(plus).select("i", "d"))
        candidates = pl.concat(parts).with_columns(col("d").str.len_bytes().alias("n"))
        candidates = candidates.filter(col("n") >= 3).with_columns(
            (col("n").cast(pl.String).str.zfill(2) + col("d")).alias("key")
        )
        candidates = candidates.with_columns(col("key").str.extract(self._code_pattern, 1).alias("cc"))
        accepted: list[Any] = []
        for (code,), part in candidates.partition_by("cc", as_dict=True).items():
            check = self.check(code) if code is not None else None
            if check is not None:
                accepted.append(self._valid_rows(check, part))
        return self._assemble(len(values), accepted, digits_only=digits_only)

    def _valid_rows(self, check: CodeCheck, part: Any) -> Any:
        """The rows (``i``, ``d``) of one country code that ``phonenumbers`` parses as given and finds valid."""
        pl = self._pl
        col = pl.col
        width = len(check.code)
        part = part.filter((col("n") >= width + 2) & (col("n") <= width + 17))
        if check.national_prefix is not None:
            part = part.filter(~col("key").str.contains(check.national_prefix))
        valid: list[Any] = []
        for region in check.regions:
            if not len(part):
                break
            if region.leading is not None:
                mask = part.get_column("key").str.contains(region.leading)
                chosen = part.filter(mask)
                if region.any_type is not None and len(chosen):
                    valid.append(chosen.filter(_valid_in(col, region)))
            elif region.any_type is not None:
                mask = part.select(_valid_in(col, region)).to_series()
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
        frame = frame.with_columns((col("n").cast(pl.String).str.zfill(2) + col("d")).alias("key"))
        return self._assemble(len(values), [self._valid_rows(check, frame)], digits_only=False)

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
            patterns += [p for p in (region.leading, region.general, region.any_type) if p is not None]
        try:
            probe = pl.Series(["0"], dtype=pl.String)
            for pattern in patterns:
                probe.str.contains(pattern)
        except Exception:
            return False
        return not self._self_check or _examples_agree(self, check)


def _valid_in(col: Any, region: RegionCheck) -> Any:
    assert region.any_type is not None
    return col("key").str.contains(region.general) & col("key").str.contains(region.any_type)


def _examples_agree(decider: PhoneDecider, check: CodeCheck) -> bool:
    """Decide the code's example numbers (and each with its last digit dropped or doubled) both ways."""
    import phonenumbers
    from phonenumbers.phonemetadata import PhoneMetadata

    from airflow_audience_provider.identifiers.normalise import InvalidIdentifier, normalise_phone

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
