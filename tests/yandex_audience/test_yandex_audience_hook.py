"""YandexAudienceHook against the Yandex.Audience fake over real HTTP: every operation, errors, quotas."""

from __future__ import annotations

import time

import pytest
from yandex_audience_helpers import PROCESSING

from airflow_audience_provider.core.errors import (
    AudienceAuthenticationError,
    AudienceConflictError,
    AudienceNotFoundError,
    AudienceOutcomeUnknownError,
    AudiencePermissionError,
    AudienceRateLimitError,
    AudienceValidationError,
)
from airflow_audience_provider.core.results import Phase
from airflow_audience_provider.core.transport import Timeouts
from airflow_audience_provider.hooks.yandex_audience import (
    YandexAudienceHook,
    YandexAudienceNoChangesError,
    quota_reset_seconds,
    same_login,
)

SHARED_ID = 30000002  # "Partner CRM buyers": owned by another login, shared with the sandbox login
PRIVATE_ID = 30000003  # owned by another login, not shared
METRIKA_ID = 30000001  # own, processed


def crm_csv(n: int, start: int = 0, header: str = "email") -> bytes:
    return (header + "\n" + "".join(f"u{i}@example.com\n" for i in range(start, start + n))).encode()


def api_calls(fake, method=None):
    return [(r["method"], r["path"]) for r in fake.requests if method is None or r["method"] == method]


def wait_status(hook, segment_id, *, want=None, timeout=5.0):
    deadline = time.monotonic() + timeout
    while True:
        result = hook.segment_status(segment_id)
        if result.phase is not Phase.RUNNING or (want and result.vendor_status == want):
            return result
        assert time.monotonic() < deadline, result.describe()
        time.sleep(PROCESSING / 4)


def file_segment(hook, name="crm", n=150):
    draft = hook.upload_csv_file(crm_csv(n))
    return hook.confirm_segment(draft["id"], name, "crm")


# -- connection --------------------------------------------------------------------------------


def test_test_connection_reads_accounts_with_the_oauth_scheme(ya, hook):
    ok, message = hook.test_connection()
    assert ok, message
    assert "delegate of 1 account" in message
    assert api_calls(ya) == [("GET", "/v1/management/accounts")]
    assert ya.requests[0]["authorization"] is True


def test_pasted_scheme_word_is_stripped(ya, set_ya_conn, patch_limiter):
    for pasted in (f"OAuth {ya.token}", f"Bearer {ya.token}"):
        hook = YandexAudienceHook(set_ya_conn("ya_pasted", password=pasted))
        assert hook.test_connection()[0]


def test_bad_token_and_missing_rights(ya, set_ya_conn, patch_limiter):
    from airflow_audience_provider.sandbox.yandex_audience import NO_RIGHTS_TOKEN

    ok, message = YandexAudienceHook(set_ya_conn("ya_bad", password="nope")).test_connection()
    assert not ok and "HTTP 401" in message and "code=unauthorized" in message
    with pytest.raises(AudiencePermissionError) as caught:
        YandexAudienceHook(set_ya_conn("ya_norights", password=NO_RIGHTS_TOKEN)).list_segments()
    assert caught.value.code == "access_denied"
    assert "no Yandex.Audience rights" in caught.value.message


def test_missing_token_is_a_configuration_error(ya, set_ya_conn, patch_limiter):
    ok, message = YandexAudienceHook(set_ya_conn("ya_none", password=None)).test_connection()
    assert not ok and "OAuth token" in message


def test_bad_quota_extra_is_a_configuration_error(ya, set_ya_conn, patch_limiter):
    ok, message = YandexAudienceHook(set_ya_conn("ya_q", extra={"writes_per_minute": "many"})).test_connection()
    assert not ok and "writes_per_minute" in message


# -- segments ----------------------------------------------------------------------------------


