"""The optional compiled per-batch step: e-mails, mobile advertising ids and MAC addresses trimmed,
validated and SHA-256 hashed outside Python; pre-hashed SHA-256 values, customer ids and Metrica
ClientIDs trimmed and validated (:meth:`EmailKernel.run_sha256`, :meth:`EmailKernel.run_clear`).

Installed with the ``fast`` extra (``pip install "airflow-audience-provider[fast]"``): `polars`_
runs the column operations (trim, regex, lower-case) and the `polars-hash`_ plugin the SHA-256,
both in Rust and without the GIL. Per value this costs about what a bare
``hashlib.sha256(s.encode()).hexdigest()`` loop costs, where the pure-Python path needs twice
that (``benchmarks/README.md``), and two threads of one process run batches in parallel with no
pickling (:func:`~airflow_audience_provider.identifiers.fanout.iter_processed`).

What the kernel decides is a strict subset of what the exact rule decides, with the same output:

* it trims only ASCII blanks and accepts only values whose trimmed form matches :data:`PATTERN`,
  the same grammar as :func:`~airflow_audience_provider.identifiers.normalise.normalise_email`'s
  (written without possessive quantifiers, which the Rust engine lacks, and with ``A-Z`` because
  it runs before lower-casing) and at most 254 characters long;
* so every accepted value is ASCII, and lower-casing it cannot depend on Unicode tables;
* every other row (about 1% in practice: invalid ones, and valid ones in forms the kernel does
  not cover, such as a no-break space around the address) goes through ``normalise_email``, which
  decides and gives the reason, except plain ASCII rows without an ``@`` (blank cells,
  placeholders), whose reason is decided the same way without raising an exception per row.

Property tests (``tests/identifiers/test_contact_kernel.py``) check kernel == exact on inputs
built for the grammar's edges. The kernel is loaded lazily (importing polars costs ~0.1 s, never
paid at DAG parse time), checked against ``hashlib`` on known values before first use, and
skipped with a warning if that check fails. Set ``AUDIENCE_IDENTIFIERS_KERNEL=python`` to run
the pure-Python path even where polars is installed. polars is imported with a one-thread pool
(see ``_import_polars()``): the read workers parallelise by batch.

.. _polars: https://pola.rs
.. _polars-hash: https://github.com/ion-elgreco/polars-hash
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import re
import sys
import zlib
from dataclasses import dataclass
from typing import Any

from airflow_audience_provider.identifiers.phone_fast import phone_decider

log = logging.getLogger(__name__)

#: Environment variable choosing the per-batch step: ``auto`` (the kernel when installed) or ``python``.
KERNEL_ENV = "AUDIENCE_IDENTIFIERS_KERNEL"

_ATEXT = r"[a-zA-Z0-9!#$%&'*+/=?^_`{|}~-]"
_LABEL = r"[a-zA-Z0-9]+(?:-+[a-zA-Z0-9]+)*"
#: ``normalise._EMAIL_CORE`` for the Rust regex engine, applied to the trimmed value before lower-casing.
PATTERN = rf"^(?:{_ATEXT}+(?:\.{_ATEXT}+)*@{_LABEL}(?:\.{_LABEL})+)$"
#: The blanks the kernel trims: ASCII only (``str.strip`` trims more; such rows take the exact path).
ASCII_BLANKS = " \t\n\r\x0b\x0c"
_MAX_EMAIL = 254
#: A mobile advertising id in its hyphenated UUID form, either case (``normalise._UUID_CORE``).
UUID_PATTERN = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
_ZERO_UUID = "00000000-0000-0000-0000-000000000000"
#: What ``normalise_mac`` removes (``normalise._MAC_SEPARATORS``), and the characters a MAC the kernel takes may hold.
MAC_SEPARATORS = r"[:\-. ]"
MAC_CHARS = r"^[0-9A-Fa-f:\-. ]+$"
_MAC_RESERVED = ("000000000000", "FFFFFFFFFFFF")
_MAC_RESERVED_BYTES = [bytes(6), b"\xff" * 6]
#: ``str.translate`` table deleting the separators ``normalise_mac`` removes.
_MAC_DELETE = str.maketrans("", "", ":-. ")
#: A pre-hashed SHA-256 value in either case (``normalise._SHA256_RE`` after lower-casing).
SHA256_PATTERN = r"^[0-9a-fA-F]{64}$"
#: A ClientID ``normalise_client_id`` returns unchanged: no leading zero, at most 19 digits (below 2**64).
CLIENT_ID_PATTERN = r"^[1-9][0-9]{0,18}$"
#: What ``normalise_opaque`` refuses inside a trimmed value (``normalise._CONTROL_RE``).
OPAQUE_CONTROL = r"[\x00-\x1f\x7f]"
#: The blanks ``str.strip`` removes besides ASCII ones and controls; a value the kernel's ASCII trim
#: leaves starting or ending with one is left to the exact rule.
OTHER_BLANKS = "\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
_MAX_OPAQUE = 512
#: Hex digits of a digest's prefix, the order of the kernel's outputs and of the columnar plan: 48 bits, an Int64.
#: A slice of at most 12 bytes is held inside polars' string view, so reading it back touches no
#: other memory: 15 digits cost ~50 ns per value to cut and parse, 12 cost ~34.
PREFIX_DIGITS = 12


#: Printable ASCII and the ASCII blanks: a value made of these only is trimmed alike by the kernel and
#: ``str.strip`` (which also trims ``\x1c``-``\x1f`` and non-ASCII blanks, left out here).
_PLAIN_ASCII = re.compile(r"[\x20-\x7e\t\n\r\x0b\x0c]*")


def _email_reasons(values: list[str], refused: list[int]) -> tuple[list[int], list[tuple[int, str]]]:
    """Of the rows the e-mail kernel refused, those without an ``@`` in plain ASCII (most invalid
    e-mails: blank cells, placeholders, names) decided here with ``normalise_email``'s reason
    (``empty``, ``email_too_long``, ``email_no_at``, in its order of checks), at a tenth of the
    cost of raising and catching its exception; the rest stay refused (left to the exact rule).
    """
    left: list[int] = []
    invalid: list[tuple[int, str]] = []
    for i in refused:
        raw = values[i]
        if "@" in raw or not _PLAIN_ASCII.fullmatch(raw):
            left.append(i)
            continue
        n = len(raw.strip(ASCII_BLANKS))
        invalid.append((i, "empty" if not n else "email_too_long" if n > _MAX_EMAIL else "email_no_at"))
    return left, invalid


class KernelOutput:
    """One batch through the kernel.

    :param digests: the accepted values' SHA-256 hex digests, ordered by their first 15 hex digits
        (so grouped by partition, in partition order), joined with ``"\\n"``; None to have them
        ordered and joined from ``frame`` on first use.
    :param bounds: 257 offsets (in digests) of the 256 hash-prefix partitions: partition ``k`` is
        digests ``bounds[k]`` to ``bounds[k + 1]``; None to have them computed with ``digests``.
    :param refused: indices (in the batch) of the rows left to the exact rule.
    :param invalid: rows the kernel decided invalid, as ``(index, reason)`` in index order, with the
        exact rule's reason (phones, and e-mails without an ``@``; other kernels leave every invalid
        row to the exact rule).
    :param frame: the same digests as a polars DataFrame in no particular order: ``p`` (their first
        15 hex digits, an Int64) and ``h`` (the digest); what the plan phase's columnar path takes
        (it sorts by ``p`` where it needs to, so the kernel does not).
    :param keys: the 256 partition keys as a polars Series (to compute ``bounds`` from ``frame``).
    """

    def __init__(
        self,
        digests: str | None,
        bounds: list[int] | None,
        refused: list[int],
        invalid: list[tuple[int, str]] | None = None,
        frame: Any = None,
        *,
        keys: Any = None,
    ) -> None:
        self._digests = digests
        self._bounds = bounds
        self.refused = refused
        self.invalid = invalid if invalid is not None else []
        self.frame = frame
        self._keys = keys

    @property
    def digests(self) -> str:
        """The digests as one text, ordered (computed on first use: the columnar path never needs it)."""
        if self._digests is None:
            self._order()
        assert self._digests is not None
        return self._digests

    @property
    def bounds(self) -> list[int]:
        """The partitions' offsets in :attr:`digests` (computed on first use)."""
        if self._bounds is None:
            self._order()
        assert self._bounds is not None
        return self._bounds

    def _order(self) -> None:
        # Ordered by the first 48 bits (PREFIX_DIGITS hex digits, an Int64): partition "3f" starts at the first
        # digest >= "3f" (a binary search only compares prefixes here), and each partition reaches
        # the Python plan as a run that is sorted but for ties of 48 bits, which the plan's exact
        # sort then merges in a few comparisons per value. Sorting on an integer costs half of
        # sorting the strings, and it runs here, in the read workers, in parallel.
        self.frame = self.frame.sort("p", multithreaded=False)
        h = self.frame.get_column("h")
        bounds: list[int] = h.search_sorted(self._keys, "left").to_list()
        bounds.append(len(h))
        self._bounds = bounds
        self._digests = h.str.join("\n").item() if len(h) else ""


