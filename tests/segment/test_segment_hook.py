"""Every SegmentHook method against the Segment fake over HTTP: reads, writes, media types, errors, limits."""

from __future__ import annotations

import time

import pytest

from airflow_audience_provider.core.errors import (
    AudienceAuthenticationError,
    AudienceConfigurationError,
    AudienceNotFoundError,
    AudienceRateLimitError,
    AudienceServerError,
    AudienceValidationError,
)
from airflow_audience_provider.core.ratelimit import RateLimiter
from airflow_audience_provider.core.results import Phase
from airflow_audience_provider.core.transport import RetryPolicy
from airflow_audience_provider.domain.segment import audience_changes, check_definition, schedule_body
from airflow_audience_provider.hooks.segment import SegmentAudienceLockedError, SegmentHook

QUERY = "event('Order Completed').within(30 days).count() >= 1"
SEED = "aud_sandboxSeedAudience000000001"


def make(hook: SegmentHook, name: str = "Buyers", query: str = QUERY, **kwargs) -> dict:
    return hook.create_audience(name, query, **kwargs)


# -- connection -------------------------------------------------------------------------------


def test_probe_reads_the_default_space(hook, segment):
    ok, message = hook.test_connection()
    assert ok, message
    assert segment.space_id in message
    assert segment.requests[-1]["path"] == f"/spaces/{segment.space_id}"


def test_probe_without_a_space_lists_spaces(segment, set_segment_conn):
    ok, message = SegmentHook(set_segment_conn("seg_nospace", extra={"space_id": None})).test_connection()
    assert ok and "1 Engage space" in message


def test_probe_names_an_unknown_space(set_segment_conn):
    ok, message = SegmentHook(set_segment_conn("seg_badspace", extra={"space_id": "spa_nope"})).test_connection()
    assert not ok and "spa_nope" in message and "404" in message


def test_wrong_token_is_an_authentication_error(set_segment_conn):
    hook = SegmentHook(set_segment_conn("seg_badtoken", password="nope"))
    with pytest.raises(AudienceAuthenticationError):
        hook.list_audiences()
    ok, message = hook.test_connection()
    assert not ok and "401" in message and "nope" not in message


def test_bearer_prefix_and_media_type_are_sent(hook, segment):
    hook.get_audience(SEED)
    assert segment.accepts[-1] == "application/vnd.segment.v1+json"
    make(hook)
    assert segment.requests[-1]["content_type"] == "application/vnd.segment.v1+json"


def test_pasted_bearer_prefix_is_not_doubled(segment, set_segment_conn):
    hook = SegmentHook(set_segment_conn("seg_bearer", password=f"Bearer {segment.token}"))
    assert hook.get_audience(SEED)["id"] == SEED


def test_alpha_version_is_selectable(segment, set_segment_conn):
    hook = SegmentHook(set_segment_conn("seg_alpha", extra={"api_version": "v1alpha"}))
    hook.get_audience(SEED)
    assert segment.accepts[-1] == "application/vnd.segment.v1alpha+json"
    # Segment documents 10 "Update Audience for Space" calls a minute in v1alpha
    assert hook.get_conn().profile.rate_limits["update_audience"].windows[0].limit == 10


def test_alpha_refuses_what_its_shapes_lack(segment, set_segment_conn):
    hook = SegmentHook(set_segment_conn("seg_alpha2", extra={"api_version": "v1alpha"}))
    with pytest.raises(AudienceValidationError, match="LINKED"):
        hook.create_audience("L", "entity('orders').count() >= 1", audience_type="LINKED")
    with pytest.raises(AudienceValidationError, match="options"):
        hook.update_audience_for_space(SEED, options={"includeHistoricalData": True})
    assert segment.requests == []


def test_references_always_use_the_alpha_media_type(hook, segment):
    hook.list_audience_consumers(SEED)
    assert segment.accepts[-1] == "application/vnd.segment.v1alpha+json"


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        ({"region": "mars"}, "region"),
        ({"api_version": "v2"}, "api_version"),
        ({"rate_limits": "not json"}, "rate_limits"),
        ({"rate_limits": '{"get_audience": 0}'}, "positive"),
        ({"rate_limits": '{"update_audiences": 5}'}, "unknown operations"),
    ],
)
def test_bad_connection_extras_name_the_field(set_segment_conn, extra, needle):
    with pytest.raises(AudienceConfigurationError, match=needle):
        SegmentHook(set_segment_conn("seg_badextra", extra=extra)).get_audience(SEED)


