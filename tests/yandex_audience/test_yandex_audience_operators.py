"""Yandex.Audience operators run with op.execute(context) against the fake; only the Airflow context is a double."""

from __future__ import annotations

import hashlib
import time

import pytest
from yandex_audience_helpers import PROCESSING, emails, upload_operator

from airflow_audience_provider.core.errors import (
    AudienceConfigurationError,
    AudienceError,
    AudienceNotFoundError,
    AudiencePartialFailure,
    AudiencePermissionError,
    AudienceRateLimitError,
    AudienceValidationError,
)
from airflow_audience_provider.operators.yandex_audience import (
    YandexAudienceAddDelegateOperator,
    YandexAudienceCreateAppMetricaSegmentOperator,
    YandexAudienceCreateGeoSegmentOperator,
    YandexAudienceCreateLookalikeSegmentOperator,
    YandexAudienceCreateMetrikaSegmentOperator,
    YandexAudienceCreateOrUpdatePixelOperator,
    YandexAudienceCreatePixelSegmentOperator,
    YandexAudienceDeletePixelOperator,
    YandexAudienceDeleteSegmentOperator,
    YandexAudienceGrantSegmentAccessOperator,
    YandexAudienceRemoveDelegateOperator,
    YandexAudienceRenameSegmentOperator,
    YandexAudienceReprocessSegmentOperator,
    YandexAudienceRevokeSegmentAccessOperator,
    YandexAudienceUploadContactListOperator,
)

SHARED_ID = 30000002
METRIKA_ID = 30000001


def upload(snapshots, values, **overrides) -> YandexAudienceUploadContactListOperator:
    return upload_operator(snapshots, values, "crm buyers", **overrides)


def writes(fake) -> list[tuple[str, str, str]]:
    return [(r["method"], r["path"].removeprefix("/v1/management/"), r["query"]) for r in fake.requests
            if r["method"] != "GET"]  # fmt: skip


def settle(fake, segment_id, want="processed", timeout=5.0):
    deadline = time.monotonic() + timeout
    while fake.get_segment(segment_id)["status"] != want:
        assert time.monotonic() < deadline, fake.get_segment(segment_id)["status"]
        time.sleep(PROCESSING / 4)


def named(fake, name):
    return [s for s in fake.segments() if s["name"] == name]


# -- contact lists -----------------------------------------------------------------------------


def test_create_then_rerun_then_incremental_sync(ya, hook, context, snapshots):
    first = upload(snapshots, emails(150)).execute(context)
    sid = first["segment_id"]
    assert first["action"] == "created" and first["status"] == "is_processed"
    assert first["content_type"] == "crm" and first["counts"]["unique"] == 150
    assert [w[:2] for w in writes(ya)] == [("POST", "segments/upload_csv_file"), ("POST", f"segment/{sid}/confirm")]
    segment = ya.get_segment(sid)
    assert segment["name"] == "crm buyers" and segment["hashed"] is True and segment["used_hashing_alg"] == "SHA256"
    assert segment["valid_unique_quantity"] == 150
    pushed = dict(context["ti"].pushed)
    assert pushed.pop("audience_events") == [context["outlet_events"].added[0][2]]
    assert pushed == {"segment_id": sid, "yandex_audience_segment_url": first["url"]}
    ((alias, uri, extra),) = context["outlet_events"].added
    assert (alias, uri) == ("yandex-audience-segments", f"yandex-audience://sandbox-login/segment/{sid}")
    assert extra == {
        "audience_extra_version": 1, "vendor": "yandex-audience", "account": "sandbox-login", "kind": "segment",
        "object_id": str(sid), "object_name": "crm buyers", "action": "created", "state": "is_processed",
        "mode": "sync", "rows": 150, "valid": 150, "invalid": {}, "duplicates": 0, "added": 150, "removed": 0,
        "snapshot_size": 150, "link": first["url"],
    }  # fmt: skip
    settle(ya, sid)

    ya.clear_requests()
    again = upload(snapshots, emails(150)).execute(context)
    assert again["action"] == "unchanged" and again["segment_id"] == sid
    assert writes(ya) == []

    changed = upload(snapshots, emails(140, start=10) + emails(10, start=1000)).execute(context)
    assert changed["action"] == "updated"
    assert changed["files"] == [{"operation": "addition", "entries": 10}, {"operation": "subtraction", "entries": 10}]
    assert [w[1] for w in writes(ya)] == [f"segment/{sid}/modify_data"] * 2
    assert "modification_type=addition" in writes(ya)[0][2] and "modification_type=subtraction" in writes(ya)[1][2]
    assert ya.get_segment(sid)["valid_unique_quantity"] == 150
    assert len(named(ya, "crm buyers")) == 1  # never a twin


