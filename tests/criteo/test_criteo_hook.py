"""CriteoHook against the Criteo fake over HTTP: every audience operation of both APIs, partial
approval, paging, tokens, deprecation headers, rate limits and faults. Every exchange is validated
against Criteo's OpenAPI documents (the ``spec_check`` fixture)."""

from __future__ import annotations

import logging
import time

import pytest

from airflow_audience_provider.core.errors import (
    AudienceAuthenticationError,
    AudienceConfigurationError,
    AudiencePermissionError,
    AudienceServerError,
    AudienceValidationError,
)

SHA = "5f0c3d2b9e8a7c6d5e4f3a2b1c0d9e8f7a6b5c4d3e2f1a0b9c8d7e6f5a4b3c2d"


def sha(n: int) -> str:
    import hashlib

    return hashlib.sha256(f"user{n}@example.com".encode()).hexdigest()


def create_segment(hook, name: str, retailer: str = "311", identifier_type: str = "Email") -> str:
    result = hook.bulk_create_audience_segments(
        [{"name": name, "retailerId": retailer, "contactList": {"identifierType": identifier_type}}]
    )
    assert result.ok, result.describe_failures()
    return result.items[0]["id"]


# -- connection, auth ---------------------------------------------------------------------------


def test_probe_reads_me_with_a_minted_token(hook, criteo, spec_check):
    ok, message = hook.test_connection()
    assert ok, message
    assert "retail_media 2026-07" in message and "airflow-audience-sandbox" in message
    assert criteo.tokens_issued == 1
    assert spec_check.checked() == 2  # /me, then the configured account


def test_wrong_secret_is_a_clear_non_retryable_error(make_hook, set_criteo_conn, criteo):
    hook = make_hook(set_criteo_conn("criteo_bad", password="wrong"))
    ok, message = hook.test_connection()
    assert not ok
    assert "criteo_bad" in message and "invalid_client" in message
    with pytest.raises(AudienceAuthenticationError):
        hook.probe()


def test_forbidden_account_is_about_consent_not_the_secret(make_hook, set_criteo_conn, criteo, spec_check):
    hook = make_hook(set_criteo_conn("criteo_other_account", extra={"account_id": "999999"}))
    ok, message = hook.test_connection()
    assert not ok
    assert "HTTP 403" in message and "consent" in message and "the client id and secret are fine" in message
    assert "check the Client secret" not in message
    with pytest.raises(AudiencePermissionError, match="consent"):
        hook.search_audience_segments()


def test_connection_test_reaches_the_configured_account_and_advertiser(make_hook, set_criteo_conn, criteo, spec_check):
    ok, message = make_hook().test_connection()
    assert ok and "account 424242 is reachable" in message
    assert any(r["path"].endswith("/accounts/424242/audience-segments/search") for r in criteo.requests)
    ms = make_hook(set_criteo_conn("criteo_ms_ok", extra={"api": "marketing_solutions"}))
    ok, message = ms.test_connection()
    assert ok and f"advertiser {criteo.advertiser_id} is reachable" in message
    other = make_hook(set_criteo_conn("criteo_ms_other", extra={"api": "marketing_solutions", "advertiser_id": "1"}))
    ok, message = other.test_connection()
    assert not ok and "advertiser 1" in message and "consent" in message
    assert spec_check.checked() >= 5


def test_missing_client_id_names_the_field(make_hook, set_criteo_conn):
    with pytest.raises(AudienceConfigurationError, match="client id"):
        make_hook(set_criteo_conn("criteo_nologin", login=""))


def test_token_is_cached_and_refreshed_before_expiry(hook, criteo):
    auth = hook.get_conn().auth
    now = [1_000_000.0]
    auth._clock = lambda: now[0]
    hook.probe()
    hook.probe()
    assert criteo.tokens_issued == 1  # cached
    now[0] += 900 - 61  # just before the 60 s refresh margin: still the cached token
    hook.probe()
    assert criteo.tokens_issued == 1
    now[0] += 2  # inside the margin: a new token before the old one expires
    hook.probe()
    assert criteo.tokens_issued == 2


