"""Criteo operators: contact-list segments, contact-list uploads and audiences.

Every operator is idempotent on rerun: segments are found by name within the account and retailer
(Retail Media) or the advertiser (Marketing Solutions), audiences by name, before anything is
created. Criteo answers bulk calls with *partial approval* (HTTP 200 with per-item problems); each
operator maps the problems to the items it sent and, with ``on_partial_failure="fail"`` (the
default), fails the task naming them, or with ``"warn"`` logs them and carries on.
"""

from __future__ import annotations

import dataclasses
import json
import threading
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from airflow_audience_provider.connections import CRITEO
from airflow_audience_provider.links.criteo import CriteoAudienceLink, CriteoSegmentLink
from airflow_audience_provider.operators.base import AudienceBaseOperator, ContactListUploadMixin

if TYPE_CHECKING:
    from airflow.sdk import Context

    from airflow_audience_provider.hooks.criteo import BulkResult, CriteoHook

_HOOK = "airflow_audience_provider.hooks.criteo.CriteoHook"
SEGMENT_ASSET_ALIAS = "criteo-segments"
AUDIENCE_ASSET_ALIAS = "criteo-audiences"
PARTIAL_FAILURE_MODES = ("fail", "warn")
UPLOAD_MODES = ("add", "remove", "replace", "sync")


class _CriteoOperator(AudienceBaseOperator):
    hook_path = _HOOK
    default_asset_alias = SEGMENT_ASSET_ALIAS

    def __init__(
        self,
        *,
        criteo_conn_id: str = CRITEO.default_conn_name,
        on_partial_failure: str = "fail",
        **kwargs: Any,
    ) -> None:
        super().__init__(conn_id=criteo_conn_id, **kwargs)
        if on_partial_failure not in PARTIAL_FAILURE_MODES:
            raise ValueError(f"on_partial_failure must be one of {PARTIAL_FAILURE_MODES}, got {on_partial_failure!r}")
        self.criteo_conn_id = criteo_conn_id
        self.on_partial_failure = on_partial_failure

    @property
    def hook(self) -> CriteoHook:
        self.conn_id = self.criteo_conn_id  # may have been templated
        return super().hook

    def _remember_deleted(self, context: Context, kind: str, ids: list[str]) -> None:
        """Report deleted objects to OpenLineage: they changed. Delete operators do not emit Asset
        events (``emits_assets`` is off), so this records lineage only."""
        owner = self.hook.owner(getattr(self, "owner_id", None) or None)
        for object_id in ids:
            self.emit_asset_event(context, self.hook.asset_uri(kind, str(object_id), owner), {"action": "deleted"})

    def check_bulk(self, result: BulkResult, what: str) -> list[dict[str, Any]]:
        """Fail or warn on the refused items of a bulk call; returns them (JSON-safe)."""
        from airflow_audience_provider.core.errors import AudiencePartialFailure

        failed = result.failed
        if not failed:
            return []
        message = (
            f"Criteo refused {len(failed)} of {len(result.items)} item(s) when {what}: {result.describe_failures()}"
        )
        if self.on_partial_failure == "fail":
            raise AudiencePartialFailure(message, vendor="criteo", items=failed)
        self.log.warning("%s (on_partial_failure='warn': carrying on)", message)
        return failed


def _native(value: Any) -> Any:
    """An upstream dict or list rendered into a template string (``"{'path': ...}"``) back as the value."""
    if isinstance(value, str) and value.strip()[:1] in ("{", "["):
        import ast

        try:
            return ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            return value
    return value


def _as_list(value: str | Sequence[str] | None) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            return [str(v) for v in json.loads(text)]
        return [v.strip() for v in text.split(",") if v.strip()]
    return [str(v) for v in value]


