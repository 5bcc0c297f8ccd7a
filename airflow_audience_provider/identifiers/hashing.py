"""Hashing and the per-batch pipeline (normalise, validate, hash, partition).

Hashing happens here, in the task's process: clear-text identifiers leave the process only when a
rule says ``HashAlgorithm.NONE`` (opaque ids, or a task that explicitly asked for clear text).

Outputs are partitioned by a two-character key so that later stages (de-duplication, diff
against the snapshot) work one partition at a time with bounded memory:

* hashed outputs (hex digests, uniformly distributed): the first two hex digits, so the order
  "partition, then value" is plain lexicographic order;
* clear-text outputs: two hex digits of a CRC-32 of the value (clear ids are not uniform; their
  first characters would give a few huge partitions).
"""

from __future__ import annotations

import hashlib
import itertools
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, overload

from airflow_audience_provider.identifiers.kernel import load_email_kernel
from airflow_audience_provider.identifiers.normalise import (
    InvalidIdentifier,
    email_text_unordered,
    normalise_batch,
    normalise_email,
    normaliser_for,
)
from airflow_audience_provider.identifiers.rules import HashAlgorithm, IdentifierType, NormalisationProfile, PhoneFormat

#: The 256 partition keys in their order.
PARTITION_KEYS: tuple[str, ...] = tuple(f"{i:02x}" for i in range(256))

_HASHERS = {HashAlgorithm.SHA256: hashlib.sha256, HashAlgorithm.MD5: hashlib.md5}


def _builtin_hasher(algorithm: HashAlgorithm) -> Callable[[bytes], Any]:
    """The fastest constructor of ``algorithm`` for short inputs, checked against ``hashlib``.

    For an e-mail (one 64-byte block), ``hashlib.sha256`` spends most of its time setting up an
    OpenSSL context (allocations, provider look-ups), not hashing. CPython's own implementation
    (``_sha2`` from 3.12, ``_sha256``/``_md5`` before) needs no setup and is ~20% faster per value
    here; the digests are the same function of the input, which is checked below on known values
    before it is used (and the vectors test it again). ``hashlib``'s constructor is the fallback
    wherever the built-in module is missing or disabled (FIPS builds).
    """
    candidates: list[tuple[str, str]] = {
        HashAlgorithm.SHA256: [("_sha2", "sha256"), ("_sha256", "sha256")],
        HashAlgorithm.MD5: [("_md5", "md5")],
    }.get(algorithm, [])
    reference = _HASHERS[algorithm]
    for module, name in candidates:
        try:
            ctor = getattr(__import__(module), name)
            if all(ctor(v).digest() == reference(v).digest() for v in (b"", b"abc", b"x" * 200)):
                return ctor  # type: ignore[no-any-return]
        except Exception:
            continue
    return reference


_FAST_HASHERS = {algo: _builtin_hasher(algo) for algo in _HASHERS}


def hash_value(normalised: str, algorithm: HashAlgorithm | str, *, raw_bytes: bool = False) -> str:
    """Hash one normalised value; lower-case hex. ``NONE`` returns the value unchanged.

    Used by the test vectors and by callers that need a single value; the pipeline hashes whole
    batches in :func:`process_batch`.

    :param raw_bytes: hash the bytes the hex value spells (a MAC address's 6 bytes), not its text
        (see :attr:`~airflow_audience_provider.identifiers.rules.NormalisationProfile.hashes_raw_bytes`).
    """
    algo = HashAlgorithm(algorithm)
    if algo is HashAlgorithm.NONE:
        return normalised
    data = bytes.fromhex(normalised) if raw_bytes else normalised.encode("utf-8")
    return _HASHERS[algo](data).hexdigest()


def partition_of(value: str, hashed: bool) -> str:
    """Partition key of an output value (see module docstring)."""
    if hashed:
        return value[:2]
    return PARTITION_KEYS[zlib.crc32(value.encode("utf-8", "surrogatepass")) & 0xFF]


def sort_key(value: str, hashed: bool) -> tuple[str, str]:
    """Order of values in runs and snapshots: partition first, then the value."""
    return (partition_of(value, hashed), value)