def test_expired_token_in_the_middle_of_work_refreshes_once_and_retries(hook, criteo):
    hook.probe()
    criteo.advance_time(901)  # the fake's clock passes the token's lifetime, ours does not notice
    hook.probe()
    assert criteo.tokens_issued == 2
    assert [r["status"] for r in criteo.requests if r["path"].endswith("/me")] == [200, 401, 200]


def test_revoked_credentials_after_a_refresh_fail_clearly(hook, criteo):
    hook.probe()
    criteo.rotate_secret("rotated")
    with pytest.raises(AudienceAuthenticationError, match="criteo_default"):
        hook.probe()


def test_deprecation_and_sunset_headers_are_logged_once(make_hook, set_criteo_conn, caplog):
    hook = make_hook(set_criteo_conn("criteo_old", extra={"api_version": "2026-01"}))
    with caplog.at_level(logging.WARNING):
        hook.probe()
        hook.probe()
    warnings = [r.getMessage() for r in caplog.records if "deprecated" in r.getMessage()]
    assert len(warnings) == 2  # once per endpoint (the probe reads /me and searches the account)
    assert all("Sunset: Wed, 27 Jan 2027" in w for w in warnings)


def test_unknown_api_flavour_is_a_configuration_error(make_hook, set_criteo_conn):
    with pytest.raises(AudienceConfigurationError, match="'api' must be one of retail_media, marketing_solutions"):
        make_hook(set_criteo_conn("criteo_weird", extra={"api": "display"})).probe()


# -- segments (Retail Media) --------------------------------------------------------------------


def test_segment_create_update_search_delete(hook, criteo, spec_check):
    sid = create_segment(hook, "crm-loyal")
    found = hook.search_audience_segments(retailer_ids=["311"], segment_types=["ContactList"])
    assert sid in [s["id"] for s in found]
    updated = hook.bulk_update_audience_segments([{"id": sid, "name": "crm-loyal-2", "description": "rolling"}])
    assert updated.ok
    assert updated.data[0]["attributes"]["description"] == "rolling"
    assert hook.get_audience_segment(sid)["attributes"]["name"] == "crm-loyal-2"
    deleted = hook.bulk_delete_audience_segments([sid])
    assert deleted.ok and deleted.to_dict()["ids"] == [sid]
    assert hook.get_audience_segment(sid) is None


def test_partial_approval_maps_each_problem_to_its_input(hook, criteo):
    create_segment(hook, "taken")
    result = hook.bulk_create_audience_segments(
        [
            {"name": "fresh", "retailerId": "311", "contactList": {"identifierType": "Email"}},
            {"name": "taken", "retailerId": "311", "contactList": {"identifierType": "Email"}},
            {"name": "", "retailerId": "311", "contactList": {"identifierType": "Email"}},
            {"name": "other-retailer", "retailerId": "312", "contactList": {"identifierType": "CustomerId"}},
        ]
    )
    assert [i["status"] for i in result.items] == ["ok", "failed", "failed", "ok"]
    assert result.items[1]["problems"][0]["code"] == "name-must-be-unique"
    assert result.items[1]["problems"][0]["instance"] == "@data/1"
    assert result.items[2]["problems"][0]["code"] == "name-must-not-be-empty"
    assert result.items[0]["id"] and result.items[3]["id"]
    assert "taken (@data/1): name-must-be-unique" in result.describe_failures()
    unknown = hook.bulk_update_audience_segments([{"id": "1", "name": "x"}])
    assert unknown.items[0]["status"] == "failed"
    assert unknown.items[0]["problems"][0]["code"] == "segment-not-found"


def test_delete_of_a_segment_used_in_an_audience_names_the_audiences(hook, criteo):
    sid = create_segment(hook, "in-use")
    keep = create_segment(hook, "free")
    audience = criteo.add_audience("Loyal buyers", {"and": [{"audienceSegmentId": sid}]})
    result = hook.bulk_delete_audience_segments([sid, keep])
    assert [i["status"] for i in result.items] == ["failed", "ok"]
    problem = result.items[0]["problems"][0]
    assert problem["code"] == "segment-must-not-be-used-in-audience"
    assert problem["severity"] == "error"
    assert f"Loyal buyers ({audience['id']})" in problem["detail"]
    assert result.items[0]["used_by_audiences"] == [{"id": audience["id"], "name": "Loyal buyers"}]