def test_the_upload_results_keys_are_the_documented_ones(ya, hook, context, snapshots):
    """docs/guides/contact_lists.rst lists every key of the result, sent, planned and failed alike."""
    from helpers import documented_upload_keys

    from airflow_audience_provider.core.errors import AudienceError

    keys = documented_upload_keys("Every upload") | documented_upload_keys(
        "Yandex.Audience (YandexAudienceUploadContactListOperator)"
    )
    sent = upload(snapshots, emails(150)).execute(context)
    assert sent["upload_status"] == "sent" and set(sent) == keys - {"blocked_by"}
    planned = upload(snapshots, emails(160), plan_only=True).execute(context)
    assert planned["upload_status"] == "planned" and set(planned) == keys
    ya.faults.inject("status", count=1, path_prefix="/v1/management/segments/upload_csv_file", status=400)
    with pytest.raises(AudienceError):
        upload(snapshots, emails(150), segment_name="another list").execute(context)
    failed = context["ti"].pushed["upload_result"]
    assert failed["upload_status"] == "failed" and set(failed) == keys - {"blocked_by"}


def test_replace_addition_subtraction_modes(ya, hook, context, snapshots):
    sid = upload(snapshots, emails(150)).execute(context)["segment_id"]
    ya.clear_requests()
    replaced = upload(snapshots, emails(120, start=500), mode="replace").execute(context)
    assert replaced["files"] == [{"operation": "replace", "entries": 120}]
    assert "check_size=true" in writes(ya)[0][2]
    added = upload(snapshots, emails(5, start=900), mode="add").execute(context)
    assert added["files"] == [{"operation": "addition", "entries": 5}]  # small increments are allowed
    removed = upload(snapshots, emails(3, start=500), mode="remove").execute(context)
    assert removed["files"] == [{"operation": "subtraction", "entries": 3}]
    assert ya.get_segment(sid)["valid_unique_quantity"] == 122
    with pytest.raises(AudienceNotFoundError, match="nothing to subtract from"):
        upload(snapshots, emails(3), segment_name="no such", mode="remove").execute(context)


def test_phones_and_device_ids(ya, hook, context, snapshots):
    phones = [f"+7 (999) 555-{i:02d}-{i:02d}" for i in range(100)] + [f"8 999 444 {i:04d}" for i in range(50)]
    result = upload(snapshots, phones, segment_name="phones", identifier_type="phone", default_region="RU").execute(
        context
    )
    assert result["counts"]["unique"] == 150 and result["content_type"] == "crm"
    maids = [f"AAAAAAAA-BBBB-CCCC-1111-{i:012X}" for i in range(150)]
    devices = upload(snapshots, maids, segment_name="devices", identifier_type="maid").execute(context)
    assert devices["content_type"] == "idfa_gaid"
    upload_path = [w[1] for w in writes(ya)]
    assert upload_path.count("segments/upload_csv_file") == 1 and upload_path.count("segments/upload_file") == 1
    segment = ya.get_segment(devices["segment_id"])
    assert segment["content_type"] == "idfa_gaid" and segment["valid_unique_quantity"] == 150
    with pytest.raises(AudienceValidationError, match="holds idfa_gaid data"):
        upload(snapshots, emails(150), segment_name="devices").execute(context)