@dataclass
class BatchOutput:
    """Result of :func:`process_batch` for one batch.

    :param count: number of valid outputs.
    :param partitions: partition key -> the partition's outputs joined with ``"\\n"``. Joined text
        is compact to keep in memory and cheap to send back from a worker process.
    :param invalid: ``(index in the batch, reason)`` for each rejected value.
    """

    count: int
    partitions: dict[str, str]
    invalid: list[tuple[int, str]]
    #: with ``columnar=True`` and the kernel: the outputs as a polars DataFrame (``p``, ``h``,
    #: ordered by ``p``, see :func:`~airflow_audience_provider.identifiers.sorting.hex_frame` and,
    #: for clear text, :func:`~airflow_audience_provider.identifiers.sorting.clear_frame`)
    #: instead of ``partitions``.
    frame: Any = None


def process_batch(profile: NormalisationProfile, values: list[str], *, columnar: bool = False) -> BatchOutput:
    """Normalise, validate, hash and partition one batch of raw values.

    This is a module-level function of picklable arguments so a process pool can run it.
    SHA-256 e-mails go through the compiled kernel when the ``fast`` extra is installed
    (:mod:`~airflow_audience_provider.identifiers.kernel`; same results, about twice as fast).

    :param columnar: hand hex digests or clear-text ids the kernel produced over as ``frame`` (the
        engine's columnar plan); partitions of text otherwise, and always on the Python path.
    """
    if uses_kernel(profile):
        through = _kernel_passes_through(profile)
        out = (
            _process_passthrough_with_kernel(values, profile, columnar=columnar)
            if through
            else _process_with_kernel(values, profile, columnar=columnar)
        )
        if out is not None:
            return out
    if profile.identifier_type is IdentifierType.EMAIL and profile.hash_algorithm in _FAST_HASHERS:
        return process_text(profile, "\n".join(values), len(values), values)
    return _process_values(profile, values)


#: Identifier types the compiled kernel hashes (with SHA-256): e-mails, mobile advertising ids, MACs, phones.
KERNEL_TYPES = frozenset(
    {
        IdentifierType.EMAIL,
        IdentifierType.MAID,
        IdentifierType.IDFA,
        IdentifierType.GAID,
        IdentifierType.MAC,
        IdentifierType.PHONE,
    }
)


#: Identifier types the compiled kernel validates and passes through unhashed: pre-hashed SHA-256
#: values, customer ids and Metrica ClientIDs.
KERNEL_PASSTHROUGH_TYPES = frozenset({IdentifierType.SHA256, IdentifierType.CUSTOMER_ID, IdentifierType.CLIENT_ID})


def _kernel_passes_through(profile: NormalisationProfile) -> bool:
    return profile.identifier_type in KERNEL_PASSTHROUGH_TYPES and profile.hash_algorithm is HashAlgorithm.NONE


def uses_kernel(profile: NormalisationProfile) -> bool:
    """True when :func:`process_batch` runs this profile through the compiled kernel."""
    hashed = profile.identifier_type in KERNEL_TYPES and profile.hash_algorithm is HashAlgorithm.SHA256
    if not (hashed or _kernel_passes_through(profile)):
        return False
    return load_email_kernel() is not None


#: Kernel types whose fast path decides only some written forms of a valid value (phones: the
#: international form); the other rows go to the exact rule, which holds the GIL.
PARTIAL_KERNEL_TYPES = frozenset({IdentifierType.PHONE})
#: Rows of a batch :func:`exact_share` runs through the fast path: an evenly spaced sample.
EXACT_SHARE_SAMPLE = 2048


