"""Criteo operators executed against the Criteo fake with a recording task context."""

from __future__ import annotations

import json
import threading

import pytest
from helpers import sha, write_emails

from airflow_audience_provider.core.errors import AudienceError, AudiencePartialFailure, AudienceValidationError
from airflow_audience_provider.operators.criteo import (
    CriteoCreateOrUpdateAudienceOperator,
    CriteoCreateOrUpdateSegmentOperator,
    CriteoDeleteAudiencesOperator,
    CriteoDeleteSegmentsOperator,
    CriteoUploadContactListOperator,
)

# Every request the operators send and every answer they get is checked against Criteo's OpenAPI documents.
pytestmark = pytest.mark.usefixtures("validate_exchanges")


@pytest.fixture
def fast_conn(set_criteo_conn):
    """The default connection with few attempts, so failing retries end quickly."""
    return set_criteo_conn("criteo_default", extra={"max_retries": 3})


def upsert(context, name="crm-loyal", **kwargs):
    kwargs.setdefault("retailer_id", "311")
    return CriteoCreateOrUpdateSegmentOperator(task_id="upsert", name=name, **kwargs).execute(context)


# -- segments -----------------------------------------------------------------------------------


def test_create_or_update_segment_is_idempotent(criteo, context):
    first = upsert(context, description="nightly CRM export")
    assert first["action"] == "created" and first["identifier_type"] == "Email"
    assert context["ti"].pushed["segment_id"] == first["segment_id"]
    assert first["segment_id"] in context["ti"].pushed["criteo_segment_url"]
    ((alias, uri, extra),) = context["outlet_events"].added
    assert (alias, uri) == ("criteo-segments", f"criteo://424242/segment/{first['segment_id']}")
    assert {
        k: extra[k] for k in ("audience_extra_version", "vendor", "account", "object_id", "object_name", "action")
    } == {
        "audience_extra_version": 1,
        "vendor": "criteo",
        "account": "424242",
        "object_id": first["segment_id"],
        "object_name": "crm-loyal",
        "action": "created",
    }
    assert extra["link"].endswith(f"/segments/{first['segment_id']}")
    again = upsert(context, description="nightly CRM export")
    assert again["action"] == "unchanged" and again["segment_id"] == first["segment_id"]
    changed = upsert(context, description="rolling list")
    assert changed["action"] == "updated"
    assert [s["attributes"]["name"] for s in criteo.segments].count("crm-loyal") == 1
    # Same name at another retailer is another segment.
    other = upsert(context, retailer_id="312")
    assert other["action"] == "created" and other["segment_id"] != first["segment_id"]


def test_identifier_type_of_an_existing_segment_cannot_change(criteo, context):
    upsert(context)
    with pytest.raises(AudienceValidationError, match="cannot change"):
        upsert(context, identifier_type="CustomerId")
    with pytest.raises(AudienceValidationError, match="maid"):
        upsert(context, name="devices", identifier_type="maid")


def test_create_race_reuses_the_segment_another_run_created(criteo, context, monkeypatch):
    from airflow_audience_provider.hooks.criteo import CriteoHook

    criteo.add_segment("raced", retailer_id="311")
    real = CriteoHook.find_segments_by_name
    calls = []

    def first_blind(self, *args, **kwargs):  # the other run creates it right after our search
        calls.append(1)
        return [] if len(calls) == 1 else real(self, *args, **kwargs)

    monkeypatch.setattr(CriteoHook, "find_segments_by_name", first_blind)
    result = upsert(context, name="raced")
    assert result["action"] == "unchanged"
    assert [s["attributes"]["name"] for s in criteo.segments].count("raced") == 1


def test_refused_segment_fails_or_warns(criteo, context):
    with pytest.raises(AudiencePartialFailure, match="retailer-not-found") as caught:
        upsert(context, name="nowhere", retailer_id="999")
    assert caught.value.items[0]["problems"][0]["instance"] == "@data/0"
    warned = upsert(context, name="nowhere", retailer_id="999", on_partial_failure="warn")
    assert warned["action"] == "failed" and warned["problems"][0]["problems"][0]["code"] == "retailer-not-found"


