"""Yandex Direct operators: retargeting lists built on Yandex.Audience segments, and audience targets.

* :class:`YandexDirectCreateOrUpdateRetargetingListOperator` - the list with this name, created or
  brought in line with the rules (segments given by id or name are resolved to Direct goal ids);
* :class:`YandexDirectDeleteRetargetingListsOperator` - delete lists, reporting those still in use;
* :class:`YandexDirectAddAudienceTargetsOperator` - attach a list to ad groups (never twice);
* :class:`YandexDirectSuspendAudienceTargetsOperator`, :class:`YandexDirectResumeAudienceTargetsOperator`,
  :class:`YandexDirectDeleteAudienceTargetsOperator` - by target ids or by list (and ad groups);
* :class:`YandexDirectSetAudienceTargetBidsOperator` - bids or priorities.

Direct answers write calls item by item. Every operator maps the answers back to its input and
returns them (``outcomes``); with ``on_item_error="fail"`` (default) an item error fails the task
after the other items were applied, with ``"warn"`` it is logged and the task succeeds. Every result
carries the points this task spent (``units``), read from Direct's ``Units`` header.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from airflow.providers.common.compat.sdk import conf  # airflow.sdk.conf exists from 3.2 only

from airflow_audience_provider.assets import segment_uri
from airflow_audience_provider.connections import YANDEX_DIRECT
from airflow_audience_provider.core.errors import AudienceNotFoundError, AudienceValidationError
from airflow_audience_provider.core.results import validate_event
from airflow_audience_provider.domain.yandex_direct import (
    DEFAULT_LIFE_SPAN,
    LIFE_SPAN_DAYS,
    LIST_TYPES,
    MAX_DESCRIPTION,
    MAX_NAME,
    describe_outcome,
    rules_signature,
    validate_rules,
)
from airflow_audience_provider.links.yandex_direct import YandexDirectRetargetingListLink
from airflow_audience_provider.operators.base import AudienceBaseOperator, partial_failure_mode
from airflow_audience_provider.triggers.yandex_direct import YandexDirectSegmentsListedTrigger

if TYPE_CHECKING:
    from airflow.sdk import Context

    from airflow_audience_provider.hooks.yandex_direct import YandexDirectHook

#: Item codes that mean "already as you want it": a resend after an ambiguous failure is then harmless.
ALREADY_EXISTS = 9801


class _YandexDirectOperator(AudienceBaseOperator["YandexDirectHook"]):
    """Shared by the Yandex Direct operators: connection, Client-Login, item-error policy, units.

    :param yandex_direct_conn_id: Airflow connection of type ``yandex_direct``.
    :param client_login: advertiser login (``Client-Login``) overriding the connection's (templated).
    :param on_item_error: ``"fail"`` (default) fails the task when an item failed, after the others
        were applied; ``"warn"`` logs it and succeeds.
    """

    spec = YANDEX_DIRECT

    def make_hook(self) -> YandexDirectHook:
        # the hook imports requests: not at DAG parse
        from airflow_audience_provider.hooks.yandex_direct import YandexDirectHook

        return YandexDirectHook(
            self.yandex_direct_conn_id, timeouts=self.timeouts(), client_login=self.client_login or None
        )

    def __init__(
        self,
        *,
        yandex_direct_conn_id: str = YANDEX_DIRECT.default_conn_name,
        client_login: str | None = None,
        on_item_error: str = "fail",
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("emit_asset", False)  # Direct objects have no Asset scheme
        super().__init__(**kwargs)
        self.yandex_direct_conn_id = yandex_direct_conn_id
        self.client_login = client_login
        self.on_item_error = partial_failure_mode("on_item_error", on_item_error)

    def execute(self, context: Context) -> dict[str, Any]:
        """Run the operation; whatever happens, log the points this task spent (Direct charges errors too)."""
        self._units_logged = False
        try:
            return self._execute(context)
        finally:
            if not self._units_logged and "hook" in self.__dict__ and self.hook.calls:
                self._units()

    def _execute(self, context: Context) -> dict[str, Any]:
        raise NotImplementedError

    def _remember_list(self, context: Context, list_id: Any, action: str) -> None:
        """Report a retargeting list this task changed to OpenLineage, as
        ``yandex-direct://<client login>/retargeting-list/<id>``. Lineage only: Direct objects have
        no Asset scheme, so no Asset event is emitted."""
        uri = segment_uri("yandex-direct", self.hook.client_login or "default", "retargeting-list", str(list_id))
        self.emit_asset_event(context, uri, {"action": action})

    def _units(self) -> dict[str, Any]:
        self._units_logged = True
        report = self.hook.units_report()
        self.log.info(
            "Yandex Direct: this task spent %s units in %s calls; %s of %s left today",
            report["spent"],
            report["calls"],
            report.get("remaining", "?"),
            report.get("daily_limit", "?"),
        )
        return report

    def _judge(self, context: Context, outcomes: list[dict[str, Any]], what: str) -> None:
        """Log every failed/warned item; fail the task on item errors unless ``on_item_error="warn"``."""
        failed = [o for o in outcomes if o.get("errors")]
        for outcome in outcomes:
            if outcome.get("errors") or outcome.get("warnings"):
                self.log.warning("Yandex Direct %s: %s", what, describe_outcome(outcome))
        if not failed:
            return
        lines = "; ".join(describe_outcome(o) for o in failed[:5]) + (" ..." if len(failed) > 5 else "")
        self.settle_partial_failure(
            failed,
            f"Yandex Direct {what}: {len(failed)} of {len(outcomes)} items failed ({lines}); "
            f"{self.hook.units_report()['spent']} units spent",
            mode=self.on_item_error,
            mode_name="on_item_error",
            vendor="yandex_direct",
            before_failing=lambda: context["ti"].xcom_push(key="outcomes", value=outcomes),
        )


def _compact(outcome: dict[str, Any], **fields: Any) -> dict[str, Any]:
    """A small JSON outcome for XCom: what the item was, its id, and Direct's notes."""
    status = "error" if outcome.get("errors") else ("warning" if outcome.get("warnings") else "ok")
    result = {**fields, "id": outcome.get("id"), "status": status}
    if outcome.get("errors"):
        result["errors"] = outcome["errors"]
    if outcome.get("warnings"):
        result["warnings"] = outcome["warnings"]
    return result


