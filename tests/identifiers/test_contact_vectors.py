"""The committed test vectors hold for the engine, and every registered rule has vectors."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from airflow_audience_provider.identifiers.hashing import process_batch
from airflow_audience_provider.identifiers.normalise import InvalidIdentifier, normaliser_for
from airflow_audience_provider.identifiers.rules import list_rules

VECTORS = Path(__file__).parent / "vectors"


def load() -> dict[str, dict[str, Any]]:
    out = {}
    for path in sorted(VECTORS.glob("*.json")):
        for rule in json.loads(path.read_text(encoding="utf-8"))["rules"]:
            out[rule["rule"]] = rule
    return out


ALL = load()


def test_every_registered_rule_has_vectors_for_its_version() -> None:
    missing = [r.key for r in list_rules() if r.key not in ALL]
    assert missing == []


@pytest.mark.parametrize("rule", list_rules(), ids=lambda r: r.key)
def test_vectors(rule: Any) -> None:
    spec = ALL[rule.key]
    assert spec["hash_algorithm"] == rule.profile.hash_algorithm.value
    assert spec["vendor_identifier_type"] == rule.vendor_identifier_type
    assert (spec.get("hash_input") == "hex_bytes") == rule.profile.hashes_raw_bytes
    cases = spec["cases"]
    assert any("invalid" in c for c in cases) and any("output" in c for c in cases)
    for case in cases:
        # A case may set a rule option (default_region): it runs through the customised rule.
        options = {k: case[k] for k in ("default_region",) if k in case}
        normalise = normaliser_for(rule.with_options(**options).profile if options else rule.profile)
        if "invalid" in case:
            with pytest.raises(InvalidIdentifier) as exc:
                normalise(case["input"])
            assert exc.value.reason == case["invalid"], case
            continue
        assert normalise(case["input"]) == case["normalised"], case
        algo = rule.profile.hash_algorithm.value
        # Independent of the engine: the vector file says what the hash goes over.
        raw_bytes = spec.get("hash_input") == "hex_bytes"
        data = bytes.fromhex(case["normalised"]) if raw_bytes else case["normalised"].encode()
        expected = case["normalised"] if algo == "none" else hashlib.new(algo, data).hexdigest()
        assert case["output"] == expected
    # The batch pipeline (fast path included) produces the same outputs and reasons.
    cases = [c for c in cases if "default_region" not in c]
    batch = process_batch(rule.profile, [c["input"] for c in cases])
    outputs = sorted(h for text in batch.partitions.values() for h in text.split("\n"))
    assert outputs == sorted(c["output"] for c in cases if "output" in c)
    assert [r for _, r in batch.invalid] == [c["invalid"] for c in cases if "invalid" in c]