def test_region_picks_the_host_when_none_is_set(set_segment_conn):
    hook = SegmentHook(set_segment_conn("seg_eu", host=None, extra={"region": "eu", "app_url": None}))
    settings = hook.settings()
    assert hook.base_url(settings) == "https://eu1.api.segmentapis.com"
    assert hook.audience_url("spa", "aud").startswith("https://eu1.app.segment.com/sandbox-workspace/engage/")


def test_space_is_required(set_segment_conn):
    hook = SegmentHook(set_segment_conn("seg_nospace2", extra={"space_id": None}))
    with pytest.raises(AudienceConfigurationError, match="space_id"):
        hook.list_audiences()


# -- audiences ----------------------------------------------------------------------------------


def test_create_get_update_remove(hook, segment):
    created = make(hook, description="d", enabled=True, options={"includeHistoricalData": True})
    assert created["id"].startswith("aud_") and created["status"] == "Preparing"
    assert segment.requests[-1]["method"] == "POST"
    got = hook.get_audience(created["id"])
    assert got["definition"]["query"] == QUERY and got["options"]["includeHistoricalData"] is True
    segment.advance_time(60)
    updated = hook.update_audience_for_space(created["id"], description="new")
    assert updated["description"] == "new" and updated["status"] == "Locked"
    segment.advance_time(60)
    hook.remove_audience_from_space(created["id"])
    assert segment.audience(created["id"]) is None
    with pytest.raises(AudienceNotFoundError, match=created["id"]):
        hook.get_audience(created["id"])


def test_list_follows_every_cursor(hook, segment):
    for i in range(5):
        segment.create_audience(name=f"A{i}", audienceType="USERS", definition={"query": QUERY})
    everything = hook.list_audiences(page_size=2)
    assert len(everything) == 6
    pages = [r for r in segment.requests if r["path"].endswith("/audiences") and r["method"] == "GET"]
    assert len(pages) == 3
    assert "pagination.count=2" in pages[0]["query"] and "pagination.cursor" in pages[1]["query"]


def test_find_by_name_is_exact(hook, segment):
    segment.create_audience(name="Buyers EU", audienceType="USERS", definition={"query": QUERY})
    assert hook.find_audience_by_name("Buyers") is None  # the NAME search matches "Buyers EU" too
    created = make(hook)
    assert hook.find_audience_by_name("Buyers")["id"] == created["id"]
    assert "search.type=NAME" in segment.requests[-1]["query"]


def test_duplicate_names_are_refused(hook, segment):
    make(hook)
    segment.create_audience(name="Buyers", audienceType="USERS", definition={"query": QUERY})
    with pytest.raises(AudienceValidationError, match="2 Segment audiences are named 'Buyers'"):
        hook.find_audience_by_name("Buyers")


def test_invalid_definition_carries_the_vendor_message(hook):
    with pytest.raises(AudienceValidationError, match="must end in a comparison") as caught:
        make(hook, query="event('Order Completed').count()")
    assert caught.value.status == 422 and caught.value.field == "definition.query"


def test_unbalanced_definition_is_refused_before_any_call(hook, segment):
    with pytest.raises(AudienceValidationError, match="unbalanced quotes"):
        make(hook, query="event('Order Completed).count() >= 1")
    assert segment.requests == []


def test_unknown_space_is_named(hook):
    with pytest.raises(AudienceNotFoundError, match="'spa_other'"):
        hook.list_audiences("spa_other")


def test_timed_out_create_is_read_back_not_duplicated(hook, segment):
    segment.faults.inject("drop", count=1, method="POST", path_prefix=f"/spaces/{segment.space_id}/audiences")
    hook.get_conn().settle_seconds = 0.0  # the fake applies nothing of a dropped request later
    created = make(hook, name="Dropped")
    # The dropped request never reached the route: the read-back found nothing, so it was resent once.
    assert [a["name"] for a in segment.audiences].count("Dropped") == 1
    assert created["name"] == "Dropped"


