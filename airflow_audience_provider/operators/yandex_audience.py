"""Yandex.Audience operators: contact-list uploads into file segments, Metrica/AppMetrica/geo/pixel/lookalike
segments, rename/delete/reprocess, grants, delegates and pixels.

Every operator is idempotent on rerun: segments are found by name (among the login's own segments)
and pixels by name before anything is created; grants and delegates are compared before they are
written. Yandex cannot change anything but a segment's name, so a rerun with another definition for
an existing non-file segment warns (or fails, ``on_definition_change="fail"``) instead of creating a twin.
"""

from __future__ import annotations

import hashlib
import re
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from airflow_audience_provider.connections import YANDEX_AUDIENCE
from airflow_audience_provider.core.errors import (
    AudienceConfigurationError,
    AudienceNotFoundError,
    AudiencePermissionError,
    AudienceValidationError,
)
from airflow_audience_provider.core.events import upload_counts
from airflow_audience_provider.links.yandex_audience import YandexAudienceSegmentLink
from airflow_audience_provider.operators.base import AudienceBaseOperator, partial_failure_mode
from airflow_audience_provider.operators.contact_list import MODES, ContactListUploadOperator

if TYPE_CHECKING:
    from airflow.sdk import Context

    from airflow_audience_provider.hooks.yandex_audience import YandexAudienceHook
    from airflow_audience_provider.operators.senders.yandex_audience import YandexAudienceSegmentSender

ASSET_ALIAS = "yandex-audience-segments"
VENDOR = "yandex_audience"
UPLOAD_MODES = MODES
#: identifier type -> the confirm content_type it is uploaded as
CONTENT_TYPE_BY_IDENTIFIER = {
    "email": "crm",
    "phone": "crm",
    "sha256": "crm",
    "maid": "idfa_gaid",
    "idfa": "idfa_gaid",
    "gaid": "idfa_gaid",
    "mac": "mac",
    "client_id": "client_id",
}