def test_delete_segments_reports_what_cannot_be_deleted(criteo, context):
    used = upsert(context, name="used")["segment_id"]
    free = upsert(context, name="free")["segment_id"]
    audience = criteo.add_audience("Uses it", {"audienceSegmentId": used})
    op = CriteoDeleteSegmentsOperator(task_id="delete", segment_ids=[used, free, "1"])
    with pytest.raises(AudiencePartialFailure, match=f"Uses it \\({audience['id']}\\)"):
        op.execute(context)
    assert context["ti"].pushed["delete_result"]["deleted"] == [free]
    warned = CriteoDeleteSegmentsOperator(task_id="delete", segment_ids=f"{used},1", on_partial_failure="warn")
    summary = warned.execute(context)
    assert summary["missing"] == ["1"]
    assert summary["not_deleted"][0]["used_by_audiences"] == [{"id": audience["id"], "name": "Uses it"}]
    assert summary["not_deleted"][0]["code"] == "segment-must-not-be-used-in-audience"


# -- uploads ------------------------------------------------------------------------------------


def test_incremental_sync_sends_only_the_difference(criteo, context, tmp_path, validate_exchanges):
    sid = upsert(context)["segment_id"]
    emails = [f"user{n}@example.com" for n in range(10)]
    source = write_emails(tmp_path / "a.csv", [*emails, "not-an-email", emails[0].upper()])
    op = CriteoUploadContactListOperator(
        task_id="upload", segment_id=sid, source=source, snapshot_base=str(tmp_path / "snap"), max_invalid_share=0.5
    )
    first = op.execute(context)
    assert first["engine_mode"] == "full_replace"
    assert (first["rows"], first["valid"], first["invalid"], first["duplicate"]) == (12, 10, 1, 1)
    assert first["sent"] == first["criteo_valid"] == 10 and first["criteo_invalid"] == 0
    assert first["statistics"]["number_of_identifiers"] == 10
    assert criteo.members(sid) == {sha(e) for e in emails}
    # Next day: two gone, three new.
    source = write_emails(tmp_path / "b.csv", [*emails[2:], "new1@example.com", "new2@example.com", "new3@example.com"])
    second = CriteoUploadContactListOperator(
        task_id="upload", segment_id=sid, source=source, snapshot_base=str(tmp_path / "snap")
    ).execute(context)
    assert second["engine_mode"] == "incremental"
    assert (second["added"], second["removed"], second["sent"]) == (3, 2, 5)
    assert second["statistics"]["number_of_identifiers"] == 11
    assert second["finished_at"] and second["asset_uri"] == f"criteo://424242/segment/{sid}"
    assert not any("contact-list/clear" in r["path"] for r in criteo.requests[-5:])
    assert validate_exchanges.checked() >= 10  # these exchanges are checked against the OpenAPI documents
    # Smaller requests next time: the snapshot stays comparable (no full replace), nothing to send.
    third = CriteoUploadContactListOperator(
        task_id="upload",
        segment_id=sid,
        source=source,
        snapshot_base=str(tmp_path / "snap"),
        max_identifiers_per_request=3,
    ).execute(context)
    assert third["engine_mode"] in ("noop", "incremental") and third["sent"] == 0


def test_add_remove_and_replace_modes(criteo, context, tmp_path):
    sid = upsert(context)["segment_id"]
    base = write_emails(tmp_path / "base.csv", ["a@x.com", "b@x.com"])
    CriteoUploadContactListOperator(task_id="u", segment_id=sid, source=base, mode="add").execute(context)
    more = write_emails(tmp_path / "more.csv", ["c@x.com"])
    CriteoUploadContactListOperator(task_id="u", segment_id=sid, source=more, mode="add").execute(context)
    assert criteo.members(sid) == {sha("a@x.com"), sha("b@x.com"), sha("c@x.com")}
    gone = CriteoUploadContactListOperator(task_id="u", segment_id=sid, source=base, mode="remove").execute(context)
    assert gone["removed"] == 2 and gone["sent"] == 2
    assert criteo.members(sid) == {sha("c@x.com")}
    replaced = CriteoUploadContactListOperator(task_id="u", segment_id=sid, source=base, mode="replace").execute(
        context
    )
    assert replaced["added"] == 2
    assert criteo.members(sid) == {sha("a@x.com"), sha("b@x.com")}
    assert any(r["path"].endswith("/contact-list/clear") for r in criteo.requests)


