"""Twilio Segment operators: Engage audiences (create-or-update, enable/disable, remove, preview).

Every operator is idempotent on rerun: audiences are found by name (Segment has no idempotency
key) before anything is created, and an edit that would change nothing is not sent.

**Never two edits back to back.** After an update Segment locks the audience until the change
is incorporated. Every operator that edits an audience first waits, in the worker, until the
audience is editable (see :meth:`~airflow_audience_provider.hooks.segment.SegmentHook.audience_edit_status`),
polling every ``lock_poll_interval`` seconds for at most ``lock_timeout`` seconds; then it sends
one PATCH with every change. With ``deferrable=True`` the wait happens in the triggerer
instead (a lock can last as long as a backfill); the task then resumes by running its
``execute`` again, which re-reads the audience, so nothing stale is sent. A lock that does not
clear in time fails the task with
:class:`~airflow_audience_provider.hooks.segment.SegmentAudienceLockedError`, which Airflow
retries (the lock clears by itself).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from airflow.providers.common.compat.sdk import conf  # airflow.sdk.conf exists from 3.2 only

from airflow_audience_provider.connections import SEGMENT
from airflow_audience_provider.core.errors import (
    AudienceError,
    AudienceNotFoundError,
    AudienceTimeoutError,
    AudienceValidationError,
)
from airflow_audience_provider.core.results import Phase, validate_event
from airflow_audience_provider.domain.segment import audience_body, audience_changes, canonical_query, check_definition
from airflow_audience_provider.links.segment import SegmentAudienceLink
from airflow_audience_provider.operators.base import AudienceBaseOperator
from airflow_audience_provider.triggers.segment import SegmentAudienceEditableTrigger, SegmentAudiencePreviewTrigger

if TYPE_CHECKING:
    from airflow.sdk import Context

    from airflow_audience_provider.hooks.segment import SegmentHook

ASSET_ALIAS = "segment-audiences"


class _SegmentOperator(AudienceBaseOperator["SegmentHook"]):
    """Shared arguments: the connection, the space, and how long to wait for the edit lock.

    :param segment_conn_id: the Segment connection.
    :param space_id: the Engage space (templated); default: the connection's ``space_id`` extra.
    :param lock_timeout: seconds to wait for the audience's edit lock to clear before editing.
    :param lock_poll_interval: seconds between looks while waiting for the lock.
    :param deferrable: wait for the lock in the triggerer (default: ``[operators] default_deferrable``).
    """

    spec = SEGMENT
    default_asset_alias = ASSET_ALIAS
    ui_color = "#e8f5e9"

    def make_hook(self) -> SegmentHook:
        from airflow_audience_provider.hooks.segment import SegmentHook  # the hook imports requests: not at DAG parse

        return SegmentHook(self.segment_conn_id, timeouts=self.timeouts())

    def __init__(
        self,
        *,
        segment_conn_id: str = SEGMENT.default_conn_name,
        space_id: str | None = None,
        lock_timeout: float = 6 * 60 * 60,
        lock_poll_interval: float = 60,
        deferrable: bool = conf.getboolean("operators", "default_deferrable", fallback=False),
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.segment_conn_id = segment_conn_id
        self.space_id = space_id
        self.lock_timeout = lock_timeout
        self.lock_poll_interval = lock_poll_interval
        self.deferrable = deferrable

    def _publish(self, context: Context, space: str, audience: dict[str, Any], **fields: Any) -> dict[str, Any]:
        """Push the id and the link at once, and build the small XCom result."""
        result = self.hook.audience_summary(space, audience)
        SegmentAudienceLink.persist(context, result["url"])
        context["ti"].xcom_push(key="audience_id", value=result["audience_id"])
        result.update(fields)
        return result

    def _edit(self, space: str, audience_id: str, changes: dict[str, Any]) -> dict[str, Any]:
        """Wait for the edit lock to clear (in the worker, or deferred to the triggerer), then send one PATCH."""
        # the hook imports requests: not at DAG parse
        from airflow_audience_provider.hooks.segment import SegmentAudienceLockedError

        try:
            self.wait_for(
                SegmentAudienceEditableTrigger,
                {"audience_id": audience_id, "space_id": space},
                deferrable=self.deferrable,
                poll_interval=float(self.lock_poll_interval),
                timeout=float(self.lock_timeout),
                method_name="resume_after_lock",
                look_first=True,
            )
        except AudienceTimeoutError as exc:
            raise SegmentAudienceLockedError(
                f"Segment audience {audience_id} stayed locked for edits for {self.lock_timeout:g} s; "
                f"{exc.message}. The task can be retried once Segment has incorporated the previous edit.",
                vendor="segment",
            ) from exc
        return self.hook.update_audience_for_space(audience_id, space, **changes)

    def resume_after_lock(self, context: Context, event: dict[str, Any] | None = None) -> Any:
        """Back from the triggerer: the lock has cleared, so run again from a fresh read."""
        # the hook imports requests: not at DAG parse
        from airflow_audience_provider.hooks.segment import SegmentAudienceLockedError

        try:
            validate_event(event, "segment")
        except AudienceTimeoutError as exc:
            raise SegmentAudienceLockedError(
                f"{exc.message}. The task can be retried once Segment has incorporated the previous edit.",
                vendor="segment",
            ) from exc
        return self.execute(context)

    def _resolve(self, space: str, audience_id: str | None, audience_name: str | None) -> dict[str, Any] | None:
        """The audience by id, else by exact name; None when it does not exist."""
        hook = self.hook
        if bool(audience_id) == bool(audience_name):
            raise AudienceValidationError("Pass exactly one of audience_id and audience_name", vendor="segment")
        if audience_id:
            return hook.find_audience(audience_id, space)
        return hook.find_audience_by_name(str(audience_name), space)


class SegmentCreateOrUpdateAudienceOperator(_SegmentOperator):
    """Create a Segment Engage audience, or update the one with the same name.

    The name is the idempotency key: it is searched (``search.type=NAME``, exact match) before
    anything is created, and after an ambiguous create failure (a timeout may have created it).
    An unchanged audience gets no write; a changed one gets exactly one PATCH with every change,
    sent once the audience's edit lock has cleared. ``audienceType`` cannot change in Segment:
    a different type fails the task naming the existing audience.

    .. seealso:: :ref:`howto/operator:SegmentCreateOrUpdateAudienceOperator`

    :param name: the audience's name, unique in the space (templated).
    :param definition: the audience query (Segment query language), or a path to a
        ``.segmentql`` file (templated).
    :param audience_type: ``USERS``, ``ACCOUNTS`` or ``LINKED`` (templated).
    :param description: (templated).
    :param enabled: whether computation runs. ``None`` (default): a new audience is created
        disabled (check it, e.g. with a preview, then enable it), an existing one keeps its switch.
    :param options: ``includeHistoricalData``, ``backfillEventDataDays``, ``filterByExternalIds``
        (templated); only the keys given are compared and changed.
    :param target_entity: the data-graph entity of a LINKED audience (create only; templated).
    :param emit_asset: record an Asset event ``segment://<space>/audience/<id>`` (alias ``segment-audiences``)
        when the audience is created or changed.
    :return: ``{"audience_id", "space_id", "name", "key", "enabled", "status", "url", "asset_uri",
        "action", "changed_fields"}``; ``action`` is ``created``, ``updated`` or ``unchanged``.
    """

    template_fields: Sequence[str] = (
        "name",
        "definition",
        "audience_type",
        "description",
        "options",
        "target_entity",
        "space_id",
        "segment_conn_id",
    )
    template_ext: Sequence[str] = (".segmentql",)
    template_fields_renderers = {"options": "json"}
    operator_extra_links = (SegmentAudienceLink(),)
    emits_assets = True

    def __init__(
        self,
        *,
        name: str,
        definition: str,
        audience_type: str = "USERS",
        description: str | None = None,
        enabled: bool | None = None,
        options: dict[str, Any] | None = None,
        target_entity: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.name = name
        self.definition = definition
        self.audience_type = audience_type
        self.description = description
        self.enabled = enabled
        self.options = options
        self.target_entity = target_entity

    def execute(self, context: Context) -> dict[str, Any]:
        hook = self.hook
        space = hook.space(self.space_id)
        # Checked locally first, so bad input fails before any call.
        audience_body(
            name=self.name,
            definition=self.definition,
            audience_type=self.audience_type,
            description=self.description,
            options=self.options,
            target_entity=self.target_entity,
        )
        current = hook.find_audience_by_name(self.name, space)
        if current is None:
            audience = hook.create_audience(
                self.name,
                self.definition,
                space_id=space,
                audience_type=self.audience_type,
                enabled=bool(self.enabled),
                description=self.description,
                options=self.options,
                target_entity=self.target_entity,
            )
            action, changed = "created", ["audience"]
        else:
            if str(current.get("audienceType", "")).upper() != str(self.audience_type).upper():
                raise AudienceValidationError(
                    f"Segment audience {self.name!r} ({current.get('id')}) is of type {current.get('audienceType')}, "
                    f"not {self.audience_type}; Segment cannot change an audience's type: create a new audience",
                    vendor="segment",
                )
            self._publish(context, space, current)  # the link exists before the edit is attempted
            changes = audience_changes(
                current,
                definition=self.definition,
                description=self.description,
                enabled=self.enabled,
                options=self.options,
            )
            changed = sorted(changes)
            if changes:
                audience, action = self._edit(space, str(current["id"]), changes), "updated"
            else:
                audience, action = current, "unchanged"
        self.log.info("Segment audience %r (%s): %s %s", self.name, audience.get("id"), action, changed or "")
        result = self._publish(context, space, audience, action=action, changed_fields=changed)
        if action != "unchanged":
            self.emit_asset_event(
                context, result["asset_uri"], {"object_name": self.name, "action": action, "link": result.get("url")}
            )
        return result


class _SegmentSetEnabledOperator(_SegmentOperator):
    """Switch an audience's computation on or off; nothing is sent when it already is."""

    enabled_value: bool
    template_fields: Sequence[str] = ("audience_id", "audience_name", "space_id", "segment_conn_id")
    operator_extra_links = (SegmentAudienceLink(),)

    def __init__(self, *, audience_id: str | None = None, audience_name: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.audience_id = audience_id
        self.audience_name = audience_name

    def execute(self, context: Context) -> dict[str, Any]:
        hook = self.hook
        space = hook.space(self.space_id)
        audience = self._resolve(space, self.audience_id or None, self.audience_name or None)
        if audience is None:
            raise AudienceNotFoundError(
                f"Segment audience {self.audience_id or self.audience_name!r} was not found in space {space!r}",
                vendor="segment",
            )
        self._publish(context, space, audience)
        word = "enabled" if self.enabled_value else "disabled"
        if bool(audience.get("enabled")) == self.enabled_value:
            self.log.info("Segment audience %s is already %s", audience["id"], word)
            return self._publish(context, space, audience, action="unchanged")
        updated = self._edit(space, str(audience["id"]), {"enabled": self.enabled_value})
        self.log.info("Segment audience %s %s", audience["id"], word)
        result = self._publish(context, space, updated, action=word)
        # Lineage only (these operators emit no Asset events): the audience changed.
        self.emit_asset_event(context, result["asset_uri"], {"action": word})
        return result


class SegmentEnableAudienceOperator(_SegmentSetEnabledOperator):
    """Enable a Segment audience (its membership starts computing), waiting for the edit lock first.

    .. seealso:: :ref:`howto/operator:SegmentEnableAudienceOperator`

    :param audience_id: the audience's id (templated); or
    :param audience_name: its exact name (templated).
    :return: the audience result with ``action`` ``enabled`` or ``unchanged``.
    """

    enabled_value = True


class SegmentDisableAudienceOperator(_SegmentSetEnabledOperator):
    """Disable a Segment audience (its computation stops), waiting for the edit lock first.

    .. seealso:: :ref:`howto/operator:SegmentDisableAudienceOperator`

    :param audience_id: the audience's id (templated); or
    :param audience_name: its exact name (templated).
    :return: the audience result with ``action`` ``disabled`` or ``unchanged``.
    """

    enabled_value = False


class SegmentRemoveAudienceOperator(_SegmentOperator):
    """Remove a Segment audience from its space, by id or exact name.

    Other audiences may use this one through ``trait('<key>')``; what Segment does to them is
    unverified, so the operator lists the consumers (``audience-references``, v1alpha) first and
    refuses, naming them, unless ``force=True``. That endpoint exists in the alpha version only:
    where the workspace does not offer it (403, 404, 405, 410, 415 or 501), the removal goes ahead
    with a warning, unless ``check_references=True`` asked for the check. Keys are never reused
    by Segment: re-creating a removed audience gives it a new key.

    .. seealso:: :ref:`howto/operator:SegmentRemoveAudienceOperator`

    :param audience_id: the audience's id (templated); or
    :param audience_name: its exact name (templated).
    :param missing_ok: an audience that does not exist counts as removed (reruns succeed).
    :param force: remove even when other audiences reference it.
    :param check_references: ``None`` (default): check where the references endpoint is offered,
        warn where it is not; ``True``: refuse when the check cannot be made; ``False``: do not check.
    :return: ``{"audience_id", "space_id", "removed", "references_checked"}``; an audience already
        gone gives ``removed`` and ``references_checked`` False.
    """

    template_fields: Sequence[str] = ("audience_id", "audience_name", "space_id", "segment_conn_id")
    ui_color = "#ffebee"

    def __init__(
        self,
        *,
        audience_id: str | None = None,
        audience_name: str | None = None,
        missing_ok: bool = True,
        force: bool = False,
        check_references: bool | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.audience_id = audience_id
        self.audience_name = audience_name
        self.missing_ok = missing_ok
        self.force = force
        self.check_references = check_references

    def execute(self, context: Context) -> dict[str, Any]:
        hook = self.hook
        space = hook.space(self.space_id)
        audience = self._resolve(space, self.audience_id or None, self.audience_name or None)
        wanted = self.audience_id or self.audience_name
        if audience is None:
            if not self.missing_ok:
                raise AudienceNotFoundError(
                    f"Segment audience {wanted!r} was not found in space {space!r}", vendor="segment"
                )
            self.log.info("Segment audience %r does not exist in space %s; nothing to remove", wanted, space)
            return {"audience_id": self.audience_id, "space_id": space, "removed": False, "references_checked": False}
        consumers, checked = self._consumers(hook, audience, space)
        if consumers and not self.force:
            names = ", ".join(f"{c.get('name')} ({c.get('id')})" for c in consumers)
            raise AudienceValidationError(
                f"Segment audience {audience.get('name')!r} ({audience['id']}) is referenced by {names}; "
                "change those first or pass force=True",
                vendor="segment",
            )
        hook.remove_audience_from_space(str(audience["id"]), space)
        self.log.info("Removed Segment audience %r (%s)", audience.get("name"), audience["id"])
        # Lineage only (no Asset event for a removal): the audience changed.
        self.emit_asset_event(context, hook.audience_asset_uri(space, str(audience["id"])), {"action": "removed"})
        return {"audience_id": audience["id"], "space_id": space, "removed": True, "references_checked": checked}

    #: Answers of the alpha-only references endpoint that mean "not offered here".
    _UNAVAILABLE = frozenset({403, 404, 405, 410, 415, 501})

    def _consumers(self, hook: Any, audience: dict[str, Any], space: str) -> tuple[list[dict[str, Any]], bool]:
        """The audiences referencing this one, and whether the check could be made."""
        if self.check_references is False:
            return [], False
        try:
            return hook.list_audience_consumers(str(audience["id"]), space), True
        except AudienceError as exc:
            if exc.status not in self._UNAVAILABLE:
                raise
            # The audience was just read, so a 404 here is the endpoint, not the audience.
            if self.check_references:
                raise AudienceValidationError(
                    f"Cannot check which audiences reference {audience.get('name')!r} ({audience['id']}): the "
                    f"alpha-only audience-references endpoint answered {exc.status} ({exc.message}); "
                    "pass check_references=None to remove with a warning, or False to skip the check",
                    vendor="segment",
                ) from exc
            self.log.warning(
                "Could not check which audiences reference %r (%s): audience-references answered %s; removing "
                "anyway (pass check_references=True to refuse instead)",
                audience.get("name"),
                audience["id"],
                exc.status,
            )
            return [], False


class SegmentPreviewAudienceOperator(_SegmentOperator):
    """Preview an audience definition and return its size before committing it.

    Previews are scarce (5 per minute per token, 700 per month per space): the client-side limiter
    waits out the first and fails at once on the second. With ``audience_name``, an audience
    of that name whose definition is already the same is not previewed again: its computed
    size is returned instead (``source: "audience"``), so a daily DAG spends no quota while
    nothing changes.

    .. seealso:: :ref:`howto/operator:SegmentPreviewAudienceOperator`

    :param definition: the audience query, or a path to a ``.segmentql`` file (templated).
    :param audience_type: ``USERS``, ``ACCOUNTS`` or ``LINKED`` (templated).
    :param options: ``filterByExternalIds``, ``backfillEventDataDays`` (templated).
    :param target_entity: the data-graph entity of a LINKED definition (templated).
    :param audience_name: skip the preview when this audience already has this definition, is
        enabled and has computed (templated); an edited BATCH audience counts as computed only
        ``batch_compute_wait`` seconds after its last change (see
        :class:`~airflow_audience_provider.sensors.segment.SegmentAudienceComputedSensor`).
    :param batch_compute_wait: that wait, in seconds (default 24 h).
    :param min_size: fail the task when the preview is smaller (a guard before enabling).
    :param max_size: fail the task when the preview is larger.
    :param deferrable: wait for the preview in the triggerer (default: ``[operators] default_deferrable``).
    :param poll_interval: seconds between looks at the preview.
    :param timeout: seconds to wait for the preview at most.
    :return: ``{"preview_id", "space_id", "status", "size", "size_type", "audience_type",
        "sample_count", "source"}``.
    """

    template_fields: Sequence[str] = (
        "definition",
        "audience_type",
        "options",
        "target_entity",
        "audience_name",
        "space_id",
        "segment_conn_id",
    )
    template_ext: Sequence[str] = (".segmentql",)
    template_fields_renderers = {"options": "json"}

    def __init__(
        self,
        *,
        definition: str,
        audience_type: str = "USERS",
        options: dict[str, Any] | None = None,
        target_entity: str | None = None,
        audience_name: str | None = None,
        min_size: int | None = None,
        max_size: int | None = None,
        poll_interval: float = 10,
        timeout: float = 30 * 60,
        batch_compute_wait: float | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.definition = definition
        self.audience_type = audience_type
        self.options = options
        self.target_entity = target_entity
        self.audience_name = audience_name
        self.min_size = min_size
        self.max_size = max_size
        self.poll_interval = poll_interval
        self.timeout = timeout
        self.batch_compute_wait = batch_compute_wait

    def execute(self, context: Context) -> dict[str, Any] | None:
        hook = self.hook
        space = hook.space(self.space_id)
        check_definition(self.definition)
        if self.audience_name:
            current = hook.find_audience_by_name(self.audience_name, space)
            same = current is not None and canonical_query((current.get("definition") or {}).get("query")) == (
                canonical_query(self.definition)
            )
            if same and current is not None and current.get("enabled"):
                # Only a computed, enabled audience has a size that belongs to this definition:
                # while an edit is being incorporated, the size is the old definition's.
                if self.batch_compute_wait is None:
                    look = hook.audience_compute_status(str(current["id"]), space)
                else:
                    look = hook.audience_compute_status(
                        str(current["id"]), space, batch_compute_wait=float(self.batch_compute_wait)
                    )
                size = look.data or {}
                if look.phase is Phase.DONE and size.get("size") is not None:
                    self.log.info(
                        "Audience %r already has this definition; its size %s is used, no preview quota is spent",
                        self.audience_name,
                        size.get("size"),
                    )
                    return self._finish(
                        {
                            "preview_id": None,
                            "space_id": space,
                            "status": size.get("status"),
                            "size": size.get("size"),
                            "size_type": current.get("audienceType"),
                            "audience_type": current.get("audienceType"),
                            "sample_count": 0,
                            "source": "audience",
                        }
                    )
        preview = hook.create_audience_preview(
            self.definition,
            space_id=space,
            audience_type=self.audience_type,
            options=self.options,
            target_entity=self.target_entity,
        )
        preview_id = str(preview.get("id"))
        context["ti"].xcom_push(key="preview_id", value=preview_id)
        self.log.info("Segment audience preview %s started", preview_id)
        status_kwargs = {"preview_id": preview_id, "space_id": space}
        done = self.wait_for(
            SegmentAudiencePreviewTrigger,
            status_kwargs,
            deferrable=self.deferrable,
            poll_interval=self.poll_interval,
            timeout=self.timeout,
        )
        return self._finish({**done, "source": "preview"})

    def execute_complete(self, context: Context, event: dict[str, Any] | None = None) -> dict[str, Any]:
        """Resume after the trigger; the event carries the preview's result."""
        event = validate_event(event, "segment")
        return self._finish({**(event.get("result") or {}), "source": "preview"})

    def _finish(self, result: dict[str, Any]) -> dict[str, Any]:
        size = result.get("size")
        if size is not None and self.min_size is not None and size < self.min_size:
            raise AudienceValidationError(
                f"The audience definition previews at {size} members, below min_size {self.min_size}", vendor="segment"
            )
        if size is not None and self.max_size is not None and size > self.max_size:
            raise AudienceValidationError(
                f"The audience definition previews at {size} members, above max_size {self.max_size}", vendor="segment"
            )
        self.log.info("Segment audience preview size: %s (%s)", size, result.get("source"))
        return result
