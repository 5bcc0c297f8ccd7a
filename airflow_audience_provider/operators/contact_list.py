"""One upload path for contact lists: every vendor's upload operator is a :class:`ContactListUploadOperator`.

The base owns what every upload shares: the rule lookup, the modes (``add``, ``remove``,
``replace``, ``sync``), the engine's options, the call into the contact-list engine
(:mod:`airflow_audience_provider.identifiers`), the error mapping, the result and its XCom,
``plan_only``, the destination lease, where snapshots live, the self-check against the vendor's
own count (``drift``) and ``on_kill``. A vendor subclass supplies only its destination (find the
remote list, its key), its chunk sender and the vendor fields of its result; the vendor rule in
:mod:`airflow_audience_provider.identifiers.rules` is the only source of the API's identifier-type
name and of the chunk limit.

Snapshots live by default under ``$AIRFLOW_HOME/audience_snapshots`` (``[audience]
snapshot_base_path`` overrides it), which is local to the host running the task. With a
distributed executor (Celery, Kubernetes, Edge...) put them on shared storage
(``snapshot_base="s3://bucket/audience_snapshots"`` or any ``ObjectStoragePath``).
"""

from __future__ import annotations

import logging
import math
import threading
import warnings
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, ClassVar

from airflow.providers.common.compat.sdk import conf  # airflow.sdk.conf exists from 3.2 only

from airflow_audience_provider.core.errors import (
    AudienceConfigurationError,
    AudienceConflictError,
    AudienceError,
    AudienceValidationError,
)
from airflow_audience_provider.core.events import upload_counts
from airflow_audience_provider.operators.base import AudienceBaseOperator, HookT

if TYPE_CHECKING:
    from airflow.sdk import Context

    from airflow_audience_provider.identifiers import ChunkSender, VendorRule

log = logging.getLogger(__name__)

#: The one vocabulary of upload modes.
MODES = ("add", "remove", "replace", "sync")
#: Executors that run every task on the scheduler's host; any other executor is treated as distributed.
LOCAL_EXECUTORS = frozenset({"LocalExecutor", "SequentialExecutor", "DebugExecutor"})
#: Default relative tolerance of the vendor-count self-check (see :meth:`ContactListUploadOperator.check_drift`).
DEFAULT_DRIFT_TOLERANCE = 0.01
DRIFT_ACTIONS = ("warn", "fail")


class UnknownIdentifierTypeError(AudienceConfigurationError, AudienceValidationError):
    """``identifier_type`` names a kind the vendor's rules do not cover (a task-argument error)."""


def executor_names() -> list[str]:
    """The configured executors (``[core] executor`` may list several, comma-separated)."""
    raw = conf.get("core", "executor", fallback="LocalExecutor") or "LocalExecutor"
    names = []
    for part in str(raw).split(","):
        # "alias:module.Class" or "module.Class" or "CeleryExecutor"
        name = part.strip().rsplit(":", 1)[-1].rsplit(".", 1)[-1]
        if name:
            names.append(name)
    return names or ["LocalExecutor"]


def snapshot_base_is_shared(base: Any) -> bool:
    """True when ``base`` (None = the configured default) is object storage rather than a host-local path."""
    # the contact-list engine: not at DAG parse
    from airflow_audience_provider.identifiers.snapshot import _is_remote, default_snapshot_base

    return _is_remote(base if base not in (None, "") else default_snapshot_base())


def upload_asset_extra(operator: ContactListUploadOperator, result: dict[str, Any]) -> dict[str, Any]:
    """The fields of the Asset event an upload records (the audience event shape of
    :mod:`airflow_audience_provider.core.events`): the one place an upload builds them."""
    fields = upload_counts(result.get("counts") or {}, mode=result.get("mode"))
    drift = result.get("drift")
    if isinstance(drift, dict) and (drift.get("checked") == "after" or result.get("engine_mode") == "noop"):
        fields["vendor_size"] = drift.get("vendor")  # of the same list as snapshot_size
    fields.update(mode=result.get("mode"), link=result.get("url"))
    fields.update(operator.asset_extra_fields(result))
    return fields


def native_source(value: Any) -> Any:
    """An upstream dict or list rendered into a template string (``"{'path': ...}"``) back as the value."""
    if isinstance(value, str) and value.strip()[:1] in ("{", "["):
        import ast

        try:
            return ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            return value
    return value


