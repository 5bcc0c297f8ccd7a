"""The one upload path (ContactListUploadOperator) as the Yandex.Audience upload operator uses it."""

from __future__ import annotations

import time

import pytest
from yandex_audience_helpers import PROCESSING, emails, upload_operator

from airflow_audience_provider.operators.yandex_audience import YandexAudienceUploadContactListOperator


def upload(snapshots, values, **overrides) -> YandexAudienceUploadContactListOperator:
    return upload_operator(snapshots, values, "upload path", **overrides)


def settle(fake, segment_id, want="processed", timeout=5.0):
    deadline = time.monotonic() + timeout
    while fake.get_segment(segment_id)["status"] != want:
        assert time.monotonic() < deadline, fake.get_segment(segment_id)["status"]
        time.sleep(PROCESSING / 4)


def test_old_mode_names_still_work_with_a_deprecation_warning(ya, hook, context, snapshots):
    from airflow.exceptions import AirflowProviderDeprecationWarning

    sid = upload(snapshots, emails(150)).execute(context)["segment_id"]
    settle(ya, sid)
    with pytest.warns(AirflowProviderDeprecationWarning, match="mode='addition' is deprecated; use mode='add'"):
        op = upload(snapshots, emails(5, start=900), mode="addition")
    assert op.mode == "add"
    assert op.execute(context)["files"] == [{"operation": "addition", "entries": 5}]
    with pytest.raises(ValueError, match="mode must be one of"):
        upload(snapshots, emails(5), mode="upsert")


def test_drift_of_the_processed_segment_is_reported_before_sending(ya, hook, context, snapshots):
    from airflow_audience_provider.identifiers import get_rule, render_file

    sid = upload(snapshots, emails(150)).execute(context)["segment_id"]
    settle(ya, sid)
    clean = upload(snapshots, emails(150)).execute(context)
    assert clean["drift"]["drifted"] is False and clean["drift"]["vendor"] == 150
    assert clean["upload_status"] == "sent" and clean["status"] == "processed"  # ours, and the segment's
    # Another tool adds ten identifiers to the segment.
    rule = get_rule("yandex_audience", "email")
    extra = [f"other{i}@example.com" for i in range(10)]
    content = render_file(rule, [_hash(e) for e in extra])
    hook.modify_data(sid, content, "addition", check_size=False)
    settle(ya, sid)
    drifted = upload(snapshots, emails(150)).execute(context)
    assert drifted["drift"]["drifted"] is True and drifted["drift"]["difference"] == 10
    assert drifted["drift"]["checked"] == "before"


def _hash(email: str) -> str:
    import hashlib

    return hashlib.sha256(email.strip().lower().encode()).hexdigest()


def _segment_by_hand(hook, name, values):
    """Another tool's file segment named ``name`` holding ``values`` (e-mails), as Yandex processes it."""
    from airflow_audience_provider.identifiers import get_rule, render_file

    content = render_file(get_rule("yandex_audience", "email"), sorted(_hash(v) for v in values))
    draft = hook.upload_csv_file(content)
    hook.confirm_segment(draft["id"], name, "crm", hashed=True, hashing_alg="SHA256", check_size=False)
    return draft["id"]


def test_a_segment_recreated_by_hand_under_the_same_name_gets_the_whole_list(ya, hook, context, snapshots):
    sid = upload(snapshots, emails(150)).execute(context)["segment_id"]
    settle(ya, sid)
    # Someone deletes the segment and builds another of the same name holding a different list.
    hook.delete_segment(sid)
    other = _segment_by_hand(hook, "upload path", emails(120, start=500))
    settle(ya, other)
    result = upload(snapshots, emails(150) + emails(5, start=900)).execute(context)
    assert result["segment_id"] == other and result["action"] == "updated"
    assert result["engine_mode"] == "full_replace"
    reason = result["state"]["full_replace_reason"]
    assert f"remote list {sid}, the destination is now {other}" in reason
    assert result["drift"] is None  # the snapshot's count is of the deleted segment: nothing to compare
    settle(ya, other)
    assert ya.segment_values(other) == sorted(_hash(e) for e in emails(150) + emails(5, start=900))
    # The new segment's id is recorded: the next run is incremental again.
    again = upload(snapshots, emails(150) + emails(6, start=900)).execute(context)
    assert again["engine_mode"] == "incremental" and again["files"] == [{"operation": "addition", "entries": 1}]


