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