# -- retargeting lists -------------------------------------------------------------------------


def build_rules(
    hook: YandexDirectHook,
    rules: Sequence[dict[str, Any]],
    goals: list[dict[str, Any]],
    default_life_span: int | None = None,
) -> tuple[list[dict[str, Any]], list[int], list[dict[str, Any]]]:
    """Our rule spec -> Direct ``Rules``; also the Metrica goal ids (each carries a life span, ours to
    compare), and how each segment/goal was resolved.

    A rule: ``{"operator": "ALL"|"ANY"|"NONE", "segments": [...], "goals": [...]}`` where segments are
    Yandex.Audience segment ids or names (or ``{"segment_id"|"name"|"goal_id": ...}``) and goals are
    Metrica goal ids or ``{"goal_id": id, "membership_life_span": days}``. A goal without its own life
    span gets ``default_life_span`` (Direct requires one for Metrica goals).
    """
    default_span = DEFAULT_LIFE_SPAN if default_life_span is None else default_life_span
    if not isinstance(rules, list | tuple):
        raise AudienceValidationError(f"rules must be a list of rule dicts, got {type(rules).__name__}")
    direct_rules: list[dict[str, Any]] = []
    compare_life_span: list[int] = []
    resolved: list[dict[str, Any]] = []
    for number, rule in enumerate(rules, start=1):
        if not isinstance(rule, dict):
            raise AudienceValidationError(f"Rule {number} must be a dict, got {rule!r}", vendor="yandex_direct")
        lowered = {str(k).lower(): v for k, v in rule.items()}
        unknown = set(lowered) - {"operator", "segments", "goals"}
        if unknown:
            raise AudienceValidationError(
                f"Rule {number}: unknown keys {sorted(unknown)}; use operator, segments, goals", vendor="yandex_direct"
            )
        operator = str(lowered.get("operator") or "").upper()
        arguments: list[dict[str, Any]] = []
        segments = lowered.get("segments") or []
        if segments:
            for item in hook.resolve_audience_segments(list(segments), goals):
                arguments.append({"ExternalId": item["goal_id"]})
                resolved.append({"kind": "segment", **item})
        for goal in lowered.get("goals") or []:
            spec = goal if isinstance(goal, dict) else {"goal_id": goal}
            try:
                goal_id = int(str(spec.get("goal_id") or spec.get("id")))
            except (TypeError, ValueError):
                raise AudienceValidationError(
                    f"Rule {number}: a goal must be an id or {{'goal_id', 'membership_life_span'}}: {goal!r}",
                    vendor="yandex_direct",
                ) from None
            (found,) = hook.resolve_goals([goal_id], goals)
            argument: dict[str, Any] = {"ExternalId": goal_id}
            span = spec.get("membership_life_span")
            try:
                argument["MembershipLifeSpan"] = default_span if span is None else int(span)
            except (TypeError, ValueError):
                raise AudienceValidationError(
                    f"Rule {number}: membership_life_span must be a number of days, got {span!r}",
                    vendor="yandex_direct",
                ) from None
            compare_life_span.append(goal_id)
            arguments.append(argument)
            resolved.append({"kind": "goal", "input": goal, **found})
        direct_rules.append({"Operator": operator, "Arguments": arguments})
    return direct_rules, compare_life_span, resolved


