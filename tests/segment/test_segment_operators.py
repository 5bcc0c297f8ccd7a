"""Segment operators against the fake: idempotent upserts, the edit lock, enable/disable, remove, preview."""

from __future__ import annotations

import pytest
from airflow_compat import TaskDeferred

from airflow_audience_provider.core.errors import (
    AudienceError,
    AudienceJobFailedError,
    AudienceNotFoundError,
    AudienceRateLimitError,
    AudienceValidationError,
)
from airflow_audience_provider.hooks.segment import SegmentAudienceLockedError
from airflow_audience_provider.operators.segment import (
    SegmentCreateOrUpdateAudienceOperator,
    SegmentDisableAudienceOperator,
    SegmentEnableAudienceOperator,
    SegmentPreviewAudienceOperator,
    SegmentRemoveAudienceOperator,
)
from airflow_audience_provider.triggers.segment import SegmentAudienceEditableTrigger, SegmentAudiencePreviewTrigger

QUERY = "event('Order Completed').within(30 days).count() >= 1"
SEED = "aud_sandboxSeedAudience000000001"
POLL = 0.05


def upsert(**kwargs) -> SegmentCreateOrUpdateAudienceOperator:
    kwargs.setdefault("task_id", "upsert")
    kwargs.setdefault("name", "Buyers")
    kwargs.setdefault("definition", QUERY)
    kwargs.setdefault("lock_poll_interval", POLL)
    kwargs.setdefault("lock_timeout", 10)
    return SegmentCreateOrUpdateAudienceOperator(**kwargs)


def patches(segment) -> list[dict]:
    return [r for r in segment.requests if r["method"] == "PATCH"]


# -- create or update ---------------------------------------------------------------------------


def test_creates_then_reruns_unchanged(segment, context):
    first = upsert(description="d").execute(context)
    assert first["action"] == "created" and first["enabled"] is False  # created disabled by default
    audience_id = first["audience_id"]
    assert context["ti"].pushed["audience_id"] == audience_id
    assert context["ti"].pushed["segment_audience_url"] == first["url"]
    assert first["url"].endswith(f"/engage/spaces/{segment.space_id}/audiences/{audience_id}")
    uri = f"segment://{segment.space_id}/audience/{audience_id}"
    assert first["asset_uri"] == uri
    ((alias, event_uri, extra),) = context["outlet_events"].added
    assert (alias, event_uri) == ("segment-audiences", uri)
    assert extra == {
        "audience_extra_version": 1,
        "vendor": "segment",
        "account": segment.space_id,
        "kind": "audience",
        "object_id": audience_id,
        "object_name": "Buyers",
        "action": "created",
        "link": first["url"],
    }

    segment.clear_requests()
    second = upsert(description="d", definition="  " + QUERY + "\n").execute(context)
    assert second["action"] == "unchanged" and second["audience_id"] == audience_id
    assert [r["method"] for r in segment.requests] == ["GET"]  # one search, no write
    assert [a["name"] for a in segment.audiences].count("Buyers") == 1
    assert len(context["outlet_events"].added) == 1  # nothing changed, nothing announced


def test_update_sends_one_patch_with_every_change(segment, context):
    created = upsert().execute(context)
    result = upsert(definition="trait('ltv') > 500", description="new", enabled=True).execute(context)
    assert result["action"] == "updated"
    assert result["changed_fields"] == ["definition", "description", "enabled"]
    assert len(patches(segment)) == 1
    stored = segment.audience(created["audience_id"])
    assert stored["definition"]["query"] == "trait('ltv') > 500" and stored["enabled"] is True


def test_back_to_back_edits_wait_for_the_lock(segment, context):
    segment.configure(processing_seconds=3)  # a 1 s lock: long enough to see under load, short enough to wait out
    created = upsert().execute(context)
    upsert(description="first edit").execute(context)
    assert segment.audience(created["audience_id"])["status"] == "Locked"
    upsert(description="second edit").execute(context)  # waits for the lock, then edits
    enabled = SegmentEnableAudienceOperator(
        task_id="enable", audience_id=created["audience_id"], lock_poll_interval=POLL, lock_timeout=10
    ).execute(context)
    assert enabled["action"] == "enabled"
    assert segment.refused_edits == 0  # no edit was ever sent to a locked audience
    assert len(patches(segment)) == 3


def test_a_lock_that_does_not_clear_fails_retryably(segment, context):
    created = upsert().execute(context)
    segment.set_status(created["audience_id"], "Locked")
    with pytest.raises(SegmentAudienceLockedError, match="stayed locked") as caught:
        upsert(description="x", lock_timeout=0.2).execute(context)
    assert not isinstance(caught.value, AudienceJobFailedError)  # Airflow may retry it
    assert patches(segment) == []
    assert context["ti"].pushed["audience_id"] == created["audience_id"]  # linked before failing