def test_search_pages_through_every_result(hook, criteo, spec_check):
    for n in range(8):  # 2 seeded Retail Media segments + 8 = 10: pages of 3, 3, 3, 1
        criteo.add_segment(f"bulk-{n}")
    segments = hook.search_audience_segments(page_size=3)
    assert len(segments) == len(criteo.segments) - 1  # every RM segment; the MS one is another API
    pages = [r for r in criteo.requests if r["path"].endswith("/audience-segments/search")]
    assert len(pages) == 4 and "limit=3" in pages[0]["query"]


# -- contact lists ------------------------------------------------------------------------------


def test_add_remove_clear_and_statistics(hook, criteo, spec_check):
    sid = create_segment(hook, "list")
    added = hook.add_remove_contact_list_by_audience_segment(sid, "add", [sha(1), sha(2), "not-an-email"], "email")
    assert (added["valid"], added["invalid"], added["operation"]) == (2, 1, "add")
    assert added["contact_list_id"] == sid
    hook.add_remove_contact_list_by_audience_segment(sid, "remove", [sha(1)], "Email")
    stats = hook.get_audience_segment_contact_list_statistics(sid)
    assert stats["number_of_identifiers"] == 1
    hook.clear_contact_list_by_audience_segment(sid)
    assert hook.get_audience_segment_contact_list_statistics(sid)["number_of_identifiers"] == 0


def test_statistics_lag_until_the_computation_window(hook, criteo):
    criteo.configure(stats_after_window=1)
    sid = create_segment(hook, "lagging")
    hook.add_remove_contact_list_by_audience_segment(sid, "add", [sha(1), sha(2)], "email")
    assert hook.get_audience_segment_contact_list_statistics(sid)["number_of_identifiers"] == 0
    criteo.advance_time(12 * 3600)  # at least one 0h/12h window passes on the fake's clock
    assert hook.get_audience_segment_contact_list_statistics(sid)["number_of_identifiers"] == 2


def test_more_than_50000_identifiers_are_refused_before_sending(hook, criteo):
    sid = create_segment(hook, "big")
    before = len(criteo.requests)
    with pytest.raises(AudienceValidationError, match="at most 50000"):
        hook.add_remove_contact_list_by_audience_segment(sid, "add", [SHA] * 50_001, "email")
    assert len(criteo.requests) == before


def test_fake_enforces_the_50000_limit_too(criteo):
    import requests

    token = requests.post(
        f"{criteo.base_url}/oauth2/token",
        data={
            "client_id": criteo.client_id,
            "client_secret": criteo.connection("")["password"],
            "grant_type": "client_credentials",
        },
        timeout=10,
    ).json()["access_token"]
    sid = criteo.segments[0]["id"]
    answer = requests.post(
        f"{criteo.base_url}/2026-07/retail-media/audience-segments/{sid}/contact-list/add-remove",
        json={"data": {"attributes": {"operation": "add", "identifierType": "Email", "identifiers": [SHA] * 50_001}}},
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
    )
    assert answer.status_code == 400
    assert answer.json()["errors"][0]["code"] == "too-many-identifiers"


def test_identifier_type_the_api_does_not_take_is_refused(hook, ms_hook, criteo):
    with pytest.raises(AudienceValidationError, match="maid"):
        hook.vendor_identifier_type("maid")
    assert ms_hook.vendor_identifier_type("maid") == "madid"
    with pytest.raises(AudienceValidationError, match="customer_id"):
        ms_hook.vendor_identifier_type("customer_id")


def test_identifier_type_other_than_the_segments_is_a_validation_error(hook, criteo):
    sid = create_segment(hook, "customers", identifier_type="CustomerId")
    with pytest.raises(AudienceValidationError, match=r"identifier-type-mismatch|CustomerId"):
        hook.add_remove_contact_list_by_audience_segment(sid, "add", [SHA], "email")


def test_a_5xx_on_add_is_retried_without_double_counting(hook, criteo):
    sid = create_segment(hook, "flaky")
    criteo.faults.inject("status", status=503, count=2, path_prefix="/2026-07/retail-media/audience-segments/")
    answer = hook.add_remove_contact_list_by_audience_segment(sid, "add", [sha(1), sha(2)], "email")
    assert answer["valid"] == 2
    assert len(criteo.members(sid)) == 2


