"""Every LyticsHook method against the Lytics fake over HTTP."""

from __future__ import annotations

from urllib.parse import parse_qs

import pytest

from airflow_audience_provider.core.errors import (
    AudienceConfigurationError,
    AudienceNotFoundError,
    AudienceRateLimitError,
    AudienceValidationError,
)
from airflow_audience_provider.domain.lytics import (
    desired_segment_body,
    segment_changes,
    segment_references,
    update_body,
)
from airflow_audience_provider.hooks.lytics import LyticsHook


def body(slug: str, ql: str | None = None, **fields):
    return {"name": slug.title(), "slug_name": slug, "segment_ql": ql or f"FILTER * FROM user ALIAS {slug}", **fields}


# -- reads --------------------------------------------------------------------------------------


def test_list_segments_includes_invalid_ones(hook, lytics):
    lytics.create_segment(**body("broken", "FILTER INCLUDE nothing_here FROM user ALIAS broken"))
    slugs = {s["slug_name"] for s in hook.list_segments()}
    assert slugs == {"all_users", "unsubscribed", "broken"}  # valid="all" by default
    assert {s["slug_name"] for s in hook.list_segments(kind="aspect")} == {"unsubscribed"}
    assert all("size" in s for s in hook.list_segments(sizes=True))
    assert hook.list_segments(table="content") == []


def test_get_segment_by_id_and_slug(hook, lytics):
    by_slug = hook.get_segment("all_users")
    assert by_slug["slug_name"] == "all_users"
    assert hook.get_segment(by_slug["id"])["id"] == by_slug["id"]
    assert "size" not in by_slug
    assert hook.get_segment("all_users", sizes=True)["size"] == lytics.segment_size("all_users")


def test_unknown_id_is_not_found_naming_it(hook, lytics):
    with pytest.raises(AudienceNotFoundError) as caught:
        hook.get_segment("no_such_segment")
    message = str(caught.value)
    assert "'no_such_segment' was not found" in message
    assert lytics.account_id in message
    assert caught.value.status == 404
    assert caught.value.request_id == lytics.requests[-1]["request_id"]


def test_find_segment(hook):
    assert hook.find_segment("unsubscribed")["slug_name"] == "unsubscribed"
    assert hook.find_segment("nope") is None


def test_ids_and_slugs_are_url_encoded(hook, lytics):
    assert hook.find_segment("a/b?c") is None
    entry = lytics.requests[-1]
    assert entry["path"] == "/v2/segment/a/b?c"  # the server decoded one path segment
    assert parse_qs(entry["query"]) == {"account_id": [lytics.account_id]}  # "?c" did not become a query
    with pytest.raises(AudienceValidationError, match="id or slug is required"):
        hook.get_segment("  ")


def test_account_id_is_sent_on_every_v2_call_and_no_v1_call(hook, lytics):
    seg = hook.get_segment("all_users")
    hook.list_segments()
    hook.get_segment_jobs(seg["id"])
    hook.get_segment_ancestors(seg["id"])
    hook.list_segment_groups()
    hook.reevaluate_segment(seg["id"])  # the documented path (404), then the body form
    hook.get_segment_sizes([seg["id"]])
    hook.validate_segment_ql("FILTER * FROM user")
    assert hook.size_segment_ql("FILTER * FROM user") > 0
    assert len(lytics.requests) == 10
    for entry in lytics.requests:
        if entry["path"].startswith("/v2/"):
            assert parse_qs(entry["query"])["account_id"] == [lytics.account_id], entry
        else:
            assert "account_id" not in parse_qs(entry["query"]), entry  # a v2 parameter; the fake refuses it
            assert entry["status"] == 200


def test_v1_calls_authenticate_by_header(hook, lytics):
    hook.get_segment_sizes([hook.get_segment("all_users")["id"]])
    assert "access_token" not in lytics.requests[-1]["query"] and lytics.requests[-1]["status"] == 200


def test_wrong_account_is_refused(set_lytics_conn):
    conn_id = set_lytics_conn("lytics_other_account", extra={"account_id": "someone-else"})
    with pytest.raises(AudienceNotFoundError) as caught:
        LyticsHook(conn_id).list_segments()
    assert caught.value.code == "ACCOUNT-NOTFOUND-021"