@pytest.mark.asyncio
async def test_deferrable_lock_wait_resumes_from_a_fresh_read(segment, context):
    segment.configure(processing_seconds=30)
    created = upsert().execute(context)
    upsert(description="first").execute(context)  # the audience is now locked
    op = upsert(description="second", deferrable=True)
    with pytest.raises(TaskDeferred) as deferred:
        op.execute(context)
    trigger = deferred.value.trigger
    assert isinstance(trigger, SegmentAudienceEditableTrigger)
    assert deferred.value.method_name == "resume_after_lock"
    assert trigger.status_kwargs == {"audience_id": created["audience_id"], "space_id": segment.space_id}
    assert len(patches(segment)) == 1  # nothing was sent to the locked audience

    segment.advance_time(31)  # the first edit has been incorporated
    event = (await anext(trigger.run())).payload
    assert event["status"] == "success"
    result = op.resume_after_lock(context, event)
    assert result["action"] == "updated" and result["changed_fields"] == ["description"]
    assert segment.audience(created["audience_id"])["description"] == "second"
    assert segment.refused_edits == 0


def test_deferred_lock_timeout_is_a_lock_error(segment, context):
    event = {"status": "timeout", "vendor": "segment", "message": "Timed out waiting for the edit lock"}
    with pytest.raises(SegmentAudienceLockedError, match="Timed out"):
        upsert(deferrable=True).resume_after_lock(context, event)


def test_type_change_is_refused(segment, context):
    upsert().execute(context)
    with pytest.raises(AudienceValidationError, match="cannot change an audience's type"):
        upsert(audience_type="ACCOUNTS").execute(context)


def test_invalid_definition_fails_with_the_vendor_message(segment, context):
    with pytest.raises(AudienceValidationError, match="must end in a comparison"):
        upsert(definition="trait('ltv')").execute(context)
    assert context["outlet_events"].added == []


def test_bad_input_fails_before_any_call(segment, context):
    with pytest.raises(AudienceValidationError, match="audience_type"):
        upsert(audience_type="PEOPLE").execute(context)
    with pytest.raises(AudienceValidationError, match="unbalanced"):
        upsert(definition="event('x'.count() > 1").execute(context)
    assert segment.requests == []


def test_unknown_space_is_named(segment, context):
    with pytest.raises(AudienceNotFoundError, match="spa_elsewhere"):
        upsert(space_id="spa_elsewhere").execute(context)


def test_definition_from_a_template_file(segment, tmp_path):
    (tmp_path / "buyers.segmentql").write_text(QUERY + "\n")
    op = upsert(definition="buyers.segmentql")
    assert "definition" in op.template_fields and op.template_ext == (".segmentql",)
    from jinja2 import Environment, FileSystemLoader

    op.render_template_fields({}, jinja_env=Environment(loader=FileSystemLoader(str(tmp_path))))
    assert op.definition.strip() == QUERY


# -- enable / disable -------------------------------------------------------------------------


def test_enable_by_name_and_rerun(segment, context):
    created = upsert().execute(context)
    op = SegmentEnableAudienceOperator(task_id="enable", audience_name="Buyers", lock_poll_interval=POLL)
    assert op.execute(context)["action"] == "enabled"
    assert segment.audience(created["audience_id"])["enabled"] is True
    segment.advance_time(60)
    assert op.execute(context)["action"] == "unchanged"
    assert len(patches(segment)) == 1


def test_disable(segment, context):
    result = SegmentDisableAudienceOperator(task_id="disable", audience_id=SEED, lock_poll_interval=POLL).execute(
        context
    )
    assert result["action"] == "disabled" and segment.audience(SEED)["enabled"] is False


def test_enable_needs_exactly_one_reference(segment, context):
    with pytest.raises(AudienceValidationError, match="exactly one"):
        SegmentEnableAudienceOperator(task_id="enable").execute(context)
    with pytest.raises(AudienceNotFoundError, match="aud_missing"):
        SegmentEnableAudienceOperator(task_id="enable", audience_id="aud_missing").execute(context)


# -- remove -------------------------------------------------------------------------------------


def test_remove_and_rerun(segment, context):
    created = upsert().execute(context)
    op = SegmentRemoveAudienceOperator(task_id="rm", audience_name="Buyers")
    assert op.execute(context) == {
        "audience_id": created["audience_id"],
        "space_id": segment.space_id,
        "removed": True,
        "references_checked": True,
    }
    assert op.execute(context) == {
        "audience_id": None,
        "space_id": segment.space_id,
        "removed": False,
        "references_checked": False,
    }
    with pytest.raises(AudienceNotFoundError):
        SegmentRemoveAudienceOperator(task_id="rm", audience_name="Buyers", missing_ok=False).execute(context)


