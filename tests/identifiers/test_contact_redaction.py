"""Redacted invalid samples: at most three characters of any part, and never a CR or LF."""

from __future__ import annotations

import json
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from airflow_audience_provider.identifiers import SyncOptions, get_rule, sync_contact_list
from airflow_audience_provider.identifiers.accounting import Accounting, redact
from airflow_audience_provider.identifiers.testing import RecordingSender

LINE_BREAKS = "\r\n\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"


def test_long_top_level_domains_keep_three_characters():
    assert redact("john.doe@example.museum") == "j***@e***.mus"
    assert redact("a@b.photography") == "a***@b***.pho"


def test_line_breaks_never_pass_through():
    assert redact("j\r\nFAKE LOG LINE@x.com") == "j***@x***.com"
    assert redact("\nj@example.co\r\nm") == "j***@e***.co?"
    assert redact("x@ex\u2028ample") == "x***@e***"
    assert redact("s\u2028ecret") == "s***(7)"
    assert redact("\x00secret") == "?***(7)"
    assert redact("u@\rdomain.org") == "u***@?***.org"


@given(st.text(alphabet=st.characters(codec="utf-8") | st.sampled_from(LINE_BREAKS), max_size=40))
def test_any_value_redacts_to_one_printable_line(value: str) -> None:
    masked = redact(value)
    assert masked.isprintable()
    if masked == "<empty>":
        return
    assert not any(c in masked for c in LINE_BREAKS)
    # At most three characters of any part: strip the masks and count what is left per part.
    for part in masked.replace("***", "\0").replace("@", "\0").replace(".", "\0").split("\0"):
        kept = part.split("(")[0].lstrip("+").replace("*", "")
        assert len(kept) <= 3, (value, masked)


def test_the_sample_location_is_one_line_too():
    acc = Accounting()
    acc.record_invalid("email_syntax", "a\nb@c", "exports/evil\nname.csv:3")
    sample = acc.invalid_samples[0]
    assert sample == {"at": "exports/evil?name.csv:3", "reason": "email_syntax", "value": "a***@c***"}


def test_samples_in_the_engine_result_carry_no_line_break(tmp_path: Path) -> None:
    values = [f"user{i}@example.com" for i in range(20)] + ["bad\r\nINJECTED@", "x\u2028y", "\nno-at-sign"]
    result = sync_contact_list(
        values,
        get_rule("criteo", "email"),
        RecordingSender(),
        destination_key="redaction",
        snapshot_base=str(tmp_path),
        options=SyncOptions(max_invalid_share=0.5),
    )
    samples = result["counts"]["invalid_samples"]
    assert len(samples) == 3
    text = json.dumps(samples, ensure_ascii=False)
    assert not any(c in text for c in LINE_BREAKS) and "INJECTED" not in text