class ContactListUploadOperator(AudienceBaseOperator[HookT]):
    """Base of the contact-list upload operators (one upload path for every vendor).

    Subclasses set :attr:`vendor` and implement :meth:`destination_key`, :meth:`prepare`,
    :meth:`make_sender`, :meth:`describe_destination` and :meth:`vendor_result`.

    Snapshots live by default under ``$AIRFLOW_HOME/audience_snapshots`` on the host that runs
    the task; in production set ``snapshot_base`` to shared storage (an ``ObjectStoragePath`` URL
    such as ``s3://bucket/audience_snapshots``) so every worker sees the same state and lease.

    :param source: the contact list: a path or URL, an upstream XCom value (path or
        ``{"path", "format", "column"}``), or an iterable of values (templated).
    :param identifier_type: the kind of identifiers (``email``, ``phone``...; the vendor's rules list them).
    :param mode: ``sync`` (default, incremental against the snapshot), ``replace``, ``add`` or ``remove``.
    :param source_options: ``format``, ``column``, ``encoding``, ``delimiter``, ``has_header`` (templated).
    :param snapshot_base: where snapshots (and the destination's lease) are kept; default
        ``$AIRFLOW_HOME/audience_snapshots`` (host-local) (templated).
    :param require_shared_state: refuse to run when ``snapshot_base`` is host-local and the executor is
        distributed (otherwise that is only warned about).
    :param read_workers: parallel workers that normalise and hash the list.
    :param max_identifiers_per_request: fewer identifiers per request or file than the vendor's limit.
    :param max_invalid_share: fail before sending when more rows than this share are invalid.
    :param max_removal_share: fail before sending when the run would remove more of the list.
    :param allow_mass_removal: turn the removal guard off.
    :param allow_empty: an input without valid identifiers empties the list (``sync``/``replace``).
    :param allow_below_minimum: send a list under the vendor's minimum.
    :param plan_only: a dry run: read, count, diff and check; send nothing, write no snapshot.
    :param full_refresh_every: force a full replace when the last one is older than this.
    :param drift_tolerance: relative difference between the vendor's count and ours that is not drift.
    :param on_drift: ``warn`` (default) or ``fail`` when the vendor's count drifts from ours.
    :param lease_timeout: seconds to wait for another run's lease on the destination.
    :param lease_poll_interval: seconds between attempts to take the lease.
    :param deferrable: wait for a lease in the triggerer, without a worker slot.
    """

    #: vendor key of the rules (``get_rule(vendor, identifier_type)``) and of errors.
    vendor: ClassVar[str]
    #: the vendor's name in messages.
    vendor_label: ClassVar[str]
    #: deprecated mode names still accepted -> the mode they mean.
    mode_aliases: ClassVar[dict[str, str]] = {}
    template_fields_renderers = {"source_options": "json"}
    #: an upload that sent data records an Asset event of its list.
    emits_assets = True

    def __init__(
        self,
        *,
        source: Any,
        identifier_type: str = "email",
        mode: str = "sync",
        source_options: dict[str, Any] | None = None,
        snapshot_base: Any = None,
        require_shared_state: bool = False,
        read_workers: int = 1,
        max_identifiers_per_request: int | None = None,
        max_invalid_share: float = 0.1,
        max_removal_share: float = 0.2,
        allow_mass_removal: bool = False,
        allow_empty: bool = False,
        allow_below_minimum: bool = False,
        plan_only: bool = False,
        full_refresh_every: timedelta | float | None = None,
        drift_tolerance: float = DEFAULT_DRIFT_TOLERANCE,
        on_drift: str = "warn",
        lease_timeout: float = 60 * 60,
        lease_poll_interval: float = 30,
        deferrable: bool = conf.getboolean("operators", "default_deferrable", fallback=False),
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if on_drift not in DRIFT_ACTIONS:
            raise ValueError(f"on_drift must be one of {DRIFT_ACTIONS}, got {on_drift!r}")
        if not 0.0 <= float(drift_tolerance) <= 1.0:
            raise ValueError(f"drift_tolerance must be between 0 and 1, got {drift_tolerance!r}")
        self.source = source
        self.identifier_type = identifier_type
        self.mode = mode if "{{" in str(mode) else self.canonical_mode(mode)
        self.source_options = source_options
        self.snapshot_base = snapshot_base
        self.require_shared_state = require_shared_state
        self.read_workers = read_workers
        self.max_identifiers_per_request = max_identifiers_per_request
        if max_identifiers_per_request is not None and "{{" not in str(identifier_type):
            self.chunk_limit(self.lookup_rule())
        self.max_invalid_share = max_invalid_share
        self.max_removal_share = max_removal_share
        self.allow_mass_removal = allow_mass_removal
        self.allow_empty = allow_empty
        self.allow_below_minimum = allow_below_minimum
        self.plan_only = plan_only
        self.full_refresh_every = full_refresh_every
        self.drift_tolerance = float(drift_tolerance)
        self.on_drift = on_drift
        self.lease_timeout = lease_timeout
        self.lease_poll_interval = lease_poll_interval
        self.deferrable = deferrable

    # -- what a vendor supplies --------------------------------------------------------------

    def destination_key(self, hook: Any) -> str:
        """The destination's key: names its snapshot, journal and lease."""
        raise NotImplementedError

    def describe_destination(self) -> str:
        """The destination in messages, e.g. ``Criteo segment 730011223344``."""
        raise NotImplementedError

    def prepare(self, context: Context, hook: Any, rule: VendorRule) -> None:
        """Find the remote list and check it can take this rule's identifiers (before anything is read)."""

    def make_sender(self, context: Context, hook: Any, rule: VendorRule, cancel: threading.Event) -> ChunkSender:
        """The vendor's :class:`~airflow_audience_provider.identifiers.sync.ChunkSender` for this destination."""
        raise NotImplementedError

    def force_full_replace(self) -> bool:
        """True when the remote list does not exist yet and this run creates it (e.g. a new segment).

        Then a snapshot under this destination's key describes a list that is gone: a ``sync`` is a full
        replace, an ``add`` makes the new list the input, and the removal guard does not count the old list
        (:attr:`~airflow_audience_provider.identifiers.sync.SyncOptions.new_list`).
        """
        return False

    def remote_id(self) -> str | None:
        """The vendor's id of the list found by :meth:`prepare`, when :meth:`destination_key` is not that id.

        A key the user can reuse (a segment name) may name another list after a delete and a create:
        the snapshot records this id and is not diffed against when it records another one, or none.
        None (default): the key is the vendor's id itself, nothing to check.
        """
        return None

    def vendor_count(self, hook: Any, when: str, recorded: dict[str, Any] | None) -> tuple[int | None, str] | None:
        """The vendor's own count of identifiers in the list, and what it is (for the drift check).

        :param when: ``before`` sending (the state the last run recorded) or ``after`` this run's sending.
        :param recorded: the header of the recorded state (``count``, ``written_at``), when there is one.
        :returns: ``(count, description)``, or None when the vendor gives no count that is settled now
            (e.g. it has not processed the last change yet).
        """
        return None

    def vendor_result(
        self, context: Context, hook: Any, rule: VendorRule, engine: dict[str, Any], status: str
    ) -> dict[str, Any]:
        """The vendor's fields of the result (ids, links, vendor counts)."""
        return {}

    def asset_extra_fields(self, result: dict[str, Any]) -> dict[str, Any]:
        """The vendor's fields of the Asset event (``object_name``, ``state``, ``action``)."""
        return {"action": "synced"}

    def describe_applied(self) -> str:
        """What the vendor applied before a failure, for the failure's message ("" when the counts say it)."""
        return ""

    # -- modes, rules, options ---------------------------------------------------------------

    def canonical_mode(self, mode: str) -> str:
        """The mode in the one vocabulary; old names warn and are mapped; unknown names raise ValueError."""
        text = str(mode).strip().lower()
        if text in MODES:
            return text
        if text in self.mode_aliases:
            new = self.mode_aliases[text]
            from airflow.exceptions import AirflowProviderDeprecationWarning

            warnings.warn(
                f"mode={text!r} is deprecated; use mode={new!r} (the modes of every upload operator are "
                f"{', '.join(MODES)})",
                AirflowProviderDeprecationWarning,
                stacklevel=3,
            )
            return new
        accepted = ", ".join((*MODES, *self.mode_aliases))
        raise ValueError(f"mode must be one of {accepted}, got {mode!r}")

    def lookup_rule(self) -> VendorRule:
        """The vendor rule of ``identifier_type``."""
        from airflow_audience_provider.identifiers import get_rule  # the contact-list engine: not at DAG parse

        try:
            return get_rule(self.vendor, str(self.identifier_type).strip().lower())
        except (KeyError, ValueError) as exc:
            reason = exc.args[0] if exc.args else exc
            raise UnknownIdentifierTypeError(
                f"Unknown identifier type {self.identifier_type!r} for {self.vendor_label}: {reason}",
                vendor=self.vendor,
            ) from None

    def customise_rule(self, rule: VendorRule) -> VendorRule:
        """Vendor options that change the rule (phone region, MAID case...)."""
        return rule

    def chunk_limit(self, rule: VendorRule) -> int | None:
        """Identifiers per request or file: the rule's limit, or fewer if the task asks."""
        limit = rule.max_ids_per_chunk
        wanted = self.max_identifiers_per_request
        if wanted is None:
            return limit
        wanted = int(wanted)
        if wanted < 1 or (limit is not None and wanted > limit):
            bound = f"{limit:,}" if limit is not None else "no limit"
            raise ValueError(
                f"max_identifiers_per_request must be between 1 and {bound} ({self.vendor_label}'s limit for "
                f"{rule.identifier_type.value}), got {wanted:,}"
            )
        return wanted

    def rule(self) -> VendorRule:
        """The rule this run uses: looked up, customised, and with a smaller chunk limit if asked."""
        import dataclasses

        rule = self.customise_rule(self.lookup_rule())
        limit = self.chunk_limit(rule)
        if limit != rule.max_ids_per_chunk:
            # Smaller requests change no output value: keep the rule version, so snapshots stay comparable.
            rule = dataclasses.replace(rule, max_ids_per_chunk=limit)
        return rule

    def sync_options(self, mode: str, cancel: threading.Event) -> Any:
        """The engine's options for this run."""
        from airflow_audience_provider.identifiers import SyncOptions  # the contact-list engine: not at DAG parse

        one_way = mode in ("add", "remove")
        refresh = self.full_refresh_every
        if refresh in (None, ""):
            refresh = None
        elif not isinstance(refresh, timedelta):
            refresh = timedelta(seconds=float(refresh))
        return SyncOptions(
            allow_empty=self.allow_empty and not one_way,
            allow_below_minimum=self.allow_below_minimum or one_way,
            max_invalid_share=self.max_invalid_share,
            max_removal_share=self.max_removal_share,
            allow_mass_removal=self.allow_mass_removal,
            # A new destination: send the whole list (a leftover snapshot of a deleted list with the
            # same key must not be diffed against).
            full_replace=self.force_full_replace() and mode == "sync",
            cancel=cancel,
            # The operator takes the lease itself (before it looks the destination up) and hands it over.
            lease_timeout=0.0,
            lease_poll_interval=float(self.lease_poll_interval),
            full_refresh_every=refresh,
            remote_id=self.remote_id(),
            new_list=self.force_full_replace(),
        )

    # -- where state lives -------------------------------------------------------------------

    def check_shared_state(self) -> None:
        """Warn (or refuse, ``require_shared_state``) when host-local snapshots meet a distributed executor."""
        if snapshot_base_is_shared(self.snapshot_base):
            return
        distributed = [name for name in executor_names() if name not in LOCAL_EXECUTORS]
        if not distributed:
            return
        # the contact-list engine: not at DAG parse
        from airflow_audience_provider.identifiers import default_snapshot_base

        where = self.snapshot_base or default_snapshot_base()
        message = (
            f"Snapshots of {self.describe_destination()} are kept at {where}, on this host only, but the "
            f"executor is {', '.join(distributed)}: the next run may land on another worker that does not see "
            "them (a full replace every time, and no lease between runs on different hosts). Set snapshot_base "
            "to shared storage, e.g. snapshot_base='s3://bucket/audience_snapshots' (an ObjectStoragePath URL), "
            "or [audience] snapshot_base_path"
        )
        if self.require_shared_state:
            raise AudienceConfigurationError(message + " (require_shared_state=True: nothing was sent)")
        log.warning("!!! %s !!!", message)

    # -- the run -----------------------------------------------------------------------------

    def cancel_event(self) -> threading.Event:
        """A fresh event for this run of ``execute`` (``on_kill`` sets it)."""
        event = threading.Event()
        self.__dict__["_cancel"] = event
        return event

    def on_kill(self) -> None:
        """Send no further chunk; what was applied stays applied and the snapshot is not advanced.

        Airflow 3 calls ``on_kill`` on SIGTERM and lets the task run on, so setting the event is
        enough: the engine stops before the next chunk.
        """
        cancel = self.__dict__.get("_cancel")
        if cancel is not None:
            cancel.set()

    def execute(self, context: Context) -> dict[str, Any]:
        return self._run(context)

    def execute_after_lease_wait(
        self, context: Context, event: dict[str, Any] | None = None, lease_deadline: float | None = None
    ) -> dict[str, Any]:
        """Resumed after waiting in the triggerer for the destination's lease: try again.

        ``event`` is the timer's moment; ``lease_deadline`` (seconds since the epoch) the time after
        which the task fails naming the holder. Without it (kwargs lost), ``lease_timeout`` starts again.
        """
        if event is not None and not isinstance(event, (datetime, str, dict)):
            raise AudienceError(
                f"{self.describe_destination()}: unexpected event from the lease timer: {type(event).__name__}",
                vendor=self.vendor,
            )
        if lease_deadline is not None and (
            isinstance(lease_deadline, bool)
            or not isinstance(lease_deadline, (int, float))
            or not math.isfinite(lease_deadline)
        ):
            raise AudienceError(
                f"{self.describe_destination()}: lease_deadline must be seconds since the epoch, "
                f"got {lease_deadline!r}",
                vendor=self.vendor,
            )
        return self._run(context, lease_deadline=lease_deadline)

    def _run(self, context: Context, lease_deadline: float | None = None) -> dict[str, Any]:
        # the contact-list engine: not at DAG parse
        from airflow_audience_provider.identifiers import ContactListError, SendError, sync_contact_list

        mode = self.canonical_mode(self.mode)
        self.mode = mode
        rule = self.rule()
        cancel = self.cancel_event()
        hook = self.hook
        self._rule, self._key = rule, self.destination_key(hook)
        self.check_shared_state()
        # The lease comes first: the destination is looked up (or created) by one run at a time.
        lease = None if self.plan_only else self.acquire_lease(context, lease_deadline)
        try:
            self.outwait_lost_holder(lease, cancel)
            self.prepare(context, hook, rule)
            before = self.check_drift(hook, "before") if not self.plan_only else None
            sender = None if self.plan_only else self.make_sender(context, hook, rule, cancel)
            self.__dict__["_sender"] = sender
            source_options = dict(self.source_options or {})
            source_options.update(self.extra_source_options())
            try:
                engine = sync_contact_list(
                    native_source(self.source),
                    rule,
                    sender,
                    destination_key=self._key,
                    snapshot_base=self.snapshot_base,
                    mode=mode,
                    lease=lease,
                    dry_run=self.plan_only,
                    options=self.sync_options(mode, cancel),
                    workers=self.read_workers,
                    **source_options,
                )
            except SendError as exc:
                partial = self.build_result(context, hook, rule, exc.result or {}, "failed")
                context["ti"].xcom_push(key="upload_result", value=partial)
                raise self.send_error(exc, partial) from exc
            except ContactListError as exc:
                raise AudienceValidationError(
                    f"Contact list for {self.describe_destination()} not sent: {exc}", vendor=self.vendor
                ) from exc
            status = "planned" if self.plan_only else "sent"
            result = self.build_result(context, hook, rule, engine, status)
            if self.plan_only:
                result["blocked_by"] = engine.get("blocked_by", [])
            else:
                result["drift"] = self.check_drift(hook, "after", engine=engine, result=result) or before
        finally:
            if lease is not None:
                lease.release()  # idempotent: the engine releases it too once it has settled
        self.log.info(
            "%s (%s): %d row(s), %d valid, %d invalid, %d duplicate; added %d, removed %d, sent %d; drift %s",
            self.describe_destination(),
            mode,
            result["rows"],
            result["valid"],
            result["invalid"],
            result["duplicate"],
            result["added"],
            result["removed"],
            result["sent"],
            result["drift"],
        )
        self.settle_unaccounted(context, result)
        self.settle_drift(result["drift"])
        if self.should_emit(result):
            self.emit_asset_event(context, result["asset_uri"], upload_asset_extra(self, result))
        if isinstance(result.get("drift"), dict) and result["drift"].get("drifted") and self.on_drift == "fail":
            raise AudienceError(result["drift"]["message"], vendor=self.vendor)
        return result

    def extra_source_options(self) -> dict[str, Any]:
        """Source options the vendor operator takes as arguments of its own (e.g. ``column``)."""
        return {}

    def should_emit(self, result: dict[str, Any]) -> bool:
        """Record an Asset event for this result (by default: whenever the run sent)."""
        return result.get("status") == "sent" and bool(result.get("asset_uri"))

    def build_result(
        self, context: Context, hook: Any, rule: VendorRule, engine: dict[str, Any], status: str
    ) -> dict[str, Any]:
        """The run's small JSON result: the engine's counts, in the same keys for every vendor."""
        counts = engine.get("counts") or {}
        unique = int(counts.get("unique", 0))
        added, removed = int(counts.get("added", 0)), int(counts.get("removed", 0))
        result: dict[str, Any] = {
            "mode": self.mode,
            "engine_mode": engine.get("mode"),
            "state": engine.get("state"),
            "rows": int(counts.get("rows", 0)),
            "valid": unique,
            "invalid": int(counts.get("invalid", 0)),
            "duplicate": int(counts.get("duplicate", 0)),
            "added": added,
            "removed": removed,
            "sent": int(counts.get("sent_add", 0)) + int(counts.get("sent_remove", 0)),
            "vendor_rejected": int(counts.get("vendor_rejected", 0)),
            "vendor_unaccounted": int(counts.get("vendor_unaccounted", 0)),
            "chunks_sent": int(counts.get("chunks_sent", 0)),
            "chunks_total": int(counts.get("chunks_total", 0)),
            "invalid_reasons": counts.get("invalid_reasons", {}),
            "counts": counts,
            "status": status,
            # the run's own outcome in every vendor's result (a vendor may report its object's state as status)
            "upload_status": status,
            "drift": None,
            "finished_at": datetime.now(UTC).isoformat(),
        }
        result.update(self.vendor_result(context, hook, rule, engine, status))
        result.setdefault("url", None)
        result.setdefault("asset_uri", None)
        return result

    def settle_unaccounted(self, context: Context, result: dict[str, Any]) -> None:
        """Fail or warn (``on_partial_failure``, default ``fail``) when the vendor's answers accounted for
        fewer identifiers than were sent: counts only, never identifiers.

        The engine keeps every identifier this run sent uncertain (its journal stays, as a failed run's), so
        the next run, in any mode, sends them again as its own target says.
        """
        unaccounted = int(result.get("vendor_unaccounted", 0))
        if not unaccounted:
            return
        accepted, invalid = int(result["sent"]), int(result["vendor_rejected"])
        sent = accepted + invalid + unaccounted
        message = (
            f"{self.vendor_label} accounted for {accepted + invalid:,} of the {sent:,} identifier(s) sent to "
            f"{self.describe_destination()} ({accepted:,} accepted, {invalid:,} reported invalid, {unaccounted:,} "
            "neither): they may be missing from the list; they stay uncertain in the destination's state, so the "
            "next run sends them again"
        )
        self.settle_partial_failure(
            [{"sent": sent, "accepted": accepted, "invalid": invalid, "unaccounted": unaccounted}],
            message,
            mode=getattr(self, "on_partial_failure", "fail"),
            mode_name="on_partial_failure",
            vendor=self.vendor,
            before_failing=lambda: context["ti"].xcom_push(key="upload_result", value=result),
        )

    def send_error(self, exc: Exception, partial: dict[str, Any]) -> Exception:
        """The task's error for a send that failed part way: the vendor's error, told with what was applied."""
        applied = self.describe_applied()
        note = (
            f"Upload to {self.describe_destination()} failed after {partial['chunks_sent']} of "
            f"{partial['chunks_total']} chunk(s); {self.vendor_label} accepted {partial['sent']} identifier(s) "
            f"before the failure{f' ({applied})' if applied else ''}, reported in XCom 'upload_result'; the "
            "snapshot was not advanced, so a rerun sends the difference again"
        )
        self.log.error("%s", note)
        cause = exc.__cause__
        if isinstance(cause, AudienceError):
            return cause.restated(f"{cause.message} ({note})")
        return AudienceError(f"{exc}: {cause or 'unknown cause'} ({note})", vendor=self.vendor)

    # -- self-check against the vendor ---------------------------------------------------------

    def recorded_state(self, when: str, engine: dict[str, Any] | None) -> dict[str, Any] | None:
        """Our record of the list: the snapshot's header (before), or this run's new state (after)."""
        if when == "after":
            if engine is None or self.mode not in ("sync", "replace"):
                return None
            counts = engine.get("counts") or {}
            return {"count": int(counts.get("unique", 0)), "written_at": datetime.now(UTC).isoformat()}
        from airflow_audience_provider.identifiers import snapshot_for  # the contact-list engine: not at DAG parse

        try:
            header = snapshot_for(self._rule, self._key, self.snapshot_base).read_header()
        except Exception:  # a broken snapshot is the engine's to report
            return None
        if not header or header.get("rule") != self._rule.key or header.get("count") is None:
            return None
        remote = self.remote_id()
        if remote is not None and str(header.get("remote_id")) != remote:
            return None  # the snapshot is of another list (or does not say which): no count to compare
        return header

    def check_drift(
        self,
        hook: Any,
        when: str,
        *,
        engine: dict[str, Any] | None = None,
        result: dict[str, Any] | None = None,
    ) -> dict[str, Any] | None:
        """Compare the vendor's count with ours, within ``drift_tolerance``; None when either is unknown.

        The vendor counts identifiers it received (not matches), so a match rate does not enter;
        identifiers the vendor reported invalid while we sent them are allowed for.
        """
        recorded = self.recorded_state(when, engine)
        if recorded is None:
            return None
        ours = int(recorded["count"])
        try:
            seen = self.vendor_count(hook, when, recorded)
        except Exception as exc:  # the self-check must not fail an upload that succeeded
            self.log.warning("Could not read %s's count of %s: %s", self.vendor_label, self.describe_destination(), exc)
            return None
        if seen is None or seen[0] is None:
            return None
        theirs, what = int(seen[0]), seen[1]
        rejected = int((result or {}).get("vendor_rejected", 0))
        difference = theirs - ours
        allowed = max(self.drift_tolerance * max(ours, 1), 0) + rejected
        drifted = abs(difference) > allowed
        message = (
            f"{self.vendor_label} counts {theirs:,} identifier(s) in {self.describe_destination()} ({what}), "
            f"our state {ours:,} ({'before' if when == 'before' else 'after'} this run's changes): "
            + (
                f"drift of {difference:+,} beyond the tolerance of {self.drift_tolerance:.1%}; a run with "
                "mode='replace' (or full_refresh_every) makes the list equal to the input again"
                if drifted
                else "within tolerance"
            )
        )
        return {
            "checked": when,
            "ours": ours,
            "vendor": theirs,
            "vendor_count": what,
            "difference": difference,
            "tolerance": self.drift_tolerance,
            "drifted": drifted,
            "message": message,
        }

    def settle_drift(self, drift: dict[str, Any] | None) -> None:
        if drift and drift.get("drifted"):
            log.warning("%s", drift["message"])

    # -- the destination's lease ---------------------------------------------------------------

    def acquire_lease(self, context: Context, deadline: float | None) -> Any:
        """Take the destination's lease before anything is looked up or sent.

        While another run holds it, a deferrable task waits in the triggerer (a timer, no worker
        slot) and tries again; otherwise it waits in the worker. Either way it fails after
        ``lease_timeout`` seconds naming the holder, before sending anything.

        A lease whose holder died without releasing it is taken over, but nothing is sent until
        that run's requests can no longer land (:func:`~airflow_audience_provider.identifiers.lease.takeover_safe_at`).
        A deferrable task waits for that moment in the triggerer *before* it takes the lease (a
        deferred task has no heartbeat to keep a lease); a task that is not deferrable takes the
        lease and waits in the worker (:meth:`outwait_lost_holder`) before ``prepare``. Either way
        the engine has nothing left to wait.
        """
        # the contact-list engine: not at DAG parse
        from airflow_audience_provider.identifiers import SyncOptions
        from airflow_audience_provider.identifiers.sync import lease_for

        lease = lease_for(self._rule, self._key, self.snapshot_base, SyncOptions())
        timeout = float(self.lease_timeout)
        # The moment to wait for after a dead holder is computed with the window the engine uses:
        # the sender's, which is its transport's.
        lease.landing_window = self.hook.get_conn().landing_window()
        if not self.deferrable:
            # the contact-list engine: not at DAG parse
            from airflow_audience_provider.identifiers.lease import LeaseBusyError

            try:
                lease.acquire(timeout, float(self.lease_poll_interval))
            except LeaseBusyError as exc:
                raise self.lease_busy_error(str(exc)) from None
            return lease
        now = lease.now()
        deadline = float(deadline) if deadline is not None else now + timeout
        info = lease.current()
        if lease.abandoned(info, now):
            safe_at = lease.takeover_safe_at(info)
            if safe_at > now:
                # Taking it now would hold a lease no heartbeat keeps while deferred; and releasing a
                # lease taken over would tell the next run that nothing of the dead run is in flight.
                return self.defer_for_lease(
                    lease, info, now, deadline, until=safe_at, why="stopped without releasing it; its requests may land"
                )
        if lease.try_acquire():
            return lease
        info = lease.current()
        wait_until = now + max(float(self.lease_poll_interval), 1.0)
        return self.defer_for_lease(lease, info, now, deadline, until=wait_until, why="is sending to it")

    def outwait_lost_holder(self, lease: Any, cancel: threading.Event) -> None:
        """After taking over the lease of a run that died, wait in the worker until its requests can no longer land.

        Runs before ``prepare``: a confirm or upload of the dead run landing after this run looked
        up, created or cleaned the destination could make a second segment or confirm a draft
        being deleted. The heartbeat keeps the lease meanwhile; ``on_kill`` ends the wait. The
        moment is :meth:`~airflow_audience_provider.identifiers.lease.DestinationLease.takeover_safe_at`
        by the lease's clock, the one the engine computes too, so the engine does not wait again.
        """
        info = getattr(lease, "took_over", None)
        if lease is None or info is None:
            return
        safe_at = lease.takeover_safe_at(info)
        delay = safe_at - lease.now()
        if delay <= 0:
            return
        self.log.warning(
            "%s: took over the lease of a run that stopped without releasing it (%s); waiting %.1f s before "
            "any request, until its requests can no longer land",
            self.describe_destination(),
            info.describe(),
            delay,
        )
        while delay > 0:
            if cancel.wait(delay):
                raise AudienceError(
                    f"{self.describe_destination()}: stopped while waiting for the requests of the run whose lease "
                    "was taken over to settle; nothing was sent",
                    vendor=self.vendor,
                )
            delay = safe_at - lease.now()  # by the lease's clock, which a wait by the host's may not match
        # the contact-list engine: not at DAG parse
        from airflow_audience_provider.identifiers.lease import LeaseLostError

        try:
            lease.check()  # the heartbeat kept it through the wait
        except LeaseLostError as exc:
            raise self.lease_busy_error(f"{exc}; nothing was sent") from None

    def defer_for_lease(self, lease: Any, info: Any, now: float, deadline: float, *, until: float, why: str) -> Any:
        """Defer until ``until`` (at most ``deadline``), then try the lease again; past the deadline, fail."""
        holder = info.describe() if info is not None else "another run"
        timeout = float(self.lease_timeout)
        if now >= deadline:
            raise self.lease_busy_error(
                f"another run is sending to this destination ({holder}); waited {timeout:.0f} s for its lease "
                f"{lease.directory}; nothing was sent. Retry later or raise lease_timeout"
                + (
                    f" (that run {why} until {datetime.fromtimestamp(until, UTC).isoformat(timespec='seconds')})"
                    if until > now and lease.abandoned(info, now)
                    else ""
                )
            )
        moment = min(until, deadline)
        self.log.info(
            "%s: the run holding its lease (%s) %s; waiting in the triggerer until %s, then trying again (until %s)",
            self.describe_destination(),
            holder,
            why,
            datetime.fromtimestamp(moment, UTC).isoformat(timespec="seconds"),
            datetime.fromtimestamp(deadline, UTC).isoformat(timespec="seconds"),
        )
        from airflow.providers.standard.triggers.temporal import DateTimeTrigger

        self.defer(
            trigger=DateTimeTrigger(datetime.fromtimestamp(max(moment, now + 1.0), UTC)),
            method_name="execute_after_lease_wait",
            kwargs={"lease_deadline": deadline},
        )
        raise AssertionError("defer() returns only by raising")  # pragma: no cover

    def lease_busy_error(self, reason: str) -> Exception:
        """The task's error when the destination's lease stayed busy: names the holder, nothing sent."""
        return AudienceConflictError(f"{self.describe_destination()}: {reason}", vendor=self.vendor)


__all__: Sequence[str] = (
    "DEFAULT_DRIFT_TOLERANCE",
    "MODES",
    "ContactListUploadOperator",
    "UnknownIdentifierTypeError",
    "executor_names",
    "snapshot_base_is_shared",
    "upload_asset_extra",
)