def test_idfa_lists_are_hashed_upper_case_and_gaid_lists_lower_case(ya, hook, context, snapshots):
    ids = [f"aaaaaaaa-bbbb-cccc-1111-{i:012x}" for i in range(150)]
    idfa = upload(snapshots, ids, segment_name="ios", identifier_type="idfa").execute(context)
    gaid = upload(snapshots, ids, segment_name="android", identifier_type="gaid").execute(context)
    assert idfa["content_type"] == gaid["content_type"] == "idfa_gaid"
    digest = lambda v: hashlib.sha256(v.encode()).hexdigest()  # noqa: E731
    assert ya.segment_values(idfa["segment_id"]) == sorted(digest(v.upper()) for v in ids)
    assert ya.segment_values(gaid["segment_id"]) == sorted(digest(v) for v in ids)


def test_national_phones_use_the_connections_default_region(ya, context, snapshots, set_ya_conn):
    phones = [f"8 (999) 555-{i // 100:02d}-{i % 100:02d}" for i in range(150)]
    with pytest.raises(AudienceError, match="default_region"):
        upload(snapshots, phones, segment_name="ru phones", identifier_type="phone").execute(context)
    conn_id = set_ya_conn("ya_ru", extra={"default_region": "RU"})
    result = upload(
        snapshots, phones, segment_name="ru phones", identifier_type="phone", yandex_audience_conn_id=conn_id
    ).execute(context)
    assert result["counts"]["invalid"] == 0 and result["counts"]["unique"] == 150
    expected = sorted(hashlib.sha256(f"7999555{i // 100:02d}{i % 100:02d}".encode()).hexdigest() for i in range(150))
    assert ya.segment_values(result["segment_id"]) == expected
    bad = set_ya_conn("ya_bad_region", extra={"default_region": "Russia"})
    with pytest.raises(AudienceConfigurationError, match="default_region"):
        upload(snapshots, phones, segment_name="x", identifier_type="phone", yandex_audience_conn_id=bad).execute(
            context
        )


def test_mac_addresses_are_hashed_over_their_bytes(ya, hook, context, snapshots):
    macs = [f"AE:12:34:{i >> 8:02X}:{i & 0xFF:02x}:A1" for i in range(1, 151)]
    result = upload(snapshots, [*macs, "not-a-mac"], segment_name="routers", identifier_type="mac").execute(context)
    assert result["content_type"] == "mac" and result["action"] == "created"
    assert result["counts"]["added"] == 150 and result["counts"]["invalid"] == 1
    assert [w[1] for w in writes(ya)][:2] == ["segments/upload_file", f"segment/{result['segment_id']}/confirm"]
    segment = ya.get_segment(result["segment_id"])
    assert segment["content_type"] == "mac" and segment["hashed"] is True
    # Yandex's rule (Audience API reference, MAC files): SHA-256 of the 6 bytes, not the text, any separators.
    expected = sorted(hashlib.sha256(bytes.fromhex(m.replace(":", ""))).hexdigest() for m in macs)
    assert ya.segment_values(result["segment_id"]) == expected

    settle(ya, result["segment_id"])
    changed = [*macs[1:], "ae-12-34-ff-ff-a1"]
    again = upload(snapshots, changed, segment_name="routers", identifier_type="mac").execute(context)
    assert again["action"] == "updated" and again["segment_id"] == result["segment_id"]
    assert [(f["operation"], f["entries"]) for f in again["files"]] == [("addition", 1), ("subtraction", 1)]
    assert ya.segment_values(result["segment_id"]) == sorted(
        hashlib.sha256(bytes.fromhex(m.replace(":", "").replace("-", ""))).hexdigest() for m in changed
    )


