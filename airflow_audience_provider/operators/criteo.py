"""Criteo operators: contact-list segments, contact-list uploads and audiences.

Every operator is idempotent on rerun: segments are found by name within the account and retailer
(Retail Media) or the advertiser (Marketing Solutions), audiences by name, before anything is
created. Criteo answers bulk calls with *partial approval* (HTTP 200 with per-item problems); each
operator maps the problems to the items it sent and, with ``on_partial_failure="fail"`` (the
default), fails the task naming them, or with ``"warn"`` logs them and carries on.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, ClassVar

from airflow_audience_provider.connections import CRITEO
from airflow_audience_provider.core.errors import AudienceValidationError
from airflow_audience_provider.domain.criteo import BulkResult, algebra_segment_ids, canonical_algebra, validate_algebra
from airflow_audience_provider.domain.criteo_cycle import next_computation_window
from airflow_audience_provider.links.criteo import CriteoAudienceLink, CriteoSegmentLink
from airflow_audience_provider.operators.base import AudienceBaseOperator, partial_failure_mode
from airflow_audience_provider.operators.contact_list import MODES, ContactListUploadOperator

if TYPE_CHECKING:
    from airflow.sdk import Context

    from airflow_audience_provider.hooks.criteo import CriteoHook
    from airflow_audience_provider.operators.senders.criteo import CriteoChunkSender

SEGMENT_ASSET_ALIAS = "criteo-segments"
AUDIENCE_ASSET_ALIAS = "criteo-audiences"
UPLOAD_MODES = MODES


class _CriteoOperator(AudienceBaseOperator["CriteoHook"]):
    """Shared by the Criteo operators: the connection, the account and the partial-failure policy.

    :param criteo_conn_id: the Criteo connection.
    :param owner_id: Retail Media account or Marketing Solutions advertiser; default from the
        connection (templated).
    :param on_partial_failure: ``fail`` (default) or ``warn`` when Criteo refuses some items.
    """

    spec = CRITEO
    default_asset_alias = SEGMENT_ASSET_ALIAS

    def make_hook(self) -> CriteoHook:
        from airflow_audience_provider.hooks.criteo import CriteoHook  # the hook imports requests: not at DAG parse

        return CriteoHook(self.criteo_conn_id, timeouts=self.timeouts())

    def __init__(
        self,
        *,
        criteo_conn_id: str = CRITEO.default_conn_name,
        owner_id: str | None = None,
        on_partial_failure: str = "fail",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.criteo_conn_id = criteo_conn_id
        self.owner_id = owner_id
        self.on_partial_failure = partial_failure_mode("on_partial_failure", on_partial_failure)

    def _remember_deleted(self, context: Context, kind: str, ids: list[str]) -> None:
        """Report deleted objects to OpenLineage: they changed. Delete operators do not emit Asset
        events (``emits_assets`` is off), so this records lineage only."""
        owner = self.hook.owner(self.owner_id or None)
        for object_id in ids:
            self.emit_asset_event(context, self.hook.asset_uri(kind, str(object_id), owner), {"action": "deleted"})

    def check_bulk(self, result: BulkResult, what: str) -> list[dict[str, Any]]:
        """Fail or warn on the refused items of a bulk call; returns them (JSON-safe)."""
        failed = result.failed
        if not failed:
            return []
        message = (
            f"Criteo refused {len(failed)} of {len(result.items)} item(s) when {what}: {result.describe_failures()}"
        )
        return self.settle(failed, message)

    def settle(
        self, failed: list[dict[str, Any]], message: str, before_failing: Callable[[], object] | None = None
    ) -> list[dict[str, Any]]:
        """Fail or warn on refused items, as ``on_partial_failure`` says."""
        return self.settle_partial_failure(
            failed,
            message,
            mode=self.on_partial_failure,
            mode_name="on_partial_failure",
            vendor="criteo",
            before_failing=before_failing,
        )


def _as_list(value: str | Sequence[str] | None) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            return [str(v) for v in json.loads(text)]
        return [v.strip() for v in text.split(",") if v.strip()]
    return [str(v) for v in value]


def _sort_deletions(
    result: BulkResult, not_found_code: str, missing_ok: bool
) -> tuple[list[str], list[str], list[dict[str, Any]]]:
    """A bulk delete's ids deleted and missing (when ``missing_ok``), and the items it refused."""
    deleted, missing, refused = [], [], []
    for item in result.items:
        if item["status"] == "ok":
            deleted.append(item["id"])
        elif {p.get("code") for p in item["problems"]} == {not_found_code} and missing_ok:
            missing.append(item["id"])
        else:
            refused.append(item)
    return deleted, missing, refused


