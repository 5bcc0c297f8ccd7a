"""Normalisers, validators, hashing and redaction (property-based where it pays)."""

from __future__ import annotations

import contextlib
import hashlib
import uuid

import pytest
from contact_helpers import exact_outcome
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from airflow_audience_provider.identifiers.accounting import redact
from airflow_audience_provider.identifiers.hashing import hash_value, process_batch
from airflow_audience_provider.identifiers.normalise import (
    REASON_HINTS,
    InvalidIdentifier,
    detect_type,
    normalise_batch,
    normalise_client_id,
    normalise_email,
    normalise_mac,
    normalise_maid,
    normalise_opaque,
    normalise_phone,
    normalise_sha256,
    normaliser_for,
)
from airflow_audience_provider.identifiers.rules import (
    HashAlgorithm,
    IdentifierType,
    NormalisationProfile,
    PhoneFormat,
    get_rule,
)

EMAIL = NormalisationProfile(IdentifierType.EMAIL)
MAID = NormalisationProfile(IdentifierType.MAID)
SHA = NormalisationProfile(IdentifierType.SHA256, HashAlgorithm.NONE)

blank = st.sampled_from(["", " ", "  ", "\t", " \t ", "\r", "\u00a0", "\x1c"])


def mixed_case(draw: st.DrawFn, text: str) -> str:
    flips = draw(st.lists(st.booleans(), min_size=len(text), max_size=len(text)))
    return "".join(c.upper() if f else c for c, f in zip(text, flips, strict=True))


@st.composite
def raw_emails(draw: st.DrawFn) -> str:
    """Valid addresses dressed up as exports have them: blanks around, random case."""
    address = draw(st.emails())
    return draw(blank) + mixed_case(draw, address) + draw(blank)


junk = st.one_of(
    st.text(max_size=30).filter(lambda s: "\n" not in s),
    st.sampled_from(["a@b", "@x.com", "a@@b.com", "a b@c.com", "a..b@c.com", ".a@b.com", "a@-b.com", "é@x.com"]),
)


# ---- e-mail ---------------------------------------------------------------------------------


@given(raw_emails())
def test_email_normalisation_is_trimmed_lowercase_and_idempotent(raw: str) -> None:
    try:
        out = normalise_email(raw)
    except InvalidIdentifier:
        # st.emails() can produce addresses outside the dot-atom subset we accept
        # (e.g. over-long labels); those must fail with a reason, never crash.
        return
    assert out == out.strip().lower()
    assert normalise_email(out) == out
    assert normalise_email(out.upper()) == out


@settings(suppress_health_check=[HealthCheck.too_slow], max_examples=150)
@given(st.lists(st.one_of(raw_emails(), junk), max_size=40))
def test_email_fast_batch_path_agrees_with_per_value_path(values: list[str]) -> None:
    """The C regex pass over a whole batch must accept and output exactly what the per-value path does."""
    batch_out, batch_invalid = normalise_batch(EMAIL, values)
    expected_out, expected_invalid = exact_outcome(normalise_email, values, sort=False)
    got = [v.decode() if isinstance(v, bytes) else v for v in batch_out]
    assert got == expected_out
    assert batch_invalid == expected_invalid


def test_fast_path_is_taken_for_clean_batches() -> None:
    out, invalid = normalise_batch(EMAIL, [" A@B.COM", "c.d@e.org  "])
    assert out == [b"a@b.com", b"c.d@e.org"]  # bytes: the block path ran
    assert invalid == []


def test_partly_matching_line_does_not_fool_the_fast_path() -> None:
    # "xx yy@z.com" contains a valid-looking tail; the batch must fall back and reject the line.
    out, invalid = normalise_batch(EMAIL, ["a@b.com", "xx yy@z.com", "c@d.com"])
    assert [v if isinstance(v, str) else v.decode() for v in out] == ["a@b.com", "c@d.com"]
    assert invalid == [(1, "email_syntax")]


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("plainaddress", "email_no_at"),
        ("a@b@c.com", "email_syntax"),
        ("a@b", "email_syntax"),
        ("a..b@example.com", "email_syntax"),
        ("josé@example.com", "email_non_ascii"),
        ("x" * 250 + "@example.com", "email_too_long"),
    ],
)
def test_email_invalid_reasons(raw: str, reason: str) -> None:
    with pytest.raises(InvalidIdentifier) as exc:
        normalise_email(raw)
    assert exc.value.reason == reason
    assert raw.strip() == "" or raw not in str(exc.value)  # the reason never echoes the value