def test_ambiguous_create_found_by_name_is_reused(hook, segment):
    # A 502 after Segment applied the create: simulate by creating it, then failing the POST.
    existing = segment.create_audience(name="Applied", audienceType="USERS", definition={"query": QUERY})
    segment.faults.inject("status", status=502, count=1, method="POST")
    found = make(hook, name="Applied")
    assert found["id"] == existing["id"]
    assert [a["name"] for a in segment.audiences].count("Applied") == 1


def test_edit_of_a_locked_audience_is_a_lock_error(hook, segment):
    segment.configure(processing_seconds=30)  # the lock outlives the test
    created = make(hook, enabled=False)
    hook.update_audience_for_space(created["id"], name="Renamed")
    with pytest.raises(SegmentAudienceLockedError, match="locked"):
        hook.update_audience_for_space(created["id"], enabled=True)
    assert segment.refused_edits == 1


def test_locked_edit_answered_422_is_recognised(hook, segment):
    segment.configure(processing_seconds=30)  # the lock outlives the test
    segment.configure(locked_edit_status=422)
    created = make(hook, enabled=False)
    hook.update_audience_for_space(created["id"], name="Renamed")
    with pytest.raises(SegmentAudienceLockedError):
        hook.update_audience_for_space(created["id"], enabled=True)


def test_a_resent_edit_already_applied_is_a_success(hook, segment):
    """After a 5xx the transport resends the PATCH; the first attempt applied it and locked the audience."""
    segment.configure(processing_seconds=30)
    created = make(hook, enabled=False)
    hook.update_audience_for_space(created["id"], description="applied")
    again = hook.update_audience_for_space(created["id"], description="applied")  # refused as locked
    assert again["description"] == "applied" and segment.refused_edits == 1
    with pytest.raises(SegmentAudienceLockedError):  # a different change is still refused
        hook.update_audience_for_space(created["id"], description="other")


def test_update_rejects_unknown_fields(hook):
    with pytest.raises(AudienceValidationError, match="audienceType"):
        hook.update_audience_for_space(SEED, audienceType="ACCOUNTS")


def test_consumers_are_the_audiences_referencing_the_key(hook, segment):
    seed_key = segment.audience(SEED)["key"]
    user = make(hook, name="Uses seed", query=f"trait('{seed_key}') = 'true'")
    assert [a["id"] for a in hook.list_audience_consumers(SEED)] == [user["id"]]


# -- previews -----------------------------------------------------------------------------------


def test_preview_lifecycle(hook, segment):
    segment.configure(processing_seconds=30)  # the fake's clock moves only when told: no race with load
    preview = hook.create_audience_preview(QUERY)
    first = hook.audience_preview_status(preview["id"])
    assert first.phase is Phase.RUNNING and first.data["size"] is None
    segment.advance_time(31)
    done = hook.audience_preview_status(preview["id"])
    assert done.phase is Phase.DONE
    assert done.vendor_status == "COMPLETED" and done.data["size"] > 0 and done.data["sample_count"] == 3


def test_failed_preview_reports_the_reason(hook, segment):
    segment.fail_next_preview("unknown event 'Nope'")
    preview = hook.create_audience_preview(QUERY)
    segment.advance_time(60)
    result = hook.audience_preview_status(preview["id"])
    assert result.phase is Phase.FAILED and "unknown event 'Nope'" in result.message


def test_preview_quota_is_enforced_client_side(hook, segment):
    clock = [1000.0]
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        clock[0] += seconds
        segment.advance_time(seconds)  # the vendor's minute passes too

    hook.get_conn().limiter = RateLimiter(clock=lambda: clock[0], sleep=sleep)
    for _ in range(6):
        hook.create_audience_preview(QUERY)
    assert len(slept) == 1 and 59 <= slept[0] <= 60.25  # the sixth preview waited for the minute to pass
    assert len([r for r in segment.requests if r["path"].endswith("/previews")]) == 6


