"""A run whose lease lapses while a request of it is still being retried, on the real vendor fakes.

The lease is checked before each chunk, but a request already handed to the transport is retried
(5xx, 429, timeouts) for as long as its retry policy allows. If the lease lapses meanwhile (its
renewals fail) another run takes it over, waits, and writes; a retry of the old run that goes out
after that undoes the new run's work while the new run reports success.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import pytest
import sync_model_helpers
from sync_model_helpers import CriteoTarget, YandexTarget, expected, make_input, options, wait_quiet

from airflow_audience_provider.identifiers import lease as lease_module
from airflow_audience_provider.identifiers import lease_for, sync_contact_list
from airflow_audience_provider.identifiers.errors import SendError
from airflow_audience_provider.identifiers.lease import LeaseLostError


class FailingRenewals:
    """The lease store as seen by one run: once ``failing`` is set, rewrites of that run's lease file fail."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.failing = threading.Event()
        self.path: Path | None = None
        real = lease_module.write_atomic

        def write(location: Any, data: bytes, **kw: Any) -> None:
            if self.failing.is_set() and location == self.path:
                raise OSError("the lease storage did not answer")
            real(location, data, **kw)

        monkeypatch.setattr(lease_module, "write_atomic", write)


def test_a_retry_after_the_lease_lapsed_is_not_sent(criteo: CriteoTarget, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run A's addition is answered 503; while A waits to retry, its lease renewals fail, the
    lease lapses and run B takes it over, waits, and removes A's half-applied addition (A's journal
    marks it uncertain). A's retry must not go out after that: it would re-add the identifiers B
    removed while B reports success."""
    monkeypatch.setattr(sync_model_helpers, "LEASE_TTL", 1.0)
    monkeypatch.setattr(sync_model_helpers, "LEASE_SKEW", 0.2)
    original = make_input(0, 40)
    criteo.sync(original, "sync")
    store = FailingRenewals(monkeypatch)

    hook_a = criteo.hook()
    transport_a = hook_a.get_conn()
    a_waits_to_retry, b_done = threading.Event(), threading.Event()

    def sleep_until_b_is_done(seconds: float) -> None:
        # A's backoff before its retry: the lease lapses now (its renewals fail) and B runs.
        store.failing.set()
        a_waits_to_retry.set()
        assert b_done.wait(120)

    transport_a._sleep = sleep_until_b_is_done
    lease_a = lease_for(criteo.rule, criteo.key, criteo.snapshot_base, options())
    assert lease_a.try_acquire()
    store.path = lease_a._path(lease_a.token)
    add_remove = criteo.fault_prefix + "/contact-list/add-remove"
    criteo.fake.faults.inject("status", status=503, count=1, path_prefix=add_remove)
    outcome: dict[str, Any] = {}

    def run_a() -> None:
        try:
            outcome["a"] = sync_contact_list(
                make_input(0, 60),  # 20 additions: one chunk
                criteo.rule,
                criteo.sender(hook_a),
                destination_key=criteo.key,
                snapshot_base=criteo.snapshot_base,
                mode="sync",
                options=options(),
                lease=lease_a,
            )
        except Exception as exc:
            outcome["a"] = exc

    thread_a = threading.Thread(target=run_a)
    thread_a.start()
    try:
        assert a_waits_to_retry.wait(60)
        result_b = criteo.sync(original, "sync")  # waits for A's lease to lapse, then takes it over
    finally:
        b_done.set()
        thread_a.join(120)
    wait_quiet(criteo.fake)
    assert result_b["status"] == "sent" and result_b["state"]["recovered"]
    assert criteo.members() == expected(original)
    assert isinstance(outcome["a"], SendError)
    assert isinstance(outcome["a"].__cause__, LeaseLostError)
    # The first sync's two chunks, A's answered 503, B's removal; A's retry never went out.
    assert [r["status"] for r in criteo.fake.requests if r["path"] == add_remove] == [200, 200, 503, 200]
    # A's guard went with its failed run: the same hook (one cached on an operator) serves the next run,
    # whose writes ask only that run's lease.
    assert transport_a._send_guards == []
    transport_a._sleep = lambda seconds: None
    store.failing.clear()
    assert criteo.sync(make_input(0, 50), "sync", sender=criteo.sender(hook_a))["status"] == "sent"
    assert criteo.members() == expected(make_input(0, 50))


def test_the_lease_record_carries_the_longest_upload_window(
    yandex: YandexTarget, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Yandex.Audience upload's read timeout grows with its file; before such a request is sent the
    lease record is rewritten with its landing window, so a run taking over waits that long."""
    from airflow_audience_provider.hooks import yandex_audience

    monkeypatch.setattr(yandex_audience, "UPLOAD_BYTES_PER_SECOND", 1000.0)  # ~4 s more per 4 KB file
    rows = make_input(0, 150)
    hook = yandex.hook()
    sender = yandex.sender(hook)
    lease = lease_for(yandex.rule, yandex.key, yandex.snapshot_base, options())
    assert lease.try_acquire()
    lease_file = lease._path(lease.token)
    result = sync_contact_list(
        rows,
        yandex.rule,
        sender,
        destination_key=yandex.key,
        snapshot_base=yandex.snapshot_base,
        mode="sync",
        options=options(),
        lease=lease,
    )
    assert result["status"] == "sent"
    record = json.loads(lease_file.read_text())
    transport = hook.get_conn()
    default = transport.timeouts.read + sync_model_helpers.SETTLE
    # The largest file holds 60 digests of 64 hex digits and a newline each (plus a header):
    # its read timeout is the base one plus its size at 1000 bytes per second.
    assert default + 60 * 65 / 1000.0 <= record["landing_window"] <= default + 61 * 65 / 1000.0


@pytest.mark.parametrize("recorded", [None, "longer", "shorter"])
def test_a_run_taking_over_waits_for_the_window_the_old_record_carries(
    criteo: CriteoTarget, tmp_path: Path, recorded: str | None
) -> None:
    """The taker waits the old holder's recorded landing window, or its own when that is longer or
    not recorded (a record written by an older version)."""
    from airflow_audience_provider.identifiers import fanout
    from airflow_audience_provider.identifiers.lease import DestinationLease
    from airflow_audience_provider.identifiers.sync import Destination

    sender = criteo.sender(criteo.hook())
    own = sender.landing_window()
    assert own == sync_model_helpers.READ_TIMEOUT + sync_model_helpers.SETTLE
    window = {None: None, "longer": own + 30.0, "shorter": own / 2}[recorded]
    lease_dir = tmp_path / "lease"
    lease_dir.mkdir()
    old = {"format": 1, "token": 1, "owner": "dead", "acquired_at": 900.0, "expires_at": 1000.0, "released": False}
    if window is not None:
        old["landing_window"] = window
    (lease_dir / "000000000001.json").write_text(json.dumps(old))
    taker = DestinationLease(lease_dir, ttl=30, max_clock_skew=5)
    assert taker.try_acquire()
    try:
        st = fanout._DestState(Destination("d", criteo.rule, sender=sender))
        st.lease = taker
        assert fanout._takeover_wait_until(st) == 1000.0 + 5.0 + max(window or 0.0, own)
    finally:
        taker.release()
