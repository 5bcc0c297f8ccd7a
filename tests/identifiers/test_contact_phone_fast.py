"""The phone fast path (polars, from phonenumbers' metadata) decides exactly what ``normalise_phone`` decides."""

from __future__ import annotations

import functools
import hashlib

import phonenumbers
import pytest
from contact_helpers import Outcome, exact_outcome
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kernel_helpers import assert_kernel_gives, kernel_and_python, partition_values
from phonenumbers import PhoneNumberType
from phonenumbers.phonemetadata import PhoneMetadata

from airflow_audience_provider.identifiers.hashing import _process_with_kernel
from airflow_audience_provider.identifiers.normalise import InvalidIdentifier, normalise_phone
from airflow_audience_provider.identifiers.phone_fast import PhoneDecider, PhoneDecision, phone_decider
from airflow_audience_provider.identifiers.rules import NormalisationProfile, PhoneFormat, get_rule

pytest.importorskip("polars_hash", reason="the fast extra (polars, polars-hash) is not installed")
pytestmark = pytest.mark.usefixtures("fresh_kernel")

CRITEO = get_rule("criteo", "phone").profile
YANDEX = get_rule("yandex_audience", "phone").profile
PROFILES = [
    CRITEO,
    YANDEX,
    NormalisationProfile(CRITEO.identifier_type, CRITEO.hash_algorithm, PhoneFormat.E164, default_region="RU"),
    NormalisationProfile(YANDEX.identifier_type, YANDEX.hash_algorithm, PhoneFormat.DIGITS, default_region="US"),
    NormalisationProfile(CRITEO.identifier_type, CRITEO.hash_algorithm, PhoneFormat.E164, default_region="GB"),
]
#: The metadata attribute of every number type ``phonenumbers`` names (two have no description of their own).
_TYPE_NAMES = tuple(
    name.lower()
    for name, value in vars(PhoneNumberType).items()
    if name.isupper() and isinstance(value, int) and name not in ("FIXED_LINE_OR_MOBILE", "UNKNOWN")
)


def _examples() -> tuple[list[tuple[int, str]], list[tuple[int, str]]]:
    """(country code, national significant number) of every example number; (code, national prefix)."""
    examples: list[tuple[int, str]] = []
    prefixes: list[tuple[int, str]] = []
    for code, regions in sorted(phonenumbers.COUNTRY_CODE_TO_REGION_CODE.items()):
        for region in regions:
            metadata = PhoneMetadata.metadata_for_region_or_calling_code(code, region)
            if metadata is None:
                continue
            for name in (*_TYPE_NAMES, "general_desc"):
                desc = getattr(metadata, name, None)
                if desc is not None and desc.example_number:
                    examples.append((code, desc.example_number))
            if metadata.national_prefix:
                prefixes.append((code, metadata.national_prefix))
    return examples, prefixes


EXAMPLES, NATIONAL_PREFIXES = _examples()
CODES = sorted(phonenumbers.COUNTRY_CODE_TO_REGION_CODE)
DIGITS = "0123456789"


def _mutate(digits: str, op: int, pos: int, digit: str) -> str:
    """Near-valid numbers: a digit dropped, doubled or changed (op 0-2), or the number unchanged (3)."""
    if not digits:
        return digits
    pos %= len(digits)
    if op == 0:
        return digits[:pos] + digits[pos + 1 :]
    if op == 1:
        return digits[:pos] + digits[pos] + digits[pos:]
    if op == 2:
        return digits[:pos] + digit + digits[pos + 1 :]
    return digits


example = st.tuples(st.sampled_from(EXAMPLES), st.integers(0, 5), st.integers(0, 20), st.sampled_from(DIGITS)).map(
    lambda t: (str(t[0][0]), _mutate(t[0][1], min(t[1], 3), t[2], t[3]))
)
random_national = st.tuples(st.sampled_from(CODES).map(str), st.text(alphabet=DIGITS, min_size=0, max_size=18))
with_national_prefix = st.tuples(st.sampled_from(NATIONAL_PREFIXES), st.sampled_from(EXAMPLES)).map(
    lambda t: (str(t[0][0]), t[0][1] + t[1][1])
)
number = st.one_of(example, example, random_national, with_national_prefix)
#: How the number is written: E.164, bare digits, 00, national (no country code), or cut in groups.
PUNCT = [" ", "-", "(", ")", ".", "/", "\t", "\u00a0", "x", "#", ";", ",", "+", "~", "\u2010", "a"]