def test_list_segments_mixes_own_and_shared(ya, hook):
    segments = {s["id"]: s for s in hook.list_segments()}
    assert set(segments) == {METRIKA_ID, SHARED_ID}
    assert segments[SHARED_ID]["owner"] == "other.login"  # Yandex's spelling of the login
    assert hook.find_segment("Partner CRM buyers") is None  # shared segments are never reused
    assert hook.find_segment("Site visitors (Metrica)")["id"] == METRIKA_ID
    assert hook.list_segments(limit=1, offset=1)[0]["id"] == SHARED_ID


def test_segment_of_another_login(ya, hook):
    with pytest.raises(AudienceNotFoundError) as caught:
        hook.get_segment(PRIVATE_ID)
    assert f"segment {PRIVATE_ID} is not visible to login 'sandbox-login'" in caught.value.message
    with pytest.raises(AudiencePermissionError) as denied:
        hook.update_segment(SHARED_ID, "mine now")
    assert denied.value.code == "access_denied"
    with pytest.raises(AudiencePermissionError):
        hook.modify_data(SHARED_ID, crm_csv(150), "addition")


def test_file_segment_lifecycle_upload_confirm_process_modify(ya, hook):
    ya.configure(processing_seconds=3600)  # still processing when read, however loaded the machine
    draft = hook.upload_csv_file(crm_csv(150))
    assert draft["status"] == "uploaded"
    assert hook.segment_status(draft["id"]).phase is Phase.FAILED  # a draft never progresses
    confirmed = hook.confirm_segment(draft["id"], "crm buyers", "crm")
    assert confirmed["status"] == "is_processed"
    assert hook.segment_status(draft["id"]).phase is Phase.RUNNING
    ya.advance_time(3600)
    ya.configure(processing_seconds=PROCESSING)  # the changes below are awaited
    done = wait_status(hook, draft["id"])
    assert done.phase is Phase.DONE and done.vendor_status == "processed"
    assert done.data["segment_id"] == draft["id"]
    assert done.data["url"] == f"{ya.base_url}/app/segments/{draft['id']}"
    assert done.data["asset_uri"] == f"yandex-audience://sandbox-login/segment/{draft['id']}"

    modified = hook.modify_data(draft["id"], crm_csv(20, start=150), "addition", check_size=False)
    assert modified["status"] == "is_updated"
    assert wait_status(hook, draft["id"]).vendor_status == "processed"
    assert ya.get_segment(draft["id"])["valid_unique_quantity"] == 170
    with pytest.raises(YandexAudienceNoChangesError) as same:
        hook.modify_data(draft["id"], crm_csv(20, start=150), "addition", check_size=False)
    assert same.value.code == "no_changes"
    hook.modify_data(draft["id"], crm_csv(10, start=150), "subtraction", check_size=False)
    assert ya.get_segment(draft["id"])["valid_unique_quantity"] == 160
    hook.modify_data(draft["id"], crm_csv(120), "replace")
    assert ya.get_segment(draft["id"])["valid_unique_quantity"] == 120


def test_file_rules(ya, hook):
    with pytest.raises(AudienceValidationError) as header:
        hook.upload_csv_file(crm_csv(150, header="mail"))
    assert header.value.code == "header_validation_error" and "'phone' or 'email'" in header.value.message
    with pytest.raises(AudienceValidationError) as data_header:
        hook.upload_csv_file(b"a@b.ru\nc@d.ru\n")
    assert data_header.value.code == "header_validation_error"

    draft = hook.upload_csv_file(crm_csv(50))
    with pytest.raises(AudienceValidationError) as small:
        hook.confirm_segment(draft["id"], "small", "crm")
    assert small.value.code == "invalid_uploading" and "at least 100" in small.value.message
    # check_size=false lets it through; so few ids then end in few_data
    hook.confirm_segment(draft["id"], "small", "crm", check_size=False)
    result = wait_status(hook, draft["id"])
    assert result.phase is Phase.FAILED and result.vendor_status == "few_data"
    assert "Add data" in result.message and "reprocess" in result.message

    ya.configure(max_file_bytes=1000)
    with pytest.raises(AudienceValidationError) as large:
        hook.upload_csv_file(crm_csv(150))
    assert large.value.code == "invalid_uploading" and "limit" in large.value.message

    plain = hook.upload_file(b"\n".join(b"%064x" % i for i in range(3)))
    with pytest.raises(AudienceValidationError) as wrong_type:
        hook.confirm_segment(plain["id"], "devices", "crm")
    assert wrong_type.value.field == "segment.content_type"
    assert "upload_csv_file" in wrong_type.value.message
    with pytest.raises(AudienceValidationError) as md5:
        hook.confirm_segment(plain["id"], "devices", "idfa_gaid", hashed=True, hashing_alg="MD5", check_size=False)
    assert md5.value.field == "segment.hashing_alg"
    with pytest.raises(AudienceValidationError):
        hook.confirm_segment(plain["id"], "devices", "vk_ids")  # refused before sending
    with pytest.raises(AudienceValidationError):
        hook.modify_data(plain["id"], b"x", "merge")


