"""Lytics operators run with op.execute(context) against the fake; only the Airflow context is a double."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
from airflow.providers.common.compat.sdk import TaskDeferred

from airflow_audience_provider.core.errors import (
    AudienceError,
    AudienceJobFailedError,
    AudienceNotFoundError,
    AudienceTimeoutError,
    AudienceValidationError,
)
from airflow_audience_provider.operators.lytics import (
    LyticsCreateOrUpdateSegmentGroupOperator,
    LyticsCreateOrUpdateSegmentOperator,
    LyticsDeleteSegmentGroupOperator,
    LyticsDeleteSegmentOperator,
    LyticsReevaluateSegmentOperator,
)
from airflow_audience_provider.triggers.lytics import LyticsReevaluationTrigger

POLL = 0.05
#: the reevaluate operator's documented result
RESULT_KEYS = ("segment_id", "slug_name", "job_id", "requested_at", "size", "url", "status")


def upsert(**overrides) -> LyticsCreateOrUpdateSegmentOperator:
    kwargs = {
        "task_id": "upsert",
        "slug_name": "engaged",
        "name": "Engaged users",
        "segment_ql": "FILTER EXISTS email FROM user ALIAS engaged",
        "description": "people with an email",
        "tags": ["crm", "airflow"],
    }
    kwargs.update(overrides)
    return LyticsCreateOrUpdateSegmentOperator(**kwargs)


def writes(fake) -> list[tuple[str, str]]:
    return [(r["method"], r["path"]) for r in fake.requests if r["method"] in ("POST", "PUT", "DELETE")]


# -- create or update ----------------------------------------------------------------------------


def test_create_then_rerun_is_unchanged(lytics, context):
    result = upsert().execute(context)
    seg = lytics.get_segment("engaged")
    assert result["action"] == "created"
    assert result["segment_id"] == seg["id"]
    assert result["slug_name"] == "engaged"
    assert result["url"] == f"{lytics.base_url}/app/audiences/{seg['id']}?aid={lytics.aid}"
    assert result["asset_uri"] == f"lytics://{lytics.account_id}/segment/{seg['id']}"
    pushed = dict(context["ti"].pushed)
    # The shaped event also goes to XCom for the Audiences view (see the Asset event below).
    assert pushed.pop("audience_events") == [context["outlet_events"].added[0][2]]
    assert pushed == {"segment_id": seg["id"], "lytics_segment_url": result["url"]}
    assert context["outlet_events"].added == [
        (
            "lytics-segments",
            result["asset_uri"],
            {
                "audience_extra_version": 1,
                "vendor": "lytics",
                "account": lytics.account_id,
                "kind": "segment",
                "object_id": seg["id"],
                "object_name": "engaged",
                "action": "created",
                "link": result["url"],
            },
        )
    ]

    lytics.clear_requests()
    again = upsert().execute(context)
    assert again["action"] == "unchanged"
    assert again["changed_fields"] == []
    assert again["segment_id"] == seg["id"]
    # a rerun validates and reads, and writes nothing
    assert writes(lytics) == [("POST", "/api/segment/validate")]


def test_changed_definition_updates_the_same_segment(lytics, context):
    first = upsert().execute(context)
    result = upsert(segment_ql="FILTER AND (EXISTS email, EXISTS phone) FROM user ALIAS engaged").execute(context)
    assert result["action"] == "updated"
    assert result["changed_fields"] == ["segment_ql"]
    assert result["segment_id"] == first["segment_id"]
    assert [s["slug_name"] for s in lytics.segments].count("engaged") == 1
    assert not any(s["slug_name"].startswith("engaged_") for s in lytics.segments)
    assert "EXISTS phone" in lytics.get_segment("engaged")["segment_ql"]


def test_update_keeps_fields_it_does_not_manage(lytics, context):
    lytics.create_segment(
        name="Engaged users", slug_name="engaged", segment_ql="FILTER * FROM user ALIAS engaged", save_hist=True
    )
    upsert(description="new words").execute(context)
    seg = lytics.get_segment("engaged")
    assert seg["description"] == "new words"
    assert seg["save_hist"] is True


def test_whitespace_only_change_is_not_an_update(lytics, context):
    upsert().execute(context)
    result = upsert(segment_ql="FILTER   EXISTS email\n  FROM user ALIAS engaged").execute(context)
    assert result["action"] == "unchanged"


@pytest.mark.parametrize(
    ("segment_ql", "problem"),
    [
        ("FILTER * FROM user ALIAS someone_else", "ALIAS 'someone_else' in segment_ql differs from slug_name"),
        ("FILTER * FROM content ALIAS engaged", "FROM 'content' in segment_ql differs from table 'user'"),
    ],
)
def test_alias_or_from_mismatch_fails_before_any_request(lytics, context, segment_ql, problem):
    with pytest.raises(AudienceValidationError, match=problem):
        upsert(segment_ql=segment_ql).execute(context)
    assert lytics.requests == []
    assert context["ti"].pushed == {}


def test_invalid_filterql_is_refused_by_lytics_before_any_write(lytics, context):
    with pytest.raises(AudienceValidationError, match="Invalid SegmentQL"):
        upsert(segment_ql="FILTER AND ( FROM user").execute(context)
    assert writes(lytics) == [("POST", "/api/segment/validate")]
    assert lytics.get_segment("engaged") is None


def test_emit_asset_can_be_turned_off(lytics, context):
    op = upsert(emit_asset=False)
    assert op.outlets == []
    op.execute(context)
    assert context["outlet_events"].added == []


def test_asset_alias_is_declared_as_outlet():
    (alias,) = upsert(asset_alias="my-alias").outlets
    assert alias.name == "my-alias"


def test_render_template_fields(lytics, context):
    op = upsert(
        slug_name="seg_{{ params.market }}",
        name="Segment {{ params.market | upper }}",
        segment_ql='FILTER country = "{{ params.market }}" FROM user ALIAS seg_{{ params.market }}',
        tags=["{{ ds }}"],
        extra_fields={"description": "built {{ ds }}"},
        lytics_conn_id="{{ params.conn }}",
    )
    op.render_template_fields({"params": {"market": "de", "conn": "lytics_default"}, "ds": "2026-11-25"})
    assert (op.slug_name, op.name, op.tags) == ("seg_de", "Segment DE", ["2026-11-25"])
    assert op.segment_ql == 'FILTER country = "de" FROM user ALIAS seg_de'
    assert op.extra_fields == {"description": "built 2026-11-25"}
    result = op.execute(context)
    assert result["slug_name"] == "seg_de"
    assert lytics.get_segment("seg_de")["description"] == "built 2026-11-25"


def test_segment_ql_from_an_fql_file(lytics, context, tmp_path):
    from airflow.sdk import DAG

    (tmp_path / "engaged.fql").write_text("FILTER EXISTS email FROM user ALIAS {{ params.slug }}\n")
    with DAG("fql_dag", schedule=None, template_searchpath=[str(tmp_path)]):
        op = upsert(slug_name="{{ params.slug }}", segment_ql="engaged.fql")
    op.render_template_fields({"params": {"slug": "from_file"}})
    assert op.segment_ql.strip() == "FILTER EXISTS email FROM user ALIAS from_file"
    assert op.execute(context)["action"] == "created"


# -- delete -----------------------------------------------------------------------------------------


def test_delete_by_slug_and_rerun(lytics, context):
    seg = lytics.create_segment(name="Old", slug_name="old", segment_ql="FILTER * FROM user ALIAS old")
    op = LyticsDeleteSegmentOperator(task_id="delete", segments="old")
    assert op.execute(context) == {"deleted": [seg["id"]], "missing": []}
    assert lytics.get_segment("old") is None
    assert op.execute(context) == {"deleted": [], "missing": ["old"]}  # missing_ok: reruns succeed


def test_delete_missing_not_ok(lytics, context):
    with pytest.raises(AudienceNotFoundError, match="'nope' does not exist"):
        LyticsDeleteSegmentOperator(task_id="d", segments=["nope"], missing_ok=False).execute(context)


def test_delete_with_dependents_is_refused_without_a_request(lytics, context):
    base = lytics.create_segment(name="Base", slug_name="base", segment_ql="FILTER * FROM user ALIAS base")
    user = lytics.create_segment(name="User", slug_name="uses_base", segment_ql="FILTER INCLUDE base FROM user")
    with pytest.raises(AudienceValidationError, match=f"included by uses_base \\({user['id']}\\)"):
        LyticsDeleteSegmentOperator(task_id="d", segments="base").execute(context)
    assert writes(lytics) == []
    assert lytics.get_segment(base["id"]) is not None


def test_delete_with_force_sends_the_delete(lytics, context):
    base = lytics.create_segment(name="Base", slug_name="base", segment_ql="FILTER * FROM user ALIAS base")
    lytics.create_segment(name="User", slug_name="uses_base", segment_ql="FILTER INCLUDE base FROM user")
    # Lytics documents no guard, so the delete goes through and the dependent turns invalid.
    result = LyticsDeleteSegmentOperator(task_id="d", segments="base", force=True).execute(context)
    assert result == {"deleted": [base["id"]], "missing": []}
    assert [m for m, _ in writes(lytics)] == ["DELETE"]
    assert lytics.get_segment("uses_base")["invalid"] is True


def test_delete_dependent_first_then_base(lytics, context):
    base = lytics.create_segment(name="Base", slug_name="base", segment_ql="FILTER * FROM user ALIAS base")
    user = lytics.create_segment(name="User", slug_name="uses_base", segment_ql="FILTER INCLUDE base FROM user")
    result = LyticsDeleteSegmentOperator(task_id="d", segments=["uses_base", "base"]).execute(context)
    assert result == {"deleted": [user["id"], base["id"]], "missing": []}


# -- reevaluate --------------------------------------------------------------------------------------


def reevaluate(**kwargs) -> LyticsReevaluateSegmentOperator:
    kwargs.setdefault("task_id", "reevaluate")
    kwargs.setdefault("segment", "all_users")
    kwargs.setdefault("poll_interval", POLL)
    kwargs.setdefault("timeout", 10)
    return LyticsReevaluateSegmentOperator(**kwargs)


def test_reevaluate_without_wait(lytics, context):
    result = reevaluate(wait_for_completion=False).execute(context)
    seg = lytics.get_segment("all_users")
    assert result["status"] == "requested"
    assert result["segment_id"] == seg["id"]
    assert [j["workflow"] for j in lytics.jobs(seg["id"])] == ["export", "segment_reevaluate"]
    assert context["ti"].pushed["segment_id"] == seg["id"]
    assert context["ti"].pushed["requested_at"] == result["requested_at"]
    assert context["ti"].pushed["lytics_segment_url"] == result["url"]
    assert context["outlet_events"].added == []  # nothing changed yet


@pytest.mark.parametrize("jobs_listed", [False, True])
def test_reevaluate_with_wait_in_the_worker(lytics, context, jobs_listed):
    """Either signal ends the wait with the new size: the job, or (none listed) the settled size."""
    lytics.configure(list_reevaluation_jobs=int(jobs_listed))
    before = lytics.segment_size("all_users")
    result = reevaluate(deferrable=False, settle_interval=0.15).execute(context)
    assert result["status"] == "completed"
    assert result["signal"] == ("job" if jobs_listed else "size_settled")
    assert set(RESULT_KEYS) <= set(result)
    assert result["size"] == lytics.segment_size("all_users") != before
    ((alias, uri, extra),) = context["outlet_events"].added
    assert alias == "lytics-segments"
    assert uri == result["asset_uri"] == f"lytics://{lytics.account_id}/segment/{result['segment_id']}"
    assert extra["audience_extra_version"] == 1
    assert (extra["object_name"], extra["vendor_size"], extra["action"]) == ("all_users", result["size"], "reevaluated")
    assert (extra["vendor"], extra["object_id"], extra["link"]) == ("lytics", result["segment_id"], result["url"])


def test_reevaluate_wait_fails_on_a_failed_job(lytics, context):
    lytics.configure(list_reevaluation_jobs=1)
    lytics.fail_next_reevaluation(lytics.get_segment("all_users")["id"], "fault-2")
    with pytest.raises(AudienceJobFailedError, match="fault-2") as caught:
        reevaluate(deferrable=False).execute(context)
    assert caught.value.code == "fault-2"
    assert context["outlet_events"].added == []


def test_reevaluate_wait_times_out_with_a_clear_message(lytics, context):
    seg_id = lytics.get_segment("all_users")["id"]
    lytics.stall_next_reevaluation(seg_id)
    with pytest.raises(
        AudienceTimeoutError, match=f"Timed out after 0.3 s waiting for reevaluation of Lytics segment {seg_id}"
    ):
        reevaluate(deferrable=False, timeout=0.3, settle_polls=0).execute(context)


def test_reevaluate_unknown_segment(lytics, context):
    with pytest.raises(AudienceNotFoundError, match="'nope' was not found"):
        reevaluate(segment="nope").execute(context)


@pytest.mark.asyncio
async def test_reevaluate_deferrable(lytics, context):
    lytics.configure(list_reevaluation_jobs=1)
    op = reevaluate(deferrable=True, timeout=30)
    with pytest.raises(TaskDeferred) as deferred:
        op.execute(context)
    trigger = deferred.value.trigger
    assert isinstance(trigger, LyticsReevaluationTrigger)
    assert deferred.value.method_name == "execute_complete"
    assert deferred.value.timeout == timedelta(seconds=90)
    assert trigger.poll_interval == POLL
    assert trigger.conn_id == "lytics_default"
    assert 0 < trigger.deadline - time.time() <= 30
    seg_id = lytics.get_segment("all_users")["id"]
    assert trigger.status_kwargs == {
        "segment_id": seg_id,
        "requested_at": context["ti"].pushed["requested_at"],
        "size_history": [],
    }

    event = (await anext(trigger.run())).payload
    resumed = reevaluate(deferrable=True, timeout=30)  # a fresh instance, as after a real deferral
    result = resumed.execute_complete(context, event)
    assert result["status"] == "completed"
    assert set(RESULT_KEYS) <= set(result)
    assert result["requested_at"] == context["ti"].pushed["requested_at"]  # a sensor downstream needs it
    assert result["size"] == lytics.segment_size("all_users")
    assert [a for a, _, _ in context["outlet_events"].added] == ["lytics-segments"]


@pytest.mark.parametrize(
    ("event", "error"),
    [
        (None, AudienceError),
        ({"status": "finished", "vendor": "lytics"}, AudienceError),
        (
            {"status": "failed", "vendor": "lytics", "message": "job failed", "vendor_status": "failed"},
            AudienceJobFailedError,
        ),
        ({"status": "timeout", "vendor": "lytics", "message": "Timed out"}, AudienceTimeoutError),
        ({"status": "error", "vendor": "lytics", "message": "401", "http_status": 401}, AudienceError),
    ],
)
def test_execute_complete_refuses_bad_events(context, event, error):
    with pytest.raises(error):
        reevaluate(deferrable=True).execute_complete(context, event)
    assert context["outlet_events"].added == []


# -- groups -----------------------------------------------------------------------------------------------


def test_group_operators_are_idempotent(lytics, context):
    create = LyticsCreateOrUpdateSegmentGroupOperator(task_id="g", name="Campaigns", description="spring")
    first = create.execute(context)
    assert first["action"] == "created"
    assert create.execute(context) == {**first, "action": "unchanged"}
    changed = LyticsCreateOrUpdateSegmentGroupOperator(task_id="g", name="Campaigns", description="summer")
    assert changed.execute(context)["action"] == "updated"
    assert [(g["name"], g["description"]) for g in lytics.groups] == [("Campaigns", "summer")]

    delete = LyticsDeleteSegmentGroupOperator(task_id="gd", group="Campaigns")
    assert delete.execute(context) == {"group_id": first["group_id"], "deleted": True}
    assert lytics.groups == []
    assert delete.execute(context) == {"group_id": None, "deleted": False}
    with pytest.raises(AudienceNotFoundError):
        LyticsDeleteSegmentGroupOperator(task_id="gd", group="Campaigns", missing_ok=False).execute(context)


def test_operator_timeouts_reach_the_transport(lytics):
    op = upsert(connect_timeout=2, read_timeout=3)
    assert op.hook.get_conn().timeouts.as_requests() == (2.0, 3.0)


def test_a_string_containing_from_is_not_a_table_mismatch(lytics, context):
    ql = 'FILTER utm_source = "email from partner" FROM user ALIAS engaged'
    assert upsert(segment_ql=ql).execute(context)["action"] == "created"
    assert lytics.get_segment("engaged")["segment_ql"] == ql


def test_a_slug_taken_in_another_table_is_refused_naming_it(lytics, context):
    # Slugs are unique per account: the content segment cannot have the audience's slug.
    audience = lytics.create_segment(name="Art", slug_name="art", segment_ql="FILTER EXISTS email FROM user ALIAS art")
    content = upsert(slug_name="art", name="Art", table="content", segment_ql="FILTER * FROM content ALIAS art")
    with pytest.raises(AudienceValidationError, match=f"used by segment {audience['id']} of table 'user'"):
        content.execute(context)
    assert [w for w in writes(lytics) if w[1].startswith("/v2/")] == []
    assert lytics.get_segment(audience["id"])["table"] == "user"


def test_segment_link_reads_the_persisted_url(mocker, context):
    from airflow_audience_provider.links.lytics import LyticsSegmentLink

    LyticsSegmentLink.persist(context, "https://app.example/audiences/abc")
    LyticsSegmentLink.persist(context, None)  # nothing to link: nothing pushed over it
    assert context["ti"].pushed == {"lytics_segment_url": "https://app.example/audiences/abc"}

    get_value = mocker.patch("airflow.sdk.execution_time.xcom.XCom.get_value", return_value="https://x/y")
    link = LyticsSegmentLink()
    assert link.get_link(upsert(), ti_key="key") == "https://x/y"
    get_value.assert_called_once_with(key="lytics_segment_url", ti_key="key")
    get_value.return_value = None
    assert link.get_link(upsert(), ti_key="key") == ""
    assert link in upsert().operator_extra_links


def test_a_definition_without_from_keeps_the_segments_table(lytics, context):
    """Lytics reads no FROM as FROM user and would make a new segment: the table is written out."""
    first = upsert(slug_name="art", name="Art", table="content", segment_ql="FILTER * ALIAS art").execute(context)
    assert first["action"] == "created" and lytics.get_segment("art")["table"] == "content"
    changed = upsert(slug_name="art", name="Art", table="content", segment_ql="FILTER EXISTS title ALIAS art")
    second = changed.execute(context)
    assert second["action"] == "updated" and second["segment_id"] == first["segment_id"]
    assert [s["slug_name"] for s in lytics.segments].count("art") == 1
    assert lytics.get_segment("art")["table"] == "content"


def test_a_reserialised_definition_is_not_rewritten_on_every_run(lytics, context):
    """Lytics stores its own rendering of the statement; the parsed forms are compared, not the text."""
    ql = "FILTER AND (`country` == 'US', visitct > 5) FROM user ALIAS us_active"
    assert upsert(slug_name="us_active", segment_ql=ql).execute(context)["action"] == "created"
    stored = lytics.get_segment("us_active")["segment_ql"]
    assert stored != ql  # the sandbox, like Lytics, re-serialised it
    assert upsert(slug_name="us_active", segment_ql=ql).execute(context)["action"] == "unchanged"
    assert [w for w in writes(lytics) if w[1].startswith("/v2/")] == [("POST", "/v2/segment")]
    other = upsert(slug_name="us_active", segment_ql=ql.replace("> 5", "> 6")).execute(context)
    assert other["action"] == "updated"
