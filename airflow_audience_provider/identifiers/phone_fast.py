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

    Patterns run over ``LLN``: the national significant number after its length in two digits.
    """

    region: str
    #: ``^(?:leading_digits)`` over ``N`` (the region is chosen when it matches), or None.
    leading: str | None
    #: the general description (lengths and pattern)
    general: str
    #: any number type (lengths and pattern), or None when the region has no type at all
    any_type: str | None


@dataclass(frozen=True)
class CodeCheck:
    """A country calling code's validity check, in ``region_code_for_number``'s region order."""

    code: str
    #: ``^(?:national_prefix_for_parsing)`` of the main region: rows it matches go to the exact rule
    national_prefix: str | None
    regions: tuple[RegionCheck, ...]


def _desc_pattern(desc: Any) -> str | None:
    """``LL(?:pattern)`` for one number description, or None when it cannot match."""
    if desc is None or not desc.national_number_pattern:
        return None
    lengths = tuple(desc.possible_length)
    if lengths:
        usable = [f"{n:02d}" for n in lengths if 0 <= n <= 99]
        if not usable:
            return None
        prefix = "(?:" + "|".join(usable) + ")"
    else:
        prefix = "[0-9]{2}"
    return f"{prefix}(?:{desc.national_number_pattern})"


def _region_check(region: str, metadata: Any, multi: bool) -> RegionCheck | None:
    general = _desc_pattern(metadata.general_desc)
    if general is None:
        return None
    names = list(_TYPES)
    if not metadata.same_mobile_and_fixed_line_pattern:
        names.append("mobile")
    parts = [p for p in (_desc_pattern(getattr(metadata, name, None)) for name in names) if p is not None]
    leading = metadata.leading_digits if multi else None
    return RegionCheck(
        region=region,
        leading=f"^(?:{leading})" if leading is not None else None,
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
    checks: list[RegionCheck] = []
    if len(regions) == 1:
        # region_code_for_number takes the only region without looking at the number
        check = _region_check(regions[0], main, multi=False)
        if check is not None:
            checks.append(check)
    else:
        for region in regions:
            metadata = PhoneMetadata.metadata_for_region(region.upper(), None)
            if metadata is None:
                continue
            check = _region_check(region, metadata, multi=True)
            if check is None:
                if metadata.leading_digits is not None:
                    # chosen by its leading digits, and then never valid: a row it would take is refused
                    checks.append(RegionCheck(region, f"^(?:{metadata.leading_digits})", "^$", None))
                continue
            checks.append(check)
    prefix = main.national_prefix_for_parsing
    return CodeCheck(str(code), f"^(?:{prefix})" if prefix else None, tuple(checks))


def _country_codes() -> tuple[list[str], list[str], list[str]]:
    import phonenumbers

    codes = [str(c) for c in phonenumbers.COUNTRY_CODE_TO_REGION_CODE]
    return [c for c in codes if len(c) == 1], [c for c in codes if len(c) == 2], [c for c in codes if len(c) == 3]


class PhoneDecider:
    """Decides batches of phone numbers in polars (see the module docstring); one per process."""

    def __init__(self, pl: Any, *, self_check: bool = True) -> None:
        self._pl = pl
        self._self_check = self_check
        self._codes = _country_codes()
        self._lock = threading.Lock()
        self._checks: dict[str, CodeCheck | None] = {}

    def decide(self, values: list[str], *, digits_only: bool, default_region: str | None) -> Any:
        """A frame of one row per value: ``v`` (the normalised number, or null) and ``ok``.

        ``ok`` is True only for rows decided valid; ``v`` is ``+D`` or, with ``digits_only``, ``D``.
        """
        pl = self._pl
        col = pl.col
        n = len(values)
        frame = pl.DataFrame({"raw": pl.Series(values, dtype=pl.String)}).select(
            col("raw").str.strip_chars(ASCII_BLANKS).alias("t")
        )
        frame = frame.with_columns(
            col("t").str.replace_all(r"[^0-9]", "").alias("d"),
            col("t").str.starts_with("+").alias("plus"),
        )
        shape = col("t").str.contains(SHAPE)
        if default_region is None:
            # 11-15 bare digits are read as international when no default region is set
            length = col("d").str.len_bytes()
            shape = shape & (col("plus") | ((length >= 11) & (length <= 15)))
        else:
            shape = shape & col("plus")
        one, two, three = self._codes
        cc = (
            pl.when(col("d").str.slice(0, 1).is_in(one))
            .then(col("d").str.slice(0, 1))
            .when(col("d").str.slice(0, 2).is_in(two))
            .then(col("d").str.slice(0, 2))
            .when(col("d").str.slice(0, 3).is_in(three))
            .then(col("d").str.slice(0, 3))
            .otherwise(None)
        )
        candidates = (
            frame.with_row_index("i")
            .filter(shape)
            .select("i", "d", cc.alias("cc"))
            .filter(col("cc").is_not_null() & (col("d").str.len_bytes() >= 3))
        )
        accepted: list[Any] = []
        if len(candidates):
            for (code,), part in candidates.partition_by("cc", as_dict=True, maintain_order=False).items():
                check = self.check(code)
                if check is not None:
                    accepted.append(self._valid_rows(check, part))
        return self._assemble(n, accepted, digits_only=digits_only)

    def _valid_rows(self, check: CodeCheck, part: Any) -> Any:
        """The rows of one country code that ``phonenumbers`` parses as given and finds valid."""
        pl = self._pl
        col = pl.col
        width = len(check.code)
        part = part.with_columns(col("d").str.slice(width).alias("nsn"))
        part = part.filter((col("nsn").str.len_bytes() >= 2) & (col("nsn").str.len_bytes() <= 17))
        if check.national_prefix is not None:
            part = part.filter(~col("nsn").str.contains(check.national_prefix))
        part = part.with_columns((col("nsn").str.len_bytes().cast(pl.String).str.zfill(2) + col("nsn")).alias("key"))
        valid: list[Any] = []
        for region in check.regions:
            if not len(part):
                break
            if region.leading is not None:
                chosen = part.filter(col("nsn").str.contains(region.leading))
                part = part.filter(~col("nsn").str.contains(region.leading))
                if region.any_type is not None:
                    valid.append(chosen.filter(_valid_in(col, region)))
            elif region.any_type is not None:
                mask = part.select(_valid_in(col, region)).to_series()
                valid.append(part.filter(mask))
                part = part.filter(~mask)
        if not valid:
            return part.clear().select("i", "d")
        return pl.concat([v.select("i", "d") for v in valid])

    def decide_code(self, check: CodeCheck, values: list[str]) -> Any:
        """:meth:`decide` of ``+`` and digits of one country code with a given check (the self-check)."""
        pl = self._pl
        frame = pl.DataFrame({"d": pl.Series([v.lstrip("+") for v in values], dtype=pl.String)})
        frame = frame.with_row_index("i").filter(pl.col("d").str.starts_with(check.code))
        return self._assemble(len(values), [self._valid_rows(check, frame)], digits_only=False)

    def _assemble(self, n: int, accepted: list[Any], *, digits_only: bool) -> Any:
        pl = self._pl
        ok = pl.Series("ok", [False] * n, dtype=pl.Boolean)
        out = pl.Series("v", [None] * n, dtype=pl.String)
        if accepted:
            rows = pl.concat(accepted)
            if len(rows):
                idx = rows["i"]
                ok = ok.scatter(idx, True)
                out = out.scatter(idx, rows["d"] if digits_only else "+" + rows["d"])
        return pl.DataFrame([out, ok])

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
    frame = decider.decide_code(check, samples)
    for raw, (value, ok) in zip(samples, frame.iter_rows(), strict=True):
        try:
            want: str | None = normalise_phone(raw)
        except InvalidIdentifier:
            want = None
        if ok and value != want:
            return False
    return True


@functools.cache
def phone_decider(pl: Any) -> PhoneDecider:
    """The process's decider (country-code checks are built on first use and kept)."""
    return PhoneDecider(pl)