@st.composite
def written(draw: st.DrawFn) -> str:
    code, national = draw(number)
    form = draw(st.sampled_from(["+", "+", "", "00", "national", "+ "]))
    digits = national if form == "national" else code + national
    if draw(st.booleans()):  # punctuation between digits: spaces, brackets, hyphens and at most one other kind
        cuts = sorted(set(draw(st.lists(st.integers(1, max(1, len(digits) - 1)), max_size=5))))
        odd = draw(st.sampled_from(PUNCT))
        seps = draw(st.lists(st.sampled_from([*PUNCT[:4], odd]), min_size=len(cuts), max_size=len(cuts)))
        pieces = [digits[a:b] for a, b in zip([0, *cuts], [*cuts, len(digits)], strict=True)]
        digits = pieces[0] + "".join(sep + piece for sep, piece in zip(seps, pieces[1:], strict=True))
    lead = "" if form == "national" else form
    blank = st.sampled_from(["", " ", "  ", "\t", "\u00a0", "\n", "\x0b", "\u3000"])
    return draw(blank) + lead + digits + draw(blank)


#: Strings of the fast path's characters: short and long digit runs, stray brackets, a lone ``+``, blanks.
shaped = st.one_of(
    st.text(alphabet="+0123456789 ()-", max_size=45),
    st.tuples(st.sampled_from(["+", "", " +", "00", "+0"]), st.text(alphabet=DIGITS, max_size=40)).map("".join),
    st.sampled_from(["", " ", "\t", "+", "+7 37", "+7 137", "+7 837", "+7 5", "+0 12", "+999 123", "+380 1"]),
)


def expected(profile: NormalisationProfile, values: list[str]) -> Outcome:
    def digest(raw: str) -> str:
        return hashlib.sha256(normalise_phone(raw, profile.phone_format, profile.default_region).encode()).hexdigest()

    return exact_outcome(digest, values)


def digests(out) -> list[str]:
    return partition_values(out, skip_empty=True)


@functools.cache
def _unchecked() -> PhoneDecider:
    """A decider without the runtime self-check on example numbers: the emulation alone must be exact."""
    import polars

    return PhoneDecider(polars, self_check=False)


def _decision(values: list[str], profile: NormalisationProfile) -> PhoneDecision:
    digits = profile.phone_format is PhoneFormat.DIGITS
    return _unchecked().decide(values, digits_only=digits, default_region=profile.default_region)


def _decide(values: list[str], profile: NormalisationProfile) -> tuple[list[str], list[bool]]:
    """The fast path's numbers (sorted) and which rows it took."""
    decision = _decision(values, profile)
    return sorted(decision.numbers.to_list()), decision.ok.to_list()


def _reason(raw: str, profile: NormalisationProfile) -> str | None:
    """The exact rule's reason for refusing ``raw``, or None when it accepts it."""
    try:
        normalise_phone(raw, profile.phone_format, profile.default_region)
    except InvalidIdentifier as exc:
        return exc.reason
    return None


def _exact(raw: str, profile: NormalisationProfile = CRITEO) -> str | None:
    try:
        return normalise_phone(raw, profile.phone_format, profile.default_region)
    except InvalidIdentifier:
        return None


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(profile=st.sampled_from(PROFILES), values=st.lists(written(), min_size=1, max_size=30))
def test_fast_path_accepts_only_what_the_exact_rule_accepts_with_its_output(profile, values) -> None:
    numbers, ok = _decide(values, profile)
    taken = [_exact(raw, profile) for raw, took in zip(values, ok, strict=True) if took]
    assert None not in taken  # every row taken is valid...
    assert numbers == sorted(taken)  # ...and gives the exact rule's number


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(profile=st.sampled_from(PROFILES), values=st.lists(written(), min_size=1, max_size=30))
def test_phone_kernel_gives_what_the_exact_rule_gives(profile, values) -> None:
    assert_kernel_gives(_process_with_kernel(values, profile), expected(profile, values), skip_empty=True)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(profile=st.sampled_from(PROFILES), values=st.lists(st.one_of(written(), shaped), min_size=1, max_size=30))