def test_rate_limit_storm_is_waited_out_with_the_ratelimit_headers(hook, criteo):
    criteo.configure(calls_per_minute=3, rate_window_seconds=0.5)
    started = time.monotonic()
    for _ in range(7):
        hook.probe()
    assert time.monotonic() - started >= 0.5
    refused = [r for r in criteo.requests if r["status"] == 429]
    assert refused, "the fake should have answered 429 at least once"


def test_the_client_window_frees_after_the_vendors_so_the_boundary_call_gets_no_429(hook, criteo):
    """The client stamps a call before sending it; the vendor's window starts at its arrival, later.

    The first call arrives 40 ms after its stamp (a slow trip); the third may go once that stamp has
    left the client's window, and must not reach the vendor before the first call has left its own.
    """
    import dataclasses

    from airflow_audience_provider.core.ratelimit import RateLimit, Window

    window = Window(2, 8.0, "2 calls per 8 s")
    assert window.span - window.seconds > 0.04  # the margin covers the slow trip below
    criteo.configure(calls_per_minute=window.limit, rate_window_seconds=window.seconds)
    transport = hook.get_conn()
    transport.profile = dataclasses.replace(
        transport.profile, rate_limits={"default": RateLimit((window,), max_wait=30)}
    )
    transport.auth.token()  # fetched now: the trips below are the calls alone
    criteo.faults.inject("slow", delay=0.04, path_prefix="/2026-07/retail-media/me")
    for _ in range(3):
        transport.request("GET", "/2026-07/retail-media/me")
    statuses = [r["status"] for r in criteo.requests if r["path"] == "/2026-07/retail-media/me"]
    assert statuses == [200, 200, 200]  # no 429: the third call waited for the vendor's window too


def test_persistent_5xx_gives_a_server_error(hook, criteo):
    criteo.faults.inject("status", status=500, count=10, path_prefix="/2026-07/retail-media/me")
    with pytest.raises(AudienceServerError):
        hook.probe()


# -- audiences ----------------------------------------------------------------------------------


def test_retail_media_audiences_use_preview_for_writes(hook, criteo, spec_check):
    include = create_segment(hook, "buyers")
    exclude = criteo.segments[0]["id"]  # the seeded opt-out list
    algebra = {"and": [{"audienceSegmentId": include}, {"not": {"audienceSegmentId": exclude}}]}
    created = hook.bulk_create_audience([{"name": "Buyers minus opt-outs", "retailerId": "311", "algebra": algebra}])
    assert created.ok, created.describe_failures()
    aid = created.items[0]["id"]
    assert any(r["path"].startswith("/preview/retail-media/accounts/424242/audiences/create") for r in criteo.requests)
    found = hook.search_audiences(segment_ids=[exclude])
    assert [a["id"] for a in found] == [aid]
    hook.add_remove_contact_list_by_audience_segment(include, "add", [sha(1), sha(2)], "email")
    hook.add_remove_contact_list_by_audience_segment(exclude, "add", [sha(2)], "email")
    sizes = hook.compute_audiences_sizes([aid])
    assert sizes[0]["attributes"]["size"] == 1
    assert hook.estimate_audience_size({"audienceSegmentId": include}, retailer_id="311")["size"] == 2
    assert hook.compute_audience_segments_sizes([include])[0]["attributes"]["size"] == 2
    updated = hook.bulk_update_audience([{"id": aid, "algebra": {"audienceSegmentId": include}, "description": "x"}])
    assert updated.ok
    assert hook.bulk_delete_audiences([aid]).ok
    assert hook.search_audiences() == []


def test_algebra_is_validated_before_sending(hook, criteo):
    before = len(criteo.requests)
    for bad in (
        {"and": []},
        {"audienceSegmentId": "1", "not": {"audienceSegmentId": "2"}},
        {"or": [{"audienceSegmentId": "1"}, {"nope": 1}]},
        {"not": [{"audienceSegmentId": "1"}]},
        "1",
    ):
        with pytest.raises(AudienceValidationError):
            hook.bulk_create_audience([{"name": "x", "retailerId": "311", "algebra": bad}])
    assert len(criteo.requests) == before


