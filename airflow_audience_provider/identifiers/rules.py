"""Vendor rules as data: how each vendor wants each identifier type normalised, hashed and chunked.

A :class:`VendorRule` is a frozen, picklable value. The engine never branches on a vendor name: it
reads the rule. Adding a vendor means registering rules with :func:`register_rule`.

Rules are versioned (``version``). The version is written into every snapshot; when it changes,
the stored hashes are no longer comparable, so the next sync is a full replace instead of a diff.
So is a fingerprint of the rule's settings (:attr:`VendorRule.fingerprint`): a rule re-registered
under the same version with other settings also makes the next sync a full replace, with the
reason logged.
Test vectors for every registered rule live in ``tests/identifiers/vectors/``.

The comment above each rule states the vendor facts it follows, from Criteo's developer portal
(developers.criteo.com) and the Yandex.Audience API reference (yandex.ru/dev/audience).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from enum import StrEnum


class IdentifierType(StrEnum):
    """Vendor-neutral identifier kinds the engine can normalise."""

    EMAIL = "email"
    PHONE = "phone"
    #: Mobile advertising id (Apple IDFA or Google GAID), a UUID.
    MAID = "maid"
    #: Apple's IDFA, a UUID written upper-case (a list known to hold only IDFAs).
    IDFA = "idfa"
    #: Google's advertising id (GAID), a UUID written lower-case (a list known to hold only GAIDs).
    GAID = "gaid"
    #: Customer ids and other opaque ids (LiveRamp IdentityLink, Criteo GUM...): trimmed only.
    CUSTOMER_ID = "customer_id"
    #: Already SHA-256 hashed input (64 hex digits): validated and passed through.
    SHA256 = "sha256"
    #: Device MAC address (12 hex digits; separators ``:``, ``-``, ``.`` removed). Hashed over its
    #: 6 raw bytes, not over the text (as Yandex.Audience asks).
    MAC = "mac"
    #: Yandex Metrica ClientID: the unsigned 64-bit number Metrica gives a browser. It is
    #: Metrica's own pseudonymous id and is matched as written, so it is never hashed.
    CLIENT_ID = "client_id"

    @property
    def family(self) -> IdentifierType:
        """The kind a value's syntax shows: IDFA and GAID are both mobile advertising ids (UUIDs)."""
        return IdentifierType.MAID if self in (IdentifierType.IDFA, IdentifierType.GAID) else self


class HashAlgorithm(StrEnum):
    """Hash applied to the normalised value. ``NONE`` sends the normalised value itself."""

    SHA256 = "sha256"
    MD5 = "md5"
    NONE = "none"


class PhoneFormat(StrEnum):
    """How a phone number is written before hashing."""

    #: ``+79995551111`` (E.164 with the plus sign).
    E164 = "e164"
    #: ``79995551111`` (E.164 digits, no plus, no spaces).
    DIGITS = "digits"


@dataclass(frozen=True)
class NormalisationProfile:
    """The part of a rule that decides the output value of one input string.

    Two destinations with equal profiles get byte-identical outputs, so a source read once can
    feed both (see :mod:`airflow_audience_provider.identifiers.fanout`).
    """

    identifier_type: IdentifierType
    hash_algorithm: HashAlgorithm = HashAlgorithm.SHA256
    phone_format: PhoneFormat = PhoneFormat.E164
    #: ISO 3166 region used to read phone numbers written without a country code (e.g. ``"RU"``).
    default_region: str | None = None
    #: ``"lower"`` or ``"upper"``: case of a mobile advertising id before hashing (IDFA profiles
    #: are always upper-case and GAID profiles lower-case, whatever this says).
    maid_case: str = "lower"

    @property
    def upper_case_maid(self) -> bool:
        """True when mobile advertising ids are written upper-case before hashing."""
        t = self.identifier_type
        return t is IdentifierType.IDFA or (t is IdentifierType.MAID and self.maid_case == "upper")

    @property
    def hashed_output(self) -> bool:
        """True when outputs are lower-case hex digests (uniformly distributed, fixed length)."""
        return self.hash_algorithm is not HashAlgorithm.NONE or self.identifier_type is IdentifierType.SHA256

    @property
    def hashes_raw_bytes(self) -> bool:
        """True when the hash is taken over the bytes a hex value spells, not over its text.

        Yandex.Audience hashes a MAC address as its 6 raw bytes:
        ``AE123456D0A1`` -> ``b"\\xae\\x12\\x34\\x56\\xd0\\xa1"`` -> SHA-256.
        """
        return self.identifier_type is IdentifierType.MAC

    def hash_input(self, normalised: str) -> bytes:
        """The bytes the hash is taken over for one normalised value."""
        if self.hashes_raw_bytes:
            return bytes.fromhex(normalised)
        return normalised.encode("utf-8")

    @property
    def output_length(self) -> int | None:
        """Fixed length of every output value, or None when outputs vary in length."""
        if self.identifier_type is IdentifierType.SHA256:
            return 64
        if self.hash_algorithm is HashAlgorithm.SHA256:
            return 64
        if self.hash_algorithm is HashAlgorithm.MD5:
            return 32
        return None