def test_upload_refuses_a_type_the_segment_does_not_hold(criteo, context, tmp_path):
    sid = upsert(context)["segment_id"]
    source = write_emails(tmp_path / "ids.csv", ["c-1", "c-2"])
    with pytest.raises(AudienceValidationError, match="holds Email"):
        CriteoUploadContactListOperator(
            task_id="u", segment_id=sid, source=source, identifier_type="customer_id"
        ).execute(context)
    with pytest.raises(AudienceValidationError, match="Unknown identifier type"):
        CriteoUploadContactListOperator(task_id="u", segment_id=sid, source=source, identifier_type="fax").execute(
            context
        )
    with pytest.raises(ValueError, match="50,000"):
        CriteoUploadContactListOperator(task_id="u", segment_id=sid, source=source, max_identifiers_per_request=50_001)


def test_40_chunk_upload_survives_a_transient_5xx_and_the_counts_add_up(criteo, context, tmp_path, fast_conn):
    sid = upsert(context)["segment_id"]
    emails = [f"user{n}@example.com" for n in range(200)]
    source = write_emails(tmp_path / "big.csv", emails)
    criteo.fail_amendments(after=20, count=2, status=503)  # chunk 21 fails twice, then goes through
    # An amendment answered 5xx may still land: the run keeps its lease three read timeouts after it.
    result = CriteoUploadContactListOperator(
        task_id="u", segment_id=sid, source=source, mode="add", max_identifiers_per_request=5, read_timeout=1.0
    ).execute(context)
    assert result["chunks_total"] == result["chunks_sent"] == 40
    assert result["sent"] == result["criteo_valid"] == 200 and result["requests"] == 40
    assert [r["status"] for r in criteo.requests if r["path"].endswith("/add-remove")].count(503) == 2
    assert criteo.members(sid) == {sha(e) for e in emails}


def test_40_chunk_upload_failing_for_good_reports_what_was_accepted(criteo, context, tmp_path, fast_conn, monkeypatch):
    from airflow_audience_provider.operators.senders.criteo import CriteoChunkSender

    # The fake fails requests in arrival order: one chunk at a time, so the three failures are chunk
    # 22's (tests/sync_model/test_sync_regressions.py fails one of two chunks in flight).
    monkeypatch.setattr(CriteoChunkSender, "send_concurrency", 1)
    sid = upsert(context)["segment_id"]
    emails = [f"user{n}@example.com" for n in range(200)]
    source = write_emails(tmp_path / "big.csv", emails)
    snapshots = str(tmp_path / "snap")
    criteo.fail_amendments(after=21, count=3, status=500)  # chunk 22 fails on every attempt (3)
    op = CriteoUploadContactListOperator(
        task_id="u", segment_id=sid, source=source, snapshot_base=snapshots, max_identifiers_per_request=5,
        read_timeout=1.0,  # the answered-5xx amendments may still land: the lease is kept 3 read timeouts
    )  # fmt: skip
    with pytest.raises(AudienceError, match="failed after 21 of 40 chunk") as caught:
        op.execute(context)
    partial = context["ti"].pushed["upload_result"]
    assert partial["status"] == "failed"
    assert partial["criteo_valid"] == 105 == len(criteo.members(sid))  # accepted before the failure is known
    assert "snapshot was not advanced" in str(caught.value)
    # The rerun (faults gone) completes the list; nothing is lost or doubled.
    rerun = CriteoUploadContactListOperator(
        task_id="u", segment_id=sid, source=source, snapshot_base=snapshots, max_identifiers_per_request=5
    ).execute(context)
    assert rerun["valid"] == 200 and criteo.members(sid) == {sha(e) for e in emails}