def exact_share(profile: NormalisationProfile, values: list[str]) -> float:
    """Share of ``values`` (a sample of them) the kernel leaves to the exact rule.

    0.0 for profiles whose kernel decides every valid form or that do not use it; 1.0 when the
    kernel raised on the sample (the batch then runs the pure-Python path).
    """
    if profile.identifier_type.family not in PARTIAL_KERNEL_TYPES or not values or not uses_kernel(profile):
        return 0.0
    kernel = load_email_kernel()
    assert kernel is not None
    sample = values[:: max(1, len(values) // EXACT_SHARE_SAMPLE)]
    digits = profile.phone_format is PhoneFormat.DIGITS
    try:
        out = kernel.run_phone(sample, digits_only=digits, default_region=profile.default_region)
    except Exception:
        return 1.0
    return len(out.refused) / len(sample)


def _process_with_kernel(
    values: list[str], profile: NormalisationProfile | None = None, *, columnar: bool = False
) -> BatchOutput | None:
    """SHA-256 e-mails or MAIDs through the kernel; rows it refuses are decided by the exact rule.

    Returns None when the kernel raised (for instance on a string polars cannot hold, such as a
    lone surrogate): the caller then runs the pure-Python path on the batch.

    :param profile: the profile (default: SHA-256 e-mails).
    """
    kernel = load_email_kernel()
    if kernel is None or not values:
        return None
    kind = profile.identifier_type.family if profile is not None else IdentifierType.EMAIL
    exact = normaliser_for(profile) if profile is not None else normalise_email
    try:
        if kind is IdentifierType.MAID and profile is not None:
            out = kernel.run_maid(values, upper=profile.upper_case_maid)
        elif kind is IdentifierType.MAC:
            out = kernel.run_mac(values)
        elif kind is IdentifierType.PHONE and profile is not None:
            digits = profile.phone_format is PhoneFormat.DIGITS
            out = kernel.run_phone(values, digits_only=digits, default_region=profile.default_region)
        else:
            out = kernel.run(values)
    except Exception:
        return None
    if columnar:
        return _columnar_output(values, out, exact, kind is IdentifierType.MAC)
    text, bounds = out.digests, out.bounds
    step = 65  # 64 hex digits and a newline
    partitions: dict[str, str] = {}
    for key, lo, hi in zip(PARTITION_KEYS, bounds, bounds[1:], strict=False):
        if hi > lo:
            partitions[key] = text[lo * step : hi * step - 1]
    invalid: list[tuple[int, str]] = list(out.invalid)  # rows the kernel decided invalid (phones)
    if out.refused:
        rescued: list[bytes] = []
        for i in out.refused:
            try:
                v = exact(values[i])
                rescued.append(bytes.fromhex(v) if kind is IdentifierType.MAC else v.encode("utf-8"))
            except InvalidIdentifier as exc:
                invalid.append((i, exc.reason))
        for key, more in hash_partition(rescued, HashAlgorithm.SHA256).items():
            partitions[key] = f"{partitions[key]}\n{more}" if key in partitions else more
        if out.invalid:
            invalid.sort()  # both kinds of invalid rows, in row order
    return BatchOutput(len(values) - len(invalid), partitions, invalid)


def _columnar_output(
    values: list[str], out: Any, exact: Callable[[str], str], raw_bytes: bool, hashing: bool = True
) -> BatchOutput:
    """The kernel's frame, with the rows it refused decided by the exact rule (and hashed unless ``hashing`` is off)."""
    from airflow_audience_provider.identifiers.sorting import hex_frame, sort_by_prefix

    frame = out.frame
    invalid: list[tuple[int, str]] = list(getattr(out, "invalid", ()))  # rows the kernel decided invalid (phones)
    rescued: list[str] = []
    for i in out.refused:
        try:
            v = exact(values[i])
        except InvalidIdentifier as exc:
            invalid.append((i, exc.reason))
            continue
        if not hashing:
            rescued.append(v)
            continue
        data = bytes.fromhex(v) if raw_bytes else v.encode("utf-8")
        rescued.append(_FAST_HASHERS[HashAlgorithm.SHA256](data).hexdigest())
    if rescued:
        pl = load_email_kernel().polars  # type: ignore[union-attr]
        frame = pl.concat([frame, hex_frame(pl, rescued)])
    # Ordered here, in the read workers (in parallel with two): a list kept in memory is then
    # planned from each batch's slices, with no sort of the whole list in the plan's thread.
    frame = sort_by_prefix(load_email_kernel().polars, frame)  # type: ignore[union-attr]
    if getattr(out, "invalid", None) and out.refused:
        invalid.sort()  # both kinds of invalid rows, in row order
    return BatchOutput(len(values) - len(invalid), {}, invalid, frame)


def _columnar_clear_output(values: list[str], out: Any, exact: Callable[[str], str]) -> BatchOutput | None:
    """The kernel's clear-text frame, with the rows it refused decided by the exact rule.

    None when a value the exact rule accepted cannot be held by polars (a lone surrogate): the
    caller then runs the pure-Python path on the batch.
    """
    from airflow_audience_provider.identifiers.sorting import clear_frame, sort_by_prefix

    frame = out.frame
    invalid: list[tuple[int, str]] = []
    rescued: list[str] = []
    for i in out.refused:
        try:
            rescued.append(exact(values[i]))
        except InvalidIdentifier as exc:
            invalid.append((i, exc.reason))
    if rescued:
        pl = load_email_kernel().polars  # type: ignore[union-attr]
        try:
            frame = pl.concat([frame, clear_frame(pl, rescued)])
        except UnicodeError:
            return None
    # Grouped by partition here, in the read workers, as digests are (_columnar_output).
    pl = load_email_kernel().polars  # type: ignore[union-attr]
    return BatchOutput(len(values) - len(invalid), {}, invalid, sort_by_prefix(pl, frame))


def kernel_takes_clear_text(profile: NormalisationProfile) -> bool:
    """True when the profile's outputs are clear text (customer ids, ClientIDs) that the compiled kernel decides."""
    return not profile.hashed_output and _kernel_passes_through(profile) and uses_kernel(profile)


def _process_passthrough_with_kernel(
    values: list[str], profile: NormalisationProfile, *, columnar: bool = False
) -> BatchOutput | None:
    """Pre-hashed SHA-256 values, customer ids or ClientIDs through the kernel; rows it refuses are
    decided by the exact rule. None when the kernel raised (the caller runs the Python path).
    """
    kernel = load_email_kernel()
    if kernel is None or not values:
        return None
    kind = profile.identifier_type
    partitions: dict[str, str] = {}
    try:
        if kind is IdentifierType.SHA256:
            hexes = kernel.run_sha256(values)
            if columnar:
                return _columnar_output(values, hexes, normaliser_for(profile), False, hashing=False)
            text, bounds, refused = hexes.digests, hexes.bounds, hexes.refused
            step = 65  # 64 hex digits and a newline
            for key, lo, hi in zip(PARTITION_KEYS, bounds, bounds[1:], strict=False):
                if hi > lo:
                    partitions[key] = text[lo * step : hi * step - 1]
        elif columnar:
            out = kernel.run_clear_frame(values, client_id=kind is IdentifierType.CLIENT_ID)
            return _columnar_clear_output(values, out, normaliser_for(profile))
        else:
            clear = kernel.run_clear(values, client_id=kind is IdentifierType.CLIENT_ID)
            text, offsets, refused = clear.text, clear.offsets, clear.refused
            for key, lo, hi in zip(PARTITION_KEYS, offsets, offsets[1:], strict=False):
                if hi > lo:
                    partitions[key] = text[lo : hi - 1]
    except Exception:
        return None
    invalid: list[tuple[int, str]] = []
    if refused:
        exact = normaliser_for(profile)
        rescued: list[str] = []
        for i in refused:
            try:
                rescued.append(exact(values[i]))
            except InvalidIdentifier as exc:
                invalid.append((i, exc.reason))
        for key, more in partition_outputs(rescued, profile.hashed_output).items():
            partitions[key] = f"{partitions[key]}\n{more}" if key in partitions else more
    return BatchOutput(len(values) - len(invalid), partitions, invalid)


@overload
def process_text(
    profile: NormalisationProfile, text: str, n: int, values: list[str] | None = None, *, strict: Literal[False] = False
) -> BatchOutput: ...


@overload
def process_text(
    profile: NormalisationProfile, text: str, n: int, values: list[str] | None = None, *, strict: bool
) -> BatchOutput | None: ...


def process_text(
    profile: NormalisationProfile, text: str, n: int, values: list[str] | None = None, *, strict: bool = False
) -> BatchOutput | None:
    """:func:`process_batch` of a batch given as its ``n`` values joined by newlines.

    What worker processes receive (one string pickles much faster than a list of them): hashed
    e-mails run on the text directly, other profiles use ``values`` or split the text.

    :param values: the values themselves, if the caller has them (used when the text does not hold
        exactly ``n`` lines because a value contained a newline).
    :param strict: without ``values``, return None instead of raising when the text does not hold
        exactly ``n`` lines.
    """
    algo = profile.hash_algorithm
    if profile.identifier_type is IdentifierType.EMAIL and algo in _FAST_HASHERS:
        fast = email_text_unordered(text, n)
        if fast is not None:
            good, invalid = fast
            return BatchOutput(len(good), hash_partition(good, algo), invalid)
        if values is None:
            if strict:
                return None
            raise ValueError(f"the text does not hold {n} lines")
    if values is None:
        values = text.split("\n") if n else []
        if len(values) != n:
            if strict:
                return None
            raise ValueError(f"the text does not hold {n} lines")
    return _process_values(profile, values)


def _process_values(profile: NormalisationProfile, values: list[str]) -> BatchOutput:
    algo = profile.hash_algorithm
    normalised, invalid = normalise_batch(profile, values)
    outputs: list[str]
    if algo in _FAST_HASHERS:
        if profile.hashes_raw_bytes:  # MAC: the hash goes over the bytes the hex digits spell
            normalised = [bytes.fromhex(v.decode() if isinstance(v, bytes) else v) for v in normalised]
        elif normalised and not isinstance(normalised[0], bytes):
            normalised = [v.encode("utf-8") for v in normalised]  # type: ignore[union-attr]
        return BatchOutput(len(normalised), hash_partition(normalised, algo), invalid)  # type: ignore[arg-type]
    if normalised and isinstance(normalised[0], bytes):
        outputs = [v.decode("ascii") for v in normalised]  # type: ignore[union-attr]
        return BatchOutput(len(outputs), partition_outputs(outputs, profile.hashed_output), invalid)
    return BatchOutput(len(normalised), partition_outputs(normalised, profile.hashed_output), invalid)  # type: ignore[arg-type]


def hash_partition(values: list[bytes], algorithm: HashAlgorithm) -> dict[str, str]:
    """Hash UTF-8 values and group the hex digests by partition key (first two hex digits).

    Whole-batch operations: one ``map`` builds the hash objects and one takes their digests (no
    Python bytecode per value), the first byte of every digest comes from one slice of the joined
    digests, a single loop drops each digest in its partition's list, and the hex text of all
    partitions is produced by one ``bytes.hex`` call with a newline every digest, then cut at the
    partition boundaries. Partitions are not sorted (the plan phase sorts each one anyway).
    """
    if not values:
        return {}
    ctor = _FAST_HASHERS[algorithm]
    digests = list(map(type(ctor(b"")).digest, map(ctor, values)))
    width = len(digests[0])
    buckets: list[list[bytes]] = [[] for _ in range(256)]
    appends = [b.append for b in buckets]
    take = iter(digests).__next__
    for first_byte in b"".join(digests)[::width]:  # the first byte of every digest
        appends[first_byte](take())
    text = b"".join(itertools.chain.from_iterable(buckets)).hex("\n", width)
    step = 2 * width + 1
    out: dict[str, str] = {}
    start = 0
    for key, bucket in zip(PARTITION_KEYS, buckets, strict=True):
        if bucket:
            end = start + step * len(bucket)
            out[key] = text[start : end - 1]
            start = end
    return out


def partition_outputs(outputs: list[str], hashed: bool) -> dict[str, str]:
    """Group outputs by partition key; each group joined with newlines (no order within a group)."""
    groups: dict[str, list[str]] = {}
    if hashed:
        for v in outputs:
            groups.setdefault(v[:2], []).append(v)
        return {k: "\n".join(v) for k, v in groups.items()}
    crc = zlib.crc32
    keys = PARTITION_KEYS
    for v in outputs:
        k = keys[crc(v.encode("utf-8", "surrogatepass")) & 0xFF]
        groups.setdefault(k, []).append(v)
    return {k: "\n".join(v) for k, v in groups.items()}