def test_modify_data_must_keep_the_hashed_form(ya, hook):
    draft = hook.upload_file(b"\n".join(b"%064x" % i for i in range(120)))
    hook.confirm_segment(draft["id"], "devices", "idfa_gaid", hashed=True, hashing_alg="SHA256")
    with pytest.raises(AudienceValidationError) as caught:
        hook.modify_data(draft["id"], b"aaaaaaaa-bbbb-cccc-1111-222222222200\n", "addition", check_size=False)
    assert "hashed" in caught.value.message


def test_client_id_segment(ya, hook):
    draft = hook.upload_file(b"\n".join(str(10**15 + i).encode() for i in range(150)))
    segment = hook.confirm_client_id_segment(draft["id"], "clients", 44147844)
    assert segment["content_type"] == "client_id" and segment["counter_id"] == 44147844


def test_non_file_segments(ya, hook):
    metrika = hook.create_metrika_segment("goal 7", "goal_id", 7)
    appmetrica = hook.create_appmetrica_segment("app", "api_key", 12345)
    point = {"latitude": 55.7539, "longitude": 37.6208, "description": "store 42"}
    geo = hook.create_geo_segment("near store", "condition", 1000, [point], period_length=30, times_quantity=3)
    square = [
        {"latitude": 55.75, "longitude": 37.60},
        {"latitude": 55.75, "longitude": 37.62},
        {"latitude": 55.76, "longitude": 37.62},
        {"latitude": 55.76, "longitude": 37.60},
    ]
    polygon = hook.create_geo_polygon_segment("district", "regular", [{"points": square}])
    pixel = hook.list_pixels()[0]
    by_pixel = hook.create_pixel_segment("seen 3x", pixel["id"], period_length=30, times_quantity=3,
                                         times_quantity_operation="gt")  # fmt: skip
    assert [s["type"] for s in (metrika, appmetrica, geo, polygon, by_pixel)] == [
        "metrika", "appmetrica", "geo", "geo", "pixel",
    ]  # fmt: skip
    assert all(s["status"] == "is_processed" for s in (metrika, appmetrica, geo, polygon, by_pixel))
    assert [s["id"] for s in hook.list_segments(pixel=pixel["id"])] == [by_pixel["id"]]
    with pytest.raises(AudienceValidationError) as too_large:
        huge = [{"latitude": lat, "longitude": lon} for lat, lon in ((50, 30), (50, 40), (60, 40), (60, 30))]
        hook.create_geo_polygon_segment("huge", "regular", [{"points": huge}])
    assert too_large.value.code == "too_large_polygon"
    with pytest.raises(AudienceValidationError):
        hook.create_geo_segment("bad", "nearby", 1000, [point])  # geo_segment_type is a fixed string set
    with pytest.raises(AudienceNotFoundError):
        hook.create_pixel_segment("ghost pixel", 999)