@dataclass(frozen=True)
class VendorRule:
    """One vendor's versioned rule for one identifier type.

    :param vendor: vendor key, e.g. ``"criteo"``.
    :param identifier_type: the vendor-neutral identifier kind.
    :param version: rule version; bump it whenever an output value could change.
    :param profile: normalisation and hashing (see :class:`NormalisationProfile`).
    :param vendor_identifier_type: the name the vendor API uses for this type (e.g. ``"Email"``).
    :param max_ids_per_chunk: most identifiers in one request or file; None = no count limit.
    :param max_bytes_per_chunk: most bytes in one request body or file; None = no size limit.
    :param bytes_per_row_overhead: bytes a row costs besides the value (newline, quotes, comma).
    :param header: bytes a file chunk starts with (a CSV header row), counted in the size limit.
    :param min_entries: fewest identifiers the vendor accepts for a list.
    :param source: the vendor documentation the rule follows and the facts it rests on (quoted in errors).
    :param api_identifier_types: ``(api, name)`` pairs where a vendor's APIs spell the type differently
        (Criteo Retail Media ``Email``, Marketing Solutions ``email``); an API not listed does not take it.
    """

    vendor: str
    identifier_type: IdentifierType
    version: str
    profile: NormalisationProfile
    vendor_identifier_type: str
    max_ids_per_chunk: int | None = None
    max_bytes_per_chunk: int | None = None
    bytes_per_row_overhead: int = 1
    header: str = ""
    min_entries: int = 1
    source: str = ""
    api_identifier_types: tuple[tuple[str, str], ...] = ()

    def api_identifier_type(self, api: str | None = None) -> str | None:
        """The name ``api`` uses for this type (None: that API does not take it); no ``api``: the default name."""
        if api is None or not self.api_identifier_types:
            return self.vendor_identifier_type
        return dict(self.api_identifier_types).get(api)

    @property
    def key(self) -> str:
        """Stable text key, e.g. ``"criteo/email@1"``."""
        return f"{self.vendor}/{self.identifier_type.value}@{self.version}"

    @property
    def fingerprint(self) -> str:
        """A digest of what decides the values sent and what the vendor reads them as: the identifier
        type, every normalisation and hashing setting of the profile and the vendor's type name.

        Chunk limits and documentation are left out (they change no value). Snapshots record it
        beside :attr:`key`: a rule re-registered under the same version with other settings is not
        diffed against the old rule's values.
        """
        settings = {f.name: str(getattr(self.profile, f.name)) for f in dataclasses.fields(NormalisationProfile)}
        settings.update(vendor=self.vendor, vendor_identifier_type=self.vendor_identifier_type)
        text = json.dumps(settings, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    @property
    def shipped(self) -> bool:
        """True for a rule this package registers, or one derived from it by :meth:`with_options`,
        while the registry still holds the package's own rule (no re-registration replaced it)."""
        base_version = self.version.split("+custom(", 1)[0]
        base_key = f"{self.vendor}/{self.identifier_type.value}@{base_version}"
        expected = _SHIPPED.get(base_key)
        if expected is None:
            return False
        if base_version == self.version:
            return self.fingerprint == expected
        registered = _RULES.get((self.vendor, self.identifier_type))
        return registered is not None and registered.key == base_key and registered.fingerprint == expected

    def with_options(self, **changes: object) -> VendorRule:
        """Return a copy with rule or profile fields changed, and a version that says so.

        Profile fields (``hash_algorithm``, ``phone_format``, ``default_region``, ``maid_case``) may be
        given directly. The version gets a ``+custom`` suffix listing the changes, so a snapshot made
        with the stock rule is not diffed against outputs of a customised one.

        :param changes: field names of :class:`VendorRule` or :class:`NormalisationProfile`.
        """
        profile_fields = {f.name for f in dataclasses.fields(NormalisationProfile)}
        profile_changes = {k: v for k, v in changes.items() if k in profile_fields}
        rule_changes = {k: v for k, v in changes.items() if k not in profile_fields}
        if "version" not in rule_changes and changes:
            suffix = ",".join(f"{k}={v}" for k, v in sorted(changes.items()))
            rule_changes["version"] = f"{self.version}+custom({suffix})"
        profile = dataclasses.replace(self.profile, **profile_changes)  # type: ignore[arg-type]
        return dataclasses.replace(self, profile=profile, **rule_changes)  # type: ignore[arg-type]


_RULES: dict[tuple[str, IdentifierType], VendorRule] = {}


def register_rule(rule: VendorRule, *, replace: bool = False) -> VendorRule:
    """Add a rule to the registry.

    :param rule: the rule.
    :param replace: allow overwriting an existing (vendor, identifier type) rule.
    :raises ValueError: if the rule exists and ``replace`` is false.
    """
    key = (rule.vendor, rule.identifier_type)
    if key in _RULES and not replace:
        raise ValueError(f"a rule for {rule.vendor}/{rule.identifier_type.value} is already registered")
    _RULES[key] = rule
    return rule


def get_rule(vendor: str, identifier_type: IdentifierType | str) -> VendorRule:
    """Look up the rule for a vendor and identifier type.

    :raises KeyError: naming the identifier types the vendor supports.
    """
    id_type = IdentifierType(identifier_type)
    try:
        return _RULES[(vendor, id_type)]
    except KeyError:
        known = sorted(t.value for (v, t) in _RULES if v == vendor)
        raise KeyError(
            f"no rule for vendor {vendor!r} and identifier type {id_type.value!r}; "
            f"supported: {known or 'none (unknown vendor)'}"
        ) from None


def list_rules() -> list[VendorRule]:
    """All registered rules, sorted by vendor and identifier type."""
    return sorted(_RULES.values(), key=lambda r: (r.vendor, r.identifier_type.value))


# --------------------------------------------------------------------------------------------
# Criteo (Retail Media and Marketing Solutions audience APIs, developers.criteo.com)
# --------------------------------------------------------------------------------------------
# At most 50,000 identifiers per add/remove request (Criteo's contact-list docs). Hashing: Retail
# Media's rules are unverified; the safe default is trim, lower-case, SHA-256, lower-case hex (64
# chars). Retail Media spells identifier types in PascalCase (``Email``), Marketing Solutions in
# lower camel case (``email``).
_CRITEO_CHUNK = 50_000
_CRITEO_SRC = "Criteo audience-segment API, developers.criteo.com: at most 50,000 identifiers per add/remove request"

register_rule(
    VendorRule(
        vendor="criteo",
        identifier_type=IdentifierType.EMAIL,
        version="1",
        profile=NormalisationProfile(IdentifierType.EMAIL, HashAlgorithm.SHA256),
        vendor_identifier_type="Email",
        max_ids_per_chunk=_CRITEO_CHUNK,
        api_identifier_types=(("retail_media", "Email"), ("marketing_solutions", "email")),
        source=_CRITEO_SRC
        + "; e-mails trimmed, lower-cased and SHA-256 hashed (Retail Media's own rule is unverified)",
    )
)
# Phone version 2: with a default region, numbers written with 00 or as 11-15 bare digits are read
# as international when the region does not explain them (version 1 refused them).
# Phone: Criteo does not document the phone format (unverified). Assumption: E.164 with the plus
# sign, SHA-256 hashed like e-mail (the rule: hash locally). Change with
# ``rule.with_options(phone_format=PhoneFormat.DIGITS)`` once Criteo confirms otherwise.
register_rule(
    VendorRule(
        vendor="criteo",
        identifier_type=IdentifierType.PHONE,
        version="2",
        profile=NormalisationProfile(IdentifierType.PHONE, HashAlgorithm.SHA256, PhoneFormat.E164),
        vendor_identifier_type="PhoneNumber",
        max_ids_per_chunk=_CRITEO_CHUNK,
        api_identifier_types=(("retail_media", "PhoneNumber"), ("marketing_solutions", "phoneNumber")),
        source=_CRITEO_SRC + "; phone format undocumented (unverified): E.164 assumed",
    )
)
# Mobile advertising ids: Marketing Solutions' ``madid``. Whether Criteo matches hashed MAIDs is not documented
# (unverified); we hash by default because identifiers must not leave the process in clear text
# unless the task asks for it: ``rule.with_options(hash_algorithm=HashAlgorithm.NONE)``.
register_rule(
    VendorRule(
        vendor="criteo",
        identifier_type=IdentifierType.MAID,
        version="1",
        profile=NormalisationProfile(IdentifierType.MAID, HashAlgorithm.SHA256),
        vendor_identifier_type="madid",
        max_ids_per_chunk=_CRITEO_CHUNK,
        api_identifier_types=(("marketing_solutions", "madid"),),
        source=_CRITEO_SRC + "; Marketing Solutions type madid; whether hashed MAIDs match is unverified",
    )
)
# Customer ids: Retail Media's ``CustomerId`` is the retailer's own id, matched against the retailer's
# records, so it is sent as given (trimmed): hashing it would make it unmatchable.
register_rule(
    VendorRule(
        vendor="criteo",
        identifier_type=IdentifierType.CUSTOMER_ID,
        version="1",
        profile=NormalisationProfile(IdentifierType.CUSTOMER_ID, HashAlgorithm.NONE),
        vendor_identifier_type="CustomerId",
        max_ids_per_chunk=_CRITEO_CHUNK,
        api_identifier_types=(("retail_media", "CustomerId"),),
        source=_CRITEO_SRC + "; Retail Media CustomerId is the retailer's own id, sent unhashed",
    )
)
register_rule(
    VendorRule(
        vendor="criteo",
        identifier_type=IdentifierType.SHA256,
        version="1",
        profile=NormalisationProfile(IdentifierType.SHA256, HashAlgorithm.NONE),
        vendor_identifier_type="Email",
        max_ids_per_chunk=_CRITEO_CHUNK,
        api_identifier_types=(("retail_media", "Email"), ("marketing_solutions", "email")),
        source=_CRITEO_SRC + "; pre-hashed SHA-256 e-mails",
    )
)

# --------------------------------------------------------------------------------------------
# Yandex.Audience (management API v1, yandex.ru/dev/audience)
# --------------------------------------------------------------------------------------------
# MD5 uploads are refused since January 2025 -> SHA-256 only.
# A file holds at most 1 GB and at least 100 entries. CRM: CSV with a header row; phone as
# digits with country code and no plus; e-mail lower-case; each cell hashed separately.
# Chunks are files (modify_data addition/subtraction/replace): no per-file count limit,
# only the size limit. We keep 1 MiB of headroom under 1 GB for the multipart envelope.
_YANDEX_MAX_BYTES = 1_000_000_000 - 1_048_576
_YANDEX_SRC = "Yandex.Audience API reference, yandex.ru/dev/audience: files of at most 1 GB and at least 100 entries"
_YANDEX_SHA256 = "each value hashed on its own with SHA-256 (MD5 refused since January 2025)"

register_rule(
    VendorRule(
        vendor="yandex_audience",
        identifier_type=IdentifierType.EMAIL,
        version="1",
        profile=NormalisationProfile(IdentifierType.EMAIL, HashAlgorithm.SHA256),
        vendor_identifier_type="email",
        max_bytes_per_chunk=_YANDEX_MAX_BYTES,
        header="email\n",
        min_entries=100,
        source=_YANDEX_SRC + "; e-mails lower-cased, " + _YANDEX_SHA256,
    )
)
register_rule(
    VendorRule(
        vendor="yandex_audience",
        identifier_type=IdentifierType.PHONE,
        version="2",
        profile=NormalisationProfile(IdentifierType.PHONE, HashAlgorithm.SHA256, PhoneFormat.DIGITS),
        vendor_identifier_type="phone",
        max_bytes_per_chunk=_YANDEX_MAX_BYTES,
        header="phone\n",
        min_entries=100,
        source=_YANDEX_SRC + "; phones as digits with the country code, " + _YANDEX_SHA256,
    )
)
# Device ids: GAID is written lower-case, IDFA upper-case, each id hashed on its own, so
# the case changes the hash. A UUID does not say whether it is an IDFA or a GAID: lists of one
# platform use the ``idfa`` (upper-case) or ``gaid`` (lower-case) rule. The ``maid`` rule keeps
# the lower-case (GAID) form for lists whose platform is unknown. Files of device ids have no
# header (plain list, ``upload_file``); all three are confirmed as ``idfa_gaid``.
for _device_type, _case, _written in (
    (IdentifierType.MAID, "lower", "a device id of unknown platform is written lower-case like a GAID (unverified)"),
    (IdentifierType.IDFA, "upper", "IDFAs written upper-case"),
    (IdentifierType.GAID, "lower", "GAIDs written lower-case"),
):
    register_rule(
        VendorRule(
            vendor="yandex_audience",
            identifier_type=_device_type,
            version="1",
            profile=NormalisationProfile(_device_type, HashAlgorithm.SHA256, maid_case=_case),
            vendor_identifier_type="idfa_gaid",
            max_bytes_per_chunk=_YANDEX_MAX_BYTES,
            min_entries=100,
            source=f"{_YANDEX_SRC}; {_written}, {_YANDEX_SHA256}",
        )
    )
register_rule(
    VendorRule(
        vendor="yandex_audience",
        identifier_type=IdentifierType.SHA256,
        version="1",
        profile=NormalisationProfile(IdentifierType.SHA256, HashAlgorithm.NONE),
        vendor_identifier_type="email",
        max_bytes_per_chunk=_YANDEX_MAX_BYTES,
        header="email\n",
        min_entries=100,
        source=_YANDEX_SRC + "; pre-hashed SHA-256 e-mails",
    )
)
# MAC: bare hex, no separators, case does not matter; hashed over the 6 raw bytes (Yandex's
# MD5 example: AE123456D0A1 -> c5c32c30...; SHA-256 f74c5e09...). Plain file (``upload_file``), confirm
# ``content_type: "mac"``. Upper-case is the form the docs print; since hashing goes over the
# bytes, the case of an unhashed upload is the only place it shows.
register_rule(
    VendorRule(
        vendor="yandex_audience",
        identifier_type=IdentifierType.MAC,
        version="1",
        profile=NormalisationProfile(IdentifierType.MAC, HashAlgorithm.SHA256),
        vendor_identifier_type="mac",
        max_bytes_per_chunk=_YANDEX_MAX_BYTES,
        min_entries=100,
        source=_YANDEX_SRC + "; MACs hashed with SHA-256 over their 6 bytes, not their text",
    )
)
# Metrica ClientIDs go into a plain file (``upload_file``; unverified: the API reference does not
# say which upload path they use, upload_file is the one its plain-list examples use) and are confirmed
# with ``segment/client_id/{id}/confirm`` and the Metrica ``counter_id``. That confirm has no
# ``hashed`` flag: Yandex matches ClientIDs against its own Metrica data as written, so they are
# sent unhashed (they are Metrica's pseudonymous ids, not contact data). Assumption: a ClientID
# is an unsigned 64-bit integer written in decimal (Metrica's Logs API types it UInt64).
register_rule(
    VendorRule(
        vendor="yandex_audience",
        identifier_type=IdentifierType.CLIENT_ID,
        version="1",
        profile=NormalisationProfile(IdentifierType.CLIENT_ID, HashAlgorithm.NONE),
        vendor_identifier_type="client_id",
        max_bytes_per_chunk=_YANDEX_MAX_BYTES,
        min_entries=100,
        source=_YANDEX_SRC
        + "; Metrica ClientIDs sent as written (segment/client_id/{id}/confirm takes no hashed flag); "
        "their upload path and format are unverified",
    )
)
# No Yandex customer_id rule on purpose: every CRM row must carry a phone or an
# e-mail; a file of external ids alone is not a valid CRM upload.

#: Fingerprints of the rules this package registers, by key: a snapshot that records no
#: fingerprint (written before they were recorded) is trusted only for these.
_SHIPPED: dict[str, str] = {rule.key: rule.fingerprint for rule in _RULES.values()}