# ---- phone ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "fmt", "region", "expected"),
    [
        ("+7 (999) 555-11-11", PhoneFormat.E164, None, "+79995551111"),
        ("+7 (999) 555-11-11", PhoneFormat.DIGITS, None, "79995551111"),
        ("79995551111", PhoneFormat.DIGITS, None, "79995551111"),  # Yandex's own example form
        ("8 999 555 11 11", PhoneFormat.E164, "RU", "+79995551111"),
        ("0044 20 7946 0958", PhoneFormat.E164, None, "+442079460958"),
        ("(202) 456-1111", PhoneFormat.E164, "US", "+12024561111"),
    ],
)
def test_phone_to_e164(raw: str, fmt: PhoneFormat, region: str | None, expected: str) -> None:
    assert normalise_phone(raw, fmt, region) == expected


@pytest.mark.parametrize(
    ("raw", "region", "reason"),
    [
        ("", None, "empty"),
        ("call me", None, "phone_syntax"),
        ("999 555 11 11", None, "phone_no_country"),
        ("+7 000", None, "phone_invalid"),
        ("+1 555 0100 999 999 9", None, "phone_invalid"),
    ],
)
def test_phone_invalid(raw: str, region: str | None, reason: str) -> None:
    with pytest.raises(InvalidIdentifier) as exc:
        normalise_phone(raw, PhoneFormat.E164, region)
    assert exc.value.reason == reason


@pytest.mark.parametrize("raw", ["89995551111", "8 (999) 555-11-11", "8-999-555-11-11"])
def test_russian_national_phones_need_a_region(raw: str) -> None:
    """The way Russian CRMs store numbers: refused with a reason that points at the option, read with it."""
    with pytest.raises(InvalidIdentifier) as exc:
        normalise_phone(raw, PhoneFormat.DIGITS, None)
    assert exc.value.reason == "phone_no_country"
    assert "default_region" in REASON_HINTS["phone_no_country"]
    assert normalise_phone(raw, PhoneFormat.DIGITS, "RU") == "79995551111"


@pytest.mark.parametrize("region", [None, "RU", "US"])
def test_phone_with_00_prefix_is_international_in_any_region(region: str | None) -> None:
    assert normalise_phone("007 999 555 11 11", PhoneFormat.E164, region) == "+79995551111"
    assert normalise_phone("0079995551111", PhoneFormat.DIGITS, region) == "79995551111"


def test_eleven_digits_fall_back_to_international_when_the_region_does_not_explain_them() -> None:
    assert normalise_phone("79995551111", PhoneFormat.DIGITS, "DE") == "79995551111"
    assert normalise_phone("442079460958", PhoneFormat.E164, "RU") == "+442079460958"


@settings(max_examples=60)
@given(st.sampled_from(["RU", "US", "GB", "DE", "FR", "IN", "BR", "TR", "KZ", "JP"]), st.data())
def test_phone_normalisation_is_idempotent_on_library_examples(region: str, data: st.DataObject) -> None:
    import phonenumbers

    example = phonenumbers.example_number_for_type(region, phonenumbers.PhoneNumberType.MOBILE)
    assume(example is not None)
    national = phonenumbers.format_number(example, phonenumbers.PhoneNumberFormat.NATIONAL)
    international = phonenumbers.format_number(example, phonenumbers.PhoneNumberFormat.INTERNATIONAL)
    raw = data.draw(st.sampled_from([national, international]))
    out = normalise_phone(raw, PhoneFormat.E164, region)
    assert out.startswith("+") and out[1:].isdigit()
    assert normalise_phone(out, PhoneFormat.E164, None) == out
    assert normalise_phone(international, PhoneFormat.DIGITS, None) == out[1:]


# ---- MAID, opaque, pre-hashed -----------------------------------------------------------------


@given(st.uuids(), st.booleans(), st.booleans())
def test_maid_forms(u: uuid.UUID, upper: bool, strip_hyphens: bool) -> None:
    assume(u.int != 0)
    raw = str(u).upper() if upper else str(u)
    if strip_hyphens:
        raw = raw.replace("-", "")
    assert normalise_maid(f" {raw} ") == str(u)
    assert normalise_maid(raw, "upper") == str(u).upper()