def _codes(item: dict[str, Any]) -> str:
    return ",".join(sorted({c for p in item["problems"] if (c := p.get("code"))}))


def _reasons(item: dict[str, Any]) -> str:
    return "; ".join(p.get("detail") or p.get("title") or "" for p in item["problems"])


class _CriteoCreateOrUpdateOperator(_CriteoOperator):
    """Shared by the create-or-update operators: the object's name (its idempotency key), retailer
    and description, and how the object found or written is published.

    :param name: the object's name, its idempotency key (templated).
    :param retailer_id: Retail Media retailer (templated); not used by Marketing Solutions.
    :param description: (templated); None leaves it as it is.
    """

    #: ``segment`` or ``audience``: the kind of object in XCom keys, links, asset URIs and logs.
    kind: ClassVar[str]

    def __init__(
        self, *, name: str, retailer_id: str | None = None, description: str | None = None, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.name = name
        self.retailer_id = retailer_id
        self.description = description

    def _publish(self, context: Context, object_id: str, owner: str, name: str, action: str) -> tuple[str, str]:
        """Push the id and the link, log the action and emit the Asset event; returns the link and the asset URI."""
        hook = self.hook
        if self.kind == "segment":
            url = hook.segment_url(object_id, owner)
            CriteoSegmentLink.persist(context, url)
        else:
            url = hook.audience_url(object_id, owner)
            CriteoAudienceLink.persist(context, url)
        context["ti"].xcom_push(key=f"{self.kind}_id", value=object_id)
        asset_uri = hook.asset_uri(self.kind, object_id, owner)
        self.log.info("Criteo %s %r (%s): %s", self.kind, name, object_id, action)
        self.emit_asset_event(context, asset_uri, {"object_name": name, "action": action, "link": url})
        return url, asset_uri


class CriteoCreateOrUpdateSegmentOperator(_CriteoCreateOrUpdateOperator):
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
        "problems"}``; ``action`` is ``created``, ``updated`` or ``unchanged``, or ``failed`` (with
        ``on_partial_failure="warn"``, when Criteo refused the create: ``segment_id`` None, and only
        ``name`` and ``problems`` besides).
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
    kind = "segment"

    def __init__(self, *, identifier_type: str = "Email", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.identifier_type = identifier_type

    def execute(self, context: Context) -> dict[str, Any]:
        # the hook imports requests: not at DAG parse
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
        url, asset_uri = self._publish(context, segment_id, owner, name, action)
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
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.segment_ids = segment_ids
        self.missing_ok = missing_ok

    def execute(self, context: Context) -> dict[str, Any]:
        ids = _as_list(self.segment_ids)
        if not ids:
            return {"deleted": [], "missing": [], "not_deleted": []}
        result = self.hook.bulk_delete_audience_segments(ids, owner_id=self.owner_id or None)
        deleted, missing, refused = _sort_deletions(result, "segment-not-found", self.missing_ok)
        not_deleted = [
            {
                "id": item["id"],
                "code": _codes(item) or None,
                "reason": _reasons(item),
                "used_by_audiences": item.get("used_by_audiences", []),
            }
            for item in refused
        ]
        summary = {"deleted": deleted, "missing": missing, "not_deleted": not_deleted}
        self.log.info("Criteo segments deleted %s, missing %s, not deleted %s", deleted, missing, not_deleted)
        self._remember_deleted(context, "segment", deleted)
        message = "Criteo did not delete segment(s): " + " | ".join(f"{n['id']}: {n['reason']}" for n in not_deleted)
        self.settle(
            not_deleted, message, before_failing=lambda: context["ti"].xcom_push(key="delete_result", value=summary)
        )
        return summary


class CriteoUploadContactListOperator(ContactListUploadOperator["CriteoHook"], _CriteoOperator):
    """Upload identifiers to a Criteo contact-list segment with the contact-list engine.

    Identifiers are read from a file or an upstream result, normalised, validated and hashed by the
    engine (the ``criteo`` rules: e-mails trimmed, lower-cased and SHA-256 hashed; customer ids sent
    as given), de-duplicated and sent in requests within the rule's limit (50,000). Modes:

    * ``sync`` (incremental): the engine keeps a snapshot of what was sent last time and sends only the
      additions and removals; the first run replaces the list;
    * ``replace``: clear the list, then add everything (not atomic: avoid running it close to the
      00:00 / 12:00 UTC computation);
    * ``add`` / ``remove``: add or remove the given identifiers, leaving the rest.

    Add and remove requests are retried on transient errors: adding or removing the same identifiers
    twice leaves the same list, and the counts come from the answer that succeeded, so nothing is
    double-counted. If a chunk fails for good, the task fails with the counts of what Criteo accepted
    before, and the snapshot is not advanced (the next sync sends the difference again).

    Snapshots live by default under ``$AIRFLOW_HOME/audience_snapshots``, on the host that runs the
    task. In production, with workers on several hosts, set ``snapshot_base`` to shared storage (an
    ``ObjectStoragePath`` URL such as ``s3://bucket/audience_snapshots``); a host-local base with a
    distributed executor is warned about, or refused with ``require_shared_state=True``.

    Before sending, once a 00:00 / 12:00 UTC computation has run since the last change, Criteo's
    ``numberOfIdentifiers`` is compared with the list the snapshot records (``drift`` in the
    result; ``drift_tolerance``).

    .. seealso:: :ref:`howto/operator:CriteoUploadContactListOperator`

    :param segment_id: the contact-list segment (templated), e.g. from
        :class:`CriteoCreateOrUpdateSegmentOperator`.
    :param source: a path or URL of the file, or an upstream XCom value (path or ``{"path", "format",
        "column"}``) (templated).
    :param identifier_type: ``email`` (default), ``phone``, ``customer_id``, ``sha256`` (already hashed
        e-mails) or, Marketing Solutions only, ``maid`` (templated).
    :param mode: ``sync`` (default), ``replace``, ``add`` or ``remove`` (templated).
    :param source_options: ``format``, ``column``, ``encoding``, ``delimiter``, ``has_header`` (templated).
    :param snapshot_base: where snapshots are kept; default ``$AIRFLOW_HOME/audience_snapshots``
        (host-local; use shared storage in production) (templated).
    :param require_shared_state: refuse to run with a host-local ``snapshot_base`` and a distributed executor.
    :param read_workers: parallel workers that normalise and hash the list: threads with the
        ``fast`` extra (its compiled kernel releases the GIL), processes without. 1 (default): one
        worker (with the ``fast`` extra a thread, while the task's thread reads the source, and
        the plan may use a second CPU where one is free); 2 suits a worker slot with two cores.
    :param max_identifiers_per_request: fewer than Criteo's limit per request (the rule's 50,000).
    :param max_invalid_share: fail before sending when more rows than this share are invalid.
    :param max_removal_share: ``sync`` fails before sending when it would remove more than this share.
    :param allow_mass_removal: let ``sync`` remove any share.
    :param allow_empty: an input without valid identifiers clears the list (``sync``/``replace``).
    :param plan_only: a dry run: read, count, diff and check; nothing is sent (``status`` is ``planned``).
    :param full_refresh_every: a ``timedelta``: force a full replace when the last one is older.
    :param drift_tolerance: relative difference between Criteo's count and ours that is not drift (0.01).
    :param on_drift: ``warn`` (default) or ``fail`` when the counts drift apart.
    :param lease_timeout: seconds to wait while another run holds the segment's lease.
    :param lease_poll_interval: seconds between attempts to take the lease.
    :param deferrable: wait for the lease in the triggerer (default: ``[operators] default_deferrable``).
    :param fetch_statistics: read the contact-list statistics after the upload.
    :param owner_id: account or advertiser for the segment and statistics reads (templated).
    :return: ``{"segment_id", "mode", "identifier_type", "rows", "valid", "invalid", "duplicate", "added",
        "removed", "sent", "criteo_valid", "criteo_invalid", "chunks_sent", "chunks_total", "status",
        "statistics", "drift", "finished_at", "url", "asset_uri"}``. ``invalid`` is our count (rows we
        could not normalise), ``criteo_invalid`` Criteo's ``nbInvalidIdentifiers``.
    """

    vendor = "criteo"
    vendor_label = "Criteo"
    template_fields: Sequence[str] = (
        "segment_id",
        "source",
        "identifier_type",
        "mode",
        "source_options",
        "snapshot_base",
        "owner_id",
        "criteo_conn_id",
    )
    operator_extra_links = (CriteoSegmentLink(),)
    ui_color = "#fff0e6"

    def __init__(
        self,
        *,
        segment_id: str,
        fetch_statistics: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.segment_id = segment_id
        self.fetch_statistics = fetch_statistics

    def describe_destination(self) -> str:
        return f"Criteo segment {str(self.segment_id).strip()}"

    def destination_key(self, hook: Any) -> str:
        return f"{hook.api}-{str(self.segment_id).strip()}"

    def prepare(self, context: Context, hook: Any, rule: Any) -> None:
        segment_id = str(self.segment_id).strip()
        owner = self.owner_id or None
        vendor_type = hook.vendor_identifier_type(rule.identifier_type.value)
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
        self._vendor_type = vendor_type
        CriteoSegmentLink.persist(context, hook.segment_url(segment_id, owner))
        context["ti"].xcom_push(key="segment_id", value=segment_id)

    def make_sender(self, context: Context, hook: Any, rule: Any, cancel: threading.Event) -> CriteoChunkSender:
        # the contact-list engine: not at DAG parse
        from airflow_audience_provider.operators.senders.criteo import CriteoChunkSender

        return CriteoChunkSender(hook, str(self.segment_id).strip(), self._vendor_type)

    def vendor_count(self, hook: Any, when: str, recorded: dict[str, Any] | None) -> tuple[int | None, str] | None:
        # Statistics show the list as of the last 00:00 / 12:00 UTC computation: they are settled
        # only once a computation has run since our last change.
        if when != "before" or not self.fetch_statistics or not (recorded or {}).get("written_at"):
            return None
        if next_computation_window(str(recorded["written_at"])) > datetime.now(UTC):  # type: ignore[index]
            return None
        stats = hook.get_audience_segment_contact_list_statistics(str(self.segment_id).strip(), self.owner_id or None)
        return stats.get("number_of_identifiers"), "contact-list statistics numberOfIdentifiers"

    def vendor_result(
        self, context: Context, hook: Any, rule: Any, engine: dict[str, Any], status: str
    ) -> dict[str, Any]:
        counts = engine.get("counts") or {}
        segment_id = str(self.segment_id).strip()
        owner = self.owner_id or None
        return {
            "segment_id": segment_id,
            "identifier_type": self._vendor_type,
            "criteo_valid": int(counts.get("sent_add", 0)) + int(counts.get("sent_remove", 0)),
            "criteo_invalid": int(counts.get("vendor_rejected", 0)),
            "requests": int(counts.get("chunks_sent", 0)),
            "statistics": None,
            "url": hook.segment_url(segment_id, owner),
            "asset_uri": hook.asset_uri("segment", segment_id, owner),
        }

    def execute(self, context: Context) -> dict[str, Any]:
        result = super().execute(context)
        if self.fetch_statistics and result["status"] == "sent":
            result["statistics"] = self.hook.get_audience_segment_contact_list_statistics(
                str(self.segment_id).strip(), self.owner_id or None
            )
        return result


class CriteoCreateOrUpdateAudienceOperator(_CriteoCreateOrUpdateOperator):
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
    :return: ``{"audience_id", "name", "action", "segment_ids", "url", "asset_uri", "problems"}``;
        ``action`` ``failed`` (``on_partial_failure="warn"``, Criteo refused the create) comes with
        ``audience_id`` None, ``name`` and ``problems`` only.
    """

    template_fields: Sequence[str] = ("name", "algebra", "retailer_id", "description", "owner_id", "criteo_conn_id")
    template_fields_renderers = {"algebra": "json"}
    operator_extra_links = (CriteoAudienceLink(),)
    emits_assets = True
    default_asset_alias = AUDIENCE_ASSET_ALIAS
    ui_color = "#fff7e6"
    kind = "audience"

    def __init__(self, *, algebra: dict[str, Any] | str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.algebra = algebra

    def execute(self, context: Context) -> dict[str, Any]:
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
        url, asset_uri = self._publish(context, audience_id, owner, name, action)
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

    def __init__(self, *, audience_ids: str | Sequence[str], missing_ok: bool = True, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.audience_ids = audience_ids
        self.missing_ok = missing_ok

    def execute(self, context: Context) -> dict[str, Any]:
        ids = _as_list(self.audience_ids)
        if not ids:
            return {"deleted": [], "missing": [], "not_deleted": []}
        result = self.hook.bulk_delete_audiences(ids, owner_id=self.owner_id or None)
        deleted, missing, refused = _sort_deletions(result, "audience-not-found", self.missing_ok)
        not_deleted = [{"id": item["id"], "code": _codes(item), "reason": _reasons(item)} for item in refused]
        summary = {"deleted": deleted, "missing": missing, "not_deleted": not_deleted}
        self._remember_deleted(context, "audience", deleted)
        message = "Criteo did not delete audience(s): " + " | ".join(f"{n['id']}: {n['reason']}" for n in not_deleted)
        self.settle(not_deleted, message)
        return summary