def test_fast_path_decides_invalid_rows_with_the_exact_rules_reason_and_refuses_the_rest(profile, values) -> None:
    decision = _decision(values, profile)
    for i, reason in decision.invalid:
        assert _reason(values[i], profile) == reason, values[i]
    taken = [i for i, took in enumerate(decision.ok.to_list()) if took]
    assert [i for i, _ in decision.invalid] == sorted({i for i, _ in decision.invalid})
    # every row is accepted, decided invalid or left to the exact rule, exactly once
    assert sorted(taken + [i for i, _ in decision.invalid] + decision.refused) == list(range(len(values)))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(profile=st.sampled_from(PROFILES), values=st.lists(st.one_of(written(), shaped), min_size=1, max_size=30))
def test_phone_kernel_gives_the_exact_rules_reasons_on_invalid_rows(profile, values) -> None:
    assert_kernel_gives(_process_with_kernel(values, profile), expected(profile, values), skip_empty=True)


def test_a_code_the_fast_path_cannot_decide_is_left_to_the_exact_rule() -> None:
    import polars

    decider = PhoneDecider(polars, self_check=False)
    decider._checks["7"] = None  # as for a code whose patterns Rust refuses or whose examples disagree
    values = ["+79995551111", "+7 37", "+7 5", "+0 12", "79995551111", "+44 7400 123456"]
    decision = decider.decide(values, digits_only=False, default_region=None)
    assert decision.numbers.to_list() == ["+447400123456"]
    # the reasons that do not depend on the code's metadata are still decided
    assert decision.invalid == [(2, "phone_syntax"), (3, "phone_syntax")]
    assert decision.refused == [0, 1, 4]


@pytest.mark.parametrize(
    ("profile", "raw", "reason"),
    [
        (CRITEO, "+7 37", "phone_invalid"),  # parsed, not valid
        (CRITEO, "+7 (137)", "phone_invalid"),
        (CRITEO, "+7 1234", "phone_invalid"),
        (CRITEO, "+7 5", "phone_syntax"),  # under 3 digits
        (CRITEO, "+0 12", "phone_syntax"),  # no country code
        (PROFILES[2], "00 7 37", "phone_invalid"),  # 00 read as +, whatever the default region
        (CRITEO, "00", "phone_syntax"),
        (CRITEO, "+999 123", "phone_syntax"),
        (CRITEO, "+380 1", "phone_syntax"),  # 1 digit after the code
        (CRITEO, "+44 123456789012345678", "phone_syntax"),  # over 17 digits after the code
        (CRITEO, "+44 12345678901234567", "phone_invalid"),  # 17: parsed, not valid
        (CRITEO, "  ", "empty"),
        (CRITEO, "999 555 11 11", "phone_no_country"),  # bare digits, not 11-15 of them
        (CRITEO, "8 (999) 555-11-11", "phone_no_country"),  # national form without a default region
        (YANDEX, "79995551", "phone_no_country"),
        (YANDEX, "71234567890", "phone_no_country"),  # 11 bare digits, not a valid number
        (PROFILES[2], "+7 37", "phone_invalid"),  # the same with a default region
        (CRITEO, "+7 837", "phone_invalid"),  # a national prefix (8), but every reading is too short
    ],
)
def test_invalid_international_forms_are_decided_with_the_exact_reason(profile, raw, reason) -> None:
    assert _reason(raw, profile) == reason
    decision = _decision([raw], profile)
    assert (decision.invalid, decision.refused) == ([(0, reason)], [])


def test_the_bench_phones_leave_no_row_to_the_exact_rule() -> None:
    """Russian mobiles as ``+7...`` and ``+7 (9xx) xxx-xx-xx``, 1% invalid (``+7 NNN``, ``+7 8NN`` among them)."""
    values = [f"+7{900 + i % 100}{i * 7919 % 10**7:07d}" for i in range(300)]
    values += [f" +7 ({900 + i}) {i * 7919 % 1000:03d}-{i:02d}-11 " for i in range(90)]
    values += [f"+7 {i % 1000}" for i in range(37, 3000, 100)]
    assert all(_exact(v) for v in values[:390])
    decision = _decision(values, CRITEO)
    assert all(decision.ok.to_list()[:390])
    assert decision.invalid == [(i, "phone_invalid") for i in range(390, len(values))]
    assert decision.refused == []