def _rule_segments(rules: Any) -> list[Any]:
    """Every segment named in the rules (for the wait until Direct lists them)."""
    found: list[Any] = []
    for rule in rules if isinstance(rules, list | tuple) else []:
        if isinstance(rule, dict):
            lowered = {str(k).lower(): v for k, v in rule.items()}
            found.extend(lowered.get("segments") or [])
    return found


class YandexDirectCreateOrUpdateRetargetingListOperator(_YandexDirectOperator):
    """Create the Yandex Direct retargeting list with this name, or bring the existing one in line.

    The name is the key: a rerun finds the list and changes only what differs (rules, description),
    and an unchanged list is not written. Yandex.Audience segments are given by id or name and
    resolved to Direct goal ids through ``GetRetargetingGoals`` (a segment must be ``processed`` and
    shared with the Direct login; never assumed to be its own goal id). Rules are checked against
    the limits before anything is sent. After writing, the list is read back: Direct accepts goals it
    cannot use (``IsAvailable: NO``), which fails the task unless ``require_available=False``.

    .. seealso:: :ref:`howto/operator:YandexDirectCreateOrUpdateRetargetingListOperator`

    :param name: the list's name, its idempotency key (templated; at most 250 characters).
    :param rules: ``[{"operator": "ALL"|"ANY"|"NONE", "segments": [...], "goals": [...]}]``, ANDed
        (templated). Segments: Audience segment ids (int or digit string) or names, or
        ``{"segment_id"|"name"|"goal_id": ...}``; goals: Metrica goal ids or
        ``{"goal_id": id, "membership_life_span": days}`` (1-540; ignored by Direct for segments).
    :param membership_life_span: days a Metrica goal counts when its rule does not say (1-540,
        default 90): Direct requires a life span for every Metrica goal.
    :param wait_for_segments: when Direct does not list a segment yet (just processed, or just
        granted to the Direct login), wait for it instead of failing; default True.
    :param segment_wait_timeout: seconds to wait for the segments (default 3600), then fail naming
        the missing ones and what Direct lists.
    :param poll_interval: seconds between looks at ``GetRetargetingGoals`` while waiting (default
        300; each look costs a few points).
    :param deferrable: wait in the triggerer (default: ``[operators] default_deferrable``).
    :param description: (templated).
    :param list_type: ``RETARGETING`` (default) or ``AUDIENCE``; immutable once created.
    :param require_available: fail when Direct reports the list unavailable after the write.
    :param max_rules: rule limit checked locally (Direct's API limit is not documented; web UI: 50).
    :param max_arguments: total goals/segments limit checked locally (web UI: 250).
    :return: ``{"retargeting_list_id", "name", "action", "changed", "is_available", "scope",
        "goals", "url", "units"}``; ``action`` is ``created``, ``updated`` or ``unchanged``.
    """

    template_fields: Sequence[str] = ("name", "rules", "description", "client_login", "yandex_direct_conn_id")
    template_fields_renderers = {"rules": "json"}
    operator_extra_links = (YandexDirectRetargetingListLink(),)
    ui_color = "#fff5cc"

    def __init__(
        self,
        *,
        name: str,
        rules: list[dict[str, Any]],
        description: str | None = None,
        list_type: str = "RETARGETING",
        require_available: bool = True,
        max_rules: int = 50,
        max_arguments: int = 250,
        membership_life_span: int = 90,
        wait_for_segments: bool = True,
        segment_wait_timeout: float = 3600.0,
        poll_interval: float = 300.0,
        deferrable: bool = conf.getboolean("operators", "default_deferrable", fallback=False),
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.name = name
        self.rules = rules
        self.membership_life_span = membership_life_span
        self.wait_for_segments = wait_for_segments
        self.segment_wait_timeout = segment_wait_timeout
        self.poll_interval = poll_interval
        self.deferrable = deferrable
        self.description = description
        self.list_type = list_type
        self.require_available = require_available
        self.max_rules = max_rules
        self.max_arguments = max_arguments

    def _execute(self, context: Context) -> dict[str, Any]:
        # core.transport imports requests: not at DAG parse
        from airflow_audience_provider.core.transport import call_with_read_back

        name = str(self.name or "").strip()
        if not name or len(name) > MAX_NAME:
            raise AudienceValidationError(
                f"A retargeting list name must have 1-{MAX_NAME} characters, got {len(name)}", vendor="yandex_direct"
            )
        if self.description is not None and len(self.description) > MAX_DESCRIPTION:
            raise AudienceValidationError(
                f"A description may have at most {MAX_DESCRIPTION} characters", vendor="yandex_direct"
            )
        if self.list_type not in LIST_TYPES:
            raise AudienceValidationError(f"list_type must be one of {LIST_TYPES}", vendor="yandex_direct")
        span = self.membership_life_span
        if isinstance(span, bool) or not isinstance(span, int) or not LIFE_SPAN_DAYS[0] <= span <= LIFE_SPAN_DAYS[1]:
            raise AudienceValidationError(
                f"membership_life_span must be {LIFE_SPAN_DAYS[0]}-{LIFE_SPAN_DAYS[1]} days, got {span!r}",
                vendor="yandex_direct",
                field="MembershipLifeSpan",
            )
        hook = self.hook
        segments = _rule_segments(self.rules)
        if segments and self.wait_for_segments:
            # A segment processed or granted a moment ago may not be listed yet: wait, do not fail for good.
            self.wait_for(
                YandexDirectSegmentsListedTrigger,
                {"segments": segments, "client_login": hook.client_login},
                deferrable=self.deferrable,
                poll_interval=self.poll_interval,
                timeout=self.segment_wait_timeout,
                look_first=True,
            )
        goals = hook.get_retargeting_goals()
        rules, life_span_ids, resolved = build_rules(hook, self.rules, goals, span)
        validate_rules(rules, max_rules=self.max_rules, max_arguments=self.max_arguments, metrica_goals=life_span_ids)
        for item in resolved:
            self.log.info(
                "Resolved %s %r to Direct goal %s (%s)", item["kind"], item["input"], item["goal_id"], item.get("name")
            )
        if all(rule["Operator"] == "NONE" for rule in rules):
            self.log.warning(
                "Every rule of %r is NONE: Direct uses such a list only in bid adjustments, not as an audience target",
                name,
            )

        matches = hook.find_retargeting_lists_by_name(name)
        if len(matches) > 1:
            raise AudienceValidationError(
                f"Several Yandex Direct retargeting lists are named {name!r} "
                f"({', '.join(str(m['Id']) for m in matches)}); rename or delete the extras first",
                vendor="yandex_direct",
            )
        current = matches[0] if matches else None
        changed: list[str] = []
        if current is None:
            body: dict[str, Any] = {"Name": name, "Type": self.list_type, "Rules": rules}
            if self.description is not None:
                body["Description"] = self.description

            def send() -> int:
                (outcome,) = hook.add_retargeting_lists([body])
                self._judge_single(outcome, f"add retargeting list {name!r}")
                return int(outcome["id"])

            def read_back() -> int | None:
                found = hook.find_retargeting_lists_by_name(name)
                return int(found[0]["Id"]) if found else None

            list_id = call_with_read_back(
                send, read_back, what=f"Creating retargeting list {name!r}", transport=hook.transport
            )
            action, changed = "created", ["Name", "Rules", *(["Description"] if self.description is not None else [])]
        else:
            list_id = int(current["Id"])
            if current.get("Type") and current["Type"] != self.list_type:
                raise AudienceValidationError(
                    f"Retargeting list {name!r} ({list_id}) is of type {current['Type']}, not {self.list_type}; "
                    "Direct cannot change a list's type: delete it or choose another name",
                    vendor="yandex_direct",
                )
            update: dict[str, Any] = {"Id": list_id}
            if rules_signature(current.get("Rules") or [], life_span_ids) != rules_signature(rules, life_span_ids):
                update["Rules"] = rules
            if self.description is not None and (current.get("Description") or "") != self.description:
                update["Description"] = self.description
            changed = sorted(k for k in update if k != "Id")
            if changed:
                (outcome,) = hook.update_retargeting_lists([update])
                self._judge_single(outcome, f"update retargeting list {name!r} ({list_id})")
                action = "updated"
            else:
                action = "unchanged"
        url = hook.retargeting_list_url(list_id)
        YandexDirectRetargetingListLink.persist(context, url)
        context["ti"].xcom_push(key="retargeting_list_id", value=list_id)
        if action != "unchanged":
            self._remember_list(context, list_id, action)

        stored = hook.get_retargeting_list(list_id)
        available = stored.get("IsAvailable")
        self.log.info("Yandex Direct retargeting list %r (%s): %s %s", name, list_id, action, changed or "")
        result = {
            "retargeting_list_id": list_id,
            "name": name,
            "action": action,
            "changed": changed,
            "is_available": available,
            "scope": stored.get("Scope"),
            "goals": [{k: v for k, v in r.items() if k != "input"} | {"input": str(r["input"])} for r in resolved],
            "url": url,
            "units": self._units(),
        }
        if available == "NO":
            message = (
                f"Yandex Direct reports retargeting list {name!r} ({list_id}) as unavailable (IsAvailable=NO): "
                "a referenced segment or goal is not accessible to this login"
            )
            if self.require_available:
                raise AudienceValidationError(message, vendor="yandex_direct")
            self.log.warning(message)
        return result

    def execute_complete(self, context: Context, event: dict[str, Any] | None = None) -> dict[str, Any]:
        """Resume once Direct lists the segments (or fail on the trigger's timeout, naming what is missing)."""
        validate_event(event, "yandex_direct")
        return self.execute(context)

    def _judge_single(self, outcome: dict[str, Any], what: str) -> None:
        """One list per call: its item error is the task's error, whatever on_item_error says."""
        for warning in outcome.get("warnings") or []:
            self.log.warning("Yandex Direct %s: warning %s %s", what, warning.get("code"), warning.get("message"))
        if outcome.get("errors"):
            first = outcome["errors"][0]
            raise AudienceValidationError(
                f"Yandex Direct refused to {what}: {describe_outcome(outcome)}",
                vendor="yandex_direct",
                code=str(first.get("code")),
            )


class YandexDirectDeleteRetargetingListsOperator(_YandexDirectOperator):
    """Delete Yandex Direct retargeting lists by id or name; lists still used by audience targets are
    not sent for deletion but reported (``in_use``: list id -> target ids).

    .. seealso:: :ref:`howto/operator:YandexDirectDeleteRetargetingListsOperator`

    :param retargeting_list_ids: ids to delete (templated).
    :param names: names to delete, every list with that name (templated).
    :param missing_ok: a list that does not exist counts as deleted (reruns succeed).
    :return: ``{"deleted", "missing", "in_use", "outcomes", "units"}``. With ``on_item_error="fail"``
        lists in use or refused by Direct fail the task after the others were deleted.
    """

    template_fields: Sequence[str] = ("retargeting_list_ids", "names", "client_login", "yandex_direct_conn_id")
    ui_color = "#ffe6e6"

    def __init__(
        self,
        *,
        retargeting_list_ids: list[int] | None = None,
        names: list[str] | None = None,
        missing_ok: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.retargeting_list_ids = retargeting_list_ids
        self.names = names
        self.missing_ok = missing_ok

    def _execute(self, context: Context) -> dict[str, Any]:
        hook = self.hook
        wanted = [int(i) for i in (self.retargeting_list_ids or [])]
        missing: list[Any] = []
        if self.names:
            by_name: dict[str, list[int]] = {}
            for item in hook.get_retargeting_lists(field_names=("Id", "Name")):
                by_name.setdefault(item["Name"], []).append(int(item["Id"]))
            for name in self.names:
                if name in by_name:
                    wanted += by_name[name]
                else:
                    missing.append(name)
        wanted = list(dict.fromkeys(wanted))
        existing = (
            {int(i["Id"]) for i in hook.get_retargeting_lists(ids=wanted, field_names=("Id",))} if wanted else set()
        )
        missing += [i for i in wanted if i not in existing]
        if missing and not self.missing_ok:
            raise AudienceNotFoundError(f"Yandex Direct retargeting lists not found: {missing}", vendor="yandex_direct")
        candidates = [i for i in wanted if i in existing]
        in_use: dict[str, list[int]] = {}
        if candidates:
            for target in hook.get_audience_targets(
                retargeting_list_ids=candidates, field_names=("Id", "RetargetingListId")
            ):
                in_use.setdefault(str(target["RetargetingListId"]), []).append(int(target["Id"]))
        deletable = [i for i in candidates if str(i) not in in_use]
        outcomes = [
            _compact(o, retargeting_list_id=o["input"])
            for o in (hook.delete_retargeting_lists(deletable) if deletable else [])
        ]
        deleted = [o["retargeting_list_id"] for o in outcomes if o["status"] != "error"]
        for list_id in deleted:
            self._remember_list(context, list_id, "deleted")
        for list_id, targets in in_use.items():
            outcomes.append(
                {
                    "retargeting_list_id": int(list_id),
                    "id": None,
                    "status": "error",
                    "errors": [
                        {
                            "code": "in_use",
                            "message": "used by audience targets; delete or re-point them first",
                            "details": f"targets {targets[:20]}",
                        }
                    ],
                }
            )
        self.log.info("Deleted Yandex Direct retargeting lists %s; in use: %s; missing: %s", deleted, in_use, missing)
        self._judge(
            context,
            [{**o, "index": n, "input": o["retargeting_list_id"]} for n, o in enumerate(outcomes)],
            "delete retargeting lists",
        )
        return {"deleted": deleted, "missing": missing, "in_use": in_use, "outcomes": outcomes, "units": self._units()}


# -- audience targets ----------------------------------------------------------------------------


class YandexDirectAddAudienceTargetsOperator(_YandexDirectOperator):
    """Attach a retargeting list to ad groups as audience targets; a group that already targets the
    list is left alone (reruns never duplicate, and a resend after an ambiguous failure is reconciled).

    .. seealso:: :ref:`howto/operator:YandexDirectAddAudienceTargetsOperator`

    :param retargeting_list_id: the list (templated; e.g. from the create-or-update task's XCom).
    :param ad_group_ids: ad groups to attach it to (templated).
    :param context_bid: bid in the account currency (e.g. ``12.5``), sent as micros; manual strategies.
    :param strategy_priority: ``LOW``, ``NORMAL`` or ``HIGH``; automatic strategies.
    :return: ``{"retargeting_list_id", "added", "existing", "failed", "outcomes", "url", "units"}``;
        each outcome ``{"ad_group_id", "id", "status": "added"|"exists"|"error", "errors"?}``.
    """

    template_fields: Sequence[str] = (
        "retargeting_list_id",
        "ad_group_ids",
        "context_bid",
        "strategy_priority",
        "client_login",
        "yandex_direct_conn_id",
    )
    operator_extra_links = (YandexDirectRetargetingListLink(),)
    ui_color = "#fff5cc"

    def __init__(
        self,
        *,
        retargeting_list_id: int | str,
        ad_group_ids: list[int] | str,
        context_bid: float | None = None,
        strategy_priority: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.retargeting_list_id = retargeting_list_id
        self.ad_group_ids = ad_group_ids
        self.context_bid = context_bid
        self.strategy_priority = strategy_priority

    def _execute(self, context: Context) -> dict[str, Any]:
        # core.transport imports requests: not at DAG parse
        from airflow_audience_provider.core.transport import call_with_read_back

        hook = self.hook
        list_id = int(self.retargeting_list_id)
        groups = [int(g) for g in _as_list(self.ad_group_ids)]
        url = hook.retargeting_list_url(list_id)
        YandexDirectRetargetingListLink.persist(context, url)
        hook.get_retargeting_list(list_id)  # a clear error for a wrong list id before anything else

        def existing() -> dict[int, int]:
            found = hook.get_audience_targets(
                ad_group_ids=groups, retargeting_list_ids=[list_id], field_names=("Id", "AdGroupId")
            )
            return {int(t["AdGroupId"]): int(t["Id"]) for t in found}

        before = existing() if groups else {}
        todo = [g for g in dict.fromkeys(groups) if g not in before]
        items = []
        for group in todo:
            item: dict[str, Any] = {"AdGroupId": group, "RetargetingListId": list_id}
            if self.context_bid not in (None, ""):
                item["ContextBid"] = round(float(self.context_bid) * 1_000_000)  # micros: currency x 1,000,000
            if self.strategy_priority:
                item["StrategyPriority"] = str(self.strategy_priority).upper()
            items.append(item)

        def send() -> list[dict[str, Any]]:
            return hook.add_audience_targets(items)

        def read_back() -> list[dict[str, Any]] | None:
            now = existing()
            if not all(g in now for g in todo):
                return None  # resend: groups done meanwhile answer 9801 and count as existing
            return [
                {"index": n, "input": i, "id": now[i["AdGroupId"]], "errors": [], "warnings": []}
                for n, i in enumerate(items)
            ]

        raw = call_with_read_back(send, read_back, what=f"Adding audience targets for list {list_id}") if items else []
        outcomes = [{"ad_group_id": g, "id": t, "status": "exists"} for g, t in before.items()]
        for outcome in raw:
            codes = {e.get("code") for e in outcome.get("errors") or []}
            if codes == {ALREADY_EXISTS}:
                outcomes.append({"ad_group_id": outcome["input"]["AdGroupId"], "id": None, "status": "exists"})
                continue
            compact = _compact(outcome, ad_group_id=outcome["input"]["AdGroupId"])
            compact["status"] = "error" if outcome.get("errors") else "added"
            outcomes.append(compact)
        self.log.info(
            "Audience targets of list %s: %d added, %d already there, %d failed",
            list_id,
            sum(o["status"] == "added" for o in outcomes),
            sum(o["status"] == "exists" for o in outcomes),
            sum(o["status"] == "error" for o in outcomes),
        )
        self._judge(
            context,
            [o for o in raw if {e.get("code") for e in o.get("errors") or []} != {ALREADY_EXISTS}],
            "add audience targets",
        )
        return {
            "retargeting_list_id": list_id,
            "added": [o["id"] for o in outcomes if o["status"] == "added"],
            "existing": [o["ad_group_id"] for o in outcomes if o["status"] == "exists"],
            "failed": [o["ad_group_id"] for o in outcomes if o["status"] == "error"],
            "outcomes": outcomes,
            "url": url,
            "units": self._units(),
        }


class _AudienceTargetsByIdOperator(_YandexDirectOperator):
    """Select audience targets by ids, or by retargeting list (optionally within ad groups/campaigns).

    :param target_ids: audience target ids (templated).
    :param retargeting_list_id: every target of this list ... (templated)
    :param ad_group_ids: ... limited to these ad groups (templated).
    :param campaign_ids: ... or these campaigns (templated).
    """

    template_fields: Sequence[str] = (
        "target_ids",
        "retargeting_list_id",
        "ad_group_ids",
        "campaign_ids",
        "client_login",
        "yandex_direct_conn_id",
    )
    #: what the call does, for the failure message ("suspend", "resume", "delete")
    method = ""
    #: the past tense for the log line
    verb = ""

    def __init__(
        self,
        *,
        target_ids: list[int] | str | None = None,
        retargeting_list_id: int | str | None = None,
        ad_group_ids: list[int] | str | None = None,
        campaign_ids: list[int] | str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if target_ids is None and retargeting_list_id is None and ad_group_ids is None and campaign_ids is None:
            raise ValueError("Give target_ids, or retargeting_list_id / ad_group_ids / campaign_ids to select targets")
        self.target_ids = target_ids
        self.retargeting_list_id = retargeting_list_id
        self.ad_group_ids = ad_group_ids
        self.campaign_ids = campaign_ids

    def _select(self) -> list[int]:
        ids = [int(i) for i in _as_list(self.target_ids)]
        if ids:
            return list(dict.fromkeys(ids))
        found = self.hook.get_audience_targets(
            retargeting_list_ids=[int(self.retargeting_list_id)]
            if self.retargeting_list_id not in (None, "")
            else None,
            ad_group_ids=[int(i) for i in _as_list(self.ad_group_ids)] or None,
            campaign_ids=[int(i) for i in _as_list(self.campaign_ids)] or None,
            field_names=("Id",),
        )
        return [int(t["Id"]) for t in found]

    def _apply(self, ids: list[int]) -> list[dict[str, Any]]:
        """Send the one Direct call of this operator for these target ids."""
        raise NotImplementedError

    def _execute(self, context: Context) -> dict[str, Any]:
        ids = self._select()
        if not ids:
            self.log.info("No audience targets selected; nothing to %s", self.verb)
            return {"done": [], "failed": [], "outcomes": [], "units": self._units()}
        raw = self._apply(ids)
        outcomes = [_compact(o, target_id=o["input"]) for o in raw]
        self.log.info(
            "%s %d audience targets (%d failed)",
            self.verb.capitalize(),
            sum(o["status"] != "error" for o in outcomes),
            sum(o["status"] == "error" for o in outcomes),
        )
        self._judge(context, raw, f"{self.method} audience targets")
        return {
            "done": [o["target_id"] for o in outcomes if o["status"] != "error"],
            "failed": [o["target_id"] for o in outcomes if o["status"] == "error"],
            "outcomes": outcomes,
            "units": self._units(),
        }


class YandexDirectSuspendAudienceTargetsOperator(_AudienceTargetsByIdOperator):
    """Pause audience targets (already paused ones succeed with Direct's warning 10242).

    .. seealso:: :ref:`howto/operator:YandexDirectSuspendAudienceTargetsOperator`

    :return: ``{"done", "failed", "outcomes", "units"}``.
    """

    method, verb = "suspend", "suspended"

    def _apply(self, ids: list[int]) -> list[dict[str, Any]]:
        return self.hook.suspend_audience_targets(ids)


class YandexDirectResumeAudienceTargetsOperator(_AudienceTargetsByIdOperator):
    """Unpause audience targets (running ones succeed with Direct's warning 10243).

    .. seealso:: :ref:`howto/operator:YandexDirectResumeAudienceTargetsOperator`

    :return: ``{"done", "failed", "outcomes", "units"}``.
    """

    method, verb = "resume", "resumed"

    def _apply(self, ids: list[int]) -> list[dict[str, Any]]:
        return self.hook.resume_audience_targets(ids)


class YandexDirectDeleteAudienceTargetsOperator(_AudienceTargetsByIdOperator):
    """Remove audience targets (e.g. before deleting their retargeting list).

    .. seealso:: :ref:`howto/operator:YandexDirectDeleteAudienceTargetsOperator`

    :return: ``{"done", "failed", "outcomes", "units"}``.
    """

    method, verb = "delete", "deleted"

    def _apply(self, ids: list[int]) -> list[dict[str, Any]]:
        return self.hook.delete_audience_targets(ids)


class YandexDirectSetAudienceTargetBidsOperator(_YandexDirectOperator):
    """Set bids or priorities of audience targets, per target, per ad group or per campaign.

    .. seealso:: :ref:`howto/operator:YandexDirectSetAudienceTargetBidsOperator`

    :param bids: items with one of ``target_id``, ``ad_group_id``, ``campaign_id`` (one kind per task)
        and ``context_bid`` (account currency, sent as micros) and/or ``strategy_priority`` (templated).
        Direct-shaped items (``Id``/``AdGroupId``/``CampaignId``, ``ContextBid`` in micros) pass as-is.
    :return: ``{"done", "failed", "outcomes", "units"}``.
    """

    template_fields: Sequence[str] = ("bids", "client_login", "yandex_direct_conn_id")
    template_fields_renderers = {"bids": "json"}

    def __init__(self, *, bids: list[dict[str, Any]], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.bids = bids

    def _execute(self, context: Context) -> dict[str, Any]:
        items = [_direct_bid(b) for b in _as_list(self.bids)]
        raw = self.hook.set_bids_audience_targets(items)
        outcomes = []
        for outcome in raw:
            key = next(k for k in ("Id", "AdGroupId", "CampaignId") if k in outcome["input"])
            outcomes.append(_compact(outcome, **{_SNAKE[key]: outcome["input"][key]}))
        self._judge(context, raw, "set audience target bids")
        return {
            "done": [o for o in outcomes if o["status"] != "error"],
            "failed": [o for o in outcomes if o["status"] == "error"],
            "outcomes": outcomes,
            "units": self._units(),
        }


_SNAKE = {"Id": "target_id", "AdGroupId": "ad_group_id", "CampaignId": "campaign_id"}


def _direct_bid(bid: dict[str, Any]) -> dict[str, Any]:
    if not isinstance(bid, dict):
        raise AudienceValidationError(f"A bid must be a dict, got {bid!r}", vendor="yandex_direct")
    item: dict[str, Any] = {}
    for ours, theirs in (("target_id", "Id"), ("ad_group_id", "AdGroupId"), ("campaign_id", "CampaignId")):
        for key in (ours, theirs):
            if bid.get(key) not in (None, ""):
                item[theirs] = int(bid[key])
    if bid.get("context_bid") not in (None, ""):
        item["ContextBid"] = round(float(bid["context_bid"]) * 1_000_000)
    elif bid.get("ContextBid") not in (None, ""):
        item["ContextBid"] = int(bid["ContextBid"])
    priority = bid.get("strategy_priority") or bid.get("StrategyPriority")
    if priority:
        item["StrategyPriority"] = str(priority).upper()
    return item


def _as_list(value: Any) -> list[Any]:
    """Lists stay lists; a templated string like ``"[1, 2]"`` or ``"1,2"`` becomes a list."""
    if value is None or value == "":
        return []
    if isinstance(value, list | tuple | set):
        return list(value)
    if isinstance(value, str):
        import json

        text = value.strip()
        if text.startswith("["):
            return list(json.loads(text))
        return [p.strip() for p in text.split(",") if p.strip()]
    return [value]