# -- writes -------------------------------------------------------------------------------------


def test_create_update_delete_segment(hook, lytics):
    created = hook.create_segment(body("vip", description="first"))
    assert created["slug_name"] == "vip" and len(created["id"]) == 32
    assert lytics.get_segment("vip")["description"] == "first"

    updated = hook.update_segment(created["id"], {**body("vip"), "description": "second"})
    assert updated["id"] == created["id"]
    assert lytics.get_segment("vip")["description"] == "second"

    hook.delete_segment(created["id"])
    assert lytics.get_segment(created["id"]) is None


def test_create_with_a_taken_slug_warns_about_the_rename(hook, caplog):
    created = hook.create_segment(body("all_users"))
    assert created["slug_name"] == "all_users_1"
    assert "instead of 'all_users'" in caplog.text


def test_update_that_creates_another_segment_is_an_error(hook, lytics):
    content = lytics.create_segment(**body("articles", "FILTER * FROM content ALIAS articles"))
    # no FROM: Lytics resets the table to user and creates a new segment while answering 200
    with pytest.raises(AudienceValidationError, match="another segment"):
        hook.update_segment(content["id"], {"segment_ql": "FILTER * ALIAS articles"})


def test_invalid_filterql_surfaces_lytics_message(hook):
    with pytest.raises(AudienceValidationError) as caught:
        hook.create_segment(body("bad", "FILTER AND ( FROM user"))
    assert caught.value.status == 400
    assert "expected" in caught.value.message  # the parser's own words, passed through
    with pytest.raises(AudienceValidationError, match="Invalid SegmentQL"):
        hook.validate_segment_ql("FILTER AND (")


def test_delete_segments_in_one_call(hook, lytics):
    first = hook.create_segment(body("one"))
    second = hook.create_segment(body("two"))
    result = hook.delete_segments([first["id"], second["id"], "0" * 32])
    assert sorted(result["deleted"]) == sorted([first["id"], second["id"]])
    assert result["not_deleted"] == ["0" * 32]
    assert lytics.get_segment("one") is None and lytics.get_segment("two") is None
    assert [r["method"] for r in lytics.requests].count("DELETE") == 1


def test_delete_segments_with_one_id_keeps_the_shape(hook, lytics):
    only = hook.create_segment(body("only"))
    result = hook.delete_segments([only["id"]])
    assert result["deleted"] == [only["id"]]
    assert result["not_deleted"] == []
    assert lytics.get_segment("only") is None


def test_delete_unknown_segment_is_not_found(hook):
    with pytest.raises(AudienceNotFoundError):
        hook.delete_segment("0" * 32)


def test_reevaluate_and_jobs(hook, lytics):
    lytics.configure(list_reevaluation_jobs=1)
    seg = hook.get_segment("all_users")
    started = hook.reevaluate_segment(seg["id"])
    assert started["segment_id"] == seg["id"]
    assert started["requested_at"].endswith("+00:00")
    jobs = hook.get_segment_jobs(seg["id"])
    assert sorted(j["workflow"] for j in jobs) == ["export", "segment_reevaluate"]


def test_reevaluate_is_retried_like_an_idempotent_call(hook, lytics):
    seg = hook.get_segment("all_users")
    lytics.faults.inject("status", count=1, path_prefix="/v2/segment/reevaluate", status=503)
    assert hook.reevaluate_segment(seg["id"])["segment_id"] == seg["id"]
    assert [r["status"] for r in lytics.requests[-2:]] == [503, 200]


def test_ancestors(hook, lytics):
    lytics.create_segment(**body("base"))
    lytics.create_segment(**body("middle", "FILTER AND (INCLUDE base, EXISTS email) FROM user ALIAS middle"))
    top = lytics.create_segment(**body("top", "FILTER INCLUDE middle FROM user ALIAS top"))
    assert [a["slug_name"] for a in hook.get_segment_ancestors(top["id"])] == ["middle", "base"]