@pytest.mark.parametrize("profile", [CRITEO, YANDEX, PROFILES[2]])
def test_the_accepted_numbers_are_one_chunk(profile) -> None:
    """Polars hashes a column of several chunks chunk by chunk on its thread pool, which the read
    workers share (two workers then queue on it): the numbers handed to the hash must be one chunk."""
    values = ["+79995551111", " +7 (999) 555-11-12 ", "007 999 555 11 13", "79995551114", "+44 7400 123456", "+7 37"]
    values = values * 50
    decision = _decision(values, profile)
    assert len(decision.numbers) >= 200
    assert decision.numbers.n_chunks() == 1


def test_every_example_number_in_international_form_is_decided_by_the_fast_path() -> None:
    values = [f"+{code}{national}" for code, national in EXAMPLES]
    numbers, ok = _decide(values, CRITEO)
    taken = [_exact(raw) for raw, took in zip(values, ok, strict=True) if took]
    assert numbers == sorted(taken) and None not in taken
    # Left to the exact rule: numbers a national prefix for parsing could strip (+7 800..., all of +54)
    assert len(taken) > 0.97 * len(values)


def test_the_self_check_accepts_every_country_code_of_the_installed_metadata() -> None:
    import polars

    decider = phone_decider(polars)
    assert [code for code in CODES if decider.check(str(code)) is None] == []


@pytest.mark.parametrize(
    ("profile", "raw", "fast"),
    [
        (CRITEO, "+7 (999) 555-11-11", "+79995551111"),
        (CRITEO, " +79995551111\t", "+79995551111"),
        (YANDEX, "+7 999 555 11 11", "79995551111"),
        (YANDEX, "79995551111", "79995551111"),  # bare digits read as international without a region
        (CRITEO, "+1 (201) 555-0123", "+12015550123"),
        (CRITEO, "+7 7172 58 74 03", "+77172587403"),  # Kazakhstan: +7 and leading digits 7
        (CRITEO, "+44 7400 123456", "+447400123456"),
        (CRITEO, "+39 06 6982 1234", "+390669821234"),  # Italian leading zero kept
        (CRITEO, "+800 1234 5678", "+80012345678"),  # non-geographic code
        (CRITEO, "007 999 555 11 11", "+79995551111"),  # 00: the international call prefix
        (PROFILES[2], "00 (44) 7400 123456", "+447400123456"),  # whatever the default region
    ],
)
def test_common_international_forms_take_the_fast_path(profile, raw, fast) -> None:
    assert _exact(raw, profile) == fast
    assert _decide([raw], profile) == ([fast], [True])


@pytest.mark.parametrize(
    ("profile", "raw"),
    [
        (PROFILES[2], "8 (999) 555-11-11"),  # national form, read in the default region
        (PROFILES[3], "12015550123"),  # bare digits with a default region: the region reads them first
        (CRITEO, "+7 999 555-11-11 ext. 12"),  # extension
        (CRITEO, "+7\u00a0999\u00a05551111"),  # NBSP: phonenumbers' punctuation, not the fast path's
        (CRITEO, "+7 800 555 35 35"),  # a national prefix (8) parse could strip: the exact rule decides
        (CRITEO, "+54 12"),  # too short, but Argentina's prefix rule rewrites N: the exact rule decides
    ],
)
def test_other_forms_are_left_to_the_exact_rule(profile, raw) -> None:
    assert _decide([raw], profile) == ([], [False])
    assert _decision([raw], profile).refused == [0]


def test_phone_profiles_use_the_kernel_and_the_python_path_agrees(monkeypatch) -> None:
    values = [f"+{code}{national}" for code, national in EXAMPLES[::7]] + ["8 999 555 11 11", "+7 1", "", "+7 (999) x"]
    for profile in (CRITEO, YANDEX):
        with_kernel, python = kernel_and_python(monkeypatch, profile, values)
        want, want_invalid = expected(profile, values)
        assert digests(with_kernel) == digests(python) == want
        assert sorted(with_kernel.invalid) == python.invalid == want_invalid
        assert {reason for _, reason in want_invalid} >= {"phone_no_country", "phone_syntax"}