def test_lookalike_needs_an_own_processed_source(ya, hook):
    source = file_segment(hook)
    with pytest.raises(AudienceValidationError) as early:
        hook.create_lookalike_segment("lal", source["id"], 3)
    assert "not processed" in early.value.message
    wait_status(hook, source["id"])
    lal = hook.create_lookalike_segment("lal", source["id"], 3, maintain_geo_distribution=False)
    assert lal["lookalike_link"] == source["id"] and lal["maintain_geo_distribution"] is False
    with pytest.raises(AudiencePermissionError):
        hook.create_lookalike_segment("lal of shared", SHARED_ID, 3)


def test_rename_delete_reprocess(ya, hook):
    segment = file_segment(hook)
    assert hook.update_segment(segment["id"], "renamed")["name"] == "renamed"
    with pytest.raises(AudienceValidationError) as busy:
        hook.reprocess_segment(segment["id"])
    assert busy.value.code == "reprocess_wrong_status"
    wait_status(hook, segment["id"])
    ya.configure(processing_seconds=3600)  # still processing when read, however loaded the machine
    assert hook.reprocess_segment(segment["id"]) is True
    assert hook.segment_status(segment["id"]).vendor_status == "is_processed"
    ya.advance_time(3600)
    wait_status(hook, segment["id"])
    hook.reprocess_segment(segment["id"])
    ya.advance_time(3600)
    wait_status(hook, segment["id"])
    with pytest.raises(AudienceRateLimitError) as quota:
        hook.reprocess_segment(segment["id"])  # twice per segment per day
    assert quota.value.code == "quota"
    assert "2 reprocess runs per day" in quota.value.message and "frees up in about" in quota.value.message
    assert hook.delete_segment(segment["id"]) is True
    with pytest.raises(AudienceNotFoundError):
        hook.delete_segment(segment["id"])


def test_update_geo_points_is_switched_off_and_not_sent(ya, hook):
    with pytest.raises(AudienceValidationError, match="switched off"):
        hook.update_geo_points(METRIKA_ID, [])
    assert api_calls(ya) == []


def test_ids_are_checked_before_sending(ya, hook):
    with pytest.raises(AudienceValidationError, match="positive integer"):
        hook.delete_segment("../pixels")
    assert api_calls(ya) == []


def test_several_own_segments_with_one_name_are_a_conflict(ya, hook):
    hook.create_metrika_segment("twin", "counter_id", 1)
    hook.create_metrika_segment("twin", "counter_id", 2)
    with pytest.raises(AudienceConflictError, match=r"Several Yandex\.Audience segments are named 'twin'"):
        hook.find_segment("twin")


# -- grants, accounts, delegates, pixels ---------------------------------------------------------


def test_grants(ya, hook):
    segment = file_segment(hook)
    grant = hook.create_grant(segment["id"], "agency-login", comment="use in Direct")
    assert grant["user_login"] == "agency-login" and grant["comment"] == "use in Direct"
    assert [g["user_login"] for g in hook.list_grants(segment["id"])] == ["agency-login"]
    assert ya.get_segment(segment["id"])["guest_quantity"] == 1
    assert hook.delete_grant(segment["id"], "agency-login") is True
    with pytest.raises(AudienceNotFoundError):
        hook.delete_grant(segment["id"], "agency-login")
    with pytest.raises(AudienceValidationError):
        hook.create_grant(segment["id"], "x", comment="c" * 256)


def test_accounts_and_delegates(ya, hook):
    assert hook.list_accounts()[0]["user_login"] == "client-login-1"
    assert hook.list_delegates() == []
    listed = hook.add_delegate("analyst", "view", comment="reports")
    assert [(d["user_login"], d["perm"]) for d in listed] == [("analyst", "view")]
    assert [(d["user_login"], d["perm"]) for d in hook.add_delegate("analyst", "edit")] == [("analyst", "edit")]
    assert hook.delete_delegate("analyst") is True
    assert hook.list_delegates() == []
    with pytest.raises(AudienceValidationError):
        hook.add_delegate("analyst", "admin")