@pytest.mark.parametrize("read_workers", [1, 2])
def test_parallel_read_workers_send_the_same_hashes(ya, hook, context, snapshots, read_workers, monkeypatch):
    from airflow_audience_provider.identifiers import fanout

    used: list[int] = []
    read = fanout._iter_processed

    def spy(source, profiles, batch_size, workers, *rest):
        used.append(workers)
        return read(source, profiles, batch_size, workers, *rest)

    monkeypatch.setattr(fanout, "_iter_processed", spy)
    values = [*emails(400), "bad address", " USER7@example.COM "]  # one invalid, one duplicate
    result = upload(snapshots, values, segment_name="parallel", read_workers=read_workers).execute(context)
    assert used == [read_workers]
    assert result["counts"]["unique"] == 400 and result["counts"]["invalid"] == 1
    assert result["counts"]["duplicate"] == 1
    expected = sorted(hashlib.sha256(v.lower().encode()).hexdigest() for v in emails(400))
    assert ya.segment_values(result["segment_id"]) == expected


def test_metrica_client_ids_are_confirmed_with_the_counter(ya, hook, context, snapshots):
    client_ids = [str(1554974736542896811 + 7919 * i) for i in range(150)]
    result = upload(
        snapshots, [" 00" + client_ids[0], *client_ids[1:]], segment_name="site visitors",
        identifier_type="client_id", counter_id="{{ params.counter }}",
    )  # fmt: skip
    result.render_template_fields({**context, "params": {"counter": "44147844"}})
    assert result.counter_id == "44147844"
    out = result.execute(context)
    assert out["content_type"] == "client_id" and out["counts"]["added"] == 150
    assert [w[1] for w in writes(ya)][:2] == ["segments/upload_file", f"segment/client_id/{out['segment_id']}/confirm"]
    segment = ya.get_segment(out["segment_id"])
    assert segment["content_type"] == "client_id" and segment["counter_id"] == 44147844
    # ClientIDs are Metrica's own ids: sent as written (leading zeros dropped), never hashed.
    assert ya.segment_values(out["segment_id"]) == sorted(client_ids)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"identifier_type": "client_id"}, "needs counter_id"),
        ({"identifier_type": "email", "counter_id": 44147844}, "only used for Metrica ClientID"),
        ({"identifier_type": "mac", "content_type": "idfa_gaid"}, "uploaded as content_type 'mac'"),
    ],
)
def test_identifier_and_content_type_mismatches_are_refused_before_sending(
    ya, hook, context, snapshots, overrides, message
):
    with pytest.raises(AudienceConfigurationError, match=message):
        upload(snapshots, emails(150), segment_name="mismatch", **overrides).execute(context)
    assert writes(ya) == []


def test_on_kill_between_upload_and_confirm_leaves_no_draft(ya, hook, context, snapshots, monkeypatch):
    from airflow_audience_provider.hooks.yandex_audience import YandexAudienceHook

    op = upload(snapshots, emails(150), segment_name="stopped")
    original = YandexAudienceHook.upload_csv_file

    def upload_then_killed(self, *args, **kwargs):
        draft = original(self, *args, **kwargs)
        op.on_kill()  # SIGTERM arrives right after the upload (Airflow calls on_kill in the task)
        return draft

    monkeypatch.setattr(YandexAudienceHook, "upload_csv_file", upload_then_killed)
    with pytest.raises(AudienceError, match="stopped during the upload"):
        op.execute(context)
    # The draft was deleted, never confirmed: nothing is left behind, nothing is processing.
    calls = [(method, path.split("/")[-1]) for method, path, _query in writes(ya)]
    assert calls[0] == ("POST", "upload_csv_file") and calls[1][0] == "DELETE"
    assert all(path != "confirm" for _method, path in calls)
    assert [s for s in ya.segments(include_invisible=True) if s.get("status") == "uploaded"] == []
    assert named(ya, "stopped") == []