def test_monthly_preview_quota_fails_fast(segment, set_segment_conn, monkeypatch):
    import airflow_audience_provider.hooks.segment as module

    monkeypatch.setattr(module, "PREVIEW_MONTHLY_QUOTA", 2)  # read when the transport is built
    hook = SegmentHook(set_segment_conn("seg_month", extra={"rate_limits": '{"create_audience_preview": 1000}'}))
    hook.create_audience_preview(QUERY)
    hook.create_audience_preview(QUERY)
    with pytest.raises(AudienceRateLimitError, match="2 previews per month"):
        hook.create_audience_preview(QUERY)
    assert len(segment.requests) == 2  # the third was never sent


# -- runs and schedules -------------------------------------------------------------------------


def test_linked_audience_runs_and_schedules(hook, segment):
    linked = make(hook, name="Linked", audience_type="LINKED", query="entity('orders').count() >= 1",
                  target_entity="orders")  # fmt: skip
    assert hook.force_execute_audience_run(linked["id"])["id"].startswith("run_")
    added = hook.add_audience_schedule(linked["id"], "PERIODIC", {"interval": "1h"})
    assert hook.list_audience_schedules(linked["id"]) == [added]
    assert hook.get_audience_schedule(linked["id"], added["id"]) == added
    changed = hook.update_audience_schedule(linked["id"], added["id"], "SPECIFIC_DAYS",
                                            {"days": [1], "hours": [6], "timezone": "Europe/Berlin"})  # fmt: skip
    assert changed["strategy"] == "SPECIFIC_DAYS"
    hook.remove_audience_schedule(linked["id"], added["id"])
    assert hook.list_audience_schedules(linked["id"]) == []
    with pytest.raises(AudienceNotFoundError, match=added["id"]):
        hook.get_audience_schedule(linked["id"], added["id"])


def test_schedules_skip_the_beta_version(segment, set_segment_conn):
    hook = SegmentHook(set_segment_conn("seg_beta", extra={"api_version": "v1beta"}))
    linked = hook.create_audience("L", "entity('orders').count() >= 1", audience_type="LINKED")
    assert segment.accepts[-1] == "application/vnd.segment.v1beta+json"
    hook.list_audience_schedules(linked["id"])
    assert segment.accepts[-1] == "application/vnd.segment.v1+json"


def test_runs_of_a_users_audience_are_refused(hook):
    with pytest.raises(AudienceValidationError, match="LINKED"):
        hook.force_execute_audience_run(SEED)


@pytest.mark.parametrize(
    ("strategy", "config"),
    [("PERIODIC", {"interval": "5m"}), ("SPECIFIC_DAYS", {"days": [7], "hours": [1], "timezone": "UTC"}), ("X", {})],
)
def test_bad_schedules_are_refused_locally(strategy, config):
    with pytest.raises(AudienceValidationError):
        schedule_body(strategy, config)


# -- status functions ---------------------------------------------------------------------------


def test_compute_status_progression(hook, segment):
    segment.configure(processing_seconds=30)
    created = make(hook, enabled=True)
    seen = [hook.audience_compute_status(created["id"])]
    for _ in range(3):
        segment.advance_time(10.5)
        seen.append(hook.audience_compute_status(created["id"]))
    assert [r.vendor_status for r in seen] == ["Preparing", "Computing", "Computing", "Live"]
    assert [r.phase for r in seen[:3]] == [Phase.RUNNING] * 3
    done = seen[-1]
    assert done.vendor_status == "Live" and done.data["size"] > 0
    assert done.data["asset_uri"] == f"segment://{segment.space_id}/audience/{created['id']}"


@pytest.mark.parametrize(("status", "phase"), [("Failed", Phase.FAILED), ("Error", Phase.FAILED),
                                               ("Not Computing", Phase.DONE), ("Disabled", Phase.DONE),
                                               ("Awaiting Destinations", Phase.RUNNING),
                                               ("Quantum Flux", Phase.UNKNOWN)])  # fmt: skip
def test_statuses_are_mapped_as_data(hook, segment, status, phase):
    segment.set_status(SEED, status)
    result = hook.audience_compute_status(SEED)
    assert result.phase is phase and result.vendor_status == status
    if phase is Phase.UNKNOWN:
        assert "'Quantum Flux'" in result.message