def test_idfa_is_upper_case_and_gaid_lower_case_before_hashing() -> None:
    """Yandex's data requirements: IDFA upper-case, GAID lower-case; the case changes the hash."""
    raw = ["aaaaaaaa-bbbb-cccc-1111-222222222200", "6D92078A8246496BA4B3E9E1C4C2D7A5", "bad"]
    idfa = get_rule("yandex_audience", "idfa")
    gaid = get_rule("yandex_audience", "gaid")
    assert idfa.vendor_identifier_type == gaid.vendor_identifier_type == "idfa_gaid"
    for rule, upper in ((idfa, True), (gaid, False)):
        out, invalid = normalise_batch(rule.profile, raw)
        expected = ["aaaaaaaa-bbbb-cccc-1111-222222222200", "6d92078a-8246-496b-a4b3-e9e1c4c2d7a5"]
        expected = [v.upper() for v in expected] if upper else expected
        assert [v.decode() if isinstance(v, bytes) else v for v in out] == expected
        assert invalid == [(2, "maid_syntax")]
        assert normaliser_for(rule.profile)(raw[0]) == expected[0]
    # a customised maid_case cannot turn a GAID rule upper-case
    assert normaliser_for(gaid.with_options(maid_case="upper").profile)(raw[0]) == raw[0]


def test_maid_rejects_zero_and_garbage() -> None:
    for raw, reason in [
        ("00000000-0000-0000-0000-000000000000", "maid_zero"),
        ("not-a-uuid", "maid_syntax"),
        ("", "empty"),
    ]:
        with pytest.raises(InvalidIdentifier) as exc:
            normalise_maid(raw)
        assert exc.value.reason == reason


@settings(max_examples=80)
@given(st.lists(st.one_of(st.uuids().map(str), st.uuids().map(lambda u: str(u).upper()), junk), max_size=30))
def test_maid_batch_agrees_with_per_value(values: list[str]) -> None:
    out, invalid = normalise_batch(MAID, values)
    expected_out, expected_invalid = exact_outcome(normalise_maid, values, sort=False)
    assert [v.decode() if isinstance(v, bytes) else v for v in out] == expected_out
    assert invalid == expected_invalid


def test_opaque_ids_are_trimmed_only() -> None:
    assert normalise_opaque("  Cust-00123 ") == "Cust-00123"
    for raw, reason in [("", "empty"), ("a\nb", "opaque_control_chars"), ("x" * 600, "opaque_too_long")]:
        with pytest.raises(InvalidIdentifier) as exc:
            normalise_opaque(raw)
        assert exc.value.reason == reason


def test_pre_hashed_values() -> None:
    h = hashlib.sha256(b"a@b.com").hexdigest()
    assert normalise_sha256(" " + h.upper() + " ") == h
    with pytest.raises(InvalidIdentifier, match="hash_length"):
        normalise_sha256(hashlib.md5(b"a@b.com").hexdigest())
    with pytest.raises(InvalidIdentifier, match="hash_not_hex"):
        normalise_sha256("z" * 64)


# ---- hashing --------------------------------------------------------------------------------


def test_yandex_published_vectors() -> None:
    """Yandex's examples: MD5 digests printed in its docs, SHA-256 ones computed independently of this code."""
    rule = get_rule("yandex_audience", "email")
    assert hash_value(normalise_email(" Mail@Yandex.ru "), rule.profile.hash_algorithm) == (
        "bd93ea95f242f02313eccf0ab0bb7fe5121a052de42d2cb7bd332fb9f537cbfa"
    )
    phone_rule = get_rule("yandex_audience", "phone")
    normalised = normalise_phone("+7 (999) 555-11-11", phone_rule.profile.phone_format)
    assert normalised == "79995551111"
    assert hash_value(normalised, "sha256") == "22846ab8f79870871eb44f653419a4a5069301827d8ae75b6c2a88e4989a364e"
    assert hash_value("mail@yandex.ru", "md5") == "3c56ff8fef0f6c65b36b2d25720fe276"
    # MAC: hashed over the 6 raw bytes; the MD5 is the one the Yandex.Audience API reference prints.
    mac = normalise_mac("ae:12:34:56:d0:a1")
    assert mac == "AE123456D0A1"
    assert hash_value(mac, "md5", raw_bytes=True) == "c5c32c30c07abbb7580a0925d995fee4"
    assert hash_value(mac, "sha256", raw_bytes=True) == (
        "f74c5e094cea3ecc6289924b11903e8d9920ec4faf38f7ff82b949c5b1214b6c"
    )