def test_a_segment_deleted_and_created_again_by_the_operator_gets_the_whole_list(ya, hook, context, snapshots):
    sid = upload(snapshots, emails(150)).execute(context)["segment_id"]
    settle(ya, sid)
    hook.delete_segment(sid)
    result = upload(snapshots, emails(150)).execute(context)
    assert result["action"] == "created" and result["segment_id"] != sid
    settle(ya, result["segment_id"])
    assert ya.segment_values(result["segment_id"]) == sorted(_hash(e) for e in emails(150))


def test_a_snapshot_without_a_segment_id_is_a_full_replace(ya, hook, context, snapshots):
    """Snapshots written before the segment id was recorded: which segment they describe is unknown."""
    import json

    from airflow_audience_provider.identifiers import get_rule, snapshot_for

    op = upload(snapshots, emails(150))
    sid = op.execute(context)["segment_id"]
    settle(ya, sid)
    store = snapshot_for(get_rule("yandex_audience", "email"), op.destination_key(hook), snapshots)
    path = store.location
    header, rest = path.read_text().split("\n", 1)
    prefix = "#aap-snapshot "
    meta = json.loads(header[len(prefix) :])
    assert meta["remote_id"] == str(sid)
    del meta["remote_id"]
    path.write_text(prefix + json.dumps(meta, sort_keys=True) + "\n" + rest)
    result = upload(snapshots, emails(150)).execute(context)
    assert result["engine_mode"] == "full_replace"
    assert "does not record which" in result["state"]["full_replace_reason"]
    assert upload(snapshots, emails(150)).execute(context)["engine_mode"] == "noop"


def test_add_to_a_deleted_segment_creates_it_with_the_input_instead_of_trusting_its_snapshot(
    ya, hook, context, snapshots
):
    """The old segment's snapshot says the input is there: diffed against it, add sent nothing and
    ended green with no segment at all."""
    sid = upload(snapshots, emails(150)).execute(context)["segment_id"]
    settle(ya, sid)
    hook.delete_segment(sid)
    result = upload(snapshots, emails(150), mode="add").execute(context)
    assert result["action"] == "created" and result["segment_id"] != sid
    assert result["engine_mode"] == "full_replace"
    assert "does not exist yet" in result["state"]["full_replace_reason"]
    new = result["segment_id"]
    settle(ya, new)
    assert ya.segment_values(new) == sorted(_hash(e) for e in emails(150))
    # The new segment's list is recorded with its id: the next add sends only what is new.
    again = upload(snapshots, emails(2, start=2000), mode="add").execute(context)
    assert again["engine_mode"] == "incremental" and again["files"] == [{"operation": "addition", "entries": 2}]
    assert again["segment_id"] == new


def test_add_to_a_segment_that_never_existed_creates_it(ya, hook, context, snapshots):
    result = upload(snapshots, emails(150), segment_name="added fresh", mode="add").execute(context)
    assert result["action"] == "created" and result["files"] == [{"operation": "upload+confirm", "entries": 150}]
    settle(ya, result["segment_id"])
    assert ya.segment_values(result["segment_id"]) == sorted(_hash(e) for e in emails(150))


def test_the_removal_guard_does_not_count_a_deleted_segment_s_list(ya, hook, context, snapshots):
    """A new segment is empty: a smaller list removes nothing from it (the guard counted the old snapshot's 1000)."""
    sid = upload(snapshots, emails(1000)).execute(context)["segment_id"]
    settle(ya, sid)
    hook.delete_segment(sid)
    result = upload(snapshots, emails(150, start=5000)).execute(context)
    assert result["action"] == "created" and result["segment_id"] != sid
    settle(ya, result["segment_id"])
    assert ya.segment_values(result["segment_id"]) == sorted(_hash(e) for e in emails(150, start=5000))