def test_on_kill_between_files_sends_no_further_file(ya, hook, context, snapshots, monkeypatch):
    from airflow_audience_provider.hooks.yandex_audience import YandexAudienceHook

    first = upload(snapshots, emails(150), segment_name="stopped later").execute(context)
    settle(ya, first["segment_id"])
    op = upload(snapshots, emails(150, start=20), segment_name="stopped later")
    original = YandexAudienceHook.modify_data

    def modify_then_killed(self, *args, **kwargs):
        answer = original(self, *args, **kwargs)
        op.on_kill()
        return answer

    monkeypatch.setattr(YandexAudienceHook, "modify_data", modify_then_killed)
    with pytest.raises(AudienceError, match="cancelled"):
        op.execute(context)
    modifications = [w[2].split("&")[0] for w in writes(ya) if w[1].endswith("modify_data")]
    assert modifications == ["modification_type=addition"]  # the subtraction file was not sent
    monkeypatch.setattr(YandexAudienceHook, "modify_data", original)
    settle(ya, first["segment_id"], want="processed", timeout=10)
    rerun = upload(snapshots, emails(150, start=20), segment_name="stopped later").execute(context)
    assert [(f["operation"], f["entries"]) for f in rerun["files"]] == [("addition", 20), ("subtraction", 20)]
    assert rerun["files"][0].get("no_changes") is True  # the addition Yandex already applied


def test_csv_source_with_a_column(ya, hook, context, snapshots, tmp_path):
    path = tmp_path / "crm.csv"
    path.write_text("id,Email,city\n" + "".join(f"{i},{e},Moscow\n" for i, e in enumerate(emails(150))))
    result = upload(snapshots, str(path), column="Email").execute(context)
    assert result["action"] == "created" and result["counts"]["unique"] == 150
    with pytest.raises(AudienceValidationError, match="not sent"):
        upload(snapshots, str(path), column="mail", segment_name="other").execute(context)


def test_below_the_minimum_is_refused_before_sending(ya, hook, context, snapshots):
    with pytest.raises(AudienceValidationError) as caught:
        upload(snapshots, emails(50)).execute(context)
    assert "100" in caught.value.message
    assert writes(ya) == []
    small = upload(snapshots, emails(50), allow_below_minimum=True).execute(context)
    assert "check_size=false" in writes(ya)[1][2]
    settle(ya, small["segment_id"], want="few_data")


def test_dry_run_sends_nothing(ya, hook, context, snapshots):
    plan = upload(snapshots, emails(150), plan_only=True).execute(context)
    assert plan["action"] == "planned" and plan["segment_id"] is None and plan["blocked_by"] == []
    assert writes(ya) == []


def test_a_failed_confirm_leaves_no_draft(ya, hook, context, snapshots):
    ya.faults.inject("status", count=1, path_prefix="/v1/management/segment/", method="POST", status=400)
    with pytest.raises(AudienceValidationError):
        upload(snapshots, emails(150)).execute(context)
    assert [s["status"] for s in ya.segments() if s["owner"] == "sandbox.login"] == ["processed"]  # the seeded one
    assert writes(ya)[-1][0] == "DELETE"


def test_files_stay_within_the_size_limit(ya, hook, snapshots):
    from airflow_audience_provider.identifiers import get_rule, sync_contact_list
    from airflow_audience_provider.operators.senders.yandex_audience import YandexAudienceSegmentSender

    ya.configure(max_file_bytes=3000)
    rule = get_rule("yandex_audience", "email").with_options(max_bytes_per_chunk=3000)
    sender = YandexAudienceSegmentSender(hook, "chunked", "crm")
    sync_contact_list(emails(150), rule, sender, destination_key="chunked", snapshot_base=snapshots)
    assert [c["operation"] for c in sender.calls] == ["upload+confirm", "addition", "addition", "addition"]
    assert sum(c["entries"] for c in sender.calls) == 150
    assert ya.get_segment(sender.segment_id)["valid_unique_quantity"] == 150