@dataclass(frozen=True)
class ClearOutput:
    """One batch of clear-text ids (customer ids, ClientIDs) through the kernel.

    :param text: the accepted values, grouped by partition (CRC-32 of the value, as
        :func:`~airflow_audience_provider.identifiers.hashing.partition_of`) and sorted within each,
        joined with ``"\\n"``.
    :param offsets: 257 character offsets into ``text``: partition ``k`` is ``text[offsets[k]:offsets[k + 1] - 1]``.
    :param refused: indices (in the batch) of the rows the kernel did not accept.
    """

    text: str
    offsets: list[int]
    refused: list[int]


class EmailKernel:
    """Trim, validate, lower-case and SHA-256 a batch of e-mails with polars (see module docstring)."""

    def __init__(self, pl: Any, plh: Any) -> None:
        self._pl = pl
        self._plh = plh
        self._keys = pl.Series([f"{i:02x}" for i in range(256)])
        self._partition_numbers = pl.Series(range(256), dtype=pl.UInt32)

    @property
    def polars(self) -> Any:
        """The polars module the kernel runs on (the plan phase's columnar de-duplication uses it too)."""
        return self._pl

    def run(self, values: list[str]) -> KernelOutput:
        """Process one batch of e-mails. Raises whatever polars raises (the caller falls back to Python)."""
        pl = self._pl
        frame = pl.DataFrame({"v": pl.Series(values, dtype=pl.String)}).select(
            pl.col("v").str.strip_chars(ASCII_BLANKS)
        )
        frame = frame.with_columns(ok=pl.col("v").str.contains(PATTERN) & (pl.col("v").str.len_bytes() <= _MAX_EMAIL))
        out = self._hash_accepted(frame, upper=False)
        out.refused, out.invalid = _email_reasons(values, out.refused)
        return out

    def run_maid(self, values: list[str], *, upper: bool) -> KernelOutput:
        """Process one batch of mobile advertising ids written as hyphenated UUIDs (either case).

        Accepts what :func:`~airflow_audience_provider.identifiers.normalise.normalise_maid` accepts
        in that form (after trimming ASCII blanks), except the all-zero id; every other row (the
        32-digit form, other blanks, anything invalid) is left to the exact rule.
        """
        pl = self._pl
        frame = pl.DataFrame({"v": pl.Series(values, dtype=pl.String)}).select(
            pl.col("v").str.strip_chars(ASCII_BLANKS)
        )
        frame = frame.with_columns(
            # the zero id has no letters, so comparing without lower-casing is case-blind
            ok=pl.col("v").str.contains(UUID_PATTERN) & (pl.col("v") != _ZERO_UUID)
        )
        return self._hash_accepted(frame, upper=upper)

    def run_mac(self, values: list[str]) -> KernelOutput:
        """Process one batch of MAC addresses: SHA-256 over the 6 bytes the 12 hex digits spell.

        Accepts values made only of hex digits and the separators ``normalise_mac`` removes (a
        space is one, so blanks around are too), holding 12 hex digits, and not a reserved address;
        every other row is left to the exact rule.
        """
        pl = self._pl
        joined = "\n".join(values)
        if joined.count("\n") == len(values) - 1:
            # One C pass over the batch removes the separators (a polars regex replace costs ~200
            # ns per value); polars splits the text into the digits column, one row per value.
            digits = pl.Series([joined.translate(_MAC_DELETE)], dtype=pl.String).str.split("\n").explode()
            # One expression per call: polars runs several of one call on its thread pool (one
            # thread, shared by the read workers), a single one in the calling thread.
            # 12 hex digits in either case decode to 6 bytes; anything else to fewer, or to null
            raw = digits.str.decode("hex", strict=False)
            ok = (raw.bin.size() == 6) & ~raw.is_in(_MAC_RESERVED_BYTES)
            frame = pl.DataFrame({"raw": raw, "ok": ok.fill_null(False)})
            return self._hash_accepted(frame, column=pl.col("raw"))
        # A value holds a newline, so lines are not rows: the same decision column by column.
        frame = pl.DataFrame({"v": pl.Series(values, dtype=pl.String)}).select(
            pl.col("v").str.strip_chars(ASCII_BLANKS)
        )
        frame = frame.with_columns(digits=pl.col("v").str.replace_all(MAC_SEPARATORS, "").str.to_uppercase())
        frame = frame.with_columns(
            ok=pl.col("v").str.contains(MAC_CHARS)
            & pl.col("digits").str.contains(r"^[0-9A-F]{12}$")
            & ~pl.col("digits").is_in(list(_MAC_RESERVED))
        )
        return self._hash_accepted(frame, column=pl.col("digits").str.decode("hex"))

    def run_phone(self, values: list[str], *, digits_only: bool, default_region: str | None) -> KernelOutput:
        """Process one batch of phone numbers: those in international form, valid or not, are decided
        here (:mod:`~airflow_audience_provider.identifiers.phone_fast`); every other row is left to the exact rule."""
        pl, plh = self._pl, self._plh
        decision = phone_decider(pl).decide(values, digits_only=digits_only, default_region=default_region)
        # one chunk: over several, polars hashes chunk by chunk on its thread pool, shared by the read workers
        numbers = decision.numbers.rechunk()
        digests = pl.DataFrame([numbers]).select(plh.col("v").chash.sha2_256()).to_series()
        return self._output(None, digests, refused=decision.refused, invalid=decision.invalid)

    def run_sha256(self, values: list[str]) -> KernelOutput:
        """Process one batch of pre-hashed SHA-256 values: validated and lower-cased, not hashed again.

        Accepts 64 hex digits in either case after trimming ASCII blanks, what
        :func:`~airflow_audience_provider.identifiers.normalise.normalise_sha256` accepts in that
        form; every other row is left to the exact rule.
        """
        pl = self._pl
        frame = pl.DataFrame({"v": pl.Series(values, dtype=pl.String)}).select(
            pl.col("v").str.strip_chars(ASCII_BLANKS)
        )
        frame = frame.with_columns(ok=pl.col("v").str.contains(SHA256_PATTERN))
        digests = frame.filter(pl.col("ok")).select(pl.col("v").str.to_lowercase()).to_series()
        return self._output(frame, digests)

    def run_clear(self, values: list[str], *, client_id: bool) -> ClearOutput:
        """Process one batch of clear-text ids: customer ids (``client_id=False``) or Metrica ClientIDs.

        Customer ids: accepts a value that, after trimming ASCII blanks, is 1 to 512 characters
        long, holds no control character and neither starts nor ends with another blank, i.e. one
        :func:`~airflow_audience_provider.identifiers.normalise.normalise_opaque` returns as the
        kernel trimmed it. ClientIDs: accepts :data:`CLIENT_ID_PATTERN` after trimming ASCII
        blanks, i.e. a value :func:`~airflow_audience_provider.identifiers.normalise.normalise_client_id`
        returns unchanged. Every other row is left to the exact rule.

        Partitions are the CRC-32 of the value's UTF-8 bytes (the partition function of clear-text
        outputs, in the snapshot order too), taken in polars
        (:func:`~airflow_audience_provider.identifiers.sorting.crc32_low_bytes`), as are grouping,
        sorting and joining.
        """
        pl = self._pl
        accepted, refused = self._clear_accepted(values, client_id=client_id)
        # Sorted here, in the read workers: each partition reaches the plan phase as a sorted run,
        # which its exact sort then takes in one pass (a stable sort by partition keeps the order).
        accepted = accepted.sort()
        if not len(accepted):
            return ClearOutput("", [0] * 257, refused)
        from airflow_audience_provider.identifiers.sorting import crc32_low_bytes

        keys = crc32_low_bytes(pl, accepted).cast(pl.UInt32)
        ordered = pl.DataFrame({"k": keys, "v": accepted}).sort("k", maintain_order=True)
        bounds = ordered.get_column("k").search_sorted(self._partition_numbers, "left")
        ends = (ordered.get_column("v").str.len_chars().cast(pl.Int64) + 1).cum_sum()
        starts = pl.concat([pl.Series([0], dtype=pl.Int64), ends])
        offsets = starts.gather(bounds).to_list()
        offsets.append(starts[-1])
        return ClearOutput(ordered.get_column("v").str.join("\n").item(), offsets, refused)

    def run_clear_frame(self, values: list[str], *, client_id: bool) -> KernelOutput:
        """:meth:`run_clear` for the columnar plan: the accepted values as a frame in no particular order.

        The frame has the columns of the digests' frames: ``h`` the value and ``p`` its partition
        number (the low byte of its CRC-32) shifted to where a digest's prefix holds its first two
        hex digits, so :class:`~airflow_audience_provider.identifiers.sorting.ColumnarSpill` groups
        both alike. Nothing is sorted here: the plan sorts each block once.
        """
        from airflow_audience_provider.identifiers.sorting import clear_frame

        accepted, refused = self._clear_accepted(values, client_id=client_id)
        return KernelOutput(None, None, refused, None, clear_frame(self._pl, accepted), keys=self._keys)

    def _clear_accepted(self, values: list[str], *, client_id: bool) -> tuple[Any, list[int]]:
        """The values :meth:`run_clear` accepts, trimmed (a String Series), and the indices of the others."""
        pl = self._pl
        frame = pl.DataFrame({"v": pl.Series(values, dtype=pl.String)}).select(
            pl.col("v").str.strip_chars(ASCII_BLANKS)
        )
        v = pl.col("v")
        if client_id:
            ok = v.str.contains(CLIENT_ID_PATTERN)
        else:
            length = v.str.len_chars()
            refuse = f"{OPAQUE_CONTROL}|^[{OTHER_BLANKS}]|[{OTHER_BLANKS}]$"
            ok = (length > 0) & (length <= _MAX_OPAQUE) & ~v.str.contains(refuse)
        frame = frame.with_columns(ok=ok)
        refused = frame.select(pl.arg_where(~pl.col("ok"))).to_series().to_list()
        return frame.filter(pl.col("ok")).to_series(), refused

    def _hash_accepted(self, frame: Any, *, upper: bool = False, column: Any = None) -> KernelOutput:
        pl, plh = self._pl, self._plh
        accepted = frame.filter(pl.col("ok"))
        if column is None:
            cased = plh.col("v").str.to_uppercase() if upper else plh.col("v").str.to_lowercase()
        else:
            accepted = accepted.select(column.alias("v"))
            cased = plh.col("v")
        digests = accepted.select(cased.chash.sha2_256().alias("h")).to_series()
        return self._output(frame, digests)

    def _output(
        self,
        frame: Any,
        digests: Any,
        *,
        refused: list[int] | None = None,
        invalid: list[tuple[int, str]] | None = None,
    ) -> KernelOutput:
        """The accepted rows' digests with their prefixes, and the refused rows of ``frame`` (or ``refused``)."""
        pl = self._pl
        # The prefix only: ordering the batch is left to whoever needs it (KernelOutput._order for
        # the Python plan; the columnar spill sorts all buffered batches at once anyway).
        prefix = digests.str.slice(0, PREFIX_DIGITS).str.to_integer(base=16)
        if refused is None:
            refused = frame.select(pl.arg_where(~pl.col("ok"))).to_series().to_list()
        unordered = pl.DataFrame([prefix.alias("p"), digests.alias("h")])
        return KernelOutput(None, None, refused, invalid or [], unordered, keys=self._keys)