MAC = NormalisationProfile(IdentifierType.MAC)


@given(st.binary(min_size=6, max_size=6), st.sampled_from(["", ":", "-", "."]), st.booleans(), blank)
def test_mac_forms_normalise_to_the_bytes_they_spell(raw: bytes, sep: str, upper: bool, pad: str) -> None:
    assume(raw not in (b"\0" * 6, b"\xff" * 6))
    text = raw.hex().upper() if upper else raw.hex()
    if sep == ".":
        written = ".".join(text[i : i + 4] for i in range(0, 12, 4))
    else:
        written = sep.join(text[i : i + 2] for i in range(0, 12, 2))
    assert normalise_mac(pad + written + pad) == raw.hex().upper()
    out = process_batch(MAC, [written])
    assert list(out.partitions.values()) == [hashlib.sha256(raw).hexdigest()]


@pytest.mark.parametrize(
    ("raw", "reason"),
    [("", "empty"), ("AE123456D0A", "mac_syntax"), ("AE123456D0A1B2", "mac_syntax"),
     ("AE:12:34:56:D0:AZ", "mac_syntax"), ("00-00-00-00-00-00", "mac_reserved"), ("FFFFFFFFFFFF", "mac_reserved")],
)  # fmt: skip
def test_mac_invalid(raw: str, reason: str) -> None:
    with pytest.raises(InvalidIdentifier) as exc:
        normalise_mac(raw)
    assert exc.value.reason == reason


@given(st.integers(min_value=1, max_value=2**64 - 1), st.integers(min_value=0, max_value=3), blank)
def test_client_id_is_the_decimal_uint64(number: int, zeros: int, pad: str) -> None:
    assert normalise_client_id(pad + "0" * zeros + str(number) + pad) == str(number)


@pytest.mark.parametrize(
    ("raw", "reason"),
    [("", "empty"), ("0", "client_id_range"), (str(2**64), "client_id_range"), ("9" * 40, "client_id_range"),
     ("12.5", "client_id_syntax"), ("-1", "client_id_syntax"), ("١٢٣", "client_id_syntax")],
)  # fmt: skip
def test_client_id_invalid(raw: str, reason: str) -> None:
    with pytest.raises(InvalidIdentifier) as exc:
        normalise_client_id(raw)
    assert exc.value.reason == reason


@given(st.lists(st.one_of(raw_emails(), junk), max_size=30))
def test_process_batch_partitions_hold_exactly_the_hashes(values: list[str]) -> None:
    out = process_batch(EMAIL, values)
    hashes = [h for text in out.partitions.values() for h in text.split("\n")]
    assert len(hashes) == out.count == len(values) - len(out.invalid)
    assert all(h[:2] == key for key, text in out.partitions.items() for h in text.split("\n"))
    expected = []
    for v in values:
        with contextlib.suppress(InvalidIdentifier):
            expected.append(hashlib.sha256(normalise_email(v).encode()).hexdigest())
    assert sorted(hashes) == sorted(expected)


# ---- detection and redaction ------------------------------------------------------------------


def test_detect_type() -> None:
    assert detect_type("a@b.com") is IdentifierType.EMAIL
    assert detect_type("+7 999 555 11 11") is IdentifierType.PHONE
    assert detect_type(str(uuid.uuid4())) is IdentifierType.MAID
    assert detect_type("a" * 64) is IdentifierType.SHA256
    assert detect_type("hello") is None
    assert detect_type("AE:12:34:56:D0:A1") is IdentifierType.MAC
    assert detect_type("ae123456d0a1") is IdentifierType.MAC
    assert detect_type("123456789012") is not IdentifierType.MAC  # digits alone: more likely a phone


@given(st.emails())
def test_redacted_email_does_not_reveal_the_address(address: str) -> None:
    masked = redact(address)
    local, _, domain = address.rpartition("@")
    masked_local, _, masked_domain = masked.rpartition("@")
    assert masked_local == local[:1] + "***"  # one character of the local part, no more
    name, _, tld = domain.rpartition(".")
    assert masked_domain == f"{name[:1]}***.{tld[:3]}"  # at most three characters of any part
    if len(local) > 1:
        assert address not in masked


def test_redaction_examples() -> None:
    assert redact("john.doe@example.com") == "j***@e***.com"
    assert redact("+7 999 555 11 67") == "+7********67"
    assert redact("CUSTOMER-12345") == "C***(14)"
    assert redact("") == "<empty>"