def test_sizes(hook, lytics):
    seg = hook.get_segment("all_users")
    other = hook.get_segment("unsubscribed")
    sizes = hook.get_segment_sizes([seg["id"], other["id"]])
    assert sizes == {seg["id"]: lytics.segment_size(seg["id"]), other["id"]: lytics.segment_size(other["id"])}


def test_size_of_an_unsaved_statement_respects_the_1_per_10_s_quota(hook, lytics):
    from airflow_audience_provider.core.ratelimit import RateLimiter

    now = [1_000_000.0]
    waits: list[float] = []

    def sleep(seconds: float) -> None:  # time passes for the client budget and for the fake alike
        waits.append(seconds)
        now[0] += seconds
        lytics.advance_time(seconds)

    hook.get_conn().limiter = RateLimiter(clock=lambda: now[0], sleep=sleep)
    size = hook.size_segment_ql("FILTER EXISTS email FROM user")
    assert isinstance(size, int) and size > 0
    assert hook.size_segment_ql("FILTER EXISTS email FROM user") == size
    assert waits == [pytest.approx(10.2)]  # waited client-side (10 s and the margin) instead of collecting a 429
    assert [r["status"] for r in lytics.requests] == [200, 200]


def test_size_throttle_beyond_max_retry_after_is_a_rate_limit_error(hook, lytics):
    from airflow_audience_provider.core.ratelimit import RateLimiter

    lytics.configure(size_throttle_seconds=600)
    hook.size_segment_ql("FILTER * FROM user")
    hook.get_conn().limiter = RateLimiter()  # forget the client-side budget: the server must refuse
    with pytest.raises(AudienceRateLimitError) as caught:
        hook.size_segment_ql("FILTER * FROM user")
    assert caught.value.status == 429
    assert caught.value.retry_after == 600
    assert [r["status"] for r in lytics.requests] == [200, 429]


def test_groups_crud(hook, lytics):
    assert hook.list_segment_groups() == []
    group = hook.create_segment_group("Marketing", "for campaigns")
    assert group["name"] == "Marketing" and group["description"] == "for campaigns"
    updated = hook.update_segment_group(group["id"], description="renamed")
    assert updated["description"] == "renamed"
    assert [g["description"] for g in hook.list_segment_groups()] == ["renamed"]
    hook.delete_segment_group(group["id"])
    assert lytics.groups == []
    with pytest.raises(AudienceNotFoundError):
        hook.delete_segment_group(group["id"])


def test_group_create_after_a_dropped_post_is_not_duplicated(hook, lytics):
    lytics.faults.inject("drop", count=1, path_prefix="/v2/segment/group", method="POST")
    hook.get_conn().settle_seconds = 0.0  # the fake applies nothing of a dropped request later
    hook.create_segment_group("Once")
    assert [g["name"] for g in lytics.groups] == ["Once"]


def test_find_dependents_by_slug_and_by_id(hook, lytics):
    base = lytics.create_segment(**body("base"))
    lytics.create_segment(**body("by_slug", "FILTER INCLUDE base FROM user ALIAS by_slug"))
    lytics.create_segment(**body("by_id", f"FILTER NOT INCLUDE `{base['id']}` FROM user ALIAS by_id"))
    lytics.create_segment(**body("unrelated"))
    assert {d["slug_name"] for d in hook.find_dependents(base)} == {"by_slug", "by_id"}
    assert hook.find_dependents(hook.get_segment("unrelated")) == []


# -- connection test and bad connections -------------------------------------------------------------


def test_probe_and_test_connection(hook, lytics):
    ok, message = hook.test_connection()
    assert ok is True
    assert lytics.account_id in message
    assert len(lytics.requests) == 1  # one cheap read


def test_test_connection_with_a_wrong_token_names_the_problem(set_lytics_conn):
    conn_id = set_lytics_conn("lytics_wrong_token", password="not-the-right-token")
    ok, message = LyticsHook(conn_id).test_connection()
    assert ok is False
    assert "401" in message and "Not authorized" in message


def test_bearer_prefix_in_the_token_is_tolerated(set_lytics_conn, lytics):
    conn_id = set_lytics_conn("lytics_bearer", password=f"Bearer {lytics.token}")
    assert LyticsHook(conn_id).test_connection()[0] is True