def test_line_item_targeting_attach_and_detach(hook, criteo, spec_check):
    sid = create_segment(hook, "targeted")
    aid = criteo.add_audience("Targeted", {"audienceSegmentId": sid})["id"]
    assert hook.append_audience_targets_by_line_item_id("1001", [aid])["audience_ids"] == [aid]
    assert hook.get_audience_targets_by_line_item_id("1001") == {"scope": "include", "audience_ids": [aid]}
    assert hook.put_audience_targets_by_line_item_id("1001", [aid], scope="exclude")["scope"] == "exclude"
    assert hook.delete_audience_targets_by_line_item_id("1001", [aid])["audience_ids"] == []


# -- Marketing Solutions ------------------------------------------------------------------------


def test_marketing_solutions_segments_contact_lists_and_audiences(ms_hook, criteo, spec_check):
    created = ms_hook.create_audience_segments([{"name": "ms-list", "contactList": {}}])
    assert created.ok, created.describe_failures()
    sid = created.items[0]["id"]
    answer = ms_hook.update_contact_list_by_audience_segment(sid, "add", ["jane@example.org", SHA], "email")
    assert answer["valid"] == 2 and answer["contact_list_id"] == sid
    assert ms_hook.get_audience_segment_contact_list_statistics(sid)["number_of_identifiers"] == 2
    ms_hook.delete_contact_list_by_audience_segment(sid)
    assert ms_hook.get_audience_segment_contact_list_statistics(sid)["number_of_identifiers"] == 0
    assert ms_hook.update_audience_segments([{"id": sid, "description": "d"}]).ok
    audience = ms_hook.create_audiences([{"name": "ms-aud", "algebra": {"not": {"audienceSegmentId": sid}}}])
    assert audience.ok, audience.describe_failures()
    aid = audience.items[0]["id"]
    assert [a["id"] for a in ms_hook.search_audiences(segment_ids=[sid])] == [aid]
    assert ms_hook.compute_audiences_sizes([aid])[0]["id"] == aid
    assert "size" in ms_hook.estimate_audiences_sizes({"audienceSegmentId": sid})
    assert ms_hook.compute_audience_segments_sizes([sid])[0]["id"] == sid
    assert ms_hook.update_ad_set_audience("555", aid)["attributes"]["audienceId"] == aid
    assert ms_hook.update_audiences([{"id": aid, "name": "ms-aud-2"}]).ok
    assert ms_hook.delete_audiences([aid]).ok
    assert ms_hook.delete_audience_segments([sid]).ok
    assert any(r["path"].startswith("/2026-07/marketing-solutions/") for r in criteo.requests)
    ok, message = ms_hook.test_connection()
    assert ok and "marketing_solutions" in message


def test_token_is_refreshed_between_the_chunks_of_a_long_upload(hook, criteo):
    from airflow_audience_provider.identifiers import get_rule
    from airflow_audience_provider.identifiers.chunking import Chunk
    from airflow_audience_provider.operators.senders.criteo import CriteoChunkSender

    sid = create_segment(hook, "long-upload")
    auth = hook.get_conn().auth
    now = [time.time()]  # the token minted above expires 900 s from the real now

    def clock() -> float:  # every look at the clock is five minutes later: a 40-chunk upload takes hours
        now[0] += 300
        return now[0]

    auth._clock = clock
    sender = CriteoChunkSender(hook, sid, "Email")
    rule = get_rule("criteo", "sha256")
    for index in range(1, 41):
        sender.add(Chunk("add", index, 40, rule, values=[sha(index)]))
    assert len(criteo.members(sid)) == 40
    assert criteo.tokens_issued >= 10  # refreshed ahead of expiry...
    assert not [r for r in criteo.requests if r["status"] == 401]  # ...so no request was refused


def test_revoked_tokens_are_replaced_once_transparently(hook, criteo):
    hook.probe()
    criteo.revoke_tokens()
    hook.probe()
    statuses = [r["status"] for r in criteo.requests if r["path"].endswith("/me")]
    assert statuses == [200, 401, 200] and criteo.tokens_issued == 2