def test_the_upload_results_keys_are_the_documented_ones(criteo, context, tmp_path, fast_conn):
    """docs/guides/contact_lists.rst lists every key of the result, sent, planned and failed alike."""
    from helpers import documented_upload_keys

    common = documented_upload_keys("Every upload")
    own = documented_upload_keys("Criteo (CriteoUploadContactListOperator)")
    sid = upsert(context)["segment_id"]
    snapshots = str(tmp_path / "snap")

    def upload(emails, **kwargs):
        return CriteoUploadContactListOperator(
            task_id="u", segment_id=sid, source=emails, snapshot_base=snapshots, **kwargs
        ).execute(context)

    sent = upload([f"user{n}@example.com" for n in range(10)], fetch_statistics=True)
    assert sent["status"] == "sent" and set(sent) == (common | own) - {"blocked_by"}
    planned = upload([f"user{n}@example.com" for n in range(12)], plan_only=True)
    assert planned["status"] == "planned" and set(planned) == common | own
    criteo.fail_amendments(after=0, count=3, status=500)  # every attempt of the only chunk fails
    with pytest.raises(AudienceError):
        upload([f"user{n}@example.com" for n in range(15)], read_timeout=1.0)  # the lease is kept 3 read timeouts
    failed = context["ti"].pushed["upload_result"]
    assert failed["status"] == "failed" and set(failed) == (common | own) - {"blocked_by"}


def test_on_kill_sends_no_further_chunk_and_the_next_sync_completes(criteo, context, tmp_path, fast_conn, monkeypatch):
    from airflow_audience_provider.hooks.criteo import CriteoHook
    from airflow_audience_provider.operators.senders.criteo import CriteoChunkSender

    sid = upsert(context)["segment_id"]
    emails = [f"user{n}@example.com" for n in range(40)]
    source = write_emails(tmp_path / "list.csv", emails)
    snapshots = str(tmp_path / "snap")
    op = CriteoUploadContactListOperator(
        task_id="u", segment_id=sid, source=source, snapshot_base=snapshots, max_identifiers_per_request=5
    )
    original = CriteoHook.add_remove_contact_list_by_audience_segment
    lock = threading.Lock()
    calls: list[bool] = []  # per request: was it started after the kill?
    killed = threading.Event()

    def chunk_then_killed(self, *args, **kwargs):
        with lock:
            calls.append(killed.is_set())
            nth = len(calls)
        answer = original(self, *args, **kwargs)
        if nth == 3:
            op.on_kill()  # SIGTERM while the third request was in flight
            killed.set()
        return answer

    monkeypatch.setattr(CriteoHook, "add_remove_contact_list_by_audience_segment", chunk_then_killed)
    with pytest.raises(AudienceError, match="cancelled"):
        op.execute(context)
    # Two chunks go out at a time: one chunk taken before the kill may start after it, no more.
    assert sum(calls) <= CriteoChunkSender.send_concurrency - 1
    assert 3 <= len(calls) < 8 and len(criteo.members(sid)) < 40  # stopped part way
    monkeypatch.setattr(CriteoHook, "add_remove_contact_list_by_audience_segment", original)
    rerun = CriteoUploadContactListOperator(
        task_id="u", segment_id=sid, source=source, snapshot_base=snapshots, max_identifiers_per_request=5
    ).execute(context)
    assert rerun["valid"] == 40 and criteo.members(sid) == {sha(e) for e in emails}


# -- audiences ----------------------------------------------------------------------------------


def test_create_or_update_audience_from_an_algebra(criteo, context):
    include = upsert(context, name="buyers")["segment_id"]
    exclude = criteo.segments[0]["id"]
    algebra = {"and": [{"segment": include}, {"not": {"audienceSegmentId": exclude}}]}
    op = CriteoCreateOrUpdateAudienceOperator(
        task_id="aud", name="Buyers minus opt-outs", algebra=algebra, retailer_id="311"
    )
    created = op.execute(context)
    assert created["action"] == "created" and created["segment_ids"] == sorted([include, exclude])
    assert context["ti"].pushed["audience_id"] == created["audience_id"]
    assert created["audience_id"] in context["ti"].pushed["criteo_audience_url"]
    assert context["outlet_events"].added[-1][:2] == (
        "criteo-audiences",
        f"criteo://424242/audience/{created['audience_id']}",
    )
    # Same algebra with the operands swapped: unchanged. A JSON string works too.
    swapped = {"and": [{"not": {"audienceSegmentId": exclude}}, {"audienceSegmentId": include}]}
    assert (
        CriteoCreateOrUpdateAudienceOperator(
            task_id="aud", name="Buyers minus opt-outs", algebra=swapped, retailer_id="311"
        ).execute(context)["action"]
        == "unchanged"
    )
    updated = CriteoCreateOrUpdateAudienceOperator(
        task_id="aud", name="Buyers minus opt-outs", algebra=f'{{"audienceSegmentId": "{include}"}}', retailer_id="311"
    ).execute(context)
    assert updated["action"] == "updated" and updated["audience_id"] == created["audience_id"]
    assert len(criteo.audiences) == 1


