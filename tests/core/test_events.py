"""The audience Asset event shape (version 1): built by every operator and sensor, read by the view."""

from __future__ import annotations

import json

import pytest

from airflow_audience_provider.core.events import (
    EXTRA_KEYS,
    audience_event_extra,
    parse_asset_uri,
    read_audience_extra,
    upload_counts,
)
from airflow_audience_provider.identifiers.accounting import Accounting


def test_uri_gives_the_required_keys_in_order():
    extra = audience_event_extra("criteo://4242/segment/77", object_name="crm", action="created")
    assert list(extra) == ["audience_extra_version", "vendor", "account", "kind", "object_id", "object_name", "action"]
    assert extra["vendor"] == "criteo" and extra["account"] == "4242" and extra["object_id"] == "77"


def test_quoted_uri_parts_are_unquoted():
    assert parse_asset_uri("segment://sp%2F1/audience/aud%201") == {
        "vendor": "segment",
        "account": "sp/1",
        "kind": "audience",
        "object_id": "aud 1",
    }


@pytest.mark.parametrize("uri", ["criteo:/4242/segment/1", "criteo://4242/segment", "criteo://4242//1", "x"])
def test_malformed_uri_is_refused(uri):
    with pytest.raises(ValueError, match="not an audience Asset URI"):
        audience_event_extra(uri)


def test_drift_is_vendor_minus_ours_and_none_values_are_left_out():
    extra = audience_event_extra(
        "lytics://acme/segment/s1", vendor_size=90, snapshot_size=100, match_rate=0.5, state=None, link=None
    )
    assert extra["drift"] == -10 and extra["match_rate"] == 0.5
    assert "state" not in extra and "link" not in extra
    json.dumps(extra)  # JSON-serialisable as Asset event extras must be


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"size": 3}, "size"),
        ({"drift": 3}, "drift"),  # derived, never set by hand
        ({"vendor": "x"}, "vendor"),  # taken from the URI
        ({"rows": -1}, "non-negative"),
        ({"rows": 1.5}, "non-negative"),
        ({"added": True}, "non-negative"),
        ({"match_rate": 1.2}, "between 0 and 1"),
    ],
)
def test_fields_outside_the_shape_or_of_the_wrong_type_are_refused(fields, message):
    with pytest.raises(ValueError, match=message):
        audience_event_extra("lytics://acme/segment/s1", **fields)


def test_only_web_links_are_kept():
    assert "link" not in audience_event_extra("lytics://a/segment/s", link="javascript:alert(1)")
    assert audience_event_extra("lytics://a/segment/s", link="https://app/x")["link"] == "https://app/x"


def test_upload_counts_from_the_engine_accounting():
    acc = Accounting(rows=10, invalid=3, duplicate=2, unique=5, sent_add=4, sent_remove=1)
    acc.invalid_reasons.update({"bad_email": 2, "empty": 1})
    fields = upload_counts(acc.as_dict(), mode="sync")
    assert fields == {
        "rows": 10,
        "valid": 7,
        "invalid": {"bad_email": 2, "empty": 1},
        "duplicates": 2,
        "added": 4,
        "removed": 1,
        "snapshot_size": 5,
    }
    # One-way uploads do not know the rest of the list: no snapshot size.
    assert "snapshot_size" not in upload_counts(acc.as_dict(), mode="add")
    extra = audience_event_extra("criteo://1/segment/2", **fields, vendor_size=6)
    assert extra["drift"] == 1
    assert "invalid_samples" not in json.dumps(extra)  # counts only, never a (redacted) value


def test_reader_keeps_only_typed_shape_fields():
    stored = {
        **audience_event_extra("criteo://1/segment/2", rows=3, object_name="n", invalid={"bad": 1}),
        "email": "someone@example.com",  # a foreign key never reaches the view
        "link": "javascript:alert(1)",
        "added": "7",
        "invalid": {"bad": 1, "worse": "x"},
    }
    read = read_audience_extra(stored)
    assert read is not None
    assert set(read) <= set(EXTRA_KEYS)
    assert "email" not in read and "link" not in read and "added" not in read
    assert read["rows"] == 3 and read["invalid"] == {"bad": 1}


@pytest.mark.parametrize(
    "extra",
    [
        None,
        [],
        {},
        {"size": 3},
        {"audience_extra_version": 2, "vendor": "x", "account": "a", "kind": "k", "object_id": "1"},
    ],
)
def test_reader_ignores_other_events(extra):
    assert read_audience_extra(extra) is None