#: polars reads its thread-pool size from this variable when the pool starts.
POLARS_THREADS_ENV = "POLARS_MAX_THREADS"


def _import_polars() -> tuple[Any, Any]:
    """Import polars with a one-thread pool, unless the task already imported it or chose a size.

    The kernel makes one polars call per batch in each read worker (``read_workers`` threads);
    polars' own intra-operation threads then only compete with those on the short columns of a
    batch. Measured with ``make bench`` on the 2-CPU VM: one worker 0.66 -> 0.74 of the bare
    hashlib loop, two workers 1.04 -> 1.25. The variable is set only while polars starts its pool
    and removed again, so child processes and other code see the environment unchanged; a task
    that imported polars first, or set ``POLARS_MAX_THREADS`` itself, keeps its own pool.
    """
    set_here = "polars" not in sys.modules and POLARS_THREADS_ENV not in os.environ
    if set_here:
        os.environ[POLARS_THREADS_ENV] = "1"
    try:
        import polars as pl
        import polars_hash as plh

        pl.thread_pool_size()  # the pool is sized now, while the variable is set
    finally:
        if set_here:
            os.environ.pop(POLARS_THREADS_ENV, None)
    return pl, plh


_SELF_TEST = [" Mail@Yandex.RU ", "a.b-c+d@sub.example.org", "not an e-mail", "x@y"]
_SELF_TEST_MAID = [
    " 6d92078a-8246-4ba4-ae5b-76104861e7dc ",
    "ABCDEF01-2345-6789-ABCD-EF0123456789",
    "00000000-0000-0000-0000-000000000000",
    "not-a-uuid",
]


