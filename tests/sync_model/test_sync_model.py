"""Model-based randomized test of contact-list syncs over the Criteo and Yandex.Audience fakes.

Hypothesis drives random sequences of runs against one destination: inputs that shift, carry
duplicates and invalid rows; the four modes; fault plans armed at a random chunk (5xx, 429 with
Retry-After, dropped connections, answers slower than the read timeout, a slow clear, requests applied
but never answered, and 504 answers for requests applied later); failures
that exhaust the retries; on Criteo, answers that count fewer identifiers than were sent (the
ones not counted not applied), settled by the operator's ``on_partial_failure`` (fail or warn);
SIGKILL of a worker process at a random chunk; two runs at once.

The model keeps the list the destination should hold after the last successful run (``None``
once an ``add``/``remove`` without state made it unknown). Invariants:

* every run's accounting adds up (rows = unique + invalid + duplicate; a successful run sent
  exactly what it planned);
* a run that reports success left the vendor equal to its target, and its snapshot says so;
* a short-counted run is reported (engine status ``partial``, a note, the operator fails or warns
  with the counts); like a failed run it may leave the vendor off its target until the next
  successful run (by at most the identifiers not counted), but its snapshot records that target,
  so the next run of any mode plans against it and re-sends the uncertain identifiers;
* after one final clean ``sync`` the vendor holds exactly the last input.

CI runs a bounded, derandomized number of scenarios and prints how many it explored.
``make soak`` runs the same machine longer (``AUDIENCE_SYNC_MODEL_SCENARIOS``,
``AUDIENCE_SYNC_MODEL_STEPS``, seed from ``--hypothesis-seed``).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, precondition, rule, run_state_machine_as_test
from sync_model_helpers import (
    ATTEMPTS,
    SLOW,
    CriteoTarget,
    FaultAtChunk,
    Target,
    YandexTarget,
    disarm_short_counts,
    expected,
    in_threads,
    make_input,
    run_killed,
    wait_quiet,
)

from airflow_audience_provider.core.errors import AudiencePartialFailure
from airflow_audience_provider.identifiers import MODES
from airflow_audience_provider.identifiers.errors import ContactListError
from airflow_audience_provider.identifiers.snapshot import SnapshotStore

SCENARIOS = int(os.environ.get("AUDIENCE_SYNC_MODEL_SCENARIOS", "0"))
SOAK = SCENARIOS > 0
STEPS = int(os.environ.get("AUDIENCE_SYNC_MODEL_STEPS", "10" if SOAK else "5"))
CI_SCENARIOS = {"criteo": 6, "yandex_audience": 4}
PROGRESS_START = [time.monotonic()]
PROGRESS_VENDOR = [""]
STATS: dict[str, int] = {
    "scenarios": 0,
    "steps": 0,
    "runs": 0,
    "failed_runs": 0,
    "kills": 0,
    "short_runs": 0,
    "warned_runs": 0,
    "diverged": 0,
}

FAULT_KINDS = ["503", "429", "drop", "slow", "slow_clear", "lost", "late", "late_clear"]


def fault_dicts(target: Target, kind: str, dropped: int = 1) -> list[dict[str, Any]]:
    prefix = target.fault_prefix
    if kind == "short_count":
        return [{"kind": "short_count", "dropped": dropped}]
    if kind == "503":
        return [{"kind": "status", "status": 503, "count": 1, "path_prefix": prefix}]
    if kind == "429":
        return [{"kind": "status", "status": 429, "retry_after": 0.2, "path_prefix": prefix}]
    if kind == "drop":
        return [{"kind": "drop", "path_prefix": prefix}]
    if kind == "slow":
        return [{"kind": "slow", "delay": SLOW, "path_prefix": prefix}]
    if kind == "lost":  # applied, then the connection closes unanswered
        return [{"kind": "lost", "path_prefix": prefix}]
    if kind == "late":  # answered 504 at once, applied SLOW seconds later
        return [{"kind": "late", "status": 504, "delay": SLOW, "path_prefix": prefix}]
    if kind == "late_clear":
        return [{"kind": "late", "status": 504, "delay": SLOW, "path_prefix": target.clear_prefix or prefix}]
    return [{"kind": "slow", "delay": SLOW, "path_prefix": target.clear_prefix or prefix}]


def apply_mode(current: set[str] | None, mode: str, rows: list[str]) -> set[str] | None:
    new = expected(rows)
    if mode in ("sync", "replace"):
        return new
    if current is None:
        return None
    return current | new if mode == "add" else current - new


class SyncMachine(RuleBasedStateMachine):
    """One destination, many runs. ``fake``, ``target_cls``, ``work`` and ``context`` are set by the test."""

    fake: Any = None
    context: dict[str, Any] = {}
    target_cls: type[Target] = CriteoTarget
    work: Path = Path(tempfile.gettempdir())

    def __init__(self) -> None:
        super().__init__()
        STATS["scenarios"] += 1
        self.fake.reset()
        self.dir = Path(tempfile.mkdtemp(dir=self.work))
        self.target = self.target_cls(self.fake, self.dir / "state")
        self.kills = 0
        # A first clean run creates the destination's list (Yandex creates the segment here).
        self.last_input = make_input(0, 110)
        self.target.sync(self.last_input, "sync")
        self.intended: set[str] | None = expected(self.last_input)

    # -- strategies ---------------------------------------------------------------------------

    inputs = st.builds(
        make_input,
        start=st.integers(0, 80),
        size=st.integers(100, 160),
        duplicates=st.integers(0, 8),
        invalid=st.integers(0, 6),
    )
    modes = st.sampled_from(MODES)
    faults = st.lists(st.tuples(st.integers(1, 5), st.sampled_from(FAULT_KINDS)), min_size=1, max_size=3)

    # -- checks -------------------------------------------------------------------------------

    def _accounting(self, result: dict[str, Any] | None, rows: list[str], success: bool) -> None:
        if not result or "counts" not in result:
            return
        c = result["counts"]
        assert c["rows"] == len(rows), c
        assert c["unique"] + c["invalid"] + c["duplicate"] == c["rows"], c
        if success:
            assert c["sent_add"] == c["added"] and c["sent_remove"] == c["removed"], c
            assert c["chunks_sent"] == c["chunks_total"], c

    def _succeeded(self, result: dict[str, Any], rows: list[str], mode: str) -> None:
        assert result["status"] == "sent", result
        self._accounting(result, rows, True)
        self.last_input = rows if mode in ("sync", "replace") else self.last_input
        self.intended = apply_mode(self.intended, mode, rows)
        wait_quiet(self.fake)
        vendor = self.target.members()
        if self.intended is not None:
            assert vendor == self.intended, f"run reported success but the vendor differs ({mode})"
            store = SnapshotStore(self.target.rule.vendor, self.target.key, self.target.snapshot_base)
            assert set(store.read_values()) == self.intended, "the snapshot does not say what the vendor holds"
        elif mode == "add":
            assert expected(rows) <= vendor
        else:
            assert not expected(rows) & vendor

    def _short_counted(self, result: dict[str, Any], rows: list[str], mode: str, on_partial_failure: str) -> None:
        """A run whose answers counted fewer identifiers than it sent: reported, then judged like a failed run."""
        STATS["short_runs"] += 1
        self._accounting(result, rows, False)
        unaccounted = result["counts"]["vendor_unaccounted"]
        assert unaccounted > 0, result["counts"]
        assert any("stay uncertain" in note for note in result["state"]["notes"]), result["state"]
        # The operator's rule for such a run: fail with the counts, or warn and end green.
        from airflow_audience_provider.operators.criteo import CriteoUploadContactListOperator

        operator = CriteoUploadContactListOperator(
            task_id="model",
            segment_id=getattr(self.target, "segment_id", "0"),
            source="unused",
            on_partial_failure=on_partial_failure,
        )
        c = result["counts"]
        upload = {
            "sent": c["sent_add"] + c["sent_remove"],
            "vendor_rejected": c["vendor_rejected"],
            "vendor_unaccounted": unaccounted,
        }
        try:
            operator.settle_unaccounted(self.context, upload)
        except AudiencePartialFailure as exc:
            assert on_partial_failure == "fail"
            assert exc.items[0]["unaccounted"] == unaccounted, exc.items
            assert self.context["ti"].pushed["upload_result"] is upload
            STATS["failed_runs"] += 1
        else:
            assert on_partial_failure == "warn", "a short-counted run ended green without on_partial_failure='warn'"
            STATS["warned_runs"] += 1
        # Its snapshot records its target: the next run of any mode plans against that target and sends
        # the uncertain identifiers again as its own target says.
        self.last_input = rows if mode in ("sync", "replace") else self.last_input
        self.intended = apply_mode(self.intended, mode, rows)
        wait_quiet(self.fake)
        if self.intended is not None:
            store = SnapshotStore(self.target.rule.vendor, self.target.key, self.target.snapshot_base)
            assert set(store.read_values()) == self.intended, "a short-counted run's snapshot is not its target"
            # Until the next successful run the vendor may lack (or keep) at most the identifiers not counted.
            off = self.target.members() ^ self.intended
            assert len(off) <= unaccounted, f"{len(off)} identifiers off the target, {unaccounted} not counted"

    def _run(
        self,
        rows: list[str],
        mode: str,
        plan: dict[int, list[dict[str, Any]]] | None = None,
        on_partial_failure: str = "fail",
    ) -> None:
        STATS["steps"] += 1
        STATS["runs"] += 1
        self.fake.faults.clear()
        hook = self.target.hook()
        sender: Any = self.target.sender(hook)
        if plan:
            sender = FaultAtChunk(sender, self.fake, plan)
        try:
            result = self.target.sync(rows, mode, sender=sender)
        except ContactListError as exc:
            STATS["failed_runs"] += 1
            self._accounting(exc.result, rows, False)
            return
        finally:
            self.fake.faults.clear()
            disarm_short_counts(self.fake)
        if result["status"] == "partial":
            self._short_counted(result, rows, mode, on_partial_failure)
            return
        self._succeeded(result, rows, mode)

    # -- rules --------------------------------------------------------------------------------

    @rule(rows=inputs, mode=modes)
    def clean_run(self, rows: list[str], mode: str) -> None:
        self._run(rows, mode)

    @rule(rows=inputs, mode=modes, faults=faults)
    def faulty_run(self, rows: list[str], mode: str, faults: list[tuple[int, str]]) -> None:
        plan: dict[int, list[dict[str, Any]]] = {}
        for at, kind in faults:
            plan.setdefault(at, []).extend(fault_dicts(self.target, kind))
        self._run(rows, mode, plan)

    @rule(rows=inputs, mode=modes, at=st.integers(1, 5))
    def retries_exhausted(self, rows: list[str], mode: str, at: int) -> None:
        fault = {"kind": "status", "status": 503, "count": ATTEMPTS, "path_prefix": self.target.fault_prefix}
        self._run(rows, mode, {at: [fault]})

    @precondition(lambda self: self.kills < 1)
    @rule(rows=inputs, mode=modes, at=st.integers(1, 3), after_send=st.booleans())
    def killed_run(self, rows: list[str], mode: str, at: int, after_send: bool) -> None:
        STATS["steps"] += 1
        STATS["runs"] += 1
        self.kills += 1
        self.fake.faults.clear()
        code = run_killed(self.target, rows, mode, at, after_send)
        if code == -9:
            STATS["kills"] += 1
        if code == 0:
            self._succeeded({"status": "sent"}, rows, mode)
        elif code == 1:
            STATS["failed_runs"] += 1

    @rule(a=inputs, mode_a=modes, b=inputs, mode_b=modes)
    def overlapping_runs(self, a: list[str], mode_a: str, b: list[str], mode_b: str) -> None:
        STATS["steps"] += 1
        STATS["runs"] += 2
        self.fake.faults.clear()
        results = in_threads(lambda: self.target.sync(a, mode_a), lambda: self.target.sync(b, mode_b))
        done = []
        for result, rows, mode in zip(results, (a, b), (mode_a, mode_b), strict=True):
            if isinstance(result, ContactListError):
                STATS["failed_runs"] += 1
                self._accounting(result.result, rows, False)
                continue
            assert isinstance(result, dict), result
            self._accounting(result, rows, True)
            done.append((result["state"]["lease_token"], rows, mode, result))
        # The lease serialises them: the run with the higher token ran entirely after the other.
        for _, rows, mode, _result in sorted(done, key=lambda d: d[0]):
            self.intended = apply_mode(self.intended, mode, rows)
            if mode in ("sync", "replace"):
                self.last_input = rows
        if len(done) == 2 and self.intended is not None:
            wait_quiet(self.fake)
            assert self.target.members() == self.intended, "overlapping runs left the vendor off its state"

    def teardown(self) -> None:
        try:
            wait_quiet(self.fake)
            self.fake.faults.clear()
            result = self.target.sync(self.last_input, "sync")
            assert result["status"] == "sent"
            wait_quiet(self.fake)
            if self.target.members() != expected(self.last_input):
                STATS["diverged"] += 1
                raise AssertionError("after a final clean sync the vendor still differs from the last input")
        finally:
            self.target.close()
            shutil.rmtree(self.dir, ignore_errors=True)
            _progress()


class ShortCountMachine(SyncMachine):
    """The machine on a fake that can answer short (Criteo): one more rule, so the other vendors'
    machines draw exactly as before."""

    @rule(
        rows=SyncMachine.inputs,
        mode=SyncMachine.modes,
        at=st.integers(1, 5),
        dropped=st.integers(1, 4),
        faults=st.lists(st.tuples(st.integers(1, 5), st.sampled_from(FAULT_KINDS)), max_size=2),
        on_partial_failure=st.sampled_from(["fail", "warn"]),
    )
    def short_counted_run(
        self,
        rows: list[str],
        mode: str,
        at: int,
        dropped: int,
        faults: list[tuple[int, str]],
        on_partial_failure: str,
    ) -> None:
        """A run whose ``at``-th call arms a short answer (``dropped`` identifiers), with other faults."""
        plan: dict[int, list[dict[str, Any]]] = {at: fault_dicts(self.target, "short_count", dropped)}
        for n, kind in faults:
            plan.setdefault(n, []).extend(fault_dicts(self.target, kind))
        self._run(rows, mode, plan, on_partial_failure)


def _progress() -> None:
    """In a soak, one line per finished scenario on the descriptor ``soak.py`` kept uncaptured."""
    fd = os.environ.get("AUDIENCE_SYNC_MODEL_PROGRESS_FD")
    if not fd:
        return
    elapsed = time.monotonic() - PROGRESS_START[0]
    line = (
        f"  {PROGRESS_VENDOR[0]}: scenario {STATS['scenarios']}/{SCENARIOS}, {STATS['steps']} steps, "
        f"{STATS['kills']} killed runs, {STATS['diverged']} diverged, {elapsed / 60:.1f} min\n"
    )
    os.write(int(fd), line.encode())


def _report(capsys: pytest.CaptureFixture[str], vendor: str) -> None:
    counts = f"{STATS['scenarios']} scenarios, {STATS['steps']} steps, {STATS['diverged']} diverged"
    line = f"sync model ({vendor}): {counts}"
    detail = (
        f"  runs {STATS['runs']}, failed {STATS['failed_runs']}, killed {STATS['kills']}, "
        f"short-counted {STATS['short_runs']} ({STATS['warned_runs']} green with a warning)"
    )
    with capsys.disabled():
        print(f"\n{line}\n{detail}")
    out = os.environ.get("AUDIENCE_SYNC_MODEL_STATS")
    if out:
        previous = json.loads(Path(out).read_text()) if Path(out).exists() else {}
        previous[vendor] = dict(STATS)
        Path(out).write_text(json.dumps(previous))


@pytest.mark.parametrize("vendor", ["criteo", "yandex_audience"])
def test_sync_model(vendor: str, request: pytest.FixtureRequest, tmp_path: Path, capsys: Any) -> None:
    fake = request.getfixturevalue(f"{vendor}_sandbox")
    machine = type(
        f"SyncMachine_{vendor}",
        (ShortCountMachine if vendor == "criteo" else SyncMachine,),
        {
            "fake": fake,
            "target_cls": CriteoTarget if vendor == "criteo" else YandexTarget,
            "work": tmp_path,
            "context": request.getfixturevalue("context"),
        },
    )
    for key in STATS:
        STATS[key] = 0
    PROGRESS_START[0] = time.monotonic()
    PROGRESS_VENDOR[0] = vendor
    config = settings(
        max_examples=SCENARIOS if SOAK else CI_SCENARIOS[vendor],
        stateful_step_count=STEPS,
        deadline=None,
        derandomize=not SOAK,
        database=None,
        print_blob=True,
        suppress_health_check=list(HealthCheck),
    )
    try:
        run_state_machine_as_test(machine, settings=config)
    except BaseException:
        STATS["diverged"] = max(STATS["diverged"], 1)
        raise
    finally:
        _report(capsys, vendor)
