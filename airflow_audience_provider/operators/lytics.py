"""Lytics operators: segments (create-or-update, delete, reevaluate) and segment groups.

Every operator is idempotent on rerun: segments are found by ``slug_name`` and groups by
name before anything is created, so a retried task updates instead of duplicating.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from airflow.providers.common.compat.sdk import conf  # airflow.sdk.conf exists from 3.2 only

from airflow_audience_provider.connections import LYTICS
from airflow_audience_provider.core.errors import AudienceNotFoundError, AudienceValidationError
from airflow_audience_provider.core.results import validate_event
from airflow_audience_provider.domain.lytics import desired_segment_body, segment_changes, update_body
from airflow_audience_provider.links.lytics import LyticsSegmentLink
from airflow_audience_provider.operators.base import AudienceBaseOperator
from airflow_audience_provider.triggers.lytics import LyticsReevaluationTrigger

if TYPE_CHECKING:
    from airflow.sdk import Context

    from airflow_audience_provider.hooks.lytics import LyticsHook

ASSET_ALIAS = "lytics-segments"


class _LyticsOperator(AudienceBaseOperator["LyticsHook"]):
    spec = LYTICS
    default_asset_alias = ASSET_ALIAS

    def make_hook(self) -> LyticsHook:
        from airflow_audience_provider.hooks.lytics import LyticsHook  # the hook imports requests: not at DAG parse

        return LyticsHook(self.lytics_conn_id, timeouts=self.timeouts())

    def __init__(self, *, lytics_conn_id: str = LYTICS.default_conn_name, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.lytics_conn_id = lytics_conn_id

    def _segment_result(self, context: Context, segment: dict[str, Any], **fields: Any) -> dict[str, Any]:
        """Push the id and link at once, and build the small XCom result."""
        hook = self.hook
        url = hook.segment_url(segment)
        LyticsSegmentLink.persist(context, url)
        context["ti"].xcom_push(key="segment_id", value=segment.get("id"))
        result = {
            "segment_id": segment.get("id"),
            "slug_name": segment.get("slug_name"),
            "name": segment.get("name"),
            "size": segment.get("size"),
            "url": url,
            "asset_uri": hook.segment_asset_uri(segment),
        }
        result.update(fields)
        return result


class LyticsCreateOrUpdateSegmentOperator(_LyticsOperator):
    """Create a Lytics segment, or update the one with the same ``slug_name``.

    A rerun never creates a second segment: the slug is looked up first (Lytics would
    silently create ``<slug>_1`` otherwise). An unchanged definition sends no write.
    The definition is validated by Lytics before anything is written, and checked locally for
    what would make an update rename the slug (an ``ALIAS`` other than the slug) or create another
    segment (a ``FROM`` other than ``table``).

    .. seealso:: :ref:`howto/operator:LyticsCreateOrUpdateSegmentOperator`

    :param slug_name: the stable, unique key of the segment (templated).
    :param name: display name (templated).
    :param segment_ql: FilterQL definition, or a path to a ``.fql`` file (templated).
    :param description: (templated).
    :param table: Lytics table, ``user`` for audiences (templated).
    :param kind: segment kind, ``segment`` for audiences (templated).
    :param is_public: whether the audience is public.
    :param tags: tags (templated).
    :param extra_fields: other Segment fields to set, e.g. ``{"save_hist": true}`` (templated).
    :param validate: ask Lytics to validate the definition before writing.
    :param emit_asset: record an Asset event ``lytics://<account>/segment/<id>`` (alias ``lytics-segments``).
    :return: ``{"segment_id", "slug_name", "name", "size", "url", "asset_uri", "action", "changed_fields"}``;
        ``action`` is ``created``, ``updated`` or ``unchanged``.
    """

    template_fields: Sequence[str] = (
        "slug_name",
        "name",
        "segment_ql",
        "description",
        "table",
        "kind",
        "tags",
        "extra_fields",
        "lytics_conn_id",
    )
    template_ext: Sequence[str] = (".fql", ".filterql")
    template_fields_renderers = {"extra_fields": "json", "tags": "json"}
    operator_extra_links = (LyticsSegmentLink(),)
    emits_assets = True
    ui_color = "#e6f0ff"

    def __init__(
        self,
        *,
        slug_name: str,
        name: str,
        segment_ql: str,
        description: str | None = None,
        table: str = "user",
        kind: str = "segment",
        is_public: bool | None = None,
        tags: list[str] | None = None,
        extra_fields: dict[str, Any] | None = None,
        validate: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.slug_name = slug_name
        self.name = name
        self.segment_ql = segment_ql
        self.description = description
        self.table = table
        self.kind = kind
        self.is_public = is_public
        self.tags = tags
        self.extra_fields = extra_fields
        self.validate = validate

    def execute(self, context: Context) -> dict[str, Any]:
        hook = self.hook
        desired = desired_segment_body(
            name=self.name,
            slug_name=self.slug_name,
            segment_ql=self.segment_ql,
            table=self.table,
            kind=self.kind,
            description=self.description,
            is_public=self.is_public,
            tags=self.tags,
            extra_fields=self.extra_fields,
        )
        if self.validate:
            hook.validate_segment_ql(desired["segment_ql"])
        current = hook.find_segment(self.slug_name)
        if current is not None and current.get("table", self.table) != self.table:
            # Slugs are unique per account: the slug belongs to a segment of another table.
            raise AudienceValidationError(
                f"Lytics slug {self.slug_name!r} is used by segment {current.get('id')} of table "
                f"{current.get('table')!r}, not {self.table!r}; slugs are unique per account, so choose another "
                "slug (a segment's table cannot be changed)",
                vendor="lytics",
            )
        if current is None:
            segment, action, changed = hook.create_segment(desired), "created", sorted(desired)
        else:
            changed = sorted(segment_changes(current, desired))
            if changed:
                segment, action = hook.update_segment(current["id"], update_body(current, desired)), "updated"
            else:
                segment, action = current, "unchanged"
        self.log.info(
            "Lytics segment %s (%s): %s %s", segment.get("slug_name"), segment.get("id"), action, changed or ""
        )
        result = self._segment_result(context, segment, action=action, changed_fields=changed)
        self.emit_asset_event(
            context,
            result["asset_uri"],
            {
                "object_name": result["slug_name"],
                "action": action,
                "vendor_size": result["size"],
                "link": result["url"],
            },
        )
        return result


class LyticsDeleteSegmentOperator(_LyticsOperator):
    """Delete Lytics segments by id or slug.

    Lytics does not stop you deleting a segment that others ``INCLUDE``; this operator does:
    it refuses (naming the dependents) unless ``force=True``.

    .. seealso:: :ref:`howto/operator:LyticsDeleteSegmentOperator`

    :param segments: one id or slug, or a list of them (templated).
    :param missing_ok: a segment that does not exist counts as deleted (reruns succeed).
    :param force: delete even when other segments include it.
    :return: ``{"deleted": [ids], "missing": [keys]}``.
    """

    template_fields: Sequence[str] = ("segments", "lytics_conn_id")
    ui_color = "#ffe6e6"

    def __init__(
        self, *, segments: str | list[str], missing_ok: bool = True, force: bool = False, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.segments = segments
        self.missing_ok = missing_ok
        self.force = force

    def execute(self, context: Context) -> dict[str, Any]:
        hook = self.hook
        keys = [self.segments] if isinstance(self.segments, str) else list(self.segments)
        deleted: list[str] = []
        missing: list[str] = []
        for key in keys:
            segment = hook.find_segment(key)
            if segment is None:
                if not self.missing_ok:
                    raise AudienceNotFoundError(f"Lytics segment {key!r} does not exist", vendor="lytics")
                missing.append(key)
                continue
            dependents = hook.find_dependents(segment)
            if dependents and not self.force:
                names = ", ".join(f"{d.get('slug_name')} ({d.get('id')})" for d in dependents)
                raise AudienceValidationError(
                    f"Lytics segment {key!r} is included by {names}; delete those first or pass force=True",
                    vendor="lytics",
                )
            hook.delete_segment(segment["id"])
            deleted.append(segment["id"])
            self.log.info("Deleted Lytics segment %s (%s)", segment.get("slug_name"), segment["id"])
            # Lineage only: the delete operator emits no Asset events (emits_assets is off).
            self.emit_asset_event(context, hook.segment_asset_uri(segment), {"action": "deleted"})
        return {"deleted": deleted, "missing": missing}


class LyticsReevaluateSegmentOperator(_LyticsOperator):
    """Ask Lytics to reevaluate a segment's membership, and optionally wait for it.

    Lytics documents no completion signal; the one this provider uses is described in
    :mod:`airflow_audience_provider.hooks.lytics`. Lytics offers no way to cancel a
    reevaluation, so ``on_kill`` has nothing to cancel.

    .. seealso:: :ref:`howto/operator:LyticsReevaluateSegmentOperator`

    :param segment: id or slug (templated).
    :param wait_for_completion: wait until the reevaluation finished (or failed).
    :param deferrable: wait in the triggerer (default: ``[operators] default_deferrable``).
    :param poll_interval: seconds between status checks while waiting.
    :param timeout: seconds to wait at most; then the task fails naming the last state.
    :param settle_polls: the size counts as settled after this many equal readings (0: only a
        completed job of the segment ends the wait; default 3).
    :param settle_interval: the least seconds between two size readings that count (default 600).
    :return: ``{"segment_id", "slug_name", "name", "size", "url", "asset_uri", "requested_at", "status"}`` (plus
        ``job_id`` and ``signal``, ``job`` or ``size_settled``, after a wait).
    """

    template_fields: Sequence[str] = ("segment", "lytics_conn_id")
    operator_extra_links = (LyticsSegmentLink(),)
    emits_assets = True
    ui_color = "#e6f0ff"

    def __init__(
        self,
        *,
        segment: str,
        wait_for_completion: bool = True,
        deferrable: bool = conf.getboolean("operators", "default_deferrable", fallback=False),
        poll_interval: float = 60,
        timeout: float = 6 * 60 * 60,
        settle_polls: int | None = None,
        settle_interval: float | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.segment = segment
        self.wait_for_completion = wait_for_completion
        self.deferrable = deferrable
        self.poll_interval = poll_interval
        self.timeout = timeout
        self.settle_polls = settle_polls
        self.settle_interval = settle_interval

    def execute(self, context: Context) -> dict[str, Any] | None:
        hook = self.hook
        segment = hook.get_segment(self.segment)
        started = hook.reevaluate_segment(segment["id"])
        result = self._segment_result(context, segment, requested_at=started["requested_at"], status="requested")
        context["ti"].xcom_push(key="requested_at", value=started["requested_at"])
        self.log.info("Reevaluation of Lytics segment %s requested", segment["id"])
        if not self.wait_for_completion:
            return result
        status_kwargs: dict[str, Any] = {
            "segment_id": segment["id"],
            "requested_at": started["requested_at"],
            "size_history": [],
        }
        if self.settle_polls is not None:
            status_kwargs["settle_polls"] = int(self.settle_polls)
        if self.settle_interval is not None:
            status_kwargs["settle_interval"] = float(self.settle_interval)
        done = self.wait_for(
            LyticsReevaluationTrigger,
            status_kwargs,
            deferrable=self.deferrable,
            poll_interval=self.poll_interval,
            timeout=self.timeout,
        )
        return self._finish(context, {**result, **done, "status": "completed"})

    def execute_complete(self, context: Context, event: dict[str, Any] | None = None) -> dict[str, Any]:
        """Resume after the trigger; the event carries everything (defer kwargs can be lost)."""
        event = validate_event(event, "lytics")
        return self._finish(context, {**event.get("result", {}), "status": "completed"})

    def _finish(self, context: Context, result: dict[str, Any]) -> dict[str, Any]:
        result.setdefault("asset_uri", self.hook.segment_asset_uri(result))
        self.emit_asset_event(
            context,
            result["asset_uri"],
            {
                "object_name": result.get("slug_name"),
                "vendor_size": result.get("size"),
                "action": "reevaluated",
                "link": result.get("url"),
            },
        )
        self.log.info(
            "Reevaluation of Lytics segment %s completed; size %s", result.get("segment_id"), result.get("size")
        )
        return result


class LyticsCreateOrUpdateSegmentGroupOperator(_LyticsOperator):
    """Create a Lytics segment group, or update the description of the group with that name.

    .. seealso:: :ref:`howto/operator:LyticsCreateOrUpdateSegmentGroupOperator`

    :param name: the group's name, its idempotency key (templated).
    :param description: (templated).
    :return: ``{"group_id", "name", "action"}``.
    """

    template_fields: Sequence[str] = ("name", "description", "lytics_conn_id")

    def __init__(self, *, name: str, description: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.name = name
        self.description = description

    def execute(self, context: Context) -> dict[str, Any]:
        hook = self.hook
        current = next((g for g in hook.list_segment_groups() if g.get("name") == self.name), None)
        if current is None:
            group, action = hook.create_segment_group(self.name, self.description), "created"
        elif self.description is not None and current.get("description") != self.description:
            group = hook.update_segment_group(current["id"], name=self.name, description=self.description)
            action = "updated"
        else:
            group, action = current, "unchanged"
        self.log.info("Lytics segment group %r (%s): %s", self.name, group.get("id"), action)
        return {"group_id": group.get("id"), "name": group.get("name"), "action": action}


class LyticsDeleteSegmentGroupOperator(_LyticsOperator):
    """Delete a Lytics segment group by id or name; the segments in it are kept.

    .. seealso:: :ref:`howto/operator:LyticsDeleteSegmentGroupOperator`

    :param group: the group's id or name (templated).
    :param missing_ok: a missing group counts as deleted.
    :return: ``{"group_id", "deleted"}``.
    """

    template_fields: Sequence[str] = ("group", "lytics_conn_id")

    def __init__(self, *, group: str, missing_ok: bool = True, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.group = group
        self.missing_ok = missing_ok

    def execute(self, context: Context) -> dict[str, Any]:
        hook = self.hook
        match = next((g for g in hook.list_segment_groups() if self.group in (g.get("id"), g.get("name"))), None)
        if match is None:
            if not self.missing_ok:
                raise AudienceNotFoundError(f"Lytics segment group {self.group!r} does not exist", vendor="lytics")
            return {"group_id": None, "deleted": False}
        hook.delete_segment_group(match["id"])
        return {"group_id": match["id"], "deleted": True}
