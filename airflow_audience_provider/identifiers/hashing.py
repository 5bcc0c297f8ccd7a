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
import zlib
from bisect import bisect_left
from dataclasses import dataclass

from airflow_audience_provider.identifiers.normalise import normalise_batch
from airflow_audience_provider.identifiers.rules import HashAlgorithm, NormalisationProfile

#: The 256 partition keys in their order.
PARTITION_KEYS: tuple[str, ...] = tuple(f"{i:02x}" for i in range(256))

_HASHERS = {HashAlgorithm.SHA256: hashlib.sha256, HashAlgorithm.MD5: hashlib.md5}


def hash_value(normalised: str, algorithm: HashAlgorithm | str) -> str:
    """Hash one normalised value; lower-case hex. ``NONE`` returns the value unchanged.

    Used by the test vectors and by callers that need a single value; the pipeline hashes whole
    batches in :func:`process_batch`.
    """
    algo = HashAlgorithm(algorithm)
    if algo is HashAlgorithm.NONE:
        return normalised
    return _HASHERS[algo](normalised.encode("utf-8")).hexdigest()


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


def process_batch(profile: NormalisationProfile, values: list[str]) -> BatchOutput:
    """Normalise, validate, hash and partition one batch of raw values.

    This is a module-level function of picklable arguments so a process pool can run it.
    """
    normalised, invalid = normalise_batch(profile, values)
    hasher = _HASHERS.get(profile.hash_algorithm)
    outputs: list[str]
    if hasher is not None:
        if normalised and isinstance(normalised[0], bytes):
            outputs = [hasher(v).hexdigest() for v in normalised]  # type: ignore[arg-type]
        else:
            outputs = [hasher(v.encode("utf-8")).hexdigest() for v in normalised]  # type: ignore[union-attr]
    elif normalised and isinstance(normalised[0], bytes):
        outputs = [v.decode("ascii") for v in normalised]  # type: ignore[union-attr]
    else:
        outputs = normalised  # type: ignore[assignment]
    return BatchOutput(len(outputs), partition_outputs(outputs, profile.hashed_output), invalid)


def partition_outputs(outputs: list[str], hashed: bool) -> dict[str, str]:
    """Group outputs by partition key; each group joined with newlines."""
    groups: dict[str, list[str]] = {}
    if hashed:
        # Sorting in C and cutting at key changes is cheaper than a Python-level dict append
        # per value, and it leaves each partition sorted, which the merge stage likes.
        outputs = sorted(outputs)
        start = 0
        n = len(outputs)
        while start < n:
            key = outputs[start][:2]
            # Upper bound of the key's range: the next key sorts after every value of this one.
            end = bisect_left(outputs, key + "\U0010ffff", start, n)
            groups[key] = outputs[start:end]  # type: ignore[assignment]
            start = end
        return {k: "\n".join(v) for k, v in groups.items()}
    crc = zlib.crc32
    keys = PARTITION_KEYS
    for v in outputs:
        k = keys[crc(v.encode("utf-8", "surrogatepass")) & 0xFF]
        groups.setdefault(k, []).append(v)
    return {k: "\n".join(v) for k, v in groups.items()}
