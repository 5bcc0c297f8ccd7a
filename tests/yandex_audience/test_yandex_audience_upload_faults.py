"""Yandex.Audience uploads under faults: each way the upload path once diverged or duplicated, against the fake.

Faults are the sandbox's own (``ya.faults.inject``: a 5xx answer, an answer slower than the read
timeout, a request applied whose answer is lost); a kill is a ``SystemExit`` raised inside the
task, which, like SIGKILL, runs none of the operator's clean-up.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import threading
import time

import pytest
from yandex_audience_helpers import PROCESSING, emails, upload_operator

from airflow_audience_provider.operators.yandex_audience import YandexAudienceUploadContactListOperator

UPLOAD = "/v1/management/segments/upload_csv_file"


def upload(snapshots, values, **overrides) -> YandexAudienceUploadContactListOperator:
    return upload_operator(snapshots, values, "faulty", **overrides)


def uploads(fake) -> list[dict]:
    return [r for r in fake.requests if r["path"] == UPLOAD and r["method"] == "POST"]


def drafts(fake) -> list[dict]:
    return [s for s in fake.segments(include_invisible=True) if s["status"] == "uploaded"]


def named(fake, name="faulty") -> list[dict]:
    return [s for s in fake.segments() if s["name"] == name]


def settle(fake, segment_id, timeout=5.0):
    deadline = time.monotonic() + timeout
    while fake.get_segment(segment_id)["status"] != "processed":
        assert time.monotonic() < deadline
        time.sleep(PROCESSING / 4)


def test_a_503_on_upload_is_retried(ya, hook, context, snapshots):
    ya.faults.inject("status", count=1, path_prefix=UPLOAD, method="POST", status=503)
    result = upload(snapshots, emails(150)).execute(context)
    assert result["action"] == "created"
    assert [r["status"] for r in uploads(ya)] == [503, 200]
    assert len(named(ya)) == 1 and drafts(ya) == []
    assert ya.get_segment(result["segment_id"])["valid_unique_quantity"] == 150


@pytest.mark.parametrize(
    "fault",
    [{"kind": "slow", "delay": 1.5}, {"kind": "lost"}],
    ids=["answer-slower-than-the-read-timeout", "answer-lost"],
)
def test_a_draft_created_by_an_upload_whose_answer_was_lost_is_adopted(ya, hook, context, snapshots, fault):
    ya.faults.inject(count=1, path_prefix=UPLOAD, method="POST", **fault)
    result = upload(snapshots, emails(150), read_timeout=1.0).execute(context)
    assert result["action"] == "created"
    assert len(uploads(ya)) == 1  # the draft was found by reading back, not uploaded a second time
    assert drafts(ya) == [] and len(named(ya)) == 1


def test_the_read_timeout_of_an_upload_grows_with_the_file(ya, hook, context, snapshots):
    assert hook.upload_timeouts(13_000_000).read >= hook.transport.timeouts.read + 13
    # A 1 MB file the fake answers after 1.5 s, with a 1 s read timeout configured: no timeout.
    ya.faults.inject("slow", count=1, path_prefix=UPLOAD, method="POST", delay=1.5)
    op = upload(snapshots, emails(16_000), read_timeout=1.0)
    result = op.execute(context)
    assert result["action"] == "created" and result["counts"]["unique"] == 16_000
    assert op.hook.transport.last_unknown_outcome is None  # no request was abandoned
    assert len(uploads(ya)) == 1 and drafts(ya) == []


def kill_during_confirm(monkeypatch, *, landed: bool):
    """The worker is killed while the confirm is in flight (before or after Yandex applied it)."""
    from airflow_audience_provider.hooks.yandex_audience import YandexAudienceHook

    original = YandexAudienceHook.confirm_segment

    def killed(self, *args, **kwargs):
        if landed:
            original(self, *args, **kwargs)
        raise SystemExit("SIGKILL")

    monkeypatch.setattr(YandexAudienceHook, "confirm_segment", killed)
    return lambda: monkeypatch.setattr(YandexAudienceHook, "confirm_segment", original)


@pytest.mark.parametrize("landed", [False, True], ids=["confirm-lost", "confirm-applied"])
def test_a_kill_during_confirm_leaves_nothing_behind_after_the_rerun(ya, hook, context, snapshots, monkeypatch, landed):
    restore = kill_during_confirm(monkeypatch, landed=landed)
    with pytest.raises(SystemExit):
        upload(snapshots, emails(150)).execute(context)
    assert len(drafts(ya)) == (0 if landed else 1)  # what the killed run left
    restore()
    rerun = upload(snapshots, emails(150)).execute(context)
    assert drafts(ya) == []  # the orphan did not survive the rerun
    assert len(named(ya)) == 1 and rerun["segment_id"] == named(ya)[0]["id"]
    assert sorted(ya.segment_values(rerun["segment_id"])) == sorted(
        hashlib.sha256(e.lower().encode()).hexdigest() for e in emails(150)
    )


def test_twins_created_elsewhere_are_adopted_oldest_first_with_a_warning(ya, hook, context, snapshots, caplog):
    from airflow_audience_provider.identifiers import get_rule, sync_contact_list
    from airflow_audience_provider.operators.senders.yandex_audience import YandexAudienceSegmentSender

    ids = []
    for n in range(2):  # another tool created the segment twice
        sender = YandexAudienceSegmentSender(hook, "faulty", "crm")
        sync_contact_list(
            emails(150), get_rule("yandex_audience", "email"), sender, destination_key=f"elsewhere-{n}",
            snapshot_base=snapshots,
        )  # fmt: skip
        ids.append(sender.segment_id)
    for sid in ids:
        settle(ya, sid)
    with caplog.at_level(logging.WARNING):
        result = upload(snapshots, emails(160)).execute(context)
    assert result["segment_id"] == min(ids) and result["action"] == "updated"
    assert any("using the oldest" in r.getMessage() for r in caplog.records)
    assert ya.get_segment(min(ids))["valid_unique_quantity"] == 160
    assert ya.get_segment(max(ids))["valid_unique_quantity"] == 150  # left alone


def test_two_first_runs_at_once_create_one_segment(ya, hook, context, snapshots, monkeypatch):
    from airflow_audience_provider.hooks.yandex_audience import YandexAudienceHook

    # Make the race certain: each run waits (up to 2 s) at the look-up for the other to get there too.
    barrier = threading.Barrier(2)
    original = YandexAudienceHook.find_segment

    def find_together(self, *args, **kwargs):
        with contextlib.suppress(threading.BrokenBarrierError):
            barrier.wait(timeout=2)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(YandexAudienceHook, "find_segment", find_together)
    results, errors = [], []

    def run(values):
        try:
            results.append(upload(snapshots, values, lease_poll_interval=0.1).execute(context))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(emails(150, start=n),)) for n in (0, 10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert len(named(ya)) == 1 and drafts(ya) == []
    assert sorted(r["action"] for r in results) == ["created", "updated"]


def test_a_stop_during_confirm_does_not_delete_what_the_confirm_makes(ya, hook, context, snapshots, monkeypatch):
    from airflow_audience_provider.hooks.yandex_audience import YandexAudienceHook

    op = upload(snapshots, emails(150))
    original = YandexAudienceHook.confirm_segment

    def stopped_while_confirming(self, *args, **kwargs):
        op.on_kill()  # SIGTERM arrives while the confirm is on its way
        return original(self, *args, **kwargs)

    monkeypatch.setattr(YandexAudienceHook, "confirm_segment", stopped_while_confirming)
    op.execute(context)  # the one file was applied; nothing further to stop
    assert [r["method"] for r in ya.requests if r["method"] == "DELETE"] == []
    assert len(named(ya)) == 1 and drafts(ya) == []