def test_audience_algebra_is_validated_before_sending(criteo, context):
    before = len(criteo.requests)
    for bad in ({"and": [{"segment": "1"}], "or": []}, {"not": {}}, "not json"):
        with pytest.raises(AudienceValidationError):
            CriteoCreateOrUpdateAudienceOperator(task_id="a", name="x", algebra=bad, retailer_id="311").execute(context)
    assert len(criteo.requests) == before


def test_audience_with_unknown_segment_is_a_partial_failure(criteo, context):
    with pytest.raises(AudiencePartialFailure, match="segment-not-found"):
        CriteoCreateOrUpdateAudienceOperator(
            task_id="a", name="ghost", algebra={"audienceSegmentId": "12345"}, retailer_id="311"
        ).execute(context)


def test_delete_audiences(criteo, context):
    aid = criteo.add_audience("old", {"audienceSegmentId": criteo.segments[0]["id"]})["id"]
    summary = CriteoDeleteAudiencesOperator(task_id="d", audience_ids=[aid, "999"]).execute(context)
    assert summary == {"deleted": [aid], "missing": ["999"], "not_deleted": []}
    with pytest.raises(AudiencePartialFailure):
        CriteoDeleteAudiencesOperator(task_id="d", audience_ids="999", missing_ok=False).execute(context)


def test_marketing_solutions_segment_and_upload(criteo, context, tmp_path, set_criteo_conn):
    conn = set_criteo_conn("criteo_ms", extra={"api": "marketing_solutions"})
    segment = CriteoCreateOrUpdateSegmentOperator(task_id="s", name="ms-list", criteo_conn_id=conn).execute(context)
    assert segment["action"] == "created" and segment["asset_uri"].startswith("criteo://98765/segment/")
    source = write_emails(tmp_path / "ms.csv", ["a@x.com", "b@x.com"])
    result = CriteoUploadContactListOperator(
        task_id="u", segment_id=segment["segment_id"], source=source, criteo_conn_id=conn, mode="add"
    ).execute(context)
    assert result["identifier_type"] == "email" and result["statistics"]["number_of_identifiers"] == 2