class CriteoCreateOrUpdateSegmentOperator(_CriteoOperator):
    """Create a Criteo contact-list segment, or update the one with the same name.

    The name is the idempotency key within the account and retailer (Retail Media) or the advertiser
    (Marketing Solutions): a rerun finds the segment and never creates a second one; two workers
    racing to create it end with one segment (``name-must-be-unique`` is answered by reusing it).
    An unchanged description sends no write. The identifier type of a segment cannot change (a
    Criteo rule): a different ``identifier_type`` for an existing name fails the task.

    .. seealso:: :ref:`howto/operator:CriteoCreateOrUpdateSegmentOperator`

    :param name: the segment's name (templated).
    :param retailer_id: Retail Media retailer (templated); not used by Marketing Solutions.
    :param identifier_type: ``Email`` (default), ``CustomerId``, ``PhoneNumber``, ``IdentityLink``,
        ``UserIdentifier`` (Retail Media; fixed at creation) (templated).
    :param description: (templated); None leaves it as it is.
    :param owner_id: Retail Media account or Marketing Solutions advertiser; default from the
        connection (templated).
    :param on_partial_failure: ``fail`` (default) or ``warn`` when Criteo refuses the item.
    :param emit_asset: record an Asset event ``criteo://<account>/segment/<id>`` (alias ``criteo-segments``).
    :return: ``{"segment_id", "name", "retailer_id", "identifier_type", "action", "url", "asset_uri",
        "problems"}``; ``action`` is ``created``, ``updated`` or ``unchanged``.
    """

    template_fields: Sequence[str] = (
        "name",
        "retailer_id",
        "identifier_type",
        "description",
        "owner_id",
        "criteo_conn_id",
    )
    operator_extra_links = (CriteoSegmentLink(),)
    emits_assets = True
    ui_color = "#fff0e6"

    def __init__(
        self,
        *,
        name: str,
        retailer_id: str | None = None,
        identifier_type: str = "Email",
        description: str | None = None,
        owner_id: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.name = name
        self.retailer_id = retailer_id
        self.identifier_type = identifier_type
        self.description = description
        self.owner_id = owner_id

    def execute(self, context: Context) -> dict[str, Any]:
        from airflow_audience_provider.core.errors import AudienceValidationError
        from airflow_audience_provider.hooks.criteo import RM_SEGMENT_IDENTIFIER_TYPES

        hook = self.hook
        name = (self.name or "").strip()
        if not name:
            raise AudienceValidationError("A Criteo segment needs a non-empty name", vendor="criteo")
        rm = hook.is_retail_media
        owner = hook.owner(self.owner_id or None)
        id_type = self.identifier_type
        if rm:
            if not self.retailer_id:
                raise AudienceValidationError("retailer_id is required for a Retail Media segment", vendor="criteo")
            id_type = hook.vendor_identifier_type(self.identifier_type)
            if id_type not in RM_SEGMENT_IDENTIFIER_TYPES:
                raise AudienceValidationError(
                    f"A Retail Media segment cannot hold {id_type} identifiers; use one of "
                    f"{list(RM_SEGMENT_IDENTIFIER_TYPES)}",
                    vendor="criteo",
                )
        problems: list[dict[str, Any]] = []
        matches = hook.find_segments_by_name(name, owner_id=owner, retailer_id=self.retailer_id)
        if len(matches) > 1:
            ids = ", ".join(str(m["id"]) for m in matches)
            raise AudienceValidationError(
                f"Several Criteo segments are named {name!r} ({ids}); rename or delete all but one", vendor="criteo"
            )
        segment = matches[0] if matches else None
        action = "unchanged"
        if segment is None:
            attributes: dict[str, Any] = {"name": name}
            if self.description is not None:
                attributes["description"] = self.description
            if rm:
                attributes.update(retailerId=str(self.retailer_id), contactList={"identifierType": id_type})
            else:
                attributes["contactList"] = {}
            result = hook.bulk_create_audience_segments([attributes], owner_id=owner)
            item = result.items[0]
            if item["status"] == "failed" and any(p.get("code") == "name-must-be-unique" for p in item["problems"]):
                # Another run created it between our search and our create: use that one.
                again = hook.find_segments_by_name(name, owner_id=owner, retailer_id=self.retailer_id)
                if again:
                    segment, action = again[0], "unchanged"
            if segment is None:
                problems = self.check_bulk(result, f"creating segment {name!r}")
                if result.data:
                    segment, action = result.data[0], "created"
        if segment is None:
            return {"segment_id": None, "name": name, "action": "failed", "problems": problems}
        attributes = segment.get("attributes") or {}
        current_type = (attributes.get("contactList") or {}).get("identifierType")
        if rm and current_type and str(current_type).lower() != str(id_type).lower():
            raise AudienceValidationError(
                f"Criteo segment {name!r} ({segment['id']}) holds {current_type} identifiers; the identifier type "
                f"cannot change, so create a segment with another name for {id_type}",
                vendor="criteo",
            )
        if action == "unchanged" and self.description is not None and attributes.get("description") != self.description:
            result = hook.bulk_update_audience_segments(
                [{"id": segment["id"], "description": self.description}], owner_id=owner
            )
            problems = self.check_bulk(result, f"updating segment {name!r}")
            if result.data:
                segment, action = result.data[0], "updated"
        segment_id = str(segment["id"])
        url = hook.segment_url(segment_id, owner)
        CriteoSegmentLink.persist(context, url)
        context["ti"].xcom_push(key="segment_id", value=segment_id)
        asset_uri = hook.asset_uri("segment", segment_id, owner)
        self.log.info("Criteo segment %r (%s): %s", name, segment_id, action)
        self.emit_asset_event(context, asset_uri, {"object_name": name, "action": action, "link": url})
        return {
            "segment_id": segment_id,
            "name": name,
            "retailer_id": (segment.get("attributes") or {}).get("retailerId"),
            "identifier_type": current_type or id_type,
            "action": action,
            "url": url,
            "asset_uri": asset_uri,
            "problems": problems,
        }


class CriteoDeleteSegmentsOperator(_CriteoOperator):
    """Delete Criteo audience segments.

    Criteo refuses to delete a segment that an audience uses (or that served impressions); the task
    then names the audiences that use it, so you know what to change first.

    .. seealso:: :ref:`howto/operator:CriteoDeleteSegmentsOperator`

    :param segment_ids: one id, a comma-separated string or a list (templated).
    :param missing_ok: a segment that does not exist counts as deleted (reruns succeed).
    :param owner_id: account or advertiser; default from the connection (templated).
    :param on_partial_failure: ``fail`` (default) or ``warn`` when some segments cannot be deleted.
    :return: ``{"deleted": [ids], "missing": [ids], "not_deleted": [{"id", "code", "reason", "used_by_audiences"}]}``.
    """

    template_fields: Sequence[str] = ("segment_ids", "owner_id", "criteo_conn_id")
    ui_color = "#ffe6e6"

    def __init__(
        self,
        *,
        segment_ids: str | Sequence[str],
        missing_ok: bool = True,
        owner_id: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.segment_ids = segment_ids
        self.missing_ok = missing_ok
        self.owner_id = owner_id

    def execute(self, context: Context) -> dict[str, Any]:
        from airflow_audience_provider.core.errors import AudiencePartialFailure

        ids = _as_list(self.segment_ids)
        if not ids:
            return {"deleted": [], "missing": [], "not_deleted": []}
        result = self.hook.bulk_delete_audience_segments(ids, owner_id=self.owner_id or None)
        deleted, missing, not_deleted = [], [], []
        for item in result.items:
            codes = {p.get("code") for p in item["problems"]}
            if item["status"] == "ok":
                deleted.append(item["id"])
            elif codes == {"segment-not-found"} and self.missing_ok:
                missing.append(item["id"])
            else:
                not_deleted.append(
                    {
                        "id": item["id"],
                        "code": ",".join(sorted(c for c in codes if c)) or None,
                        "reason": "; ".join(p.get("detail") or p.get("title") or "" for p in item["problems"]),
                        "used_by_audiences": item.get("used_by_audiences", []),
                    }
                )
        summary = {"deleted": deleted, "missing": missing, "not_deleted": not_deleted}
        self.log.info("Criteo segments deleted %s, missing %s, not deleted %s", deleted, missing, not_deleted)
        self._remember_deleted(context, "segment", deleted)
        if not_deleted:
            message = "Criteo did not delete segment(s): " + " | ".join(
                f"{n['id']}: {n['reason']}" for n in not_deleted
            )
            if self.on_partial_failure == "fail":
                context["ti"].xcom_push(key="delete_result", value=summary)
                raise AudiencePartialFailure(message, vendor="criteo", items=not_deleted)
            self.log.warning("%s (on_partial_failure='warn': carrying on)", message)
        return summary


class CriteoUploadContactListOperator(ContactListUploadMixin, _CriteoOperator):
    """Upload identifiers to a Criteo contact-list segment with the contact-list engine.

    Identifiers are read from a file or an upstream result, normalised, validated and hashed by the
    engine (the ``criteo`` rules: e-mails trimmed, lower-cased and SHA-256 hashed; customer ids sent
    as given), de-duplicated and sent in requests of at most 50,000. Modes:

    * ``sync`` (incremental): the engine keeps a snapshot of what was sent last time and sends only the
      additions and removals; the first run replaces the list;
    * ``replace``: clear the list, then add everything (not atomic: avoid running it close to the
      00:00 / 12:00 UTC computation);
    * ``add`` / ``remove``: add or remove the given identifiers, leaving the rest.

    Add and remove requests are retried on transient errors: adding or removing the same identifiers
    twice leaves the same list, and the counts come from the answer that succeeded, so nothing is
    double-counted. If a chunk fails for good, the task fails with the counts of what Criteo accepted
    before, and the snapshot is not advanced (the next sync sends the difference again).

    .. seealso:: :ref:`howto/operator:CriteoUploadContactListOperator`

    :param segment_id: the contact-list segment (templated), e.g. from
        :class:`CriteoCreateOrUpdateSegmentOperator`.
    :param source: a path or URL of the file, or an upstream XCom value (path or ``{"path", "format",
        "column"}``) (templated).
    :param identifier_type: ``email`` (default), ``phone``, ``customer_id``, ``sha256`` (already hashed
        e-mails) or, Marketing Solutions only, ``maid`` (templated).
    :param mode: ``sync`` (default), ``replace``, ``add`` or ``remove``.
    :param source_options: ``format``, ``column``, ``encoding``, ``delimiter``, ``has_header`` (templated).
    :param snapshot_base: where ``sync`` keeps snapshots (default under ``$AIRFLOW_HOME``) (templated).
    :param read_workers: parallel workers that normalise and hash the list: threads with the
        ``fast`` extra (its compiled kernel releases the GIL), processes without. 1 (default) works
        in the task's own thread; 2 suits a worker slot with two cores.
    :param max_identifiers_per_request: at most 50,000 (Criteo's limit).
    :param max_invalid_share: fail before sending when more rows than this share are invalid.
    :param max_removal_share: ``sync`` fails before sending when it would remove more than this share.
    :param allow_mass_removal: let ``sync`` remove any share.
    :param allow_empty: an input without valid identifiers clears the list (``sync``/``replace``).
    :param fetch_statistics: read the contact-list statistics after the upload.
    :param owner_id: account or advertiser for the segment and statistics reads (templated).
    :return: ``{"segment_id", "mode", "identifier_type", "rows", "valid", "invalid", "duplicate", "added",
        "removed", "sent", "criteo_valid", "criteo_invalid", "chunks_sent", "chunks_total", "status",
        "statistics", "finished_at", "url", "asset_uri"}``. ``invalid`` is our count (rows we could not
        normalise), ``criteo_invalid`` Criteo's ``nbInvalidIdentifiers``.
    """

    template_fields: Sequence[str] = (
        "segment_id",
        "source",
        "identifier_type",
        "source_options",
        "snapshot_base",
        "owner_id",
        "criteo_conn_id",
    )
    template_fields_renderers = {"source_options": "json"}
    operator_extra_links = (CriteoSegmentLink(),)
    emits_assets = True
    ui_color = "#fff0e6"

    def __init__(
        self,
        *,
        segment_id: str,
        source: Any,
        identifier_type: str = "email",
        mode: str = "sync",
        source_options: dict[str, Any] | None = None,
        snapshot_base: str | None = None,
        read_workers: int = 1,
        max_identifiers_per_request: int = 50_000,
        max_invalid_share: float = 0.1,
        max_removal_share: float = 0.2,
        allow_mass_removal: bool = False,
        allow_empty: bool = False,
        fetch_statistics: bool = True,
        owner_id: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if mode not in UPLOAD_MODES:
            raise ValueError(f"mode must be one of {UPLOAD_MODES}, got {mode!r}")
        if not 1 <= int(max_identifiers_per_request) <= 50_000:
            raise ValueError("max_identifiers_per_request must be between 1 and 50,000 (Criteo's limit)")
        self.segment_id = segment_id
        self.source = source
        self.identifier_type = identifier_type
        self.mode = mode
        self.source_options = source_options
        self.snapshot_base = snapshot_base
        self.read_workers = read_workers
        self.max_identifiers_per_request = int(max_identifiers_per_request)
        self.max_invalid_share = max_invalid_share
        self.max_removal_share = max_removal_share
        self.allow_mass_removal = allow_mass_removal
        self.allow_empty = allow_empty
        self.fetch_statistics = fetch_statistics
        self.owner_id = owner_id

    def execute(self, context: Context) -> dict[str, Any]:
        from airflow_audience_provider.core.errors import AudienceError, AudienceValidationError
        from airflow_audience_provider.identifiers import (
            ContactListError,
            SendError,
            SyncOptions,
            get_rule,
            sync_contact_list,
        )

        cancel = self.cancel_event()
        hook = self.hook
        segment_id = str(self.segment_id).strip()
        owner = self.owner_id or None
        try:
            rule = get_rule("criteo", str(self.identifier_type).lower())
        except (KeyError, ValueError) as exc:
            raise AudienceValidationError(f"Unknown identifier type for Criteo: {exc}", vendor="criteo") from None
        vendor_type = hook.vendor_identifier_type(rule.identifier_type.value)
        if self.max_identifiers_per_request < (rule.max_ids_per_chunk or 50_000):
            # Smaller requests change no output value: keep the rule version, so snapshots stay comparable.
            rule = dataclasses.replace(rule, max_ids_per_chunk=self.max_identifiers_per_request)
        segment = hook.get_audience_segment(segment_id, owner)
        if segment is None:
            raise AudienceValidationError(
                f"Criteo segment {segment_id} does not exist for this account", vendor="criteo"
            )
        holds = ((segment.get("attributes") or {}).get("contactList") or {}).get("identifierType")
        if holds and str(holds).lower() != vendor_type.lower():
            raise AudienceValidationError(
                f"Criteo segment {segment_id} holds {holds} identifiers, but identifier_type "
                f"{self.identifier_type!r} sends {vendor_type}",
                vendor="criteo",
            )
        url = hook.segment_url(segment_id, owner)
        CriteoSegmentLink.persist(context, url)
        context["ti"].xcom_push(key="segment_id", value=segment_id)

        accepted = {"criteo_valid": 0, "criteo_invalid": 0, "requests": 0}
        lock = threading.Lock()  # the engine may send chunks concurrently

        def on_chunk(operation: str, answer: dict[str, Any]) -> None:
            with lock:
                accepted["criteo_valid"] += answer["valid"]
                accepted["criteo_invalid"] += answer["invalid"]
                accepted["requests"] += 1

        sender = _ModeSender(hook, segment_id, vendor_type, on_chunk, self.mode)
        options = SyncOptions(
            allow_empty=self.allow_empty and self.mode in ("sync", "replace"),
            max_invalid_share=self.max_invalid_share,
            max_removal_share=self.max_removal_share,
            allow_mass_removal=self.allow_mass_removal,
            cancel=cancel,
        )
        source_options = dict(self.source_options or {})
        source = _native(self.source)
        try:
            sync_result = sync_contact_list(
                source,
                rule,
                sender,
                destination_key=f"{hook.api}-{segment_id}",
                snapshot_base=self.snapshot_base,
                incremental=self.mode == "sync",
                options=options,
                workers=self.read_workers,
                **source_options,
            )
        except SendError as exc:
            partial = self._result(exc.result or {}, accepted, segment_id, vendor_type, url, hook, owner, "failed")
            context["ti"].xcom_push(key="upload_result", value=partial)
            raise AudienceError(
                f"Upload to Criteo segment {segment_id} failed after {partial['chunks_sent']} of "
                f"{partial['chunks_total']} chunk(s); Criteo accepted {partial['criteo_valid']} identifier(s) "
                f"before the failure (reported in XCom 'upload_result'); the snapshot was not advanced, so the "
                f"next sync sends the rest: {exc.__cause__ or exc}",
                vendor="criteo",
            ) from exc
        except ContactListError as exc:
            raise AudienceValidationError(
                f"Contact list for Criteo segment {segment_id}: {exc}", vendor="criteo"
            ) from exc
        result = self._result(sync_result, accepted, segment_id, vendor_type, url, hook, owner, "sent")
        if self.fetch_statistics:
            result["statistics"] = hook.get_audience_segment_contact_list_statistics(segment_id, owner)
        self.log.info(
            "Criteo segment %s (%s): %d row(s), %d valid, %d invalid (ours), %d duplicate; sent %d; Criteo "
            "counted %d valid and %d invalid; statistics %s",
            segment_id,
            self.mode,
            result["rows"],
            result["valid"],
            result["invalid"],
            result["duplicate"],
            result["sent"],
            result["criteo_valid"],
            result["criteo_invalid"],
            result.get("statistics"),
        )
        from airflow_audience_provider.core.events import upload_counts

        fields = upload_counts(sync_result.get("counts") or {}, mode=self.mode)
        fields.update(added=result["added"], removed=result["removed"])  # as the mode applied them
        self.emit_asset_event(
            context, result["asset_uri"], {**fields, "action": "synced", "mode": self.mode, "link": url}
        )
        return result

    def _result(
        self,
        engine: dict[str, Any],
        accepted: dict[str, int],
        segment_id: str,
        vendor_type: str,
        url: str,
        hook: CriteoHook,
        owner: str | None,
        status: str,
    ) -> dict[str, Any]:
        counts = engine.get("counts") or {}
        sent = int(counts.get("sent_add", 0)) + int(counts.get("sent_remove", 0))
        added, removed = int(counts.get("added", 0)), int(counts.get("removed", 0))
        if self.mode == "remove":  # the engine planned "additions"; the sender turned them into removals
            added, removed = 0, int(counts.get("unique", 0))
        elif self.mode in ("add", "replace"):
            added = int(counts.get("unique", 0))
        return {
            "segment_id": segment_id,
            "mode": self.mode,
            "engine_mode": engine.get("mode"),
            "identifier_type": vendor_type,
            "rows": int(counts.get("rows", 0)),
            "valid": int(counts.get("unique", 0)),
            "invalid": int(counts.get("invalid", 0)),
            "duplicate": int(counts.get("duplicate", 0)),
            "added": added,
            "removed": removed,
            "sent": sent,
            "criteo_valid": accepted["criteo_valid"],
            "criteo_invalid": accepted["criteo_invalid"],
            "requests": accepted["requests"],
            "chunks_sent": int(counts.get("chunks_sent", 0)),
            "chunks_total": int(counts.get("chunks_total", 0)),
            "invalid_reasons": counts.get("invalid_reasons", {}),
            "status": status,
            "statistics": None,
            "finished_at": datetime.now(UTC).isoformat(),
            "url": url,
            "asset_uri": hook.asset_uri("segment", segment_id, owner),
        }


class _ModeSender:
    """Adapts :class:`~airflow_audience_provider.hooks.criteo.CriteoChunkSender` to the upload modes.

    ``add`` and ``remove`` run the engine as a full send without snapshot; its "replace" and "adds"
    then become plain adds (or removals), and its "clear" (empty input) does nothing.
    """

    def __init__(self, hook: Any, segment_id: str, vendor_type: str, on_chunk: Any, mode: str) -> None:
        from airflow_audience_provider.hooks.criteo import CriteoChunkSender

        self.inner = CriteoChunkSender(hook, segment_id, vendor_type, on_chunk)
        self.mode = mode

    def add(self, chunk: Any) -> Any:
        return self.inner.remove(chunk) if self.mode == "remove" else self.inner.add(chunk)

    def remove(self, chunk: Any) -> Any:
        return self.inner.remove(chunk)

    def replace(self, chunk: Any) -> Any:
        if self.mode in ("add", "remove"):
            return self.add(chunk)
        return self.inner.replace(chunk)

    def clear(self) -> None:
        if self.mode in ("sync", "replace"):
            self.inner.clear()


class CriteoCreateOrUpdateAudienceOperator(_CriteoOperator):
    """Create a Criteo audience from an algebra of segments, or update the one with the same name.

    The algebra is a nested dict whose nodes have exactly one of ``audienceSegmentId`` (or ``segment``),
    ``and`` (list), ``or`` (list) or ``not`` (one node); it is validated before anything is sent. For
    example "buyers who did not opt out"::

        {"and": [{"audienceSegmentId": "730011223344"}, {"not": {"audienceSegmentId": "730011229999"}}]}

    Retail Media audiences are written through the ``preview`` API version (the stable one only
    searches them); Marketing Solutions uses the connection's version.

    .. seealso:: :ref:`howto/operator:CriteoCreateOrUpdateAudienceOperator`

    :param name: the audience's name, its idempotency key (templated).
    :param algebra: the nested dict, or its JSON text (templated).
    :param retailer_id: Retail Media retailer (templated).
    :param description: (templated).
    :param owner_id: account or advertiser; default from the connection (templated).
    :param on_partial_failure: ``fail`` (default) or ``warn``.
    :param emit_asset: record an Asset event ``criteo://<account>/audience/<id>`` (alias ``criteo-audiences``).
    :return: ``{"audience_id", "name", "action", "segment_ids", "url", "asset_uri", "problems"}``.
    """

    template_fields: Sequence[str] = ("name", "algebra", "retailer_id", "description", "owner_id", "criteo_conn_id")
    template_fields_renderers = {"algebra": "json"}
    operator_extra_links = (CriteoAudienceLink(),)
    emits_assets = True
    default_asset_alias = AUDIENCE_ASSET_ALIAS
    ui_color = "#fff7e6"

    def __init__(
        self,
        *,
        name: str,
        algebra: dict[str, Any] | str,
        retailer_id: str | None = None,
        description: str | None = None,
        owner_id: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.name = name
        self.algebra = algebra
        self.retailer_id = retailer_id
        self.description = description
        self.owner_id = owner_id

    def execute(self, context: Context) -> dict[str, Any]:
        from airflow_audience_provider.core.errors import AudienceValidationError
        from airflow_audience_provider.hooks.criteo import algebra_segment_ids, canonical_algebra, validate_algebra

        hook = self.hook
        algebra = self.algebra
        if isinstance(algebra, str):
            try:
                algebra = json.loads(algebra)
            except ValueError as exc:
                raise AudienceValidationError(f"algebra is not JSON: {exc}", vendor="criteo") from None
        algebra = validate_algebra(algebra)
        name = (self.name or "").strip()
        if not name:
            raise AudienceValidationError("A Criteo audience needs a non-empty name", vendor="criteo")
        if hook.is_retail_media and not self.retailer_id:
            raise AudienceValidationError("retailer_id is required for a Retail Media audience", vendor="criteo")
        owner = hook.owner(self.owner_id or None)
        matches = hook.find_audiences_by_name(name, owner_id=owner)
        problems: list[dict[str, Any]] = []
        audience = matches[0] if matches else None
        if audience is None:
            attributes: dict[str, Any] = {"name": name, "algebra": algebra}
            if self.description is not None:
                attributes["description"] = self.description
            if hook.is_retail_media:
                attributes["retailerId"] = str(self.retailer_id)
            result = hook.bulk_create_audience([attributes], owner_id=owner)
            problems = self.check_bulk(result, f"creating audience {name!r}")
            audience, action = (result.data[0] if result.data else None), "created"
        else:
            current = audience.get("attributes") or {}
            update: dict[str, Any] = {}
            if canonical_algebra(current.get("algebra")) != canonical_algebra(algebra):
                update["algebra"] = algebra
            if self.description is not None and current.get("description") != self.description:
                update["description"] = self.description
            action = "unchanged"
            if update:
                result = hook.bulk_update_audience([{"id": audience["id"], **update}], owner_id=owner)
                problems = self.check_bulk(result, f"updating audience {name!r}")
                if result.data:
                    audience, action = result.data[0], "updated"
        if audience is None:
            return {"audience_id": None, "name": name, "action": "failed", "problems": problems}
        audience_id = str(audience["id"])
        url = hook.audience_url(audience_id, owner)
        CriteoAudienceLink.persist(context, url)
        context["ti"].xcom_push(key="audience_id", value=audience_id)
        asset_uri = hook.asset_uri("audience", audience_id, owner)
        self.log.info("Criteo audience %r (%s): %s", name, audience_id, action)
        self.emit_asset_event(context, asset_uri, {"object_name": name, "action": action, "link": url})
        return {
            "audience_id": audience_id,
            "name": name,
            "action": action,
            "segment_ids": sorted(algebra_segment_ids(algebra)),
            "url": url,
            "asset_uri": asset_uri,
            "problems": problems,
        }


class CriteoDeleteAudiencesOperator(_CriteoOperator):
    """Delete Criteo audiences (Retail Media through the ``preview`` API version).

    .. seealso:: :ref:`howto/operator:CriteoDeleteAudiencesOperator`

    :param audience_ids: one id, a comma-separated string or a list (templated).
    :param missing_ok: an audience that does not exist counts as deleted.
    :param owner_id: account or advertiser; default from the connection (templated).
    :return: ``{"deleted": [ids], "missing": [ids], "not_deleted": [{"id", "code", "reason"}]}``.
    """

    template_fields: Sequence[str] = ("audience_ids", "owner_id", "criteo_conn_id")
    ui_color = "#ffe6e6"

    def __init__(
        self, *, audience_ids: str | Sequence[str], missing_ok: bool = True, owner_id: str | None = None, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.audience_ids = audience_ids
        self.missing_ok = missing_ok
        self.owner_id = owner_id

    def execute(self, context: Context) -> dict[str, Any]:
        from airflow_audience_provider.core.errors import AudiencePartialFailure

        ids = _as_list(self.audience_ids)
        if not ids:
            return {"deleted": [], "missing": [], "not_deleted": []}
        result = self.hook.bulk_delete_audiences(ids, owner_id=self.owner_id or None)
        deleted, missing, not_deleted = [], [], []
        for item in result.items:
            codes = {p.get("code") for p in item["problems"]}
            if item["status"] == "ok":
                deleted.append(item["id"])
            elif codes == {"audience-not-found"} and self.missing_ok:
                missing.append(item["id"])
            else:
                reason = "; ".join(p.get("detail") or p.get("title") or "" for p in item["problems"])
                not_deleted.append(
                    {"id": item["id"], "code": ",".join(sorted(c for c in codes if c)), "reason": reason}
                )
        summary = {"deleted": deleted, "missing": missing, "not_deleted": not_deleted}
        self._remember_deleted(context, "audience", deleted)
        if not_deleted:
            message = "Criteo did not delete audience(s): " + " | ".join(
                f"{n['id']}: {n['reason']}" for n in not_deleted
            )
            if self.on_partial_failure == "fail":
                raise AudiencePartialFailure(message, vendor="criteo", items=not_deleted)
            self.log.warning("%s (on_partial_failure='warn': carrying on)", message)
        return summary