def test_quota_exhaustion_midway_is_reported_and_a_rerun_completes(ya, hook, context, snapshots):
    sid = upload(snapshots, emails(150)).execute(context)["segment_id"]
    ya.configure(writes_per_hour=1)  # counted from now on: the addition passes, the subtraction does not
    with pytest.raises(AudienceRateLimitError) as caught:
        upload(snapshots, emails(140, start=10) + emails(10, start=1000)).execute(context)
    message = caught.value.message
    assert "per hour" in message and "frees up in about" in message
    assert "applied before the failure: addition of 10" in message and "rerun sends the difference" in message
    ya.configure(writes_per_hour=None)
    rerun = upload(snapshots, emails(140, start=10) + emails(10, start=1000)).execute(context)
    assert rerun["files"] == [
        {"operation": "addition", "entries": 10, "no_changes": True},  # applied already: Yandex says no_changes
        {"operation": "subtraction", "entries": 10},
    ]
    assert ya.get_segment(sid)["valid_unique_quantity"] == 150


# -- other segment kinds -----------------------------------------------------------------------


def test_metrika_segment_is_idempotent_by_name(ya, hook, context):
    op = YandexAudienceCreateMetrikaSegmentOperator(
        task_id="m", name="goal buyers", metrika_segment_type="goal_id", metrika_segment_id=77
    )
    first = op.execute(context)
    second = op.execute(context)
    assert first["action"] == "created" and second["action"] == "exists"
    assert first["segment_id"] == second["segment_id"] and len(named(ya, "goal buyers")) == 1
    changed = YandexAudienceCreateMetrikaSegmentOperator(
        task_id="m", name="goal buyers", metrika_segment_type="goal_id", metrika_segment_id=78,
        on_definition_change="fail",
    )  # fmt: skip
    with pytest.raises(AudienceValidationError, match="differs in metrika_segment_id"):
        changed.execute(context)


def test_appmetrica_geo_pixel_lookalike(ya, hook, context, snapshots):
    app = YandexAudienceCreateAppMetricaSegmentOperator(
        task_id="a", name="app users", app_metrica_segment_type="api_key", app_metrica_segment_id=123
    ).execute(context)
    geo = YandexAudienceCreateGeoSegmentOperator(
        task_id="g", name="near store", geo_segment_type="condition", radius=1000, period_length=30,
        times_quantity=3, points=[{"latitude": 55.75, "longitude": 37.62}],
    ).execute(context)  # fmt: skip
    pixel = YandexAudienceCreateOrUpdatePixelOperator(task_id="p", name="banner").execute(context)
    seen = YandexAudienceCreatePixelSegmentOperator(
        task_id="ps", name="seen banner", pixel_id=pixel["pixel_id"], period_length=7
    ).execute(context)
    assert [r["type"] for r in (app, geo, seen)] == ["appmetrica", "geo", "pixel"]
    source = upload(snapshots, emails(150)).execute(context)["segment_id"]
    settle(ya, source)
    lal = YandexAudienceCreateLookalikeSegmentOperator(
        task_id="l", name="lal", source_segment_id=str(source), lookalike_value="3"
    )
    first, second = lal.execute(context), lal.execute(context)
    assert first["action"] == "created" and second["action"] == "exists" and first["type"] == "lookalike"
    with pytest.raises(ValueError, match="either points"):
        YandexAudienceCreateGeoSegmentOperator(task_id="bad", name="x", geo_segment_type="last")


def test_rename_delete_reprocess(ya, hook, context, snapshots):
    sid = upload(snapshots, emails(150)).execute(context)["segment_id"]
    rename = YandexAudienceRenameSegmentOperator(task_id="r", segment_id=str(sid), name="crm buyers v2")
    assert rename.execute(context)["action"] == "renamed"
    assert rename.execute(context)["action"] == "unchanged"
    with pytest.raises(AudiencePermissionError):
        YandexAudienceRenameSegmentOperator(task_id="r", segment_id=SHARED_ID, name="mine").execute(context)
    settle(ya, sid)
    assert YandexAudienceReprocessSegmentOperator(task_id="rp", segment_id=sid).execute(context)["status"] == (
        "is_processed"
    )
    delete = YandexAudienceDeleteSegmentOperator(task_id="d", segment_ids=[sid])
    assert delete.execute(context) == {"deleted": [str(sid)], "missing": [], "failed": []}
    assert delete.execute(context) == {"deleted": [], "missing": [str(sid)], "failed": []}
    with pytest.raises(AudiencePartialFailure) as caught:
        YandexAudienceDeleteSegmentOperator(task_id="d", segment_ids=sid, missing_ok=False).execute(context)
    assert [i["code"] for i in caught.value.items] == ["not_found"]