def test_missing_token_names_the_connection_and_field(set_lytics_conn):
    conn_id = set_lytics_conn("lytics_no_token", password=None)
    with pytest.raises(AudienceConfigurationError) as caught:
        LyticsHook(conn_id).list_segments()
    assert "'lytics_no_token'" in str(caught.value)
    assert "API token (password field)" in str(caught.value)
    ok, message = LyticsHook(conn_id).test_connection()
    assert ok is False and "lytics_no_token" in message


def test_segment_url_and_asset_uri(hook, lytics):
    seg = hook.get_segment("all_users")
    assert hook.segment_url(seg) == f"{lytics.base_url}/app/audiences/{seg['id']}?aid={lytics.aid}"


# -- pure helpers -------------------------------------------------------------------------------------


def test_desired_body_checks_alias_and_from():
    with pytest.raises(AudienceValidationError, match="ALIAS 'other' in segment_ql differs from slug_name 'vip'"):
        desired_segment_body(name="V", slug_name="vip", segment_ql="FILTER * FROM user ALIAS other")
    with pytest.raises(AudienceValidationError, match="FROM 'content' in segment_ql differs from table 'user'"):
        desired_segment_body(name="V", slug_name="vip", segment_ql="FILTER * FROM content")
    with pytest.raises(AudienceValidationError, match=r"slug_name 'bad slug'.*name is required.*segment_ql"):
        desired_segment_body(name="", slug_name="bad slug", segment_ql=" ")
    good = desired_segment_body(name="V", slug_name="vip", segment_ql=" FILTER * FROM user ALIAS vip ", tags=["a"])
    assert good == {
        "name": "V",
        "slug_name": "vip",
        "segment_ql": "FILTER * FROM user ALIAS vip",
        "table": "user",
        "kind": "segment",
        "tags": ["a"],
    }


def test_segment_changes_folds_whitespace_backticks_and_list_order():
    current = {"segment_ql": "FILTER  INCLUDE `abc`\nFROM user", "tags": ["b", "a"], "name": "N"}
    desired = {"segment_ql": "FILTER INCLUDE abc FROM user", "tags": ["a", "b"], "name": "N2"}
    assert segment_changes(current, desired) == {"name": "N2"}


def test_update_body_strips_server_fields():
    current = {"id": "x", "created": "t", "size": 3, "ast": {}, "name": "old", "save_hist": True}
    assert update_body(current, {"name": "new"}) == {"name": "new", "save_hist": True}


def test_segment_references():
    assert segment_references("FILTER AND (INCLUDE a, NOT include `b1`) FROM user") == {"a", "b1"}
    assert segment_references(None) == set()


def test_keywords_inside_strings_and_comments_are_not_clauses():
    ql = 'FILTER AND (utm = "email from partner", note = "include vip alias x") -- from old_table\nFROM user ALIAS vip'
    assert desired_segment_body(name="V", slug_name="vip", segment_ql=ql)["segment_ql"] == ql
    assert segment_references('FILTER AND (note = "include vip", INCLUDE base) -- include old') == {"base"}
    with pytest.raises(AudienceValidationError, match="FROM 'content'"):
        desired_segment_body(name="V", slug_name="vip", segment_ql='FILTER a = "from user" FROM content')


def test_slugs_are_unique_per_account_not_per_table(hook, lytics):
    audience = lytics.create_segment(**body("art"))
    assert hook.find_segment("art")["id"] == audience["id"]
    content = hook.create_segment({**body("art", "FILTER * FROM content ALIAS art"), "table": "content"})
    assert content["slug_name"] == "art_1"  # the slug was taken in the account, so Lytics renamed it


def test_create_read_back_finds_the_segment_by_slug(hook, lytics):
    lytics.faults.inject("drop", count=1, path_prefix="/v2/segment", method="POST")
    hook.get_conn().settle_seconds = 0.0  # the fake applies nothing of a dropped request later
    created = hook.create_segment({**body("art", "FILTER * FROM content ALIAS art"), "table": "content"})
    assert created["table"] == "content" and [s["slug_name"] for s in lytics.segments].count("art") == 1