def test_edit_status_follows_the_lock(hook, segment):
    segment.configure(processing_seconds=30)  # the lock outlives the test
    assert hook.audience_edit_status(SEED).phase is Phase.DONE
    hook.update_audience_for_space(SEED, description="x")
    locked = hook.audience_edit_status(SEED)
    assert locked.phase is Phase.RUNNING and locked.vendor_status == "Locked"
    segment.set_status(SEED, "Failed")
    assert hook.audience_edit_status(SEED).phase is Phase.DONE  # a failed audience may be fixed by an edit


# -- faults -------------------------------------------------------------------------------------


def test_429_with_retry_after_is_retried(hook, segment):
    segment.faults.inject("status", status=429, count=2, retry_after=0)
    assert hook.get_audience(SEED)["id"] == SEED
    assert [r["status"] for r in segment.requests] == [429, 429, 200]


def test_429_storm_ends_in_a_rate_limit_error(segment, set_segment_conn):
    hook = SegmentHook(set_segment_conn("seg_storm", extra={"max_retries": 3}),
                       retry=RetryPolicy(max_attempts=3, backoff_initial=0.01, backoff_max=0.02))  # fmt: skip
    segment.faults.inject("status", status=429, count=10, retry_after=0)
    with pytest.raises(AudienceRateLimitError):
        hook.get_audience(SEED)
    assert len(segment.requests) == 3


def test_too_long_retry_after_fails_at_once(hook, segment):
    segment.faults.inject("status", status=429, count=1, retry_after=3600)
    with pytest.raises(AudienceRateLimitError, match="3600"):
        hook.get_audience(SEED)
    assert len(segment.requests) == 1


def test_vendor_limit_headers_are_honoured(hook, segment):
    """The fake's per-operation limit answers 429 with Retry-After and X-RateLimit-*; the hook waits, succeeds."""
    segment.configure(limit_get_audience=1, rate_window_seconds=1)
    other = SegmentHook(retry=RetryPolicy(backoff_initial=0.01, backoff_max=0.02))  # another task, same token
    other.get_conn().limiter = RateLimiter()  # ...on another host: it shares no budget with ``hook``
    for made in (hook, other):
        made.get_conn().profile.rate_limits.clear()  # no client-side limit: let the vendor's 429 speak
    hook.get_audience(SEED)
    other.get_audience(SEED)  # knows nothing of the used-up budget: collects a 429, waits, succeeds
    statuses = [r["status"] for r in segment.requests]
    assert statuses[0] == 200 and 429 in statuses and statuses[-1] == 200


def test_a_used_up_budget_reported_in_headers_is_waited_out(hook, segment):
    """X-RateLimit-Remaining: 0 on a success makes the next call of that operation wait for the reset, not 429."""
    segment.configure(limit_get_audience=2, rate_window_seconds=1)
    hook.get_conn().profile.rate_limits.clear()  # only Segment's headers guide the client here
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        time.sleep(seconds)

    hook.get_conn().limiter = RateLimiter(sleep=sleep)  # the hold is the rate limiter's
    for _ in range(3):
        hook.get_audience(SEED)
    assert [r["status"] for r in segment.requests] == [200, 200, 200]
    assert len(slept) == 1 and 0 < slept[0] <= 2.0  # the reset has whole-second precision
    hook.list_audiences()  # another operation's budget is untouched: no pause
    assert len(slept) == 1


def test_retry_after_falls_back_to_the_body_and_reset_headers():
    import email.utils
    import time

    import requests

    from airflow_audience_provider.hooks.segment import segment_retry_after

    def response(headers: dict, body: dict | None) -> requests.Response:
        made = requests.Response()
        made.status_code = 429
        made.headers.update(headers)
        made._content = (__import__("json").dumps(body) if body is not None else "").encode()
        return made

    assert segment_retry_after(response({"Retry-After": "7"}, None)) == 7
    body = {"errors": [{"type": "RequestError", "data": {"msBeforeNext": 2500}}]}
    assert segment_retry_after(response({}, body)) == 2.5
    reset = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert 25 <= segment_retry_after(response({"X-RateLimit-Reset": reset}, {"errors": []})) <= 30
    assert segment_retry_after(response({}, None)) is None