def test_pixels(ya, hook):
    pixel = hook.create_pixel("banner q4")
    assert pixel["url"] and pixel["segments"] == []
    assert hook.update_pixel(pixel["id"], "banner q1")["name"] == "banner q1"
    assert hook.delete_pixel(pixel["id"]) is True
    assert pixel["id"] not in [p["id"] for p in hook.list_pixels()]
    assert hook.undelete_pixel(pixel["id"]) is True
    assert pixel["id"] in [p["id"] for p in hook.list_pixels()]


# -- statuses ----------------------------------------------------------------------------------


def test_processing_failed_and_unknown_statuses(ya, hook):
    failed = file_segment(hook, "will fail")
    ya.fail_next_processing(failed["id"])
    result = wait_status(hook, failed["id"])
    assert result.phase is Phase.FAILED and result.vendor_status == "processing_failed"
    odd = file_segment(hook, "odd")
    ya.fail_next_processing(odd["id"], "too_much_data")
    time.sleep(PROCESSING * 1.5)
    result = hook.segment_status(odd["id"])
    assert result.phase is Phase.UNKNOWN and "'too_much_data'" in result.message


# -- errors and retries ------------------------------------------------------------------------


def test_transient_errors_are_retried_and_creates_read_back(ya, hook):
    ya.faults.inject("status", count=2, path_prefix="/v1/management/segments", method="GET", status=503)
    assert len(hook.list_segments()) == 2
    # A 504 after the create was applied? The hook looks the segment up by name before resending.
    ya.faults.inject("status", count=1, path_prefix="/v1/management/segments/create_metrika", status=504)
    created = hook.create_metrika_segment("after timeout", "counter_id", 5)
    assert created["name"] == "after timeout"
    assert [s["name"] for s in ya.segments()].count("after timeout") == 1


def test_error_envelope_is_mapped(ya, hook):
    with pytest.raises(AudienceValidationError) as caught:
        hook.create_metrika_segment("", "counter_id", 5)
    error = caught.value
    assert error.code == "missing_parameter" and error.field == "segment.name" and error.status == 400
    assert error.request_id


# -- quotas ------------------------------------------------------------------------------------


def test_client_side_write_quota_waits_out_the_minute(ya, hook, limiter_clock):
    for i in range(11):
        hook.create_metrika_segment(f"m{i}", "counter_id", 1)
    assert limiter_clock.sleeps == [pytest.approx(60.25)]  # the 11th write waited for the minute window and the margin


def test_client_side_daily_budget_refuses_without_sending(ya, set_ya_conn, patch_limiter):
    hook = YandexAudienceHook(set_ya_conn("ya_budget", extra={"requests_per_day": 3}))
    for _ in range(3):
        hook.list_accounts()
    with pytest.raises(AudienceRateLimitError) as caught:
        hook.list_segments()
    assert caught.value.code == "client_quota"
    assert "3 requests per day per login" in caught.value.message and "frees up in" in caught.value.message
    assert len(api_calls(ya)) == 3


def test_vendor_hourly_quota_names_the_quota_and_is_not_slept_on(ya, hook):
    ya.configure(writes_per_hour=2)
    hook.create_metrika_segment("a", "counter_id", 1)
    hook.create_metrika_segment("b", "counter_id", 1)
    with pytest.raises(AudienceRateLimitError) as caught:
        hook.create_metrika_segment("c", "counter_id", 1)
    error = caught.value
    assert error.status == 429 and error.code == "quota"
    assert "2 segment create/modify requests per hour" in error.message
    assert "frees up in about 3600 s" in error.message
    assert error.retry_after == pytest.approx(3600.0)
    assert len(api_calls(ya, "POST")) == 3  # not resent


def test_vendor_daily_quota_resets_at_moscow_midnight():
    # 2026-11-25 20:00 UTC is 23:00 in Moscow: one hour to the reset
    now = 1795636800.0
    assert quota_reset_seconds("Request quota exceeded: 5000 requests per day", now=now) == pytest.approx(3600.0)
    assert quota_reset_seconds("10 segment create/modify requests per minute") == 60.0
    assert quota_reset_seconds("something else") is None
    assert quota_reset_seconds("10 segment create/modify requests per minute for login holiday-ads") == 60.0
    assert quota_reset_seconds("daily limit reached", now=now) == pytest.approx(3600.0)