def test_multi_item_failures_are_reported_per_item(ya, hook, context):
    other = hook.create_metrika_segment("to delete", "counter_id", 1)["id"]
    mixed = YandexAudienceDeleteSegmentOperator(task_id="d", segment_ids=[SHARED_ID, other])
    with pytest.raises(AudiencePartialFailure) as caught:
        mixed.execute(context)
    assert caught.value.items == [
        {"input": str(SHARED_ID), "error": "AudiencePermissionError", "code": "access_denied",
         "message": caught.value.items[0]["message"]},
    ]  # fmt: skip
    assert ya.get_segment(other) is None  # the good id was still deleted
    grant = YandexAudienceGrantSegmentAccessOperator(
        task_id="g", segment_id=METRIKA_ID, user_logins=["sandbox-login", "agency"], on_item_error="warn"
    )
    result = grant.execute(context)
    assert result["granted"] == ["agency"]
    assert [(f["input"], f["code"]) for f in result["failed"]] == [("sandbox-login", "invalid_parameter")]


def test_grants_delegates_pixels(ya, hook, context):
    grant = YandexAudienceGrantSegmentAccessOperator(
        task_id="g", segment_id=METRIKA_ID, user_logins=["agency", "analyst"], comment="Direct"
    )
    assert grant.execute(context)["granted"] == ["agency", "analyst"]
    assert grant.execute(context) == {
        "segment_id": METRIKA_ID, "granted": [], "unchanged": ["agency", "analyst"], "failed": [],
    }  # fmt: skip
    revoke = YandexAudienceRevokeSegmentAccessOperator(task_id="rv", segment_id=METRIKA_ID, user_logins="analyst")
    assert revoke.execute(context)["revoked"] == ["analyst"]
    assert revoke.execute(context)["missing"] == ["analyst"]
    assert [g["user_login"] for g in ya.grants(METRIKA_ID)] == ["agency"]

    add = YandexAudienceAddDelegateOperator(task_id="dg", user_login="analyst", perm="view")
    assert add.execute(context)["action"] == "added"
    assert add.execute(context)["action"] == "unchanged"
    edit = YandexAudienceAddDelegateOperator(task_id="dg", user_login="analyst", perm="edit")
    assert edit.execute(context)["action"] == "changed"
    remove = YandexAudienceRemoveDelegateOperator(task_id="rd", user_login="analyst")
    assert remove.execute(context)["removed"] is True and remove.execute(context)["removed"] is False

    created = YandexAudienceCreateOrUpdatePixelOperator(task_id="p", name="q4").execute(context)
    assert created["action"] == "created"
    assert YandexAudienceCreateOrUpdatePixelOperator(task_id="p", name="q4").execute(context)["action"] == "unchanged"
    renamed = YandexAudienceCreateOrUpdatePixelOperator(task_id="p", name="q1", pixel_id=created["pixel_id"])
    assert renamed.execute(context)["action"] == "renamed"
    delete = YandexAudienceDeletePixelOperator(task_id="dp", pixel_id=created["pixel_id"])
    assert delete.execute(context)["action"] == "deleted" and delete.execute(context)["action"] == "unchanged"
    restore = YandexAudienceDeletePixelOperator(task_id="up", pixel_id=created["pixel_id"], undelete=True)
    assert restore.execute(context)["action"] == "undeleted"