def test_operator_modules_do_not_import_the_hook_at_parse_time():
    # (tenacity is not checked: airflow.sdk itself imports it)
    import subprocess
    import sys

    code = (
        "import sys, airflow_audience_provider.operators.criteo, airflow_audience_provider.sensors.criteo; "
        "print(sorted(m for m in ('requests', 'airflow_audience_provider.hooks.criteo') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "[]"


def test_upload_source_rendered_into_a_template_string_is_read_back(criteo, context, tmp_path):
    sid = upsert(context)["segment_id"]
    source = str(write_emails(tmp_path / "s.csv", ["a@x.com"]))  # what "{{ ti.xcom_pull(...) }}" renders to
    result = CriteoUploadContactListOperator(
        task_id="u", segment_id=sid, source=source, mode="add", snapshot_base=str(tmp_path / "snap")
    ).execute(context)
    assert result["sent"] == 1


def test_an_answer_accounting_for_fewer_identifiers_than_sent_fails_the_upload(criteo, context, tmp_path):
    sid = upsert(context)["segment_id"]
    emails = [f"user{n}@example.com" for n in range(20)]
    source = write_emails(tmp_path / "ids.csv", emails)
    snapshots = str(tmp_path / "snap")
    # One answer counts two identifiers fewer than its chunk held, and gives no invalid count.
    criteo.short_count_amendments(dropped=2, omit_invalid_count=True)
    op = CriteoUploadContactListOperator(
        task_id="u", segment_id=sid, source=source, snapshot_base=snapshots, max_identifiers_per_request=5
    )
    with pytest.raises(AudiencePartialFailure, match="accounted for 18 of the 20 identifier") as caught:
        op.execute(context)
    assert len(criteo.members(sid)) == 18
    assert caught.value.items == [{"sent": 20, "accepted": 18, "invalid": 0, "unaccounted": 2}]
    assert not any(e in str(caught.value) or sha(e) in str(caught.value) for e in emails)  # counts, never ids
    partial = context["ti"].pushed["upload_result"]
    assert partial["vendor_unaccounted"] == 2 and partial["criteo_valid"] == 18
    # The identifiers sent stay uncertain: the rerun sends the list again and it is whole.
    rerun = CriteoUploadContactListOperator(
        task_id="u", segment_id=sid, source=source, snapshot_base=snapshots, max_identifiers_per_request=5
    ).execute(context)
    assert rerun["vendor_unaccounted"] == 0 and criteo.members(sid) == {sha(e) for e in emails}


def test_a_short_count_with_on_partial_failure_warn_is_sent_again_by_the_next_sync(criteo, context, tmp_path):
    sid = upsert(context)["segment_id"]
    snapshots = str(tmp_path / "snap")

    def sync(values, **kwargs):
        source = write_emails(tmp_path / "ids.csv", values)
        return CriteoUploadContactListOperator(
            task_id="u", segment_id=sid, source=source, snapshot_base=snapshots, max_identifiers_per_request=5,
            **kwargs,
        ).execute(context)  # fmt: skip

    first = [f"user{n}@example.com" for n in range(10)]
    assert sync(first)["engine_mode"] == "full_replace"
    more = first + [f"new{n}@example.com" for n in range(10)]
    criteo.short_count_amendments(dropped=3)  # the counts present, and adding up to 3 fewer than sent
    warned = sync(more, on_partial_failure="warn")
    assert warned["status"] == "sent" and warned["vendor_unaccounted"] == 3
    assert any("they stay uncertain" in note for note in warned["state"]["notes"])
    assert len(criteo.members(sid)) == 17
    # The next sync does not trust the unaccounted identifiers: it sends them again.
    again = sync(more)
    assert again["vendor_unaccounted"] == 0 and criteo.members(sid) == {sha(e) for e in more}
    assert sync(more)["engine_mode"] == "noop"


def short_count_uploader(context, tmp_path, sid):
    """``upload(values, mode, **kwargs)``: one Criteo upload of these e-mails, five per request, one snapshot store."""
    snapshots = str(tmp_path / "snap")

    def upload(values, mode, **kwargs):
        source = write_emails(tmp_path / f"{mode}.csv", values)
        return CriteoUploadContactListOperator(
            task_id="u", segment_id=sid, source=source, snapshot_base=snapshots, max_identifiers_per_request=5,
            mode=mode, **kwargs,
        ).execute(context)  # fmt: skip

    return upload


def test_a_short_counted_remove_that_ended_green_is_not_undone_by_the_next_add(criteo, context, tmp_path):
    """The unaccounted identifiers stay uncertain against the state the green run reached: kept against
    the old snapshot instead, the next add re-added every identifier the remove had taken out."""
    sid = upsert(context)["segment_id"]
    upload = short_count_uploader(context, tmp_path, sid)

    base = [f"user{n}@example.com" for n in range(20)]
    gone, joining = base[:5], [f"new{n}@example.com" for n in range(3)]
    upload(base, "sync")
    criteo.short_count_amendments(dropped=2)  # two of the five removals are not applied
    removed = upload(gone, "remove", on_partial_failure="warn")
    assert removed["status"] == "sent" and removed["vendor_unaccounted"] == 2
    assert len(criteo.members(sid)) == 17
    upload(joining, "add")
    assert criteo.members(sid) == {sha(e) for e in base[5:] + joining}
    assert upload(base[5:] + joining, "sync")["engine_mode"] == "noop"


def test_a_short_counted_add_that_ended_green_is_not_undone_by_the_next_remove(criteo, context, tmp_path):
    sid = upsert(context)["segment_id"]
    upload = short_count_uploader(context, tmp_path, sid)

    base = [f"user{n}@example.com" for n in range(20)]
    joining = [f"new{n}@example.com" for n in range(5)]
    upload(base, "sync")
    criteo.short_count_amendments(dropped=2)
    added = upload(joining, "add", on_partial_failure="warn")
    assert added["status"] == "sent" and added["vendor_unaccounted"] == 2
    upload(base[:1], "remove")
    assert criteo.members(sid) == {sha(e) for e in base[1:] + joining}


def test_a_rule_changed_under_the_same_version_replaces_the_list(criteo, context, tmp_path, monkeypatch):
    import dataclasses

    from airflow_audience_provider.identifiers import rules

    stock = rules.get_rule("criteo", "phone")
    sid = upsert(context, name="phones", identifier_type="PhoneNumber")["segment_id"]
    phones = [f"+4915112345{n:03d}" for n in range(20)]
    source = write_emails(tmp_path / "phones.csv", phones)
    snapshots = str(tmp_path / "snap")

    def sync():
        return CriteoUploadContactListOperator(
            task_id="u", segment_id=sid, source=source, identifier_type="phone", snapshot_base=snapshots
        ).execute(context)

    assert sync()["engine_mode"] == "full_replace"
    assert criteo.members(sid) == {sha(p) for p in phones}
    # A custom rule edited in place: digits without the plus, the version left as it was.
    edited = dataclasses.replace(
        stock, profile=dataclasses.replace(stock.profile, phone_format=rules.PhoneFormat.DIGITS)
    )
    monkeypatch.setitem(rules._RULES, ("criteo", rules.IdentifierType.PHONE), edited)
    assert edited.key == stock.key and edited.fingerprint != stock.fingerprint
    result = sync()
    assert result["engine_mode"] == "full_replace"
    assert "other settings under the same key" in result["state"]["full_replace_reason"]
    assert criteo.members(sid) == {sha(p.lstrip("+")) for p in phones}
    assert sync()["engine_mode"] == "noop"


def test_an_unfinished_run_then_a_rule_changed_under_the_same_version_replaces_the_list(
    criteo, context, tmp_path, fast_conn, monkeypatch
):
    import dataclasses

    from airflow_audience_provider.identifiers import rules
    from airflow_audience_provider.operators.senders.criteo import CriteoChunkSender

    stock = rules.get_rule("criteo", "phone")
    sid = upsert(context, name="phones", identifier_type="PhoneNumber")["segment_id"]
    before = [f"+4915112345{n:03d}" for n in range(20)]
    after = [f"+4915112345{n:03d}" for n in range(2, 26)]  # 2 removals (within the guard), 6 additions
    snapshots = tmp_path / "snap"

    def sync(phones, name):
        return CriteoUploadContactListOperator(
            task_id="u", segment_id=sid, source=write_emails(tmp_path / name, phones), identifier_type="phone",
            snapshot_base=str(snapshots), max_identifiers_per_request=5,
            read_timeout=1.0,  # the answered-5xx amendments may still land: the lease is kept 3 read timeouts
        ).execute(context)  # fmt: skip

    assert sync(before, "before.csv")["engine_mode"] == "full_replace"
    # The next sync fails part way: its first addition lands, the second fails on every attempt (3).
    done = sum(r["path"].endswith("/add-remove") and r["status"] == 200 for r in criteo.requests)
    criteo.fail_amendments(after=done + 1, count=3, status=500)
    with monkeypatch.context() as one_at_a_time:
        one_at_a_time.setattr(CriteoChunkSender, "send_concurrency", 1)  # the faults hit one chunk's attempts
        with pytest.raises(AudienceError, match="failed after 1 of 3 chunk"):
            sync(after, "after.csv")
    (journal,) = snapshots.rglob("journal.json")
    assert json.loads(journal.read_text())["rule_fingerprint"] == stock.fingerprint
    partial = criteo.members(sid)
    assert len(partial) == 25 and partial > {sha(p) for p in before}  # neither list
    # Then the rule is edited in place (digits without the plus, the version left as it was).
    edited = dataclasses.replace(
        stock, profile=dataclasses.replace(stock.profile, phone_format=rules.PhoneFormat.DIGITS)
    )
    monkeypatch.setitem(rules._RULES, ("criteo", rules.IdentifierType.PHONE), edited)
    assert edited.key == stock.key and edited.fingerprint != stock.fingerprint
    # Neither the journal's identifiers nor the snapshot's are comparable: the whole list is replaced.
    result = sync(after, "after.csv")
    assert result["engine_mode"] == "full_replace" and result["status"] == "sent"
    assert "other settings" in " ".join(result["state"]["notes"])
    assert criteo.members(sid) == {sha(p.lstrip("+")) for p in after}
    assert not journal.exists()
    assert sync(after, "after.csv")["engine_mode"] == "noop"