def test_vendor_per_ip_quota(ya, set_ya_conn, patch_limiter):
    ya.configure(requests_per_second_per_ip=1)
    hook = YandexAudienceHook(set_ya_conn("ya_ip", extra={"max_retries": 1}))
    with pytest.raises(AudienceRateLimitError) as caught:
        for _ in range(3):
            hook.list_accounts()
    assert "1 requests per second from one IP" in caught.value.message


def test_authentication_error_type(ya, set_ya_conn, patch_limiter):
    with pytest.raises(AudienceAuthenticationError) as caught:
        YandexAudienceHook(set_ya_conn("ya_bad2", password="nope")).list_pixels()
    assert caught.value.code == "unauthorized"


# -- fidelity: reprocess read-back, unnamed quotas, owners, file types, paging, modify_data ----


def test_reprocess_whose_answer_is_lost_is_read_back_not_resent(ya, hook):
    segment = file_segment(hook)
    wait_status(hook, segment["id"])
    ya.configure(processing_seconds=3600)  # the reprocess still runs when it is read back, however late
    reprocess = f"/v1/management/segment/{segment['id']}/reprocess"
    ya.faults.inject("lost", path_prefix=reprocess, method="PUT")
    assert hook.reprocess_segment(segment["id"]) is True
    assert api_calls(ya, "PUT").count(("PUT", reprocess)) == 1
    assert ya.get_segment(segment["id"])["status"] == "is_processed"  # applied once, not refused as busy


@pytest.mark.parametrize(
    ("fault", "applied"),
    [
        ("lost", True),  # applied, and already finished when read back
        ("status", False),  # answered 500, not applied
    ],
)
def test_reprocess_of_unknown_outcome_that_reads_done_is_not_resent(ya, hook, fault, applied):
    segment = file_segment(hook)
    wait_status(hook, segment["id"])
    ya.configure(processing_seconds=0)  # a reprocess finishes at once: its read-back sees the segment done
    hook.get_conn().settle_seconds = 0.0
    reprocess = f"/v1/management/segment/{segment['id']}/reprocess"
    ya.faults.inject(fault, path_prefix=reprocess, method="PUT", status=500)
    with pytest.raises(AudienceOutcomeUnknownError) as caught:
        hook.reprocess_segment(segment["id"])
    assert "Not resent" in caught.value.message and "'processed'" not in caught.value.message
    assert "status is processed" in caught.value.message
    assert api_calls(ya, "PUT").count(("PUT", reprocess)) == 1
    assert ya.requests[-1]["method"] == "GET"  # read back, nothing sent after it
    ya.configure(reprocess_per_segment_per_day=2 if applied else 1)
    hook.reprocess_segment(segment["id"])  # the day's last reprocess: the unanswered one counted only if applied
    ya.advance_time(1)
    with pytest.raises(AudienceRateLimitError):
        hook.reprocess_segment(segment["id"])


def test_reprocess_that_lands_after_its_timeout_is_read_back_until_it_lands(ya, hook):
    segment = file_segment(hook)
    wait_status(hook, segment["id"])
    ya.configure(processing_seconds=3600)
    transport = hook.get_conn()
    transport.timeouts = Timeouts(connect=10.0, read=1.0)
    transport.settle_seconds = 60.0  # bounds the read-backs; ends as soon as the reprocess shows
    transport.read_back_interval = 0.1
    reprocess = f"/v1/management/segment/{segment['id']}/reprocess"
    ya.faults.inject("slow", path_prefix=reprocess, method="PUT", delay=2.0)  # applied after the client gave up
    assert hook.reprocess_segment(segment["id"]) is True
    assert api_calls(ya, "PUT").count(("PUT", reprocess)) == 1
    assert ya.get_segment(segment["id"])["status"] == "is_processed"