def _self_test_passthrough(kernel: EmailKernel) -> bool:
    """The unhashed outputs (pre-hashed values, customer ids, ClientIDs) on known values."""
    digest = hashlib.sha256(b"x").hexdigest()
    hexes = kernel.run_sha256([f" {digest.upper()}", "ab"])
    ids = kernel.run_clear(["b", " a\t", "", "c\x00"], client_id=False)
    want = sorted(["a", "b"], key=lambda v: (zlib.crc32(v.encode()) & 0xFF, v))
    client = kernel.run_clear(["18446744073709551615", "0", "7"], client_id=True)
    frame = kernel.run_clear_frame(["b", " a\t", "", "c\x00"], client_id=False)
    rows = sorted(zip(frame.frame.get_column("h").to_list(), frame.frame.get_column("p").to_list(), strict=True))
    return (
        rows == [(v, (zlib.crc32(v.encode()) & 0xFF) << (4 * PREFIX_DIGITS - 8)) for v in ("a", "b")]
        and frame.refused == [2, 3]
        and hexes.digests == digest
        and hexes.refused == [1]
        and ids.text.split("\n") == want
        and ids.refused == [2, 3]
        and ids.offsets[-1] == 4
        and client.refused == [0, 1]
        and client.text == "7"
    )


@functools.cache
def load_email_kernel() -> EmailKernel | None:
    """The kernel, or None when the ``fast`` extra is missing, disabled, or fails its self-test."""
    choice = os.environ.get(KERNEL_ENV, "auto").strip().lower()
    if choice == "python":
        return None
    try:
        pl, plh = _import_polars()
    except ImportError:
        if choice == "polars":
            log.warning("%s=polars, but polars and polars-hash are not installed: using Python", KERNEL_ENV)
        return None
    kernel = EmailKernel(pl, plh)
    try:
        out = kernel.run(_SELF_TEST)
        expected = sorted(hashlib.sha256(v.strip().lower().encode()).hexdigest() for v in _SELF_TEST[:2])
        ok = out.digests.split("\n") == expected and out.refused == [3] and out.bounds[-1] == 2
        ok = ok and out.invalid == [(2, "email_no_at")]
        maid = kernel.run_maid(_SELF_TEST_MAID, upper=True)
        want = sorted(hashlib.sha256(v.strip().upper().encode()).hexdigest() for v in _SELF_TEST_MAID[:2])
        ok = ok and maid.digests.split("\n") == want and maid.refused == [2, 3]
        mac = kernel.run_mac(["ae:12:34:56:d0:a1", " AE-12-34-56-D0-A2", "ff:ff:ff:ff:ff:ff", "zz"])
        want = sorted(hashlib.sha256(bytes.fromhex(v)).hexdigest() for v in ("AE123456D0A1", "AE123456D0A2"))
        ok = ok and mac.digests.split("\n") == want and mac.refused == [2, 3]
        ok = ok and _self_test_passthrough(kernel)
    except Exception as exc:  # a broken or incompatible install must not break uploads
        log.warning("The polars e-mail kernel failed its self-test (%s); using the Python path", exc)
        return None
    if not ok:
        log.warning("The polars e-mail kernel gave unexpected digests in its self-test; using the Python path")
        return None
    return kernel
