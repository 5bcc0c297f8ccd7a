"""Parallel read workers: threads for rules the kernel decides, processes for phone lists written the national way."""

from __future__ import annotations

import dataclasses
import logging

import pytest
from kernel_helpers import read_batches

from airflow_audience_provider.identifiers import fanout
from airflow_audience_provider.identifiers.fanout import read_in_threads
from airflow_audience_provider.identifiers.hashing import exact_share
from airflow_audience_provider.identifiers.rules import get_rule

pytest.importorskip("polars_hash", reason="the fast extra (polars, polars-hash) is not installed")
pytestmark = pytest.mark.usefixtures("fresh_kernel")

CRITEO_RU = dataclasses.replace(get_rule("criteo", "phone").profile, default_region="RU")
YANDEX_RU = dataclasses.replace(get_rule("yandex_audience", "phone").profile, default_region="RU")
EMAIL = get_rule("criteo", "email").profile


def phones(n: int, international_every: int = 0) -> list[str]:
    """RU mobiles as a CRM exports them (``8 (9xx) ...``), with invalid rows, duplicates and, if asked, ``+7`` rows."""
    out = []
    for i in range(n):
        j = i - 40 if i % 50 == 49 else i  # a duplicate of an earlier row
        sub = f"{(j * 7919) % 10**7:07d}"
        code = 900 + j % 100
        if i % 97 == 13:
            out.append(f"8 {i % 1000}")  # too short: phone_invalid
        elif international_every and j % international_every == 0:
            out.append(f"+7{code}{sub}")
        else:
            out.append(f"8 ({code}) {sub[:3]}-{sub[3:5]}-{sub[5:]}")
    return out


def test_exact_share_counts_the_rows_the_fast_path_leaves() -> None:
    national = phones(4000)
    international = [f"+7{900 + i % 100}{(i * 7919) % 10**7:07d}" for i in range(4000)]
    assert exact_share(CRITEO_RU, national) > 0.95
    assert exact_share(CRITEO_RU, international) < 0.01
    assert exact_share(EMAIL, ["not an e-mail"] * 10) == 0.0  # the e-mail kernel decides every valid form


def test_national_phones_read_in_processes_international_in_threads() -> None:
    assert not read_in_threads((CRITEO_RU,), phones(4000))
    assert not read_in_threads((CRITEO_RU, YANDEX_RU), phones(4000))
    assert read_in_threads((CRITEO_RU,), phones(4000, international_every=1))
    assert read_in_threads((CRITEO_RU,), phones(4000, international_every=2))  # half: threads still win
    assert read_in_threads((EMAIL,), ["a@b.c", "bad"])


@pytest.mark.parametrize("international_every", [0, 1])
def test_two_workers_give_what_one_gives_on_the_path_chosen(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, international_every: int
) -> None:
    """Batches, order, counts, invalid reasons and digests are the same with one and two workers."""
    monkeypatch.setattr(fanout, "KERNEL_BATCH_ROWS", 256)
    monkeypatch.setattr(fanout, "KERNEL_PARALLEL_BATCH_ROWS", 256)
    monkeypatch.setattr(fanout, "MP_TASK_ROWS", 256)
    values = phones(1500, international_every)
    profiles = (CRITEO_RU, YANDEX_RU)
    one = read_batches(values, profiles, batch_size=256, workers=1)
    with caplog.at_level(logging.INFO, logger=fanout.__name__):
        two = read_batches(values, profiles, batch_size=256, workers=2)
    assert two == one
    assert len(one) == 6 and sum(o[0] for _, outs in one for o in outs[:1]) == 1500 - 16
    chosen = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Read workers:")]
    assert len(chosen) == 1
    assert chosen[0].startswith("Read workers: processes" if not international_every else "Read workers: threads")
