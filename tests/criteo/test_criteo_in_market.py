"""Marketing Solutions in-market lookups and segment size estimation, against the fake; the exchanges are
validated against Criteo's OpenAPI document by the ``make_hook`` fixture."""

from __future__ import annotations

import pytest

from airflow_audience_provider.core.errors import AudienceConfigurationError, AudienceValidationError


def test_in_market_brands_and_interests(ms_hook):
    brands = ms_hook.get_audience_segments_in_market_brands("FR")
    assert [(b["id"], b["name"], b["size"]) for b in brands] == [("101", "Acme", 120_000), ("102", "Globex", 80_000)]
    interests = ms_hook.get_audience_segments_in_market_interests("FR")
    assert {i["id"]: i["parentId"] for i in interests} == {"1": None, "12": "1"}
    assert ms_hook.get_audience_segments_in_market_brands("ZZ") == []


def test_estimate_in_market_and_location_sizes(ms_hook):
    assert ms_hook.estimate_audience_segments_sizes(in_market={"country": "FR", "brandIds": ["101"]}) == 120_000
    assert ms_hook.estimate_audience_segments_sizes(in_market={"country": "FR", "gender": "Female"}) == 100_000
    poi = [{"latitude": 48.85661, "longitude": 2.35222, "name": "Paris"}]
    assert ms_hook.estimate_audience_segments_sizes(location={"pointsOfInterest": poi, "radiusInKm": 5}) == 5_000


def test_bad_estimate_input_is_refused_before_sending(ms_hook, criteo):
    before = len(criteo.requests)
    with pytest.raises(AudienceValidationError, match="exactly one"):
        ms_hook.estimate_audience_segments_sizes()
    with pytest.raises(AudienceValidationError, match="country"):
        ms_hook.estimate_audience_segments_sizes(in_market={"gender": "Male"})
    with pytest.raises(AudienceValidationError, match="radiusInKm"):
        ms_hook.estimate_audience_segments_sizes(location={"pointsOfInterest": []})
    assert len(criteo.requests) == before


def test_retail_media_has_no_in_market_lookups(hook):
    with pytest.raises(AudienceConfigurationError, match="Marketing Solutions API only"):
        hook.get_audience_segments_in_market_brands("FR")


def test_retail_media_events_segment_estimate(hook):
    estimate = hook.estimate_audience_segment_size(
        {"shopperActivity": "Buy", "lookbackDays": "Last30Days", "categoryIds": ["42"]}, retailer_id="311"
    )
    assert estimate["size"] == 60_000
    assert 0 < estimate["relativeSize"] <= 1


def test_events_estimate_input_is_checked_before_sending(hook, ms_hook, criteo):
    before = len(criteo.requests)
    with pytest.raises(AudienceValidationError, match="lookbackDays"):
        hook.estimate_audience_segment_size({"shopperActivity": "Buy"}, retailer_id="311")
    with pytest.raises(AudienceConfigurationError, match="Retail Media API only"):
        ms_hook.estimate_audience_segment_size({"shopperActivity": "Buy", "lookbackDays": "Last7Days"}, retailer_id="1")
    assert len(criteo.requests) == before


def test_interests_carry_only_what_criteos_document_defines(ms_hook, criteo):
    """The spec gives an interest ``parentId`` and no name: the fake invents none, the hook promises none."""
    import json

    from criteo_openapi import SPECS

    from airflow_audience_provider.hooks.criteo import CriteoHook

    spec = json.loads((SPECS / "criteo-marketingsolutions-2026-07.json").read_text())
    allowed = set(spec["components"]["schemas"]["InMarketAudienceSegmentInterestEntityV1"]["properties"])
    interests = ms_hook.get_audience_segments_in_market_interests("FR")
    assert interests and all(set(i) - {"id", "type"} <= allowed for i in interests)
    assert "name" not in (CriteoHook.get_audience_segments_in_market_interests.__doc__ or "").split(":returns:")[1]