def test_create_that_lands_after_its_timeout_is_read_back_until_it_lands_not_resent(ya, hook):
    transport = hook.get_conn()
    transport.timeouts = Timeouts(connect=10.0, read=1.0)
    transport.settle_seconds = 60.0  # bounds the read-backs; ends as soon as the segment shows
    transport.read_back_interval = 0.1
    create = "/v1/management/segments/create_metrika"
    ya.faults.inject("slow", path_prefix=create, method="POST", delay=2.0)  # applied after the client gave up
    created = hook.create_metrika_segment("landed late", "counter_id", 1)
    assert [s["id"] for s in ya.segments() if s["name"] == "landed late"] == [created["id"]]
    assert api_calls(ya, "POST").count(("POST", create)) == 1


def test_quota_answer_without_its_period_fails_fast_with_the_body_text(ya, hook, limiter_clock):
    ya.configure(writes_per_hour=1, quota_names_period=0)
    hook.create_metrika_segment("a", "counter_id", 1)
    with pytest.raises(AudienceRateLimitError) as caught:
        hook.create_metrika_segment("b", "counter_id", 1)
    assert "Quota exceeded: client_write" in caught.value.message and "not retried" in caught.value.message
    assert len(api_calls(ya, "POST")) == 2  # the refused request was not resent
    assert limiter_clock.sleeps == []


@pytest.mark.parametrize("login", ["sandbox-login", "Sandbox.Login", "SANDBOX-LOGIN@yandex.ru", "sandbox.login@ya.ru"])
def test_own_segments_match_the_login_in_any_spelling(ya, set_ya_conn, patch_limiter, login):
    hook = YandexAudienceHook(set_ya_conn("ya_spelling", login=login))
    assert hook.find_segment("Site visitors (Metrica)")["id"] == METRIKA_ID
    assert hook.find_segment("Partner CRM buyers") is None  # shared with the login, not its own
    assert same_login("ivan.petrov", "Ivan-Petrov@yandex.ru") and not same_login("ivan", "ivan2")


def test_universal_file_segments_count_as_file_segments(ya, hook):
    segment = file_segment(hook, name="crm universal")
    listed = hook.get_segment(segment["id"])
    assert listed["type"] == "universal"
    assert hook.find_segment("crm universal", "uploading")["id"] == segment["id"]
    assert hook.find_segment("crm universal", "metrika") is None


def test_segments_are_read_page_by_page(ya, hook):
    ya.configure(max_page_size=2)
    hook.segments_page_size = 2
    created = [hook.create_metrika_segment(f"m{i}", "counter_id", 1)["id"] for i in range(3)]
    assert {s["id"] for s in hook.list_segments()} == {METRIKA_ID, SHARED_ID, *created}
    assert hook.get_segment(created[-1])["name"] == "m2"
    assert hook.find_segment("m2")["id"] == created[-1]
    queries = [r["query"] for r in ya.requests if r["path"].endswith("/segments")]
    assert any("offset=4" in q for q in queries)


def test_modify_data_waits_until_the_segment_is_processed(ya, hook):
    segment = file_segment(hook)
    hook.modify_data(
        segment["id"], crm_csv(20, start=1000), "addition", check_size=False
    )  # waits for the confirm's processing
    hook.modify_data(segment["id"], crm_csv(10, start=0), "subtraction", check_size=False)  # and for the addition's
    wait_status(hook, segment["id"])
    assert ya.get_segment(segment["id"])["valid_unique_quantity"] == 160
    hook.modify_data(segment["id"], crm_csv(5, start=2000), "addition", check_size=False)
    with pytest.raises(AudienceValidationError, match="is_updated"):
        hook.modify_data(
            segment["id"], crm_csv(5, start=3000), "addition", check_size=False, wait_until_processed=False
        )
    ya.configure(modify_while_processing=1)  # the lenient reading
    hook.modify_data(segment["id"], crm_csv(5, start=3000), "addition", check_size=False, wait_until_processed=False)