class _YandexAudienceOperator(AudienceBaseOperator["YandexAudienceHook"]):
    spec = YANDEX_AUDIENCE
    default_asset_alias = ASSET_ALIAS
    on_item_error = "fail"  # the multi-item operators take it as a parameter

    def make_hook(self) -> YandexAudienceHook:
        # the hook imports requests: not at DAG parse
        from airflow_audience_provider.hooks.yandex_audience import YandexAudienceHook

        return YandexAudienceHook(self.yandex_audience_conn_id, timeouts=self.timeouts())

    def __init__(self, *, yandex_audience_conn_id: str = YANDEX_AUDIENCE.default_conn_name, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.yandex_audience_conn_id = yandex_audience_conn_id

    def _push_segment(self, context: Context, segment_id: Any) -> None:
        """Push the id and the link as soon as the segment exists, so a failed task still links to it."""
        YandexAudienceSegmentLink.persist(context, self.hook.segment_url(segment_id))
        context["ti"].xcom_push(key="segment_id", value=segment_id)

    def _segment_result(self, context: Context, segment: dict[str, Any], **fields: Any) -> dict[str, Any]:
        self._push_segment(context, segment.get("id"))
        result = self.hook.segment_result(segment)
        result.update(fields)
        return result

    def _settle_items(self, what: str, failures: list[dict[str, Any]]) -> None:
        """Per-item failures of a multi-item operator, each mapped to its input: fail or warn (``on_item_error``)."""
        lines = "; ".join(f"{f['input']}: {f['message']}" for f in failures)
        self.settle_partial_failure(
            failures,
            f"{what}: {len(failures)} item(s) failed: {lines}",
            mode=self.on_item_error,
            mode_name="on_item_error",
            vendor=VENDOR,
        )

    def _emit(self, context: Context, result: dict[str, Any]) -> None:
        counts = result.get("counts")
        fields = upload_counts(counts, mode=result.get("mode")) if counts else {}
        self.emit_asset_event(
            context,
            result["asset_uri"],
            {
                **fields,
                "object_name": result.get("name"),
                "state": result.get("status"),
                "action": result.get("action"),
                "mode": result.get("mode"),
                "link": result.get("url"),
            },
        )


def _segment_ref(value: Any) -> str:
    return str(value).strip()


def _item_error(ref: Any, exc: Any) -> dict[str, Any]:
    return {"input": ref, "error": type(exc).__name__, "code": exc.code, "message": exc.message}


class YandexAudienceUploadContactListOperator(ContactListUploadOperator["YandexAudienceHook"], _YandexAudienceOperator):
    """Create or update a Yandex.Audience file segment from a contact list, idempotently by name.

    The list (e-mails, phones, mobile advertising ids, MAC addresses, Metrica ClientIDs, or SHA-256
    hashes of e-mails) is read, normalised, validated and hashed by the contact-list engine
    (:mod:`airflow_audience_provider.identifiers`) as Yandex requires, and written into files within
    the 1 GB limit: CRM data as a CSV whose header names the column (``email`` or ``phone``),
    device ids, MACs and ClientIDs as a plain list. MAC addresses are SHA-256 hashed over their 6
    raw bytes; Metrica ClientIDs are sent as written (Yandex matches them against Metrica's own
    data; their confirm takes no ``hashed`` flag) and are confirmed with the Metrica
    ``counter_id`` through ``segment/client_id/{id}/confirm``. A list under 100 entries is refused
    before anything is sent, unless ``allow_below_minimum``.

    When no segment of the login has ``segment_name``, the first file is uploaded and confirmed in
    one step (a confirm that fails deletes the draft, so no unconfirmed draft is left behind). When
    it exists, a rerun never creates a twin; the data is changed with ``modify_data``:

    * ``mode="sync"`` (default): incremental; only the difference to the last successful run is sent,
      as an ``addition`` file and a ``subtraction`` file (the engine keeps a snapshot of what was sent;
      without one, the first run is a ``replace``);
    * ``mode="replace"``: the segment becomes exactly the list (``replace``);
    * ``mode="add"`` / ``mode="remove"``: the list is added to / removed from the segment (the old
      names ``addition`` / ``subtraction`` still work, with a deprecation warning).

    Nothing is half-applied silently: if a file is refused (or a quota runs out) midway, the task
    fails naming the cause and how much was applied, the snapshot is not advanced, and a rerun sends
    the difference again (a file already applied is answered ``no_changes``, which counts as done).
    Yandex reports no per-identifier errors for files; invalid input rows are counted by the engine.

    Snapshots live by default under ``$AIRFLOW_HOME/audience_snapshots``, on the host that runs the
    task. In production, with workers on several hosts, set ``snapshot_base`` to shared storage (an
    ``ObjectStoragePath`` URL such as ``s3://bucket/audience_snapshots``); a host-local base with a
    distributed executor is warned about, or refused with ``require_shared_state=True``.

    When the segment is processed, its ``valid_unique_quantity`` is compared with the list the
    snapshot records before anything is sent (``drift`` in the result; ``drift_tolerance``).

    .. seealso:: :ref:`howto/operator:YandexAudienceUploadContactListOperator`

    :param segment_name: the segment's name, its idempotency key (templated).
    :param source: the contact list: a path or URL, an upstream XCom value (path or
        ``{"path", "format", "column"}``), or an iterable of values (templated).
    :param identifier_type: ``email``, ``phone``, ``sha256`` (already hashed e-mails), ``idfa``
        (hashed upper-case), ``gaid`` (hashed lower-case), ``maid`` (either platform, hashed
        lower-case), ``mac`` or ``client_id`` (Yandex Metrica ClientIDs; needs ``counter_id``).
    :param mode: ``sync``, ``replace``, ``add`` or ``remove`` (templated).
    :param column: the input column holding the identifiers (CSV/JSON/Parquet sources) (templated).
    :param source_options: other source options: ``format``, ``encoding``, ``delimiter``, ``has_header``.
    :param content_type: the confirm content type; derived from ``identifier_type`` (``crm``,
        ``idfa_gaid``, ``mac`` or ``client_id``).
    :param counter_id: the Yandex Metrica counter whose ClientIDs the list holds (templated);
        required for ``identifier_type="client_id"``, refused otherwise.
    :param device_matching_type: passed to confirm (e.g. ``CROSS_DEVICE``).
    :param default_region: ISO region for phone numbers written without a country code (e.g. ``RU``,
        which reads ``8 (999) 555-11-11``); default: the connection's ``default_region`` extra.
        Without one, such numbers are counted invalid as ``phone_no_country``.
    :param maid_case: ``upper`` to hash a ``maid`` list in the IDFA form; prefer
        ``identifier_type="idfa"`` (upper-case) or ``"gaid"`` (lower-case) for lists of one platform.
    :param allow_below_minimum: send a list under 100 entries (confirm with ``check_size=false``;
        such a segment is not usable in Direct until it grows).
    :param max_invalid_share: fail before sending when more input rows are invalid.
    :param max_removal_share: fail before sending when a sync would remove more of the segment.
    :param allow_mass_removal: turn the removal guard off.
    :param create_if_missing: create the segment when none has the name (otherwise fail).
    :param plan_only: a dry run: count, diff and check, send nothing (``action`` is ``planned``).
    :param snapshot_base: where snapshots are kept; default ``$AIRFLOW_HOME/audience_snapshots``
        (host-local; use shared storage in production) (templated).
    :param require_shared_state: refuse to run with a host-local ``snapshot_base`` and a distributed executor.
    :param full_refresh_every: a ``timedelta``: force a full replace when the last one is older.
    :param drift_tolerance: relative difference between Yandex's count and ours that is not drift (0.01).
    :param on_drift: ``warn`` (default) or ``fail`` when the counts drift apart.
    :param lease_timeout: seconds to wait while another run holds the segment's lease.
    :param lease_poll_interval: seconds between attempts to take the lease.
    :param deferrable: wait for the lease in the triggerer (default: ``[operators] default_deferrable``).
    :param read_workers: parallel workers that normalise and hash the list: threads with the
        ``fast`` extra (its compiled kernel releases the GIL), processes without. 1 (default): one
        worker (with the ``fast`` extra a thread, while the task's thread reads the source, and
        the plan may use a second CPU where one is free); 2 suits a worker slot with two cores.
    :param emit_asset: record an Asset event ``yandex-audience://<login>/segment/<id>`` when data was sent.
    :return: ``{"segment_id", "name", "status", "action", "mode", "content_type", "counts", "url",
        "asset_uri", "files", "drift"}`` and the counts every upload reports (``rows``, ``valid``,
        ``invalid``, ``added``, ``removed``, ``sent``...); ``action`` is ``created``, ``updated``,
        ``unchanged`` or ``planned``.
    """

    vendor = VENDOR
    vendor_label = "Yandex.Audience"
    mode_aliases: ClassVar[dict[str, str]] = {"addition": "add", "subtraction": "remove"}
    template_fields: Sequence[str] = (
        "segment_name",
        "source",
        "column",
        "source_options",
        "identifier_type",
        "mode",
        "counter_id",
        "snapshot_base",
        "yandex_audience_conn_id",
    )
    operator_extra_links = (YandexAudienceSegmentLink(),)
    ui_color = "#fff3cc"

    def __init__(
        self,
        *,
        segment_name: str,
        column: str | None = None,
        content_type: str | None = None,
        counter_id: int | str | None = None,
        device_matching_type: str | None = None,
        default_region: str | None = None,
        maid_case: str | None = None,
        create_if_missing: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.segment_name = segment_name
        self.column = column
        self.content_type = content_type
        self.counter_id = counter_id
        self.device_matching_type = device_matching_type
        self.default_region = default_region
        self.maid_case = maid_case
        self.create_if_missing = create_if_missing

    def customise_rule(self, rule: Any) -> Any:
        region = self.default_region or (self.hook.default_region if rule.identifier_type.value == "phone" else None)
        changes = {k: v for k, v in (("default_region", region), ("maid_case", self.maid_case)) if v}
        return rule.with_options(**changes) if changes else rule

    def extra_source_options(self) -> dict[str, Any]:
        return {"column": self.column} if self.column else {}

    def on_kill(self) -> None:
        """Send no further file, and delete a draft uploaded but not yet confirmed.

        Files Yandex already applied stay applied; the snapshot is not advanced, so the next run
        sends the difference again.
        """
        super().on_kill()
        sender = self.__dict__.get("_sender")
        if sender is not None:
            sender.discard_pending_draft()

    def _check_content_type(self, identifier_type: str, content_type: str) -> None:
        """Refuse combinations Yandex would refuse only after the upload (or never notice)."""
        expected = CONTENT_TYPE_BY_IDENTIFIER.get(identifier_type)
        if expected is not None and content_type != expected:
            raise AudienceConfigurationError(
                f"identifier_type {identifier_type!r} is uploaded as content_type {expected!r}, "
                f"not {content_type!r}: Yandex would read the file as the wrong kind of data"
            )
        if content_type == "client_id" and self.counter_id in (None, ""):
            raise AudienceConfigurationError(
                "identifier_type 'client_id' needs counter_id: "
                "the Yandex Metrica counter whose ClientIDs the list holds"
            )
        if content_type != "client_id" and self.counter_id not in (None, ""):
            raise AudienceConfigurationError(
                f"counter_id is only used for Metrica ClientID lists (identifier_type 'client_id'), "
                f"not for {identifier_type!r}"
            )

    def describe_destination(self) -> str:
        return f"Yandex.Audience segment {self.segment_name!r}"

    def draft_prefix(self, hook: Any) -> str:
        """The start of the file name (a draft's name until confirmed) of every draft this segment uploads."""
        owner = hook.login or self.yandex_audience_conn_id
        return "aap-" + hashlib.sha256(f"{owner}\0{self.segment_name}".encode()).hexdigest()[:12]

    def destination_key(self, hook: Any) -> str:
        """One snapshot per login and segment name (readable prefix, hash for uniqueness)."""
        owner = hook.login or self.yandex_audience_conn_id
        slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", self.segment_name)[:60]
        digest = hashlib.sha256(f"{owner}\0{self.segment_name}".encode()).hexdigest()[:12]
        return f"{slug}-{digest}"

    def prepare(self, context: Context, hook: Any, rule: Any) -> None:
        content_type = self.content_type or CONTENT_TYPE_BY_IDENTIFIER.get(rule.identifier_type.value, "crm")
        self._check_content_type(rule.identifier_type.value, content_type)
        self._content_type = content_type
        # Under the destination's lease: no other run of this segment is uploading now, so drafts
        # of ours still unconfirmed were left by a run that was killed or lost its answer.
        orphans = hook.delete_orphaned_drafts(f"{self.draft_prefix(hook)}-")
        if orphans:
            self.log.warning("Deleted %d unconfirmed draft(s) an earlier run left: %s", len(orphans), orphans)
        segment = hook.find_segment(self.segment_name, "uploading", adopt_oldest=True)
        if segment is None and (self.mode == "remove" or not self.create_if_missing):
            raise AudienceNotFoundError(
                f"No Yandex.Audience file segment of this login is named {self.segment_name!r}; "
                + ("nothing to subtract from" if self.mode == "remove" else "create_if_missing is off"),
                vendor=VENDOR,
            )
        if segment is not None:
            self._push_segment(context, segment["id"])
            if segment.get("content_type") not in (None, content_type):
                raise AudienceValidationError(
                    f"Yandex.Audience segment {segment['id']} ({self.segment_name!r}) holds "
                    f"{segment.get('content_type')} data; a {content_type} file cannot modify it",
                    vendor=VENDOR,
                )
            if segment.get("hashed") is False and rule.profile.hashed_output:
                raise AudienceValidationError(
                    f"Yandex.Audience segment {segment['id']} holds unhashed data; modify_data files must keep "
                    "the form of the first upload, so hashed identifiers cannot be added to it",
                    vendor=VENDOR,
                )
        self._segment = segment

    def force_full_replace(self) -> bool:
        return self._segment is None

    def remote_id(self) -> str | None:
        # The key is the segment's name: a segment deleted and created again under it has a new id.
        segment = self.__dict__.get("_segment")
        return str(segment["id"]) if segment else None

    def make_sender(
        self, context: Context, hook: Any, rule: Any, cancel: threading.Event
    ) -> YandexAudienceSegmentSender:
        # the hook imports requests: not at DAG parse
        from airflow_audience_provider.operators.senders.yandex_audience import YandexAudienceSegmentSender

        segment = self._segment
        return YandexAudienceSegmentSender(
            hook,
            self.segment_name,
            self._content_type,
            segment_id=segment["id"] if segment else None,
            hashed=rule.profile.hashed_output,
            device_matching_type=self.device_matching_type,
            check_size=not self.allow_below_minimum,
            counter_id=self.counter_id,
            cancel=cancel,
            on_created=lambda created: self._push_segment(context, created["id"]),
            draft_prefix=self.draft_prefix(hook),
        )

    def vendor_count(self, hook: Any, when: str, recorded: dict[str, Any] | None) -> tuple[int | None, str] | None:
        # Yandex processes a file for minutes: only a processed segment's count is settled, and the
        # one seen before sending is the previous run's list.
        segment = self._segment
        if when != "before" or segment is None or segment.get("status") != "processed":
            return None
        return segment.get("valid_unique_quantity"), "valid_unique_quantity of the processed segment"

    def describe_applied(self) -> str:
        sender = self.__dict__.get("_sender")
        calls = sender.calls if sender is not None else []
        return "applied before the failure: " + (
            ", ".join(f"{c['operation']} of {c['entries']}" for c in calls) or "nothing"
        )

    def vendor_result(
        self, context: Context, hook: Any, rule: Any, engine: dict[str, Any], status: str
    ) -> dict[str, Any]:
        sender = self.__dict__.get("_sender")
        segment = self._segment
        calls = list(sender.calls) if sender is not None else []
        if status == "planned":
            action = "planned"
        elif sender is not None and sender.created:
            action = "created"
        elif calls and not all(c.get("no_changes") for c in calls):
            action = "updated"
        else:
            action = "unchanged" if status == "sent" else "failed"
        segment_id = sender.segment_id if sender is not None else (segment or {}).get("id")
        return {
            "segment_id": segment_id,
            "name": self.segment_name,
            # what Yandex said last, without spending a list request of the daily budget
            "status": {"created": "is_processed", "updated": "is_updated"}.get(action, (segment or {}).get("status")),
            "action": action,
            "content_type": self._content_type,
            "files": [dict(c) for c in calls],
            "url": hook.segment_url(segment_id) if segment_id is not None else None,
            "asset_uri": hook.segment_asset_uri(segment_id) if segment_id is not None else None,
        }

    def should_emit(self, result: dict[str, Any]) -> bool:
        return result.get("action") in ("created", "updated")

    def asset_extra_fields(self, result: dict[str, Any]) -> dict[str, Any]:
        return {"object_name": result.get("name"), "state": result.get("status"), "action": result.get("action")}


class _CreateSegmentOperator(_YandexAudienceOperator):
    """Find a segment of ``segment_type`` by name, or create it; differences are warned about or fail."""

    segment_type: ClassVar[str]
    emits_assets = True
    operator_extra_links = (YandexAudienceSegmentLink(),)
    ui_color = "#fff3cc"

    def __init__(self, *, name: str, on_definition_change: str = "warn", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if on_definition_change not in ("warn", "fail"):
            raise ValueError("on_definition_change must be 'warn' or 'fail'")
        self.name = name
        self.on_definition_change = on_definition_change

    def definition(self) -> dict[str, Any]:
        """The fields to send (None = not sent), as the list answer names them."""
        raise NotImplementedError

    def create(self, hook: YandexAudienceHook) -> dict[str, Any]:
        raise NotImplementedError

    def execute(self, context: Context) -> dict[str, Any]:
        hook = self.hook
        existing = hook.find_segment(self.name, self.segment_type)
        if existing is None:
            segment, action = self.create(hook), "created"
        else:
            segment, action = existing, "exists"
            wanted = {k: v for k, v in self.definition().items() if v is not None}
            changed = sorted(k for k, v in wanted.items() if k in existing and existing[k] != v)
            if changed:
                message = (
                    f"Yandex.Audience {self.segment_type} segment {existing['id']} ({self.name!r}) differs in "
                    f"{', '.join(changed)}; Yandex can only rename segments, so it was left as it is. "
                    "Delete it, or choose another name, to build it anew"
                )
                if self.on_definition_change == "fail":
                    raise AudienceValidationError(message, vendor=VENDOR)
                self.log.warning("%s", message)
        result = self._segment_result(context, segment, action=action)
        self.log.info("Yandex.Audience %s segment %r (%s): %s", self.segment_type, self.name, segment.get("id"), action)
        if action == "created":
            self._emit(context, result)
        return result


_CREATE_DOC = """

    Idempotent by name: when one of the login's own {kind} segments has ``name``, it is reused
    (``action="exists"``); Yandex cannot change a segment's definition, so a differing definition is
    logged as a warning, or fails the task with ``on_definition_change="fail"``.

    :param name: the segment's name, its idempotency key (templated).
    :param on_definition_change: ``warn`` (default) or ``fail`` when the existing segment differs.
    :return: ``{{"segment_id", "name", "type", "status", "url", "asset_uri", "action", ...}}``;
        ``action`` is ``created`` or ``exists``. Wait for ``processed`` with
        :class:`~airflow_audience_provider.sensors.yandex_audience.YandexAudienceSegmentProcessedSensor`.
"""


class YandexAudienceCreateMetrikaSegmentOperator(_CreateSegmentOperator):
    __doc__ = """Create a segment from a Yandex Metrica counter, goal or Metrica segment (``create_metrika``).

    .. seealso:: :ref:`howto/operator:YandexAudienceCreateMetrikaSegmentOperator`

    :param metrika_segment_type: ``counter_id``, ``goal_id`` or ``segment_id`` (templated).
    :param metrika_segment_id: the Metrica object's id (templated).
    :param device_matching_type: optional matching setting.""" + _CREATE_DOC.format(kind="Metrica")

    segment_type = "metrika"
    template_fields: Sequence[str] = ("name", "metrika_segment_type", "metrika_segment_id", "yandex_audience_conn_id")

    def __init__(
        self,
        *,
        metrika_segment_type: str,
        metrika_segment_id: int | str,
        device_matching_type: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.metrika_segment_type = metrika_segment_type
        self.metrika_segment_id = metrika_segment_id
        self.device_matching_type = device_matching_type

    def definition(self) -> dict[str, Any]:
        return {"metrika_segment_type": self.metrika_segment_type, "metrika_segment_id": int(self.metrika_segment_id)}

    def create(self, hook: YandexAudienceHook) -> dict[str, Any]:
        return hook.create_metrika_segment(
            self.name, self.metrika_segment_type, self.metrika_segment_id, self.device_matching_type
        )


class YandexAudienceCreateAppMetricaSegmentOperator(_CreateSegmentOperator):
    __doc__ = """Create a segment from an AppMetrica app or AppMetrica segment (``create_appmetrica``).

    .. seealso:: :ref:`howto/operator:YandexAudienceCreateAppMetricaSegmentOperator`

    :param app_metrica_segment_type: ``api_key`` or ``segment_id`` (templated).
    :param app_metrica_segment_id: the AppMetrica object's id (templated).
    :param device_matching_type: optional matching setting.""" + _CREATE_DOC.format(kind="AppMetrica")

    segment_type = "appmetrica"
    template_fields: Sequence[str] = (
        "name",
        "app_metrica_segment_type",
        "app_metrica_segment_id",
        "yandex_audience_conn_id",
    )

    def __init__(
        self,
        *,
        app_metrica_segment_type: str,
        app_metrica_segment_id: int | str,
        device_matching_type: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.app_metrica_segment_type = app_metrica_segment_type
        self.app_metrica_segment_id = app_metrica_segment_id
        self.device_matching_type = device_matching_type

    def definition(self) -> dict[str, Any]:
        return {
            "app_metrica_segment_type": self.app_metrica_segment_type,
            "app_metrica_segment_id": int(self.app_metrica_segment_id),
        }

    def create(self, hook: YandexAudienceHook) -> dict[str, Any]:
        return hook.create_appmetrica_segment(
            self.name, self.app_metrica_segment_type, self.app_metrica_segment_id, self.device_matching_type
        )


class YandexAudienceCreateGeoSegmentOperator(_CreateSegmentOperator):
    __doc__ = """Create a geo segment: circles around ``points`` (``create_geo``) or ``polygons``
    (``create_geo_polygon``). To change the places, create a new segment (``update_geo_points`` is
    switched off by Yandex).

    .. seealso:: :ref:`howto/operator:YandexAudienceCreateGeoSegmentOperator`

    :param geo_segment_type: ``last``, ``regular``, ``home``, ``work`` or ``condition`` (templated).
    :param points: ``[{"latitude", "longitude", "description"?}]`` for circles (templated).
    :param radius: circle radius in metres (with ``points``).
    :param polygons: ``[{"points": [...]}]`` instead of circles (templated).
    :param period_length: days (1-90); with ``times_quantity`` required for ``condition``.
    :param times_quantity: how many visit days within the period.
    :param device_matching_type: optional matching setting.""" + _CREATE_DOC.format(kind="geo")

    segment_type = "geo"
    template_fields: Sequence[str] = ("name", "geo_segment_type", "points", "polygons", "yandex_audience_conn_id")
    template_fields_renderers = {"points": "json", "polygons": "json"}

    def __init__(
        self,
        *,
        geo_segment_type: str,
        points: list[dict[str, Any]] | None = None,
        radius: int | None = None,
        polygons: list[dict[str, Any]] | None = None,
        period_length: int | None = None,
        times_quantity: int | None = None,
        device_matching_type: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if (points is None) == (polygons is None):
            raise ValueError("give either points (with radius) or polygons")
        if points is not None and radius is None:
            raise ValueError("circle geo segments need a radius in metres")
        self.geo_segment_type = geo_segment_type
        self.points = points
        self.radius = radius
        self.polygons = polygons
        self.period_length = period_length
        self.times_quantity = times_quantity
        self.device_matching_type = device_matching_type

    def definition(self) -> dict[str, Any]:
        return {
            "geo_segment_type": self.geo_segment_type,
            "radius": self.radius,
            "points": self.points,
            "polygons": self.polygons,
            "period_length": self.period_length,
            "times_quantity": self.times_quantity,
        }

    def create(self, hook: YandexAudienceHook) -> dict[str, Any]:
        if self.polygons is not None:
            return hook.create_geo_polygon_segment(
                self.name,
                self.geo_segment_type,
                self.polygons,
                period_length=self.period_length,
                times_quantity=self.times_quantity,
                device_matching_type=self.device_matching_type,
            )
        assert self.points is not None and self.radius is not None
        return hook.create_geo_segment(
            self.name,
            self.geo_segment_type,
            self.radius,
            self.points,
            period_length=self.period_length,
            times_quantity=self.times_quantity,
            device_matching_type=self.device_matching_type,
        )


class YandexAudienceCreatePixelSegmentOperator(_CreateSegmentOperator):
    __doc__ = """Create a segment of the users a pixel saw (``create_pixel``).

    .. seealso:: :ref:`howto/operator:YandexAudienceCreatePixelSegmentOperator`

    :param pixel_id: the pixel (templated).
    :param period_length: days (1-90).
    :param times_quantity: threshold of times the pixel saw the user.
    :param times_quantity_operation: ``lt``, ``eq`` or ``gt`` (clients' values; unverified).
    :param utm: optional filters: ``utm_source``, ``utm_medium``, ``utm_campaign``, ``utm_content``, ``utm_term``.
    """ + _CREATE_DOC.format(kind="pixel")

    segment_type = "pixel"
    template_fields: Sequence[str] = ("name", "pixel_id", "utm", "yandex_audience_conn_id")

    def __init__(
        self,
        *,
        pixel_id: int | str,
        period_length: int | None = None,
        times_quantity: int | None = None,
        times_quantity_operation: str | None = None,
        utm: dict[str, str] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.pixel_id = pixel_id
        self.period_length = period_length
        self.times_quantity = times_quantity
        self.times_quantity_operation = times_quantity_operation
        self.utm = utm

    def definition(self) -> dict[str, Any]:
        return {
            "pixel_id": int(self.pixel_id),
            "period_length": self.period_length,
            "times_quantity": self.times_quantity,
            "times_quantity_operation": self.times_quantity_operation,
            **(self.utm or {}),
        }

    def create(self, hook: YandexAudienceHook) -> dict[str, Any]:
        return hook.create_pixel_segment(
            self.name,
            self.pixel_id,
            period_length=self.period_length,
            times_quantity=self.times_quantity,
            times_quantity_operation=self.times_quantity_operation,
            **(self.utm or {}),
        )


class YandexAudienceCreateLookalikeSegmentOperator(_CreateSegmentOperator):
    __doc__ = """Create a lookalike (similar users) segment from one of the login's own segments (``create_lookalike``).

    The source must be ``processed``; Yandex builds lookalikes only from own segments, not shared ones.

    .. seealso:: :ref:`howto/operator:YandexAudienceCreateLookalikeSegmentOperator`

    :param source_segment_id: the source segment (``lookalike_link``) (templated).
    :param lookalike_value: the similarity setting, passed as is (its direction is ambiguous in the
        docs we read) (templated).
    :param maintain_device_distribution: keep the source's device mix.
    :param maintain_geo_distribution: keep the source's city mix.""" + _CREATE_DOC.format(kind="lookalike")

    segment_type = "lookalike"
    template_fields: Sequence[str] = ("name", "source_segment_id", "lookalike_value", "yandex_audience_conn_id")

    def __init__(
        self,
        *,
        source_segment_id: int | str,
        lookalike_value: int | str,
        maintain_device_distribution: bool | None = None,
        maintain_geo_distribution: bool | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.source_segment_id = source_segment_id
        self.lookalike_value = lookalike_value
        self.maintain_device_distribution = maintain_device_distribution
        self.maintain_geo_distribution = maintain_geo_distribution

    def definition(self) -> dict[str, Any]:
        return {
            "lookalike_link": int(_segment_ref(self.source_segment_id)),
            "lookalike_value": int(self.lookalike_value),
            "maintain_device_distribution": self.maintain_device_distribution,
            "maintain_geo_distribution": self.maintain_geo_distribution,
        }

    def create(self, hook: YandexAudienceHook) -> dict[str, Any]:
        return hook.create_lookalike_segment(
            self.name,
            _segment_ref(self.source_segment_id),
            int(self.lookalike_value),
            maintain_device_distribution=self.maintain_device_distribution,
            maintain_geo_distribution=self.maintain_geo_distribution,
        )


class YandexAudienceRenameSegmentOperator(_YandexAudienceOperator):
    """Rename a segment (the only editable field). Renaming to the current name sends nothing.

    .. seealso:: :ref:`howto/operator:YandexAudienceRenameSegmentOperator`

    :param segment_id: (templated).
    :param name: the new name (templated).
    :return: the segment result with ``action`` ``renamed`` or ``unchanged``.
    """

    template_fields: Sequence[str] = ("segment_id", "name", "yandex_audience_conn_id")
    operator_extra_links = (YandexAudienceSegmentLink(),)

    def __init__(self, *, segment_id: int | str, name: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.segment_id = segment_id
        self.name = name

    def execute(self, context: Context) -> dict[str, Any]:
        hook = self.hook
        segment = hook.get_segment(_segment_ref(self.segment_id))
        if segment.get("name") == self.name:
            return self._segment_result(context, segment, action="unchanged")
        renamed = hook.update_segment(segment["id"], self.name)
        result = self._segment_result(context, {**segment, **renamed}, action="renamed")
        self._emit(context, result)  # lineage only: this operator emits no Asset events
        return result


class YandexAudienceDeleteSegmentOperator(_YandexAudienceOperator):
    """Delete segments for good (Yandex has no undelete for segments).

    .. seealso:: :ref:`howto/operator:YandexAudienceDeleteSegmentOperator`

    :param segment_ids: one id or a list of ids (templated).
    :param missing_ok: a segment that is already gone counts as deleted (reruns succeed).
    :param on_item_error: ``fail`` (default): after trying every id, fail listing the ids Yandex refused
        (e.g. segments of another login); ``warn``: log them and succeed.
    :return: ``{"deleted": [ids], "missing": [ids], "failed": [{"input", "error", "code", "message"}]}``.
    """

    template_fields: Sequence[str] = ("segment_ids", "yandex_audience_conn_id")
    ui_color = "#ffe6e6"

    def __init__(
        self,
        *,
        segment_ids: int | str | list[int | str],
        missing_ok: bool = True,
        on_item_error: str = "fail",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.segment_ids = segment_ids
        self.missing_ok = missing_ok
        self.on_item_error = partial_failure_mode("on_item_error", on_item_error)

    def execute(self, context: Context) -> dict[str, Any]:
        hook = self.hook
        ids = self.segment_ids if isinstance(self.segment_ids, list | tuple) else [self.segment_ids]
        deleted: list[str] = []
        missing: list[str] = []
        failed: list[dict[str, Any]] = []
        for ref in (_segment_ref(i) for i in ids):
            try:
                hook.delete_segment(ref)
            except AudienceNotFoundError as exc:
                if not self.missing_ok:
                    failed.append(_item_error(ref, exc))
                else:
                    missing.append(ref)
                continue
            except (AudiencePermissionError, AudienceValidationError) as exc:
                failed.append(_item_error(ref, exc))
                continue
            deleted.append(ref)
            self.log.info("Deleted Yandex.Audience segment %s", ref)
            # lineage only: delete operators emit no Asset events
            self.emit_asset_event(context, hook.segment_asset_uri(ref), {"action": "deleted"})
        self._settle_items("Deleting Yandex.Audience segments", failed)
        return {"deleted": deleted, "missing": missing, "failed": failed}


class YandexAudienceReprocessSegmentOperator(_YandexAudienceOperator):
    """Re-run a segment's matching (e.g. after ``few_data``); Yandex allows two per segment per day.

    .. seealso:: :ref:`howto/operator:YandexAudienceReprocessSegmentOperator`

    :param segment_id: (templated).
    :return: the segment result with ``status`` ``is_processed``.
    """

    template_fields: Sequence[str] = ("segment_id", "yandex_audience_conn_id")
    operator_extra_links = (YandexAudienceSegmentLink(),)

    def __init__(self, *, segment_id: int | str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.segment_id = segment_id

    def execute(self, context: Context) -> dict[str, Any]:
        hook = self.hook
        segment = hook.get_segment(_segment_ref(self.segment_id))
        self._push_segment(context, segment["id"])
        hook.reprocess_segment(segment["id"])
        result = self._segment_result(context, {**segment, "status": "is_processed"}, action="reprocessed")
        self._emit(context, result)  # lineage only: this operator emits no Asset events
        return result


class YandexAudienceGrantSegmentAccessOperator(_YandexAudienceOperator):
    """Share a segment with other Yandex logins (e.g. an agency's Direct login), idempotently.

    A login that already has a grant with the same comment is left alone.

    .. seealso:: :ref:`howto/operator:YandexAudienceGrantSegmentAccessOperator`

    :param segment_id: (templated).
    :param user_logins: one login or a list (templated).
    :param comment: up to 255 characters (templated).
    :param permission: ``view`` or ``edit``; sent only when given (undocumented field, clients send it).
    :param on_item_error: ``fail`` (default): after trying every login, fail listing the logins Yandex
        refused; ``warn``: log them and succeed.
    :return: ``{"segment_id", "granted": [logins], "unchanged": [logins], "failed": [{"input", ...}]}``.
    """

    template_fields: Sequence[str] = ("segment_id", "user_logins", "comment", "yandex_audience_conn_id")
    operator_extra_links = (YandexAudienceSegmentLink(),)

    def __init__(
        self,
        *,
        segment_id: int | str,
        user_logins: str | list[str],
        comment: str | None = None,
        permission: str | None = None,
        on_item_error: str = "fail",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.segment_id = segment_id
        self.user_logins = user_logins
        self.comment = comment
        self.permission = permission
        self.on_item_error = partial_failure_mode("on_item_error", on_item_error)

    def execute(self, context: Context) -> dict[str, Any]:
        hook = self.hook
        sid = _segment_ref(self.segment_id)
        self._push_segment(context, sid)
        logins = [self.user_logins] if isinstance(self.user_logins, str) else list(self.user_logins)
        current = {g.get("user_login"): g for g in hook.list_grants(sid)}
        granted: list[str] = []
        unchanged: list[str] = []
        failed: list[dict[str, Any]] = []
        for login in logins:
            grant = current.get(login)
            if grant is not None and (self.comment is None or (grant.get("comment") or "") == self.comment):
                unchanged.append(login)
                continue
            try:
                hook.create_grant(sid, login, comment=self.comment, permission=self.permission)
            except AudienceValidationError as exc:  # this login refused; the others may still be granted
                failed.append(_item_error(login, exc))
                continue
            granted.append(login)
        self.log.info("Yandex.Audience segment %s: granted to %s, already granted to %s", sid, granted, unchanged)
        self._settle_items(f"Granting Yandex.Audience segment {sid}", failed)
        return {"segment_id": int(sid), "granted": granted, "unchanged": unchanged, "failed": failed}


class YandexAudienceRevokeSegmentAccessOperator(_YandexAudienceOperator):
    """Remove grants from a segment.

    .. seealso:: :ref:`howto/operator:YandexAudienceRevokeSegmentAccessOperator`

    :param segment_id: (templated).
    :param user_logins: one login or a list (templated).
    :param missing_ok: a login without a grant counts as revoked.
    :return: ``{"segment_id", "revoked": [logins], "missing": [logins]}``.
    """

    template_fields: Sequence[str] = ("segment_id", "user_logins", "yandex_audience_conn_id")

    def __init__(
        self, *, segment_id: int | str, user_logins: str | list[str], missing_ok: bool = True, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.segment_id = segment_id
        self.user_logins = user_logins
        self.missing_ok = missing_ok

    def execute(self, context: Context) -> dict[str, Any]:
        hook = self.hook
        sid = _segment_ref(self.segment_id)
        logins = [self.user_logins] if isinstance(self.user_logins, str) else list(self.user_logins)
        current = {g.get("user_login") for g in hook.list_grants(sid)}
        revoked, missing = [], []
        for login in logins:
            if login not in current:
                if not self.missing_ok:
                    raise AudienceNotFoundError(f"{login} has no grant on segment {sid}", vendor=VENDOR)
                missing.append(login)
                continue
            hook.delete_grant(sid, login)
            revoked.append(login)
        return {"segment_id": int(sid), "revoked": revoked, "missing": missing}


class YandexAudienceAddDelegateOperator(_YandexAudienceOperator):
    """Add a delegate to the login's account, or change its rights; unchanged delegates are left alone.

    .. seealso:: :ref:`howto/operator:YandexAudienceAddDelegateOperator`

    :param user_login: the delegate's login (templated).
    :param perm: ``view`` (read-only) or ``edit`` (full access) (templated).
    :param comment: up to 255 characters (templated).
    :return: ``{"user_login", "perm", "action"}``; ``action`` is ``added``, ``changed`` or ``unchanged``.
    """

    template_fields: Sequence[str] = ("user_login", "perm", "comment", "yandex_audience_conn_id")

    def __init__(self, *, user_login: str, perm: str = "view", comment: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.user_login = user_login
        self.perm = perm
        self.comment = comment

    def execute(self, context: Context) -> dict[str, Any]:
        hook = self.hook
        current = next((d for d in hook.list_delegates() if d.get("user_login") == self.user_login), None)
        if (
            current is not None
            and current.get("perm") == self.perm
            and (self.comment is None or (current.get("comment") or "") == self.comment)
        ):
            action = "unchanged"
        else:
            hook.add_delegate(self.user_login, self.perm, self.comment)
            action = "added" if current is None else "changed"
        return {"user_login": self.user_login, "perm": self.perm, "action": action}


class YandexAudienceRemoveDelegateOperator(_YandexAudienceOperator):
    """Remove a delegate from the login's account.

    .. seealso:: :ref:`howto/operator:YandexAudienceRemoveDelegateOperator`

    :param user_login: (templated).
    :param missing_ok: a login that is no delegate counts as removed.
    :return: ``{"user_login", "removed"}``.
    """

    template_fields: Sequence[str] = ("user_login", "yandex_audience_conn_id")

    def __init__(self, *, user_login: str, missing_ok: bool = True, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.user_login = user_login
        self.missing_ok = missing_ok

    def execute(self, context: Context) -> dict[str, Any]:
        try:
            self.hook.delete_delegate(self.user_login)
        except AudienceNotFoundError:
            if not self.missing_ok:
                raise
            return {"user_login": self.user_login, "removed": False}
        return {"user_login": self.user_login, "removed": True}


class YandexAudienceCreateOrUpdatePixelOperator(_YandexAudienceOperator):
    """Create a pixel, idempotently by name; or, given ``pixel_id``, rename that pixel.

    .. seealso:: :ref:`howto/operator:YandexAudienceCreateOrUpdatePixelOperator`

    :param name: the pixel's name (templated).
    :param pixel_id: rename this pixel instead of finding one by name (templated).
    :return: ``{"pixel_id", "name", "url", "action"}``; ``action`` is ``created``, ``renamed`` or ``unchanged``.
    """

    template_fields: Sequence[str] = ("name", "pixel_id", "yandex_audience_conn_id")

    def __init__(self, *, name: str, pixel_id: int | str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.name = name
        self.pixel_id = pixel_id

    def execute(self, context: Context) -> dict[str, Any]:
        hook = self.hook
        pixels = hook.list_pixels()
        if self.pixel_id not in (None, ""):
            pixel = next((p for p in pixels if str(p.get("id")) == _segment_ref(self.pixel_id)), None)
            if pixel is None:
                raise AudienceNotFoundError(f"Yandex.Audience pixel {self.pixel_id} not found", vendor=VENDOR)
            if pixel.get("name") == self.name:
                action = "unchanged"
            else:
                pixel, action = hook.update_pixel(pixel["id"], self.name), "renamed"
        else:
            pixel = next((p for p in pixels if p.get("name") == self.name), None)
            action = "unchanged"
            if pixel is None:
                pixel, action = hook.create_pixel(self.name), "created"
        return {"pixel_id": pixel.get("id"), "name": pixel.get("name"), "url": pixel.get("url"), "action": action}


class YandexAudienceDeletePixelOperator(_YandexAudienceOperator):
    """Delete a pixel (or restore a deleted one with ``undelete=True``).

    .. seealso:: :ref:`howto/operator:YandexAudienceDeletePixelOperator`

    :param pixel_id: (templated).
    :param undelete: restore the pixel instead of deleting it.
    :param missing_ok: a pixel already in the wanted state counts as done.
    :return: ``{"pixel_id", "action"}``; ``action`` is ``deleted``, ``undeleted`` or ``unchanged``.
    """

    template_fields: Sequence[str] = ("pixel_id", "yandex_audience_conn_id")
    ui_color = "#ffe6e6"

    def __init__(self, *, pixel_id: int | str, undelete: bool = False, missing_ok: bool = True, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.pixel_id = pixel_id
        self.undelete = undelete
        self.missing_ok = missing_ok

    def execute(self, context: Context) -> dict[str, Any]:
        hook = self.hook
        pid = _segment_ref(self.pixel_id)
        try:
            if self.undelete:
                hook.undelete_pixel(pid)
            else:
                hook.delete_pixel(pid)
        except AudienceNotFoundError:
            if not self.missing_ok:
                raise
            return {"pixel_id": int(pid), "action": "unchanged"}
        return {"pixel_id": int(pid), "action": "undeleted" if self.undelete else "deleted"}