def test_remove_refuses_a_referenced_audience(segment, context):
    key = segment.audience(SEED)["key"]
    upsert(name="Derived", definition=f"trait('{key}') = 'true'").execute(context)
    with pytest.raises(AudienceValidationError, match="referenced by Derived"):
        SegmentRemoveAudienceOperator(task_id="rm", audience_id=SEED).execute(context)
    assert segment.audience(SEED) is not None
    SegmentRemoveAudienceOperator(task_id="rm", audience_id=SEED, force=True).execute(context)
    assert segment.audience(SEED) is None


def test_remove_goes_ahead_with_a_warning_where_references_are_not_offered(segment, context):
    """The references endpoint is alpha-only: a workspace without it must still be able to remove."""
    segment.configure(references_endpoint=0)
    created = upsert().execute(context)
    result = SegmentRemoveAudienceOperator(task_id="rm", audience_id=created["audience_id"]).execute(context)
    assert result["removed"] is True and result["references_checked"] is False
    assert segment.audience(created["audience_id"]) is None


def test_remove_refuses_when_the_asked_for_check_cannot_be_made(segment, context):
    segment.configure(references_endpoint=0)
    created = upsert().execute(context)
    with pytest.raises(AudienceValidationError, match="audience-references endpoint answered 404"):
        SegmentRemoveAudienceOperator(task_id="rm", audience_id=created["audience_id"], check_references=True).execute(
            context
        )
    assert segment.audience(created["audience_id"]) is not None
    skipped = SegmentRemoveAudienceOperator(task_id="rm", audience_id=created["audience_id"], check_references=False)
    assert skipped.execute(context)["references_checked"] is False
    assert not any(r["path"].endswith("/audience-references") and r["status"] == 200 for r in segment.requests)


# -- preview ------------------------------------------------------------------------------------


def preview(**kwargs) -> SegmentPreviewAudienceOperator:
    kwargs.setdefault("task_id", "preview")
    kwargs.setdefault("definition", QUERY)
    kwargs.setdefault("poll_interval", POLL)
    kwargs.setdefault("timeout", 10)
    return SegmentPreviewAudienceOperator(**kwargs)


def test_preview_in_the_worker(segment, context):
    result = preview().execute(context)
    assert result["status"] == "COMPLETED" and result["size"] > 0 and result["source"] == "preview"
    assert context["ti"].pushed["preview_id"] == result["preview_id"]


def test_preview_size_guards(segment, context):
    with pytest.raises(AudienceValidationError, match="below min_size"):
        preview(min_size=10**9).execute(context)
    with pytest.raises(AudienceValidationError, match="above max_size"):
        preview(max_size=1).execute(context)


def test_failed_preview_fails_the_task(segment, context):
    segment.fail_next_preview("unknown event")
    with pytest.raises(AudienceJobFailedError, match="unknown event"):
        preview().execute(context)


def test_unchanged_audience_spends_no_preview(segment, context, wait_until):
    created = upsert(enabled=True).execute(context)
    wait_until(lambda: segment.audience(created["audience_id"])["status"] == "Live")
    result = preview(audience_name="Buyers").execute(context)
    assert (
        result["source"] == "audience" and result["size"] == segment.audience(created["audience_id"])["size"]["count"]
    )
    assert not [r for r in segment.requests if r["path"].endswith("/previews")]
    assert preview(audience_name="Buyers", definition="trait('x') = 'y'").execute(context)["source"] == "preview"


@pytest.mark.asyncio
async def test_preview_deferrable(segment, context):
    op = preview(deferrable=True)
    with pytest.raises(TaskDeferred) as deferred:
        op.execute(context)
    trigger = deferred.value.trigger
    assert isinstance(trigger, SegmentAudiencePreviewTrigger)
    assert trigger.status_kwargs == {"preview_id": context["ti"].pushed["preview_id"], "space_id": segment.space_id}
    event = (await anext(trigger.run())).payload
    result = op.execute_complete(context, event)
    assert result["size"] > 0 and result["source"] == "preview"
    with pytest.raises(AudienceError):
        op.execute_complete(context, {"status": "success", "vendor": "lytics"})


def test_preview_quota_exhaustion_is_a_clear_error(segment, context, set_segment_conn, monkeypatch):
    """A used-up preview budget fails with a rate-limit error naming the quota, and sends nothing."""
    from airflow_audience_provider.core import ratelimit

    # a clock that never moves: the per-minute budget cannot free up within the limiter's max_wait
    monkeypatch.setattr(ratelimit, "_default_limiter", ratelimit.RateLimiter(clock=lambda: 0.0, sleep=lambda s: None))
    conn_id = set_segment_conn("seg_tight", extra={"rate_limits": '{"create_audience_preview": 1}'})
    preview(segment_conn_id=conn_id).execute(context)
    sent = len(segment.requests)
    with pytest.raises(AudienceRateLimitError, match="client-side quota 1 create_audience_preview requests per minute"):
        preview(segment_conn_id=conn_id).execute(context)
    assert len(segment.requests) == sent