def test_5xx_is_retried_then_raised(segment, set_segment_conn):
    hook = SegmentHook(set_segment_conn("seg_5xx"), retry=RetryPolicy(max_attempts=2, backoff_initial=0.01))
    segment.faults.inject("status", status=503, count=5)
    with pytest.raises(AudienceServerError):
        hook.get_audience(SEED)


# -- pure helpers -------------------------------------------------------------------------------


def test_audience_changes():
    current = {"name": "A", "description": "", "enabled": False, "definition": {"query": QUERY},
               "options": {"includeHistoricalData": True, "filterByExternalIds": ["email", "user_id"]}}  # fmt: skip
    assert audience_changes(current, name="A", definition="  " + QUERY.replace(" ", "  ")) == {}
    assert audience_changes(current, options={"filterByExternalIds": ["user_id", "email"]}) == {}
    assert audience_changes(current, enabled=True, description="d") == {"enabled": True, "description": "d"}
    changed = audience_changes(current, definition="trait('x') = 'y'", options={"backfillEventDataDays": 7})
    assert changed["definition"] == {"query": "trait('x') = 'y'"}
    assert changed["options"]["backfillEventDataDays"] == 7 and changed["options"]["includeHistoricalData"]


def test_check_definition_ignores_parentheses_in_strings():
    assert check_definition("event('a (b').count() >= 1") == "event('a (b').count() >= 1"
    with pytest.raises(AudienceValidationError):
        check_definition("   ")


# -- previews: the SDK model, LINKED on v1alpha, the space's monthly quota ---------------------


def test_preview_options_are_checked_against_the_sdk_model(hook, segment):
    from airflow_audience_provider.domain.segment import preview_options

    with pytest.raises(AudienceValidationError, match="includeHistoricalData"):
        hook.create_audience_preview(QUERY, options={"includeHistoricalData": True})
    with pytest.raises(AudienceValidationError, match="list of strings"):
        hook.create_audience_preview(QUERY, options={"filterByExternalIds": "email"})
    with pytest.raises(AudienceValidationError, match="a number"):
        hook.create_audience_preview(QUERY, options={"backfillEventDataDays": "7"})
    assert segment.requests == []  # refused before any call or quota
    good = {"filterByExternalIds": ["email"], "backfillEventDataDays": 7}
    assert preview_options(good) == good
    assert hook.create_audience_preview(QUERY, options=good)["id"].startswith("prv_")


def test_the_fake_refuses_options_a_preview_does_not_have(segment):
    import requests

    answer = requests.post(
        f"{segment.base_url}/spaces/{segment.space_id}/audiences/previews",
        headers={"Authorization": f"Bearer {segment.token}"},
        json={"definition": {"query": QUERY}, "audienceType": "USERS", "options": {"includeHistoricalData": True}},
        timeout=10,
    )
    assert answer.status_code == 422 and answer.json()["errors"][0]["field"] == "options.includeHistoricalData"


def test_linked_previews_are_legal_on_v1alpha(segment, set_segment_conn):
    hook = SegmentHook(set_segment_conn("seg_alpha_linked", extra={"api_version": "v1alpha"}))
    preview = hook.create_audience_preview("entity('orders').count() >= 1", audience_type="LINKED")
    assert preview["id"].startswith("prv_")
    assert segment.accepts[-1] == "application/vnd.segment.v1alpha+json"


def test_the_monthly_preview_quota_is_the_spaces_whatever_the_token(segment, set_segment_conn, monkeypatch):
    from airflow_audience_provider.hooks import segment as module

    monkeypatch.setattr(module, "PREVIEW_MONTHLY_QUOTA", 2)
    first = SegmentHook(set_segment_conn("seg_token_a"))
    second = SegmentHook(set_segment_conn("seg_token_b", password=f"Bearer {segment.token}"))  # another budget key
    assert first.budget_key(first.settings()) != second.budget_key(second.settings())
    first.create_audience_preview(QUERY)
    second.create_audience_preview(QUERY)
    with pytest.raises(AudienceRateLimitError, match=f"2 previews per month in space {segment.space_id}"):
        first.create_audience_preview(QUERY)
    assert sum(r["path"].endswith("/previews") for r in segment.requests) == 2
